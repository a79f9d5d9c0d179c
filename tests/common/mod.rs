//! Test fixture: starts the real server on an ephemeral port over a fresh database (a temporary
//! SQLite file, or a throwaway PostgreSQL database created on the local server) and hands out
//! typed clients. `TEST_DATABASE_URL` points at another PostgreSQL server (any database on it;
//! the fixture creates its own beside it).

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use instachatico_auth::cli::Cli;
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
#[macro_export]
macro_rules! on_both_backends {
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
}

impl Options {
    pub fn arg(mut self, flag: &str, value: impl Into<String>) -> Self {
        self.args.push((flag.to_owned(), value.into()));
        self
    }
}

pub struct TestServer {
    pub backend: Backend,
    pub running: Option<RunningServer>,
    pub url: String,
    pub database_url: String,
    pub encryption_key: String,
    args: Vec<String>,
    _dir: tempfile::TempDir,
    pg: Option<PgTestDb>,
}

impl TestServer {
    /// A server with default options. `None` only when PostgreSQL is unreachable outside CI.
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Option<Self> {
        capture_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let (database_url, pg) = match backend {
            Backend::Sqlite => (dir.path().join("auth.db").to_string_lossy().into_owned(), None),
            Backend::Postgres => {
                let pg = PgTestDb::create().await?;
                (pg.url.clone(), Some(pg))
            }
        };
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
        let cli = Cli::try_parse_from(&args).expect("test config parses");
        let running = server::spawn(&cli.config).await.expect("server starts");
        let url = format!("http://{}", running.addr);
        Some(Self { backend, running: Some(running), url, database_url, encryption_key, args, _dir: dir, pg })
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
        let cli = Cli::try_parse_from(&args).expect("test config parses");
        let running = server::spawn(&cli.config).await.expect("server restarts");
        self.url = format!("http://{}", running.addr);
        self.running = Some(running);
        self.args = args;
        self
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
        self.login_reply(username, password).await.expect("login succeeds").access_token
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

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean shutdown");
        }
    }
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

static WARNED: AtomicBool = AtomicBool::new(false);

impl PgTestDb {
    fn server_url() -> String {
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// Creates a database; `None` (with a loud message) when PostgreSQL is unreachable, except
    /// under CI=true where that fails the test.
    pub async fn create() -> Option<Self> {
        let admin_url = Self::server_url();
        let mut conn = match AsyncPgConnection::establish(&admin_url).await {
            Ok(c) => c,
            Err(e) => {
                let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
                assert!(!ci, "CI=true but PostgreSQL at {admin_url} is unreachable: {e}");
                if !WARNED.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "\n!!!!! PostgreSQL unreachable at {admin_url} ({e}): SKIPPING the PostgreSQL variants of the tests !!!!!\n"
                    );
                }
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

/// A real Envoy running `envoy/envoy.yaml` (only its ports rewritten) in front of `upstreams`.
pub struct Envoy {
    pub url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// The envoy binary: $ENVOY_BIN, ./.venv/bin/envoy, or `envoy` on PATH. `None` (loudly)
    /// when there is none, except under CI=true where that fails the test.
    pub fn binary() -> Option<std::path::PathBuf> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let candidates = [
            std::env::var_os("ENVOY_BIN").map(std::path::PathBuf::from),
            Some(root.join(".venv/bin/envoy")),
            Some(std::path::PathBuf::from("envoy")),
        ];
        let found = candidates.into_iter().flatten().find(|bin| {
            std::process::Command::new(bin)
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if found.is_none() {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "CI=true but no envoy binary (run ./scripts/test, which installs it into .venv)");
            if !WARNED_ENVOY.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "\n!!!!! no envoy binary: SKIPPING the tests through Envoy (./scripts/test installs it) !!!!!\n"
                );
            }
        }
        found
    }

    pub async fn start(upstreams: &[std::net::SocketAddr]) -> Option<Self> {
        let bin = Self::binary()?;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let template = std::fs::read_to_string(root.join("envoy/envoy.yaml")).expect("envoy.yaml");
        let endpoint_line =
            "        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 50051 } } }";
        assert!(template.contains(endpoint_line), "envoy.yaml upstream endpoint line changed; update the fixture");
        let endpoints: Vec<String> = upstreams
            .iter()
            .map(|a| {
                format!(
                    "        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}",
                    a.port()
                )
            })
            .collect();
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let config = template
                .replace("address: 0.0.0.0, port_value: 8080", &format!("address: 127.0.0.1, port_value: {port}"))
                .replace(endpoint_line, &endpoints.join("\n"));
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("envoy.yaml");
            std::fs::write(&path, config).unwrap();
            let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
            // Run from the repository root, as operators do: the config's file paths are relative.
            let child = std::process::Command::new(&bin)
                .current_dir(root)
                .args(["-c", path.to_str().unwrap(), "--disable-hot-restart", "--log-level", "warn"])
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn envoy");
            let mut envoy = Self { url: format!("http://127.0.0.1:{port}"), child, _dir: dir };
            if envoy.wait_ready().await {
                return Some(envoy);
            }
            let _ = envoy.child.kill();
        }
        panic!("envoy did not start");
    }

    /// Ready when the listener answers (any HTTP status).
    async fn wait_ready(&mut self) -> bool {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if client.get(format!("{}/no-such-path", self.url)).send().await.is_ok() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static WARNED_ENVOY: AtomicBool = AtomicBool::new(false);

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

/// The real binary as its own process (replicas, log checks), configured by environment only.
pub struct ServiceProcess {
    pub addr: std::net::SocketAddr,
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServiceProcess {
    /// Starts `instachatico-auth serve` on an ephemeral port and waits until it serves.
    pub fn spawn(env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let dir = std::env::temp_dir();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_instachatico-auth"))
            .current_dir(dir)
            .env_clear()
            .envs([
                ("PORT", "0"),
                ("METRICS_ADDR", "127.0.0.1:0"),
                ("HOST", "127.0.0.1"),
                ("BCRYPT_COST", "10"),
                ("LOG_FORMAT", "text"),
            ])
            .envs(env.iter().copied())
            .arg("serve")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn service");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("addr=").nth(1).filter(|_| line.contains("serving gRPC")) {
                    let _ = tx.send(addr.trim().parse::<std::net::SocketAddr>().ok());
                }
                sink.lock().unwrap().push(line);
            }
            let _ = tx.send(None);
        });
        match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(Some(addr)) => Self { addr, child, log },
            _ => {
                let _ = child.kill();
                panic!("service did not start: {:?}", log.lock().unwrap());
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).unwrap().connect().await.expect("connect")
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        append_to_log(&self.log());
    }
}

/// Where the whole suite's logs go; `scripts/test` scans it for secrets afterwards.
pub const LOG_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/integration.log");

/// Sends every in-process server's logs (debug and up) to [`LOG_FILE`], started afresh each run.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
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
