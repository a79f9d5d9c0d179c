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

/// A use of a known API key refused (wrong secret, ended, address not allowed).
pub fn api_key_refused(reason: &'static str) {
    metrics::counter!("auth_api_key_refused_total", "reason" => reason).increment(1);
}

pub fn proxy_refusal(reason: &'static str) {
    metrics::counter!("auth_proxy_refused_total", "reason" => reason).increment(1);
}

pub fn proxy_admitted() {
    metrics::counter!("auth_proxy_admitted_total").increment(1);
}

/// Seed 9.3's alert: more than 10 failed logins from one address in 5 minutes.
pub fn suspicious_address() {
    metrics::counter!("auth_suspicious_address_alerts_total").increment(1);
}

/// Rows the housekeeping purges deleted from `table`.
pub fn purged_rows(table: &'static str, rows: usize) {
    metrics::counter!("auth_purged_rows_total", "table" => table).increment(rows as u64);
}

pub fn active_sessions(count: i64) {
    #[expect(clippy::cast_precision_loss, reason = "a gauge; exact beyond 2^53 sessions is moot")]
    metrics::gauge!("auth_active_sessions").set(count as f64);
}

#[expect(clippy::cast_precision_loss, reason = "gauges of small counts")]
pub fn pool_usage(in_use: usize, size: usize) {
    metrics::gauge!("auth_db_pool_connections_in_use").set(in_use as f64);
    metrics::gauge!("auth_db_pool_size").set(size as f64);
}

#[expect(clippy::cast_precision_loss, reason = "a gauge of a small count")]
pub fn bcrypt_queue_depth(queued: usize) {
    metrics::gauge!("auth_bcrypt_queue_depth").set(queued as f64);
}

/// Time of one database operation (`op` is the repository function).
pub fn db_query(op: &'static str, elapsed: Duration) {
    metrics::histogram!("auth_db_query_seconds", "op" => op).record(elapsed.as_secs_f64());
}

pub fn cache_lookup(hit: bool) {
    metrics::counter!("auth_session_cache_lookups_total", "result" => if hit { "hit" } else { "stale" }).increment(1);
}
