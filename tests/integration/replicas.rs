//! Scale-out: two service processes on one PostgreSQL (directly, or through a PgBouncer in
//! transaction mode), Envoy round-robin in front. What one replica revokes, the other refuses
//! within a second.

use std::time::{Duration, Instant};

use instachatico_auth::pb;
use instachatico_auth::pb::user_service_client::UserServiceClient;
use serde_json::json;
use tonic::Code;

use crate::common::{
    ADMIN_PASSWORD, ADMIN_USERNAME, Envoy, JWT_SECRET, Json, PGBOUNCER_POOL, PgBouncer, PgTestDb, ServiceProcess,
    USER_PASSWORD, authed,
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

/// A replica's environment on `database_url`, with `extra` settings.
fn replica_env(database_url: &str, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let fixture = crate::common::python_fixture();
    let mut env: Vec<(&'static str, String)> = [
        ("DATABASE_URL", database_url),
        ("JWT_SECRET_KEY", JWT_SECRET),
        ("ENCRYPTION_KEY", fixture["fernet_key"].as_str().unwrap()),
        ("ADMIN_USERNAME", ADMIN_USERNAME),
        ("ADMIN_EMAIL", "admin@example.com"),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("RATE_LIMIT_LOGIN_PER_MINUTE", "10000"),
        ("RATE_LIMIT_API_PER_MINUTE", "10000"),
        ("LOG_LEVEL", "warn,instachatico_auth::server=info"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_replica() {
    revocation_reaches_every_replica_of(false).await;
}

/// The same, with the replicas' queries through a PgBouncer in transaction mode, two server
/// connections for both pools, and each replica's LISTEN direct (DATABASE_LISTEN_URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_replica_through_pgbouncer() {
    revocation_reaches_every_replica_of(true).await;
}

async fn revocation_reaches_every_replica_of(through_pgbouncer: bool) {
    let Some(pg) = PgTestDb::create().await else { return };
    let bouncer = if through_pgbouncer {
        let Some(bouncer) = PgBouncer::start(&PgTestDb::server_url(), PGBOUNCER_POOL).await else { return };
        Some(bouncer)
    } else {
        None
    };
    let database_url = bouncer.as_ref().map_or_else(|| pg.url.clone(), |b| b.url_of(&pg.url));
    let direct: &[(&'static str, &str)] =
        &[("DATABASE_LISTEN_URL", pg.url.as_str()), ("DB_PREPARED_STATEMENTS", "false")];
    let env = replica_env(&database_url, if through_pgbouncer { direct } else { &[] });
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

    // A service's view: B introspects (cached) and then sees A's logout within the second.
    let mut sa_a = pb::service_account_service_client::ServiceAccountServiceClient::new(a.channel().await);
    let account = sa_a
        .create_service_account(authed(
            &admin,
            pb::CreateServiceAccountRequest { name: "gw".into(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner();
    let create = |scopes: &[&str]| pb::CreateApiKeyRequest {
        service_account_id: account.id,
        name: "gw".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    let key = sa_a.create_api_key(authed(&admin, create(&["introspect", "users:read"]))).await.unwrap().into_inner();
    let mut auth_b = pb::auth_service_client::AuthServiceClient::new(b.channel().await);
    let sol = api.login("sol", "Changed_password123!").await;
    let ask = |token: &str| authed(&key.key, pb::IntrospectRequest { token: token.into() });
    assert!(auth_b.introspect(ask(&sol)).await.unwrap().into_inner().active);
    assert!(auth_b.introspect(ask(&sol)).await.unwrap().into_inner().active, "from B's cache");
    auth_a.logout(authed(&sol, pb::LogoutRequest {})).await.unwrap();
    let started = Instant::now();
    while auth_b.introspect(ask(&sol)).await.unwrap().into_inner().active {
        assert!(started.elapsed() < limit, "B still calls the token active after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("logout on A seen by B's introspection after {:?}", started.elapsed());

    // A key revoked through A stops working on B, which had it cached, within the second.
    users_b.list_users(authed(&key.key, pb::ListUsersRequest::default())).await.unwrap();
    users_b.list_users(authed(&key.key, pb::ListUsersRequest::default())).await.unwrap();
    let key_id = key.api_key.unwrap().id;
    let revoke = pb::RevokeApiKeyRequest { service_account_id: account.id, key_id };
    sa_a.revoke_api_key(authed(&admin, revoke)).await.unwrap();
    let started = Instant::now();
    loop {
        match users_b.list_users(authed(&key.key, pb::ListUsersRequest::default())).await {
            Err(status) if status.code() == Code::Unauthenticated => break,
            Err(status) => panic!("unexpected {status:?}"),
            Ok(_) => {
                assert!(started.elapsed() < limit, "B still accepts the revoked key after {limit:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    eprintln!("key revoked on A refused on B after {:?}", started.elapsed());
}

/// Backend proxy mode on two replicas, each behind its own Envoy: a logout through one is
/// refused by the other's proxy within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_revocation_reaches_every_replica() {
    let Some(pg) = PgTestDb::create().await else { return };
    let backend = crate::common::fake_backend::FakeBackend::start("replicated").await;
    let allowed = backend.addr.to_string();
    let env = replica_env(&pg.url, &[("BACKEND_PROXY", "true"), ("BACKEND_ALLOWED_HOSTS", &allowed)]);
    let (a, b) = (ServiceProcess::spawn(&env), ServiceProcess::spawn(&env));
    let Some(envoy_a) = Envoy::start(std::slice::from_ref(&a.socket)).await else { return };
    let Some(envoy_b) = Envoy::start(std::slice::from_ref(&b.socket)).await else { return };
    let (api_a, api_b) = (Json::new(&envoy_a.url), Json::new(&envoy_b.url));
    let admin = api_a.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let r = api_a
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": "pia", "email": "pia@example.com", "password": USER_PASSWORD,
                   "api_base_url": format!("http://{allowed}/api"), "bearer_token": "replicated-backend-token"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let login = api_a.post("/api/v1/auth/login", None, json!({"username": "pia", "password": USER_PASSWORD})).await;
    let access = login.body["access_token"].as_str().unwrap().to_owned();
    let credential = login.body["backend_config"]["bearer_token"].as_str().unwrap().to_owned();
    let proxied = |api: &Json| {
        let request = api.client.get(format!("{}/backend/feed", api.base)).bearer_auth(&credential);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Both replicas admit it (and B has it cached).
    for _ in 0..3 {
        assert_eq!(proxied(&api_a).await, 200);
        assert_eq!(proxied(&api_b).await, 200);
    }
    assert_eq!(backend.last().header("authorization"), Some("Bearer replicated-backend-token"));

    assert_eq!(api_a.post("/api/v1/auth/logout", Some(&access), json!({})).await.status, 200);
    let (limit, started) = (Duration::from_secs(1), Instant::now());
    while proxied(&api_b).await != 401 {
        assert!(started.elapsed() < limit, "replica B's proxy still admits the credential after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("logout on A refused by B's proxy after {:?}", started.elapsed());
    assert_eq!(proxied(&api_a).await, 401);
    drop(api_b);
}
