//! Typed configuration from flags, environment and `.env` (names as the seed's). Invalid
//! values stop start-up with a message that says what to do. Secrets stay wrapped; the
//! database URL prints without its password.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::crypto::secrets::TokenCipher;
use crate::db::{DbTarget, PoolOptions};
use crate::domain::{SecurityPolicy, SessionPolicy};

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
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// postgres://user:pass@host/db, or a SQLite file (sqlite:///./data/auth.db or a path).
    /// Default: a SQLite file in DATA_DIR.
    #[arg(long, env = "DATABASE_URL", value_parser = database_url, global = true, hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,

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

    /// HS256 signing secret, at least 32 bytes.
    #[arg(long, env = "JWT_SECRET_KEY", value_parser = secret, hide_env_values = true, global = true)]
    pub jwt_secret_key: Option<SecretString>,

    /// File holding JWT_SECRET_KEY (e.g. a mounted secret).
    #[arg(long, env = "JWT_SECRET_KEY_FILE", global = true)]
    pub jwt_secret_key_file: Option<PathBuf>,

    /// Comma-separated earlier JWT secrets that still verify (key rotation).
    #[arg(long, env = "JWT_PREVIOUS_SECRET_KEYS", value_parser = secret, value_delimiter = ',', hide_env_values = true, global = true)]
    pub jwt_previous_secret_keys: Vec<SecretString>,

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
    /// last X-Forwarded-For entry of its requests is believed. Default: DATA_DIR/proxy.sock;
    /// `off` disables it.
    #[arg(long, env = "PROXY_SOCKET", global = true)]
    pub proxy_socket: Option<String>,

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

    /// Consecutive failed logins of one account from one address before a cool-down.
    #[arg(long, env = "LOGIN_THROTTLE_THRESHOLD", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub login_throttle_threshold: u32,

    /// Length of that cool-down, in seconds. Always finite: throttling never locks anyone out for good.
    #[arg(long, env = "LOGIN_THROTTLE_COOLDOWN_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u32).range(1..=86400), global = true)]
    pub login_throttle_cooldown_seconds: u32,

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

/// The keys in force, resolved from settings, files or the development key file.
pub struct Keys {
    pub jwt_current: SecretString,
    pub jwt_previous: Vec<SecretString>,
    pub encryption_current: SecretString,
    pub encryption_previous: Vec<SecretString>,
}

/// A dangerous setting found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskySetting {
    /// Refused in production (warned about in development).
    pub refuse: bool,
    pub message: String,
}

/// Name of the development key file inside DATA_DIR.
pub const DEV_KEYS_FILE: &str = "dev-keys.env";

impl Config {
    pub fn db_target(&self) -> anyhow::Result<DbTarget> {
        match &self.database_url {
            Some(url) if !url.as_str().trim().is_empty() => DbTarget::parse(url.as_str()).map_err(anyhow::Error::msg),
            _ => Ok(DbTarget::Sqlite(self.data_dir.join("instachatico_auth.db"))),
        }
    }

    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        let host = self.host.trim_matches(|c| c == '[' || c == ']');
        let ip = host.parse().with_context(|| {
            format!("HOST must be an IP address to listen on (e.g. 127.0.0.1 or 0.0.0.0), got {host:?}")
        })?;
        Ok(SocketAddr::new(ip, self.port))
    }

    /// The metrics listen address, or `None` when metrics are off.
    pub fn metrics_listen_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        let value = self.metrics_addr.trim();
        if value.is_empty() || value.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        value
            .parse()
            .map(Some)
            .with_context(|| format!("METRICS_ADDR must be host:port (e.g. 127.0.0.1:9464) or off, got {value:?}"))
    }

    /// Where the sidecar's Unix socket goes, or `None` when it is off.
    pub fn proxy_socket_path(&self) -> Option<PathBuf> {
        match self.proxy_socket.as_deref().map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("off") => None,
            Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
            _ => Some(self.data_dir.join("proxy.sock")),
        }
    }

    pub fn pool_options(&self) -> PoolOptions {
        PoolOptions { max_size: self.db_pool_size as usize, wait_timeout: Duration::from_secs(5) }
    }

    pub fn session_policy(&self) -> SessionPolicy {
        SessionPolicy {
            token_lifetime: chrono::Duration::minutes(i64::from(self.jwt_expiration_minutes)),
            refresh_window: chrono::Duration::minutes(i64::from(self.refresh_window_minutes)),
            session_lifetime: chrono::Duration::hours(i64::from(self.session_lifetime_hours)),
        }
    }

    pub fn security_policy(&self) -> SecurityPolicy {
        SecurityPolicy {
            login_per_minute: self.rate_limit_login_per_minute,
            api_per_minute: self.rate_limit_api_per_minute,
            throttle_threshold: self.login_throttle_threshold,
            throttle_cooldown: chrono::Duration::seconds(i64::from(self.login_throttle_cooldown_seconds)),
            allow_registration: self.allow_registration,
        }
    }

    pub fn trusted_proxy_nets(&self) -> anyhow::Result<Vec<IpNet>> {
        self.trusted_proxies
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

    /// The UI origins for CORS, validated as `scheme://host[:port]`.
    pub fn cors_origins(&self) -> anyhow::Result<Vec<String>> {
        self.frontend_url
            .iter()
            .map(|s| s.trim().trim_end_matches('/'))
            .filter(|s| !s.is_empty())
            .map(|s| {
                let url = url::Url::parse(s).with_context(|| format!("FRONTEND_URL: {s:?} is not a URL"))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    bail!("FRONTEND_URL: {s:?} must be an http(s) origin like http://localhost:5173");
                }
                Ok(url.origin().ascii_serialization())
            })
            .collect()
    }

    /// Settings that are legal but dangerous. Each is a warning at start-up; those marked
    /// `refuse` stop a production start (they are never what an operator meant).
    pub fn risky_settings(&self, keys: &Keys) -> Vec<RiskySetting> {
        let mut found = Vec::new();
        let mut add = |refuse: bool, message: String| found.push(RiskySetting { refuse, message });
        let jwt = keys.jwt_current.expose_secret();
        if jwt.chars().all(|c| jwt.starts_with(c)) {
            add(true, "JWT_SECRET_KEY is one character repeated: anyone can guess it; generate one with `instachatico-auth generate-keys`".into());
        }
        if jwt == keys.encryption_current.expose_secret() {
            add(true, "JWT_SECRET_KEY equals ENCRYPTION_KEY: one leaked key would both forge tokens and decrypt backend tokens; use two keys".into());
        }
        for net in self.trusted_proxy_nets().unwrap_or_default().iter().filter(|n| n.prefix_len() == 0) {
            add(
                true,
                format!(
                    "TRUSTED_PROXIES contains {net}: every client could choose the address its rate limits and audit rows see; list only your proxies (Envoy)"
                ),
            );
        }
        if let Ok(Some(addr)) = self.metrics_listen_addr()
            && !addr.ip().is_loopback()
        {
            add(
                false,
                format!(
                    "METRICS_ADDR {addr} is not a loopback address: /metrics has no authentication; keep it on a private network"
                ),
            );
        }
        if self.rate_limit_login_per_minute == 0 {
            add(false, "RATE_LIMIT_LOGIN_PER_MINUTE=0: login attempts per address are not limited".into());
        }
        if self.rate_limit_api_per_minute == 0 {
            add(false, "RATE_LIMIT_API_PER_MINUTE=0: authenticated requests per user are not limited".into());
        }
        found
    }

    /// Resolves the keys: settings, then `*_FILE`, then (development only) the generated key
    /// file in DATA_DIR. In production a missing key is an error that says how to make one.
    pub fn resolve_keys(&self) -> anyhow::Result<Keys> {
        let jwt = from_setting_or_file(&self.jwt_secret_key, self.jwt_secret_key_file.as_deref(), "JWT_SECRET_KEY")?;
        let enc = from_setting_or_file(&self.encryption_key, self.encryption_key_file.as_deref(), "ENCRYPTION_KEY")?;
        let (jwt, enc) = match (jwt, enc) {
            (Some(j), Some(e)) => (j, e),
            (j, e) => {
                if self.app_env == AppEnv::Production {
                    let missing: Vec<&str> = [("JWT_SECRET_KEY", j.is_none()), ("ENCRYPTION_KEY", e.is_none())]
                        .into_iter()
                        .filter_map(|(name, missing)| missing.then_some(name))
                        .collect();
                    bail!(
                        "{} not set and APP_ENV=production. Generate keys with `instachatico-auth generate-keys` \
                         and set them in the environment (or *_FILE). Keep ENCRYPTION_KEY safe: stored backend \
                         tokens cannot be read without it.",
                        missing.join(" and ")
                    );
                }
                let dev = dev_keys(&self.data_dir)?;
                (j.unwrap_or(dev.0), e.unwrap_or(dev.1))
            }
        };
        // An empty list setting (KEY="" or a trailing comma) means no key, not an empty key.
        let present = |keys: &[SecretString]| -> Vec<SecretString> {
            keys.iter()
                .map(|k| k.expose_secret().trim())
                .filter(|k| !k.is_empty())
                .map(|k| SecretString::from(k.to_owned()))
                .collect()
        };
        Ok(Keys {
            jwt_current: jwt,
            jwt_previous: present(&self.jwt_previous_secret_keys),
            encryption_current: enc,
            encryption_previous: present(&self.encryption_previous_keys),
        })
    }
}

fn from_setting_or_file(
    value: &Option<SecretString>,
    file: Option<&Path>,
    name: &str,
) -> anyhow::Result<Option<SecretString>> {
    if let Some(v) = value.as_ref().filter(|v| !v.expose_secret().trim().is_empty()) {
        return Ok(Some(SecretString::from(v.expose_secret().trim().to_owned())));
    }
    match file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {name}_FILE {}", path.display()))?;
            Ok(Some(SecretString::from(text.trim().to_owned())))
        }
        None => Ok(None),
    }
}

/// Development keys, generated once into DATA_DIR (mode 0600) and reused on every start.
fn dev_keys(data_dir: &Path) -> anyhow::Result<(SecretString, SecretString)> {
    let path = data_dir.join(DEV_KEYS_FILE);
    if !path.exists() {
        create_private_dir(data_dir)?;
        let text = format!(
            "# Development keys generated by instachatico-auth. Never use them in production.\n\
             JWT_SECRET_KEY={}\nENCRYPTION_KEY={}\n",
            crate::crypto::random_token(48),
            TokenCipher::generate_key()
        );
        write_private(&path, &text)?;
        tracing::warn!(
            path = %path.display(),
            "!!! No JWT_SECRET_KEY/ENCRYPTION_KEY configured: generated DEVELOPMENT keys. \
             Set real keys (instachatico-auth generate-keys) and APP_ENV=production for any real deployment. !!!"
        );
    } else {
        tracing::warn!(path = %path.display(), "using DEVELOPMENT keys from the data directory; not for production");
    }
    let mut jwt = None;
    let mut enc = None;
    for item in dotenvy::from_path_iter(&path).with_context(|| format!("cannot read {}", path.display()))? {
        let (key, value) = item.with_context(|| format!("malformed {}", path.display()))?;
        match key.as_str() {
            "JWT_SECRET_KEY" => jwt = Some(SecretString::from(value)),
            "ENCRYPTION_KEY" => enc = Some(SecretString::from(value)),
            _ => {}
        }
    }
    match (jwt, enc) {
        (Some(j), Some(e)) => Ok((j, e)),
        _ => bail!("{} lacks JWT_SECRET_KEY or ENCRYPTION_KEY; delete it to regenerate", path.display()),
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::Cli;

    /// DATABASE_URL may carry a password: Config and DbTarget print it as `***` and keep what
    /// tells an operator where the data is.
    #[test]
    fn debug_output_hides_the_database_password() {
        let url = "postgres://app:hunter2-Pa55word@db.example:5433/auth?sslmode=require";
        let config = Cli::try_parse_from(["instachatico-auth", "--database-url", url]).unwrap().config;
        let target = config.db_target().unwrap();
        let shown = "postgres://app:***@db.example:5433/auth?sslmode=require";
        for debug in [format!("{config:?}"), format!("{target:?}")] {
            assert!(!debug.contains("hunter2"), "password in {debug}");
            assert!(debug.contains(shown), "{shown} in {debug}");
        }
        assert_eq!(target, crate::db::DbTarget::Postgres(url.to_owned()), "only the printing is redacted");
    }
}
