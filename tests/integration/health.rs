//! HealthService.Check (seed shape) and the standard grpc.health.v1.

use instachatico_auth::pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::TestServer;

async fn health_reports_the_database(s: TestServer) {
    let reply = s.health().await.check(pb::CheckRequest {}).await.unwrap();
    assert!(reply.metadata().get("x-http-status").is_none(), "no 503 hint when healthy");
    let body = reply.into_inner();
    assert_eq!((body.status.as_str(), body.database.as_str()), ("healthy", "connected"));
    let age = chrono::Utc::now().timestamp() - body.timestamp.unwrap().seconds;
    assert!((0..5).contains(&age));

    let mut std_health = HealthClient::new(s.channel().await);
    for service in ["", "instachatico.auth.v1.AuthService", "instachatico.auth.v1.UserService"] {
        let status = std_health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    s.stop().await;
}

crate::on_both_backends!(health_reports_the_database);
