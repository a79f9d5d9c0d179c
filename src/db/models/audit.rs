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
    db_run!(conn, "audit::insert": {
        diesel::insert_into(audit_logs::table)
            .values(row)
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

/// Which audit rows to list; `None` matches anything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user_id: Option<i32>,
    pub action: Option<String>,
    pub since: Option<NaiveDateTime>,
    pub until: Option<NaiveDateTime>,
}

/// One page of matching rows, newest first, and the number of matches.
pub async fn query(conn: &mut DbConn, filter: &AuditFilter, limit: i64, offset: i64) -> Result<(Vec<AuditRow>, i64)> {
    // One boxed query per use: the filters apply to the page and to the count alike.
    macro_rules! filtered {
        () => {{
            let mut q = audit_logs::table.into_boxed();
            if let Some(id) = filter.user_id {
                q = q.filter(audit_logs::user_id.eq(id));
            }
            if let Some(action) = &filter.action {
                q = q.filter(audit_logs::action.eq(action));
            }
            if let Some(since) = filter.since {
                q = q.filter(audit_logs::created_at.ge(since));
            }
            if let Some(until) = filter.until {
                q = q.filter(audit_logs::created_at.lt(until));
            }
            q
        }};
    }
    db_run!(conn, "audit::query": {
        let rows = filtered!()
            .order(audit_logs::id.desc())
            .limit(limit)
            .offset(offset)
            .select(AuditRow::as_select())
            .load(conn)
            .await
            .map_err(map_err)?;
        let total = filtered!().count().get_result(conn).await.map_err(map_err)?;
        Ok((rows, total))
    })
}

/// Rows about `user_id` (or all when `None`), newest first.
pub async fn list_for_user(conn: &mut DbConn, user_id: Option<i32>, limit: i64) -> Result<Vec<AuditRow>> {
    let filter = AuditFilter { user_id, ..Default::default() };
    query(conn, &filter, limit, 0).await.map(|(rows, _)| rows)
}

/// Failed logins from `ip` since `since` (the suspicious-address alert).
pub async fn count_failed_logins_from(conn: &mut DbConn, ip: &str, since: NaiveDateTime) -> Result<i64> {
    db_run!(conn, "audit::count_failed_logins_from": {
        audit_logs::table
            .filter(audit_logs::ip_address.eq(ip))
            .filter(audit_logs::created_at.ge(since))
            .filter(audit_logs::action.eq("login_failed"))
            .count()
            .get_result(conn)
            .await
            .map_err(map_err)
    })
}
