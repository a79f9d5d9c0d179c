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
