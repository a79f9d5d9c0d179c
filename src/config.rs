//! Configuration as the operator wrote it: flags, environment and `.env` (names as the seed's).
//! [`Settings`] is what it means, every value checked before start-up does anything.
//! Secrets stay wrapped; the database URL prints without its password.

mod keys;
mod settings;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use secrecy::SecretString;

pub use self::keys::{DEV_KEYS_FILE, Keys};
pub use self::settings::{AUTHZ_SOCKET_NAME, AdminAccount, Hashing, Settings, authz_socket_beside};
use crate::db::DbTarget;

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

fn database_url(s: &str) -> Result<DatabaseUrl, std::convert::Infallible> {
    Ok(DatabaseUrl(s.to_owned()))
}

/// DATABASE_URL as given. It may carry a password, so `Debug` shows it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&crate::db::redact_url(&self.0)).finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppEnv {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting. Flags override the environment, which overrides `.env`.
/// `JWT_ALGORITHM`: which algorithm signs new access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `JWT_SECRET_KEY` (the default, the seed's tokens).
    #[value(name = "HS256")]
    Hs256,
    /// Ed25519 with `JWT_SIGNING_KEY`; the public keys are published (JWKS).
    #[value(name = "EdDSA")]
    EdDsa,
}

impl From<JwtAlgorithm> for crate::crypto::jwt::SigningAlgorithm {
    fn from(value: JwtAlgorithm) -> Self {
        match value {
            JwtAlgorithm::Hs256 => Self::Hs256,
            JwtAlgorithm::EdDsa => Self::EdDsa,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// postgres://user:pass@host/db, or a SQLite file (sqlite:///./data/auth.db or a path).
    /// Default: a SQLite file in DATA_DIR.
    #[arg(long, env = "DATABASE_URL", value_parser = database_url, global = true, hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,

    /// PostgreSQL for this replica's LISTEN (cross-replica cache invalidation), which needs a
    /// session of its own: when DATABASE_URL goes through a PgBouncer in transaction mode,
    /// point this at PostgreSQL directly. Default: DATABASE_URL.
    #[arg(long, env = "DATABASE_LISTEN_URL", value_parser = database_url, global = true, hide_env_values = true)]
    pub database_listen_url: Option<DatabaseUrl>,

    /// PostgreSQL: keep named prepared statements per connection (parsed and planned once).
    /// Set false behind a PgBouncer in transaction (or statement) pooling mode: every
    /// statement then goes out unnamed, parsed with its execution in one round trip.
    #[arg(long, env = "DB_PREPARED_STATEMENTS", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub db_prepared_statements: bool,

    /// Directory for the default SQLite database and generated development keys.
    #[arg(long, env = "DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,

    /// Address to listen on (gRPC, grpc-web).
    #[arg(long, env = "HOST", default_value = "127.0.0.1", global = true)]
    pub host: String,

    #[arg(long, env = "PORT", default_value_t = 50051, global = true)]
    pub port: u16,

    /// `development` generates missing keys; `production` refuses to start without them.
    #[arg(long, env = "APP_ENV", value_enum, default_value = "development", global = true)]
    pub app_env: AppEnv,

    /// HS256 signing secret, at least 32 bytes. With JWT_ALGORITHM=EdDSA it is optional and, when
    /// set, still verifies HS256 tokens (mixed mode, for a migration).
    #[arg(long, env = "JWT_SECRET_KEY", value_parser = secret, hide_env_values = true, global = true)]
    pub jwt_secret_key: Option<SecretString>,

    /// File holding JWT_SECRET_KEY (e.g. a mounted secret).
    #[arg(long, env = "JWT_SECRET_KEY_FILE", global = true)]
    pub jwt_secret_key_file: Option<PathBuf>,

    /// Comma-separated earlier JWT secrets that still verify (key rotation).
    #[arg(long, env = "JWT_PREVIOUS_SECRET_KEYS", value_parser = secret, value_delimiter = ',', hide_env_values = true, global = true)]
    pub jwt_previous_secret_keys: Vec<SecretString>,

    /// Algorithm of new access tokens: HS256 (shared secret, the default) or EdDSA (Ed25519,
    /// verifiable by anyone with the published public key).
    #[arg(long, env = "JWT_ALGORITHM", value_enum, ignore_case = true, default_value = "HS256", global = true)]
    pub jwt_algorithm: JwtAlgorithm,

    /// Ed25519 private key in PKCS#8 PEM that signs tokens when JWT_ALGORITHM=EdDSA.
    #[arg(long, env = "JWT_SIGNING_KEY", value_parser = secret, hide_env_values = true, allow_hyphen_values = true, global = true)]
    pub jwt_signing_key: Option<SecretString>,

    /// File holding JWT_SIGNING_KEY.
    #[arg(long, env = "JWT_SIGNING_KEY_FILE", global = true)]
    pub jwt_signing_key_file: Option<PathBuf>,

    /// Earlier Ed25519 public keys (SPKI PEM, one or more blocks) that still verify (rotation).
    #[arg(long, env = "JWT_PREVIOUS_PUBLIC_KEYS", allow_hyphen_values = true, global = true)]
    pub jwt_previous_public_keys: Option<String>,

    /// File holding JWT_PREVIOUS_PUBLIC_KEYS.
    #[arg(long, env = "JWT_PREVIOUS_PUBLIC_KEYS_FILE", global = true)]
    pub jwt_previous_public_keys_file: Option<PathBuf>,

    /// The Python service's JWT_SECRET_KEY, during a migration (import-seed): its access tokens
    /// are accepted until they expire, each bound on first use to a session here. Remove it an
    /// hour after the switch.
    #[arg(long, env = "LEGACY_JWT_SECRET_KEY", value_parser = secret, hide_env_values = true, global = true)]
    pub legacy_jwt_secret_key: Option<SecretString>,

    /// File holding LEGACY_JWT_SECRET_KEY.
    #[arg(long, env = "LEGACY_JWT_SECRET_KEY_FILE", global = true)]
    pub legacy_jwt_secret_key_file: Option<PathBuf>,

    /// Fernet key for backend bearer tokens (32 bytes, url-safe base64).
    #[arg(long, env = "ENCRYPTION_KEY", value_parser = secret, hide_env_values = true, global = true)]
    pub encryption_key: Option<SecretString>,

    /// File holding ENCRYPTION_KEY.
    #[arg(long, env = "ENCRYPTION_KEY_FILE", global = true)]
    pub encryption_key_file: Option<PathBuf>,

    /// Comma-separated earlier Fernet keys that still decrypt (key rotation).
    #[arg(long, env = "ENCRYPTION_PREVIOUS_KEYS", value_parser = secret, value_delimiter = ',', hide_env_values = true, global = true)]
    pub encryption_previous_keys: Vec<SecretString>,

    /// Lifetime of an access token.
    #[arg(long, env = "JWT_EXPIRATION_MINUTES", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1440), global = true)]
    pub jwt_expiration_minutes: u32,

    /// How long after expiry a token can still be refreshed.
    #[arg(long, env = "REFRESH_WINDOW_MINUTES", default_value_t = 1440, value_parser = clap::value_parser!(u32).range(0..=43200), global = true)]
    pub refresh_window_minutes: u32,

    /// Absolute lifetime of a session from login; refreshes never extend it.
    #[arg(long, env = "SESSION_LIFETIME_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u32).range(1..=8760), global = true)]
    pub session_lifetime_hours: u32,

    /// Comma-separated origins of the UI allowed by CORS.
    #[arg(long, env = "FRONTEND_URL", default_value = "http://localhost:5173", value_delimiter = ',', global = true)]
    pub frontend_url: Vec<String>,

    /// Comma-separated TCP peers (IPs or CIDRs) whose X-Forwarded-For is believed, for a proxy
    /// that cannot use PROXY_SOCKET. Default: none: any local process can connect to the TCP
    /// port, so none of them may choose the client address that rate limits and audit rows see.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_delimiter = ',', global = true)]
    pub trusted_proxies: Vec<String>,

    /// Unix socket for the Envoy sidecar (mode 0600): only the proxy connects there, so the
    /// last X-Forwarded-For entry of its requests is believed. The backend proxy's decisions
    /// (ext_authz) are served on `authz.sock` beside it. Default: DATA_DIR/proxy.sock; `off`
    /// disables both.
    #[arg(long, env = "PROXY_SOCKET", global = true)]
    pub proxy_socket: Option<String>,

    /// Backend proxy mode: Login hands out a proxy credential and BACKEND_PROXY_PUBLIC_URL
    /// instead of the backend's token and URL, and Envoy forwards requests under that URL to
    /// the user's backend with the real token (asking this service through ext_authz).
    #[arg(long, env = "BACKEND_PROXY", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub backend_proxy: bool,

    /// The proxy's public base URL, handed out as `backend_config.api_base_url`; its path is the
    /// prefix Envoy routes to the proxy.
    #[arg(long, env = "BACKEND_PROXY_PUBLIC_URL", default_value = "http://localhost:8080/backend", global = true)]
    pub backend_proxy_public_url: String,

    /// Comma-separated backends users may point at: host patterns with an optional port
    /// (`api.example.com`, `*.example.com:8443`, `host:*`, `10.0.0.5:9000`) and CIDRs
    /// (`10.0.0.0/8`). Required with BACKEND_PROXY; when set, backends outside it are refused.
    #[arg(long, env = "BACKEND_ALLOWED_HOSTS", default_value = "", value_delimiter = ',', global = true)]
    pub backend_allowed_hosts: Vec<String>,

    /// Login also sets the proxy credential as an HttpOnly, Secure, SameSite=Strict cookie, for
    /// UIs that want no credential in JavaScript at all.
    #[arg(long, env = "BACKEND_PROXY_COOKIE", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub backend_proxy_cookie: bool,

    /// Threads answering the backend proxy's decisions (ext_authz), each with a runtime of its
    /// own accepting on the decision socket. One keeps a decision on the thread that was woken
    /// (two cores shared with Envoy); more serve a larger host, where Envoy's workers ask at once.
    #[arg(long, env = "PROXY_DECISION_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64), global = true)]
    pub proxy_decision_threads: u16,

    /// Proxied requests per minute per user (per replica); 0 disables.
    #[arg(long, env = "RATE_LIMIT_PROXY_PER_MINUTE", default_value_t = 600, global = true)]
    pub rate_limit_proxy_per_minute: u32,

    /// First admin, created at start-up if the username does not exist yet.
    #[arg(long, env = "ADMIN_USERNAME", global = true)]
    pub admin_username: Option<String>,

    #[arg(long, env = "ADMIN_EMAIL", global = true)]
    pub admin_email: Option<String>,

    #[arg(long, env = "ADMIN_PASSWORD", value_parser = secret, hide_env_values = true, global = true)]
    pub admin_password: Option<SecretString>,

    /// Where Prometheus scrapes `/metrics` (a separate port; no auth). `off` disables it.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9464", global = true)]
    pub metrics_addr: String,

    /// Login attempts per minute per client address (all replicas together); 0 disables.
    #[arg(long, env = "RATE_LIMIT_LOGIN_PER_MINUTE", default_value_t = 5, global = true)]
    pub rate_limit_login_per_minute: u32,

    /// Authenticated requests per minute per user (per replica); 0 disables.
    #[arg(long, env = "RATE_LIMIT_API_PER_MINUTE", default_value_t = 100, global = true)]
    pub rate_limit_api_per_minute: u32,

    /// Requests per minute per API key (per replica); 0 disables.
    #[arg(long, env = "RATE_LIMIT_API_KEY_PER_MINUTE", default_value_t = 6000, global = true)]
    pub rate_limit_api_key_per_minute: u32,

    /// Consecutive failed logins of one account from one address before a cool-down.
    #[arg(long, env = "LOGIN_THROTTLE_THRESHOLD", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub login_throttle_threshold: u32,

    /// Length of that cool-down, in seconds. Always finite: throttling never locks anyone out for good.
    #[arg(long, env = "LOGIN_THROTTLE_COOLDOWN_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u32).range(1..=86400), global = true)]
    pub login_throttle_cooldown_seconds: u32,

    /// Admins without a second factor must enrol one before they get a session: Login answers
    /// them `{"mfa_enrollment_required": true, "mfa_token"}`, which only the TOTP enrolment
    /// routes accept.
    #[arg(long, env = "MFA_REQUIRED_FOR_ADMINS", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub mfa_required_for_admins: bool,

    /// Lets anyone create an account with Register (off: admins create users).
    #[arg(long, env = "ALLOW_REGISTRATION", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub allow_registration: bool,

    /// bcrypt cost (never below 10).
    #[arg(long, env = "BCRYPT_COST", default_value_t = 12, global = true)]
    pub bcrypt_cost: u32,

    /// Password hashes allowed to wait for a core; beyond it logins are shed with 503 and
    /// Retry-After. 0: 16 per core.
    #[arg(long, env = "BCRYPT_MAX_QUEUE", default_value_t = 0, global = true)]
    pub bcrypt_max_queue: usize,

    /// How long an authenticated session may be served from memory (milliseconds; 0 off).
    /// Revocations reach every replica at once regardless (PostgreSQL NOTIFY); this bounds
    /// staleness when the database is changed behind the service's back (e.g. SQLite + CLI).
    #[arg(long, env = "SESSION_CACHE_TTL_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=60000), global = true)]
    pub session_cache_ttl_ms: u64,

    /// Longest expected wait for a password hash before logins are shed (milliseconds).
    #[arg(long, env = "BCRYPT_MAX_WAIT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=60000), global = true)]
    pub bcrypt_max_wait_ms: u64,

    /// Days audit entries are kept; older ones are dropped by the periodic housekeeping. Unset or
    /// 0 keeps them forever.
    #[arg(long, env = "AUDIT_RETENTION_DAYS", global = true)]
    pub audit_retention_days: Option<String>,

    /// Rows each statement of a housekeeping purge deletes (default: 200 on PostgreSQL, 500 on
    /// SQLite, where a batch holds the one write lock).
    #[arg(long, env = "PURGE_BATCH_ROWS", value_parser = clap::value_parser!(u32).range(1..=100_000), global = true)]
    pub purge_batch_rows: Option<u32>,

    /// A purge's pause after each batch, as a multiple of what the batch took (default: 2 on
    /// PostgreSQL, 1 on SQLite); 0 purges at full speed. Bounds the purge's share of a core.
    #[arg(long, env = "PURGE_PAUSE_FACTOR", value_parser = clap::value_parser!(u32).range(0..=20), global = true)]
    pub purge_pause_factor: Option<u32>,

    /// Database connections per process.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=512), global = true)]
    pub db_pool_size: u32,

    /// Per-request deadline, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = 30, global = true)]
    pub request_timeout_seconds: u64,

    /// tracing filter, e.g. `info` or `instachatico_auth=debug,info`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,

    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
}

impl Config {
    /// The database, from DATABASE_URL or the default SQLite file in DATA_DIR.
    pub fn db_target(&self) -> anyhow::Result<DbTarget> {
        match &self.database_url {
            Some(url) if !url.as_str().trim().is_empty() => DbTarget::parse(url.as_str()).map_err(anyhow::Error::msg),
            _ => Ok(DbTarget::Sqlite(self.data_dir.join("instachatico_auth.db"))),
        }
    }
}

/// Creates `dir` and any missing parents with mode 0700 (existing directories keep theirs).
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
