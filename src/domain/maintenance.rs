//! Upkeep: periodic cleanup of state that only grows (drained rate-limit keys, old throttling
//! rows, long-ended sessions), and re-encryption of backend tokens after a key rotation.

use chrono::{DateTime, Duration, Utc};

use super::App;
use super::audit::{self, Action, Event};
use super::types::ClientInfo;
use crate::crypto::secrets::KeyUsed;
use crate::db::models::{backends, rate_limits, sessions, throttles};
use crate::error::Result;
use secrecy::ExposeSecret;

/// Ended sessions are kept this long (the audit log keeps the history).
const KEEP_ENDED_SESSIONS: i64 = 7;

impl App {
    /// One round of cleanup; safe to run on every replica at once.
    pub async fn housekeeping(&self, now: DateTime<Utc>) -> Result<()> {
        self.inner.api_limiter.shrink();
        let mut conn = self.db().get().await?;
        rate_limits::purge(&mut conn, now.timestamp_micros()).await?;
        throttles::purge(&mut conn, (now - Duration::days(1)).naive_utc(), now.naive_utc()).await?;
        sessions::purge_ended(&mut conn, (now - Duration::days(KEEP_ENDED_SESSIONS)).naive_utc()).await?;
        let live = sessions::count_live(&mut conn, now.naive_utc()).await?;
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
                    audit::record(c, event, &client, now).await?;
                    Ok((tokens.len(), changed))
                })
            }))
            .await
    }
}
