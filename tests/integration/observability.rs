//! Metrics on their own port (gRPC, grpc-web and transcoded JSON told apart), request ids
//! propagated or generated, all from the real server.

use instachatico_auth::pb;

use crate::common::{ADMIN_PASSWORD, ADMIN_USERNAME, Envoy, Json, TestServer, authed};

/// The value of one sample line, 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(s: &TestServer) -> String {
    let addr = s.running.as_ref().unwrap().metrics_addr.expect("metrics enabled");
    let response = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    response.text().await.unwrap()
}

async fn metrics_cover_every_transport(s: TestServer) {
    let getme = |transport: &str, code: &str| {
        format!(
            "auth_rpc_duration_seconds_count{{method=\"instachatico.auth.v1.UserService/GetMe\",code=\"{code}\",transport=\"{transport}\"}}"
        )
    };
    let before = scrape(&s).await;
    let token = s.admin_token().await;
    let mut users = s.users().await;
    users.get_me(authed(&token, pb::GetMeRequest {})).await.unwrap();
    users.get_me(authed("bad", pb::GetMeRequest {})).await.unwrap_err();

    // grpc-web over HTTP/1.1.
    let r = crate::common::grpc_web_get_me(&s.url, &token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();

    // JSON through Envoy.
    if let Some(envoy) = Envoy::start(&[s.upstream()]).await {
        let api = Json::new(&envoy.url);
        assert_eq!(api.get("/api/v1/users/me", Some(&token)).await.status, 200);
        let after = scrape(&s).await;
        assert!(sample(&after, &getme("json", "OK")) > sample(&before, &getme("json", "OK")), "{after}");
    }

    let after = scrape(&s).await;
    assert!(sample(&after, &getme("grpc", "OK")) > sample(&before, &getme("grpc", "OK")));
    assert!(sample(&after, &getme("grpc", "UNAUTHENTICATED")) > sample(&before, &getme("grpc", "UNAUTHENTICATED")));
    assert!(sample(&after, &getme("grpc-web", "OK")) > sample(&before, &getme("grpc-web", "OK")));
    assert!(sample(&after, "auth_login_attempts_total{outcome=\"success\"}") >= 1.0);
    for family in [
        "auth_rpc_duration_seconds_bucket",
        "auth_jwt_issue_seconds_count",
        "auth_jwt_verify_seconds_count",
        "auth_db_query_seconds_count{op=\"sessions::find_live\"}",
        "auth_db_query_seconds_count{op=\"users::find_by_login\"}",
        "auth_bcrypt_queue_wait_seconds_count",
        "auth_bcrypt_queue_depth",
        "auth_db_pool_size",
        "auth_active_sessions",
    ] {
        assert!(after.lines().any(|l| l.starts_with(family)), "{family} missing from /metrics");
    }
    // No secret ever reaches the metrics either.
    assert!(!after.contains(&token) && !after.contains(ADMIN_PASSWORD));
    s.stop().await;
}

async fn request_ids_are_propagated_or_made(s: TestServer) {
    let mut health = s.health().await;
    let mut request = tonic::Request::new(pb::CheckRequest {});
    request.metadata_mut().insert("x-request-id", "trace-me-123".parse().unwrap());
    let reply = health.check(request).await.unwrap();
    assert_eq!(reply.metadata().get("x-request-id").unwrap(), "trace-me-123");
    let reply = health.check(pb::CheckRequest {}).await.unwrap();
    let made = reply.metadata().get("x-request-id").expect("generated").to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
    let _ = (ADMIN_USERNAME,);
    s.stop().await;
}

crate::on_both_backends!(metrics_cover_every_transport, request_ids_are_propagated_or_made);
