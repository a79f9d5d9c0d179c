//! The `rate_limits` table: GCRA state shared by every replica. One row per key holds the
//! "theoretical arrival time" (TAT, microseconds); one conditional upsert both checks and
//! takes a slot, atomically, on either backend.

use diesel::dsl::case_when;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

use crate::db::models::delete_batch;
use crate::db::schema::rate_limits;
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;

/// Takes a slot for `key` at `now` (µs) when the bucket allows: `interval` is the time one
/// request costs (period / limit) and `tolerance` how far ahead the TAT may run (the burst).
/// Returns `None` when admitted, or the µs to wait.
pub async fn acquire(conn: &mut DbConn, key: &str, now: i64, interval: i64, tolerance: i64) -> Result<Option<i64>> {
    let admitted: Option<i64> = db_run!(conn, "rate_limits::acquire": {
        let upsert = diesel::insert_into(rate_limits::table)
            .values((rate_limits::key.eq(key), rate_limits::tat.eq(now + interval)))
            .on_conflict(rate_limits::key)
            .do_update()
            .set(rate_limits::tat.eq(case_when(rate_limits::tat.gt(now), rate_limits::tat + interval).otherwise(now + interval)));
        // ON CONFLICT ... DO UPDATE ... WHERE: the update (and so the RETURNING row) happens
        // only when the bucket has room.
        diesel::query_dsl::methods::FilterDsl::filter(upsert, rate_limits::tat.le(now + tolerance))
            .returning(rate_limits::tat)
            .get_result(conn)
            .await
            .optional()
            .map_err(map_err)?
    });
    if admitted.is_some() {
        return Ok(None);
    }
    let tat: i64 = db_run!(conn, "rate_limits::acquire": {
        rate_limits::table.find(key).select(rate_limits::tat).first(conn).await.map_err(map_err)?
    });
    Ok(Some((tat - tolerance - now).max(1)))
}

/// Drops up to `limit` keys whose state has fully drained (a missing row means a full bucket);
/// returns how many.
pub async fn purge(conn: &mut DbConn, now: i64, limit: i64) -> Result<usize> {
    db_run!(conn, "rate_limits::purge": {
        delete_batch!(conn, "rate_limits", "tat < {p}1", limit, BigInt = now)
    })
}
