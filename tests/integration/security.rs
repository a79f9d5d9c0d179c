//! SPEC 5 in full: sessions (list, revoke, admin revoke, lifetime), rate limits, per-account
//! throttling with admin clear, the audit query, registration, rehash on login, key rotation.
//! Time is a parameter, as in kanidm (`ct`): cool-downs are checked as of a later `now`, not slept.

use std::time::Duration;

use chrono::Utc;
use instachatico_auth::domain::types::ClientInfo;
use instachatico_auth::error::Error;
use instachatico_auth::model::UserEdit;
use instachatico_auth::pb;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::json;
use tonic::{Code, Request};

use crate::common::{
    ADMIN_PASSWORD, ADMIN_USERNAME, Backend, Envoy, Json, Options, TestServer, USER_PASSWORD, authed, expect_code,
};

/// A login as if from `ip`, for a server told to trust loopback as a proxy (TRUSTED_PROXIES).
fn login_from(ip: &str, username: &str, password: &str) -> Request<pb::LoginRequest> {
    let mut r = Request::new(pb::LoginRequest { username: username.into(), password: password.into() });
    r.metadata_mut().insert("x-forwarded-for", ip.parse().unwrap());
    r
}

fn retry_after(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after")
}

async fn sessions_list_and_revoke(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "sue", None).await;
    let first = s.login("sue", USER_PASSWORD).await;
    let second = s.login("sue", USER_PASSWORD).await;
    let mut users = s.users().await;

    let list =
        users.list_my_sessions(authed(&second, pb::ListMySessionsRequest {})).await.unwrap().into_inner().sessions;
    assert_eq!(list.len(), 2);
    assert_eq!(list.iter().filter(|x| x.current).count(), 1);
    assert!(list.iter().all(|x| x.ip_address == "127.0.0.1" && x.expires_at.is_some()));
    let other = list.iter().find(|x| !x.current).unwrap().id.clone();

    let revoke = |token: &str, id: &str| authed(token, pb::RevokeMySessionRequest { session_id: id.into() });
    users.revoke_my_session(revoke(&second, &other)).await.unwrap();
    expect_code(users.get_me(authed(&first, pb::GetMeRequest {})).await, Code::Unauthenticated);
    users.get_me(authed(&second, pb::GetMeRequest {})).await.unwrap();
    expect_code(users.revoke_my_session(revoke(&second, &other)).await, Code::NotFound);
    expect_code(users.revoke_my_session(revoke(&second, "")).await, Code::InvalidArgument);
    // Someone else's session is not yours to end.
    let admin_sid =
        users.list_my_sessions(authed(&admin, pb::ListMySessionsRequest {})).await.unwrap().into_inner().sessions[0]
            .id
            .clone();
    expect_code(users.revoke_my_session(revoke(&second, &admin_sid)).await, Code::NotFound);
    users.get_me(authed(&admin, pb::GetMeRequest {})).await.unwrap();

    // Admin: end all of a user's sessions.
    let third = s.login("sue", USER_PASSWORD).await;
    let sue_id = users.get_me(authed(&third, pb::GetMeRequest {})).await.unwrap().into_inner().id;
    expect_code(
        users.revoke_user_sessions(authed(&third, pb::RevokeUserSessionsRequest { id: sue_id })).await,
        Code::PermissionDenied,
    );
    let done = users
        .revoke_user_sessions(authed(&admin, pb::RevokeUserSessionsRequest { id: sue_id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.revoked, 2);
    for token in [&second, &third] {
        expect_code(users.get_me(authed(token, pb::GetMeRequest {})).await, Code::Unauthenticated);
    }
    expect_code(
        users.revoke_user_sessions(authed(&admin, pb::RevokeUserSessionsRequest { id: 9999 })).await,
        Code::NotFound,
    );
    s.stop().await;
}

async fn session_lifetime_bounds_tokens_and_refresh(s: TestServer) {
    // Sessions of one hour, tokens of two: the token never outlives its session.
    let s = s.restart(&[("session-lifetime-hours", "1"), ("jwt-expiration-minutes", "120")]).await;
    let reply = s.login_reply(ADMIN_USERNAME, ADMIN_PASSWORD).await.unwrap();
    let (expires_in, access_token) = (reply.expires_in.unwrap(), reply.access_token.unwrap());
    assert!(expires_in <= 3600 && expires_in > 3590, "{expires_in}");
    let client = ClientInfo::default();
    let now = Utc::now();
    // Within the refresh window but past the session's absolute end: refused.
    let later = now + chrono::Duration::minutes(61);
    assert!(s.app().refresh(&access_token, &client, later).await.is_err());
    assert!(s.app().refresh(&access_token, &client, now + chrono::Duration::minutes(30)).await.is_ok());
    s.stop().await;
}

async fn login_rate_limit_per_address(s: TestServer) {
    // This test is its own proxy: it names the client address in X-Forwarded-For over TCP.
    let s = s.restart(&[("rate-limit-login-per-minute", "5"), ("trusted-proxies", "127.0.0.1/32")]).await;
    let mut auth = s.auth().await;
    for i in 0..5 {
        let password = if i % 2 == 0 { ADMIN_PASSWORD } else { "Wrong_password1!" };
        let r = auth.login(login_from("203.0.113.7", ADMIN_USERNAME, password)).await;
        assert!(r.is_ok() || r.unwrap_err().code() == Code::Unauthenticated);
    }
    let status = auth.login(login_from("203.0.113.7", ADMIN_USERNAME, ADMIN_PASSWORD)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!((1..=60).contains(&retry_after(&status)), "{status:?}");
    // Another address has its own budget; health is never limited.
    auth.login(login_from("203.0.113.8", ADMIN_USERNAME, ADMIN_PASSWORD)).await.unwrap();
    s.health().await.check(pb::CheckRequest {}).await.unwrap();
    s.stop().await;
}

async fn api_rate_limit_per_user(s: TestServer) {
    let s = s.restart(&[("rate-limit-api-per-minute", "3")]).await;
    let admin = s.admin_token().await;
    s.create_user(&admin, "tom", None).await; // uses 1 of the admin's 3
    let tom = s.login("tom", USER_PASSWORD).await;
    let mut users = s.users().await;
    users.get_me(authed(&admin, pb::GetMeRequest {})).await.unwrap();
    users.get_me(authed(&admin, pb::GetMeRequest {})).await.unwrap();
    let status = users.get_me(authed(&admin, pb::GetMeRequest {})).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!((1..=60).contains(&retry_after(&status)));
    // Per user: Tom is unaffected.
    users.get_me(authed(&tom, pb::GetMeRequest {})).await.unwrap();
    s.health().await.check(pb::CheckRequest {}).await.unwrap();
    s.stop().await;
}

/// The throttling tests' cool-down. No test waits it out: they ask the domain as of a later
/// `now` (the same in-process App the server runs, on the test's database).
const COOLDOWN_SECONDS: i64 = 60;

/// A call as of `seconds` from now.
fn seconds_from_now(seconds: i64) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::seconds(seconds)
}

async fn failed_logins_throttle_the_account_from_that_address_only(s: TestServer) {
    let cooldown = COOLDOWN_SECONDS.to_string();
    let s = s
        .restart(&[
            ("login-throttle-threshold", "3"),
            ("login-throttle-cooldown-seconds", &cooldown),
            ("trusted-proxies", "127.0.0.1/32"),
        ])
        .await;
    let admin = s.admin_token().await;
    let uma = s.create_user(&admin, "uma", None).await;
    let mut auth = s.auth().await;
    let attacker = "198.51.100.66";
    for _ in 0..3 {
        expect_code(auth.login(login_from(attacker, "uma", "Wrong_password1!")).await, Code::Unauthenticated);
    }
    // Locked from that address, even with the right password...
    let status = auth.login(login_from(attacker, "uma", USER_PASSWORD)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        (COOLDOWN_SECONDS - 5..=COOLDOWN_SECONDS).contains(&i64::try_from(retry_after(&status)).unwrap()),
        "{status:?}"
    );
    // ...but the owner elsewhere is not locked out.
    auth.login(login_from("192.0.2.10", "uma", USER_PASSWORD)).await.unwrap();
    // Unknown names behave the same, so throttling does not reveal which names exist.
    for _ in 0..3 {
        expect_code(auth.login(login_from(attacker, "nobody_here", "Wrong_password1!")).await, Code::Unauthenticated);
    }
    assert_eq!(
        auth.login(login_from(attacker, "nobody_here", "Wrong_password1!")).await.unwrap_err().code(),
        Code::ResourceExhausted
    );

    // Admin clear lifts the lock at once.
    let mut users = s.users().await;
    expect_code(
        users.unlock_user(authed(&s.login("uma", USER_PASSWORD).await, pb::UnlockUserRequest { id: uma.id })).await,
        Code::PermissionDenied,
    );
    users.unlock_user(authed(&admin, pb::UnlockUserRequest { id: uma.id })).await.unwrap();
    auth.login(login_from(attacker, "uma", USER_PASSWORD)).await.unwrap();

    // The cool-down ends by itself: throttling never locks anyone out for good.
    for _ in 0..3 {
        expect_code(auth.login(login_from(attacker, "uma", "Wrong_password1!")).await, Code::Unauthenticated);
    }
    assert_eq!(
        auth.login(login_from(attacker, "uma", USER_PASSWORD)).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // Still refused just before the cool-down ends, let in once it has.
    let client = ClientInfo { ip: Some(attacker.parse().unwrap()), user_agent: None };
    let password = SecretString::from(USER_PASSWORD);
    let early = s.app().login("uma", &password, &client, seconds_from_now(COOLDOWN_SECONDS - 5)).await;
    assert!(matches!(early, Err(Error::TooManyRequests { .. })), "{early:?}");
    s.app().login("uma", &password, &client, seconds_from_now(COOLDOWN_SECONDS)).await.unwrap();

    let mut audit = instachatico_auth::pb::audit_service_client::AuditServiceClient::new(s.channel().await);
    let filter = pb::ListAuditLogsRequest {
        user_id: uma.id,
        action: "login_throttled".into(),
        include_total: true,
        ..Default::default()
    };
    let rows = audit.list_audit_logs(authed(&admin, filter)).await.unwrap().into_inner();
    assert_eq!(rows.total, Some(2), "one throttle event per lock");
    assert!(rows.entries.iter().all(|e| e.ip_address == attacker));
    let unlock = pb::ListAuditLogsRequest {
        user_id: uma.id,
        action: "user_unlock".into(),
        include_total: true,
        ..Default::default()
    };
    assert_eq!(audit.list_audit_logs(authed(&admin, unlock)).await.unwrap().into_inner().total, Some(1));
    s.stop().await;
}

/// A wrong current password in ChangeMyPassword is a failed sign-in of the account: audited, and
/// after the threshold this address must wait out the cool-down, for ChangeMyPassword and Login
/// alike, so a stolen session cannot be used to guess the password.
async fn guessing_the_current_password_is_throttled(s: TestServer) {
    let cooldown = COOLDOWN_SECONDS.to_string();
    let s = s.restart(&[("login-throttle-threshold", "3"), ("login-throttle-cooldown-seconds", &cooldown)]).await;
    let admin = s.admin_token().await;
    let vic = s.create_user(&admin, "vic", None).await;
    let token = s.login("vic", USER_PASSWORD).await;
    let mut users = s.users().await;
    let guess = |current: &str| {
        authed(
            &token,
            pb::ChangeMyPasswordRequest { current_password: current.into(), new_password: "New_password456!".into() },
        )
    };
    for _ in 0..3 {
        let message = expect_code(users.change_my_password(guess("Wrong_guess1!")).await, Code::InvalidArgument);
        assert_eq!(message, "current_password: is incorrect");
    }
    let status = users.change_my_password(guess(USER_PASSWORD)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        (COOLDOWN_SECONDS - 5..=COOLDOWN_SECONDS).contains(&i64::try_from(retry_after(&status)).unwrap()),
        "{status:?}"
    );
    let login = pb::LoginRequest { username: "vic".into(), password: USER_PASSWORD.into() };
    expect_code(s.auth().await.login(Request::new(login)).await, Code::ResourceExhausted);

    let mut audit = instachatico_auth::pb::audit_service_client::AuditServiceClient::new(s.channel().await);
    let filter = pb::ListAuditLogsRequest { user_id: vic.id, action: "login_failed".into(), ..Default::default() };
    let rows = audit.list_audit_logs(authed(&admin, filter)).await.unwrap().into_inner();
    let reason = |e: &pb::AuditLog| {
        e.metadata.as_ref().and_then(|m| m.fields.get("reason")).and_then(|v| match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
    };
    let reasons: Vec<_> = rows.entries.iter().filter_map(reason).collect();
    assert_eq!(reasons.iter().filter(|r| *r == "bad_current_password").count(), 3, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| *r == "throttled").count(), 2, "{reasons:?}");
    let throttled = pb::ListAuditLogsRequest {
        user_id: vic.id,
        action: "login_throttled".into(),
        include_total: true,
        ..Default::default()
    };
    assert_eq!(audit.list_audit_logs(authed(&admin, throttled)).await.unwrap().into_inner().total, Some(1));

    // The cool-down ends by itself (not before); then the right current password works.
    let me = s.app().authenticate_token(&token, Utc::now()).await.unwrap();
    let client = ClientInfo { ip: Some("127.0.0.1".parse().unwrap()), user_agent: None };
    let (current, new) = (SecretString::from(USER_PASSWORD), SecretString::from("New_password456!"));
    let early = s.app().change_my_password(&me, &current, &new, &client, seconds_from_now(COOLDOWN_SECONDS - 5)).await;
    assert!(matches!(early, Err(Error::TooManyRequests { .. })), "{early:?}");
    s.app().change_my_password(&me, &current, &new, &client, seconds_from_now(COOLDOWN_SECONDS)).await.unwrap();
    s.stop().await;
}

async fn audit_query_filters_and_pages(s: TestServer) {
    let admin = s.admin_token().await;
    let vic = s.create_user(&admin, "vic", None).await;
    for _ in 0..3 {
        s.login("vic", USER_PASSWORD).await;
    }
    expect_code(s.login_reply("vic", "Wrong_password1!").await, Code::Unauthenticated);
    let mut audit = instachatico_auth::pb::audit_service_client::AuditServiceClient::new(s.channel().await);
    let query = |r: pb::ListAuditLogsRequest| authed(&admin, pb::ListAuditLogsRequest { include_total: true, ..r });

    let mine = audit
        .list_audit_logs(query(pb::ListAuditLogsRequest { user_id: vic.id, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.total, Some(5), "create, 3 logins, 1 failure: {:?}", mine.entries);
    let ids: Vec<i64> = mine.entries.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");

    let page = |offset| pb::ListAuditLogsRequest { user_id: vic.id, limit: 2, offset, ..Default::default() };
    let p1 = audit.list_audit_logs(query(page(0))).await.unwrap().into_inner();
    let p3 = audit.list_audit_logs(query(page(4))).await.unwrap().into_inner();
    assert_eq!((p1.entries.len(), p1.total, p3.entries.len()), (2, Some(5), 1));
    assert_eq!(p1.entries[0].id, ids[0]);
    assert_eq!(p3.entries[0].id, ids[4]);

    let failed = audit
        .list_audit_logs(query(pb::ListAuditLogsRequest {
            user_id: vic.id,
            action: "login_failed".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.total, Some(1));
    let meta = failed.entries[0].metadata.as_ref().unwrap();
    assert_eq!(meta.fields["reason"].kind, Some(prost_types::value::Kind::StringValue("bad_password".into())));

    let ts = |t: chrono::DateTime<Utc>| Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 });
    let future = pb::ListAuditLogsRequest { since: ts(Utc::now() + chrono::Duration::hours(1)), ..Default::default() };
    assert_eq!(audit.list_audit_logs(query(future)).await.unwrap().into_inner().total, Some(0));
    let past = pb::ListAuditLogsRequest { until: ts(Utc::now() - chrono::Duration::hours(1)), ..Default::default() };
    assert_eq!(audit.list_audit_logs(query(past)).await.unwrap().into_inner().total, Some(0));
    let all = pb::ListAuditLogsRequest { since: ts(Utc::now() - chrono::Duration::hours(1)), ..Default::default() };
    assert!(audit.list_audit_logs(query(all)).await.unwrap().into_inner().total >= Some(7));

    let user = s.login("vic", USER_PASSWORD).await;
    expect_code(
        audit.list_audit_logs(authed(&user, pb::ListAuditLogsRequest::default())).await,
        Code::PermissionDenied,
    );
    expect_code(audit.list_audit_logs(Request::new(pb::ListAuditLogsRequest::default())).await, Code::Unauthenticated);
    expect_code(
        audit.list_audit_logs(query(pb::ListAuditLogsRequest { limit: 500, ..Default::default() })).await,
        Code::InvalidArgument,
    );
    s.stop().await;
}

async fn registration_is_off_unless_enabled(s: TestServer) {
    let register = |name: &str, password: &str| pb::RegisterRequest {
        username: name.into(),
        email: format!("{name}@example.com"),
        password: password.into(),
    };
    let msg = expect_code(s.auth().await.register(register("walt", USER_PASSWORD)).await, Code::PermissionDenied);
    assert!(msg.contains("Registration is disabled"));
    let s = s.restart(&[("allow-registration", "true"), ("rate-limit-login-per-minute", "2")]).await;
    let mut auth = s.auth().await;
    let walt = auth.register(register("walt", USER_PASSWORD)).await.unwrap();
    assert_eq!(walt.metadata().get("x-http-status").map(|v| v.to_str().unwrap()), Some("201"));
    let walt = walt.into_inner();
    assert_eq!((walt.role.as_str(), walt.is_active, walt.backend.is_none()), ("user", true, true));
    // The 201 hint is for successes only: a refusal keeps Envoy's mapping of its code.
    let weak = auth.register(register("xena", "weak")).await.unwrap_err();
    assert_eq!(weak.code(), Code::InvalidArgument, "{weak:?}");
    assert!(weak.metadata().get("x-http-status").is_none(), "{weak:?}");
    // Invalid attempts count too: the third from this address in a minute is over the limit.
    expect_code(auth.register(register("yuri", USER_PASSWORD)).await, Code::ResourceExhausted);
    s.stop().await;
}

async fn weak_hashes_are_upgraded_on_login(s: TestServer) {
    let s = s.restart(&[("bcrypt-cost", "11")]).await;
    let admin = s.admin_token().await;
    let zoe = s.create_user(&admin, "zoe", None).await;
    // Give her a cost-10 hash, as an older deployment would have.
    let weak = bcrypt::hash(USER_PASSWORD, 10).unwrap();
    let mut conn = s.app().db().get().await.unwrap();
    let zoe_id = instachatico_auth::model::UserId(zoe.id);
    let edit = instachatico_auth::model::UserEdit { password_hash: Some(weak.clone()), ..UserEdit::at(Utc::now()) };
    instachatico_auth::db::models::users::update(&mut conn, zoe_id, &edit).await.unwrap();
    s.login("zoe", USER_PASSWORD).await;
    let mut upgraded = None;
    for _ in 0..50 {
        let (row, _) = instachatico_auth::db::models::users::find(&mut conn, zoe_id).await.unwrap().unwrap();
        if row.password_hash != weak {
            upgraded = Some(row.password_hash);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hash = upgraded.expect("re-hashed after login");
    assert!(hash.starts_with("$2b$11$"), "{hash}");
    drop(conn);
    s.login("zoe", USER_PASSWORD).await;
    s.stop().await;
}

async fn jwt_key_rotation_keeps_sessions(s: TestServer) {
    let old_key = crate::common::JWT_SECRET;
    let new_key = "the-next-jwt-secret-key-0123456789-abcdefgh";
    let token = s.admin_token().await;
    // New signing key, old one still accepted: nobody is logged out.
    let s = s.restart(&[("jwt-secret-key", new_key), ("jwt-previous-secret-keys", old_key)]).await;
    let mut users = s.users().await;
    users.get_me(authed(&token, pb::GetMeRequest {})).await.unwrap();
    let fresh = s.admin_token().await;
    let kid = |t: &str| {
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.split('.').next().unwrap()).unwrap();
        serde_json::from_slice::<serde_json::Value>(&header).unwrap()["kid"].as_str().unwrap().to_owned()
    };
    assert_ne!(kid(&fresh), kid(&token), "new tokens name the new key");
    // A refresh re-signs an old token with the new key.
    let refreshed =
        s.auth().await.refresh(authed(&token, pb::RefreshRequest {})).await.unwrap().into_inner().access_token;
    assert_eq!(kid(&refreshed), kid(&fresh));
    // Old key removed: tokens it signed stop working; the others keep working.
    let s = s.restart(&[("jwt-previous-secret-keys", "")]).await;
    let mut users = s.users().await;
    expect_code(users.get_me(authed(&token, pb::GetMeRequest {})).await, Code::Unauthenticated);
    users.get_me(authed(&fresh, pb::GetMeRequest {})).await.unwrap();
    users.get_me(authed(&refreshed, pb::GetMeRequest {})).await.unwrap();
    s.stop().await;
}

async fn fernet_key_rotation_loses_nothing(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "amy", Some(("http://localhost:4300", "amy-backend-token"))).await;
    let old_key = s.encryption_key.clone();
    let new_key = "KSDEUmaWmBWPfjVWm8Pkru5oXPd2OaHkVt0xXkx-Qbg=";
    // New key current, old key still decrypts.
    let s = s.restart(&[("encryption-key", new_key), ("encryption-previous-keys", &old_key)]).await;
    assert_eq!(
        s.login_reply("amy", USER_PASSWORD).await.unwrap().backend_config.unwrap().bearer_token,
        "amy-backend-token"
    );
    // Writes use the new key at once.
    s.create_user(&s.admin_token().await, "bob", Some(("http://localhost:4301", "bob-backend-token"))).await;
    let (total, changed) = s.app().reencrypt_backend_tokens(&ClientInfo::default(), Utc::now()).await.unwrap();
    assert_eq!((total, changed), (2, 1), "only amy's token was under the old key");
    assert_eq!(
        s.app().reencrypt_backend_tokens(&ClientInfo::default(), Utc::now()).await.unwrap(),
        (2, 0),
        "idempotent"
    );
    // Old key removed: everything still decrypts.
    let s = s.restart(&[("encryption-previous-keys", "")]).await;
    assert_eq!(
        s.login_reply("amy", USER_PASSWORD).await.unwrap().backend_config.unwrap().bearer_token,
        "amy-backend-token"
    );
    assert_eq!(
        s.login_reply("bob", USER_PASSWORD).await.unwrap().backend_config.unwrap().bearer_token,
        "bob-backend-token"
    );
    s.stop().await;
}

crate::on_both_backends!(
    and_through_pgbouncer;
    sessions_list_and_revoke,
    session_lifetime_bounds_tokens_and_refresh,
    login_rate_limit_per_address,
    api_rate_limit_per_user,
    failed_logins_throttle_the_account_from_that_address_only,
    guessing_the_current_password_is_throttled,
    audit_query_filters_and_pages,
    registration_is_off_unless_enabled,
    weak_hashes_are_upgraded_on_login,
    jwt_key_rotation_keeps_sessions,
    fernet_key_rotation_loses_nothing,
);

/// Through Envoy: spoofed X-Forwarded-For values do not buy more login attempts; 429 carries
/// Retry-After and the {"detail"} body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_limit_through_envoy_ignores_spoofed_addresses() {
    let options = Options::default().arg("rate-limit-login-per-minute", "5");
    let Some(s) = TestServer::start_with(Backend::Postgres, options).await else { return };
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let api = Json::new(&envoy.url);
    let body = json!({"username": ADMIN_USERNAME, "password": "Wrong_password1!"});
    for i in 0..5 {
        let r = api
            .send(
                api.request(Method::POST, "/api/v1/auth/login")
                    .header("x-forwarded-for", format!("10.0.0.{i}"))
                    .json(&body),
            )
            .await;
        assert_eq!(r.status, 401, "{r:?}");
    }
    let r = api
        .send(api.request(Method::POST, "/api/v1/auth/login").header("x-forwarded-for", "10.0.0.99").json(&body))
        .await;
    assert_eq!(r.detail(429), "Too many login attempts; try again later");
    let wait: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&wait));
    assert_eq!(api.get("/health", None).await.status, 200, "health is never limited");
    s.stop().await;
}

/// Seed 9.3: more than 10 failed logins from one address in 5 minutes raise an alert in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_failures_from_one_address_raise_an_alert() {
    use crate::common::ServiceProcess;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("alert.db");
    let service = ServiceProcess::spawn(&[
        ("DATABASE_URL", db.to_str().unwrap()),
        ("JWT_SECRET_KEY", crate::common::JWT_SECRET),
        ("ENCRYPTION_KEY", "KSDEUmaWmBWPfjVWm8Pkru5oXPd2OaHkVt0xXkx-Qbg="),
        ("RATE_LIMIT_LOGIN_PER_MINUTE", "1000"),
        ("LOGIN_THROTTLE_THRESHOLD", "1000"),
        ("LOG_LEVEL", "info"),
    ]);
    let mut auth = instachatico_auth::pb::auth_service_client::AuthServiceClient::new(service.channel().await);
    for i in 0..11 {
        let alerts = service.log().iter().filter(|l| l.contains("ALERT")).count();
        assert_eq!(alerts, 0, "no alert at {i} failures");
        expect_code(
            auth.login(Request::new(pb::LoginRequest {
                username: format!("ghost{i}"),
                password: "Wrong_password1!".into(),
            }))
            .await,
            Code::Unauthenticated,
        );
    }
    let log = service.log_once_it_has("ALERT").await;
    let alerts: Vec<&String> =
        log.iter().filter(|l| l.contains("ALERT: many failed logins from one address")).collect();
    assert_eq!(alerts.len(), 1, "{log:?}");
    assert!(alerts[0].contains("WARN") && alerts[0].contains("ip=127.0.0.1") && alerts[0].contains("failures=11"));
}
