//! Storage: one pool type over PostgreSQL or SQLite, the `db_run!` macro that expands the same
//! Diesel code for either connection, embedded migrations, and the mapping of Diesel errors
//! into the domain's error. SQL lives only under `models/`.
//! Follows vaultwarden's `db_run!`: one Diesel code path, dispatched per backend.

pub mod bulk_seed;
mod limit;
pub mod models;
pub mod notify;
mod redact;
mod row_less;
pub mod schema;
pub mod seed_source;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::CacheSize;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sqlite::SqliteConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

pub use self::redact::redact_url;
pub use self::row_less::row_less;
use crate::error::Error;

pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Where the data lives, parsed from `DATABASE_URL`. `Debug` hides the password (`redact`).
#[derive(Clone, PartialEq, Eq)]
pub enum DbTarget {
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
    /// A SQLite database file.
    Sqlite(PathBuf),
}

impl DbTarget {
    /// Accepts `postgres://...`, `postgresql://...`, SQLAlchemy-style `sqlite:///relative.db` and
    /// `sqlite:////absolute.db`, `sqlite://path`, `sqlite:path`, or a bare file path.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        let path = url
            .strip_prefix("sqlite:///")
            .or_else(|| url.strip_prefix("sqlite://"))
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() || path.contains("://") {
            return Err(format!(
                "DATABASE_URL must be postgres://..., postgresql://... or a SQLite path (sqlite:///./data/auth.db); got scheme {:?}",
                url.split("://").next().unwrap_or_default()
            ));
        }
        if path == ":memory:" {
            return Err("an in-memory SQLite database would vanish with each pooled connection; use a file".into());
        }
        Ok(Self::Sqlite(PathBuf::from(path)))
    }

    /// Names the backend without credentials, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Postgres(url) => match url::Url::parse(url) {
                Ok(u) => format!("postgres {}:{}{}", u.host_str().unwrap_or("?"), u.port().unwrap_or(5432), u.path()),
                Err(_) => "postgres".into(),
            },
            Self::Sqlite(path) => format!("sqlite {}", path.display()),
        }
    }
}

/// A pool of connections to one of the two backends.
#[derive(Clone)]
pub enum DbPool {
    Postgres(Pool<AsyncPgConnection>),
    /// SQLite has one writer at a time: write transactions of this process queue for it here,
    /// in order, instead of polling the file lock (other processes still wait on busy_timeout).
    Sqlite(Pool<SqliteConn>, Arc<tokio::sync::Mutex<()>>),
}

/// A connection checked out of a [`DbPool`].
#[expect(
    clippy::large_enum_variant,
    reason = "lives briefly on the stack of one request; boxing would add an allocation per checkout"
)]
pub enum DbConn {
    Postgres(Object<AsyncPgConnection>),
    Sqlite(Object<SqliteConn>),
}

/// Runs the same Diesel code on whichever backend `$conn` holds, timed as `$op`. Inside the
/// block `$conn` is `&mut` the concrete connection, so queries type-check once per backend.
/// `$op` is the `op` label of `auth_db_query_seconds`: the file and function below `models/`
/// (`"users::find"`), which a unit test checks, since dashboards select by it.
#[macro_export]
macro_rules! db_run {
    ($conn:ident, $op:literal: $body:block) => {{
        let started = ::std::time::Instant::now();
        let result = match &mut *$conn {
            $crate::db::DbConn::Postgres($conn) => {
                let $conn: &mut ::diesel_async::AsyncPgConnection = &mut **$conn;
                $body
            }
            $crate::db::DbConn::Sqlite($conn) => {
                let $conn: &mut $crate::db::SqliteConn = &mut **$conn;
                $body
            }
        };
        $crate::metrics::db_query($op, started.elapsed());
        result
    }};
}

/// Pool limits.
#[derive(Clone, Copy, Debug)]
pub struct PoolOptions {
    pub max_size: usize,
    /// How long a request waits for a free connection before failing with UNAVAILABLE.
    pub wait_timeout: Duration,
    /// PostgreSQL: keep each connection's named prepared statements (`DB_PREPARED_STATEMENTS`).
    /// Off, every statement goes out as one unnamed Parse/Bind/Execute/Sync pipeline, which a
    /// PgBouncer in transaction mode can hand to any server connection.
    pub prepared_statements: bool,
}

impl DbPool {
    /// Opens a pool; the first connection is made eagerly so a wrong URL fails at start-up.
    pub async fn connect(target: &DbTarget, opts: PoolOptions) -> anyhow::Result<Self> {
        let pool = match target {
            DbTarget::Postgres(url) => {
                let mut config = ManagerConfig::<AsyncPgConnection>::default();
                // Verified recycling costs a round trip per checkout; broken connections are
                // still detected, and a failed query on a dead one is retried by the client.
                config.recycling_method = RecyclingMethod::Fast;
                if !opts.prepared_statements {
                    config.custom_setup = Box::new(|url| establish_unnamed(url.to_owned()).boxed());
                }
                let manager = AsyncDieselConnectionManager::new_with_config(url, config);
                Self::Postgres(build_pool(manager, opts)?)
            }
            DbTarget::Sqlite(path) => {
                prepare_sqlite_file(path)?;
                let mut config = ManagerConfig::<SqliteConn>::default();
                config.recycling_method = RecyclingMethod::Fast;
                config.custom_setup = Box::new(|url| setup_sqlite(url.to_owned()).boxed());
                let url = path.to_string_lossy().into_owned();
                let manager = AsyncDieselConnectionManager::new_with_config(url, config);
                Self::Sqlite(build_pool(manager, opts)?, Arc::default())
            }
        };
        pool.get().await.map_err(|e| anyhow::anyhow!("cannot connect to the database ({}): {e}", target.describe()))?;
        Ok(pool)
    }

    /// Checks out a connection; pool exhaustion and connection failures are UNAVAILABLE.
    pub async fn get(&self) -> Result<DbConn, Error> {
        match self {
            Self::Postgres(p) => p.get().await.map(DbConn::Postgres),
            Self::Sqlite(p, _) => p.get().await.map(DbConn::Sqlite),
        }
        .map_err(|e| {
            tracing::warn!(error = %e, "database connection unavailable");
            Error::Unavailable("database unavailable")
        })
    }

    /// Cheap liveness probe for health checks.
    pub async fn ping(&self) -> bool {
        let Ok(mut conn) = self.get().await else {
            return false;
        };
        let conn = &mut conn;
        db_run!(conn, "DbPool::ping": {
            diesel::sql_query("SELECT 1").execute(conn).await.is_ok()
        })
    }

    /// Whether this is SQLite: one writer at a time, in this process (upkeep paces itself there).
    pub fn is_sqlite(&self) -> bool {
        matches!(self, Self::Sqlite(..))
    }

    /// (connections in use, pool size) for metrics.
    pub fn usage(&self) -> (usize, usize) {
        let status = match self {
            Self::Postgres(p) => p.status(),
            Self::Sqlite(p, _) => p.status(),
        };
        (status.size.saturating_sub(status.available), status.max_size)
    }
}

fn build_pool<C>(manager: AsyncDieselConnectionManager<C>, opts: PoolOptions) -> anyhow::Result<Pool<C>>
where
    AsyncDieselConnectionManager<C>: deadpool::managed::Manager<Type = C>,
{
    Pool::builder(manager)
        .max_size(opts.max_size)
        .wait_timeout(Some(opts.wait_timeout))
        .create_timeout(Some(opts.wait_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the database pool: {e}"))
}

/// Creates the SQLite file's directory (0700) and the file itself (0600) before SQLite does: it
/// would create them world-readable, and its WAL and shared-memory files copy the database
/// file's mode. An existing database readable by others is left as the operator made it, with a
/// warning.
fn prepare_sqlite_file(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::config::create_private_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot create database directory {}: {e:#}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the SQLite database is readable by other users; chmod 600 it (and its -wal and -shm files)");
                }
            }
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("cannot create the database file {}: {e}", path.display())),
    }
}

/// A PostgreSQL connection without named prepared statements: the patched diesel-async
/// (vendor/diesel-async/PATCHES.md) then sends each statement unnamed, in one pipeline.
async fn establish_unnamed(url: String) -> diesel::ConnectionResult<AsyncPgConnection> {
    let mut conn = AsyncPgConnection::establish(&url).await?;
    conn.set_prepared_statement_cache_size(CacheSize::Disabled);
    Ok(conn)
}

/// Per-connection SQLite settings: WAL lets readers run beside the writer, busy_timeout makes
/// concurrent writers wait instead of failing with "database is locked", and foreign keys are
/// off by default in SQLite.
async fn setup_sqlite(url: String) -> diesel::ConnectionResult<SqliteConn> {
    let mut conn = SqliteConn::establish(&url).await?;
    // busy_timeout first: even switching the journal mode may have to wait for a lock.
    for pragma in [
        "PRAGMA busy_timeout = 5000",
        "PRAGMA journal_mode = WAL",
        "PRAGMA foreign_keys = ON",
        "PRAGMA synchronous = NORMAL",
    ] {
        diesel::sql_query(pragma)
            .execute(&mut conn)
            .await
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    }
    Ok(conn)
}

/// Applies pending migrations; returns the versions applied.
pub async fn migrate(target: &DbTarget) -> anyhow::Result<Vec<String>> {
    let applied = match target {
        DbTarget::Postgres(url) => {
            let mut conn = AsyncPgConnection::establish(url)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", target.describe()))?;
            // Run once, nothing to gain from caching; unnamed statements also pass a PgBouncer
            // in transaction mode, whatever DB_PREPARED_STATEMENTS says.
            conn.set_prepared_statement_cache_size(CacheSize::Disabled);
            // The async harness blocks on the runtime internally; run it on a blocking thread.
            tokio::task::spawn_blocking(move || {
                let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
                harness
                    .run_pending_migrations(PG_MIGRATIONS)
                    .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
                    .map_err(|e| anyhow::anyhow!("migration failed: {e}"))
            })
            .await??
        }
        DbTarget::Sqlite(path) => {
            prepare_sqlite_file(path)?;
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                use diesel::Connection;
                let mut conn = SqliteConnection::establish(&path.to_string_lossy())
                    .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
                // Wait for a running service's writers instead of failing with "database is locked".
                for pragma in ["PRAGMA busy_timeout = 10000", "PRAGMA journal_mode = WAL"] {
                    diesel::RunQueryDsl::execute(diesel::sql_query(pragma), &mut conn)?;
                }
                conn.run_pending_migrations(SQLITE_MIGRATIONS)
                    .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
                    .map_err(|e| anyhow::anyhow!("migration failed: {e}"))
            })
            .await??
        }
    };
    Ok(applied)
}

/// The migration versions each backend embeds (their lists must be identical).
pub fn migration_versions() -> (Vec<String>, Vec<String>) {
    use diesel::migration::MigrationSource;
    let names = |source: EmbeddedMigrations| -> Vec<String> {
        MigrationSource::<diesel::pg::Pg>::migrations(&source)
            .map(|ms| ms.iter().map(|m| m.name().version().to_string()).collect())
            .unwrap_or_default()
    };
    (names(PG_MIGRATIONS), names(SQLITE_MIGRATIONS))
}

/// Maps Diesel errors: unique violations become `AlreadyExists` naming the field; anything else
/// is internal, with the detail kept for the log only.
pub fn map_err(e: DieselError) -> Error {
    match e {
        DieselError::NotFound => Error::NotFound("record"),
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            // PostgreSQL names the constraint; SQLite only says it in the message.
            let text = info.constraint_name().map_or_else(|| info.message().to_owned(), ToOwned::to_owned);
            let field = if text.contains("email") {
                "email"
            } else if text.contains("username") {
                "username"
            } else if text.contains("service_accounts") {
                "name"
            } else if text.contains("credential_id") {
                "credential_id"
            } else {
                "record"
            };
            Error::AlreadyExists { field }
        }
        // Lost to a concurrent transaction (PostgreSQL 40001 / 40P01): run it again.
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => Error::Contention,
        DieselError::DatabaseError(_, info) if info.message().contains("deadlock detected") => Error::Contention,
        // The database went away or is overloaded: transient, the client may retry.
        DieselError::DatabaseError(
            DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection,
            info,
        ) => {
            tracing::warn!(error = info.message(), "database connection lost");
            Error::Unavailable("database unavailable")
        }
        // 26000 / 42P05: a named statement went to a server connection that lacks it or has
        // another of that name, i.e. a pooler that switches connections between statements.
        DieselError::DatabaseError(kind, info) if is_lost_statement(info.message()) => {
            Error::Internal(anyhow::Error::new(DieselError::DatabaseError(kind, info)).context(
                "prepared statement lost between connections: behind PgBouncer in transaction mode, set DB_PREPARED_STATEMENTS=false",
            ))
        }
        DieselError::DatabaseError(_, info) if is_transient(info.message()) => {
            tracing::warn!(error = info.message(), "database temporarily unavailable");
            Error::Unavailable("database unavailable")
        }
        other => Error::Internal(anyhow::Error::new(other).context("database query failed")),
    }
}

/// Messages of failures that a retry can fix: PostgreSQL shutting a connection down (57P01..03),
/// too many connections (53300), SQLite still locked after its busy timeout.
fn is_transient(message: &str) -> bool {
    ["terminating connection", "the database system is", "too many connections", "database is locked"]
        .iter()
        .any(|needle| message.contains(needle))
}

/// PostgreSQL's messages for a named statement missing from, or already on, the connection.
fn is_lost_statement(message: &str) -> bool {
    message.contains("prepared statement \"")
        && (message.ends_with("does not exist") || message.ends_with("already exists"))
}

/// How often a write that lost to a concurrent one (PostgreSQL: serialization failure or
/// deadlock) is run again before the client is told to retry (503 + Retry-After).
const WRITE_ATTEMPTS: u32 = 5;

/// A write transaction's work: called again from the start when the transaction must be retried,
/// so it owns (clones) what it uses.
pub type WriteWork<T> = Box<dyn for<'c> Fn(&'c mut DbConn) -> BoxFuture<'c, Result<T, Error>> + Send + Sync>;

impl DbPool {
    /// Runs `work` in one write transaction to completion on its own task (a client going away
    /// cannot cut it in half), retrying it from the start when it lost to a concurrent
    /// transaction. On SQLite, this process's writers queue for the one write lock in order.
    pub async fn write<T: Send + 'static>(&self, work: WriteWork<T>) -> Result<T, Error> {
        self.write_with(Commit::Durable, work).await
    }

    /// [`write`](Self::write) for a transaction whose loss in a crash is harmless (what it
    /// records can simply be asked for again, and nothing that depends on it can commit before
    /// it reaches the disk): on PostgreSQL it commits without waiting for its WAL flush
    /// (`SET LOCAL synchronous_commit = off`, this transaction only, so PgBouncer's transaction
    /// mode is fine). It is visible to every other transaction as soon as it commits, and a
    /// later durable commit flushes it too, since the WAL is written in order. SQLite (WAL,
    /// `synchronous = NORMAL`) does not sync at commit anyway.
    pub async fn write_losable<T: Send + 'static>(&self, work: WriteWork<T>) -> Result<T, Error> {
        self.write_with(Commit::Asynchronous, work).await
    }

    async fn write_with<T: Send + 'static>(&self, durability: Commit, work: WriteWork<T>) -> Result<T, Error> {
        let pool = self.clone();
        detached(async move {
            let mut attempt = 1;
            loop {
                let turn = match &pool {
                    Self::Sqlite(_, writer) => Some(Arc::clone(writer).lock_owned().await),
                    Self::Postgres(_) => None,
                };
                let mut conn = pool.get().await?;
                let result = conn.transaction_with(durability, async |c: &mut DbConn| work(c).await).await;
                drop((conn, turn));
                match result {
                    Err(Error::Contention) if attempt < WRITE_ATTEMPTS => {
                        tracing::debug!(attempt, "write lost to a concurrent one; retrying");
                        // Randomised backoff, so that the same two transactions do not collide again.
                        let wait = rand::random_range(1..=5u64 << attempt);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        })
        .await
    }
}

/// Whether a write transaction waits for its commit to reach the disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Commit {
    Durable,
    /// PostgreSQL: `SET LOCAL synchronous_commit = off`, sent with the `BEGIN` (no extra round
    /// trip). See [`DbPool::write_losable`].
    Asynchronous,
}

impl DbConn {
    /// Runs `work` in a transaction: commit on `Ok`, roll back on `Err`. On SQLite it begins
    /// IMMEDIATE: it takes the write lock up front (waiting its turn) rather than failing with
    /// "database is locked" when a read turns into a write.
    ///
    /// Not cancel-safe (no diesel-async transaction is): callers whose future may be dropped
    /// mid-way (every RPC handler) use [`DbPool::write`] or run it inside [`detached`].
    pub async fn transaction<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut DbConn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.transaction_with(Commit::Durable, work).await
    }

    /// [`transaction`](Self::transaction), committing as `durability` says.
    pub async fn transaction_with<T>(
        &mut self,
        durability: Commit,
        work: impl AsyncFnOnce(&mut DbConn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        use diesel::connection::AnsiTransactionManager;
        use diesel_async::TransactionManager;
        async fn commit<C: AsyncConnection>(c: &mut C) -> diesel::QueryResult<()> {
            C::TransactionManager::commit_transaction(c).await
        }
        async fn rollback<C: AsyncConnection>(c: &mut C) -> diesel::QueryResult<()> {
            C::TransactionManager::rollback_transaction(c).await
        }
        match self {
            Self::Postgres(c) => {
                let begun = match durability {
                    Commit::Durable => {
                        <AsyncPgConnection as AsyncConnection>::TransactionManager::begin_transaction(&mut **c).await
                    }
                    // One simple-protocol round trip, as a plain BEGIN is; SET LOCAL ends with the
                    // transaction, so a pooler in transaction mode hands on no changed setting.
                    Commit::Asynchronous => {
                        diesel_async::AnsiTransactionManager::begin_transaction_sql(
                            &mut **c,
                            "BEGIN; SET LOCAL synchronous_commit = off",
                        )
                        .await
                    }
                };
                begun.map_err(map_err)?;
            }
            Self::Sqlite(c) => {
                c.spawn_blocking(|c| AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE"))
                    .await
                    .map_err(map_err)?;
            }
        }
        match work(self).await {
            Ok(value) => {
                let conn = &mut *self;
                let committed = db_run!(conn, "DbConn::transaction": { commit(conn).await.map_err(map_err) });
                if let Err(e) = committed {
                    let conn = &mut *self;
                    let _ = db_run!(conn, "DbConn::transaction": { rollback(conn).await });
                    return Err(e);
                }
                Ok(value)
            }
            Err(e) => {
                let conn = &mut *self;
                let rolled_back = db_run!(conn, "DbConn::transaction": { rollback(conn).await });
                if let Err(rb) = rolled_back {
                    tracing::error!(error = %rb, "rollback failed");
                }
                Err(e)
            }
        }
    }
}

/// Runs a database write to completion on its own task, so that a client going away (tonic
/// then drops the handler's future) cannot cut a transaction in half.
pub async fn detached<T, F>(work: F) -> Result<T, Error>
where
    F: Future<Output = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(work).await.map_err(|e| Error::internal("database task failed", e))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_migrations() {
        let (pg, sqlite) = migration_versions();
        assert!(!pg.is_empty());
        assert_eq!(pg, sqlite, "migrations/postgres and migrations/sqlite must list the same versions");
    }

    /// Diesel records an applied migration by its version alone (the name up to the first `_`):
    /// two migrations of one version mean a database that applied one skips the other for ever.
    #[test]
    fn every_migration_has_a_version_of_its_own() {
        let (pg, sqlite) = migration_versions();
        for versions in [pg, sqlite] {
            let mut unique = versions.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), versions.len(), "a migration version is used twice: {versions:?}");
        }
    }

    /// Each query's `op` label is `file::function` of the function running it, as it was when
    /// the label was derived from the function's type name.
    #[test]
    fn query_labels_name_their_file_and_function() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/db/models");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let mut function = None;
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if let Some(at) = words.iter().position(|w| *w == "fn") {
                    function = words.get(at + 1).map(|w| w.split(['(', '<']).next().unwrap_or_default().to_owned());
                }
                let Some((_, rest)) = line.split_once("db_run!(") else { continue };
                let label = rest.split('"').nth(1).unwrap_or_else(|| panic!("{}: unlabelled: {line}", path.display()));
                let expected = format!("{stem}::{}", function.as_deref().unwrap_or("?"));
                assert_eq!(label, expected, "{}: {line}", path.display());
                checked += 1;
            }
        }
        assert!(checked >= 30, "{checked} queries");
    }

    #[test]
    fn lost_prepared_statements_are_recognised() {
        assert!(is_lost_statement("prepared statement \"s12\" does not exist"));
        assert!(is_lost_statement("prepared statement \"s3\" already exists"));
        assert!(!is_lost_statement("relation \"users\" does not exist"));
    }

    #[test]
    fn database_urls() {
        assert_eq!(DbTarget::parse("sqlite:///./x.db"), Ok(DbTarget::Sqlite("./x.db".into())));
        assert_eq!(DbTarget::parse("sqlite:////abs/x.db"), Ok(DbTarget::Sqlite("/abs/x.db".into())));
        assert_eq!(DbTarget::parse("data/x.db"), Ok(DbTarget::Sqlite("data/x.db".into())));
        assert!(matches!(DbTarget::parse("postgresql://u@h/db"), Ok(DbTarget::Postgres(_))));
        assert!(DbTarget::parse("mysql://u@h/db").is_err());
        assert!(DbTarget::parse("sqlite://:memory:").is_err());
        let pg = DbTarget::parse("postgres://user:hunter2@db.example:5433/auth").unwrap();
        assert!(!pg.describe().contains("hunter2"), "credentials never reach logs");
    }
}
