//! Every validation rule answers INVALID_ARGUMENT naming the field, and changes nothing.

use instachatico_auth::pb;
use tonic::Code;

use crate::common::{TestServer, USER_PASSWORD, authed, expect_code};

fn valid_create() -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        username: "valid_user".into(),
        email: "valid@example.com".into(),
        password: USER_PASSWORD.into(),
        instagram_username: "valid_ig".into(),
        api_base_url: "http://localhost:4291/api/v1".into(),
        bearer_token: "token".into(),
        role: String::new(),
    }
}

async fn create_user_rules(s: TestServer) {
    let admin = s.admin_token().await;
    let mut users = s.users().await;
    type Edit = fn(&mut pb::CreateUserRequest);
    let cases: Vec<(&str, Edit)> = vec![
        ("username", |r| r.username = "ab".into()),
        ("username", |r| r.username = "a".repeat(51)),
        ("username", |r| r.username = "has space".into()),
        ("username", |r| r.username = String::new()),
        ("email", |r| r.email = "not-an-email".into()),
        ("email", |r| r.email = "a@b".into()),
        ("email", |r| r.email = format!("{}@example.com", "a".repeat(95))),
        ("password", |r| r.password = String::new()),
        ("password", |r| r.password = "Short1!".into()),
        ("password", |r| r.password = "nouppercase123!".into()),
        ("password", |r| r.password = "NOLOWERCASE123!".into()),
        ("password", |r| r.password = "NoDigitsHere!!".into()),
        ("password", |r| r.password = "NoSpecial1234".into()),
        ("password", |r| r.password = format!("Aa1!{}", "x".repeat(69))),
        ("api_base_url", |r| r.api_base_url = "ftp://example.com".into()),
        ("api_base_url", |r| r.api_base_url = "localhost:4291".into()),
        ("api_base_url", |r| r.api_base_url = "http://user:secret@example.com".into()),
        ("api_base_url", |r| r.api_base_url = format!("http://example.com/{}", "p".repeat(250))),
        ("api_base_url", |r| r.api_base_url = String::new()),
        ("bearer_token", |r| r.bearer_token = String::new()),
        ("bearer_token", |r| r.bearer_token = "x".repeat(5000)),
        ("instagram_username", |r| r.instagram_username = "bad name!".into()),
        ("role", |r| r.role = "superuser".into()),
    ];
    for (field, edit) in cases {
        let mut request = valid_create();
        edit(&mut request);
        let msg = expect_code(users.create_user(authed(&admin, request.clone())).await, Code::InvalidArgument);
        assert!(msg.starts_with(&format!("{field}:")), "{field}: got {msg:?} for {request:?}");
        assert!(!msg.contains("secret"), "no secret echoed: {msg}");
        assert!(request.password.len() < 6 || !msg.contains(&request.password), "no password echoed: {msg}");
    }
    let list = users
        .list_users(authed(&admin, pb::ListUsersRequest { include_total: true, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, Some(1), "no invalid request created anything");
    // The valid one works, with exactly 72 bytes of password.
    let mut ok = valid_create();
    ok.password = format!("Aa1!{}", "x".repeat(68));
    users.create_user(authed(&admin, ok.clone())).await.unwrap();
    s.login("valid_user", &ok.password).await;
    s.stop().await;
}

async fn update_and_self_service_rules(s: TestServer) {
    let admin = s.admin_token().await;
    let user = s.create_user(&admin, "rita", Some(("http://localhost:4291", "rita-token"))).await;
    let token = s.login("rita", USER_PASSWORD).await;
    let mut users = s.users().await;

    let bad_updates = [
        ("id", pb::UpdateUserRequest { id: 0, is_active: Some(true), ..Default::default() }),
        ("email", pb::UpdateUserRequest { id: user.id, email: Some("nope".into()), ..Default::default() }),
        ("role", pb::UpdateUserRequest { id: user.id, role: Some("root".into()), ..Default::default() }),
        (
            "remove_backend",
            pb::UpdateUserRequest {
                id: user.id,
                remove_backend: true,
                backend: Some(pb::BackendInput {
                    api_base_url: "http://x.example".into(),
                    bearer_token: "t".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "api_base_url",
            pb::UpdateUserRequest {
                id: user.id,
                backend: Some(pb::BackendInput {
                    api_base_url: "javascript:alert(1)".into(),
                    bearer_token: "t".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    ];
    for (field, request) in bad_updates {
        let msg = expect_code(users.update_user(authed(&admin, request)).await, Code::InvalidArgument);
        assert!(msg.starts_with(&format!("{field}:")), "{field}: {msg}");
    }
    for (field, request) in [
        ("limit", pb::ListUsersRequest { limit: 201, offset: 0, ..Default::default() }),
        ("offset", pb::ListUsersRequest { limit: 10, offset: -1, ..Default::default() }),
    ] {
        let msg = expect_code(users.list_users(authed(&admin, request)).await, Code::InvalidArgument);
        assert!(msg.starts_with(field), "{msg}");
    }
    for (field, request) in [
        (
            "api_base_url",
            pb::UpdateMyBackendRequest {
                api_base_url: "not a url".into(),
                bearer_token: "t".into(),
                instagram_username: None,
            },
        ),
        (
            "bearer_token",
            pb::UpdateMyBackendRequest {
                api_base_url: "http://ok.example".into(),
                bearer_token: String::new(),
                instagram_username: None,
            },
        ),
        (
            "bearer_token",
            pb::UpdateMyBackendRequest {
                api_base_url: "http://ok.example".into(),
                bearer_token: "a\nb".into(),
                instagram_username: None,
            },
        ),
    ] {
        let msg = expect_code(users.update_my_backend(authed(&token, request)).await, Code::InvalidArgument);
        assert!(msg.starts_with(field), "{msg}");
    }
    // Nothing changed.
    let got = users.get_user(authed(&admin, pb::GetUserRequest { id: user.id })).await.unwrap().into_inner();
    assert_eq!((got.email.as_str(), got.role.as_str()), ("rita@example.com", "user"));
    assert_eq!(got.backend.unwrap().api_base_url, "http://localhost:4291");
    assert_eq!(s.login_reply("rita", USER_PASSWORD).await.unwrap().backend_config.unwrap().bearer_token, "rita-token");
    s.stop().await;
}

crate::on_both_backends!(create_user_rules, update_and_self_service_rules);
