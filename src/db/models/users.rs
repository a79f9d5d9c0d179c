//! The `users` table.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{BackendRow, lower};
use crate::db::limit::LimitDsl;
use crate::db::schema::{user_backends, users};
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;
use crate::model::{NewUserRecord, Role, User, UserEdit, UserId, UserWithBackend};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub(super) struct UserRow {
    id: i32,
    username: String,
    email: String,
    password_hash: String,
    role: String,
    is_active: bool,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    last_login: Option<NaiveDateTime>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        Self {
            id: UserId(r.id),
            username: r.username,
            email: r.email,
            password_hash: r.password_hash,
            role: role_from_db(&r.role),
            is_active: r.is_active,
            created_at: r.created_at.and_utc(),
            updated_at: r.updated_at.and_utc(),
            last_login: r.last_login.map(|t| t.and_utc()),
        }
    }
}

/// The column holds "admin" or "user" (a CHECK constraint); anything else grants nothing.
fn role_from_db(value: &str) -> Role {
    if value == "admin" { Role::Admin } else { Role::User }
}

/// A user row with its backend row, as the domain sees them.
pub(super) fn with_backend((user, backend): (UserRow, Option<BackendRow>)) -> UserWithBackend {
    (user.into(), backend.map(Into::into))
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
// NULL for `None` (each column's default is NULL anyway): what lets SQLite take many rows in one INSERT.
#[diesel(treat_none_as_default_value = false)]
struct NewUserRow<'a> {
    username: &'a str,
    email: &'a str,
    password_hash: &'a str,
    role: &'a str,
    is_active: bool,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

/// An edit; `None` leaves a column as it is.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = users)]
struct UserChanges<'a> {
    email: Option<&'a str>,
    role: Option<&'a str>,
    is_active: Option<bool>,
    password_hash: Option<&'a str>,
    updated_at: Option<NaiveDateTime>,
}

fn new_row(new: &NewUserRecord) -> NewUserRow<'_> {
    NewUserRow {
        username: &new.username,
        email: &new.email,
        password_hash: &new.password_hash,
        role: new.role.as_str(),
        is_active: true,
        created_at: new.created_at.naive_utc(),
        updated_at: new.created_at.naive_utc(),
    }
}

pub async fn insert(conn: &mut DbConn, new: &NewUserRecord) -> Result<User> {
    let row = new_row(new);
    let row = db_run!(conn, "users::insert": {
        diesel::insert_into(users::table)
            .values(&row)
            .returning(UserRow::as_returning())
            .get_result(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(row.into())
}

fn new_rows(records: &[NewUserRecord]) -> Vec<NewUserRow<'_>> {
    records.iter().map(new_row).collect()
}

/// Inserts `records` in one multi-row statement (bulk seeding); returns their ids, in order.
/// SQLite's multi-row INSERT is the sync connection's own (diesel-async does not pass it on).
pub async fn insert_many(conn: &mut DbConn, records: &[NewUserRecord]) -> Result<Vec<UserId>> {
    let ids: Vec<i32> = match conn {
        DbConn::Postgres(c) => diesel::insert_into(users::table)
            .values(&new_rows(records))
            .returning(users::id)
            .get_results(&mut **c)
            .await
            .map_err(map_err)?,
        DbConn::Sqlite(c) => {
            let records = records.to_vec();
            c.spawn_blocking(move |c| {
                diesel::RunQueryDsl::get_results(
                    diesel::insert_into(users::table).values(&new_rows(&records)).returning(users::id),
                    c,
                )
            })
            .await
            .map_err(map_err)?
        }
    };
    Ok(ids.into_iter().map(UserId).collect())
}

pub async fn find(conn: &mut DbConn, id: UserId) -> Result<Option<UserWithBackend>> {
    let row = db_run!(conn, "users::find": {
        users::table
            .left_join(user_backends::table)
            .filter(users::id.eq(id.0))
            .select((UserRow::as_select(), Option::<BackendRow>::as_select()))
            .first(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(with_backend))
}

/// Looks a user up by username or email, case-insensitively (both are unique that way).
pub async fn find_by_login(conn: &mut DbConn, login: &str) -> Result<Option<UserWithBackend>> {
    let login = login.to_lowercase();
    let row = db_run!(conn, "users::find_by_login": {
        users::table
            .left_join(user_backends::table)
            .filter(lower(users::username).eq(&login).or(lower(users::email).eq(&login)))
            .select((UserRow::as_select(), Option::<BackendRow>::as_select()))
            .first(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(with_backend))
}

/// Up to `limit` users by id, skipping `offset`, past id `after` when given (keyset paging).
/// The limit is written into the statement (`db::limit`):
/// PostgreSQL then keeps one plan for it at any size instead of planning every page afresh.
pub async fn list(conn: &mut DbConn, limit: i64, offset: i64, after: Option<i64>) -> Result<Vec<UserWithBackend>> {
    // Ids are 32-bit: past a larger one there is nothing.
    let after = after.map(|id| i32::try_from(id).unwrap_or(i32::MAX));
    let rows = db_run!(conn, "users::list": {
        match after {
            None => {
                users::table
                    .left_join(user_backends::table)
                    .order(users::id.asc())
                    .select((UserRow::as_select(), Option::<BackendRow>::as_select()))
                    .limited(limit, offset)
                    .load(conn)
                    .await
            }
            // The bound on the backends too: PostgreSQL merge-joins the two id-ordered indexes
            // and would otherwise read the backends' from the first (90,000 entries to reach a
            // page at 90,000; measured 21 ms against 0.07 ms).
            Some(after) => {
                let backends = user_backends::table
                    .on(user_backends::user_id.eq(users::id).and(user_backends::user_id.gt(after)));
                users::table
                    .left_join(backends)
                    .filter(users::id.gt(after))
                    .order(users::id.asc())
                    .select((UserRow::as_select(), Option::<BackendRow>::as_select()))
                    .limited(limit, offset)
                    .load(conn)
                    .await
            }
        }
        .map_err(map_err)
    })?;
    Ok(rows.into_iter().map(with_backend).collect())
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

/// Applies `edit`; returns false when no such user.
pub async fn update(conn: &mut DbConn, id: UserId, edit: &UserEdit) -> Result<bool> {
    let changes = UserChanges {
        email: edit.email.as_deref(),
        role: edit.role.map(Role::as_str),
        is_active: edit.is_active,
        password_hash: edit.password_hash.as_deref(),
        updated_at: Some(edit.updated_at.naive_utc()),
    };
    db_run!(conn, "users::update": {
        diesel::update(users::table.find(id.0))
            .set(&changes)
            .execute(conn)
            .await
            .map(|n| n > 0)
            .map_err(map_err)
    })
}

pub async fn set_last_login(conn: &mut DbConn, id: UserId, at: DateTime<Utc>) -> Result<()> {
    db_run!(conn, "users::set_last_login": {
        diesel::update(users::table.find(id.0))
            .set(users::last_login.eq(at.naive_utc()))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

/// Deletes the user; backends and sessions cascade, audit rows keep `user_id = NULL`.
pub async fn delete(conn: &mut DbConn, id: UserId) -> Result<bool> {
    db_run!(conn, "users::delete": {
        diesel::delete(users::table.find(id.0))
            .execute(conn)
            .await
            .map(|n| n > 0)
            .map_err(map_err)
    })
}

/// Swaps the password hash only if it is still `old` (a concurrent change wins).
pub async fn replace_password_hash(conn: &mut DbConn, id: UserId, old: &str, new: &str) -> Result<bool> {
    db_run!(conn, "users::replace_password_hash": {
        diesel::update(users::table.find(id.0).filter(users::password_hash.eq(old)))
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
pub async fn lock(conn: &mut DbConn, id: UserId) -> Result<bool> {
    match conn {
        DbConn::Postgres(c) => users::table
            .find(id.0)
            .select(users::id)
            .for_no_key_update()
            .first::<i32>(&mut **c)
            .await
            .optional()
            .map(|row| row.is_some())
            .map_err(map_err),
        DbConn::Sqlite(c) => users::table
            .find(id.0)
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
