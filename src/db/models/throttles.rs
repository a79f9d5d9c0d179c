//! The `login_throttles` table: consecutive failed logins per (subject, client address).

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Timestamp;
use diesel_async::RunQueryDsl;

use crate::db::models::delete_batch;
use crate::db::schema::login_throttles;
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;

/// When the subject is locked out from this address, if it is.
pub async fn locked_until(
    conn: &mut DbConn,
    subject: &str,
    ip: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    let now = now.naive_utc();
    let until = db_run!(conn, "throttles::locked_until": {
        login_throttles::table
            .find((subject, ip))
            .select(login_throttles::locked_until)
            .first::<Option<NaiveDateTime>>(conn)
            .await
            .optional()
            .map(|row| row.flatten().filter(|until| *until > now))
            .map_err(map_err)
    })?;
    Ok(until.map(|t| t.and_utc()))
}

/// Counts one failure; returns the failure count after it (the caller decides on a lock).
pub async fn record_failure(conn: &mut DbConn, subject: &str, ip: &str, now: DateTime<Utc>) -> Result<i32> {
    let now = now.naive_utc();
    db_run!(conn, "throttles::record_failure": {
        diesel::insert_into(login_throttles::table)
            .values((
                login_throttles::subject.eq(subject),
                login_throttles::ip_address.eq(ip),
                login_throttles::failures.eq(1),
                login_throttles::updated_at.eq(now),
            ))
            .on_conflict((login_throttles::subject, login_throttles::ip_address))
            .do_update()
            .set((login_throttles::failures.eq(login_throttles::failures + 1), login_throttles::updated_at.eq(now)))
            .returning(login_throttles::failures)
            .get_result(conn)
            .await
            .map_err(map_err)
    })
}

/// Locks the subject out from this address until `until` and restarts the count.
pub async fn lock(conn: &mut DbConn, subject: &str, ip: &str, until: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
    let (until, now) = (until.naive_utc(), now.naive_utc());
    db_run!(conn, "throttles::lock": {
        diesel::update(login_throttles::table.find((subject, ip)))
            .set((login_throttles::locked_until.eq(until), login_throttles::failures.eq(0), login_throttles::updated_at.eq(now)))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

/// Forgets the subject's failures from one address (after a successful login).
pub async fn clear(conn: &mut DbConn, subject: &str, ip: &str) -> Result<()> {
    db_run!(conn, "throttles::clear": {
        diesel::delete(login_throttles::table.find((subject, ip)))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

/// Forgets every failure and lock of the subject (admin clear); returns how many rows.
pub async fn clear_subject(conn: &mut DbConn, subject: &str) -> Result<usize> {
    db_run!(conn, "throttles::clear_subject": {
        diesel::delete(login_throttles::table.filter(login_throttles::subject.eq(subject)))
            .execute(conn)
            .await
            .map_err(map_err)
    })
}

/// Drops up to `limit` rows untouched since `before` whose lock (if any) has ended; returns how
/// many.
pub async fn purge(conn: &mut DbConn, before: DateTime<Utc>, now: DateTime<Utc>, limit: i64) -> Result<usize> {
    let (before, now) = (before.naive_utc(), now.naive_utc());
    db_run!(conn, "throttles::purge": {
        delete_batch!(
            conn,
            "login_throttles",
            "updated_at < {p}1 AND (locked_until IS NULL OR locked_until < {p}2)",
            limit,
            Timestamp = before,
            Timestamp = now,
        )
    })
}
