//! The `audit_logs` table. Rows outlive their user (`user_id` becomes NULL on delete).

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Timestamp;
use diesel_async::RunQueryDsl;

use crate::db::limit::LimitDsl;
use crate::db::models::delete_batch_sql;
use crate::db::schema::audit_logs;
use crate::db::{DbConn, map_err, row_less};
use crate::db_run;
use crate::error::Result;
use crate::model::{AuditEntry, AuditQuery, UserId};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_logs)]
struct AuditRow {
    id: i64,
    user_id: Option<i32>,
    actor_id: Option<i32>,
    action: String,
    ip_address: Option<String>,
    user_agent: Option<String>,
    metadata: String,
    created_at: NaiveDateTime,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
        Self {
            id: r.id,
            user_id: r.user_id.map(UserId),
            actor_id: r.actor_id.map(UserId),
            action: r.action,
            ip_address: r.ip_address,
            user_agent: r.user_agent,
            // Written by `insert` as a JSON object; an unreadable one (edited by hand) shows empty.
            metadata: serde_json::from_str(&r.metadata).unwrap_or_else(|_| serde_json::json!({})),
            created_at: r.created_at.and_utc(),
        }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = audit_logs)]
// NULL for `None` (each column's default is NULL anyway): what lets SQLite take many rows in one INSERT.
#[diesel(treat_none_as_default_value = false)]
struct NewAuditRow<'a> {
    user_id: Option<i32>,
    actor_id: Option<i32>,
    action: &'a str,
    ip_address: Option<&'a str>,
    user_agent: Option<&'a str>,
    metadata: String,
    created_at: NaiveDateTime,
}

/// Stores `entry` (its `id` is assigned by the database).
pub async fn insert(conn: &mut DbConn, entry: &AuditEntry) -> Result<()> {
    let row = new_row(entry);
    db_run!(conn, "audit::insert": {
        diesel::insert_into(audit_logs::table)
            .values(&row)
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

fn new_row(entry: &AuditEntry) -> NewAuditRow<'_> {
    NewAuditRow {
        user_id: entry.user_id.map(UserId::get),
        actor_id: entry.actor_id.map(UserId::get),
        action: &entry.action,
        ip_address: entry.ip_address.as_deref(),
        user_agent: entry.user_agent.as_deref(),
        metadata: entry.metadata.to_string(),
        created_at: entry.created_at.naive_utc(),
    }
}

/// Stores `entries` in one multi-row statement (bulk seeding; their `id`s are assigned).
/// SQLite's multi-row INSERT is the sync connection's own (diesel-async does not pass it on).
pub async fn insert_many(conn: &mut DbConn, entries: &[AuditEntry]) -> Result<usize> {
    match conn {
        DbConn::Postgres(c) => {
            let rows: Vec<NewAuditRow<'_>> = entries.iter().map(new_row).collect();
            diesel::insert_into(audit_logs::table).values(&rows).execute(&mut **c).await.map_err(map_err)
        }
        DbConn::Sqlite(c) => {
            let entries = entries.to_vec();
            c.spawn_blocking(move |c| {
                let rows: Vec<NewAuditRow<'_>> = entries.iter().map(new_row).collect();
                diesel::RunQueryDsl::execute(diesel::insert_into(audit_logs::table).values(&rows), c)
            })
            .await
            .map_err(map_err)
        }
    }
}

/// Whether an event among `actions` about `user_id` was written at or after `since`.
pub async fn any_since(conn: &mut DbConn, user_id: UserId, actions: &[&str], since: DateTime<Utc>) -> Result<bool> {
    let since = since.naive_utc();
    let found: i64 = db_run!(conn, "audit::any_since": {
        audit_logs::table
            .filter(audit_logs::user_id.eq(user_id.0))
            .filter(audit_logs::action.eq_any(actions.iter().copied()))
            .filter(audit_logs::created_at.ge(since))
            .count()
            .get_result(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(found > 0)
}

/// Deletes up to `limit` of the oldest entries written before `before` and not before `from`;
/// returns how many, and the newest time among them: the next batch's `from`.
///
/// Starting each batch where the last one ended matters at size: the entries a batch deletes
/// stay in the (created_at, id) index until a vacuum, and a batch that began at the log's start
/// read past all of them (a million-row purge then read some 6,000 dead index pages a batch by
/// its end, on PostgreSQL). Entries are written at the time of writing, so none appears behind
/// `from` once `before` is past.
pub async fn purge_before(
    conn: &mut DbConn,
    before: DateTime<Utc>,
    from: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<(usize, Option<DateTime<Utc>>)> {
    #[derive(QueryableByName)]
    struct Gone {
        #[diesel(sql_type = Timestamp)]
        created_at: NaiveDateTime,
    }
    let before = before.naive_utc();
    // Year 1: before anything, and written alike by both databases.
    let first = chrono::NaiveDate::from_ymd_opt(1, 1, 1).unwrap_or_default().and_time(chrono::NaiveTime::MIN);
    let from = from.map_or(first, |f| f.naive_utc());
    let gone: Vec<Gone> = db_run!(conn, "audit::purge_before": {
        let pred = "created_at < {p}1 AND created_at >= {p}2";
        let sql = delete_batch_sql(&*conn, "audit_logs", pred, " ORDER BY created_at", limit) + " RETURNING created_at";
        diesel::sql_query(sql)
            .bind::<Timestamp, _>(before)
            .bind::<Timestamp, _>(from)
            .load(conn)
            .await
            .map_err(map_err)
    })?;
    let newest = gone.iter().map(|g| g.created_at).max().map(|t| t.and_utc());
    Ok((gone.len(), newest))
}

/// One page of matching entries, newest first, and the number of matches.
pub async fn query(conn: &mut DbConn, filter: &AuditQuery, limit: i64, offset: i64) -> Result<(Vec<AuditEntry>, i64)> {
    let (rows, total) = page(conn, filter, limit, offset, None, true).await?;
    Ok((rows, total.unwrap_or_default()))
}

/// Up to `limit` matching entries, newest first, skipping `offset`, past the entry `after` when
/// given (keyset paging), and the number of matches in all pages when `count`. A query that
/// bounds the time is listed by (created_at, id), which the index on both reads from the
/// range's end, and `after` is then an entry's id and time; otherwise by id, and `after` its id.
/// The limit is written into the statement, as ListUsers' (`db::limit`): with `LIMIT $n`
/// PostgreSQL planned the pages by action afresh on every call at a million rows.
///
/// A first or keyset page of a time range and nothing else bounds its statement above only, by
/// one comparison, and ends itself at the range's start: read from above, the statement still
/// reads `limit` rows at most, and PostgreSQL keeps one plan for it. With two bounds on the time
/// its generic estimate of an unknown range (0.5 % of the table) priced the backward index scan
/// above a custom plan's at a million rows, and it planned every call afresh (0.1 ms, more than
/// the scan) where it reused the plan at a few thousand rows. With a user or an action as well,
/// the range stays in the statement: its start is what ends an index scan that finds few such
/// rows.
pub async fn page(
    conn: &mut DbConn,
    filter: &AuditQuery,
    limit: i64,
    offset: i64,
    after: Option<(i64, Option<DateTime<Utc>>)>,
    count: bool,
) -> Result<(Vec<AuditEntry>, Option<i64>)> {
    let (since, until) = (filter.since.map(|t| t.naive_utc()), filter.until.map(|t| t.naive_utc()));
    let by_time = filter.by_time();
    // Below which (created_at, id) a keyset page by time goes on.
    let below = match after {
        Some((id, Some(at))) if by_time => Some((at.naive_utc(), id)),
        _ => None,
    };
    // (An offset page keeps the range's start, where a scan past the range's last page stops.)
    let time_alone = by_time && filter.user_id.is_none() && filter.action.is_none() && offset == 0;
    // The page's statement's bounds on the time: for a range alone, the stricter of its end and
    // the keyset's, and no start.
    let (page_since, page_until, below) = match (until, below) {
        _ if !time_alone => (since, until, below),
        (Some(end), Some((at, _))) if end <= at => (None, until, None),
        (Some(_), Some(_)) => (None, None, below),
        _ => (None, until, below),
    };
    // One boxed query per use: the filters apply to the page and to the count alike.
    macro_rules! filtered {
        ($since:expr, $until:expr) => {{
            let mut q = audit_logs::table.into_boxed();
            if let Some(id) = filter.user_id {
                q = q.filter(audit_logs::user_id.eq(id.0));
            }
            if let Some(action) = &filter.action {
                q = q.filter(audit_logs::action.eq(action));
            }
            if let Some(since) = $since {
                q = q.filter(audit_logs::created_at.ge(since));
            }
            if let Some(until) = $until {
                q = q.filter(audit_logs::created_at.lt(until));
            }
            q
        }};
    }
    let (mut rows, total): (Vec<AuditRow>, Option<i64>) = db_run!(conn, "audit::page": {
        let mut page = filtered!(page_since, page_until);
        page = if by_time {
            page.order((audit_logs::created_at.desc(), audit_logs::id.desc()))
        } else {
            page.order(audit_logs::id.desc())
        };
        match (below, after) {
            (Some((at, id)), _) => {
                let value = (at.into_sql::<Timestamp>(), id.into_sql::<diesel::sql_types::BigInt>());
                page = page.filter(row_less((audit_logs::created_at, audit_logs::id), value));
            }
            (None, Some((id, _))) if !by_time => page = page.filter(audit_logs::id.lt(id)),
            _ => {}
        }
        let rows = page.select(AuditRow::as_select()).limited(limit, offset).load(conn).await.map_err(map_err)?;
        let total =
            if count { Some(filtered!(since, until).count().get_result(conn).await.map_err(map_err)?) } else { None };
        Ok((rows, total))
    })?;
    if let Some(since) = since.filter(|_| page_since.is_none()) {
        // Newest first: the rows before the range's start are the page's last ones.
        rows.retain(|r| r.created_at >= since);
    }
    Ok((rows.into_iter().map(Into::into).collect(), total))
}

/// Entries about `user_id` (or all when `None`), newest first.
pub async fn list_for_user(conn: &mut DbConn, user_id: Option<UserId>, limit: i64) -> Result<Vec<AuditEntry>> {
    let filter = AuditQuery { user_id, ..Default::default() };
    page(conn, &filter, limit, 0, None, false).await.map(|(rows, _)| rows)
}

/// Failed logins from `ip` since `since` (the suspicious-address alert).
pub async fn count_failed_logins_from(conn: &mut DbConn, ip: &str, since: DateTime<Utc>) -> Result<i64> {
    let since = since.naive_utc();
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
