//! `(a, b) < (x, y)`: a row comparison, which Diesel's DSL does not spell, kept safe for the
//! prepared-statement cache (a `dsl::sql` fragment would make its statement uncacheable).
//!
//! Keyset pages by time go on below the last (created_at, id) seen. Spelt as
//! `created_at <= x AND (created_at < x OR id < y)`, PostgreSQL planned such a page afresh on every
//! call at a million audit rows: its generic estimate of the two clauses priced the backward
//! index scan above a custom plan's. As one row comparison, an index condition on
//! (created_at, id), it keeps one generic plan, and SQLite seeks its index by it too.

use diesel::backend::Backend;
use diesel::expression::{AppearsOnTable, Expression, SelectableExpression, ValidGrouping};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::Bool;

#[derive(Debug, Clone, Copy, QueryId, ValidGrouping)]
pub struct RowLess<A, B, X, Y> {
    a: A,
    b: B,
    x: X,
    y: Y,
}

/// `(a, b) < (x, y)`, compared as SQL compares rows: by `a`, then by `b` where `a` ties.
pub fn row_less<A, B, X, Y>((a, b): (A, B), (x, y): (X, Y)) -> RowLess<A, B, X, Y>
where
    A: Expression,
    B: Expression,
    X: Expression<SqlType = A::SqlType>,
    Y: Expression<SqlType = B::SqlType>,
{
    RowLess { a, b, x, y }
}

impl<A, B, X, Y> Expression for RowLess<A, B, X, Y> {
    type SqlType = Bool;
}

impl<A, B, X, Y, QS> AppearsOnTable<QS> for RowLess<A, B, X, Y>
where
    A: AppearsOnTable<QS>,
    B: AppearsOnTable<QS>,
    X: AppearsOnTable<QS>,
    Y: AppearsOnTable<QS>,
{
}

impl<A, B, X, Y, QS> SelectableExpression<QS> for RowLess<A, B, X, Y>
where
    A: SelectableExpression<QS>,
    B: SelectableExpression<QS>,
    X: SelectableExpression<QS>,
    Y: SelectableExpression<QS>,
{
}

impl<A, B, X, Y, DB> QueryFragment<DB> for RowLess<A, B, X, Y>
where
    DB: Backend,
    A: QueryFragment<DB>,
    B: QueryFragment<DB>,
    X: QueryFragment<DB>,
    Y: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> diesel::QueryResult<()> {
        out.push_sql("(");
        self.a.walk_ast(out.reborrow())?;
        out.push_sql(", ");
        self.b.walk_ast(out.reborrow())?;
        out.push_sql(") < (");
        self.x.walk_ast(out.reborrow())?;
        out.push_sql(", ");
        self.y.walk_ast(out.reborrow())?;
        out.push_sql(")");
        Ok(())
    }
}
