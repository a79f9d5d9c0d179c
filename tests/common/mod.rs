//! Test fixture: starts the real server on an ephemeral port over a fresh database (a temporary
//! SQLite file, or a throwaway PostgreSQL database created on the local server) and hands out
//! typed clients. `TEST_DATABASE_URL` points at another PostgreSQL server (any database on it;
//! the fixture creates its own beside it).
//! Follows crates.io's test-database harness: a throwaway database per test.

#![allow(dead_code)]

#[path = "../../benches/harness/fake_backend.rs"]
pub mod fake_backend;
#[path = "../../benches/harness/process.rs"]
mod process;
pub use process::{Envoy, PgBouncer, ServiceProcess, Upstream, skipped};

use clap::Parser;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use instachatico_auth::cli::Cli;
use instachatico_auth::config::Settings;
use instachatico_auth::pb::auth_service_client::AuthServiceClient;
use instachatico_auth::pb::health_service_client::HealthServiceClient;
use instachatico_auth::pb::user_service_client::UserServiceClient;
use instachatico_auth::pb::{self};
use instachatico_auth::server::{self, RunningServer};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub const ADMIN_USERNAME: &str = "admin";
pub const ADMIN_PASSWORD: &str = "Admin_password123!";
pub const USER_PASSWORD: &str = "Secure_password123!";
pub const JWT_SECRET: &str = "integration-test-jwt-secret-0123456789abcdef";
pub const FRONTEND: &str = "http://localhost:5173";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one `#[tokio::test]` per backend for each listed `async fn name(TestServer)`.
/// With `and_through_pgbouncer;` first, a third on PostgreSQL through a PgBouncer in
/// transaction pooling mode ([`Options::through_pgbouncer`]).
#[macro_export]
macro_rules! on_both_backends {
    (and_through_pgbouncer; $($name:ident),* $(,)?) => {
        $crate::on_both_backends!($($name),*);
        mod pgbouncer {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let options = $crate::common::Options::default().through_pgbouncer();
                    if let Some(server) = $crate::common::TestServer::start_with($crate::common::Backend::Postgres, options).await {
                        super::$name(server).await;
                    }
                }
            )*
        }
    };
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(server) = $crate::common::TestServer::start($crate::common::Backend::Sqlite).await {
                        super::$name(server).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(server) = $crate::common::TestServer::start($crate::common::Backend::Postgres).await {
                        super::$name(server).await;
                    }
                }
            )*
        }
    };
}

/// Extra settings for one test's server.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Extra `--flag value` pairs.
    pub args: Vec<(String, String)>,
    /// PostgreSQL only: DATABASE_URL goes through a PgBouncer in transaction mode.
    pub pgbouncer: bool,
}

impl Options {
    pub fn arg(mut self, flag: &str, value: impl Into<String>) -> Self {
        self.args.push((flag.to_owned(), value.into()));
        self
    }

    /// The deployment of issue 18: DATABASE_URL through a PgBouncer in transaction mode with
    /// fewer server connections than the service's pool (so they are shared and a client's
    /// consecutive statements land on different ones), DB_PREPARED_STATEMENTS=false, and the
    /// LISTEN connection direct (DATABASE_LISTEN_URL).
    pub fn through_pgbouncer(mut self) -> Self {
        self.pgbouncer = true;
        self
    }
}

/// Server connections per database of the test PgBouncer: below the test pool (4).
pub const PGBOUNCER_POOL: usize = 2;

pub struct TestServer {
    pub backend: Backend,
    pub running: Option<RunningServer>,
    pub url: String,
    pub database_url: String,
    pub encryption_key: String,
    args: Vec<String>,
    _dir: tempfile::TempDir,
    /// Before `pg`: stopped before its database is dropped.
    bouncer: Option<PgBouncer>,
    pg: Option<PgTestDb>,
}

impl TestServer {
    /// A server with default options. `None` only when PostgreSQL is unreachable outside CI.
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, mut options: Options) -> Option<Self> {
        capture_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut database_url, pg) = match backend {
            Backend::Sqlite => (dir.path().join("auth.db").to_string_lossy().into_owned(), None),
            Backend::Postgres => {
                let pg = PgTestDb::create().await?;
                (pg.url.clone(), Some(pg))
            }
        };
        let mut bouncer = None;
        if options.pgbouncer {
            let direct = pg.as_ref().expect("PgBouncer fronts PostgreSQL").url.clone();
            let started = PgBouncer::start(&PgTestDb::server_url(), PGBOUNCER_POOL).await?;
            database_url = started.url_of(&direct);
            bouncer = Some(started);
            let pooled = [("database-listen-url", direct.as_str()), ("db-prepared-statements", "false")];
            options.args.splice(0..0, pooled.map(|(k, v)| (k.to_owned(), v.to_owned())));
        }
        let encryption_key = python_fixture()["fernet_key"].as_str().expect("fixture key").to_owned();
        let mut settings: Vec<(String, String)> = [
            ("database-url", database_url.as_str()),
            ("data-dir", &dir.path().to_string_lossy()),
            ("host", "127.0.0.1"),
            ("port", "0"),
            ("jwt-secret-key", JWT_SECRET),
            ("encryption-key", &encryption_key),
            ("admin-username", ADMIN_USERNAME),
            ("admin-email", "admin@example.com"),
            ("admin-password", ADMIN_PASSWORD),
            ("bcrypt-cost", "10"),
            ("frontend-url", FRONTEND),
            ("db-pool-size", "4"),
            ("metrics-addr", "127.0.0.1:0"),
            // Generous limits: tests that exercise the limits set their own.
            ("rate-limit-login-per-minute", "100000"),
            ("rate-limit-api-per-minute", "100000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        // A test's own options replace the defaults of the same name.
        for (flag, value) in options.args {
            settings.retain(|(k, _)| *k != flag);
            settings.push((flag, value));
        }
        let mut args: Vec<String> = vec!["instachatico-auth".into()];
        for (flag, value) in settings {
            args.push(format!("--{flag}"));
            args.push(value);
        }
        let running = start(&args).await.expect("server starts");
        let url = format!("http://{}", running.addr);
        Some(Self { backend, running: Some(running), url, database_url, encryption_key, args, _dir: dir, bouncer, pg })
    }

    /// Stops this server and starts another on the same database, with `changes` applied to
    /// the settings (e.g. rotated keys).
    pub async fn restart(mut self, changes: &[(&str, &str)]) -> Self {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean shutdown");
        }
        let mut args = self.args.clone();
        for (flag, value) in changes {
            let flag = format!("--{flag}");
            match args.iter().position(|a| *a == flag) {
                Some(i) => args[i + 1] = (*value).to_owned(),
                None => args.extend([flag, (*value).to_owned()]),
            }
        }
        let running = start(&args).await.expect("server restarts");
        self.url = format!("http://{}", running.addr);
        self.running = Some(running);
        self.args = args;
        self
    }

    /// How the Envoy sidecar reaches this server, as deployed: its proxy socket.
    pub fn upstream(&self) -> Upstream {
        Upstream::Unix(self.running.as_ref().expect("running").proxy_socket.clone().expect("proxy socket on"))
    }

    pub fn app(&self) -> &instachatico_auth::domain::App {
        &self.running.as_ref().expect("running").app
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone()).expect("url").connect().await.expect("connect")
    }

    pub async fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel().await)
    }

    pub async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }

    pub async fn health(&self) -> HealthServiceClient<Channel> {
        HealthServiceClient::new(self.channel().await)
    }

    /// Logs in and returns the whole reply.
    pub async fn login_reply(&self, username: &str, password: &str) -> Result<pb::LoginResponse, Status> {
        self.auth()
            .await
            .login(pb::LoginRequest { username: username.into(), password: password.into() })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Logs in and returns the access token; panics on failure.
    pub async fn login(&self, username: &str, password: &str) -> String {
        self.login_reply(username, password)
            .await
            .expect("login succeeds")
            .access_token
            .expect("a session, not an MFA step")
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_USERNAME, ADMIN_PASSWORD).await
    }

    /// Creates a user as admin; with `backend`, a backend at that URL with that token.
    pub async fn create_user(&self, admin: &str, username: &str, backend: Option<(&str, &str)>) -> pb::User {
        let (url, token) = backend.unwrap_or(("", ""));
        self.users()
            .await
            .create_user(authed(
                admin,
                pb::CreateUserRequest {
                    username: username.into(),
                    email: format!("{username}@example.com"),
                    password: USER_PASSWORD.into(),
                    instagram_username: if backend.is_some() { format!("{username}_ig") } else { String::new() },
                    api_base_url: url.into(),
                    bearer_token: token.into(),
                    role: String::new(),
                },
            ))
            .await
            .expect("create user")
            .into_inner()
    }

    /// Waits (at most a minute) until this server's start-up housekeeping round has ended.
    pub async fn housekeeping_done(&self) {
        let started = std::time::Instant::now();
        while self.app().housekeeping_rounds() == 0 {
            assert!(started.elapsed() < std::time::Duration::from_secs(60), "no housekeeping round ended");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean shutdown");
        }
    }
}

/// Starts the server as `serve` does (`server::start`), from these command-line arguments; the
/// test stops it with `RunningServer::stop`.
async fn start(args: &[String]) -> anyhow::Result<RunningServer> {
    let cli = Cli::try_parse_from(args).expect("test config parses");
    let settings = Settings::from_config(&cli.config)?;
    server::start(settings, std::future::pending()).await
}

/// A request with `authorization: Bearer <token>`.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    request
}

/// Asserts a call failed with `code`; returns the message.
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> String {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status.message().to_owned()
        }
        Ok(value) => panic!("expected {code:?}, got success: {value:?}"),
    }
}

/// The committed Python-made fixtures.
pub fn python_fixture() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/python_compat.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture json")
}

/// A throwaway PostgreSQL database, dropped when the test ends.
pub struct PgTestDb {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgTestDb {
    /// The PostgreSQL server the throwaway databases are created on.
    pub fn server_url() -> String {
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// Creates a database; `None` when PostgreSQL is unreachable, reported by [`skipped`] (under
    /// CI=true that fails the test).
    pub async fn create() -> Option<Self> {
        let admin_url = Self::server_url();
        let mut conn = match AsyncPgConnection::establish(&admin_url).await {
            Ok(c) => c,
            Err(e) => {
                let at = instachatico_auth::db::redact_url(&admin_url);
                skipped(&format!("PostgreSQL unreachable at {at} ({e})"));
                return None;
            }
        };
        let name = format!("ia_test_{}", uuid::Uuid::new_v4().simple());
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
        let mut url = url::Url::parse(&admin_url).expect("TEST_DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        Some(Self { url: url.to_string(), admin_url, name })
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = AsyncPgConnection::establish(&admin_url).await {
                    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A JSON client for the Envoy face.
#[derive(Clone)]
pub struct Json {
    pub base: String,
    pub client: reqwest::Client,
}

/// A JSON reply: status, headers, parsed body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an error reply in the seed's shape; returns its detail.
    pub fn detail(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert!(self.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{self:?}");
        self.body["detail"].as_str().unwrap_or_else(|| panic!("no detail: {self:?}")).to_owned()
    }
}

impl Json {
    pub fn new(base: &str) -> Self {
        Self { base: base.to_owned(), client: reqwest::Client::new() }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request reaches envoy");
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)))
        };
        Reply { status, headers, body }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let mut request = self.request(method, path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: serde_json::Value) -> Reply {
        self.call(reqwest::Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: serde_json::Value) -> Reply {
        self.call(reqwest::Method::PUT, path, token, Some(body)).await
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let reply = self
            .post("/api/v1/auth/login", None, serde_json::json!({"username": username, "password": password}))
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body["access_token"].as_str().unwrap().to_owned()
    }
}

/// Where the whole suite's logs go; `scripts/test` scans it for secrets afterwards.
pub const LOG_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/integration.log");

/// Sends every in-process server's logs (debug and up) to [`LOG_FILE`], started afresh each run.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = process::LOG_SINK.set(append_to_log);
        let file = std::fs::File::create(LOG_FILE).expect("log file");
        let filter =
            tracing_subscriber::EnvFilter::new("debug,h2=info,hyper=info,hyper_util=info,tower=info,reqwest=info");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .try_init();
    });
}

/// Adds a subprocess's log lines to [`LOG_FILE`].
pub fn append_to_log(lines: &[String]) {
    use std::io::Write;
    capture_logs();
    if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(LOG_FILE) {
        for line in lines {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// A grpc-web call of `GetMe` over HTTP/1.1 to `base`, ready for more headers and `send()`.
pub fn grpc_web_get_me(base: &str, token: &str) -> reqwest::RequestBuilder {
    use prost::Message;
    let body = pb::GetMeRequest {}.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&body);
    reqwest::Client::builder()
        .http1_only()
        .build()
        .unwrap()
        .post(format!("{base}/instachatico.auth.v1.UserService/GetMe"))
        .header("content-type", "application/grpc-web+proto")
        .header("authorization", format!("Bearer {token}"))
        .body(frame)
}
