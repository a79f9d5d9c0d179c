//! Cross-replica invalidation on PostgreSQL: writers `NOTIFY` the id of a user whose sessions
//! or account changed (inside their transaction, so it is sent on commit); every replica
//! `LISTEN`s on a dedicated connection and drops its cached sessions of that user.

use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;

use super::{DbConn, map_err};
use crate::error::Result;
use crate::model::UserId;

pub const CHANNEL: &str = "instachatico_auth_invalidate";

diesel::define_sql_function!(fn pg_notify(channel: Text, payload: Text));

/// Tells every replica that `user_id`'s sessions or account changed (PostgreSQL only; a
/// SQLite deployment is one process, which invalidates its own cache).
pub async fn user_changed(conn: &mut DbConn, user_id: UserId) -> Result<()> {
    let started = std::time::Instant::now();
    if let DbConn::Postgres(conn) = conn {
        let conn: &mut AsyncPgConnection = &mut *conn;
        diesel::select(pg_notify(CHANNEL, user_id.to_string())).execute(conn).await.map_err(map_err)?;
        crate::metrics::db_query("notify::user_changed", started.elapsed());
    }
    Ok(())
}

/// The payload that says "some API key changed" (user ids are numbers, so it cannot clash).
const API_KEYS: &str = "api_keys";

/// Tells every replica that an API key was revoked, rotated or deleted (PostgreSQL only).
pub async fn api_keys_changed(conn: &mut DbConn) -> Result<()> {
    let started = std::time::Instant::now();
    if let DbConn::Postgres(conn) = conn {
        let conn: &mut AsyncPgConnection = &mut *conn;
        diesel::select(pg_notify(CHANNEL, API_KEYS)).execute(conn).await.map_err(map_err)?;
        crate::metrics::db_query("notify::api_keys_changed", started.elapsed());
    }
    Ok(())
}

/// What the listener reports.
pub enum Event {
    /// Listening (again): anything may have changed while not listening.
    Connected,
    /// The connection dropped: changes may go unnoticed until `Connected`.
    Disconnected,
    UserChanged(UserId),
    /// Some API key changed: drop every cached key.
    ApiKeysChanged,
}

/// Listens forever, reconnecting after failures, and reports to `on_event`.
pub async fn listen(url: String, on_event: impl Fn(Event) + Send + 'static) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match AsyncPgConnection::establish(&url).await {
            Ok(mut conn) => match diesel::sql_query(format!("LISTEN {CHANNEL}")).execute(&mut conn).await {
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    on_event(Event::Connected);
                    let mut stream = std::pin::pin!(conn.notifications_stream());
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(n) if n.payload == API_KEYS => on_event(Event::ApiKeysChanged),
                            Ok(n) => match n.payload.parse() {
                                Ok(user_id) => on_event(Event::UserChanged(UserId(user_id))),
                                Err(_) => tracing::warn!(payload = %n.payload, "ignoring a malformed invalidation"),
                            },
                            Err(e) => {
                                tracing::warn!(error = %e, "invalidation listener failed");
                                break;
                            }
                        }
                    }
                    on_event(Event::Disconnected);
                    tracing::warn!("invalidation listener disconnected; caching off until it reconnects");
                }
                Err(e) => tracing::warn!(error = %e, "LISTEN failed"),
            },
            Err(e) => tracing::warn!(error = %e, "invalidation listener cannot connect"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
