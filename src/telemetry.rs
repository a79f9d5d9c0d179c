//! Observability: the Prometheus recorder with its own HTTP endpoint, and the per-RPC tower
//! layer: a tracing span per call (method, transport, request id, then status and latency) and
//! the `auth_rpc_duration_seconds` histogram by method, gRPC code and transport. The code is read
//! where gRPC puts it: response headers for trailers-only replies, trailers otherwise. The same
//! layer turns tonic's INTERNAL for an undecodable request into INVALID_ARGUMENT (see
//! `grpc::status::refuse_malformed_requests`) before recording it. `keep_safe_request_id` decides
//! which client request ids are believed.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};
use tracing::Instrument;

/// Latency buckets (seconds): sub-millisecond RPCs up to multi-second logins under load.
const BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How often histogram samples are folded into their buckets (the crate's own default).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder (installed on first use; tests share one).
pub fn prometheus() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new().set_buckets(&BUCKETS)?.build_recorder();
    let handle = recorder.handle();
    // Another thread may have won the race; then its recorder is the one installed.
    if metrics::set_global_recorder(recorder).is_ok() {
        let _ = HANDLE.set(handle.clone());
        // Histogram samples pile up in the recorder until something drains them into the
        // buckets: a scrape does, and so must this when nobody scrapes (it grew RSS by ~34
        // bytes per request, 5 MiB over a 15-minute run, before it existed).
        std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        })?;
    }
    HANDLE.get().cloned().ok_or_else(|| anyhow::anyhow!("metrics recorder unavailable"))
}

/// Serves `GET /metrics` in the Prometheus text format on its own listener.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// Binds the metrics listener (separate from the API port, never behind its auth).
pub async fn bind_metrics(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))
}

/// How a call reached the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    GrpcWeb,
    /// Transcoded by Envoy from the JSON routes (Envoy marks them).
    Json,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::GrpcWeb => "grpc-web",
            Self::Json => "json",
        }
    }

    /// Tags a request before grpc-web translation hides how it came.
    pub fn tag<B>(mut request: Request<B>) -> Request<B> {
        let headers = request.headers();
        let transport = if headers.get("x-instachatico-transport").is_some_and(|v| v == "json") {
            Self::Json
        } else if headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc-web"))
        {
            Self::GrpcWeb
        } else {
            Self::Grpc
        };
        request.extensions_mut().insert(transport);
        request
    }
}

/// Longest client-chosen request id kept.
const MAX_REQUEST_ID_LEN: usize = 64;

/// Keeps a client's `x-request-id` only if it is one short value of safe characters
/// (`[A-Za-z0-9._-]`, at most 64); otherwise drops it, and `SetRequestIdLayer` (next) puts a
/// fresh one in its place. The id is logged and returned to the client, so it must not be able
/// to forge log lines or carry markup.
pub fn keep_safe_request_id<B>(mut request: Request<B>) -> Request<B> {
    let headers = request.headers();
    let mut values = headers.get_all("x-request-id").iter();
    let safe = match (values.next(), values.next()) {
        (None, _) => return request,
        (Some(value), None) => is_safe_request_id(value.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    if !safe {
        request.headers_mut().remove("x-request-id");
    }
    request
}

fn is_safe_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The RPC paths the service serves, so metric labels stay bounded whatever clients send.
/// Built once and kept for the life of the process (a few dozen short strings), so labels are
/// `&'static str` and recording a call allocates nothing.
fn known_methods() -> &'static HashSet<&'static str> {
    static METHODS: OnceLock<HashSet<&'static str>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let mut paths: Vec<String> = crate::openapi::pool()
            .map(|pool| {
                pool.services()
                    .flat_map(|s| {
                        s.methods()
                            .map(|m| format!("/{}/{}", m.parent_service().full_name(), m.name()))
                            .collect::<Vec<_>>()
                    })
                    .collect()
            })
            .unwrap_or_default();
        paths.extend(
            [
                "/grpc.health.v1.Health/Check",
                "/grpc.health.v1.Health/Watch",
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            ]
            .map(str::to_owned),
        );
        paths.into_iter().map(|p| &*Box::leak(p.into_boxed_str())).collect()
    })
}

fn method_label(path: &str) -> &'static str {
    known_methods().get(path).map_or("unknown", |p| p.trim_start_matches('/'))
}

fn code_name(code: &str) -> &'static str {
    match code.trim() {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<&'static str> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).map(code_name)
}

/// Per-call bookkeeping, finished exactly once (status known, stream ended or dropped).
struct Call {
    start: Instant,
    method: &'static str,
    transport: Transport,
    span: tracing::Span,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: &'static str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.start.elapsed();
        metrics::histogram!("auth_rpc_duration_seconds", "method" => self.method, "code" => code, "transport" => self.transport.as_str())
            .record(elapsed.as_secs_f64());
        self.span.record("code", code);
        self.span.record("latency_us", u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        tracing::debug!(parent: &self.span, "rpc finished");
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The client went away (or the body was never read to the end).
        self.finish("CANCELLED");
    }
}

/// The per-RPC telemetry layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTelemetryLayer;

impl<S> Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcTelemetry<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for RpcTelemetry<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Body,
{
    type Response = Response<TelemetryBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let transport = request.extensions().get::<Transport>().copied().unwrap_or(Transport::Grpc);
        // Already checked by `keep_safe_request_id`; still recorded as a string, which the text
        // format prints quoted and escaped (a `%` field would print it raw).
        let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let span = tracing::info_span!(
            "rpc",
            method = %method,
            transport = transport.as_str(),
            request_id = request_id.as_str(),
            code = tracing::field::Empty,
            latency_us = tracing::field::Empty,
        );
        let mut call = Call { start: Instant::now(), method, transport, span: span.clone(), done: false };
        let future = self.inner.call(request).instrument(span);
        Box::pin(async move {
            match future.await {
                Ok(mut response) => {
                    crate::grpc::status::refuse_malformed_requests(response.headers_mut());
                    // Trailers-only replies (errors) carry the status in the headers.
                    if let Some(code) = grpc_status(response.headers()) {
                        call.finish(code);
                    }
                    Ok(response.map(|body| TelemetryBody { inner: body, call }))
                }
                Err(e) => {
                    call.finish("INTERNAL");
                    Err(e)
                }
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that finishes the call when the trailers (or the end) go by.
    pub struct TelemetryBody<B> {
        #[pin]
        inner: B,
        call: Call,
    }
}

impl<B: Body> Body for TelemetryBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish("INTERNAL"),
            // Ended without trailers: not a gRPC reply (it has no status to report).
            Poll::Ready(None) => this.call.finish("UNKNOWN"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ids(ids: &[&str]) -> Request<()> {
        let mut request = Request::new(());
        for id in ids {
            request.headers_mut().append("x-request-id", id.parse().unwrap());
        }
        request
    }

    #[test]
    fn only_short_safe_request_ids_are_kept() {
        let kept = |ids: &[&str]| keep_safe_request_id(with_ids(ids)).headers().get("x-request-id").is_some();
        assert!(kept(&["abc-123_X.y"]));
        assert!(kept(&[&"a".repeat(64)]));
        assert!(!kept(&[&"a".repeat(65)]));
        assert!(!kept(&["fake}: instachatico_auth::grpc::status: internal error error=\"forged\""]));
        assert!(!kept(&["a b"]));
        assert!(!kept(&["<script>"]));
        assert!(!kept(&["ok", "ok"]), "two ids: neither is believed");
        assert!(!kept(&[]));
    }
}
