//! Rate limits (seed 4.4): login attempts per client address and authenticated requests per
//! user. The login limit is the one attackers test, so its GCRA state lives in the database and
//! holds across replicas exactly; logins cost a bcrypt hash anyway, so one more upsert is
//! noise. The per-user API limit guards the hot path and runs in memory with `governor` (per
//! replica: a database write per request would cost more than the limit protects).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::App;
use super::types::UserId;
use crate::db::models::rate_limits;
use crate::error::{Error, Result};

const MINUTE_US: i64 = 60_000_000;

/// An in-memory per-caller limiter (None when disabled): per user, or per API key.
pub struct ApiLimiter<K: std::hash::Hash + Eq + Clone = UserId> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: std::hash::Hash + Eq + Clone> ApiLimiter<K> {
    pub fn new(per_minute: u32) -> Self {
        Self { limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))) }
    }

    /// Admits one request of `caller` or says how long to wait.
    pub fn check(&self, caller: K) -> Result<()> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(&caller).map_err(|not_until| Error::TooManyRequests {
            message: "Too many requests; slow down",
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }

    /// Forgets users whose buckets are full again (keeps memory bounded).
    pub fn shrink(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

impl App {
    /// Takes one login attempt of `ip`'s budget, shared by all replicas through the database.
    pub(super) async fn check_login_rate(&self, ip: Option<IpAddr>, now: DateTime<Utc>) -> Result<()> {
        let per_minute = i64::from(self.security().login_per_minute);
        if per_minute == 0 {
            return Ok(());
        }
        let interval = MINUTE_US / per_minute;
        let key = format!("login:{}", ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()));
        let mut conn = self.db().get().await?;
        match rate_limits::acquire(&mut conn, &key, now.timestamp_micros(), interval, MINUTE_US - interval).await? {
            None => Ok(()),
            Some(wait_us) => {
                crate::metrics::rate_limited("login");
                Err(Error::TooManyRequests {
                    message: "Too many login attempts; try again later",
                    retry_after: StdDuration::from_micros(u64::try_from(wait_us).unwrap_or(1)),
                })
            }
        }
    }
}
