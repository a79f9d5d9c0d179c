//! The hot queries keep their indexes at size. A database seeded through the storage code (a
//! fiftieth of issue 18's sizes: big enough that the planners prefer an index wherever one
//! serves), then the hot RPCs through the real server: GetMe's session lookup, Login's user
//! lookup, keyset pages of ListUsers, ListAuditLogs by user, by action and by time,
//! ListMySessions, and the housekeeping purge's batches (ended sessions, old audit rows). Every
//! statement the server's connections sent meanwhile (diesel's instrumentation hands us its exact SQL and binds) is then explained
//! on the same database: `EXPLAIN (FORMAT JSON)` with the values bound (PostgreSQL, the custom
//! plan a request gets, with fresh statistics) and `EXPLAIN QUERY PLAN` (SQLite, without
//! statistics as the service runs it, and again after an `ANALYZE` an operator may run). A
//! sequential scan of a big table fails the test, and so does a page of a time range (listed by
//! time), alone or for one action, that is not read in order from an index that ends with
//! (created_at, id): one walking the log back from now (what listing a range by id did) or
//! sorting the range or the action's rows costs them, not the page. (A user's rows are few: their
//! page may sort them.)
//!
//! And the listing pages keep the plan they reuse at size, on the connection that reuses it
//! (PostgreSQL): a page planned afresh on every call costs more in planning than in running.

use std::collections::BTreeSet;
use std::sync::Mutex;

use chrono::{Duration, Utc};
use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::{QueryableByName, sql_types::Text};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use instachatico_auth::crypto::jwt::Subject;
use instachatico_auth::db::bulk_seed::{self, ScaleSpec};
use instachatico_auth::db::models::{audit, sessions};
use instachatico_auth::model::Role;
use instachatico_auth::pb::audit_service_client::AuditServiceClient;
use instachatico_auth::pb::{self};

use crate::common::{Backend, TestServer, USER_PASSWORD, authed};

const BIG_TABLES: [&str; 4] = ["users", "user_backends", "sessions", "audit_logs"];

/// Databases whose statements are being recorded (the tests of both backends run at once).
static WATCHED: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// The recorded statements: database, SQL, then diesel's rendering of the binds.
static RECORDED: Mutex<BTreeSet<(String, String, String)>> = Mutex::new(BTreeSet::new());

/// One connection's recorder: it learns its database when the connection is established.
struct Recorder {
    url: String,
}

impl Instrumentation for Recorder {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartEstablishConnection { url, .. } => url.clone_into(&mut self.url),
            InstrumentationEvent::StartQuery { query, .. } if !self.url.is_empty() => {
                let watched =
                    WATCHED.lock().unwrap().iter().find(|w| w.contains(&self.url) || self.url.contains(*w)).cloned();
                if let Some(database) = watched {
                    let text = query.to_string();
                    let (sql, binds) = text.split_once(" -- binds: ").unwrap_or((&text, "[]"));
                    RECORDED.lock().unwrap().insert((database, sql.to_owned(), binds.to_owned()));
                }
            }
            _ => {}
        }
    }
}

fn recorder() -> Option<Box<dyn Instrumentation>> {
    Some(Box::new(Recorder { url: String::new() }))
}

/// A diesel bind as rendered by `Debug` (numbers, quoted strings, timestamps, `Some(..)`,
/// `None`) as an SQL literal.
fn literal(bind: &str) -> String {
    let bind = bind.trim();
    if let Some(inner) = bind.strip_prefix("Some(").and_then(|b| b.strip_suffix(')')) {
        return literal(inner);
    }
    if bind == "None" {
        return "NULL".into();
    }
    if let Some(text) = bind.strip_prefix('"').and_then(|b| b.strip_suffix('"')) {
        // A password hash or an encrypted token is planned like any string, and must not reach
        // the log (EXPLAIN's SQL is logged at debug); nor may a hash's `$` meet the placeholders
        // still to be replaced.
        if is_bcrypt(text) || text.starts_with("gAAAAA") {
            return "'secret-left-out'".into();
        }
        return format!("'{}'", text.replace("\\\"", "\"").replace('\'', "''"));
    }
    if bind == "true" || bind == "false" || bind.parse::<f64>().is_ok() {
        return bind.into();
    }
    format!("'{bind}'")
}

/// `$2b$10$...` and its kin.
fn is_bcrypt(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() > 7 && b[0] == b'$' && b[1] == b'2' && b[3] == b'$' && b[6] == b'$'
}

/// The top-level items of diesel's `[a, "b, c", Some(d)]`.
fn binds(list: &str) -> Vec<String> {
    let inner = list.trim().trim_start_matches('[').trim_end_matches(']');
    let (mut items, mut current, mut quoted, mut depth, mut escaped) = (Vec::new(), String::new(), false, 0, false);
    for c in inner.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '(' | '[' if !quoted => depth += 1,
            ')' | ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        items.push(current);
    }
    items
}

/// Stops recording `database`; its recorded statements that read or write a big table (not
/// BEGIN, NOTIFY, ...).
fn recorded(database: &str) -> Vec<(String, String)> {
    WATCHED.lock().unwrap().retain(|w| w != database);
    let all = RECORDED.lock().unwrap().clone();
    all.into_iter()
        .filter(|(db, _, _)| db == database)
        .map(|(_, sql, binds)| (sql, binds))
        .filter(|(sql, _)| {
            let head = sql.trim_start().to_ascii_uppercase();
            ["SELECT", "UPDATE", "DELETE", "WITH"].iter().any(|k| head.starts_with(k))
                && BIG_TABLES.iter().any(|t| ["\"", "`", " "].iter().any(|q| sql.contains(&format!("{q}{t}{q}"))))
        })
        .collect()
}

/// Sequential scans of big tables in a PostgreSQL JSON plan.
fn pg_seq_scans(plan: &serde_json::Value, out: &mut Vec<String>) {
    match plan {
        serde_json::Value::Object(node) => {
            if node.get("Node Type").and_then(|t| t.as_str()) == Some("Seq Scan") {
                let table = node.get("Relation Name").and_then(|t| t.as_str()).unwrap_or_default();
                if BIG_TABLES.contains(&table) {
                    out.push(table.to_owned());
                }
            }
            node.values().for_each(|v| pg_seq_scans(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| pg_seq_scans(v, out)),
        _ => {}
    }
}

/// A page of a time range (listed by time) must read the (created_at, id) index from the
/// range's end, not walk the log from now nor sort the range.
fn by_time(sql: &str) -> bool {
    sql.replace('`', "\"").contains("ORDER BY \"audit_logs\".\"created_at\" DESC")
}

/// A page by time that must be read in order: not one user's (that index bounds the rows).
fn in_time_order(sql: &str) -> bool {
    by_time(sql) && !sql.replace('`', "\"").contains("\"audit_logs\".\"user_id\" =")
}

/// The indexes that read a page by time in order: the time's, and the action's then the time's.
const TIME_INDEXES: [&str; 2] = ["audit_logs_created_at_id_idx", "audit_logs_action_created_at_id_idx"];

/// What is wrong with PostgreSQL's JSON `plan` of `sql` (run as `shown`): sequential scans of
/// big tables, and a page by time (not one user's) not read in order from a time index.
fn pg_plan_faults(sql: &str, shown: &str, plan: &str) -> Vec<String> {
    let mut found = Vec::new();
    pg_seq_scans(&serde_json::from_str(plan).unwrap(), &mut found);
    let mut faults: Vec<String> = found.into_iter().map(|t| format!("Seq Scan on {t}: {shown}\n{plan}")).collect();
    let by_a_time_index = TIME_INDEXES.iter().any(|i| plan.contains(&format!("\"{i}\"")));
    if in_time_order(sql) && (!by_a_time_index || plan.contains("\"Sort\"")) {
        faults.push(format!("audit_logs not read in order from a time index: {shown}\n{plan}"));
    }
    faults
}

/// What is wrong with SQLite's plans of `statements` on `lite` (`when`: with which statistics):
/// full scans of big tables, and pages by time not read in order from a time index.
fn sqlite_plan_faults(lite: &mut diesel::SqliteConnection, statements: &[(String, String)], when: &str) -> Vec<String> {
    let mut faults = Vec::new();
    for (sql, _) in statements {
        let explain = diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"));
        let lines: Vec<PlanLine> = diesel::RunQueryDsl::load(explain, lite).unwrap_or_else(|e| panic!("{e}: {sql}"));
        let plan: Vec<&str> = lines.iter().map(|l| l.detail.as_str()).collect();
        let by_a_time_index = plan.iter().any(|l| TIME_INDEXES.iter().any(|i| l.contains(&format!("INDEX {i} "))));
        if in_time_order(sql) && (!by_a_time_index || plan.iter().any(|l| l.contains("TEMP B-TREE"))) {
            faults.push(format!("{when}: audit_logs not read in order from a time index: {plan:?}: {sql}"));
        }
        // `SCAN t` reads the whole table; `SCAN t USING (COVERING) INDEX` a whole index.
        for line in plan.iter().filter(|l| BIG_TABLES.iter().any(|t| l.starts_with(&format!("SCAN {t}")))) {
            faults.push(format!("{when}: {line}: {sql}"));
        }
    }
    faults
}

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text)]
    detail: String,
}

#[derive(QueryableByName)]
struct PgPlan {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    plan: String,
}

async fn hot_queries_use_indexes_at_size(s: TestServer) {
    diesel::connection::set_default_instrumentation(recorder).unwrap();
    let spec = ScaleSpec::divided_by(50);
    let hash = bcrypt::hash(USER_PASSWORD, 4).unwrap();
    let token = s.app().cipher().encrypt("backend-token");
    let now = Utc::now();
    let seeded = bulk_seed::seed(s.app().db(), &spec, &hash, &token, now).await.unwrap();
    // Connections made from now on carry the recorder. Start-up housekeeping runs again, and
    // is let end first: its purges' plans depend on how much it has left (a backlog of ended
    // sessions is best read in table order), and the test's purges below measure their own.
    let s = s.restart(&[]).await;
    s.housekeeping_done().await;

    let admin = s.admin_token().await;
    let (mut users, mut audit) = (s.users().await, AuditServiceClient::new(s.channel().await));
    let (user, session) = seeded.live_sessions[0].clone();
    let index = seeded.users.iter().position(|u| *u == user).unwrap();
    let name = bulk_seed::username(index);
    let subject = Subject { user_id: user, username: &name, role: Role::User, session: &session };
    let jwt = s.app().jwt().issue(&subject, now, now + Duration::hours(1)).unwrap();
    let users_page = pb::ListUsersRequest {
        limit: 50,
        offset: 0,
        page_token: format!("u{}", seeded.users[1000].get()),
        include_total: false,
    };
    let since = prost_types::Timestamp { seconds: (now - Duration::days(31)).timestamp(), nanos: 0 };
    let until = prost_types::Timestamp { seconds: (now - Duration::days(30)).timestamp(), nanos: 0 };
    let audit_pages = [
        pb::ListAuditLogsRequest { user_id: user.get(), ..Default::default() },
        pb::ListAuditLogsRequest { user_id: user.get(), page_token: "a15000".into(), ..Default::default() },
        pb::ListAuditLogsRequest { action: "logout".into(), page_token: "a15000".into(), ..Default::default() },
        pb::ListAuditLogsRequest { since: Some(since), until: Some(until), ..Default::default() },
        // A day for the commonest action (42 % of the log), and for one user.
        pb::ListAuditLogsRequest {
            action: "login_success".into(),
            since: Some(since),
            until: Some(until),
            ..Default::default()
        },
        pb::ListAuditLogsRequest { user_id: user.get(), since: Some(since), until: Some(until), ..Default::default() },
        pb::ListAuditLogsRequest {
            since: Some(since),
            until: Some(until),
            page_token: format!("t{}.000000000_15000", (now - Duration::hours(30 * 24 + 12)).timestamp()),
            ..Default::default()
        },
    ];

    WATCHED.lock().unwrap().push(s.database_url.clone());
    users.get_me(authed(&jwt, pb::GetMeRequest {})).await.unwrap();
    users.list_my_sessions(authed(&jwt, pb::ListMySessionsRequest {})).await.unwrap();
    s.login(&bulk_seed::username(7), USER_PASSWORD).await;
    s.login(&format!("{}@example.com", bulk_seed::username(8)), USER_PASSWORD).await;
    users.list_users(authed(&admin, users_page)).await.unwrap();
    for page in audit_pages {
        audit.list_audit_logs(authed(&admin, page)).await.unwrap();
    }
    // The purge's batches (start-up housekeeping already took the sessions ended a week ago).
    let mut conn = s.app().db().get().await.unwrap();
    let sessions_purged = sessions::purge_ended(&mut conn, Utc::now(), 500).await.unwrap();
    // A batch from the log's start, then one from where it ended.
    let before = Utc::now() - Duration::days(60);
    let (first, newest) = audit::purge_before(&mut conn, before, None, 500).await.unwrap();
    let (audit_purged, _) = audit::purge_before(&mut conn, before, newest, 500).await.unwrap();
    assert!(first == 500 && newest.is_some_and(|t| t < before), "{first}, {newest:?}");
    drop(conn);
    assert!(sessions_purged > 0 && audit_purged > 0, "the purge had work: {sessions_purged}, {audit_purged}");

    let statements = recorded(&s.database_url);
    // SQLite's quotes are backticks.
    let joined = statements.iter().map(|(sql, _)| sql.replace('`', "\"")).collect::<Vec<_>>().join("\n");
    for expected in
        ["\"sessions\" INNER JOIN", "lower(\"users\".\"username\")", "DELETE FROM sessions", "DELETE FROM audit_logs"]
    {
        assert!(joined.contains(expected), "no statement with {expected:?} recorded:\n{joined}");
    }
    let mut scans = Vec::new();
    assert_eq!(statements.iter().filter(|(sql, _)| by_time(sql)).count(), 4, "the pages by time recorded");
    let analyze = diesel::sql_query("ANALYZE");
    match s.backend {
        Backend::Postgres => {
            // Fresh statistics of the tables as they are now, as autovacuum would give; the
            // explaining connection is new, so it reads them.
            let mut pg = AsyncPgConnection::establish(&s.database_url).await.unwrap();
            diesel_async::RunQueryDsl::execute(analyze, &mut pg).await.unwrap();
            for (sql, list) in &statements {
                let mut bound = sql.clone();
                for (n, value) in binds(list).iter().enumerate().rev() {
                    bound = bound.replace(&format!("${}", n + 1), &literal(value));
                }
                let explain = diesel::sql_query(format!("EXPLAIN (FORMAT JSON) {bound}"));
                let plan: PgPlan = diesel_async::RunQueryDsl::get_result(explain, &mut pg)
                    .await
                    .unwrap_or_else(|e| panic!("{e}: {bound}"));
                scans.extend(pg_plan_faults(sql, &bound, &plan.plan));
            }
        }
        Backend::Sqlite => {
            // As the service has it (no statistics), then after an ANALYZE by hand, each on a new
            // connection, which reads the statistics there are.
            let connect = || <diesel::SqliteConnection as diesel::Connection>::establish(&s.database_url).unwrap();
            scans.extend(sqlite_plan_faults(&mut connect(), &statements, "without statistics"));
            diesel::RunQueryDsl::execute(analyze, &mut connect()).unwrap();
            scans.extend(sqlite_plan_faults(&mut connect(), &statements, "after ANALYZE"));
        }
    }
    assert!(scans.is_empty(), "hot queries scan big tables:\n{}", scans.join("\n\n"));
    s.stop().await;
}

/// A statement in this connection's cache and how often PostgreSQL planned it afresh.
#[derive(QueryableByName, Debug)]
struct Prepared {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    statement: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    generic_plans: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    custom_plans: i64,
}

/// The listing pages keep one plan at size (PostgreSQL), and it is one that reads an index.
/// With `LIMIT $1` PostgreSQL judged a page's generic plan by a tenth of the table and, from
/// about 10,000 users up, planned ListUsers' pages afresh on every execution, which cost more
/// than the execution (ListAuditLogs' pages by action likewise at a million rows). With the
/// limit in the text it plans five times (its rule before it trusts a generic plan) and then
/// reuses the plan; `EXPLAIN EXECUTE` on the very connection shows the plan it uses.
///
/// Pages of a time range are read without the range's start in their statement (the page ends
/// there itself): with both ends bound, PostgreSQL's generic estimate of an unknown range (0.5 %
/// of the table) priced the same backward index scan above a custom plan's at this size, and it
/// planned them afresh on every call (0.1 ms of planning on a 0.05 ms page), where it reused
/// the plan at a few thousand rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_reuse_their_plan_at_size() {
    use diesel_async::RunQueryDsl;
    use instachatico_auth::db::DbConn;
    use instachatico_auth::db::models::users;
    use instachatico_auth::model::AuditQuery;
    let Some(s) = start(Backend::Postgres).await else { return };
    diesel::connection::set_default_instrumentation(recorder).unwrap();
    let spec = ScaleSpec { users: 10_000, audit_rows: 200_000, live_sessions: 0, ended_sessions: 0, days: 30 };
    let hash = bcrypt::hash(USER_PASSWORD, 4).unwrap();
    let token = s.app().cipher().encrypt("backend-token");
    let now = Utc::now();
    let seeded = bulk_seed::seed(s.app().db(), &spec, &hash, &token, now).await.unwrap();
    // Connections made from now on carry the recorder.
    let s = s.restart(&[]).await;
    let after = i64::from(seeded.users[9_000].get());
    let by_action = AuditQuery { action: Some("logout".into()), ..Default::default() };
    let one_day = AuditQuery {
        since: Some(now - Duration::days(10)),
        until: Some(now - Duration::days(9)),
        ..Default::default()
    };
    let audit_pages = [
        (AuditQuery { user_id: Some(seeded.users[5]), ..Default::default() }, None),
        (by_action.clone(), None),
        (by_action, Some((100_000, None))),
        (one_day.clone(), None),
        (one_day, Some((100_000, Some(now - Duration::hours(9 * 24 + 12))))),
    ];
    WATCHED.lock().unwrap().push(s.database_url.clone());
    let mut conn = s.app().db().get().await.unwrap();
    let DbConn::Postgres(pg) = &mut conn else { panic!("a PostgreSQL connection") };
    diesel::sql_query("ANALYZE users, user_backends, audit_logs").execute(&mut **pg).await.unwrap();
    for _ in 0..12 {
        assert_eq!(users::list(&mut conn, 51, 0, None).await.unwrap().len(), 51);
        assert_eq!(users::list(&mut conn, 51, 0, Some(after)).await.unwrap().len(), 51);
        for (filter, after) in &audit_pages {
            let (rows, _) = audit::page(&mut conn, filter, 51, 0, *after, false).await.unwrap();
            assert!(!rows.is_empty(), "{filter:?} after {after:?} lists something");
        }
    }
    let recorded = recorded(&s.database_url);
    let DbConn::Postgres(pg) = &mut conn else { unreachable!() };
    let cached: Vec<Prepared> =
        diesel::sql_query("SELECT name, statement, generic_plans, custom_plans FROM pg_prepared_statements")
            .load(&mut **pg)
            .await
            .unwrap();
    let pages: Vec<&Prepared> = cached
        .iter()
        .filter(|p| ["ORDER BY \"users\"", "ORDER BY \"audit_logs\""].iter().any(|o| p.statement.contains(o)))
        .collect();
    assert_eq!(pages.len(), 2 + audit_pages.len(), "each kind of page once: {cached:?}");
    let afresh: Vec<_> = pages.iter().filter(|p| p.custom_plans > 5 || p.generic_plans < 7).collect();
    assert!(afresh.is_empty(), "planned afresh: {afresh:#?}");
    let mut faults = Vec::new();
    for page in pages {
        let (_, list) = recorded.iter().find(|(sql, _)| *sql == page.statement).expect("its binds recorded");
        let args = binds(list).iter().map(|b| literal(b)).collect::<Vec<_>>().join(", ");
        let execute = if args.is_empty() { page.name.clone() } else { format!("{}({args})", page.name) };
        let explain = diesel::sql_query(format!("EXPLAIN (FORMAT JSON) EXECUTE {execute}"));
        let plan: PgPlan = explain.get_result(&mut **pg).await.unwrap_or_else(|e| panic!("{e}: {execute}"));
        faults.extend(pg_plan_faults(&page.statement, &execute, &plan.plan));
    }
    assert!(faults.is_empty(), "pages' plans scan big tables:\n{}", faults.join("\n\n"));
    drop(conn);
    s.stop().await;
}

async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend).await
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hot_queries_use_indexes_at_size() {
        if let Some(s) = super::start(super::Backend::Sqlite).await {
            super::hot_queries_use_indexes_at_size(s).await;
        }
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hot_queries_use_indexes_at_size() {
        if let Some(s) = super::start(super::Backend::Postgres).await {
            super::hot_queries_use_indexes_at_size(s).await;
        }
    }
}
