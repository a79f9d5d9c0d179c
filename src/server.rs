//! Assembly: the one way the service starts ([`start`], for `serve` and the tests alike): builds
//! the [`App`] from checked [`Settings`] (migrations, pool, hashing pool), bootstraps the first
//! admin, and serves native gRPC, grpc-web (HTTP/1.1 too) with CORS, reflection and
//! `grpc.health.v1` on one port and the sidecar's sockets until shutdown.

mod authz;
mod background;
mod proxy_socket;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogServiceServer;
use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use self::authz::AuthzThreads;
use self::proxy_socket::AuthzSocket;
pub use self::proxy_socket::ProxySocket;
use crate::config::{AdminAccount, AppEnv, Settings};
use crate::db::{self, DbPool, DbTarget};
use crate::domain::{App, BootstrapOutcome};
use crate::grpc::audit::AuditApi;
use crate::grpc::auth::AuthApi;
use crate::grpc::codec::{CodecLayer, PlainMessageLayer};
use crate::grpc::ext_authz::ExtAuthzApi;
use crate::grpc::health::HealthApi;
use crate::grpc::keys::KeysApi;
use crate::grpc::mfa::MfaApi;
use crate::grpc::passkeys::PasskeyApi;
use crate::grpc::proxy_log::ProxyLogApi;
use crate::grpc::service_accounts::ServiceAccountApi;
use crate::grpc::user::UserApi;
use crate::grpc::{AccessLayer, ClientIpPolicy};
use crate::pb;
use crate::pb::audit_service_server::AuditServiceServer;
use crate::pb::auth_service_server::AuthServiceServer;
use crate::pb::health_service_server::HealthServiceServer;
use crate::pb::keys_service_server::KeysServiceServer;
use crate::pb::mfa_service_server::MfaServiceServer;
use crate::pb::passkey_service_server::PasskeyServiceServer;
use crate::pb::service_account_service_server::ServiceAccountServiceServer;
use crate::pb::user_service_server::UserServiceServer;
use crate::telemetry::{RpcTelemetryLayer, Transport};

/// Largest request message accepted; ours are a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A started server, serving in the background: where it listens, its [`App`], and how to stop
/// it. Dropping it stops the server too.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The sidecar's Unix socket, when on.
    pub proxy_socket: Option<PathBuf>,
    /// Where `/metrics` is served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    pub app: App,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await?
    }

    /// Serves until the `shutdown` given to [`start`] completes, then drains and returns.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        // Held until the end: dropping it would stop the server now.
        let _stop = self.stop.take();
        self.task.await?
    }
}

/// Starts the service from checked settings: binds the listen and metrics ports, builds the app
/// (migrations, pool, hashing pool, key check), creates the ADMIN_* admin, binds the sidecar's
/// socket, and serves in the background until `shutdown` completes or [`RunningServer::stop`].
/// What can fail here is the environment (a port taken, the database down), never a setting.
pub async fn start(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningServer> {
    // Ports first: one that is taken stops us before the database is touched.
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (HOST, PORT)", settings.listen))?;
    let metrics = match settings.metrics {
        Some(addr) => Some(crate::telemetry::bind_metrics(addr).await?),
        None => None,
    };
    let app = build_app(&settings).await?;
    bootstrap_admin(&app, settings.admin.as_ref()).await?;
    let proxy = ProxySocket::bind(settings.proxy_socket.as_deref())?;
    let authz = settings.proxy_socket.as_deref().map(|p| AuthzSocket::bind(crate::config::authz_socket_beside(p)));
    let authz = authz.transpose()?;

    let addr = listener.local_addr()?;
    let metrics_addr = metrics.as_ref().map(TcpListener::local_addr).transpose()?;
    let proxy_socket = settings.proxy_socket.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let until = async move {
        tokio::select! {
            () = shutdown => {}
            _ = stopped => {}
        }
    };
    let task = tokio::spawn(serve(app.clone(), settings, listener, (proxy, authz), metrics, until));
    Ok(RunningServer { addr, proxy_socket, metrics_addr, app, stop: Some(stop), task })
}

/// Builds the application: migrations, database pool, hashing pool, and the check that the
/// keys read the stored backend tokens. Also what the operator commands run on.
pub async fn build_app(settings: &Settings) -> anyhow::Result<App> {
    let target = &settings.database;
    let applied = db::migrate(target).await?;
    if !applied.is_empty() {
        tracing::info!(migrations = ?applied, "applied database migrations");
    }
    let pool = DbPool::connect(target, settings.pool).await?;
    tracing::info!(database = %target.describe(), "database ready");
    if matches!(pool, DbPool::Sqlite(..)) {
        tracing::info!("SQLite: run a single instance; replicas need PostgreSQL");
    }

    let hashing = settings.hashing;
    let hasher = crate::crypto::password::PasswordHasher::new(
        hashing.cost,
        hashing.workers,
        hashing.max_queue,
        hashing.max_wait,
    )
    .await?;
    // On PostgreSQL other replicas change sessions too: trust the cache only while listening.
    let replicated = matches!(target, DbTarget::Postgres(_));
    let cache = crate::domain::cache::PrincipalCache::new(settings.session_cache_ttl, replicated);
    let key_cache = crate::domain::cache::KeyCache::new(settings.session_cache_ttl, replicated);
    let keys = settings.keys.clone();
    let crypto = crate::domain::Crypto {
        hasher,
        jwt: keys.jwt,
        cipher: keys.cipher,
        names: keys.names,
        relying_party: settings.relying_party.clone(),
    };
    let app = App::new(
        pool,
        crypto,
        settings.sessions,
        settings.security,
        settings.retention,
        (cache, key_cache),
        settings.backends.clone(),
    );
    check_stored_tokens(&app, settings.app_env).await?;
    Ok(app)
}

/// How many stored backend tokens the start-up check tries to decrypt.
const KEY_CHECK_SAMPLE: i64 = 20;

/// A wrong ENCRYPTION_KEY would start fine and then fail every login of a user with a backend:
/// try the configured keys on a sample of stored tokens first. Production refuses to start;
/// development warns loudly and health reports it.
async fn check_stored_tokens(app: &App, app_env: AppEnv) -> anyhow::Result<()> {
    let check = app.check_stored_tokens(KEY_CHECK_SAMPLE).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    if check.unreadable.is_empty() {
        return Ok(());
    }
    let message = format!(
        "ENCRYPTION_KEY (with ENCRYPTION_PREVIOUS_KEYS) cannot decrypt {} of {} sampled backend tokens \
         (users {:?}): the key is wrong, or an old key is missing from ENCRYPTION_PREVIOUS_KEYS",
        check.unreadable.len(),
        check.sampled,
        check.unreadable.iter().map(|id| id.get()).collect::<Vec<_>>()
    );
    if app_env == AppEnv::Production {
        anyhow::bail!("refusing to start: {message}");
    }
    tracing::error!("!!! {message}; those users cannot sign in. Health reports it. !!!");
    Ok(())
}

/// Creates the ADMIN_* admin on first start; idempotent.
async fn bootstrap_admin(app: &App, admin: Option<&AdminAccount>) -> anyhow::Result<()> {
    let Some(AdminAccount { username, email, password }) = admin else { return Ok(()) };
    match app.bootstrap_admin(username, email, password, Utc::now()).await {
        Ok(BootstrapOutcome::Created(id)) => {
            tracing::info!(user_id = id.get(), username, "created the first admin from ADMIN_*")
        }
        Ok(BootstrapOutcome::AlreadyExists) => {
            tracing::debug!(username, "ADMIN_USERNAME exists; bootstrap skipped")
        }
        Err(e) => anyhow::bail!("cannot create the ADMIN_* admin: {e}"),
    }
    Ok(())
}

/// Serves on `listener` (and the sidecar's sockets) until `shutdown` completes, then drains
/// in-flight requests.
async fn serve(
    app: App,
    settings: Settings,
    listener: TcpListener,
    (proxy, authz): (Option<ProxySocket>, Option<AuthzSocket>),
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let ips = ClientIpPolicy::new(settings.trusted_proxies);
    // The recorder is installed even without an endpoint: the histograms cost the same.
    let prometheus = crate::telemetry::prometheus()?;
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = match metrics {
        Some(listener) => {
            tracing::info!(addr = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
            Some(tokio::spawn(crate::telemetry::serve_metrics(listener, prometheus, async {
                let _ = metrics_stopped.await;
            })))
        }
        None => None,
    };
    let cors = cors_layer(settings.cors_origins);

    // The standard services under their canonical file names (pb::STANDARD_FILE_DESCRIPTOR_SET),
    // not the crates' own sets (`health.proto`, `reflection_v1alpha.proto`): both reflection
    // versions serve the same files and list every service this server answers.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(pb::STANDARD_FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let (health_reporter, grpc_health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AuthServiceServer<AuthApi>>().await;
    health_reporter.set_serving::<UserServiceServer<UserApi>>().await;
    health_reporter.set_serving::<MfaServiceServer<MfaApi>>().await;
    health_reporter.set_serving::<PasskeyServiceServer<PasskeyApi>>().await;
    let probe = tokio::spawn(background::probe_database(app.clone(), health_reporter));
    let janitor = tokio::spawn(background::housekeeping(app.clone()));
    // DATABASE_LISTEN_URL (default DATABASE_URL): LISTEN needs a session, not a pooler's turn.
    let listener_task = match settings.listen_database {
        Some(DbTarget::Postgres(url)) => Some(tokio::spawn(background::listen_for_invalidations(app.clone(), url))),
        Some(DbTarget::Sqlite(_)) | None => None,
    };

    let auth =
        AuthServiceServer::new(AuthApi::new(app.clone(), ips.clone())).max_decoding_message_size(MAX_REQUEST_BYTES);
    let users =
        UserServiceServer::new(UserApi::new(app.clone(), ips.clone())).max_decoding_message_size(MAX_REQUEST_BYTES);
    let service_accounts = ServiceAccountServiceServer::new(ServiceAccountApi::new(app.clone(), ips.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let mfa = MfaServiceServer::new(MfaApi::new(app.clone(), ips.clone())).max_decoding_message_size(MAX_REQUEST_BYTES);
    let passkeys = PasskeyServiceServer::new(PasskeyApi::new(app.clone(), ips.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let audit = AuditServiceServer::new(AuditApi::new(app.clone())).max_decoding_message_size(MAX_REQUEST_BYTES);
    let health = HealthServiceServer::new(HealthApi::new(app.clone()));
    let keys = KeysServiceServer::new(KeysApi::new(app.clone()));
    let ext_authz = AuthorizationServer::new(ExtAuthzApi::new(app.clone()));
    let proxy_log = AccessLogServiceServer::new(ProxyLogApi::new(app.clone()));

    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving gRPC and grpc-web");
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .timeout(settings.request_timeout)
        .layer(crate::http1_drain::Http1DrainLayer::new(MAX_REQUEST_BYTES))
        .layer(cors)
        .layer(tower::util::MapRequestLayer::new(crate::telemetry::keep_safe_request_id))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(tower::util::MapRequestLayer::new(Transport::tag))
        .layer(tonic_web::GrpcWebLayer::new())
        // Outside every layer that sets a status: grpc-message as Connect clients can read it.
        .layer(PlainMessageLayer)
        .layer(RpcTelemetryLayer)
        // Every call is authenticated and authorized here (grpc::access).
        .layer(AccessLayer::new(app.clone(), ips.clone()))
        // Innermost: only gRPC bodies are read; JSON messages (Connect JSON through Envoy)
        // become protobuf for tonic.
        .layer(CodecLayer::new(MAX_REQUEST_BYTES))
        .add_service(auth)
        .add_service(users)
        .add_service(mfa)
        .add_service(passkeys)
        .add_service(audit)
        .add_service(health)
        .add_service(keys)
        .add_service(service_accounts)
        .add_service(ext_authz)
        .add_service(proxy_log)
        .add_service(grpc_health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    // One shutdown for both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let tcp = router.clone().serve_with_incoming_shutdown(incoming(listener), until_stopped(stopped.clone()));
    let mut authz = match authz {
        Some(socket) => {
            Some(AuthzThreads::spawn(&app, socket, settings.decision_threads, settings.request_timeout, &stopped)?)
        }
        None => None,
    };
    let decisions = async {
        match authz.as_mut() {
            Some(threads) => threads.finished().await,
            None => Ok(()),
        }
    };
    let uds = {
        let stopped = stopped.clone();
        async move {
            let Some(ProxySocket { listener, path }) = proxy else { return Ok(()) };
            tracing::info!(path = %path.display(), "serving the proxy socket (X-Forwarded-For believed)");
            let result =
                router.serve_with_incoming_shutdown(proxy_socket::incoming(listener), until_stopped(stopped)).await;
            let _ = std::fs::remove_file(&path);
            result
        }
    };
    let signal = async {
        shutdown.await;
        let _ = stop.send(true);
    };
    let (result, uds_result, decided, ()) = tokio::join!(tcp, uds, decisions, signal);
    let result = result.and(uds_result).map_err(anyhow::Error::from).and(decided);
    if let Some(threads) = authz {
        threads.release();
    }
    probe.abort();
    janitor.abort();
    if let Some(task) = listener_task {
        task.abort();
    }
    let _ = metrics_stop.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    tracing::info!("server stopped");
    result.context("server failed")
}

/// grpc-web from the UI's origins only; exposes the gRPC status trailers-in-headers.
fn cors_layer(origins: Vec<HeaderValue>) -> CorsLayer {
    let headers = |names: &[&'static str]| names.iter().map(|n| HeaderName::from_static(n)).collect::<Vec<_>>();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers(headers(&[
            "authorization",
            "content-type",
            "x-grpc-web",
            "x-user-agent",
            "grpc-timeout",
            "x-request-id",
            "connect-protocol-version",
            "connect-timeout-ms",
        ]))
        .expose_headers(headers(&[
            "grpc-status",
            "grpc-message",
            "grpc-status-details-bin",
            "retry-after",
            "x-request-id",
        ]))
        .max_age(Duration::from_secs(7200))
}

/// Registers for Ctrl-C and SIGTERM now (so a signal that comes before serving starts is not
/// fatal) and returns a future that resolves on either.
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = interrupt.recv() => {},
            }
            tracing::info!("shutdown requested; draining in-flight requests");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutdown requested; draining in-flight requests");
        })
    }
}

/// Accepted connections with Nagle off: a reply goes out as several small HTTP/2 frames, and
/// with Nagle a write behind an unacknowledged one waits for the peer's ACK. Through Envoy (a
/// few streams sharing one connection) that cost ~20 % of JSON and grpc-web throughput.
/// Keepalive probes find peers that vanished without a FIN.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}
