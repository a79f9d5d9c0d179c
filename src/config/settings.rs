//! What the configuration means: every setting parsed once into the type start-up uses and
//! checked (risky ones refused in production) before anything is written, migrated or bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use http::HeaderValue;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use super::keys::{Keys, Resolved};
use super::{AppEnv, Config};
use crate::crypto::password::{MAX_COST, MIN_COST};
use crate::db::{DbTarget, PoolOptions};
use crate::domain::allowed_hosts::AllowedHosts;
use crate::domain::proxy::ProxyPolicy;
use crate::domain::{BackendPolicy, RetentionPolicy, SecurityPolicy, SessionPolicy};

/// Longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Every setting, checked. Built by [`Settings::from_config`]; used by `server::start` and by
/// the operator commands. `Debug` prints no secret and no database password.
#[derive(Debug)]
pub struct Settings {
    /// `production` refuses what `development` only warns about.
    pub app_env: AppEnv,
    pub database: DbTarget,
    /// Where this replica LISTENs for the others' invalidations (DATABASE_LISTEN_URL, else
    /// DATABASE_URL); `None` on SQLite, which has one process and no replicas.
    pub listen_database: Option<DbTarget>,
    pub pool: PoolOptions,
    pub keys: Keys,
    pub sessions: SessionPolicy,
    pub security: SecurityPolicy,
    pub hashing: Hashing,
    pub retention: RetentionPolicy,
    /// BACKEND_ALLOWED_HOSTS and the backend proxy.
    pub backends: BackendPolicy,
    /// How long an authenticated session may be served from memory; zero is off.
    pub session_cache_ttl: Duration,
    /// The first admin (ADMIN_*), created at start-up unless the username exists.
    pub admin: Option<AdminAccount>,
    /// gRPC and grpc-web (HOST, PORT).
    pub listen: SocketAddr,
    /// Prometheus `/metrics`, when on.
    pub metrics: Option<SocketAddr>,
    /// The Envoy sidecar's Unix socket, when on.
    pub proxy_socket: Option<PathBuf>,
    /// Threads serving the decision socket beside it.
    pub decision_threads: usize,
    /// UI origins allowed by CORS (FRONTEND_URL), as response header values.
    pub cors_origins: Vec<HeaderValue>,
    /// WebAuthn's relying party: id and origins from FRONTEND_URL; `None` (passkeys off) when
    /// the first origin names no domain.
    pub relying_party: Option<std::sync::Arc<crate::domain::passkeys::RelyingParty>>,
    /// TCP peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Per-request deadline.
    pub request_timeout: Duration,
}

/// The password-hashing pool.
#[derive(Debug, Clone, Copy)]
pub struct Hashing {
    pub cost: u32,
    /// Hashing threads: one per core.
    pub workers: usize,
    /// Hashes allowed to wait for a thread.
    pub max_queue: usize,
    /// Longest expected wait before logins are shed.
    pub max_wait: Duration,
}

/// ADMIN_USERNAME, ADMIN_EMAIL and ADMIN_PASSWORD, checked.
#[derive(Debug, Clone)]
pub struct AdminAccount {
    pub username: String,
    pub email: String,
    pub password: SecretString,
}

impl Settings {
    /// Parses and checks every setting, refuses risky ones in production and warns about them
    /// otherwise. The one thing it may write comes last, after every check has passed: in
    /// development without configured keys, the generated key file in DATA_DIR.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let database = config.db_target()?;
        let listen_database = listen_database(config, &database)?;
        let listen = listen_addr(config)?;
        let metrics = metrics_addr(&config.metrics_addr)?;
        let proxy_socket = proxy_socket_path(config)?;
        let cors_origins = cors_origins(&config.frontend_url)?;
        let relying_party = crate::domain::passkeys::RelyingParty::from_origins(&config.frontend_url)?;
        if relying_party.is_none() {
            tracing::warn!("passkeys are off: the first FRONTEND_URL origin names no domain (WebAuthn needs one)");
        }
        let relying_party = relying_party.map(std::sync::Arc::new);
        let trusted_proxies = trusted_proxies(&config.trusted_proxies)?;
        let hashing = hashing(config)?;
        let retention = RetentionPolicy {
            audit: audit_retention(config.audit_retention_days.as_deref())?,
            purge_batch: config.purge_batch_rows.map(i64::from),
            purge_pause_factor: config.purge_pause_factor,
        };
        let admin = admin_account(config)?;
        let backends = backend_policy(config)?;
        let keys = Resolved::read(config)?;
        for risk in risky_settings(config, &keys, &trusted_proxies, metrics) {
            if risk.refuse && config.app_env == AppEnv::Production {
                bail!("refusing to start with APP_ENV=production: {}", risk.message);
            }
            tracing::warn!("UNSAFE SETTING: {}", risk.message);
        }
        Ok(Self {
            app_env: config.app_env,
            database,
            listen_database,
            pool: PoolOptions {
                max_size: config.db_pool_size as usize,
                wait_timeout: Duration::from_secs(5),
                prepared_statements: config.db_prepared_statements,
            },
            keys: keys.commit()?,
            sessions: SessionPolicy {
                token_lifetime: chrono::Duration::minutes(i64::from(config.jwt_expiration_minutes)),
                refresh_window: chrono::Duration::minutes(i64::from(config.refresh_window_minutes)),
                session_lifetime: chrono::Duration::hours(i64::from(config.session_lifetime_hours)),
            },
            security: SecurityPolicy {
                login_per_minute: config.rate_limit_login_per_minute,
                api_per_minute: config.rate_limit_api_per_minute,
                api_key_per_minute: config.rate_limit_api_key_per_minute,
                throttle_threshold: config.login_throttle_threshold,
                throttle_cooldown: chrono::Duration::seconds(i64::from(config.login_throttle_cooldown_seconds)),
                allow_registration: config.allow_registration,
                mfa_required_for_admins: config.mfa_required_for_admins,
            },
            hashing,
            retention,
            backends,
            session_cache_ttl: Duration::from_millis(config.session_cache_ttl_ms),
            admin,
            listen,
            metrics,
            proxy_socket,
            decision_threads: usize::from(config.proxy_decision_threads),
            cors_origins,
            relying_party,
            trusted_proxies,
            request_timeout: Duration::from_secs(config.request_timeout_seconds),
        })
    }
}

/// DATABASE_LISTEN_URL: a PostgreSQL URL, for a PostgreSQL DATABASE_URL only.
fn listen_database(config: &Config, database: &DbTarget) -> anyhow::Result<Option<DbTarget>> {
    let given = config.database_listen_url.as_ref().map(|u| u.as_str().trim()).filter(|u| !u.is_empty());
    match (database, given) {
        (DbTarget::Sqlite(_), None) => Ok(None),
        (DbTarget::Sqlite(_), Some(_)) => {
            bail!(
                "DATABASE_LISTEN_URL is for PostgreSQL replicas; DATABASE_URL is a SQLite file: unset DATABASE_LISTEN_URL"
            )
        }
        (DbTarget::Postgres(_), None) => Ok(Some(database.clone())),
        (DbTarget::Postgres(_), Some(url)) => match DbTarget::parse(url) {
            Ok(target @ DbTarget::Postgres(_)) => Ok(Some(target)),
            _ => bail!(
                "DATABASE_LISTEN_URL must be a postgres:// or postgresql:// URL of the same database as DATABASE_URL, reached directly (not through a transaction-pooling PgBouncer)"
            ),
        },
    }
}

/// BACKEND_ALLOWED_HOSTS, BACKEND_PROXY and its settings.
fn backend_policy(config: &Config) -> anyhow::Result<BackendPolicy> {
    let allowed_hosts =
        AllowedHosts::parse(&config.backend_allowed_hosts).map_err(|e| anyhow!("BACKEND_ALLOWED_HOSTS: {e}"))?;
    if !config.backend_proxy {
        if config.backend_proxy_cookie {
            bail!("BACKEND_PROXY_COOKIE=true needs BACKEND_PROXY=true");
        }
        return Ok(BackendPolicy { allowed_hosts, proxy: None });
    }
    if allowed_hosts.is_empty() {
        bail!(
            "BACKEND_PROXY=true needs BACKEND_ALLOWED_HOSTS: the hosts (and CIDRs) users' backends may be on. \
             Without it the proxy would connect wherever a user points it (e.g. 127.0.0.1 or a cloud metadata address)"
        );
    }
    let raw = config.backend_proxy_public_url.trim();
    let url = url::Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.query().is_none())
        .ok_or_else(|| {
            anyhow!("BACKEND_PROXY_PUBLIC_URL must be an absolute http(s) URL without a query; got {raw:?}")
        })?;
    let path_prefix = url.path().trim_end_matches('/').to_owned();
    if path_prefix.is_empty() {
        bail!(
            "BACKEND_PROXY_PUBLIC_URL needs a path of its own (e.g. http://localhost:8080/backend): the rest of the host is the API"
        );
    }
    Ok(BackendPolicy {
        allowed_hosts,
        proxy: Some(ProxyPolicy {
            public_url: raw.trim_end_matches('/').to_owned(),
            path_prefix,
            cookie: config.backend_proxy_cookie,
            per_minute: config.rate_limit_proxy_per_minute,
            origins: config
                .frontend_url
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        }),
    })
}

/// Longest AUDIT_RETENTION_DAYS: a century (and far from where `now - days` would overflow).
const MAX_AUDIT_RETENTION_DAYS: u32 = 36_500;

/// AUDIT_RETENTION_DAYS: `None` (keep forever) when unset, empty or 0.
fn audit_retention(value: Option<&str>) -> anyhow::Result<Option<chrono::Duration>> {
    let value = value.unwrap_or_default().trim();
    if value.is_empty() {
        return Ok(None);
    }
    match value.parse::<u32>() {
        Ok(0) => Ok(None),
        Ok(days) if days <= MAX_AUDIT_RETENTION_DAYS => Ok(Some(chrono::Duration::days(i64::from(days)))),
        _ => bail!(
            "AUDIT_RETENTION_DAYS must be a whole number of days from 1 to {MAX_AUDIT_RETENTION_DAYS}, or 0 (or unset) to keep audit entries forever; got {value:?}"
        ),
    }
}

fn listen_addr(config: &Config) -> anyhow::Result<SocketAddr> {
    let host = config.host.trim_matches(|c| c == '[' || c == ']');
    let ip = host.parse().with_context(|| {
        format!("HOST must be an IP address to listen on (e.g. 127.0.0.1 or 0.0.0.0), got {host:?}")
    })?;
    Ok(SocketAddr::new(ip, config.port))
}

/// The metrics listen address, or `None` when metrics are off.
fn metrics_addr(value: &str) -> anyhow::Result<Option<SocketAddr>> {
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("METRICS_ADDR must be host:port (e.g. 127.0.0.1:9464) or off, got {value:?}"))
}

/// Where the sidecar's Unix socket goes, or `None` when it is off.
fn proxy_socket_path(config: &Config) -> anyhow::Result<Option<PathBuf>> {
    let path = match config.proxy_socket.as_deref().map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case("off") => return Ok(None),
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => config.data_dir.join("proxy.sock"),
    };
    if path.file_name().is_some_and(|name| name == AUTHZ_SOCKET_NAME) {
        bail!("PROXY_SOCKET {} is named like the decision socket beside it: choose another name", path.display());
    }
    for socket in [&path, &authz_socket_beside(&path)] {
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH_BYTES {
            bail!(
                "PROXY_SOCKET {} makes {} {len} bytes long; a Unix socket path is at most \
                 {MAX_SOCKET_PATH_BYTES} (set a shorter PROXY_SOCKET or DATA_DIR, or PROXY_SOCKET=off)",
                path.display(),
                socket.display()
            );
        }
    }
    Ok(Some(path))
}

/// The file name of the backend proxy's decision socket, in PROXY_SOCKET's directory.
pub const AUTHZ_SOCKET_NAME: &str = "authz.sock";

/// Where the sidecar asks for the backend proxy's decisions (ext_authz), beside PROXY_SOCKET: a
/// socket of its own, served by a thread of its own (`server::authz`), so that a decision does
/// not wait for the API's workers.
pub fn authz_socket_beside(proxy_socket: &std::path::Path) -> PathBuf {
    proxy_socket.with_file_name(AUTHZ_SOCKET_NAME)
}

/// The UI origins for CORS, validated as `scheme://host[:port]`.
fn cors_origins(values: &[String]) -> anyhow::Result<Vec<HeaderValue>> {
    values
        .iter()
        .map(|s| s.trim().trim_end_matches('/'))
        .filter(|s| !s.is_empty())
        .map(|s| {
            let url = url::Url::parse(s).with_context(|| format!("FRONTEND_URL: {s:?} is not a URL"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                bail!("FRONTEND_URL: {s:?} must be an http(s) origin like http://localhost:5173");
            }
            let origin = url.origin().ascii_serialization();
            HeaderValue::from_str(&origin).with_context(|| format!("FRONTEND_URL: bad origin {origin:?}"))
        })
        .collect()
}

fn trusted_proxies(values: &[String]) -> anyhow::Result<Vec<IpNet>> {
    values
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .with_context(|| format!("TRUSTED_PROXIES: {s:?} is not an IP address or CIDR"))
        })
        .collect()
}

fn hashing(config: &Config) -> anyhow::Result<Hashing> {
    let cost = config.bcrypt_cost;
    if !(MIN_COST..=MAX_COST).contains(&cost) {
        bail!("BCRYPT_COST must be between {MIN_COST} and {MAX_COST}, got {cost}");
    }
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let max_queue = if config.bcrypt_max_queue == 0 { workers * 16 } else { config.bcrypt_max_queue };
    Ok(Hashing { cost, workers, max_queue, max_wait: Duration::from_millis(config.bcrypt_max_wait_ms) })
}

/// ADMIN_*: all three or none, each as the account rules want it (so a typo is found now, not
/// after the migrations).
fn admin_account(config: &Config) -> anyhow::Result<Option<AdminAccount>> {
    let Some(username) = config.admin_username.as_deref().filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    let (Some(email), Some(password)) = (config.admin_email.as_deref(), config.admin_password.as_ref()) else {
        bail!("ADMIN_USERNAME is set: ADMIN_EMAIL and ADMIN_PASSWORD are needed too");
    };
    let named = |setting: &str, e: crate::error::Error| match e {
        crate::error::Error::InvalidArgument { message, .. } => anyhow!("{setting} {message}"),
        other => anyhow!("{setting}: {other}"),
    };
    crate::domain::validate::username(username).map_err(|e| named("ADMIN_USERNAME", e))?;
    crate::domain::validate::email(email).map_err(|e| named("ADMIN_EMAIL", e))?;
    crate::crypto::password::check_policy("password", password.expose_secret())
        .map_err(|e| named("ADMIN_PASSWORD", e))?;
    Ok(Some(AdminAccount { username: username.to_owned(), email: email.to_owned(), password: password.clone() }))
}

/// A dangerous setting found at start-up.
struct RiskySetting {
    /// Refused in production (warned about in development).
    refuse: bool,
    message: String,
}

/// Settings that are legal but dangerous. Each is a warning at start-up; those marked `refuse`
/// stop a production start (they are never what an operator meant).
fn risky_settings(
    config: &Config,
    keys: &Resolved,
    trusted_proxies: &[IpNet],
    metrics: Option<SocketAddr>,
) -> Vec<RiskySetting> {
    let mut found = Vec::new();
    let mut add = |refuse: bool, message: String| found.push(RiskySetting { refuse, message });
    if let Some(jwt) = keys.jwt_current.as_ref().map(|k| k.expose_secret()) {
        if jwt.chars().all(|c| jwt.starts_with(c)) {
            add(true, "JWT_SECRET_KEY is one character repeated: anyone can guess it; generate one with `instachatico-auth generate-keys`".into());
        }
        if jwt == keys.encryption_current.expose_secret() {
            add(true, "JWT_SECRET_KEY equals ENCRYPTION_KEY: one leaked key would both forge tokens and decrypt backend tokens; use two keys".into());
        }
    }
    for net in trusted_proxies.iter().filter(|n| n.prefix_len() == 0) {
        add(
            true,
            format!(
                "TRUSTED_PROXIES contains {net}: every client could choose the address its rate limits and audit rows see; list only your proxies (Envoy)"
            ),
        );
    }
    if let Some(addr) = metrics.filter(|a| !a.ip().is_loopback()) {
        add(
            false,
            format!(
                "METRICS_ADDR {addr} is not a loopback address: /metrics has no authentication; keep it on a private network"
            ),
        );
    }
    if config.rate_limit_login_per_minute == 0 {
        add(false, "RATE_LIMIT_LOGIN_PER_MINUTE=0: login attempts per address are not limited".into());
    }
    if config.rate_limit_api_per_minute == 0 {
        add(false, "RATE_LIMIT_API_PER_MINUTE=0: authenticated requests per user are not limited".into());
    }
    if config.rate_limit_api_key_per_minute == 0 {
        add(false, "RATE_LIMIT_API_KEY_PER_MINUTE=0: requests per API key are not limited".into());
    }
    let postgres = matches!(config.db_target(), Ok(DbTarget::Postgres(_)));
    if postgres && !config.db_prepared_statements && config.database_listen_url.is_none() {
        add(
            false,
            "DB_PREPARED_STATEMENTS=false without DATABASE_LISTEN_URL: if DATABASE_URL is a PgBouncer in transaction mode, LISTEN hears nothing and revocations reach other replicas only when their cache expires; point DATABASE_LISTEN_URL at PostgreSQL directly".into(),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    const PASSWORD: &str = "hunter2-Pa55word";
    const FERNET: &str = "KSDEUmaWmBWPfjVWm8Pkru5oXPd2OaHkVt0xXkx-Qbg=";

    fn config(args: &[&str]) -> Config {
        parse(args).unwrap()
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let base = ["instachatico-auth", "--jwt-secret-key", "unit-test-jwt-secret-0123456789abcdef"];
        let base = base.iter().chain(&["--encryption-key", FERNET]).chain(args);
        Cli::try_parse_from(base).map(|cli| cli.config)
    }

    /// DATABASE_URL may carry a password: Config, Settings and DbTarget print it as `***`
    /// and keep what tells an operator where the data is.
    #[test]
    fn debug_output_hides_the_database_password() {
        let url = format!("postgres://app:{PASSWORD}@db.example:5433/auth?sslmode=require");
        let config = config(&["--database-url", &url]);
        let settings = Settings::from_config(&config).unwrap();
        let shown = "postgres://app:***@db.example:5433/auth?sslmode=require";
        for debug in [format!("{config:?}"), format!("{settings:?}"), format!("{:?}", settings.database)] {
            assert!(!debug.contains(PASSWORD), "password in {debug}");
            assert!(debug.contains(shown), "{shown} in {debug}");
        }
        assert!(!format!("{config:#?}").contains(FERNET), "keys stay wrapped too");
        assert!(!format!("{settings:#?}").contains(FERNET));
        let DbTarget::Postgres(real) = &settings.database else { panic!("postgres") };
        assert_eq!(real, &url, "only the printing is redacted");
    }

    /// LISTEN needs a session: its URL defaults to DATABASE_URL, must be PostgreSQL, means
    /// nothing on SQLite; DB_PREPARED_STATEMENTS reaches the pool.
    #[test]
    fn listen_url_and_prepared_statements() {
        let direct = "postgres://postgres@10.0.0.5:5432/auth";
        let bouncer = "postgres://postgres@127.0.0.1:6432/auth";
        let settings = Settings::from_config(&config(&["--database-url", direct])).unwrap();
        assert_eq!(settings.listen_database, Some(DbTarget::Postgres(direct.into())));
        assert!(settings.pool.prepared_statements, "on by default");
        let args = ["--database-url", bouncer, "--database-listen-url", direct, "--db-prepared-statements", "false"];
        let settings = Settings::from_config(&config(&args)).unwrap();
        assert_eq!(settings.listen_database, Some(DbTarget::Postgres(direct.into())));
        assert_eq!(settings.database, DbTarget::Postgres(bouncer.into()));
        assert!(!settings.pool.prepared_statements);

        let sqlite = Settings::from_config(&config(&["--database-url", "sqlite:///x.db"])).unwrap();
        assert_eq!(sqlite.listen_database, None);
        let error = Settings::from_config(&config(&["--database-url", "x.db", "--database-listen-url", direct]));
        assert!(error.unwrap_err().to_string().contains("DATABASE_LISTEN_URL is for PostgreSQL"));
        let error = Settings::from_config(&config(&["--database-url", direct, "--database-listen-url", "x.db"]));
        assert!(error.unwrap_err().to_string().contains("DATABASE_LISTEN_URL must be a postgres://"));
        assert!(Cli::try_parse_from(["instachatico-auth", "--db-prepared-statements", "maybe"]).is_err());

        let secret = format!("postgres://app:{PASSWORD}@10.0.0.5/auth");
        let settings = Settings::from_config(&config(&["--database-url", bouncer, "--database-listen-url", &secret]));
        assert!(!format!("{:?}", settings.unwrap()).contains(PASSWORD), "the listen URL prints redacted");
    }

    #[test]
    fn each_setting_is_parsed_into_its_type() {
        let settings = Settings::from_config(&config(&[
            "--host",
            "[::1]",
            "--port",
            "8080",
            "--metrics-addr",
            "off",
            "--proxy-socket",
            "off",
            "--frontend-url",
            "https://ui.example/, http://localhost:5173",
            "--trusted-proxies",
            "10.0.0.0/8, 192.168.1.7",
        ]))
        .unwrap();
        assert_eq!(settings.listen, "[::1]:8080".parse().unwrap());
        assert_eq!((settings.metrics, settings.proxy_socket), (None, None));
        assert_eq!(settings.cors_origins, ["https://ui.example", "http://localhost:5173"]);
        let nets: Vec<String> = settings.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.168.1.7/32"]);
    }

    /// Audit entries are kept forever unless AUDIT_RETENTION_DAYS says otherwise.
    #[test]
    fn audit_retention_defaults_to_forever() {
        let retention = |args: &[&str]| Settings::from_config(&config(args)).unwrap().retention.audit;
        assert_eq!(retention(&[]), None);
        assert_eq!(retention(&["--audit-retention-days", "0"]), None);
        assert_eq!(retention(&["--audit-retention-days", " 30 "]), Some(chrono::Duration::days(30)));
        assert_eq!(retention(&["--audit-retention-days", "36500"]), Some(chrono::Duration::days(36_500)));
    }

    /// A purge's pacing is the database's unless set; values out of range are refused by name.
    #[test]
    fn purge_pacing_is_bounded() {
        let retention = |args: &[&str]| Settings::from_config(&config(args)).unwrap().retention;
        let default = retention(&[]);
        assert_eq!((default.purge_batch, default.purge_pause_factor), (None, None));
        let set = retention(&["--purge-batch-rows", "250", "--purge-pause-factor", "0"]);
        assert_eq!((set.purge_batch, set.purge_pause_factor), (Some(250), Some(0)));
        for bad in
            ["--purge-batch-rows=0", "--purge-batch-rows=100001", "--purge-pause-factor=21", "--purge-pause-factor=-1"]
        {
            let error = parse(&[bad]).map(drop).unwrap_err().to_string();
            let name = bad.split('=').next().unwrap();
            assert!(error.contains(name), "{bad}: {error}");
        }
    }

    /// One decision thread unless asked; a count outside 1-64 is refused by name.
    #[test]
    fn decision_threads_are_bounded() {
        assert_eq!(Settings::from_config(&config(&[])).unwrap().decision_threads, 1);
        let four = config(&["--proxy-decision-threads", "4"]);
        assert_eq!(Settings::from_config(&four).unwrap().decision_threads, 4);
        for bad in ["0", "65", "-1", "two"] {
            let arg = format!("--proxy-decision-threads={bad}");
            let error = parse(&[arg.as_str()]).map(drop).unwrap_err().to_string();
            assert!(error.contains("--proxy-decision-threads"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_bad_setting_is_named() {
        let long = format!("/tmp/{}/proxy.sock", "d".repeat(120));
        let cases: [(&[&str], &str); 13] = [
            (
                &["--proxy-socket", "/tmp/x/authz.sock"],
                "PROXY_SOCKET /tmp/x/authz.sock is named like the decision socket",
            ),
            (&["--audit-retention-days=-3"], "AUDIT_RETENTION_DAYS must be a whole number of days"),
            (&["--audit-retention-days", "90d"], "AUDIT_RETENTION_DAYS must be a whole number of days"),
            (&["--audit-retention-days", "99999999"], "AUDIT_RETENTION_DAYS must be a whole number of days"),
            (&["--host", "localhost"], "HOST must be an IP address"),
            (&["--metrics-addr", "9464"], "METRICS_ADDR must be host:port"),
            (&["--frontend-url", "localhost:5173"], "FRONTEND_URL"),
            (&["--trusted-proxies", "10.0.0.300"], "TRUSTED_PROXIES: \"10.0.0.300\""),
            (&["--proxy-socket", long.as_str()], "PROXY_SOCKET"),
            (&["--bcrypt-cost", "4"], "BCRYPT_COST must be between 10 and 16"),
            (&["--admin-username", "root"], "ADMIN_EMAIL and ADMIN_PASSWORD are needed"),
            (
                &["--admin-username", "root", "--admin-email", "nope", "--admin-password", "Admin_password123!"],
                "ADMIN_EMAIL must be a valid email address",
            ),
            (
                &["--admin-username", "root", "--admin-email", "r@example.com", "--admin-password", "short"],
                "ADMIN_PASSWORD must be at least 8 characters",
            ),
        ];
        for (args, expected) in cases {
            let error = Settings::from_config(&config(args)).map(|_| ()).err().map(|e| format!("{e:#}"));
            assert!(error.as_deref().is_some_and(|e| e.contains(expected)), "{args:?}: {error:?}");
        }
    }

    /// EdDSA settings are checked before anything starts; a key never appears in the error.
    #[test]
    fn signing_key_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_string_lossy().into_owned();
        let secret_pem = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----";
        let cases: [(&[&str], &str); 3] = [
            (&["--app-env", "production", "--jwt-algorithm", "EdDSA"], "JWT_SIGNING_KEY not set"),
            (
                &["--jwt-algorithm", "EdDSA", "--jwt-signing-key", secret_pem],
                "JWT_SIGNING_KEY is not an Ed25519 private key",
            ),
            (&["--jwt-previous-public-keys", "c2VjcmV0LWtleS1tYXRlcmlhbA=="], "JWT_PREVIOUS_PUBLIC_KEYS"),
        ];
        for (args, expected) in cases {
            let args: Vec<&str> = ["--data-dir", data.as_str()].iter().chain(args).copied().collect();
            let error = Settings::from_config(&config(&args)).map(|_| ()).err().map(|e| format!("{e:#}"));
            assert!(error.as_deref().is_some_and(|e| e.contains(expected)), "{args:?}: {error:?}");
            assert!(!error.unwrap().contains("c2VjcmV0LWtleS1tYXRlcmlhbA"), "key material echoed");
        }
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing written");

        // Development without a key: one is generated into DATA_DIR, privately, and reused.
        let args = ["--data-dir", data.as_str(), "--jwt-algorithm", "eddsa"];
        let first = Settings::from_config(&config(&args)).unwrap();
        let path = dir.path().join(crate::config::keys::DEV_SIGNING_KEY_FILE);
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{first:?}").contains(pem.lines().nth(1).unwrap()), "Debug hides the key");
        let second = Settings::from_config(&config(&args)).unwrap();
        assert_eq!(first.keys.jwt.published(), second.keys.jwt.published());
        assert_eq!(first.keys.jwt.published().len(), 1);
    }
}
