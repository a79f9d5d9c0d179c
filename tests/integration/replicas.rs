//! Scale-out: two service processes on one PostgreSQL, Envoy round-robin in front. What one
//! replica revokes, the other refuses within a second.

use std::time::{Duration, Instant};

use instachatico_auth::pb;
use instachatico_auth::pb::user_service_client::UserServiceClient;
use serde_json::json;
use tonic::Code;

use crate::common::{
    ADMIN_PASSWORD, ADMIN_USERNAME, Envoy, JWT_SECRET, Json, PgTestDb, ServiceProcess, USER_PASSWORD, authed,
};

/// Polls GetMe on `replica` until it is refused; returns how long that took.
async fn refused_within(replica: &ServiceProcess, token: &str, limit: Duration) -> Duration {
    let mut users = UserServiceClient::new(replica.channel().await);
    let started = Instant::now();
    loop {
        match users.get_me(authed(token, pb::GetMeRequest {})).await {
            Err(status) if status.code() == Code::Unauthenticated => return started.elapsed(),
            Err(status) => panic!("unexpected {status:?}"),
            Ok(_) => {
                assert!(started.elapsed() < limit, "replica {} still accepts the token after {limit:?}", replica.addr);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_replica() {
    let Some(pg) = PgTestDb::create().await else { return };
    let fixture = crate::common::python_fixture();
    let env = [
        ("DATABASE_URL", pg.url.as_str()),
        ("JWT_SECRET_KEY", JWT_SECRET),
        ("ENCRYPTION_KEY", fixture["fernet_key"].as_str().unwrap()),
        ("ADMIN_USERNAME", ADMIN_USERNAME),
        ("ADMIN_EMAIL", "admin@example.com"),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("RATE_LIMIT_LOGIN_PER_MINUTE", "10000"),
        ("RATE_LIMIT_API_PER_MINUTE", "10000"),
        ("LOG_LEVEL", "warn,instachatico_auth::server=info"),
    ];
    let (a, b) = (ServiceProcess::spawn(&env), ServiceProcess::spawn(&env));
    let Some(envoy) = Envoy::start(&[a.socket.clone(), b.socket.clone()]).await else { return };
    let api = Json::new(&envoy.url);
    let limit = Duration::from_secs(1);

    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    for name in ["rhea", "sol", "tess"] {
        let r = api
            .post(
                "/api/v1/users",
                Some(&admin),
                json!({"username": name, "email": format!("{name}@example.com"), "password": USER_PASSWORD}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    // Round-robin: a token from one replica works on both.
    let token = api.login("rhea", USER_PASSWORD).await;
    for _ in 0..4 {
        assert_eq!(api.get("/api/v1/users/me", Some(&token)).await.status, 200);
    }

    // Logout through replica A; replica B refuses.
    let mut auth_a = pb::auth_service_client::AuthServiceClient::new(a.channel().await);
    auth_a.logout(authed(&token, pb::LogoutRequest {})).await.unwrap();
    let took = refused_within(&b, &token, limit).await;
    eprintln!("logout on A refused on B after {took:?}");
    assert_eq!(api.get("/api/v1/users/me", Some(&token)).await.status, 401);

    // Password change through A ends the user's other sessions on B.
    let keep = api.login("sol", USER_PASSWORD).await;
    let other = api.login("sol", USER_PASSWORD).await;
    let mut users_a = UserServiceClient::new(a.channel().await);
    let change = pb::ChangeMyPasswordRequest {
        current_password: USER_PASSWORD.into(),
        new_password: "Changed_password123!".into(),
    };
    users_a.change_my_password(authed(&keep, change)).await.unwrap();
    refused_within(&b, &other, limit).await;
    let mut users_b = UserServiceClient::new(b.channel().await);
    users_b.get_me(authed(&keep, pb::GetMeRequest {})).await.unwrap();

    // Deactivation through A ends every session on B.
    let tess = api.login("tess", USER_PASSWORD).await;
    let tess_id = users_b.get_me(authed(&tess, pb::GetMeRequest {})).await.unwrap().into_inner().id;
    let deactivate = pb::UpdateUserRequest { id: tess_id, is_active: Some(false), ..Default::default() };
    users_a.update_user(authed(&admin, deactivate)).await.unwrap();
    refused_within(&b, &tess, limit).await;
    let r = api.post("/api/v1/auth/login", None, json!({"username": "tess", "password": USER_PASSWORD})).await;
    assert_eq!(r.detail(403), "Account is inactive");
}
