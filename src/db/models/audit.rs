//! The `audit_logs` table. Rows outlive their user (`user_id` becomes NULL on delete).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::schema::audit_logs;
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_logs)]
pub struct AuditRow {
    pub id: i64,
    pub user_id: Option<i32>,
    pub actor_id: Option<i32>,
    pub action: String,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub metadata: String,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = audit_logs)]
pub struct NewAuditRow {
    pub user_id: Option<i32>,
    pub actor_id: Option<i32>,
    pub action: String,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub metadata: String,
    pub created_at: NaiveDateTime,
}

pub async fn insert(conn: &mut DbConn, row: &NewAuditRow) -> Result<()> {
    db_run!(conn: {
        diesel::insert_into(audit_logs::table)
            .values(row)
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

/// Rows about `user_id` (or all when `None`), newest first.
pub async fn list_for_user(
    conn: &mut DbConn,
    user_id: Option<i32>,
    limit: i64,
) -> Result<Vec<AuditRow>> {
    db_run!(conn: {
        let mut query = audit_logs::table.select(AuditRow::as_select()).into_boxed();
        if let Some(id) = user_id {
            query = query.filter(audit_logs::user_id.eq(id));
        }
        query
            .order(audit_logs::id.desc())
            .limit(limit)
            .load(conn)
            .await
            .map_err(map_err)
    })
}
