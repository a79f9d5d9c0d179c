//! Rows and queries, one file per table. Every query goes through `db_run!` so it compiles for
//! both backends. Rows stay in here: callers pass and get the vocabulary of `crate::model`, and
//! domain errors (unique violations already mapped).

pub mod api_keys;
pub mod audit;
pub mod backends;
pub mod import;
pub mod mfa;
pub mod passkeys;
pub mod rate_limits;
pub mod sessions;
pub mod throttles;
pub mod users;

use backends::BackendRow;

// SQL's lower(), for the case-insensitive lookups of names (both databases have it).
diesel::define_sql_function!(fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text);
use users::UserRow;

/// What batched deletes need to know of a backend's SQL: the physical address of a row
/// (`ctid` on PostgreSQL, `rowid` on SQLite; either is found without an index), how a set of
/// them picked by a subquery is matched, and how a numbered parameter is written (`$1`, `?1`;
/// both may repeat a number).
pub(crate) trait Dialect {
    const ROW_ADDRESS: &'static str;
    /// `{row}` and `{sub}` stand for the address column and the subquery.
    const AMONG: &'static str;
    const PARAM: char;
}

impl Dialect for diesel_async::AsyncPgConnection {
    const ROW_ADDRESS: &'static str = "ctid";
    // `ctid IN (SELECT ...)` is planned as a join, and PostgreSQL hashes it against a sequential
    // scan of the whole table (the plans test caught it); `= ANY(ARRAY(...))` is a TID scan.
    const AMONG: &'static str = "{row} = ANY(ARRAY({sub}))";
    const PARAM: char = '$';
}

impl Dialect for crate::db::SqliteConn {
    const ROW_ADDRESS: &'static str = "rowid";
    const AMONG: &'static str = "{row} IN ({sub})";
    const PARAM: char = '?';
}

/// (row address column, its membership form, parameter prefix) of `conn`'s backend.
pub(crate) fn dialect<C: Dialect>(_conn: &C) -> (&'static str, &'static str, char) {
    (C::ROW_ADDRESS, C::AMONG, C::PARAM)
}

/// Deletes at most `$limit` rows of `$table` matching `$pred`, in one statement, and returns how
/// many: `DELETE FROM t WHERE ctid = ANY(ARRAY(SELECT ctid FROM t WHERE pred LIMIT n)) AND pred`
/// (SQLite: `rowid IN (SELECT rowid ...)`). `$pred` writes its parameters as `{p}1`, `{p}2`, ... bound in order by the
/// `Type = value` pairs. The predicate is checked again on delete so that a row changed between
/// the two (a rate-limit key taken again) stays. Written as SQL text because Diesel's DSL has no
/// self-referencing subquery; the tests run it on both backends. Use inside `db_run!`.
///
/// `order_by = "column"` picks the rows in that order: the oldest first, and through the
/// column's index. Without it PostgreSQL may pick a batch of a common match by a sequential
/// scan that stops at the first `n` (the plans test caught it on the audit log), which reads
/// again every page that earlier batches emptied: a purge of a million rows would grow quadratic.
macro_rules! delete_batch {
    ($conn:ident, $table:literal, $pred:literal, order_by = $order:literal, $limit:expr $(, $ty:ty = $val:expr)* $(,)?) => {
        $crate::db::models::delete_batch!(@ $conn, $table, $pred, concat!(" ORDER BY ", $order), $limit $(, $ty = $val)*)
    };
    (@ $conn:ident, $table:literal, $pred:literal, $order:expr, $limit:expr $(, $ty:ty = $val:expr)*) => {{
        let sql = $crate::db::models::delete_batch_sql(&*$conn, $table, $pred, $order, $limit);
        diesel::sql_query(sql)$(.bind::<$ty, _>($val))*.execute($conn).await.map_err($crate::db::map_err)
    }};
    ($conn:ident, $table:literal, $pred:literal, $limit:expr $(, $ty:ty = $val:expr)* $(,)?) => {
        $crate::db::models::delete_batch!(@ $conn, $table, $pred, "", $limit $(, $ty = $val)*)
    };
}
pub(crate) use delete_batch;

/// The statement of [`delete_batch!`]: `pred` writes its parameters as `{p}1`, `{p}2`, ...;
/// `order` is empty or ` ORDER BY column`.
pub(crate) fn delete_batch_sql<C: Dialect>(conn: &C, table: &str, pred: &str, order: &str, limit: i64) -> String {
    let (row, among, p) = dialect(conn);
    let pred = pred.replace("{p}", &p.to_string());
    let sub = format!("SELECT {row} FROM {table} WHERE ({pred}){order} LIMIT {limit}");
    let among = among.replace("{row}", row).replace("{sub}", &sub);
    format!("DELETE FROM {table} WHERE {among} AND ({pred})")
}
