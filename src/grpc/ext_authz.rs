//! `envoy.service.auth.v3.Authorization`: Envoy's ext_authz asks it about every request under
//! the backend proxy's path. Envoy forwards an admitted request to the address named here with
//! the headers set here (the backend's token among them); a refused one gets the status and
//! `{"detail"}` given here. Only the sidecar may ask (the access table's `Sidecar`): the answer
//! holds a backend's token.

use std::collections::HashMap;

use chrono::Utc;
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use envoy_types::pb::google::rpc;
use secrecy::ExposeSecret;
use tonic::{Request, Response, Status};

use crate::domain::App;
use crate::domain::proxy::{COOKIE_NAME, Presented, ProxyDenial, ProxyGrant, ProxyRequest};
use crate::domain::types::{ClientInfo, UserId};

/// The one RPC, served beside the API but not part of it (no reflection, no JSON).
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Headers Envoy routes on after the decision (envoy.yaml): the address to connect to (the
/// ORIGINAL_DST clusters read it) and which cluster (TLS or not).
pub const UPSTREAM_HEADER: &str = "x-instachatico-upstream";
pub const SCHEME_HEADER: &str = "x-instachatico-upstream-scheme";

/// Request headers that never reach a backend: the client's credentials, and the routing
/// headers' spoofable twins.
const STRIPPED: &[&str] = &["cookie", "proxy-authorization"];

pub struct ExtAuthzApi {
    app: App,
}

impl ExtAuthzApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let check = request.into_inner();
        let Some(http) = check.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref())
        else {
            return Err(Status::invalid_argument("not an HTTP request"));
        };
        let headers = &http.headers;
        let origin = headers.get("origin").map(String::as_str);
        let proxy_request = ProxyRequest {
            credential: credential(headers),
            method: &http.method,
            path: &http.path,
            origin,
            client: client_info(headers),
        };
        let cors = self.app.proxy_policy().and_then(|p| origin.filter(|o| p.origins.iter().any(|a| a == o)));
        let decided = self.app.authorize_proxy(&proxy_request, Utc::now()).await;
        let response = match decided {
            Ok(grant) => {
                crate::metrics::proxy_admitted();
                admitted(&grant, cors)
            }
            Err(denial) => refused(denial, cors),
        };
        Ok(Response::new(response))
    }
}

/// The credential: `Authorization: Bearer`, else the cookie variant's cookie.
fn credential(headers: &HashMap<String, String>) -> Option<Presented<'_>> {
    if let Some(value) = headers.get("authorization") {
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| Presented::Bearer(token.trim()));
    }
    headers
        .get("cookie")?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| Presented::Cookie(value))
}

/// The client as Envoy saw it: the last X-Forwarded-For entry is the one Envoy appended.
fn client_info(headers: &HashMap<String, String>) -> ClientInfo {
    let ip =
        headers.get("x-forwarded-for").and_then(|v| v.rsplit(',').next()).and_then(|last| last.trim().parse().ok());
    ClientInfo { ip, user_agent: headers.get("user-agent").cloned() }
}

fn header(key: &str, value: impl Into<String>) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_owned(), value: value.into(), raw_value: Vec::new() }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    }
}

/// CORS for the UI's origin on the proxy's replies (preflights are the service's own).
fn cors_headers(origin: Option<&str>) -> Vec<HeaderValueOption> {
    origin.map_or_else(Vec::new, |origin| {
        vec![
            header("access-control-allow-origin", origin),
            header("access-control-allow-credentials", "true"),
            header("vary", "Origin"),
        ]
    })
}

fn ok_status() -> Option<rpc::Status> {
    Some(rpc::Status { code: tonic::Code::Ok as i32, message: String::new(), details: Vec::new() })
}

fn admitted(grant: &ProxyGrant, cors: Option<&str>) -> CheckResponse {
    let headers = vec![
        header(":path", grant.path.clone()),
        header(":authority", grant.authority.clone()),
        header("authorization", format!("Bearer {}", grant.token.expose_secret())),
        header(UPSTREAM_HEADER, grant.upstream.to_string()),
        header(SCHEME_HEADER, if grant.https { "https" } else { "http" }),
    ];
    CheckResponse {
        status: ok_status(),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: STRIPPED.iter().map(|h| (*h).to_owned()).collect(),
            response_headers_to_add: cors_headers(cors),
            ..Default::default()
        })),
        dynamic_metadata: Some(admitted_metadata(grant.user_id)),
    }
}

/// The dynamic metadata key (namespace `envoy.filters.http.ext_authz`) naming whose request
/// was admitted: Envoy's access log reports it back with a failure it made itself
/// ([`proxy_log`](super::proxy_log)). Never sent to the backend.
pub const USER_ID_METADATA: &str = "instachatico_user_id";

fn admitted_metadata(user_id: UserId) -> Struct {
    let id = Value { kind: Some(value::Kind::NumberValue(f64::from(user_id.0))) };
    Struct { fields: HashMap::from([(USER_ID_METADATA.to_owned(), id)]) }
}

fn refused(denial: ProxyDenial, cors: Option<&str>) -> CheckResponse {
    let mut headers = cors_headers(cors);
    headers.push(header("cache-control", "no-store"));
    if let Some(wait) = denial.retry_after {
        headers.push(header("retry-after", wait.as_secs().max(1).to_string()));
    }
    if denial.status == 401 {
        headers.push(header("www-authenticate", "Bearer"));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::PermissionDenied as i32,
            message: denial.reason.to_owned(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(denial.status) }),
            headers,
            // Envoy's local-reply config wraps it as {"detail": ...}.
            body: denial.detail.to_owned(),
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_bearer_header_wins_and_the_cookie_is_found_among_others() {
        let h = headers(&[("authorization", "Bearer abc"), ("cookie", &format!("{COOKIE_NAME}=xyz"))]);
        assert!(matches!(credential(&h), Some(Presented::Bearer("abc"))));
        let h = headers(&[("cookie", &format!("a=1; {COOKIE_NAME}=xyz; b=2"))]);
        assert!(matches!(credential(&h), Some(Presented::Cookie("xyz"))));
        assert!(credential(&headers(&[("authorization", "Basic abc")])).is_none());
        assert!(credential(&headers(&[("cookie", "other=1")])).is_none());
    }

    #[test]
    fn the_client_is_the_address_envoy_appended() {
        let info = client_info(&headers(&[("x-forwarded-for", "6.6.6.6, 10.0.0.7"), ("user-agent", "ua")]));
        assert_eq!(info.ip, Some("10.0.0.7".parse().unwrap()));
        assert_eq!(info.user_agent.as_deref(), Some("ua"));
    }
}
