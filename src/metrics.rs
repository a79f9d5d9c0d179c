//! Metric names and the few helpers the domain calls. Recording goes through the `metrics`
//! facade: without an installed recorder (tests, CLI) every call is a no-op.

use std::time::Duration;

pub fn login_attempt(outcome: &'static str) {
    metrics::counter!("auth_login_attempts_total", "outcome" => outcome).increment(1);
}

pub fn jwt_issue(elapsed: Duration) {
    metrics::histogram!("auth_jwt_issue_seconds").record(elapsed.as_secs_f64());
}

pub fn jwt_verify(elapsed: Duration) {
    metrics::histogram!("auth_jwt_verify_seconds").record(elapsed.as_secs_f64());
}

pub fn bcrypt_wait(elapsed: Duration) {
    metrics::histogram!("auth_bcrypt_queue_wait_seconds").record(elapsed.as_secs_f64());
}

pub fn bcrypt_shed() {
    metrics::counter!("auth_bcrypt_shed_total").increment(1);
}

pub fn rate_limited(limit: &'static str) {
    metrics::counter!("auth_rate_limited_total", "limit" => limit).increment(1);
}

/// Seed 9.3's alert: more than 10 failed logins from one address in 5 minutes.
pub fn suspicious_address() {
    metrics::counter!("auth_suspicious_address_alerts_total").increment(1);
}

pub fn active_sessions(count: i64) {
    #[expect(clippy::cast_precision_loss, reason = "a gauge; exact beyond 2^53 sessions is moot")]
    metrics::gauge!("auth_active_sessions").set(count as f64);
}
