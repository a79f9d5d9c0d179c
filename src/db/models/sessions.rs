//! The `sessions` table: every JWT names one; a session ends when revoked or at `expires_at`.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Timestamp;
use diesel_async::RunQueryDsl;

use super::{BackendRow, UserRow};
use crate::db::models::delete_batch;
use crate::db::schema::{sessions, user_backends, users};
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;
use crate::model::{Backend, Session, SessionId, User, UserId};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions)]
// NULL for `None` (each column's default is NULL anyway): what lets SQLite take many rows in one INSERT.
#[diesel(treat_none_as_default_value = false)]
struct SessionRow {
    id: String,
    user_id: i32,
    created_at: NaiveDateTime,
    refreshed_at: NaiveDateTime,
    expires_at: NaiveDateTime,
    revoked_at: Option<NaiveDateTime>,
    ip_address: Option<String>,
    user_agent: Option<String>,
    proxy_secret_sha256: Option<String>,
}

impl From<SessionRow> for Session {
    fn from(r: SessionRow) -> Self {
        Self {
            id: SessionId::from(r.id),
            user_id: UserId(r.user_id),
            created_at: r.created_at.and_utc(),
            refreshed_at: r.refreshed_at.and_utc(),
            expires_at: r.expires_at.and_utc(),
            revoked_at: r.revoked_at.map(|t| t.and_utc()),
            ip_address: r.ip_address,
            user_agent: r.user_agent,
            proxy_secret_sha256: r.proxy_secret_sha256,
        }
    }
}

impl From<&Session> for SessionRow {
    fn from(s: &Session) -> Self {
        Self {
            id: s.id.as_str().to_owned(),
            user_id: s.user_id.0,
            created_at: s.created_at.naive_utc(),
            refreshed_at: s.refreshed_at.naive_utc(),
            expires_at: s.expires_at.naive_utc(),
            revoked_at: s.revoked_at.map(|t| t.naive_utc()),
            ip_address: s.ip_address.clone(),
            user_agent: s.user_agent.clone(),
            proxy_secret_sha256: s.proxy_secret_sha256.clone(),
        }
    }
}

pub async fn insert(conn: &mut DbConn, session: &Session) -> Result<()> {
    let row = SessionRow::from(session);
    db_run!(conn, "sessions::insert": {
        diesel::insert_into(sessions::table)
            .values(&row)
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

/// Inserts `sessions` in one multi-row statement (bulk seeding). SQLite's multi-row INSERT is
/// the sync connection's own (diesel-async does not pass it on).
pub async fn insert_many(conn: &mut DbConn, sessions: &[Session]) -> Result<usize> {
    let rows: Vec<SessionRow> = sessions.iter().map(SessionRow::from).collect();
    match conn {
        DbConn::Postgres(c) => {
            diesel::insert_into(sessions::table).values(&rows).execute(&mut **c).await.map_err(map_err)
        }
        DbConn::Sqlite(c) => c
            .spawn_blocking(move |c| {
                diesel::RunQueryDsl::execute(diesel::insert_into(sessions::table).values(&rows), c)
            })
            .await
            .map_err(map_err),
    }
}

/// Inserts the session unless one with its id exists (ended or not); true when it was inserted.
/// Concurrent inserts of one id insert it once.
pub async fn insert_if_absent(conn: &mut DbConn, session: &Session) -> Result<bool> {
    let row = SessionRow::from(session);
    db_run!(conn, "sessions::insert_if_absent": {
        diesel::insert_into(sessions::table)
            .values(&row)
            .on_conflict(sessions::id)
            .do_nothing()
            .execute(conn)
            .await
            .map(|n| n > 0)
            .map_err(map_err)
    })
}

/// The session with its user and backend, if it is unrevoked and unexpired at `now`.
/// One round trip: this runs for every authenticated request.
pub async fn find_live(
    conn: &mut DbConn,
    id: &SessionId,
    now: DateTime<Utc>,
) -> Result<Option<(Session, User, Option<Backend>)>> {
    let now = now.naive_utc();
    let row: Option<(SessionRow, UserRow, Option<BackendRow>)> = db_run!(conn, "sessions::find_live": {
        sessions::table
            .inner_join(users::table.left_join(user_backends::table))
            .filter(sessions::id.eq(id.as_str()))
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::expires_at.gt(now))
            .select((SessionRow::as_select(), UserRow::as_select(), Option::<BackendRow>::as_select()))
            .first(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(|(session, user, backend)| (session.into(), user.into(), backend.map(Into::into))))
}

pub async fn mark_refreshed(conn: &mut DbConn, id: &SessionId, now: DateTime<Utc>) -> Result<()> {
    let now = now.naive_utc();
    db_run!(conn, "sessions::mark_refreshed": {
        diesel::update(sessions::table.find(id.as_str()))
            .set(sessions::refreshed_at.eq(now))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

/// Revokes one live session; false when it was not live.
pub async fn revoke(conn: &mut DbConn, id: &SessionId, now: DateTime<Utc>) -> Result<bool> {
    let now = now.naive_utc();
    db_run!(conn, "sessions::revoke": {
        diesel::update(sessions::table.find(id.as_str()).filter(sessions::revoked_at.is_null()))
            .set(sessions::revoked_at.eq(now))
            .execute(conn)
            .await
            .map(|n| n > 0)
            .map_err(map_err)
    })
}

/// Revokes every live session of the user except `keep`; returns how many.
pub async fn revoke_all_for_user(
    conn: &mut DbConn,
    user_id: UserId,
    keep: Option<&SessionId>,
    now: DateTime<Utc>,
) -> Result<usize> {
    let keep = keep.map_or("", SessionId::as_str);
    let now = now.naive_utc();
    db_run!(conn, "sessions::revoke_all_for_user": {
        diesel::update(
            sessions::table
                .filter(sessions::user_id.eq(user_id.0))
                .filter(sessions::revoked_at.is_null())
                .filter(sessions::id.ne(keep)),
        )
        .set(sessions::revoked_at.eq(now))
        .execute(conn)
        .await
        .map_err(map_err)
    })
}

/// The user's live sessions, newest first.
pub async fn list_live_for_user(conn: &mut DbConn, user_id: UserId, now: DateTime<Utc>) -> Result<Vec<Session>> {
    let now = now.naive_utc();
    let rows: Vec<SessionRow> = db_run!(conn, "sessions::list_live_for_user": {
        sessions::table
            .filter(sessions::user_id.eq(user_id.0))
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::expires_at.gt(now))
            .order((sessions::created_at.desc(), sessions::id.asc()))
            .select(SessionRow::as_select())
            .load(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Revokes one live session of this user; false when there is none with that id.
pub async fn revoke_owned(conn: &mut DbConn, id: &SessionId, user_id: UserId, now: DateTime<Utc>) -> Result<bool> {
    let now = now.naive_utc();
    db_run!(conn, "sessions::revoke_owned": {
        diesel::update(
            sessions::table
                .find(id.as_str())
                .filter(sessions::user_id.eq(user_id.0))
                .filter(sessions::revoked_at.is_null())
                .filter(sessions::expires_at.gt(now)),
        )
        .set(sessions::revoked_at.eq(now))
        .execute(conn)
        .await
        .map(|n| n > 0)
        .map_err(map_err)
    })
}

/// Deletes up to `limit` sessions that ended before `before` (revoked or expired); returns how
/// many.
pub async fn purge_ended(conn: &mut DbConn, before: DateTime<Utc>, limit: i64) -> Result<usize> {
    let before = before.naive_utc();
    db_run!(conn, "sessions::purge_ended": {
        delete_batch!(conn, "sessions", "expires_at < {p}1 OR revoked_at < {p}1", limit, Timestamp = before)
    })
}

/// Live sessions of all users (a gauge).
pub async fn count_live(conn: &mut DbConn, now: DateTime<Utc>) -> Result<i64> {
    let now = now.naive_utc();
    db_run!(conn, "sessions::count_live": {
        sessions::table
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::expires_at.gt(now))
            .count()
            .get_result(conn)
            .await
            .map_err(map_err)
    })
}
