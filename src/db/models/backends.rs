//! The `user_backends` table: one backend per user, bearer token Fernet-encrypted.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::schema::user_backends;
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = user_backends)]
pub struct BackendRow {
    pub id: i32,
    pub user_id: i32,
    pub instagram_username: String,
    pub api_base_url: String,
    pub bearer_token_encrypted: String,
    pub is_active: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = user_backends)]
pub struct NewBackendRow<'a> {
    pub user_id: i32,
    pub instagram_username: &'a str,
    pub api_base_url: &'a str,
    pub bearer_token_encrypted: &'a str,
    pub is_active: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// Creates or replaces the user's backend (the table holds one per user).
pub async fn upsert(conn: &mut DbConn, row: &NewBackendRow<'_>) -> Result<BackendRow> {
    db_run!(conn, "backends::upsert": {
        diesel::insert_into(user_backends::table)
            .values(row)
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
    })
}

pub async fn find_for_user(conn: &mut DbConn, user_id: i32) -> Result<Option<BackendRow>> {
    db_run!(conn, "backends::find_for_user": {
        user_backends::table
            .filter(user_backends::user_id.eq(user_id))
            .select(BackendRow::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(map_err)
    })
}

pub async fn delete_for_user(conn: &mut DbConn, user_id: i32) -> Result<bool> {
    db_run!(conn, "backends::delete_for_user": {
        diesel::delete(user_backends::table.filter(user_backends::user_id.eq(user_id)))
            .execute(conn)
            .await
            .map(|n| n > 0)
            .map_err(map_err)
    })
}

/// Every backend's (id, encrypted token), for key rotation.
pub async fn all_tokens(conn: &mut DbConn) -> Result<Vec<(i32, String)>> {
    db_run!(conn, "backends::all_tokens": {
        user_backends::table
            .select((user_backends::id, user_backends::bearer_token_encrypted))
            .order(user_backends::id.asc())
            .load(conn)
            .await
            .map_err(map_err)
    })
}

/// The newest `limit` stored tokens, by user id (the start-up key check).
pub async fn sample_tokens(conn: &mut DbConn, limit: i64) -> Result<Vec<(i32, String)>> {
    db_run!(conn, "backends::sample_tokens": {
        user_backends::table
            .select((user_backends::user_id, user_backends::bearer_token_encrypted))
            .order(user_backends::updated_at.desc())
            .limit(limit)
            .load(conn)
            .await
            .map_err(map_err)
    })
}

pub async fn set_token(conn: &mut DbConn, id: i32, encrypted: &str) -> Result<()> {
    db_run!(conn, "backends::set_token": {
        diesel::update(user_backends::table.find(id))
            .set(user_backends::bearer_token_encrypted.eq(encrypted))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}
