//! The Python service's database, read only (`import-seed`): its `users`, `user_backends` and
//! `audit_logs` tables (seed section 2.2) on SQLite or PostgreSQL. Columns the seed leaves
//! nullable come back as `Option`; judging the rows is the domain's job (`domain::import`).

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Timestamp};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::{DbTarget, SqliteConn};

/// A row of the seed's `users`.
#[derive(Debug, Clone, QueryableByName)]
pub struct SeedUser {
    #[diesel(sql_type = Integer)]
    pub id: i32,
    #[diesel(sql_type = Text)]
    pub username: String,
    #[diesel(sql_type = Text)]
    pub email: String,
    #[diesel(sql_type = Text)]
    pub password_hash: String,
    #[diesel(sql_type = Nullable<Timestamp>)]
    created_at: Option<NaiveDateTime>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    updated_at: Option<NaiveDateTime>,
    #[diesel(sql_type = Nullable<Bool>)]
    is_active: Option<bool>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    last_login: Option<NaiveDateTime>,
}

impl SeedUser {
    /// The seed writes naive UTC (`datetime.utcnow()`, or the database clock at UTC).
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.created_at.map(|t| t.and_utc())
    }
    pub fn updated_at(&self) -> Option<DateTime<Utc>> {
        self.updated_at.map(|t| t.and_utc())
    }
    pub fn last_login(&self) -> Option<DateTime<Utc>> {
        self.last_login.map(|t| t.and_utc())
    }
    /// SQLAlchemy's default is client-side: a row inserted by hand may hold NULL, which the
    /// seed's login treats as inactive (`if not user.is_active`).
    pub fn is_active(&self) -> bool {
        self.is_active.unwrap_or(false)
    }
}

/// A row of the seed's `user_backends`.
#[derive(Debug, Clone, QueryableByName)]
pub struct SeedBackend {
    #[diesel(sql_type = Nullable<Integer>)]
    pub user_id: Option<i32>,
    #[diesel(sql_type = Text)]
    pub instagram_username: String,
    #[diesel(sql_type = Text)]
    pub api_base_url: String,
    /// Fernet ciphertext; never printed.
    #[diesel(sql_type = Text)]
    pub bearer_token_encrypted: String,
    #[diesel(sql_type = Nullable<Bool>)]
    is_active: Option<bool>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    updated_at: Option<NaiveDateTime>,
}

impl SeedBackend {
    pub fn is_active(&self) -> bool {
        self.is_active.unwrap_or(true)
    }
    pub fn updated_at(&self) -> Option<DateTime<Utc>> {
        self.updated_at.map(|t| t.and_utc())
    }
}

/// A row of the seed's `audit_logs` (section 2.2; the seed's code never creates the table).
#[derive(Debug, Clone, QueryableByName)]
pub struct SeedAudit {
    #[diesel(sql_type = Integer)]
    pub id: i32,
    #[diesel(sql_type = Nullable<Integer>)]
    pub user_id: Option<i32>,
    #[diesel(sql_type = Text)]
    pub action: String,
    /// `INET` as text (`10.0.0.1`, or `10.0.0.0/8` for a network).
    #[diesel(sql_type = Nullable<Text>)]
    pub ip_address: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub user_agent: Option<String>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    created_at: Option<NaiveDateTime>,
    /// `JSONB` as text.
    #[diesel(sql_type = Nullable<Text>)]
    pub metadata: Option<String>,
}

impl SeedAudit {
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.created_at.map(|t| t.and_utc())
    }
}

/// Everything read from the source.
#[derive(Debug, Default)]
pub struct SeedTables {
    pub users: Vec<SeedUser>,
    pub backends: Vec<SeedBackend>,
    /// `None` when the source has no `audit_logs` table (the seed's code does not create one).
    pub audit: Option<Vec<SeedAudit>>,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// A read-only connection to the source.
#[expect(clippy::large_enum_variant, reason = "one, briefly, per import")]
enum Source {
    Postgres(AsyncPgConnection),
    Sqlite(SqliteConn),
}

/// Reads the seed's tables from `target`. A SQLite source must exist (it is never created) and is
/// opened with `query_only`, so nothing there can change.
pub async fn read(target: &DbTarget) -> anyhow::Result<SeedTables> {
    let mut source = match target {
        DbTarget::Postgres(url) => Source::Postgres(
            AsyncPgConnection::establish(url)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to the source {}: {e}", target.describe()))?,
        ),
        DbTarget::Sqlite(path) => {
            anyhow::ensure!(path.is_file(), "the source {} does not exist", target.describe());
            let mut conn = SqliteConn::establish(&path.to_string_lossy())
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the source {}: {e}", target.describe()))?;
            diesel::sql_query("PRAGMA query_only = ON").execute(&mut conn).await?;
            diesel::sql_query("PRAGMA busy_timeout = 10000").execute(&mut conn).await?;
            Source::Sqlite(conn)
        }
    };
    macro_rules! on_source {
        (|$c:ident| $body:expr) => {
            match &mut source {
                Source::Postgres($c) => $body,
                Source::Sqlite($c) => $body,
            }
        };
    }
    let (has_users, has_audit) = match &mut source {
        Source::Postgres(c) => (table_exists_pg(c, "users").await?, table_exists_pg(c, "audit_logs").await?),
        Source::Sqlite(c) => (table_exists_sqlite(c, "users").await?, table_exists_sqlite(c, "audit_logs").await?),
    };
    anyhow::ensure!(
        has_users,
        "the source {} has no users table: is it the Python service's database?",
        target.describe()
    );
    let what = |table: &str| format!("cannot read {table} from the source (is it the seed's schema, section 2.2?)");
    let users: Vec<SeedUser> = on_source!(|c| diesel::sql_query(
        "SELECT id, username, email, password_hash, created_at, updated_at, is_active, last_login \
         FROM users ORDER BY id"
    )
    .load(c)
    .await)
    .map_err(|e| anyhow::Error::new(e).context(what("users")))?;
    let backends: Vec<SeedBackend> = on_source!(|c| diesel::sql_query(
        "SELECT user_id, instagram_username, api_base_url, bearer_token_encrypted, is_active, updated_at \
         FROM user_backends ORDER BY user_id"
    )
    .load(c)
    .await)
    .map_err(|e| anyhow::Error::new(e).context(what("user_backends")))?;
    let audit = if has_audit {
        let rows: Vec<SeedAudit> = match &mut source {
            // INET and JSONB as text: `host()` would refuse a text column, a cast reads both.
            Source::Postgres(c) => {
                diesel::sql_query(
                    "SELECT id, user_id, action, ip_address::text AS ip_address, user_agent, created_at, \
                     metadata::text AS metadata FROM audit_logs ORDER BY id",
                )
                .load(c)
                .await
            }
            Source::Sqlite(c) => {
                diesel::sql_query(
                    "SELECT id, user_id, action, CAST(ip_address AS TEXT) AS ip_address, user_agent, created_at, \
                     CAST(metadata AS TEXT) AS metadata FROM audit_logs ORDER BY id",
                )
                .load(c)
                .await
            }
        }
        .map_err(|e| anyhow::Error::new(e).context(what("audit_logs")))?;
        Some(rows)
    } else {
        None
    };
    Ok(SeedTables { users, backends, audit })
}

async fn table_exists_pg(c: &mut AsyncPgConnection, table: &str) -> anyhow::Result<bool> {
    let found: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1",
    )
    .bind::<Text, _>(table)
    .get_result(c)
    .await?;
    Ok(found.n > 0)
}

async fn table_exists_sqlite(c: &mut SqliteConn, table: &str) -> anyhow::Result<bool> {
    let found: Count = diesel::sql_query("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?")
        .bind::<Text, _>(table)
        .get_result(c)
        .await?;
    Ok(found.n > 0)
}
