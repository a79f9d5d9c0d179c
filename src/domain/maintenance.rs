//! Upkeep: periodic cleanup of state that only grows (drained rate-limit keys, old throttling
//! rows, long-ended sessions, ended or expired mfa_tokens and passkey ceremonies, audit entries
//! past AUDIT_RETENTION_DAYS), and re-encryption of
//! backend tokens after a key rotation.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use futures_util::future::BoxFuture;

use super::App;
use super::audit::{self, Action, Event};
use super::types::{ClientInfo, UserId};
use crate::crypto::secrets::KeyUsed;
use crate::db::DbConn;
use crate::db::models::{audit as audit_rows, backends, mfa, passkeys, rate_limits, sessions, throttles};
use crate::error::Result;
use secrecy::ExposeSecret;

/// Ended sessions are kept this long (the audit log keeps the history).
const KEEP_ENDED_SESSIONS: i64 = 7;

/// How a purge paces itself on one kind of database: rows per statement, and the pause after
/// each batch as a multiple of what the batch took (at most [`PURGE_PAUSE_MAX`]).
///
/// Each batch is its own short write transaction, so a purge of millions of rows never holds a
/// lock for long. A purge at full speed takes a core while it deletes: this process's on SQLite
/// (and the one write lock), the database server's on PostgreSQL, which every request needs
/// too. The pauses bound its share of a core however long it lasts, so requests on a small host
/// keep their latency (issue 18: GetMe's p99 during a million-row purge at full speed was 5x its
/// quiet value on SQLite, 2.5x on PostgreSQL). Upkeep has no deadline; requests do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    pub batch: i64,
    pub pause_factor: u32,
}

impl Pacing {
    /// On PostgreSQL what a request meets is one batch at work, not the purge's share of a
    /// core: with 2,000 rows a batch (some 11 ms) GetMe's p99 during a million-row purge was
    /// about 4.3 ms whether the pauses left the purge a third of a core or a sixth (2.0-2.4x
    /// its quiet value on two shared cores). With 200 rows a batch it was 3.1 ms (1.6x); the
    /// purge takes a minute instead of 16 s (BENCHMARKS.md, "Scale").
    pub const POSTGRES: Self = Self { batch: 200, pause_factor: 2 };
    /// On SQLite the purge deletes in this process, beside the requests' own reads, and a batch
    /// holds the one write lock (the service's own writes take their turn between batches). A
    /// row costs some 0.1 ms (it leaves five indexes of the audit log), so 500 rows kept a core
    /// for some 40 ms at a time, far longer than a request's own work (GetMe's p99 during a
    /// million-row purge 2.3-3.2x its quiet value, however long the pauses). With 25 rows a batch
    /// (a few milliseconds, and as long a wait for a writer) it was 1.5-2.4x at half a core,
    /// 1.0-1.6x at a third; the purge of a million rows takes 7 minutes instead of 3
    /// (BENCHMARKS.md, "thirteenth").
    pub const SQLITE: Self = Self { batch: 25, pause_factor: 2 };

    pub const fn of(sqlite: bool) -> Self {
        if sqlite { Self::SQLITE } else { Self::POSTGRES }
    }

    /// The same pauses with `batch` rows per statement (tests: batches a few rows long).
    pub const fn with_batch(self, batch: i64) -> Self {
        Self { batch, ..self }
    }
}

const PURGE_PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(250);

/// What one round of housekeeping deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub sessions: usize,
    pub rate_limits: usize,
    pub throttles: usize,
    pub audit: usize,
    /// mfa_tokens that ended or expired.
    pub mfa_challenges: usize,
    /// Passkey ceremonies that expired unfinished.
    pub passkey_ceremonies: usize,
}

/// One batch of a purge: deletes at most `limit` rows, returns how many.
type Batch = Arc<dyn for<'c> Fn(&'c mut DbConn, i64) -> BoxFuture<'c, Result<usize>> + Send + Sync>;

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

    /// Housekeeping rounds that have ended since start-up (the background task's and any other
    /// caller's).
    pub fn housekeeping_rounds(&self) -> u64 {
        self.inner.housekeeping_rounds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One round of cleanup; safe to run on every replica at once.
    pub async fn housekeeping(&self, now: DateTime<Utc>) -> Result<Purged> {
        let started = std::time::Instant::now();
        self.inner.api_limiter.shrink();
        self.inner.key_limiter.shrink();
        if let Some(proxy) = &self.inner.proxy {
            proxy.shrink();
        }
        let purged = self.purge(now, self.purge_pacing()).await?;
        let mut conn = self.db().get().await?;
        let live = sessions::count_live(&mut conn, now).await?;
        crate::metrics::active_sessions(live);
        // What the load harness (this line) and the tests (the count) wait for before they
        // measure: a round at start-up may work off a backlog.
        self.inner.housekeeping_rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(elapsed_ms = started.elapsed().as_millis(), "housekeeping round done");
        Ok(purged)
    }

    /// How this database's purges pace themselves: PURGE_BATCH_ROWS and PURGE_PAUSE_FACTOR
    /// where set, the database's defaults otherwise.
    pub fn purge_pacing(&self) -> Pacing {
        let (default, policy) = (Pacing::of(self.db().is_sqlite()), &self.inner.retention);
        Pacing {
            batch: policy.purge_batch.unwrap_or(default.batch),
            pause_factor: policy.purge_pause_factor.unwrap_or(default.pause_factor),
        }
    }

    /// Deletes what has outlived its use as of `now`, paced by `pacing`: drained
    /// rate-limit keys, throttling rows untouched for a day (lock over), sessions ended
    /// [`KEEP_ENDED_SESSIONS`] days ago, mfa_tokens ended or expired and passkey ceremonies
    /// expired (the audit log keeps their history), audit entries older than
    /// AUDIT_RETENTION_DAYS (if set).
    pub async fn purge(&self, now: DateTime<Utc>, pacing: Pacing) -> Result<Purged> {
        let at = now.timestamp_micros();
        let rate_limits = self
            .purge_in_batches("rate_limits", pacing, Arc::new(move |c, n| Box::pin(rate_limits::purge(c, at, n))))
            .await?;
        let idle = now - Duration::days(1);
        let throttles = self
            .purge_in_batches(
                "login_throttles",
                pacing,
                Arc::new(move |c, n| Box::pin(throttles::purge(c, idle, now, n))),
            )
            .await?;
        let ended = now - Duration::days(KEEP_ENDED_SESSIONS);
        let sessions = self
            .purge_in_batches("sessions", pacing, Arc::new(move |c, n| Box::pin(sessions::purge_ended(c, ended, n))))
            .await?;
        let mfa_challenges = self
            .purge_in_batches(
                "mfa_challenges",
                pacing,
                Arc::new(move |c, n| Box::pin(mfa::purge_challenges(c, now, n))),
            )
            .await?;
        let passkey_ceremonies = self
            .purge_in_batches(
                "passkey_ceremonies",
                pacing,
                Arc::new(move |c, n| Box::pin(passkeys::purge_ceremonies(c, now, n))),
            )
            .await?;
        let audit = match self.inner.retention.audit {
            Some(keep) => {
                let before = now - keep;
                // Each batch starts where the last one ended (`audit::purge_before`). Were a
                // batch's transaction rolled back after this moved on, its rows would only wait
                // for the next round, which starts from the log's start again.
                let from = Arc::new(std::sync::Mutex::new(None));
                self.purge_in_batches(
                    "audit_logs",
                    pacing,
                    Arc::new(move |c, n| {
                        let from = Arc::clone(&from);
                        Box::pin(async move {
                            let start = *from.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            let (deleted, newest) = audit_rows::purge_before(c, before, start, n).await?;
                            if newest.is_some() {
                                *from.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = newest;
                            }
                            Ok(deleted)
                        })
                    }),
                )
                .await?
            }
            None => 0,
        };
        Ok(Purged { sessions, rate_limits, throttles, audit, mfa_challenges, passkey_ceremonies })
    }

    /// Runs `delete` until a batch comes back short, each batch in its own write transaction,
    /// pausing in between in proportion to how long the batch took; logs and counts what went.
    async fn purge_in_batches(&self, table: &'static str, pacing: Pacing, delete: Batch) -> Result<usize> {
        let (batch, pause_factor) = (pacing.batch.max(1), pacing.pause_factor);
        let (started, mut total, mut batches) = (std::time::Instant::now(), 0, 0);
        loop {
            let delete = Arc::clone(&delete);
            let took = std::time::Instant::now();
            let deleted = self.db().write(Box::new(move |c| delete(c, batch))).await?;
            total += deleted;
            batches += 1;
            crate::metrics::purged_rows(table, deleted);
            if i64::try_from(deleted).map_or(true, |d| d < batch) {
                break;
            }
            tokio::time::sleep((took.elapsed() * pause_factor).min(PURGE_PAUSE_MAX)).await;
        }
        if total > 0 {
            tracing::info!(table, rows = total, batches, elapsed_ms = started.elapsed().as_millis(), "purged");
        } else {
            tracing::debug!(table, "nothing to purge");
        }
        Ok(total)
    }

    /// Re-encrypts every stored backend token that is not under the current `ENCRYPTION_KEY`,
    /// in one transaction (all or nothing). Returns (tokens stored, tokens re-encrypted).
    pub async fn reencrypt_backend_tokens(&self, client: &ClientInfo, now: DateTime<Utc>) -> Result<(usize, usize)> {
        self.reencrypt(Sealed::BackendTokens, client, now).await
    }

    /// The same for the TOTP secrets of second factors.
    pub async fn reencrypt_totp_secrets(&self, client: &ClientInfo, now: DateTime<Utc>) -> Result<(usize, usize)> {
        self.reencrypt(Sealed::TotpSecrets, client, now).await
    }

    async fn reencrypt(&self, what: Sealed, client: &ClientInfo, now: DateTime<Utc>) -> Result<(usize, usize)> {
        let (cipher, client) = (self.cipher().clone(), client.clone());
        self.db()
            .write(Box::new(move |c| {
                let (cipher, client) = (cipher.clone(), client.clone());
                Box::pin(async move {
                    let stored = match what {
                        Sealed::BackendTokens => backends::all_tokens(c).await?,
                        Sealed::TotpSecrets => mfa::all_totp_secrets(c).await?,
                    };
                    let mut changed = 0;
                    for (id, encrypted) in &stored {
                        // Anything no key can read fails the whole run: nothing is half-rotated.
                        let (plain, used) = cipher.decrypt_with_key_info(encrypted)?;
                        if used == KeyUsed::Previous {
                            let encrypted = cipher.encrypt(plain.expose_secret());
                            match what {
                                Sealed::BackendTokens => backends::set_token(c, *id, &encrypted).await?,
                                Sealed::TotpSecrets => mfa::set_totp_secret(c, *id, &encrypted).await?,
                            }
                            changed += 1;
                        }
                    }
                    let event = Event::new(Action::TokensReencrypted, None)
                        .with(what.label(), stored.len())
                        .with("reencrypted", changed)
                        .with("via", "cli");
                    audit::record(c, event, &client, now).await?.nothing_cached();
                    Ok((stored.len(), changed))
                })
            }))
            .await
    }
}

/// What a re-encryption covers: each kind of secret stored under the Fernet keyring.
#[derive(Debug, Clone, Copy)]
enum Sealed {
    BackendTokens,
    TotpSecrets,
}

impl Sealed {
    /// Its count's name in the audit row.
    fn label(self) -> &'static str {
        match self {
            Self::BackendTokens => "tokens",
            Self::TotpSecrets => "totp_secrets",
        }
    }
}
