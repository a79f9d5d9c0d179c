//! `envoy.service.accesslog.v3.AccessLogService`: Envoy's gRPC access log reports the backend
//! proxy's failures that Envoy makes itself after an admitted decision (the backend unreachable
//! or silent, a body over the limit), so they are counted and audited like the service's own
//! refusals. envoy.yaml logs only those requests; the user is the one the decision named (its
//! dynamic metadata), so an entry without it is ignored. Only the sidecar may report.

use chrono::Utc;
use envoy_types::pb::envoy::config::core::v3::{Metadata, address};
use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogService;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{StreamAccessLogsMessage, StreamAccessLogsResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use tonic::{Request, Response, Status, Streaming};

use super::ext_authz::USER_ID_METADATA;
use crate::domain::App;
use crate::domain::proxy::{BACKEND_TIMED_OUT, BACKEND_UNREACHABLE, BODY_TOO_LARGE, ProxyDenial};
use crate::domain::types::{ClientInfo, UserId};

/// The one RPC, served beside the API but not part of it (no reflection, no JSON).
pub const STREAM_PATH: &str = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs";

/// Where Envoy files the ext_authz decision's dynamic metadata.
const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

pub struct ProxyLogApi {
    app: App,
}

impl ProxyLogApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl AccessLogService for ProxyLogApi {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut stream = request.into_inner();
        while let Some(message) = stream.message().await? {
            let Some(LogEntries::HttpLogs(logs)) = message.log_entries else { continue };
            for entry in &logs.log_entry {
                if let Some((denial, user_id, client)) = failure(entry) {
                    self.app.proxy_failed(denial, user_id, &client, Utc::now());
                }
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

/// What one logged request was refused for, whose it was, and from where.
fn failure(entry: &HttpAccessLogEntry) -> Option<(ProxyDenial, UserId, ClientInfo)> {
    let common = entry.common_properties.as_ref()?;
    let user_id = admitted_user(common.metadata.as_ref()?)?;
    let status = entry.response.as_ref().and_then(|r| r.response_code).map_or(0, |c| c.value);
    let flags = common.response_flags.unwrap_or_default();
    let denial = if flags.upstream_request_timeout || flags.stream_idle_timeout || status == 504 {
        BACKEND_TIMED_OUT
    } else if status == 413 {
        BODY_TOO_LARGE
    } else {
        BACKEND_UNREACHABLE
    };
    let ip = common.downstream_remote_address.as_ref().and_then(|a| match &a.address {
        Some(address::Address::SocketAddress(socket)) => socket.address.parse().ok(),
        _ => None,
    });
    Some((denial, user_id, ClientInfo { ip, user_agent: None }))
}

fn admitted_user(metadata: &Metadata) -> Option<UserId> {
    let fields = &metadata.filter_metadata.get(EXT_AUTHZ_NAMESPACE)?.fields;
    match fields.get(USER_ID_METADATA)?.kind {
        // A user id is a positive i32, carried as a JSON number.
        Some(Kind::NumberValue(n)) if n >= 1.0 && n <= f64::from(i32::MAX) && n.fract() == 0.0 => {
            Some(UserId(n as i32))
        }
        _ => None,
    }
}
