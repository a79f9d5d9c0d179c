//! The rules of the service: sign-in, sessions, users, audit. No transport and no SQL here:
//! transports call [`App`], and [`App`] calls the repositories in `db::models`.

pub mod audit;
mod auth;
pub mod types;
mod users;
pub mod validate;

use std::sync::Arc;

use chrono::Duration;

pub use self::users::BootstrapOutcome;
use crate::crypto::jwt::JwtKeys;
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

/// Everything a request needs; shared by all transports. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

pub struct AppInner {
    pub db: DbPool,
    pub hasher: PasswordHasher,
    pub jwt: JwtKeys,
    pub cipher: TokenCipher,
    pub sessions: SessionPolicy,
}

impl App {
    pub fn new(
        db: DbPool,
        hasher: PasswordHasher,
        jwt: JwtKeys,
        cipher: TokenCipher,
        sessions: SessionPolicy,
    ) -> Self {
        Self {
            inner: Arc::new(AppInner {
                db,
                hasher,
                jwt,
                cipher,
                sessions,
            }),
        }
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
