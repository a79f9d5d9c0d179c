//! The `users` table.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::BackendRow;
use crate::db::schema::{user_backends, users};
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;

diesel::define_sql_function!(fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text);

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub id: i32,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub role: String,
    pub is_active: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub last_login: Option<NaiveDateTime>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUserRow<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub role: &'a str,
    pub is_active: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// Admin edits; `None` leaves a column as it is.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = users)]
pub struct UserChanges {
    pub email: Option<String>,
    pub role: Option<String>,
    pub is_active: Option<bool>,
    pub password_hash: Option<String>,
    pub updated_at: Option<NaiveDateTime>,
}

pub type UserWithBackend = (UserRow, Option<BackendRow>);

pub async fn insert(conn: &mut DbConn, row: &NewUserRow<'_>) -> Result<UserRow> {
    db_run!(conn, "users::insert": {
        diesel::insert_into(users::table)
            .values(row)
            .returning(UserRow::as_returning())
            .get_result(conn)
            .await
            .map_err(map_err)
    })
}

pub async fn find(conn: &mut DbConn, id: i32) -> Result<Option<UserWithBackend>> {
    db_run!(conn, "users::find": {
        users::table
            .left_join(user_backends::table)
            .filter(users::id.eq(id))
            .select((UserRow::as_select(), Option::<BackendRow>::as_select()))
            .first(conn)
            .await
            .optional()
            .map_err(map_err)
    })
}

/// Looks a user up by username or email, case-insensitively (both are unique that way).
pub async fn find_by_login(conn: &mut DbConn, login: &str) -> Result<Option<UserWithBackend>> {
    let login = login.to_lowercase();
    db_run!(conn, "users::find_by_login": {
        users::table
            .left_join(user_backends::table)
            .filter(lower(users::username).eq(&login).or(lower(users::email).eq(&login)))
            .select((UserRow::as_select(), Option::<BackendRow>::as_select()))
            .first(conn)
            .await
            .optional()
            .map_err(map_err)
    })
}

pub async fn list(conn: &mut DbConn, limit: i64, offset: i64) -> Result<Vec<UserWithBackend>> {
    db_run!(conn, "users::list": {
        users::table
            .left_join(user_backends::table)
            .order(users::id.asc())
            .limit(limit)
            .offset(offset)
            .select((UserRow::as_select(), Option::<BackendRow>::as_select()))
            .load(conn)
            .await
            .map_err(map_err)
    })
}

pub async fn count(conn: &mut DbConn) -> Result<i64> {
    db_run!(conn, "users::count": {
        users::table.count().get_result(conn).await.map_err(map_err)
    })
}

pub async fn count_active_admins(conn: &mut DbConn) -> Result<i64> {
    db_run!(conn, "users::count_active_admins": {
        users::table
            .filter(users::role.eq("admin").and(users::is_active.eq(true)))
            .count()
            .get_result(conn)
            .await
            .map_err(map_err)
    })
}

/// Applies `changes`; returns false when no such user.
pub async fn update(conn: &mut DbConn, id: i32, changes: &UserChanges) -> Result<bool> {
    db_run!(conn, "users::update": {
        diesel::update(users::table.find(id))
            .set(changes)
            .execute(conn)
            .await
            .map(|n| n > 0)
            .map_err(map_err)
    })
}

pub async fn set_last_login(conn: &mut DbConn, id: i32, at: NaiveDateTime) -> Result<()> {
    db_run!(conn, "users::set_last_login": {
        diesel::update(users::table.find(id))
            .set(users::last_login.eq(at))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

/// Deletes the user; backends and sessions cascade, audit rows keep `user_id = NULL`.
pub async fn delete(conn: &mut DbConn, id: i32) -> Result<bool> {
    db_run!(conn, "users::delete": {
        diesel::delete(users::table.find(id))
            .execute(conn)
            .await
            .map(|n| n > 0)
            .map_err(map_err)
    })
}

/// Swaps the password hash only if it is still `old` (a concurrent change wins).
pub async fn replace_password_hash(conn: &mut DbConn, id: i32, old: &str, new: &str) -> Result<bool> {
    db_run!(conn, "users::replace_password_hash": {
        diesel::update(users::table.find(id).filter(users::password_hash.eq(old)))
            .set(users::password_hash.eq(new))
            .execute(conn)
            .await
            .map(|n| n > 0)
            .map_err(map_err)
    })
}

/// Locks the user's row until the transaction ends, so that every change to one user is applied
/// in one order; false when there is no such user. On PostgreSQL a row lock (NO KEY UPDATE: it
/// does not block rows that merely reference the user); on SQLite the write transaction already
/// holds the database's only write lock, so this only checks that the user exists.
pub async fn lock(conn: &mut DbConn, id: i32) -> Result<bool> {
    match conn {
        DbConn::Postgres(c) => users::table
            .find(id)
            .select(users::id)
            .for_no_key_update()
            .first::<i32>(&mut **c)
            .await
            .optional()
            .map(|row| row.is_some())
            .map_err(map_err),
        DbConn::Sqlite(c) => users::table
            .find(id)
            .select(users::id)
            .first::<i32>(&mut **c)
            .await
            .optional()
            .map(|row| row.is_some())
            .map_err(map_err),
    }
}

/// Serialises the changes that could leave no active admin (demote, deactivate, delete), until
/// the transaction ends. Taken before any row lock, so it cannot join a lock cycle. On SQLite the
/// write lock already serialises every writer.
pub async fn lock_admin_set(conn: &mut DbConn) -> Result<()> {
    /// An arbitrary, fixed key of PostgreSQL's advisory locks for "the set of active admins".
    const ADMIN_SET_LOCK: i64 = 0x1a57_ad31;
    match conn {
        DbConn::Postgres(c) => diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(ADMIN_SET_LOCK)
            .execute(&mut **c)
            .await
            .map(drop)
            .map_err(map_err),
        DbConn::Sqlite(_) => Ok(()),
    }
}
