//! The backend proxy's decisions (ext_authz) on a socket and threads of their own.
//!
//! Envoy asks before every proxied request, and the request waits for the answer. On the API's
//! multi-threaded runtime a decision hopped between workers (hyper runs each HTTP/2 stream as a
//! task of its own, and handing it over wakes an idle worker), which on two cores shared with
//! Envoy put 0.4 ms on the proxy's p50 (BENCHMARKS.md, "Backend proxy"). Here a current-thread
//! runtime reads, decides and answers on the thread that was woken; PROXY_DECISION_THREADS of
//! them (default one) share the socket's connections.
//!
//! Only the sidecar can open the socket (0600, beside PROXY_SOCKET), so the API's access check is
//! not needed here. Check stays on the API's listeners too, for a sidecar that reaches the service
//! over TCP (TRUSTED_PROXIES).

use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::sync::{oneshot, watch};

use super::proxy_socket::{AuthzSocket, incoming};
use crate::domain::App;
use crate::grpc::ext_authz::ExtAuthzApi;
use crate::telemetry::RpcTelemetryLayer;

/// The threads serving the decision socket (PROXY_DECISION_THREADS), each accepting on it with
/// a current-thread runtime of its own: a connection Envoy opens is served, start to end, by the
/// thread whose accept took it.
pub struct AuthzThreads {
    threads: Vec<AuthzThread>,
    path: PathBuf,
}

struct AuthzThread {
    done: oneshot::Receiver<anyhow::Result<()>>,
    release: oneshot::Sender<()>,
}

impl AuthzThreads {
    /// Starts `count` threads serving `socket` until `stop` turns true.
    pub fn spawn(
        app: &App,
        socket: AuthzSocket,
        count: usize,
        timeout: Duration,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let AuthzSocket { listener, path } = socket;
        let count = count.max(1);
        tracing::info!(path = %path.display(), threads = count, "serving the backend proxy's decisions");
        let mut threads = Vec::with_capacity(count);
        for n in 0..count {
            let listener = listener.try_clone().context("cannot share the decision socket")?;
            threads.push(AuthzThread::spawn(n, app.clone(), listener, timeout, stop.clone())?);
        }
        Ok(Self { threads, path })
    }

    /// Waits until every thread has stopped serving and drained (after `stop`), removes the
    /// socket, and returns how they ended (the first failure, if any).
    pub async fn finished(&mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for thread in &mut self.threads {
            let ended = (&mut thread.done).await;
            let ended = ended.unwrap_or_else(|_| Err(anyhow::anyhow!("a decision thread ended early")));
            result = result.and(ended);
        }
        let _ = std::fs::remove_file(&self.path);
        result
    }

    /// Lets the threads end their runtimes: once nothing else uses the database.
    pub fn release(self) {
        for thread in self.threads {
            let _ = thread.release.send(());
        }
    }
}

impl AuthzThread {
    fn spawn(
        n: usize,
        app: App,
        listener: StdUnixListener,
        timeout: Duration,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let (done_tx, done) = oneshot::channel();
        let (release, released) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("authz-{n}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = done_tx.send(Err(anyhow::Error::from(e).context("cannot start a decision thread")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let _ = done_tx.send(serve(app, listener, timeout, stop).await);
                    // A database connection opened here runs its task on this runtime and may
                    // serve the API later: keep driving it until the API has drained.
                    let _ = released.await;
                });
            })
            .context("cannot start a decision thread")?;
        Ok(Self { done, release })
    }
}

async fn serve(
    app: App,
    listener: StdUnixListener,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Registered with this thread's runtime: its readiness wakes this thread, not the API's.
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let result = tonic::transport::Server::builder()
        .timeout(timeout)
        .layer(RpcTelemetryLayer)
        .add_service(AuthorizationServer::new(ExtAuthzApi::new(app)))
        .serve_with_incoming_shutdown(incoming(listener), async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
    result.context("the decision socket failed")
}
