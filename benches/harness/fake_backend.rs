//! A stand-in for a user's Instachatico backend, for the backend proxy's tests and benchmark: a
//! real HTTP/1.1 server on a loopback port that records every request it receives.
//!
//! - `GET <base>/stream`: server-sent events, one now and the last only once the test calls
//!   [`FakeBackend::release_stream`] (so a client that sees the first event saw it streamed);
//! - `<base>/redirect`: 302 to `Location` given in the `to` query parameter;
//! - `<base>/teapot`: 418 with a body of its own (errors pass through as sent);
//! - anything else: 200 `{"backend": name, "method", "path", "body"}` (never the token), after
//!   `sleep_ms` milliseconds when the query asks (a backend that does some work).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
struct State {
    name: String,
    /// Off for load runs: only the replies matter there.
    record: bool,
    received: Arc<Mutex<Vec<Received>>>,
    release: Arc<tokio::sync::Notify>,
    /// Connections accepted (a proxy that reuses its connections opens few).
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

pub struct FakeBackend {
    pub addr: SocketAddr,
    state: State,
    task: tokio::task::JoinHandle<()>,
}

impl FakeBackend {
    /// Starts a backend called `name` (in its replies) on a free loopback port.
    pub async fn start(name: &str) -> Self {
        Self::launch(name, true).await
    }

    /// The same, recording nothing (a load run's millions of requests).
    pub async fn start_quiet(name: &str) -> Self {
        Self::launch(name, false).await
    }

    async fn launch(name: &str, record: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake backend");
        let addr = listener.local_addr().unwrap();
        let state = State {
            name: name.to_owned(),
            record,
            received: Arc::default(),
            release: Arc::new(tokio::sync::Notify::new()),
            connections: Arc::default(),
        };
        let handler_state = state.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = handler_state.clone();
            async move {
                let sleep_ms = uri.query().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("sleep_ms=")));
                if let Some(ms) = sleep_ms.and_then(|ms| ms.parse().ok()) {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                handle(state, method, uri, headers, body)
            }
        });
        // Whatever the proxy lets through arrives whole (the proxy's own limit is under test).
        let app = app.layer(axum::extract::DefaultBodyLimit::disable());
        let connections = Arc::clone(&state.connections);
        let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
            connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn last(&self) -> Received {
        self.received().pop().expect("the backend received a request")
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lets a `/stream` reply send its last event.
    pub fn release_stream(&self) {
        self.state.release.notify_one();
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn handle(state: State, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let target = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    if state.record {
        state.received.lock().unwrap().push(Received {
            method: method.to_string(),
            target: target.clone(),
            headers,
            body: body.to_vec(),
        });
    }
    let path = uri.path();
    if path.ends_with("/stream") {
        let release = Arc::clone(&state.release);
        let events = futures_util::stream::unfold(0, move |step| {
            let release = Arc::clone(&release);
            async move {
                match step {
                    0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"data: first\n\n")), 1)),
                    1 => {
                        release.notified().await;
                        Some((Ok(Bytes::from_static(b"data: last\n\n")), 2))
                    }
                    _ => None,
                }
            }
        });
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(events))
            .unwrap();
    }
    if path.ends_with("/redirect") {
        let to = uri.query().and_then(|q| q.strip_prefix("to=")).unwrap_or("/");
        return Response::builder().status(StatusCode::FOUND).header(header::LOCATION, to).body(Body::empty()).unwrap();
    }
    if path.ends_with("/teapot") {
        return Response::builder()
            .status(StatusCode::IM_A_TEAPOT)
            .header(header::CONTENT_TYPE, "text/plain")
            .header("x-backend-own", "kept")
            .body(Body::from("short and stout"))
            .unwrap();
    }
    let reply = serde_json::json!({
        "backend": state.name,
        "method": method.as_str(),
        "path": target,
        "body": String::from_utf8_lossy(&body),
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        // A backend's own CORS header: the proxy replaces it with the UI's.
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .body(Body::from(reply.to_string()))
        .unwrap()
}
