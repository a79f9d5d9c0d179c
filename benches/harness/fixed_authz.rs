//! An ext_authz server that decides nothing: every Check is admitted with the same headers the
//! service's decision sets (the backend's address, scheme, path and token). Put in the service's
//! place behind the committed envoy.yaml, it measures what the backend proxy costs with a
//! decision that costs nothing: the floor of the design (Envoy's proxying plus its ext_authz
//! exchange), against which the service's own share shows.

use std::net::SocketAddr;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction, HeaderValue,
    HeaderValueOption, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

struct Fixed {
    upstream: String,
    token: String,
    /// The backend's base path, replacing the proxy's `/backend`.
    base: String,
}

fn header(key: &str, value: String) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_owned(), value, raw_value: Vec::new() }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    }
}

#[tonic::async_trait]
impl Authorization for Fixed {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let path = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map_or("/", |h| h.path.as_str());
        let rest = path.strip_prefix("/backend").unwrap_or(path);
        let headers = vec![
            header(":path", format!("{}{rest}", self.base)),
            header(":authority", self.upstream.clone()),
            header("authorization", format!("Bearer {}", self.token)),
            header("x-instachatico-upstream", self.upstream.clone()),
            header("x-instachatico-upstream-scheme", "http".to_owned()),
        ];
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status { code: 0, message: String::new(), details: Vec::new() }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove: vec!["cookie".to_owned(), "proxy-authorization".to_owned()],
                ..Default::default()
            })),
            ..Default::default()
        }))
    }
}

/// Serves the fixed decision (gRPC, h2c) on a free loopback port until the runtime ends.
pub async fn start(backend: SocketAddr, base: &str, token: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let service = Fixed { upstream: backend.to_string(), token: token.to_owned(), base: base.to_owned() };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(service))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    addr
}
