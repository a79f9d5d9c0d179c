//! `HealthService.Check` in the seed's JSON shape (seed 3.4.1); unhealthy when the database
//! does not answer, with an HTTP 503 hint for Envoy.

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
        let connected = self.app.db().ping().await;
        let mut response = Response::new(pb::CheckResponse {
            status: if connected { "healthy" } else { "unhealthy" }.to_owned(),
            database: if connected { "connected" } else { "disconnected" }.to_owned(),
            timestamp: Some(timestamp(Utc::now())),
        });
        if !connected {
            hint_http_status(&mut response, 503);
        }
        Ok(response)
    }
}
