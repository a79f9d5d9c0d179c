//! The rules of the service: sign-in, sessions, users, audit. No transport and no SQL here:
//! transports call [`App`], and [`App`] calls the repositories in `db::models`, speaking the
//! vocabulary of `crate::model` (rows never leave `db`). As in kanidm, time is a parameter: every
//! rule takes `now`, so tests can move the clock.

pub mod allowed_hosts;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod import;
pub mod keys;
mod legacy;
mod limits;
pub mod maintenance;
pub mod mfa;
pub mod paging;
pub mod passkeys;
pub mod proxy;
pub mod sessions;
pub mod types;
mod users;
pub mod validate;
mod writes;

use std::sync::Arc;

use chrono::Duration;

pub use self::users::BootstrapOutcome;
use crate::crypto::jwt::JwtKeys;
use crate::crypto::keyed::NameHasher;
use crate::crypto::password::PasswordHasher;
use crate::crypto::secrets::TokenCipher;
use crate::db::DbPool;

/// Session timing.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// Lifetime of one access token (JWT_EXPIRATION_MINUTES).
    pub token_lifetime: Duration,
    /// How long after expiry a token may still be refreshed.
    pub refresh_window: Duration,
    /// Absolute end of a session, counted from login; refresh never extends it.
    pub session_lifetime: Duration,
}

/// Abuse limits (SPEC 5).
#[derive(Debug, Clone, Copy)]
pub struct SecurityPolicy {
    /// Login attempts per minute per client address; 0 disables.
    pub login_per_minute: u32,
    /// Authenticated requests per minute per user; 0 disables.
    pub api_per_minute: u32,
    /// Requests per minute per API key (per replica); 0 disables.
    pub api_key_per_minute: u32,
    /// Consecutive failures of one account from one address before a cool-down.
    pub throttle_threshold: u32,
    pub throttle_cooldown: Duration,
    pub allow_registration: bool,
    /// Admins without a second factor enrol one before they get a session.
    pub mfa_required_for_admins: bool,
}

/// What housekeeping keeps, and how it paces deleting the rest.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetentionPolicy {
    /// How long audit entries are kept (AUDIT_RETENTION_DAYS); `None` keeps them forever.
    pub audit: Option<Duration>,
    /// PURGE_BATCH_ROWS; `None`: the database's default ([`maintenance::Pacing`]).
    pub purge_batch: Option<i64>,
    /// PURGE_PAUSE_FACTOR; `None`: the database's default.
    pub purge_pause_factor: Option<u32>,
}

/// Which backends users may store, and the backend proxy when it is on.
#[derive(Debug, Clone, Default)]
pub struct BackendPolicy {
    /// BACKEND_ALLOWED_HOSTS (empty: any http(s) URL, unless the proxy is on).
    pub allowed_hosts: allowed_hosts::AllowedHosts,
    pub proxy: Option<proxy::ProxyPolicy>,
}

/// The keys and hashing the rules use.
pub struct Crypto {
    pub hasher: PasswordHasher,
    pub jwt: JwtKeys,
    pub cipher: TokenCipher,
    pub names: NameHasher,
    /// WebAuthn's relying party (from FRONTEND_URL); `None`: passkeys are off.
    pub relying_party: Option<Arc<passkeys::RelyingParty>>,
}

/// Everything a request needs; shared by all transports. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub(crate) inner: Arc<AppInner>,
}

pub struct AppInner {
    pub db: DbPool,
    pub hasher: PasswordHasher,
    pub jwt: JwtKeys,
    pub cipher: TokenCipher,
    pub sessions: SessionPolicy,
    pub security: SecurityPolicy,
    pub retention: RetentionPolicy,
    pub(crate) api_limiter: limits::ApiLimiter,
    pub(crate) key_limiter: limits::ApiLimiter<String>,
    pub cache: cache::PrincipalCache,
    pub key_cache: cache::KeyCache,
    pub(crate) names: NameHasher,
    pub(crate) relying_party: Option<Arc<passkeys::RelyingParty>>,
    pub(crate) allowed_hosts: allowed_hosts::AllowedHosts,
    pub(crate) proxy: Option<proxy::ProxyState>,
    /// Set by the start-up key check when stored backend tokens do not decrypt.
    pub(crate) keys_unreadable: std::sync::atomic::AtomicBool,
    /// Housekeeping rounds that ended (see `App::housekeeping_rounds`).
    pub(crate) housekeeping_rounds: std::sync::atomic::AtomicU64,
}

impl App {
    pub fn new(
        db: DbPool,
        crypto: Crypto,
        sessions: SessionPolicy,
        security: SecurityPolicy,
        retention: RetentionPolicy,
        caches: (cache::PrincipalCache, cache::KeyCache),
        backends: BackendPolicy,
    ) -> Self {
        let Crypto { hasher, jwt, cipher, names, relying_party } = crypto;
        let (cache, key_cache) = caches;
        let api_limiter = limits::ApiLimiter::new(security.api_per_minute);
        let key_limiter = limits::ApiLimiter::new(security.api_key_per_minute);
        Self {
            inner: Arc::new(AppInner {
                db,
                hasher,
                jwt,
                cipher,
                sessions,
                security,
                retention,
                api_limiter,
                key_limiter,
                cache,
                key_cache,
                names,
                relying_party,
                allowed_hosts: backends.allowed_hosts,
                proxy: backends.proxy.map(proxy::ProxyState::new),
                keys_unreadable: std::sync::atomic::AtomicBool::new(false),
                housekeeping_rounds: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    pub fn cache(&self) -> &cache::PrincipalCache {
        &self.inner.cache
    }

    pub fn key_cache(&self) -> &cache::KeyCache {
        &self.inner.key_cache
    }

    pub fn security(&self) -> SecurityPolicy {
        self.inner.security
    }

    pub fn db(&self) -> &DbPool {
        &self.inner.db
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.inner.hasher
    }

    pub fn jwt(&self) -> &JwtKeys {
        &self.inner.jwt
    }

    pub fn cipher(&self) -> &TokenCipher {
        &self.inner.cipher
    }

    pub fn session_policy(&self) -> SessionPolicy {
        self.inner.sessions
    }
}

pub use paging::{PAGE_DEFAULT, PAGE_MAX};
