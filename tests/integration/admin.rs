//! Admin RPCs and their permission checks; duplicates; self-protection.

use instachatico_auth::db::models::audit;
use instachatico_auth::model::UserId;
use instachatico_auth::pb;
use tonic::{Code, Request};

use crate::common::{ADMIN_USERNAME, TestServer, USER_PASSWORD, authed, expect_code};

/// Calls every admin RPC with `token` (or none) and checks each fails with `code`.
async fn every_admin_rpc_fails(s: &TestServer, token: Option<&str>, code: Code) {
    fn req<T>(token: Option<&str>, m: T) -> Request<T> {
        match token {
            Some(t) => authed(t, m),
            None => Request::new(m),
        }
    }
    let mut users = s.users().await;
    let create = pb::CreateUserRequest {
        username: "mallory".into(),
        email: "mallory@example.com".into(),
        password: USER_PASSWORD.into(),
        ..Default::default()
    };
    expect_code(users.create_user(req(token, create)).await, code);
    expect_code(users.list_users(req(token, pb::ListUsersRequest::default())).await, code);
    expect_code(users.get_user(req(token, pb::GetUserRequest { id: 1 })).await, code);
    expect_code(
        users
            .update_user(req(token, pb::UpdateUserRequest { id: 1, is_active: Some(false), ..Default::default() }))
            .await,
        code,
    );
    expect_code(users.delete_user(req(token, pb::DeleteUserRequest { id: 1 })).await, code);
    expect_code(
        users
            .reset_password(req(token, pb::ResetPasswordRequest { id: 1, new_password: "Another_pass123!".into() }))
            .await,
        code,
    );
}

async fn admin_rpcs_need_an_admin(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "ivan", None).await;
    let user = s.login("ivan", USER_PASSWORD).await;
    every_admin_rpc_fails(&s, Some(&user), Code::PermissionDenied).await;
    every_admin_rpc_fails(&s, None, Code::Unauthenticated).await;
    every_admin_rpc_fails(&s, Some("not-a-jwt"), Code::Unauthenticated).await;
    // Self-service RPCs need a token too.
    let mut users = s.users().await;
    expect_code(users.get_me(Request::new(pb::GetMeRequest {})).await, Code::Unauthenticated);
    let backend = pb::UpdateMyBackendRequest {
        api_base_url: "http://x.example".into(),
        bearer_token: "t".into(),
        instagram_username: None,
    };
    expect_code(users.update_my_backend(Request::new(backend)).await, Code::Unauthenticated);
    let change =
        pb::ChangeMyPasswordRequest { current_password: USER_PASSWORD.into(), new_password: "New_password456!".into() };
    expect_code(users.change_my_password(Request::new(change)).await, Code::Unauthenticated);
    // Nothing changed: the admin is still there and active.
    let list = users
        .list_users(authed(&admin, pb::ListUsersRequest { include_total: true, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, Some(2));
    assert!(list.users.iter().all(|u| u.is_active));
    s.stop().await;
}

async fn list_get_and_paging(s: TestServer) {
    let admin = s.admin_token().await;
    for name in ["judy", "karl", "liam"] {
        s.create_user(&admin, name, Some(("https://backend.example.com", "tok"))).await;
    }
    let mut users = s.users().await;
    let page = |limit, offset| {
        authed(&admin, pb::ListUsersRequest { limit, offset, include_total: true, ..Default::default() })
    };
    let first = users.list_users(page(2, 0)).await.unwrap().into_inner();
    assert_eq!(first.total, Some(4));
    let names: Vec<_> = first.users.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, [ADMIN_USERNAME, "judy"]);
    let second = users.list_users(page(2, 2)).await.unwrap().into_inner();
    let names: Vec<_> = second.users.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["karl", "liam"]);
    assert_eq!(second.total, Some(4), "an offset page counts when asked");
    // Without include_total nothing is counted, and an offset page still says whether there is
    // more: its token continues it; the last page has none.
    let uncounted = |limit, offset| authed(&admin, pb::ListUsersRequest { limit, offset, ..Default::default() });
    let middle = users.list_users(uncounted(1, 1)).await.unwrap().into_inner();
    assert_eq!((middle.total, middle.users[0].username.as_str()), (None, "judy"));
    let next = pb::ListUsersRequest { limit: 1, page_token: middle.next_page_token, ..Default::default() };
    let next = users.list_users(authed(&admin, next)).await.unwrap().into_inner();
    assert_eq!((next.total, next.users[0].username.as_str()), (None, "karl"));
    let last = users.list_users(uncounted(2, 2)).await.unwrap().into_inner();
    assert_eq!((last.users.len(), last.next_page_token.as_str()), (2, ""), "no token on the last page");
    let counted_by_token = pb::ListUsersRequest { page_token: "u0".into(), include_total: true, ..Default::default() };
    let by_token = users.list_users(authed(&admin, counted_by_token)).await.unwrap().into_inner();
    assert_eq!((by_token.users.len(), by_token.total), (4, None), "pages asked by token never count");
    assert!(users.list_users(page(2, 4)).await.unwrap().into_inner().users.is_empty());
    assert_eq!(
        users.list_users(page(0, 0)).await.unwrap().into_inner().users.len(),
        4,
        "0 means the default page size"
    );

    let karl = &second.users[0];
    let got = users.get_user(authed(&admin, pb::GetUserRequest { id: karl.id })).await.unwrap().into_inner();
    assert_eq!((got.username.as_str(), got.role.as_str(), got.is_active), ("karl", "user", true));
    let backend = got.backend.unwrap();
    assert_eq!(
        (backend.api_base_url.as_str(), backend.instagram_username.as_str()),
        ("https://backend.example.com", "karl_ig")
    );
    expect_code(users.get_user(authed(&admin, pb::GetUserRequest { id: 9999 })).await, Code::NotFound);
    s.stop().await;
}

async fn update_user_fields_and_backend(s: TestServer) {
    let admin = s.admin_token().await;
    let mia = s.create_user(&admin, "mia", None).await;
    let mia_token = s.login("mia", USER_PASSWORD).await;
    let mut users = s.users().await;

    let updated = users
        .update_user(authed(
            &admin,
            pb::UpdateUserRequest {
                id: mia.id,
                email: Some("mia.new@example.com".into()),
                role: Some("admin".into()),
                backend: Some(pb::BackendInput {
                    api_base_url: "http://localhost:4300/api/v1".into(),
                    bearer_token: "mia-token".into(),
                    instagram_username: "mia_ig".into(),
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.email.as_str(), updated.role.as_str(), updated.instagram_username.as_str()),
        ("mia.new@example.com", "admin", "mia_ig")
    );
    // The promotion takes effect for her existing session at once.
    users.list_users(authed(&mia_token, pb::ListUsersRequest::default())).await.unwrap();
    let reply = s.login_reply("mia.new@example.com", USER_PASSWORD).await.unwrap();
    assert_eq!(reply.backend_config.unwrap().bearer_token, "mia-token");

    let removed = users
        .update_user(authed(
            &admin,
            pb::UpdateUserRequest { id: mia.id, remove_backend: true, role: Some("user".into()), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(removed.backend.is_none() && removed.instagram_username.is_empty());
    expect_code(users.list_users(authed(&mia_token, pb::ListUsersRequest::default())).await, Code::PermissionDenied);

    // Deactivation ends her sessions; reactivation lets her log in again.
    users
        .update_user(authed(&admin, pb::UpdateUserRequest { id: mia.id, is_active: Some(false), ..Default::default() }))
        .await
        .unwrap();
    expect_code(users.get_me(authed(&mia_token, pb::GetMeRequest {})).await, Code::Unauthenticated);
    users
        .update_user(authed(&admin, pb::UpdateUserRequest { id: mia.id, is_active: Some(true), ..Default::default() }))
        .await
        .unwrap();
    expect_code(users.get_me(authed(&mia_token, pb::GetMeRequest {})).await, Code::Unauthenticated);
    s.login("mia", USER_PASSWORD).await;
    expect_code(
        users
            .update_user(authed(
                &admin,
                pb::UpdateUserRequest { id: 9999, is_active: Some(true), ..Default::default() },
            ))
            .await,
        Code::NotFound,
    );

    let mut conn = s.app().db().get().await.unwrap();
    let rows = audit::list_for_user(&mut conn, Some(UserId(mia.id)), 50).await.unwrap();
    let update = rows.iter().find(|r| r.action == "user_update" && r.metadata.to_string().contains("backend")).unwrap();
    assert!(update.actor_id.is_some() && update.actor_id != Some(UserId(mia.id)));
    assert!(rows.iter().all(|r| !r.metadata.to_string().contains("mia-token")));
    s.stop().await;
}

async fn delete_user_keeps_audit_rows(s: TestServer) {
    let admin = s.admin_token().await;
    let noah = s.create_user(&admin, "noah", Some(("http://localhost:4301", "noah-token"))).await;
    let noah_token = s.login("noah", USER_PASSWORD).await;
    let mut users = s.users().await;
    let msg = users.delete_user(authed(&admin, pb::DeleteUserRequest { id: noah.id })).await.unwrap().into_inner();
    assert_eq!(msg.message, "User deleted successfully");
    expect_code(users.get_user(authed(&admin, pb::GetUserRequest { id: noah.id })).await, Code::NotFound);
    expect_code(users.get_me(authed(&noah_token, pb::GetMeRequest {})).await, Code::Unauthenticated);
    expect_code(s.login_reply("noah", USER_PASSWORD).await, Code::Unauthenticated);
    expect_code(users.delete_user(authed(&admin, pb::DeleteUserRequest { id: noah.id })).await, Code::NotFound);

    let mut conn = s.app().db().get().await.unwrap();
    let rows = audit::list_for_user(&mut conn, None, 100).await.unwrap();
    let delete = rows.iter().find(|r| r.action == "user_delete").unwrap();
    assert_eq!(delete.user_id, None, "audit rows outlive the user with user_id NULL");
    assert!(delete.metadata.to_string().contains("noah"));
    assert!(rows.iter().filter(|r| r.action == "login_success").count() >= 2, "noah's login rows remain");
    // The username is free again.
    s.create_user(&admin, "noah", None).await;
    s.stop().await;
}

async fn reset_password_ends_sessions(s: TestServer) {
    let admin = s.admin_token().await;
    let olga = s.create_user(&admin, "olga", None).await;
    let token = s.login("olga", USER_PASSWORD).await;
    let mut users = s.users().await;
    let reset = |id, pw: &str| authed(&admin, pb::ResetPasswordRequest { id, new_password: pw.into() });
    expect_code(users.reset_password(reset(olga.id, "weak")).await, Code::InvalidArgument);
    expect_code(users.reset_password(reset(9999, "Reset_password789!")).await, Code::NotFound);
    let msg = users.reset_password(reset(olga.id, "Reset_password789!")).await.unwrap().into_inner();
    assert_eq!(msg.message, "Password reset successfully");
    expect_code(users.get_me(authed(&token, pb::GetMeRequest {})).await, Code::Unauthenticated);
    expect_code(s.login_reply("olga", USER_PASSWORD).await, Code::Unauthenticated);
    s.login("olga", "Reset_password789!").await;
    s.stop().await;
}

async fn admin_cannot_lock_themselves_out(s: TestServer) {
    let admin = s.admin_token().await;
    let mut users = s.users().await;
    let me = users.get_me(authed(&admin, pb::GetMeRequest {})).await.unwrap().into_inner();
    for patch in [
        pb::UpdateUserRequest { id: me.id, is_active: Some(false), ..Default::default() },
        pb::UpdateUserRequest { id: me.id, role: Some("user".into()), ..Default::default() },
    ] {
        expect_code(users.update_user(authed(&admin, patch)).await, Code::FailedPrecondition);
    }
    expect_code(users.delete_user(authed(&admin, pb::DeleteUserRequest { id: me.id })).await, Code::FailedPrecondition);
    users.get_me(authed(&admin, pb::GetMeRequest {})).await.unwrap();
    s.stop().await;
}

async fn duplicates_are_already_exists(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "pat", None).await;
    let mut users = s.users().await;
    let create = |username: &str, email: &str| {
        authed(
            &admin,
            pb::CreateUserRequest {
                username: username.into(),
                email: email.into(),
                password: USER_PASSWORD.into(),
                ..Default::default()
            },
        )
    };
    let msg = expect_code(users.create_user(create("PAT", "other@example.com")).await, Code::AlreadyExists);
    assert!(msg.contains("username"), "{msg}");
    let msg = expect_code(users.create_user(create("patricia", "Pat@Example.com")).await, Code::AlreadyExists);
    assert!(msg.contains("email"), "{msg}");
    let quinn = s.create_user(&admin, "quinn", None).await;
    let msg = expect_code(
        users
            .update_user(authed(
                &admin,
                pb::UpdateUserRequest { id: quinn.id, email: Some("pat@example.com".into()), ..Default::default() },
            ))
            .await,
        Code::AlreadyExists,
    );
    assert!(msg.contains("email"), "{msg}");
    let list = users
        .list_users(authed(&admin, pb::ListUsersRequest { include_total: true, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, Some(3), "failed creates left nothing behind");
    s.stop().await;
}

crate::on_both_backends!(
    admin_rpcs_need_an_admin,
    list_get_and_paging,
    update_user_fields_and_backend,
    delete_user_keeps_audit_rows,
    reset_password_ends_sessions,
    admin_cannot_lock_themselves_out,
    duplicates_are_already_exists,
);
