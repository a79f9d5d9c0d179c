//! Login, GetMe, backend update, refresh, logout, password change: the seed's flows.

use chrono::{Duration, Utc};
use instachatico_auth::crypto::jwt::Subject;
use instachatico_auth::db::models::{audit, backends};
use instachatico_auth::model::{Role, UserId};
use instachatico_auth::pb;
use secrecy::ExposeSecret;
use tonic::Code;

use crate::common::{TestServer, USER_PASSWORD, authed, expect_code};

async fn full_flow_login_getme_backend_login_again(s: TestServer) {
    let admin = s.admin_token().await;
    let created = s.create_user(&admin, "alice", Some(("http://localhost:4291/api/v1", "bearer_token_322"))).await;
    assert_eq!((created.username.as_str(), created.instagram_username.as_str()), ("alice", "alice_ig"));
    assert!(created.created_at.is_some() && created.last_login.is_none());

    let reply = s.login_reply("alice", USER_PASSWORD).await.unwrap();
    assert_eq!(reply.token_type.as_deref(), Some("bearer"));
    assert_eq!(reply.expires_in, Some(3600));
    assert!(reply.mfa_required.is_none() && reply.mfa_token.is_none() && reply.methods.is_none());
    let access_token = reply.access_token.clone().unwrap();
    let user = reply.user.unwrap();
    assert_eq!((user.id, user.username.as_str(), user.email.as_str()), (created.id, "alice", "alice@example.com"));
    assert_eq!(user.instagram_username, "alice_ig");
    let backend = reply.backend_config.unwrap();
    assert_eq!(backend.api_base_url, "http://localhost:4291/api/v1");
    assert_eq!(backend.bearer_token, "bearer_token_322");

    let mut users = s.users().await;
    let me = users.get_me(authed(&access_token, pb::GetMeRequest {})).await.unwrap().into_inner();
    assert_eq!((me.id, me.username.as_str(), me.instagram_username.as_str()), (created.id, "alice", "alice_ig"));
    assert!(me.last_login.is_some(), "login sets last_login");

    let updated = users
        .update_my_backend(authed(
            &access_token,
            pb::UpdateMyBackendRequest {
                api_base_url: "http://new-server:4291/api/v1".into(),
                bearer_token: "new_bearer_token_456".into(),
                instagram_username: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.message, "Backend configuration updated successfully");
    let summary = updated.backend_config.unwrap();
    assert_eq!(summary.api_base_url, "http://new-server:4291/api/v1");
    assert_eq!(summary.instagram_username, "alice_ig", "absent instagram_username is kept");
    assert!(summary.updated_at.is_some());

    // Stored only encrypted.
    let mut conn = s.app().db().get().await.unwrap();
    let row = backends::find_for_user(&mut conn, UserId(created.id)).await.unwrap().unwrap();
    assert!(!row.encrypted_token.contains("new_bearer_token_456"));
    assert!(row.encrypted_token.starts_with("gAAAAA"), "Fernet token");
    assert_eq!(s.app().cipher().decrypt(&row.encrypted_token).unwrap().expose_secret(), "new_bearer_token_456");

    let again = s.login_reply("alice", USER_PASSWORD).await.unwrap();
    let backend = again.backend_config.unwrap();
    assert_eq!(
        (backend.api_base_url.as_str(), backend.bearer_token.as_str()),
        ("http://new-server:4291/api/v1", "new_bearer_token_456")
    );

    // Audit trail of the flow, with the client address.
    let rows = audit::list_for_user(&mut conn, Some(UserId(created.id)), 50).await.unwrap();
    let actions: Vec<&str> = rows.iter().rev().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["user_create", "login_success", "backend_update", "login_success"]);
    assert!(rows.iter().all(|r| r.ip_address.as_deref() == Some("127.0.0.1")));
    for row in &rows {
        assert!(
            !row.metadata.to_string().contains("bearer_token_322")
                && !row.metadata.to_string().contains("new_bearer_token_456")
        );
    }
    s.stop().await;
}

async fn login_by_email_and_any_case(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "Carol", None).await;
    for login in ["carol", "CAROL", "carol@example.com", "Carol@Example.com"] {
        let reply = s.login_reply(login, USER_PASSWORD).await.unwrap_or_else(|e| panic!("{login}: {e:?}"));
        assert_eq!(reply.user.unwrap().username, "Carol");
        assert!(reply.backend_config.is_none(), "no backend configured");
    }
    s.stop().await;
}

async fn wrong_password_and_unknown_user_look_the_same(s: TestServer) {
    let admin = s.admin_token().await;
    let dave = s.create_user(&admin, "dave", None).await;
    let wrong = expect_code(s.login_reply("dave", "Wrong_password1!").await, Code::Unauthenticated);
    let unknown = expect_code(s.login_reply("nobody", "Wrong_password1!").await, Code::Unauthenticated);
    assert_eq!(wrong, "Incorrect username or password");
    assert_eq!(unknown, wrong);
    // Over-long passwords never match (and are not truncated to a matching prefix).
    let long = format!("{USER_PASSWORD}{}", "x".repeat(80));
    expect_code(s.login_reply("dave", &long).await, Code::Unauthenticated);
    expect_code(s.login_reply("", USER_PASSWORD).await, Code::InvalidArgument);

    let mut conn = s.app().db().get().await.unwrap();
    let rows = audit::list_for_user(&mut conn, Some(UserId(dave.id)), 50).await.unwrap();
    assert!(rows.iter().any(|r| r.action == "login_failed" && r.metadata.to_string().contains("bad_password")));
    let all = audit::list_for_user(&mut conn, None, 100).await.unwrap();
    assert!(
        all.iter().any(|r| r.action == "login_failed"
            && r.user_id.is_none()
            && r.metadata.to_string().contains("unknown_user"))
    );
    assert!(all.iter().all(|r| !r.metadata.to_string().contains("Wrong_password1!")), "no password in audit rows");
    s.stop().await;
}

async fn inactive_account_is_refused(s: TestServer) {
    let admin = s.admin_token().await;
    let erin = s.create_user(&admin, "erin", None).await;
    let token = s.login("erin", USER_PASSWORD).await;
    s.users()
        .await
        .update_user(authed(
            &admin,
            pb::UpdateUserRequest { id: erin.id, is_active: Some(false), ..Default::default() },
        ))
        .await
        .unwrap();
    let msg = expect_code(s.login_reply("erin", USER_PASSWORD).await, Code::PermissionDenied);
    assert_eq!(msg, "Account is inactive");
    // The wrong password still says only "incorrect": inactivity is not revealed without it.
    expect_code(s.login_reply("erin", "Wrong_password1!").await, Code::Unauthenticated);
    expect_code(s.users().await.get_me(authed(&token, pb::GetMeRequest {})).await, Code::Unauthenticated);
    s.stop().await;
}

async fn refresh_issues_working_tokens(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "frank", None).await;
    let token = s.login("frank", USER_PASSWORD).await;
    let mut auth = s.auth().await;
    let refreshed = auth.refresh(authed(&token, pb::RefreshRequest {})).await.unwrap().into_inner();
    assert_eq!((refreshed.token_type.as_str(), refreshed.expires_in), ("bearer", 3600));
    assert_ne!(refreshed.access_token, token);
    let me = s.users().await.get_me(authed(&refreshed.access_token, pb::GetMeRequest {})).await.unwrap().into_inner();
    assert_eq!(me.username, "frank");

    // A recently expired token of a live session refreshes (seed 3.2.2)...
    let claims = s.app().jwt().verify(&token, Utc::now()).unwrap();
    let now = Utc::now();
    let sid = claims.session_id();
    let subject = Subject { user_id: claims.user_id().unwrap(), username: "frank", role: Role::User, session: &sid };
    let expired = s.app().jwt().issue(&subject, now - Duration::hours(2), now - Duration::hours(1)).unwrap();
    expect_code(s.users().await.get_me(authed(&expired, pb::GetMeRequest {})).await, Code::Unauthenticated);
    auth.refresh(authed(&expired, pb::RefreshRequest {})).await.unwrap();
    // ...but not beyond the refresh window (24 h by default).
    let stale = s.app().jwt().issue(&subject, now - Duration::hours(26), now - Duration::hours(25)).unwrap();
    expect_code(auth.refresh(authed(&stale, pb::RefreshRequest {})).await, Code::Unauthenticated);
    expect_code(auth.refresh(tonic::Request::new(pb::RefreshRequest {})).await, Code::Unauthenticated);
    s.stop().await;
}

async fn logout_ends_the_session_at_once(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "grace", None).await;
    let token = s.login("grace", USER_PASSWORD).await;
    let other = s.login("grace", USER_PASSWORD).await;
    let mut auth = s.auth().await;
    let refreshed = auth.refresh(authed(&token, pb::RefreshRequest {})).await.unwrap().into_inner().access_token;

    let bye = auth.logout(authed(&token, pb::LogoutRequest {})).await.unwrap().into_inner();
    assert_eq!(bye.message, "Successfully logged out");
    let mut users = s.users().await;
    // Both tokens of the session stop working; the other session does not.
    expect_code(users.get_me(authed(&token, pb::GetMeRequest {})).await, Code::Unauthenticated);
    expect_code(users.get_me(authed(&refreshed, pb::GetMeRequest {})).await, Code::Unauthenticated);
    expect_code(auth.refresh(authed(&token, pb::RefreshRequest {})).await, Code::Unauthenticated);
    expect_code(auth.logout(authed(&token, pb::LogoutRequest {})).await, Code::Unauthenticated);
    users.get_me(authed(&other, pb::GetMeRequest {})).await.unwrap();
    s.stop().await;
}

async fn change_password_ends_other_sessions(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "heidi", None).await;
    let current = s.login("heidi", USER_PASSWORD).await;
    let other = s.login("heidi", USER_PASSWORD).await;
    let mut users = s.users().await;
    let change =
        |cur: &str, new: &str| pb::ChangeMyPasswordRequest { current_password: cur.into(), new_password: new.into() };

    let msg = expect_code(
        users.change_my_password(authed(&current, change("Wrong_password1!", "New_password456!"))).await,
        Code::InvalidArgument,
    );
    assert!(msg.starts_with("current_password"), "{msg}");
    let msg = expect_code(
        users.change_my_password(authed(&current, change(USER_PASSWORD, "weak"))).await,
        Code::InvalidArgument,
    );
    assert!(msg.starts_with("new_password"), "{msg}");
    expect_code(
        users.change_my_password(authed(&current, change(USER_PASSWORD, USER_PASSWORD))).await,
        Code::InvalidArgument,
    );

    let ok = users
        .change_my_password(authed(&current, change(USER_PASSWORD, "New_password456!")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.message, "Password updated successfully");
    users.get_me(authed(&current, pb::GetMeRequest {})).await.unwrap();
    expect_code(users.get_me(authed(&other, pb::GetMeRequest {})).await, Code::Unauthenticated);
    expect_code(s.login_reply("heidi", USER_PASSWORD).await, Code::Unauthenticated);
    s.login("heidi", "New_password456!").await;
    s.stop().await;
}

crate::on_both_backends!(
    full_flow_login_getme_backend_login_again,
    login_by_email_and_any_case,
    wrong_password_and_unknown_user_look_the_same,
    inactive_account_is_refused,
    refresh_issues_working_tokens,
    logout_ends_the_session_at_once,
    change_password_ends_other_sessions,
);

/// A peer that is not a trusted proxy cannot choose its recorded address; a trusted one can
/// (that is how Envoy passes the real client on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    use crate::common::{Backend, Options, TestServer};
    for (trusted, expected) in [("10.9.9.9/32", "127.0.0.1"), ("127.0.0.1", "6.6.6.6")] {
        let options = Options::default().arg("trusted-proxies", trusted);
        let Some(s) = TestServer::start_with(Backend::Sqlite, options).await else {
            return;
        };
        let mut request = tonic::Request::new(pb::LoginRequest {
            username: "admin".into(),
            password: crate::common::ADMIN_PASSWORD.into(),
        });
        request.metadata_mut().insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        s.auth().await.login(request).await.unwrap();
        let mut conn = s.app().db().get().await.unwrap();
        let rows = audit::list_for_user(&mut conn, Some(UserId(1)), 10).await.unwrap();
        let row = rows.iter().find(|r| r.action == "login_success").unwrap();
        assert_eq!(row.ip_address.as_deref(), Some(expected), "TRUSTED_PROXIES={trusted}");
        drop(conn);
        s.stop().await;
    }
}
