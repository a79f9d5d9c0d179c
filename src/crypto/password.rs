//! Password hashing: bcrypt on dedicated blocking threads, at most one per core, with a
//! bounded queue in front so a login storm is shed instead of stalling every other RPC.
//! Also the password policy (seed 4.1) and bcrypt's 72-byte limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// bcrypt reads at most 72 bytes; longer passwords are rejected rather than silently cut.
pub const MAX_PASSWORD_BYTES: usize = 72;
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MIN_COST: u32 = 10;
pub const MAX_COST: u32 = 16;

/// Checks a new password against the policy; `field` names it in the error.
pub fn check_policy(field: &'static str, password: &str) -> Result<()> {
    let fail = |msg: &str| Err(Error::invalid(field, msg));
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return fail("must be at least 8 characters");
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return fail("must be at most 72 bytes (bcrypt's limit)");
    }
    if password.chars().any(char::is_control) {
        return fail("must not contain control characters");
    }
    let has = |pred: fn(&char) -> bool| password.chars().any(|c| pred(&c));
    if !has(char::is_ascii_uppercase) && !has(|c| c.is_uppercase()) {
        return fail("must contain an uppercase letter");
    }
    if !has(|c| c.is_lowercase()) {
        return fail("must contain a lowercase letter");
    }
    if !has(char::is_ascii_digit) {
        return fail("must contain a digit");
    }
    if !has(|c| !c.is_alphanumeric() && !c.is_whitespace()) {
        return fail("must contain a special character");
    }
    Ok(())
}

/// The cost a stored hash was made with, if it is a bcrypt hash.
pub fn hash_cost(hash: &str) -> Option<u32> {
    // "$2b$12$..." -> 12
    let mut parts = hash.split('$');
    let (_, variant, cost) = (parts.next()?, parts.next()?, parts.next()?);
    matches!(variant, "2a" | "2b" | "2x" | "2y").then_some(())?;
    cost.parse().ok()
}

/// Numbers for metrics and benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct HasherStats {
    /// Requests waiting for a hashing thread.
    pub queued: usize,
    /// Hashes running now.
    pub running: usize,
}

/// Runs bcrypt off the async runtime. Cloning shares the pool.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    cost: u32,
    /// One permit per hashing thread (cores).
    workers: Arc<Semaphore>,
    worker_total: usize,
    /// Permits for everything admitted (running + queued); when none is left, shed.
    admitted: Semaphore,
    queued: AtomicUsize,
    /// Hash of a random password at `cost`: unknown users are verified against it so they cost
    /// the same time as a wrong password.
    dummy_hash: String,
    /// Seconds a client should wait when shed: roughly how long the queue takes to drain.
    retry_after: Duration,
}

impl PasswordHasher {
    /// `workers` hashing threads, `max_queue` requests waiting beyond them. Computes the dummy
    /// hash, so this takes one hash's time.
    pub async fn new(cost: u32, workers: usize, max_queue: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (MIN_COST..=MAX_COST).contains(&cost),
            "BCRYPT_COST must be between {MIN_COST} and {MAX_COST}, got {cost}"
        );
        let workers = workers.max(1);
        let random = crate::crypto::random_token(24);
        let started = Instant::now();
        let dummy_hash = tokio::task::spawn_blocking(move || bcrypt::hash(random, cost)).await??;
        let one_hash = started.elapsed();
        // Time to drain a full queue with all workers busy, at least one second.
        let drain = one_hash.mul_f64((max_queue + workers) as f64 / workers as f64);
        Ok(Self {
            inner: Arc::new(Inner {
                cost,
                workers: Arc::new(Semaphore::new(workers)),
                worker_total: workers,
                admitted: Semaphore::new(workers + max_queue),
                queued: AtomicUsize::new(0),
                dummy_hash,
                retry_after: drain.max(Duration::from_secs(1)),
            }),
        })
    }

    pub fn cost(&self) -> u32 {
        self.inner.cost
    }

    pub fn stats(&self) -> HasherStats {
        let queued = self.inner.queued.load(Ordering::Relaxed);
        let running = self.inner.worker_total - self.inner.workers.available_permits();
        HasherStats { queued, running }
    }

    /// Hashes a new password (policy already checked by the caller) at the configured cost.
    pub async fn hash(&self, password: &SecretString) -> Result<String> {
        let password = password.clone();
        let cost = self.inner.cost;
        self.run(move || bcrypt::hash(password.expose_secret().as_bytes(), cost))
            .await?
            .map_err(|e| Error::internal("bcrypt hash failed", e))
    }

    /// Verifies `password` against `hash`; with `None` (unknown user) verifies against the
    /// dummy hash and returns false, taking the same time. Over-long passwords never match.
    pub async fn verify(&self, password: &SecretString, hash: Option<&str>) -> Result<bool> {
        let too_long = password.expose_secret().len() > MAX_PASSWORD_BYTES;
        let real = hash.is_some() && !too_long;
        let hash = match hash {
            Some(h) if !too_long => h.to_owned(),
            _ => self.inner.dummy_hash.clone(),
        };
        let password = password.clone();
        let matched = self.run(move || bcrypt::verify(password.expose_secret().as_bytes(), &hash)).await?;
        match matched {
            Ok(ok) => Ok(ok && real),
            // A stored value that is not a bcrypt hash: treat as a mismatch, but say so in the log.
            Err(e) => {
                tracing::error!(error = %e, "stored password hash is not a valid bcrypt hash");
                Ok(false)
            }
        }
    }

    /// Admits the job or sheds it, waits for a hashing thread, runs it there.
    async fn run<T, F>(&self, job: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let Ok(_admitted) = self.inner.admitted.try_acquire() else {
            crate::metrics::bcrypt_shed();
            return Err(Error::Overloaded {
                message: "Too many sign-in attempts are in progress; retry shortly",
                retry_after: self.inner.retry_after,
            });
        };
        let enqueued = Instant::now();
        let waiting = Waiting::enter(&self.inner.queued);
        let worker = Arc::clone(&self.inner.workers).acquire_owned().await;
        drop(waiting);
        let worker = worker.map_err(|e| Error::internal("hashing pool closed", e))?;
        crate::metrics::bcrypt_wait(enqueued.elapsed());
        // The permit moves into the thread: if the caller goes away the hash still finishes
        // before the thread is counted free, so at most `workers` hashes ever run.
        tokio::task::spawn_blocking(move || {
            let out = job();
            drop(worker);
            out
        })
        .await
        .map_err(|e| Error::internal("hashing thread failed", e))
    }
}

/// Counts a request as queued until dropped, also when the caller goes away while waiting.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(queued: &'a AtomicUsize) -> Self {
        crate::metrics::bcrypt_queue_depth(queued.fetch_add(1, Ordering::Relaxed) + 1);
        Self(queued)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        crate::metrics::bcrypt_queue_depth(self.0.fetch_sub(1, Ordering::Relaxed).saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_rules() {
        assert!(check_policy("password", "Secure_password123!").is_ok());
        for bad in [
            "Sh0rt!",
            "alllowercase1!",
            "ALLUPPERCASE1!",
            "NoDigits!!",
            "NoSpecial123",
            &format!("Aa1!{}", "x".repeat(69)),
        ] {
            assert!(check_policy("password", bad).is_err(), "{bad} should fail");
        }
        // Exactly 72 bytes is allowed.
        assert!(check_policy("password", &format!("Aa1!{}", "x".repeat(68))).is_ok());
        match check_policy("new_password", "short") {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "new_password"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cost_of_hash() {
        assert_eq!(hash_cost("$2b$12$KIXn7gX8QZKjT5hZ9.xYr.8vZqJ1Y2K3L4M5N6O7P8Q9R0S1T2U3V"), Some(12));
        assert_eq!(hash_cost("$2y$10$abc"), Some(10));
        assert_eq!(hash_cost("plain"), None);
    }
}
