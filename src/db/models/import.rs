//! The writes of `import-seed`: users keep the ids they had in the Python service, audit rows
//! remember theirs (`seed_id`), and PostgreSQL's sequences are moved past what was imported.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::schema::{audit_logs, users};
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;
use crate::model::{User, UserId};

#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = users, treat_none_as_null = true)]
struct ImportedUserRow<'a> {
    id: i32,
    username: &'a str,
    email: &'a str,
    password_hash: &'a str,
    role: &'a str,
    is_active: bool,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    last_login: Option<NaiveDateTime>,
}

impl<'a> From<&'a User> for ImportedUserRow<'a> {
    fn from(u: &'a User) -> Self {
        Self {
            id: u.id.get(),
            username: &u.username,
            email: &u.email,
            password_hash: &u.password_hash,
            role: u.role.as_str(),
            is_active: u.is_active,
            created_at: u.created_at.naive_utc(),
            updated_at: u.updated_at.naive_utc(),
            last_login: u.last_login.map(|t| t.naive_utc()),
        }
    }
}

/// Inserts the user (every column from the source, the role from `--admins`) under its source id.
pub async fn insert_user(conn: &mut DbConn, user: &User) -> Result<()> {
    let row = ImportedUserRow::from(user);
    db_run!(conn, "import::insert_user": {
        diesel::insert_into(users::table).values(&row).execute(conn).await.map(drop).map_err(map_err)
    })
}

/// Overwrites the user's row with the source's (a re-run after the source changed).
pub async fn update_user(conn: &mut DbConn, user: &User) -> Result<()> {
    let row = ImportedUserRow::from(user);
    db_run!(conn, "import::update_user": {
        diesel::update(users::table.find(row.id)).set(&row).execute(conn).await.map(drop).map_err(map_err)
    })
}

/// An audit row as imported.
#[derive(Debug, Clone)]
pub struct ImportedAudit {
    pub seed_id: i32,
    pub user_id: Option<UserId>,
    pub action: String,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    /// A JSON object, as text.
    pub metadata: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = audit_logs)]
struct ImportedAuditRow<'a> {
    seed_id: i32,
    user_id: Option<i32>,
    actor_id: Option<i32>,
    action: &'a str,
    ip_address: Option<&'a str>,
    user_agent: Option<&'a str>,
    metadata: &'a str,
    created_at: NaiveDateTime,
}

/// The source ids of the audit rows imported before.
pub async fn imported_audit_ids(conn: &mut DbConn) -> Result<Vec<i32>> {
    let ids: Vec<Option<i32>> = db_run!(conn, "import::imported_audit_ids": {
        audit_logs::table
            .filter(audit_logs::seed_id.is_not_null())
            .select(audit_logs::seed_id)
            .load(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(ids.into_iter().flatten().collect())
}

/// Inserts audit rows; one already imported (same `seed_id`) is left as it is. Returns how many
/// were new.
pub async fn insert_audit(conn: &mut DbConn, rows: &[ImportedAudit]) -> Result<usize> {
    let mut inserted = 0;
    for r in rows {
        let row = ImportedAuditRow {
            seed_id: r.seed_id,
            user_id: r.user_id.map(UserId::get),
            actor_id: r.user_id.map(UserId::get),
            action: &r.action,
            ip_address: r.ip_address.as_deref(),
            user_agent: r.user_agent.as_deref(),
            metadata: &r.metadata,
            created_at: r.created_at.naive_utc(),
        };
        inserted += db_run!(conn, "import::insert_audit": {
            diesel::insert_into(audit_logs::table)
                .values(&row)
                .on_conflict(audit_logs::seed_id)
                .do_nothing()
                .execute(conn)
                .await
                .map_err(map_err)
        })?;
    }
    Ok(inserted)
}

/// Moves PostgreSQL's id sequences past the largest id, so that new users never collide with
/// imported ones. SQLite needs nothing: AUTOINCREMENT follows the largest id ever inserted.
pub async fn advance_sequences(conn: &mut DbConn) -> Result<()> {
    let DbConn::Postgres(c) = conn else { return Ok(()) };
    for table in ["users", "user_backends", "audit_logs"] {
        // setval(.., max, true): the next id is max + 1; an empty table keeps its sequence.
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), m) FROM (SELECT max(id) AS m FROM {table}) t \
             WHERE m IS NOT NULL AND m >= (SELECT last_value FROM {table}_id_seq)"
        );
        diesel::sql_query(sql).execute(&mut **c).await.map_err(map_err)?;
    }
    Ok(())
}
