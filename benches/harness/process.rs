//! Running the real processes: the service binary (configured by environment only) and Envoy
//! with `envoy/envoy.yaml` (only its ports rewritten). Shared by the test suite and the load
//! harness.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, reason = "test and benchmark support code")]

/// Reports something this machine lacks for the running test (or a part of it): under CI=true
/// nothing may be skipped, so it fails the test; elsewhere it prints `SKIPPED <test>: <reason>`
/// on stderr, visible with `--nocapture` and in CI logs.
pub fn skipped(reason: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let test = running_test();
    assert!(!ci, "CI=true but {test} cannot run: {reason}");
    eprintln!("SKIPPED {test}: {reason}");
}

/// The running test's name: libtest names each test's thread after the test. Outside a test (the
/// load harness), the program's name.
fn running_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => std::env::args()
            .next()
            .and_then(|arg0| std::path::Path::new(&arg0).file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default(),
    }
}

/// The real binary as its own process (replicas, log checks), configured by environment only.
pub struct ServiceProcess {
    pub addr: std::net::SocketAddr,
    /// Its proxy socket (Envoy's way in), in a directory of its own.
    pub socket: std::path::PathBuf,
    child: std::process::Child,
    _socket_dir: tempfile::TempDir,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServiceProcess {
    /// Starts `instachatico-auth serve` on an ephemeral port and waits until it serves.
    pub fn spawn<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(env: &[(K, V)]) -> Self {
        use std::io::BufRead;
        let dir = std::env::temp_dir();
        let socket_dir = tempfile::tempdir().unwrap();
        let socket = socket_dir.path().join("proxy.sock");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_instachatico-auth"))
            .current_dir(dir)
            .env_clear()
            .env("PROXY_SOCKET", &socket)
            .envs([
                ("PORT", "0"),
                ("METRICS_ADDR", "127.0.0.1:0"),
                ("HOST", "127.0.0.1"),
                ("BCRYPT_COST", "10"),
                ("LOG_FORMAT", "text"),
            ])
            .envs(env.iter().map(|(k, v)| (k, v)))
            // An experiment's knob: the service's runtime size, apart from the harness's own.
            .envs(std::env::var("SERVICE_TOKIO_WORKER_THREADS").ok().map(|n| ("TOKIO_WORKER_THREADS", n)))
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
            Ok(Some(addr)) => Self { addr, socket, child, _socket_dir: socket_dir, log },
            _ => {
                let _ = child.kill();
                panic!("service did not start: {:?}", log.lock().unwrap());
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its Prometheus endpoint, from its start-up log (which logs the server at info).
    pub fn metrics_url(&self) -> Option<String> {
        let log = self.log();
        let line = log.iter().find(|l| l.contains("serving Prometheus metrics"))?;
        let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
        Some(format!("http://{addr}/metrics"))
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The log once a line contains `needle`, or as it is after 5 s: stderr is read on another
    /// thread, so a line the service just wrote may not be here yet.
    pub async fn log_once_it_has(&self, needle: &str) -> Vec<String> {
        for _ in 0..50 {
            let log = self.log();
            if log.iter().any(|l| l.contains(needle)) {
                return log;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.log()
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.url()).unwrap().connect().await.expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(sink) = LOG_SINK.get() {
            sink(&self.log());
        }
    }
}

/// Where a stopped process's log lines go (the test suite's secret scan).
pub static LOG_SINK: std::sync::OnceLock<fn(&[String])> = std::sync::OnceLock::new();

/// The first candidate binary that runs `--version`; `None` when none does, reported by
/// [`skipped`] with `missing` (under CI=true that fails the test).
fn first_that_runs(candidates: [Option<std::path::PathBuf>; 3], missing: &str) -> Option<std::path::PathBuf> {
    let found = candidates.into_iter().flatten().find(|bin| {
        std::process::Command::new(bin)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        skipped(missing);
    }
    found
}

/// Where Envoy sends requests: a service's proxy socket (as deployed) or its TCP port (a proxy
/// the service does not trust unless TRUSTED_PROXIES says so).
#[derive(Clone, Debug)]
pub enum Upstream {
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

impl From<std::net::SocketAddr> for Upstream {
    fn from(addr: std::net::SocketAddr) -> Self {
        Self::Tcp(addr)
    }
}

impl From<std::path::PathBuf> for Upstream {
    fn from(path: std::path::PathBuf) -> Self {
        Self::Unix(path)
    }
}

/// A real Envoy running `envoy/envoy.yaml` (only its ports rewritten) in front of `upstreams`.
/// The listener address of [`Envoy::router_only`] configs, replaced by a free port.
const ROUTER_ONLY_LISTEN: &str = "address: 127.0.0.1, port_value: 8080";

/// The floors' one route: the proxy's path to the backend's.
const FORWARD_ROUTE: &str = r#"              - match: { prefix: "/backend/" }
                route: { cluster: backend, prefix_rewrite: "/api/" }
"#;

/// A cluster of one loopback address (`h2`: it speaks HTTP/2 without TLS, as gRPC does).
fn static_cluster(name: &str, addr: std::net::SocketAddr, h2: bool) -> String {
    let h2 = if h2 {
        r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
"#
    } else {
        ""
    };
    format!(
        r#"  - name: {name}
    type: STATIC
{h2}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}
"#,
        addr.ip(),
        addr.port()
    )
}

pub struct Envoy {
    pub url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// The envoy binary: $ENVOY_BIN, ./.venv/bin/envoy, or `envoy` on PATH. `None` when there is
    /// none, reported by [`skipped`] (under CI=true that fails the test).
    pub fn binary() -> Option<std::path::PathBuf> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let candidates = [
            std::env::var_os("ENVOY_BIN").map(std::path::PathBuf::from),
            Some(root.join(".venv/bin/envoy")),
            Some(std::path::PathBuf::from("envoy")),
        ];
        first_that_runs(
            candidates,
            "no envoy binary ($ENVOY_BIN, .venv/bin/envoy or PATH; ./scripts/test installs it): what goes through Envoy did not run",
        )
    }

    pub async fn start<U: Clone + Into<Upstream>>(upstreams: &[U]) -> Option<Self> {
        Self::start_edited(upstreams, str::to_owned).await
    }

    /// `envoy/envoy.yaml` changed by `edit` (after its upstreams are set, before its port is).
    pub async fn start_edited<U: Clone + Into<Upstream>>(
        upstreams: &[U],
        edit: impl Fn(&str) -> String,
    ) -> Option<Self> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let template = std::fs::read_to_string(root.join("envoy/envoy.yaml")).expect("envoy.yaml");
        let endpoint_line = "        - endpoint: { address: { pipe: { path: data/proxy.sock } } }";
        let authz_line = "        - endpoint: { address: { pipe: { path: data/authz.sock } } }";
        for line in [endpoint_line, authz_line] {
            assert!(template.contains(line), "envoy.yaml upstream endpoint line changed; update the fixture");
        }
        // The API's endpoints, and the decisions' (the socket beside each proxy socket; over TCP,
        // the same port).
        let endpoints = |decisions: bool| -> String {
            let lines: Vec<String> = upstreams
                .iter()
                .map(|u| match u.clone().into() {
                    Upstream::Tcp(a) => format!(
                        "        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}",
                        a.port()
                    ),
                    Upstream::Unix(path) => {
                        let path = if decisions { path.with_file_name("authz.sock") } else { path };
                        format!("        - endpoint: {{ address: {{ pipe: {{ path: {} }} }} }}", path.display())
                    }
                })
                .collect();
            lines.join("\n")
        };
        let config = template.replace(endpoint_line, &endpoints(false)).replace(authz_line, &endpoints(true));
        Self::launch(&edit(&config), "address: 0.0.0.0, port_value: 8080").await
    }

    /// Envoy's own ceiling on this machine: an HTTP/1 listener whose only route answers every
    /// request with `body` (JSON) from Envoy itself, no upstream and no filter but the router.
    /// Anything proxied through Envoy costs at least this much of Envoy.
    pub async fn start_static(body: &str) -> Option<Self> {
        let route = format!(
            r#"              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: {} }} }}
                response_headers_to_add:
                - {{ header: {{ key: content-type, value: application/json }} }}
"#,
            serde_json::to_string(body).unwrap()
        );
        Self::launch(&Self::router_only(&route, "", ""), ROUTER_ONLY_LISTEN).await
    }

    /// Envoy's proxying alone: `/backend/…` forwarded to `backend` as `/api/…`, no filter but
    /// the router, no decision. What a proxied request costs at the least with Envoy in the path.
    pub async fn start_forwarding(backend: std::net::SocketAddr) -> Option<Self> {
        Self::launch(
            &Self::router_only(FORWARD_ROUTE, "", &static_cluster("backend", backend, false)),
            ROUTER_ONLY_LISTEN,
        )
        .await
    }

    /// The same with one filter before the router: ext_authz asking `authz` (gRPC) about each
    /// request, nothing else. What the proxy's design (Envoy forwards, a service decides) costs
    /// at the least; the decision's headers are applied, the route stays the static one.
    pub async fn start_checked_forwarding(backend: std::net::SocketAddr, authz: std::net::SocketAddr) -> Option<Self> {
        let filter = r#"          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: { envoy_grpc: { cluster_name: authz }, timeout: 3s }
              allowed_headers: { patterns: [{ exact: authorization }] }
              decoder_header_mutation_rules: { allow_all_routing: true }
"#;
        // The decision sets the backend's path itself.
        let route = r#"              - match: { prefix: "/backend/" }
                route: { cluster: backend }
"#;
        let clusters = static_cluster("backend", backend, false) + &static_cluster("authz", authz, true);
        Self::launch(&Self::router_only(route, filter, &clusters), ROUTER_ONLY_LISTEN).await
    }

    /// One HTTP listener with `routes`, `filters` and then the router, and `clusters`.
    fn router_only(routes: &str, filters: &str, clusters: &str) -> String {
        let clusters = if clusters.is_empty() { String::new() } else { format!("  clusters:\n{clusters}") };
        format!(
            r#"static_resources:
  listeners:
  - name: minimal
    address: {{ socket_address: {{ {ROUTER_ONLY_LISTEN} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: minimal
          route_config:
            virtual_hosts:
            - name: minimal
              domains: ["*"]
              routes:
{routes}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
{clusters}"#
        )
    }

    /// Runs `config` on a free port (`listen` is the config's listener address to replace).
    async fn launch(config: &str, listen: &str) -> Option<Self> {
        let bin = Self::binary()?;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(config.contains(listen), "the Envoy config's listener address changed; update the fixture");
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let config = config.replace(listen, &format!("address: 127.0.0.1, port_value: {port}"));
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ready when the listener answers as Envoy (any HTTP status, with Envoy's `server` header)
    /// and Envoy still runs. The port was free when chosen, but another process may bind it
    /// before Envoy does: then Envoy exits, and the answer, if any, is not Envoy's.
    async fn wait_ready(&mut self) -> bool {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(reply) = client.get(format!("{}/no-such-path", self.url)).send().await {
                return reply.headers().contains_key("server") && matches!(self.child.try_wait(), Ok(None));
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

/// A real PgBouncer (Debian's `pgbouncer`) in transaction pooling mode in front of the
/// PostgreSQL server of a URL, on a free port: each database of that server is reachable through
/// it under its own name, `pool_size` server connections per database. `server_reset_query` and
/// the rest keep their defaults, as a fleet's PgBouncer would have them.
pub struct PgBouncer {
    pub port: u16,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// $PGBOUNCER_BIN, `pgbouncer` on PATH or Debian's /usr/sbin/pgbouncer. `None` when there is
    /// none, reported by [`skipped`] (under CI=true that fails the test).
    pub fn binary() -> Option<std::path::PathBuf> {
        let candidates = [
            std::env::var_os("PGBOUNCER_BIN").map(std::path::PathBuf::from),
            Some(std::path::PathBuf::from("pgbouncer")),
            Some(std::path::PathBuf::from("/usr/sbin/pgbouncer")),
        ];
        first_that_runs(
            candidates,
            "no pgbouncer ($PGBOUNCER_BIN, PATH or /usr/sbin; ./scripts/test installs Debian's): what goes through PgBouncer did not run",
        )
    }

    /// Starts one in front of the server `server_url` names (its host, port, user, password).
    pub async fn start(server_url: &str, pool_size: usize) -> Option<Self> {
        let bin = Self::binary()?;
        let server = url::Url::parse(server_url).expect("a PostgreSQL URL");
        let (host, pg_port) = (server.host_str().unwrap_or("127.0.0.1"), server.port().unwrap_or(5432));
        let user = if server.username().is_empty() { "postgres" } else { server.username() };
        // Clients are trusted; PgBouncer logs in to PostgreSQL with the auth_file's password.
        let users = format!("\"{user}\" \"{}\"\n", server.password().unwrap_or_default());
        // PgBouncer refuses to run as root; as root, it switches to the postgres user, which must
        // then read its files.
        let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let dir = tempfile::tempdir().unwrap();
            let auth_file = dir.path().join("users.txt");
            std::fs::write(&auth_file, &users).unwrap();
            let config = format!(
                "[databases]\n* = host={host} port={pg_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}\npool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n{}",
                auth_file.display(),
                if root { "user = postgres\n" } else { "" }
            );
            let ini = dir.path().join("pgbouncer.ini");
            std::fs::write(&ini, config).unwrap();
            if root {
                use std::os::unix::fs::PermissionsExt;
                for (path, mode) in [(dir.path(), 0o755), (auth_file.as_path(), 0o644), (ini.as_path(), 0o644)] {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
                }
            }
            let log = std::fs::File::create(dir.path().join("pgbouncer.log")).unwrap();
            let child = std::process::Command::new(&bin)
                .arg(&ini)
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn pgbouncer");
            let mut bouncer = Self { port, child, dir };
            if bouncer.wait_ready().await {
                return Some(bouncer);
            }
            let _ = bouncer.child.kill();
            let _ = bouncer.child.wait();
        }
        panic!("pgbouncer did not start");
    }

    /// Ready when its port accepts and it still runs (another process may have taken the port,
    /// and then PgBouncer exits).
    async fn wait_ready(&mut self) -> bool {
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return matches!(self.child.try_wait(), Ok(None));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    }

    /// `url`, a database of the server, as reached through this PgBouncer.
    pub fn url_of(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).expect("a PostgreSQL URL");
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
