//! The `user_backends` table: one backend per user, bearer token Fernet-encrypted.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::schema::user_backends;
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;
use crate::model::{Backend, BackendRecord, UserId};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = user_backends)]
pub(super) struct BackendRow {
    user_id: i32,
    instagram_username: String,
    api_base_url: String,
    bearer_token_encrypted: String,
    updated_at: NaiveDateTime,
}

impl From<BackendRow> for Backend {
    fn from(r: BackendRow) -> Self {
        Self {
            user_id: UserId(r.user_id),
            instagram_username: r.instagram_username,
            api_base_url: r.api_base_url,
            encrypted_token: r.bearer_token_encrypted,
            updated_at: r.updated_at.and_utc(),
        }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = user_backends)]
// NULL for `None` (each column's default is NULL anyway): what lets SQLite take many rows in one INSERT.
#[diesel(treat_none_as_default_value = false)]
struct NewBackendRow<'a> {
    user_id: i32,
    instagram_username: &'a str,
    api_base_url: &'a str,
    bearer_token_encrypted: &'a str,
    is_active: bool,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

/// Creates or replaces the user's backend (the table holds one per user).
pub async fn upsert(conn: &mut DbConn, record: &BackendRecord) -> Result<Backend> {
    let at = record.updated_at.naive_utc();
    let row = NewBackendRow {
        user_id: record.user_id.0,
        instagram_username: &record.instagram_username,
        api_base_url: &record.api_base_url,
        bearer_token_encrypted: &record.encrypted_token,
        is_active: true,
        created_at: at,
        updated_at: at,
    };
    let stored = db_run!(conn, "backends::upsert": {
        diesel::insert_into(user_backends::table)
            .values(&row)
            .on_conflict(user_backends::user_id)
            .do_update()
            .set((
                user_backends::instagram_username.eq(row.instagram_username),
                user_backends::api_base_url.eq(row.api_base_url),
                user_backends::bearer_token_encrypted.eq(row.bearer_token_encrypted),
                user_backends::is_active.eq(true),
                user_backends::updated_at.eq(row.updated_at),
            ))
            .returning(BackendRow::as_returning())
            .get_result(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(stored.into())
}

fn new_rows(records: &[BackendRecord]) -> Vec<NewBackendRow<'_>> {
    records
        .iter()
        .map(|record| NewBackendRow {
            user_id: record.user_id.0,
            instagram_username: &record.instagram_username,
            api_base_url: &record.api_base_url,
            bearer_token_encrypted: &record.encrypted_token,
            is_active: true,
            created_at: record.updated_at.naive_utc(),
            updated_at: record.updated_at.naive_utc(),
        })
        .collect()
}

/// Inserts the backends of users that have none, in one multi-row statement (bulk seeding).
/// SQLite's multi-row INSERT is the sync connection's own (diesel-async does not pass it on).
pub async fn insert_many(conn: &mut DbConn, records: &[BackendRecord]) -> Result<usize> {
    match conn {
        DbConn::Postgres(c) => diesel::insert_into(user_backends::table)
            .values(&new_rows(records))
            .execute(&mut **c)
            .await
            .map_err(map_err),
        DbConn::Sqlite(c) => {
            let records = records.to_vec();
            c.spawn_blocking(move |c| {
                diesel::RunQueryDsl::execute(diesel::insert_into(user_backends::table).values(&new_rows(&records)), c)
            })
            .await
            .map_err(map_err)
        }
    }
}

pub async fn find_for_user(conn: &mut DbConn, user_id: UserId) -> Result<Option<Backend>> {
    let row = db_run!(conn, "backends::find_for_user": {
        user_backends::table
            .filter(user_backends::user_id.eq(user_id.0))
            .select(BackendRow::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(Into::into))
}

pub async fn delete_for_user(conn: &mut DbConn, user_id: UserId) -> Result<bool> {
    db_run!(conn, "backends::delete_for_user": {
        diesel::delete(user_backends::table.filter(user_backends::user_id.eq(user_id.0)))
            .execute(conn)
            .await
            .map(|n| n > 0)
            .map_err(map_err)
    })
}

/// Every stored token, encrypted, by user, for key rotation.
pub async fn all_tokens(conn: &mut DbConn) -> Result<Vec<(UserId, String)>> {
    let rows: Vec<(i32, String)> = db_run!(conn, "backends::all_tokens": {
        user_backends::table
            .select((user_backends::user_id, user_backends::bearer_token_encrypted))
            .order(user_backends::user_id.asc())
            .load(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(rows.into_iter().map(|(id, token)| (UserId(id), token)).collect())
}

/// The newest `limit` stored tokens, by user (the start-up key check).
pub async fn sample_tokens(conn: &mut DbConn, limit: i64) -> Result<Vec<(UserId, String)>> {
    let rows: Vec<(i32, String)> = db_run!(conn, "backends::sample_tokens": {
        user_backends::table
            .select((user_backends::user_id, user_backends::bearer_token_encrypted))
            .order(user_backends::updated_at.desc())
            .limit(limit)
            .load(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(rows.into_iter().map(|(id, token)| (UserId(id), token)).collect())
}

/// Replaces the user's stored token (key rotation; the backend is otherwise unchanged).
pub async fn set_token(conn: &mut DbConn, user_id: UserId, encrypted: &str) -> Result<()> {
    db_run!(conn, "backends::set_token": {
        diesel::update(user_backends::table.filter(user_backends::user_id.eq(user_id.0)))
            .set(user_backends::bearer_token_encrypted.eq(encrypted))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}
