//! Service credentials (issue 15): API keys of service accounts (shown once, stored hashed,
//! scoped, revoked, rotated, expiring, bound to addresses, rate-limited, audited by key) and
//! RFC 7662 introspection, which only a key with the `introspect` scope may call.

use std::time::Duration;

use instachatico_auth::db::models::{api_keys as key_rows, audit as audit_rows};
use instachatico_auth::grpc::access::{Access, RPCS};
use instachatico_auth::model::{AuditQuery, Scope};
use instachatico_auth::pb;
use instachatico_auth::pb::auth_service_client::AuthServiceClient;
use instachatico_auth::pb::service_account_service_client::ServiceAccountServiceClient;
use sha2::Digest;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{JWT_SECRET, Options, TestServer, USER_PASSWORD, authed, expect_code};
use crate::generated_input::call;

async fn accounts(s: &TestServer) -> ServiceAccountServiceClient<Channel> {
    ServiceAccountServiceClient::new(s.channel().await)
}

/// A service account named `name` (created by `admin`) with one key of `scopes`.
async fn account_with_key(s: &TestServer, admin: &str, name: &str, scopes: &[&str]) -> (i32, pb::ApiKey, String) {
    let account = accounts(s)
        .await
        .create_service_account(authed(
            admin,
            pb::CreateServiceAccountRequest { name: name.into(), description: "integration test".into() },
        ))
        .await
        .unwrap()
        .into_inner();
    let (key, secret) = new_key(s, admin, account.id, scopes, &[], None).await.unwrap();
    (account.id, key, secret)
}

/// A key with every scope, of a fresh service account, for tests of other things.
pub(crate) async fn key_with_every_scope(s: &TestServer, admin: &str) -> String {
    let all: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    account_with_key(s, admin, "every-scope", &all).await.2
}

async fn new_key(
    s: &TestServer,
    admin: &str,
    account: i32,
    scopes: &[&str],
    cidrs: &[&str],
    expires_at: Option<prost_types::Timestamp>,
) -> Result<(pb::ApiKey, String), tonic::Status> {
    let request = pb::CreateApiKeyRequest {
        service_account_id: account,
        name: "test key".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        allowed_cidrs: cidrs.iter().map(|s| (*s).to_owned()).collect(),
        expires_at,
    };
    let reply = accounts(s).await.create_api_key(authed(admin, request)).await?.into_inner();
    Ok((reply.api_key.unwrap(), reply.key))
}

async fn introspect(s: &TestServer, key: &str, token: &str) -> Result<pb::IntrospectResponse, tonic::Status> {
    let mut auth = AuthServiceClient::new(s.channel().await);
    auth.introspect(authed(key, pb::IntrospectRequest { token: token.into() })).await.map(tonic::Response::into_inner)
}

async fn list_users(s: &TestServer, credential: &str) -> Result<pb::ListUsersResponse, tonic::Status> {
    s.users()
        .await
        .list_users(authed(credential, pb::ListUsersRequest::default()))
        .await
        .map(tonic::Response::into_inner)
}

fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// `{"active": false}` and nothing else.
fn inactive() -> pb::IntrospectResponse {
    pb::IntrospectResponse { active: false, ..Default::default() }
}

async fn introspection_tells_live_from_dead_and_nothing_more(s: TestServer) {
    let admin = s.admin_token().await;
    let (_, _, key) = account_with_key(&s, &admin, "gateway", &["introspect"]).await;
    let ivy = s.create_user(&admin, "ivy", None).await;
    let token = s.login("ivy", USER_PASSWORD).await;

    let live = introspect(&s, &key, &token).await.unwrap();
    let c = claims(&token);
    assert_eq!(
        live,
        pb::IntrospectResponse {
            active: true,
            sub: Some(ivy.id.to_string()),
            username: Some("ivy".into()),
            role: Some("user".into()),
            sid: Some(c["sid"].as_str().unwrap().into()),
            exp: Some(u32::try_from(c["exp"].as_i64().unwrap()).unwrap()),
            iat: Some(u32::try_from(c["iat"].as_i64().unwrap()).unwrap()),
            scope: Some("session".into()),
            token_type: Some("access_token".into()),
        }
    );
    // Twice: the second answer comes from the session cache and says the same.
    assert_eq!(introspect(&s, &key, &token).await.unwrap(), live);
    let admin_view = introspect(&s, &key, &admin).await.unwrap();
    assert_eq!(admin_view.scope.as_deref(), Some("session users:read users:write audit:read"));

    // Dead in every way, and the same answer for each.
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let mut expired_claims = c.clone();
    expired_claims["exp"] = serde_json::json!(chrono::Utc::now().timestamp() - 5);
    expired_claims["iat"] = serde_json::json!(chrono::Utc::now().timestamp() - 3600);
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &expired_claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    for (what, dead) in [
        ("forged", forged.as_str()),
        ("expired", expired.as_str()),
        ("garbage", "not-a-token"),
        ("empty", ""),
        ("an API key", key.as_str()),
    ] {
        assert_eq!(introspect(&s, &key, dead).await.unwrap(), inactive(), "{what}");
    }
    let mut auth = AuthServiceClient::new(s.channel().await);
    auth.logout(authed(&token, pb::LogoutRequest {})).await.unwrap();
    assert_eq!(introspect(&s, &key, &token).await.unwrap(), inactive(), "logged out");

    // Ended by an admin: sessions revoked, deactivated, deleted.
    let t2 = s.login("ivy", USER_PASSWORD).await;
    assert!(introspect(&s, &key, &t2).await.unwrap().active);
    let mut users = s.users().await;
    users.revoke_user_sessions(authed(&admin, pb::RevokeUserSessionsRequest { id: ivy.id })).await.unwrap();
    assert_eq!(introspect(&s, &key, &t2).await.unwrap(), inactive(), "sessions revoked");
    let t3 = s.login("ivy", USER_PASSWORD).await;
    let deactivate = pb::UpdateUserRequest { id: ivy.id, is_active: Some(false), ..Default::default() };
    users.update_user(authed(&admin, deactivate)).await.unwrap();
    assert_eq!(introspect(&s, &key, &t3).await.unwrap(), inactive(), "deactivated");
    let activate = pb::UpdateUserRequest { id: ivy.id, is_active: Some(true), ..Default::default() };
    users.update_user(authed(&admin, activate)).await.unwrap();
    let t4 = s.login("ivy", USER_PASSWORD).await;
    users.delete_user(authed(&admin, pb::DeleteUserRequest { id: ivy.id })).await.unwrap();
    assert_eq!(introspect(&s, &key, &t4).await.unwrap(), inactive(), "deleted");

    // Only a key with the scope may ask.
    let (_, _, reader) = account_with_key(&s, &admin, "reader", &["users:read"]).await;
    let someone = s.create_user(&admin, "jon", None).await;
    let jon = s.login(&someone.username, USER_PASSWORD).await;
    expect_code(introspect(&s, &reader, &jon).await, Code::PermissionDenied);
    expect_code(introspect(&s, &admin, &jon).await, Code::PermissionDenied);
    expect_code(introspect(&s, &jon, &jon).await, Code::PermissionDenied);
    let mut anonymous = AuthServiceClient::new(s.channel().await);
    expect_code(anonymous.introspect(pb::IntrospectRequest { token: jon.clone() }).await, Code::Unauthenticated);
    s.stop().await;
}

/// Every RPC against every kind of credential, decided by the access table: no credential, a
/// user's session, an admin's session, a key of each single scope, a key of all scopes.
async fn every_rpc_answers_each_credential_as_the_table_says(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "una", None).await;
    let user = s.login("una", USER_PASSWORD).await;
    let mut keys = Vec::new();
    for scope in Scope::ALL {
        let (_, _, key) =
            account_with_key(&s, &admin, &format!("only-{}", scope.as_str().replace(':', "-")), &[scope.as_str()])
                .await;
        keys.push((vec![scope], key));
    }
    let all: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    let (_, _, every) = account_with_key(&s, &admin, "everything", &all).await;
    keys.push((Scope::ALL.to_vec(), every));

    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let mut checked = 0;
    for (path, rule) in RPCS {
        let name = path.trim_start_matches('/');
        // Logout would end the session the loop uses; reflection and Watch stream.
        if name.ends_with("/Logout") || name.contains("Reflection") || name.ends_with("Health/Watch") {
            continue;
        }
        let admitted = |code: u32| !matches!(code, 7 | 16);
        let (code, message) = call(&client, &s.url, name, Some(&user), &[]).await;
        let user_ok =
            matches!(rule.access, Access::Public | Access::OwnToken | Access::Session | Access::SessionOrEnrolment);
        assert_eq!(admitted(code), user_ok, "{name} for a user: {code} {message}");
        let (code, message) = call(&client, &s.url, name, Some(&admin), &[]).await;
        let admin_ok = !matches!(rule.access, Access::Service);
        assert_eq!(admitted(code), admin_ok, "{name} for an admin: {code} {message}");
        for (scopes, key) in &keys {
            let (code, message) = call(&client, &s.url, name, Some(key), &[]).await;
            let key_ok = match rule.access {
                Access::Public => true,
                // Refresh and Logout verify a JWT; a key is none.
                Access::OwnToken | Access::Session | Access::SessionOrEnrolment => false,
                Access::Admin | Access::Service => rule.scope.is_some_and(|scope| scopes.contains(&scope)),
            };
            assert_eq!(admitted(code), key_ok, "{name} for a key of {scopes:?}: {code} {message}");
            if !key_ok && rule.access != Access::Public {
                let expected = if rule.access == Access::OwnToken { 16 } else { 7 };
                assert_eq!(code, expected, "{name} for a key of {scopes:?}: {message}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 25, "{checked} RPCs checked");
    s.stop().await;
}

async fn keys_are_shown_once_stored_hashed_revoked_and_rotated(s: TestServer) {
    let admin = s.admin_token().await;
    let (account, key, secret) = account_with_key(&s, &admin, "billing", &["users:read"]).await;
    assert!(secret.starts_with(&format!("iak_{}_", key.id)) && secret.len() == 4 + 16 + 1 + 43, "{secret}");
    assert_eq!(key.scopes, ["users:read"]);
    list_users(&s, &secret).await.unwrap();

    // Stored as a hash; never in the audit log; listed without it.
    let mut conn = s.app().db().get().await.unwrap();
    let row = key_rows::find_key(&mut conn, &key.id).await.unwrap().unwrap();
    let secret_part = secret.strip_prefix(&format!("iak_{}_", key.id)).unwrap();
    let hash: String = sha2::Sha256::digest(secret_part.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(row.secret_sha256, hash);
    let (entries, _) = audit_rows::query(&mut conn, &AuditQuery::default(), 200, 0).await.unwrap();
    drop(conn);
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert!(actions.contains(&"service_account_create") && actions.contains(&"api_key_create"), "{actions:?}");
    for e in &entries {
        assert!(!e.metadata.to_string().contains(secret_part), "secret in audit: {e:?}");
    }
    let mut sa = accounts(&s).await;
    let listed = sa.list_api_keys(authed(&admin, pb::ListApiKeysRequest { service_account_id: account })).await;
    let listed = listed.unwrap().into_inner().api_keys;
    assert_eq!(listed.len(), 1);
    assert!(!format!("{listed:?}").contains(secret_part));
    // The use is recorded, after the reply.
    let mut used = None;
    for _ in 0..50 {
        let keys = sa.list_api_keys(authed(&admin, pb::ListApiKeysRequest { service_account_id: account })).await;
        used = keys.unwrap().into_inner().api_keys[0].last_used_at;
        if used.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(used.is_some(), "last_used_at recorded");

    // A wrong secret for a real id, a truncated key, a made-up id: all "Invalid API key".
    let mut wrong = secret.clone();
    wrong.replace_range(secret.len() - 4.., "AAAA");
    for bad in [
        wrong.as_str(),
        &secret[..secret.len() - 1],
        "iak_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let message = expect_code(list_users(&s, bad).await, Code::Unauthenticated);
        assert!(message.contains("Invalid API key"), "{message}");
    }

    // Rotation: both keys work through the grace period; with none, the old one ends now.
    let rotate = |key_id: &str, grace: Option<i32>| pb::RotateApiKeyRequest {
        service_account_id: account,
        key_id: key_id.into(),
        grace_seconds: grace,
    };
    let second = sa.rotate_api_key(authed(&admin, rotate(&key.id, Some(3600)))).await.unwrap().into_inner();
    let second_secret = second.key;
    let second = second.api_key.unwrap();
    assert_eq!((second.name.as_str(), second.scopes.as_slice()), ("test key", ["users:read".to_owned()].as_slice()));
    list_users(&s, &secret).await.unwrap();
    list_users(&s, &second_secret).await.unwrap();
    let third = sa.rotate_api_key(authed(&admin, rotate(&second.id, Some(0)))).await.unwrap().into_inner();
    let message = expect_code(list_users(&s, &second_secret).await, Code::Unauthenticated);
    assert!(message.contains("revoked or has expired"), "{message}");
    list_users(&s, &third.key).await.unwrap();

    // Revocation is at once; a second revocation finds no live key.
    let revoke = |key_id: &str| pb::RevokeApiKeyRequest { service_account_id: account, key_id: key_id.into() };
    sa.revoke_api_key(authed(&admin, revoke(&key.id))).await.unwrap();
    expect_code(list_users(&s, &secret).await, Code::Unauthenticated);
    expect_code(sa.revoke_api_key(authed(&admin, revoke(&key.id))).await, Code::NotFound);
    // Deleting the account ends its keys.
    sa.delete_service_account(authed(&admin, pb::DeleteServiceAccountRequest { id: account })).await.unwrap();
    expect_code(list_users(&s, &third.key).await, Code::Unauthenticated);
    // A key never manages keys, even with every scope.
    let all: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    let (other, _, every) = account_with_key(&s, &admin, "ops", &all).await;
    let request = pb::ListApiKeysRequest { service_account_id: other };
    expect_code(sa.list_api_keys(authed(&every, request)).await, Code::PermissionDenied);
    s.stop().await;
}

async fn keys_expire_and_keep_to_their_addresses(s: TestServer) {
    let admin = s.admin_token().await;
    let (account, _, _) = account_with_key(&s, &admin, "edge", &["users:read"]).await;
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let (_, expiring) = new_key(
        &s,
        &admin,
        account,
        &["users:read"],
        &[],
        Some(prost_types::Timestamp { seconds: soon.timestamp(), nanos: 0 }),
    )
    .await
    .unwrap();
    list_users(&s, &expiring).await.unwrap();
    tokio::time::sleep((soon - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(200)).await;
    let message = expect_code(list_users(&s, &expiring).await, Code::Unauthenticated);
    assert!(message.contains("revoked or has expired"), "{message}");

    let (_, elsewhere) =
        new_key(&s, &admin, account, &["users:read"], &["10.0.0.0/8", "192.0.2.7"], None).await.unwrap();
    let (_, here) = new_key(&s, &admin, account, &["users:read"], &["127.0.0.0/8"], None).await.unwrap();
    let message = expect_code(list_users(&s, &elsewhere).await, Code::PermissionDenied);
    assert!(message.contains("not allowed from this address"), "{message}");
    list_users(&s, &here).await.unwrap();
    // A client cannot claim an address: this peer is no trusted proxy.
    let mut request = authed(&elsewhere, pb::ListUsersRequest::default());
    request.metadata_mut().insert("x-forwarded-for", "10.1.2.3".parse().unwrap());
    expect_code(s.users().await.list_users(request).await, Code::PermissionDenied);
    // Refusals of a known key are audited, by key id.
    let mut conn = s.app().db().get().await.unwrap();
    let query = AuditQuery { action: Some("api_key_refused".into()), ..Default::default() };
    let (refused, _) = audit_rows::query(&mut conn, &query, 50, 0).await.unwrap();
    let reasons: Vec<&str> = refused.iter().filter_map(|e| e.metadata["reason"].as_str()).collect();
    assert!(reasons.contains(&"revoked_or_expired") && reasons.contains(&"address_not_allowed"), "{reasons:?}");
    s.stop().await;
}

async fn bad_key_requests_are_refused_and_change_nothing(s: TestServer) {
    let admin = s.admin_token().await;
    let (account, key, _) = account_with_key(&s, &admin, "strict", &["introspect"]).await;
    let past = prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() - 1, nanos: 0 };
    let long = "x".repeat(65);
    let cidrs: Vec<String> = (0..33).map(|i| format!("10.0.{i}.0/24")).collect();
    let cidrs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
    for (scopes, nets, expires, field) in [
        (vec![], vec![], None, "scopes"),
        (vec!["admin"], vec![], None, "scopes"),
        (vec!["Introspect"], vec![], None, "scopes"),
        (vec!["introspect"], vec!["10.0.0.0/33"], None, "allowed_cidrs"),
        (vec!["introspect"], vec!["example.com"], None, "allowed_cidrs"),
        (vec!["introspect"], cidrs.clone(), None, "allowed_cidrs"),
        (vec!["introspect"], vec![], Some(past), "expires_at"),
    ] {
        let message = expect_code(new_key(&s, &admin, account, &scopes, &nets, expires).await, Code::InvalidArgument);
        assert!(message.starts_with(field), "{field}: {message}");
    }
    let mut sa = accounts(&s).await;
    for (name, field) in [("", "name"), (long.as_str(), "name"), ("has space", "name"), ("STRICT", "name")] {
        let request = pb::CreateServiceAccountRequest { name: name.into(), description: String::new() };
        let result = sa.create_service_account(authed(&admin, request)).await;
        let code = if name == "STRICT" { Code::AlreadyExists } else { Code::InvalidArgument };
        let message = expect_code(result, code);
        assert!(message.contains(field), "{name:?}: {message}");
    }
    let rotate = |id: i32, key_id: &str, grace: Option<i32>| pb::RotateApiKeyRequest {
        service_account_id: id,
        key_id: key_id.into(),
        grace_seconds: grace,
    };
    expect_code(sa.rotate_api_key(authed(&admin, rotate(account, &key.id, Some(-1)))).await, Code::InvalidArgument);
    expect_code(
        sa.rotate_api_key(authed(&admin, rotate(account, &key.id, Some(2_592_001)))).await,
        Code::InvalidArgument,
    );
    expect_code(sa.rotate_api_key(authed(&admin, rotate(account, "../etc", None))).await, Code::InvalidArgument);
    expect_code(sa.rotate_api_key(authed(&admin, rotate(0, &key.id, None))).await, Code::InvalidArgument);
    expect_code(sa.rotate_api_key(authed(&admin, rotate(account + 100, &key.id, None))).await, Code::NotFound);
    // Ten live keys at most.
    for _ in 1..10 {
        new_key(&s, &admin, account, &["introspect"], &[], None).await.unwrap();
    }
    expect_code(new_key(&s, &admin, account, &["introspect"], &[], None).await, Code::FailedPrecondition);
    let listed = sa.list_api_keys(authed(&admin, pb::ListApiKeysRequest { service_account_id: account })).await;
    assert_eq!(listed.unwrap().into_inner().api_keys.len(), 10, "refusals added nothing");
    let accounts_now = sa.list_service_accounts(authed(&admin, pb::ListServiceAccountsRequest {})).await;
    assert_eq!(accounts_now.unwrap().into_inner().service_accounts.len(), 1);
    s.stop().await;
}

/// A write made with a key and the key's revocation, at once, many rounds: the write either
/// lands before the revocation (its audit row first) or is refused; never after it.
async fn a_revoked_key_writes_nothing_under_any_interleaving(s: TestServer) {
    let admin = s.admin_token().await;
    let (account, _, _) = account_with_key(&s, &admin, "racer", &["users:write"]).await;
    let target = s.create_user(&admin, "target", None).await;
    let rounds = 42;
    let (mut landed, mut refused) = (0, 0);
    for round in 0..rounds {
        let (key, secret) = new_key(&s, &admin, account, &["users:write"], &[], None).await.unwrap();
        // Warm the key's cache entry, as a service in use would have it.
        let mut users = s.users().await;
        users.unlock_user(authed(&secret, pb::UnlockUserRequest { id: target.id })).await.unwrap();
        let mut sa = accounts(&s).await;
        let revoke = pb::RevokeApiKeyRequest { service_account_id: account, key_id: key.id.clone() };
        // Staggered starts, one side or the other first by up to 1 ms, so both orders and the
        // true overlaps between them all happen.
        let offset = i64::from(round % 21) * 100 - 1000;
        let delay = |us: i64| Duration::from_micros(u64::try_from(us.max(0)).unwrap());
        let (unlocked, revoked) = tokio::join!(
            async {
                tokio::time::sleep(delay(-offset)).await;
                users.unlock_user(authed(&secret, pb::UnlockUserRequest { id: target.id })).await
            },
            async {
                tokio::time::sleep(delay(offset)).await;
                sa.revoke_api_key(authed(&admin, revoke)).await
            },
        );
        revoked.unwrap();
        let mut conn = s.app().db().get().await.unwrap();
        let (entries, _) = audit_rows::query(&mut conn, &AuditQuery::default(), 200, 0).await.unwrap();
        let by_key = |action: &str| {
            entries
                .iter()
                .filter(|e| e.action == action && e.metadata["api_key_id"].as_str() == Some(key.id.as_str()))
                .collect::<Vec<_>>()
        };
        let revocation = by_key("api_key_revoke");
        assert_eq!(revocation.len(), 1, "revocation audited once");
        let writes = by_key("user_unlock");
        for write in &writes {
            assert_eq!(write.user_id.map(|u| u.get()), Some(target.id));
            assert_eq!(write.actor_id, None, "a key is no user");
            assert_eq!(write.metadata["service_account_id"], account);
            assert!(write.id < revocation[0].id, "round {round}: a write landed after the revocation");
        }
        match unlocked {
            Ok(_) => {
                landed += 1;
                assert_eq!(writes.len(), 2, "round {round}: both writes audited by key");
            }
            Err(status) => {
                refused += 1;
                assert_eq!(status.code(), Code::Unauthenticated, "round {round}: {status:?}");
                assert_eq!(writes.len(), 1, "round {round}: a refused write was audited");
            }
        }
        // After the revocation answered, the key writes nothing.
        let after = users.unlock_user(authed(&secret, pb::UnlockUserRequest { id: target.id })).await;
        expect_code(after, Code::Unauthenticated);
    }
    eprintln!("{landed} writes landed before their key's revocation, {refused} were refused");
    assert_eq!(landed + refused, rounds);
    s.stop().await;
}

crate::on_both_backends!(
    introspection_tells_live_from_dead_and_nothing_more,
    every_rpc_answers_each_credential_as_the_table_says,
    keys_are_shown_once_stored_hashed_revoked_and_rotated,
    keys_expire_and_keep_to_their_addresses,
    bad_key_requests_are_refused_and_change_nothing,
    a_revoked_key_writes_nothing_under_any_interleaving,
    service_calls_in_json_through_envoy,
);

/// Each key has its own budget; one key's flood does not slow another.
async fn each_key_is_rate_limited_on_its_own(backend: crate::common::Backend) {
    let options = Options::default().arg("rate-limit-api-key-per-minute", "5");
    let Some(s) = TestServer::start_with(backend, options).await else { return };
    let admin = s.admin_token().await;
    let (account, _, first) = account_with_key(&s, &admin, "noisy", &["users:read"]).await;
    let (_, second) = new_key(&s, &admin, account, &["users:read"], &[], None).await.unwrap();
    for _ in 0..5 {
        list_users(&s, &first).await.unwrap();
    }
    let status = list_users(&s, &first).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.metadata().get("retry-after").is_some(), "{status:?}");
    list_users(&s, &second).await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_is_rate_limited_on_its_own_sqlite() {
    each_key_is_rate_limited_on_its_own(crate::common::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_is_rate_limited_on_its_own_postgres() {
    each_key_is_rate_limited_on_its_own(crate::common::Backend::Postgres).await;
}

/// The JSON face through a real Envoy: what a service written in any language sees.
async fn service_calls_in_json_through_envoy(s: TestServer) {
    use serde_json::json;
    let Some(envoy) = crate::common::Envoy::start(&[s.upstream()]).await else { return };
    let api = crate::common::Json::new(&envoy.url);
    let admin = api.login(crate::common::ADMIN_USERNAME, crate::common::ADMIN_PASSWORD).await;
    let r =
        api.post("/api/v1/service-accounts", Some(&admin), json!({"name": "search", "description": "indexer"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let account = r.body["id"].as_i64().unwrap();
    assert_eq!(r.body["name"], "search");
    let r = api
        .post(
            &format!("/api/v1/service-accounts/{account}/keys"),
            Some(&admin),
            json!({"name": "prod", "scopes": ["introspect", "users:read"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let key = r.body["key"].as_str().unwrap().to_owned();
    assert_eq!(r.body["api_key"]["scopes"], json!(["introspect", "users:read"]));
    assert_eq!(r.body["api_key"]["allowed_cidrs"], json!([]));
    // Through Envoy the client's address is the one Envoy appended to X-Forwarded-For.
    let r = api
        .post(
            &format!("/api/v1/service-accounts/{account}/keys"),
            Some(&admin),
            json!({"name": "elsewhere", "scopes": ["users:read"], "allowed_cidrs": ["10.0.0.0/8", "2001:db8::1"]}),
        )
        .await;
    assert_eq!(r.body["api_key"]["allowed_cidrs"], json!(["10.0.0.0/8", "2001:db8::1/128"]));
    let elsewhere = r.body["key"].as_str().unwrap().to_owned();
    let mut spoofed = api.request(reqwest::Method::GET, "/api/v1/users").bearer_auth(&elsewhere);
    spoofed = spoofed.header("x-forwarded-for", "10.9.9.9");
    let r = api.send(spoofed).await;
    assert_eq!(r.detail(403), "API key is not allowed from this address");
    let listed = api.get(&format!("/api/v1/service-accounts/{account}/keys"), Some(&admin)).await;
    assert_eq!(listed.status, 200);
    // The secret is all after `iak_<id>_`: it is URL-safe base64 and may hold `_` itself.
    let secret = key.splitn(3, '_').nth(2).unwrap();
    assert!(secret.len() >= 43, "{key}");
    assert!(!listed.body.to_string().contains(secret), "the secret is never listed");

    s.create_user(&admin, "vera", None).await;
    let token = api.login("vera", USER_PASSWORD).await;
    let live = api.post("/api/v1/auth/introspect", Some(&key), json!({"token": token})).await;
    assert_eq!(live.status, 200, "{live:?}");
    let mut fields: Vec<&str> = live.body.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["active", "exp", "iat", "role", "scope", "sid", "sub", "token_type", "username"]);
    assert_eq!(live.body["active"], true);
    assert!(live.body["exp"].is_u64() && live.body["iat"].is_u64(), "RFC 7662 times are numbers: {}", live.body);
    assert!(live.body["sub"].is_string(), "sub is a string (RFC 7519)");
    for dead in ["", "nope", key.as_str()] {
        let r = api.post("/api/v1/auth/introspect", Some(&key), json!({"token": dead})).await;
        assert_eq!((r.status, &r.body), (200, &json!({"active": false})), "{dead:?}");
    }
    // A user's token may not introspect; a key may not read the caller's own account.
    let r = api.post("/api/v1/auth/introspect", Some(&admin), json!({"token": token})).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(api.get("/api/v1/users/me", Some(&key)).await.status, 403);
    assert_eq!(api.get("/api/v1/users", Some(&key)).await.status, 200);
    // grpc-web through Envoy: the same key, the same rules.
    let grpc_web = |method: &str| {
        reqwest::Client::builder()
            .http1_only()
            .build()
            .unwrap()
            .post(format!("{}/instachatico.auth.v1.UserService/{method}", envoy.url))
            .header("content-type", "application/grpc-web+proto")
            .header("authorization", format!("Bearer {key}"))
            .body(vec![0u8; 5])
    };
    for (method, expected) in [("ListUsers", "grpc-status:0"), ("GetMe", "grpc-status:7")] {
        let reply = grpc_web(method).send().await.unwrap();
        assert_eq!(reply.status(), 200);
        let in_headers = reply.headers().get("grpc-status").map(|v| format!("grpc-status:{}", v.to_str().unwrap()));
        let body = String::from_utf8_lossy(&reply.bytes().await.unwrap()).into_owned();
        assert!(
            in_headers.as_deref() == Some(expected) || body.contains(expected),
            "{method}: {in_headers:?} {body:?}"
        );
    }
    let r = api.call(reqwest::Method::DELETE, &format!("/api/v1/service-accounts/{account}"), Some(&admin), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(api.get("/api/v1/users", Some(&key)).await.status, 401);
    drop(envoy);
    s.stop().await;
}
