//! `HealthService.Check` in the seed's JSON shape (seed 3.4.1); unhealthy when the database
//! does not answer or the encryption keys do not read the stored tokens, with an HTTP 503 hint
//! for Envoy.

use chrono::Utc;
use tonic::{Request, Response, Status};

use super::convert::timestamp;
use super::status::hint_http_status;
use crate::domain::App;
use crate::pb;
use crate::pb::health_service_server::HealthService;

pub struct HealthApi {
    app: App,
}

impl HealthApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl HealthService for HealthApi {
    async fn check(&self, _request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let health = self.app.health().await;
        let healthy = health.database_connected && health.encryption_keys_ok;
        let mut response = Response::new(pb::CheckResponse {
            status: if healthy { "healthy" } else { "unhealthy" }.to_owned(),
            database: if health.database_connected { "connected" } else { "disconnected" }.to_owned(),
            timestamp: Some(timestamp(Utc::now())),
            encryption_keys: if health.encryption_keys_ok { "ok" } else { "unreadable" }.to_owned(),
        });
        if !healthy {
            hint_http_status(&mut response, 503);
        }
        Ok(response)
    }
}
