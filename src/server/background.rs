//! The tasks that run beside the server: the health probe, housekeeping, and (PostgreSQL) the
//! listener that keeps this replica's session cache in step with the others.

use std::time::Duration;

use chrono::Utc;
use tonic_health::ServingStatus;

use crate::domain::App;

/// How often `grpc.health.v1` re-checks the database (and the start-up key check's outcome).
const HEALTH_PROBE_EVERY: Duration = Duration::from_secs(5);
/// How often expired rate-limit, throttling, session and (with a retention) audit rows are dropped.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// Keeps `grpc.health.v1` truthful about the database.
pub async fn probe_database(app: App, reporter: tonic_health::server::HealthReporter) {
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let (in_use, size) = app.db().usage();
        crate::metrics::pool_usage(in_use, size);
        n += 1;
        if n % HEALTH_PROBE_EVERY.as_secs() != 1 && last.is_some() {
            continue;
        }
        let health = app.health().await;
        let healthy = health.database_connected && health.encryption_keys_ok;
        let status = if healthy { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(status) {
            if status == ServingStatus::NotServing {
                tracing::error!(?health, "health is NOT_SERVING");
            }
            reporter.set_service_status("", status).await;
            last = Some(status);
        }
    }
}

/// Keeps this replica's session cache in step with the others (PostgreSQL only).
pub async fn listen_for_invalidations(app: App, url: String) {
    use crate::db::notify::{Event, listen};
    listen(url, move |event| match event {
        Event::Connected => {
            app.cache().set_trustworthy(true);
            app.key_cache().set_trustworthy(true);
        }
        Event::Disconnected => {
            app.cache().set_trustworthy(false);
            app.key_cache().set_trustworthy(false);
        }
        Event::UserChanged(user_id) => app.cache().bump(user_id),
        Event::ApiKeysChanged => app.key_cache().invalidate_all(),
    })
    .await;
}

/// Periodic cleanup of growing state (see `App::housekeeping`).
pub async fn housekeeping(app: App) {
    let mut every = tokio::time::interval(HOUSEKEEPING_EVERY);
    // A round working off a large backlog may outlast the period: start the next one a full
    // period after it ends, not at once to catch up.
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = app.housekeeping(Utc::now()).await {
            tracing::warn!(error = ?e, "housekeeping failed");
        }
    }
}
