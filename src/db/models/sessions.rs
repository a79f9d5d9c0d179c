//! The `sessions` table: every JWT names one; a session ends when revoked or at `expires_at`.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{BackendRow, UserRow};
use crate::db::schema::{sessions, user_backends, users};
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions)]
pub struct SessionRow {
    pub id: String,
    pub user_id: i32,
    pub created_at: NaiveDateTime,
    pub refreshed_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub revoked_at: Option<NaiveDateTime>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
}

pub async fn insert(conn: &mut DbConn, row: &SessionRow) -> Result<()> {
    db_run!(conn, "sessions::insert": {
        diesel::insert_into(sessions::table)
            .values(row)
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

/// The session with its user and backend, if it is unrevoked and unexpired at `now`.
/// One round trip: this runs for every authenticated request.
pub async fn find_live(
    conn: &mut DbConn,
    id: &str,
    now: NaiveDateTime,
) -> Result<Option<(SessionRow, UserRow, Option<BackendRow>)>> {
    db_run!(conn, "sessions::find_live": {
        sessions::table
            .inner_join(users::table.left_join(user_backends::table))
            .filter(sessions::id.eq(id))
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::expires_at.gt(now))
            .select((SessionRow::as_select(), UserRow::as_select(), Option::<BackendRow>::as_select()))
            .first(conn)
            .await
            .optional()
            .map_err(map_err)
    })
}

pub async fn mark_refreshed(conn: &mut DbConn, id: &str, now: NaiveDateTime) -> Result<()> {
    db_run!(conn, "sessions::mark_refreshed": {
        diesel::update(sessions::table.find(id))
            .set(sessions::refreshed_at.eq(now))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

/// Revokes one live session; false when it was not live.
pub async fn revoke(conn: &mut DbConn, id: &str, now: NaiveDateTime) -> Result<bool> {
    db_run!(conn, "sessions::revoke": {
        diesel::update(sessions::table.find(id).filter(sessions::revoked_at.is_null()))
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
    user_id: i32,
    keep: Option<&str>,
    now: NaiveDateTime,
) -> Result<usize> {
    let keep = keep.unwrap_or("");
    db_run!(conn, "sessions::revoke_all_for_user": {
        diesel::update(
            sessions::table
                .filter(sessions::user_id.eq(user_id))
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
pub async fn list_live_for_user(conn: &mut DbConn, user_id: i32, now: NaiveDateTime) -> Result<Vec<SessionRow>> {
    db_run!(conn, "sessions::list_live_for_user": {
        sessions::table
            .filter(sessions::user_id.eq(user_id))
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::expires_at.gt(now))
            .order((sessions::created_at.desc(), sessions::id.asc()))
            .select(SessionRow::as_select())
            .load(conn)
            .await
            .map_err(map_err)
    })
}

/// Revokes one live session of this user; false when there is none with that id.
pub async fn revoke_owned(conn: &mut DbConn, id: &str, user_id: i32, now: NaiveDateTime) -> Result<bool> {
    db_run!(conn, "sessions::revoke_owned": {
        diesel::update(
            sessions::table
                .find(id)
                .filter(sessions::user_id.eq(user_id))
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

/// Deletes sessions that ended before `before` (revoked or expired).
pub async fn purge_ended(conn: &mut DbConn, before: NaiveDateTime) -> Result<usize> {
    db_run!(conn, "sessions::purge_ended": {
        diesel::delete(sessions::table.filter(sessions::expires_at.lt(before).or(sessions::revoked_at.lt(before))))
            .execute(conn)
            .await
            .map_err(map_err)
    })
}

/// Live sessions of all users (a gauge).
pub async fn count_live(conn: &mut DbConn, now: NaiveDateTime) -> Result<i64> {
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
