//! Upkeep: periodic cleanup of state that only grows (drained rate-limit keys, old throttling
//! rows, long-ended sessions), and re-encryption of backend tokens after a key rotation.

use chrono::{DateTime, Duration, Utc};

use super::App;
use super::audit::{self, Action, Event};
use super::types::{ClientInfo, UserId};
use crate::crypto::secrets::KeyUsed;
use crate::db::models::{backends, rate_limits, sessions, throttles};
use crate::error::Result;
use secrecy::ExposeSecret;

/// Ended sessions are kept this long (the audit log keeps the history).
const KEEP_ENDED_SESSIONS: i64 = 7;

/// What the start-up key check found.
#[derive(Debug, Clone, Default)]
pub struct TokenCheck {
    pub sampled: usize,
    /// Users whose stored backend token no configured key decrypts.
    pub unreadable: Vec<UserId>,
}

/// What health checks report.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    pub database_connected: bool,
    /// The configured keys decrypted every sampled backend token at start-up.
    pub encryption_keys_ok: bool,
}

impl App {
    /// Tries the configured encryption keys on up to `limit` stored backend tokens and
    /// remembers the outcome for [`health`](Self::health).
    pub async fn check_stored_tokens(&self, limit: i64) -> Result<TokenCheck> {
        let mut conn = self.db().get().await?;
        let sample = backends::sample_tokens(&mut conn, limit).await?;
        let unreadable: Vec<UserId> =
            sample.iter().filter(|(_, token)| self.cipher().decrypt(token).is_err()).map(|(user, _)| *user).collect();
        self.inner.keys_unreadable.store(!unreadable.is_empty(), std::sync::atomic::Ordering::Relaxed);
        Ok(TokenCheck { sampled: sample.len(), unreadable })
    }

    /// The database answers, and the keys read the stored tokens.
    pub async fn health(&self) -> Health {
        Health {
            database_connected: self.db().ping().await,
            encryption_keys_ok: !self.inner.keys_unreadable.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// One round of cleanup; safe to run on every replica at once.
    pub async fn housekeeping(&self, now: DateTime<Utc>) -> Result<()> {
        self.inner.api_limiter.shrink();
        self.inner.key_limiter.shrink();
        let mut conn = self.db().get().await?;
        rate_limits::purge(&mut conn, now.timestamp_micros()).await?;
        throttles::purge(&mut conn, now - Duration::days(1), now).await?;
        sessions::purge_ended(&mut conn, now - Duration::days(KEEP_ENDED_SESSIONS)).await?;
        let live = sessions::count_live(&mut conn, now).await?;
        crate::metrics::active_sessions(live);
        Ok(())
    }

    /// Re-encrypts every stored backend token that is not under the current `ENCRYPTION_KEY`,
    /// in one transaction (all or nothing). Returns (tokens stored, tokens re-encrypted).
    pub async fn reencrypt_backend_tokens(&self, client: &ClientInfo, now: DateTime<Utc>) -> Result<(usize, usize)> {
        let (cipher, client) = (self.cipher().clone(), client.clone());
        self.db()
            .write(Box::new(move |c| {
                let (cipher, client) = (cipher.clone(), client.clone());
                Box::pin(async move {
                    let tokens = backends::all_tokens(c).await?;
                    let mut changed = 0;
                    for (id, encrypted) in &tokens {
                        // Any token no key can read fails the whole run: nothing is half-rotated.
                        let (plain, used) = cipher.decrypt_with_key_info(encrypted)?;
                        if used == KeyUsed::Previous {
                            backends::set_token(c, *id, &cipher.encrypt(plain.expose_secret())).await?;
                            changed += 1;
                        }
                    }
                    let event = Event::new(Action::TokensReencrypted, None)
                        .with("tokens", tokens.len())
                        .with("reencrypted", changed)
                        .with("via", "cli");
                    audit::record(c, event, &client, now).await?.nothing_cached();
                    Ok((tokens.len(), changed))
                })
            }))
            .await
    }
}
