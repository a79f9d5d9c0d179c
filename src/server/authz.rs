//! The backend proxy's decisions (ext_authz) on a socket and a thread of their own.
//!
//! Envoy asks before every proxied request, and the request waits for the answer. On the API's
//! multi-threaded runtime a decision hopped between workers (hyper runs each HTTP/2 stream as a
//! task of its own, and handing it over wakes an idle worker), which on two cores shared with
//! Envoy put 0.4 ms on the proxy's p50 (BENCHMARKS.md, "Backend proxy"). Here one current-thread
//! runtime reads, decides and answers on the thread that was woken.
//!
//! Only the sidecar can open the socket (0600, beside PROXY_SOCKET), so the API's access check is
//! not needed here. Check stays on the API's listeners too, for a sidecar that reaches the service
//! over TCP (TRUSTED_PROXIES).

use std::time::Duration;

use anyhow::Context;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::sync::{oneshot, watch};

use super::proxy_socket::{AuthzSocket, incoming};
use crate::domain::App;
use crate::grpc::ext_authz::ExtAuthzApi;
use crate::telemetry::RpcTelemetryLayer;

/// The thread serving the decision socket.
pub struct AuthzThread {
    done: oneshot::Receiver<anyhow::Result<()>>,
    release: oneshot::Sender<()>,
}

impl AuthzThread {
    /// Starts serving `socket` until `stop` turns true.
    pub fn spawn(
        app: App,
        socket: AuthzSocket,
        timeout: Duration,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let (done_tx, done) = oneshot::channel();
        let (release, released) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("authz".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = done_tx.send(Err(anyhow::Error::from(e).context("cannot start the decision thread")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let _ = done_tx.send(serve(app, socket, timeout, stop).await);
                    // A database connection opened here runs its task on this runtime and may
                    // serve the API later: keep driving it until the API has drained.
                    let _ = released.await;
                });
            })
            .context("cannot start the decision thread")?;
        Ok(Self { done, release })
    }

    /// Waits until it has stopped serving and drained (after `stop`), and returns how it ended.
    pub async fn finished(&mut self) -> anyhow::Result<()> {
        (&mut self.done).await.unwrap_or_else(|_| Err(anyhow::anyhow!("the decision thread ended early")))
    }

    /// Lets the thread end its runtime: once nothing else uses the database.
    pub fn release(self) {
        let _ = self.release.send(());
    }
}

async fn serve(
    app: App,
    socket: AuthzSocket,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let AuthzSocket { listener, path } = socket;
    // Registered with this thread's runtime: its readiness wakes this thread, not the API's.
    let listener = tokio::net::UnixListener::from_std(listener)?;
    tracing::info!(path = %path.display(), "serving the backend proxy's decisions");
    let result = tonic::transport::Server::builder()
        .timeout(timeout)
        .layer(RpcTelemetryLayer)
        .add_service(AuthorizationServer::new(ExtAuthzApi::new(app)))
        .serve_with_incoming_shutdown(incoming(listener), async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
    let _ = std::fs::remove_file(&path);
    result.context("the decision socket failed")
}
