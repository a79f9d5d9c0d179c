//! `LIMIT n` written into a statement's text rather than bound as a parameter.
//!
//! PostgreSQL plans a prepared statement's `LIMIT $1` for an unknown limit (a tenth of the
//! table). At 100,000 users that generic plan of the users ⟕ backends join looked so much
//! dearer than a plan for the actual limit that it planned the statement afresh on every
//! execution, and planning cost more than running it (0.2 ms of 0.35-0.47 at the first page,
//! against 0.2 with 200 users, where the generic plan was kept; BENCHMARKS.md, "Scale"). With
//! the limit in the text the generic plan is the right one and is reused. Page sizes are
//! bounded, so a connection caches a bounded number of variants of a statement. The offset
//! stays a parameter and is left out when zero (every first page and every keyset page): an
//! unknown offset also makes the generic plan look dear.

use diesel::QueryResult;
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::BigInt;

/// `query LIMIT n [OFFSET $n]`.
#[derive(Debug, Clone, Copy)]
pub struct Limited<Q> {
    query: Q,
    limit: i64,
    offset: i64,
}

/// Limits up to this go into the text (pages ask at most `PAGE_MAX + 1` rows); a larger one
/// (an export of every row) is bound, so that the variants a connection caches stay bounded.
const LITERAL_UP_TO: i64 = 1000;

pub trait LimitDsl: Sized {
    /// At most `limit` rows after skipping `offset`.
    fn limited(self, limit: i64, offset: i64) -> Limited<Self> {
        Limited { query: self, limit: limit.max(0), offset: offset.max(0) }
    }
}

impl<Q: Query> LimitDsl for Q {}

/// No static id: the statement cache keys it by its text, one entry per limit.
impl<Q> QueryId for Limited<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Limited<Q> {
    type SqlType = Q::SqlType;
}

impl<Q, DB> QueryFragment<DB> for Limited<Q>
where
    DB: Backend,
    Q: QueryFragment<DB>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.query.walk_ast(out.reborrow())?;
        if self.limit <= LITERAL_UP_TO {
            out.push_sql(&format!(" LIMIT {}", self.limit));
        } else {
            out.push_sql(" LIMIT ");
            out.push_bind_param::<BigInt, _>(&self.limit)?;
        }
        if self.offset > 0 {
            out.push_sql(" OFFSET ");
            out.push_bind_param::<BigInt, _>(&self.offset)?;
        }
        Ok(())
    }
}
