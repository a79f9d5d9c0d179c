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

/// Runs bcrypt off the async runtime. Cloning shares the pool.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

type Job = Box<dyn FnOnce() + Send>;

struct Inner {
    cost: u32,
    /// Feeds the hashing threads.
    jobs: std::sync::mpsc::Sender<Job>,
    /// Permits for everything admitted (running + queued); when none is left, shed.
    admitted: Arc<Semaphore>,
    capacity: usize,
    workers: usize,
    queued: Arc<AtomicUsize>,
    /// Moving average of one hash's wall time (ns). It grows when the CPU is contended, and
    /// with it the estimated wait, so admission adapts to what the machine can do right now.
    hash_ns: Arc<std::sync::atomic::AtomicU64>,
    /// Longest estimated wait admitted; beyond it logins are shed.
    max_wait: Duration,
    /// Hash of a random password at `cost`: unknown users are verified against it so they cost
    /// the same time as a wrong password.
    dummy_hash: String,
}

/// Starts `n` hashing threads below the request-serving threads: SCHED_BATCH (a thread that
/// wakes up to serve a request preempts them) at nice 5 (a smaller share under contention, but
/// never starved: queued logins still finish). Idle cores still go to hashing.
fn spawn_workers(n: usize, hash_ns: Arc<std::sync::atomic::AtomicU64>) -> anyhow::Result<std::sync::mpsc::Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    for i in 0..n {
        let (rx, hash_ns) = (Arc::clone(&rx), Arc::clone(&hash_ns));
        std::thread::Builder::new().name(format!("bcrypt-{i}")).spawn(move || {
            lower_priority();
            loop {
                // The lock is held only while waiting for the next job.
                let next = rx.lock().map_err(|_| ()).and_then(|rx| rx.recv().map_err(|_| ()));
                match next {
                    Ok(job) => {
                        let started = Instant::now();
                        job();
                        // Average of recent hashes (skipped jobs are instant and left out).
                        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        if took > 1_000_000 {
                            let old = hash_ns.load(Ordering::Relaxed);
                            hash_ns.store(old - old / 5 + took / 5, Ordering::Relaxed);
                        }
                    }
                    // The hasher was dropped.
                    Err(()) => return,
                }
            }
        })?;
    }
    Ok(tx)
}

fn lower_priority() {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy};
    // The crate's 0..99 scale maps 35 to niceness 5 for normal policies.
    let Ok(value) = ThreadPriorityValue::try_from(35u8) else { return };
    let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    let id = thread_priority::thread_native_id();
    if let Err(e) = thread_priority::set_thread_priority_and_policy(id, ThreadPriority::Crossplatform(value), policy) {
        tracing::warn!(error = ?e, "cannot lower the hashing threads' priority");
    }
}

impl PasswordHasher {
    /// `workers` hashing threads, at most `max_queue` requests waiting beyond them and none
    /// expected to wait longer than `max_wait`. Computes the dummy hash, so this takes one
    /// hash's time.
    pub async fn new(cost: u32, workers: usize, max_queue: usize, max_wait: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (MIN_COST..=MAX_COST).contains(&cost),
            "BCRYPT_COST must be between {MIN_COST} and {MAX_COST}, got {cost}"
        );
        let workers = workers.max(1);
        let random = crate::crypto::random_token(24);
        let started = Instant::now();
        let dummy_hash = tokio::task::spawn_blocking(move || bcrypt::hash(random, cost)).await??;
        let one_hash = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let hash_ns = Arc::new(std::sync::atomic::AtomicU64::new(one_hash));
        Ok(Self {
            inner: Arc::new(Inner {
                cost,
                jobs: spawn_workers(workers, Arc::clone(&hash_ns))?,
                admitted: Arc::new(Semaphore::new(workers + max_queue)),
                capacity: workers + max_queue,
                workers,
                queued: Arc::new(AtomicUsize::new(0)),
                hash_ns,
                max_wait,
                dummy_hash,
            }),
        })
    }

    pub fn cost(&self) -> u32 {
        self.inner.cost
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

    /// Admits the job or sheds it, queues it for a hashing thread, waits for the result. A job
    /// whose caller went away before it started is skipped: abandoned logins cost no CPU.
    async fn run<T, F>(&self, job: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // Expected wait if admitted: the hashes ahead of it, spread over the workers.
        let in_system = self.inner.capacity - self.inner.admitted.available_permits();
        let hash = Duration::from_nanos(self.inner.hash_ns.load(Ordering::Relaxed));
        let rounds = u32::try_from(in_system / self.inner.workers + 1).unwrap_or(u32::MAX);
        let expected = hash.saturating_mul(rounds);
        let overloaded = || Error::Overloaded {
            message: "The service is busy; retry shortly",
            // By then about half of today's queue has drained.
            retry_after: (expected / 2).max(Duration::from_secs(1)),
        };
        if expected > self.inner.max_wait {
            crate::metrics::bcrypt_shed();
            return Err(overloaded());
        }
        let Ok(admitted) = Arc::clone(&self.inner.admitted).try_acquire_owned() else {
            crate::metrics::bcrypt_shed();
            return Err(overloaded());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = Waiting::enter(Arc::clone(&self.inner.queued));
        let enqueued = Instant::now();
        let job: Job = Box::new(move || {
            drop(waiting);
            crate::metrics::bcrypt_wait(enqueued.elapsed());
            if !tx.is_closed() {
                let _ = tx.send(job());
            }
            drop(admitted);
        });
        self.inner
            .jobs
            .send(job)
            .map_err(|_| Error::internal("hashing pool stopped", anyhow::anyhow!("channel closed")))?;
        rx.await.map_err(|e| Error::internal("hashing thread failed", e))
    }
}

/// Counts a job as queued until it starts (or is dropped unstarted).
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn enter(queued: Arc<AtomicUsize>) -> Self {
        crate::metrics::bcrypt_queue_depth(queued.fetch_add(1, Ordering::Relaxed) + 1);
        Self(queued)
    }
}

impl Drop for Waiting {
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
