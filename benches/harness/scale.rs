//! The scale runs of issue 18: the same calls on a young database (the 200 seeded users) and on
//! a large one (`instachatico_auth::db::bulk_seed`), in one run, so that their ratio says what
//! size alone costs. GetMe (gRPC and JSON), Login, ListUsers (first page, a page at offset
//! 90,000, and the same depth by `page_token`), ListAuditLogs (one user, one action, one day
//! a month ago, and that day for one user or one action) and ListMySessions; and GetMe while
//! housekeeping purges a million rows.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use instachatico_auth::pb;
use instachatico_auth::pb::audit_service_client::AuditServiceClient;
use instachatico_auth::pb::user_service_client::UserServiceClient;

use super::{Report, Target, authed, channels, closed_loop, outcome};

/// The page of ListUsers the issue names: offset 90,000 (or as deep as a small table goes).
pub const DEEP_OFFSET: i32 = 90_000;
/// Logins' concurrency: bcrypt-bound, more only queues.
const LOGIN_CONCURRENCY: usize = 2;

/// The service's own time per call, read from its Prometheus endpoint around a run: the RPC's
/// (request in, reply out) and each database statement's, so that a ratio splits into the
/// database's part and the rest.
pub struct ServiceClock {
    url: String,
}

/// The service's histograms a [`ServiceClock`] reads.
const WATCHED: [&str; 2] = ["auth_rpc_duration_seconds", "auth_db_query_seconds"];

/// Seconds and calls per series (`metric{labels}`) of the service's histograms.
type Sums = std::collections::HashMap<String, (f64, f64)>;

impl ServiceClock {
    pub fn new(metrics_url: String) -> Self {
        Self { url: metrics_url }
    }

    async fn sums(&self) -> Sums {
        let text = reqwest::get(&self.url).await.expect("metrics").text().await.expect("metrics text");
        let mut sums = Sums::new();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            if let Some(base) = name.strip_suffix("_sum").filter(|b| WATCHED.contains(b)) {
                sums.entry(format!("{base}{{{labels}")).or_default().0 = value;
            } else if let Some(base) = name.strip_suffix("_count").filter(|b| WATCHED.contains(b)) {
                sums.entry(format!("{base}{{{labels}")).or_default().1 = value;
            }
        }
        sums
    }

    /// Runs `run` and notes on its report the service's milliseconds per answered call for
    /// every series that counted at least one per call.
    async fn around(&self, run: impl std::future::Future<Output = Report>) -> Report {
        let before = self.sums().await;
        let mut report = run.await;
        let after = self.sums().await;
        let calls = report.ok.max(1) as f64;
        let mut parts: Vec<(f64, String)> = after
            .iter()
            .filter_map(|(series, (sum, count))| {
                let (sum0, count0) = before.get(series).copied().unwrap_or_default();
                let per_call = (count - count0) / calls;
                (per_call >= 0.9).then(|| {
                    let ms = (sum - sum0) / (count - count0) * 1e3;
                    (ms * per_call, format!("{series} {ms:.3} ms x {per_call:.1}"))
                })
            })
            .collect();
        parts.sort_by(|a, b| b.0.total_cmp(&a.0));
        report.notes.push(format!(
            "in the service, per call: {}",
            parts.into_iter().map(|p| p.1).collect::<Vec<_>>().join("; ")
        ));
        report
    }
}

/// `run`, timed inside the service too when there is a `clock`.
async fn timed(clock: Option<&ServiceClock>, run: impl std::future::Future<Output = Report>) -> Report {
    match clock {
        Some(clock) => clock.around(run).await,
        None => run.await,
    }
}

/// The calls of one phase, each a closed loop of `concurrency` (logins: 2) for `duration`, with
/// `phase` in their names; GetMe as JSON too when Envoy runs (and wrk is installed). With a
/// `clock`, the listings note the service's own time per call.
pub async fn suite(
    target: &Target,
    phase: &str,
    concurrency: usize,
    duration: Duration,
    workdir: &std::path::Path,
    clock: Option<&ServiceClock>,
) -> Vec<Report> {
    let admin = target.admin_token.clone().expect("the target's admin");
    let channel = channels(&target.grpc_url, 1).await.remove(0);
    let mut users = UserServiceClient::new(channel.clone());
    let me = users.get_me(authed(&target.tokens[0], pb::GetMeRequest {})).await.expect("GetMe").into_inner();
    let first = pb::ListUsersRequest { limit: 50, ..Default::default() };
    let counted = pb::ListUsersRequest { include_total: true, ..first.clone() };
    let total = users.list_users(authed(&admin, counted.clone())).await.expect("ListUsers").into_inner().total;
    let total = total.expect("counted");
    let deep = DEEP_OFFSET.min(total - 51).max(0);
    let probe = pb::ListUsersRequest { limit: 1, offset: deep, ..Default::default() };
    let token = users.list_users(authed(&admin, probe)).await.expect("ListUsers").into_inner().next_page_token;
    let now = Utc::now();
    let day = |days_ago: i64| prost_types::Timestamp {
        seconds: (now - chrono::Duration::days(days_ago)).timestamp(),
        nanos: 0,
    };

    let mut reports = Vec::new();
    let mut named = |mut report: Report| {
        report.scenario = format!("{phase}: {}", report.scenario);
        reports.push(report);
    };
    named(super::getme_grpc(target, concurrency, duration).await);
    if target.json_url.is_some() && std::process::Command::new("wrk").arg("--version").output().is_ok() {
        let (t, dir) = (target.clone(), workdir.to_owned());
        named(
            tokio::task::spawn_blocking(move || super::getme_json_wrk(&t, concurrency, duration, &dir)).await.unwrap(),
        );
    }
    named(super::login(target, LOGIN_CONCURRENCY, duration).await);
    // Deep pages are named alike in both phases (the ratios pair them by name); the depth is a note.
    // The pages as a client that pages by `next_page_token` asks them (no count), and the first
    // pages again with the count a client may opt into (`include_total`), which reads every match.
    for (what, request) in [
        ("first page", first),
        ("first page with total", counted),
        ("deep by offset", pb::ListUsersRequest { limit: 50, offset: deep, ..Default::default() }),
        ("deep by page_token", pb::ListUsersRequest { limit: 50, page_token: token.clone(), ..Default::default() }),
    ] {
        let run = list_users(target, &admin, what, request, concurrency, duration);
        let mut report = timed(clock, run).await;
        if what.starts_with("deep") {
            report.notes.push(format!("{total} users; the page after the first {deep}"));
        }
        named(report);
    }
    let action = pb::ListAuditLogsRequest { action: "login_success".into(), ..Default::default() };
    let one_day = pb::ListAuditLogsRequest { since: Some(day(31)), until: Some(day(30)), ..Default::default() };
    for (what, request) in [
        ("one user", pb::ListAuditLogsRequest { user_id: me.id, ..Default::default() }),
        ("action login_success", action.clone()),
        ("one day, 30 days ago", one_day.clone()),
        // A time range with a user or an action as well: PostgreSQL plans these per call.
        ("one user, one day", pb::ListAuditLogsRequest { user_id: me.id, ..one_day.clone() }),
        (
            "action login_success, one day",
            pb::ListAuditLogsRequest { action: action.action.clone(), ..one_day.clone() },
        ),
        ("action login_success with total", pb::ListAuditLogsRequest { include_total: true, ..action }),
        ("one day, 30 days ago with total", pb::ListAuditLogsRequest { include_total: true, ..one_day }),
    ] {
        let run = list_audit(target, &admin, what, request, concurrency, duration);
        named(timed(clock, run).await);
    }
    let run = list_my_sessions(target, concurrency, duration);
    named(timed(clock, run).await);
    // The first page once more, last: whether its cost is the size's or the moment's.
    let again = pb::ListUsersRequest { limit: 50, ..Default::default() };
    named(timed(clock, list_users(target, &admin, "first page, again last", again, concurrency, duration)).await);
    reports
}

/// ListUsers as `request` asks, by the admin.
pub async fn list_users(
    target: &Target,
    admin: &str,
    what: &str,
    request: pb::ListUsersRequest,
    concurrency: usize,
    duration: Duration,
) -> Report {
    let channels = channels(&target.grpc_url, concurrency.clamp(1, 8)).await;
    let admin = admin.to_owned();
    closed_loop(&format!("listusers {what} c={concurrency}"), concurrency, duration, move |w, _| {
        let mut client = UserServiceClient::new(channels[w % channels.len()].clone());
        let request = authed(&admin, request.clone());
        async move { outcome(client.list_users(request).await) }
    })
    .await
}

/// ListAuditLogs as `request` asks (its count only when it sets `include_total`), by the admin.
pub async fn list_audit(
    target: &Target,
    admin: &str,
    what: &str,
    request: pb::ListAuditLogsRequest,
    concurrency: usize,
    duration: Duration,
) -> Report {
    let channels = channels(&target.grpc_url, concurrency.clamp(1, 8)).await;
    let admin = admin.to_owned();
    closed_loop(&format!("listauditlogs {what} c={concurrency}"), concurrency, duration, move |w, _| {
        let mut client = AuditServiceClient::new(channels[w % channels.len()].clone());
        let request = authed(&admin, request.clone());
        async move { outcome(client.list_audit_logs(request).await) }
    })
    .await
}

/// ListMySessions of many users.
pub async fn list_my_sessions(target: &Target, concurrency: usize, duration: Duration) -> Report {
    let channels = channels(&target.grpc_url, concurrency.clamp(1, 8)).await;
    let tokens = Arc::new(target.tokens.clone());
    closed_loop(&format!("listmysessions c={concurrency}"), concurrency, duration, move |w, n| {
        let mut client = UserServiceClient::new(channels[w % channels.len()].clone());
        let token = tokens[(w + n as usize * 7919) % tokens.len()].clone();
        async move { outcome(client.list_my_sessions(authed(&token, pb::ListMySessionsRequest {})).await) }
    })
    .await
}

/// One line per call of `large` against the same call of `small` (matched by name after the
/// phase): p50 and p99 of both and the ratios, and whether p99 is within `target`x.
pub fn ratios(small: &[Report], large: &[Report], target: f64) -> Vec<String> {
    let call = |r: &Report| r.scenario.split_once(": ").map_or(r.scenario.clone(), |(_, c)| c.to_owned());
    large
        .iter()
        .filter_map(|l| {
            let s = small.iter().find(|s| call(s) == call(l))?;
            let (p99, p50) = (l.ms(0.99) / s.ms(0.99), l.ms(0.5) / s.ms(0.5));
            let verdict = if p99 <= target { "ok" } else { "over" };
            Some(format!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {p50:.2} | {p99:.2} | {verdict} |",
                call(l),
                s.ms(0.5),
                s.ms(0.99),
                l.ms(0.5),
                l.ms(0.99)
            ))
        })
        .collect()
}

/// Writes `spec`'s rows through the storage code (one precomputed bcrypt hash of
/// [`super::PASSWORD`] at cost 4, one backend token encrypted with `cipher`); returns how long
/// it took.
pub async fn seed_large(
    db: &instachatico_auth::db::DbPool,
    cipher: &instachatico_auth::crypto::secrets::TokenCipher,
    spec: &instachatico_auth::db::bulk_seed::ScaleSpec,
) -> Duration {
    let started = std::time::Instant::now();
    let hash = tokio::task::spawn_blocking(|| bcrypt::hash(super::PASSWORD, 4).unwrap()).await.unwrap();
    let token = cipher.encrypt("scale-backend-token");
    instachatico_auth::db::bulk_seed::seed(db, spec, &hash, &token, Utc::now()).await.expect("bulk seed");
    started.elapsed()
}

/// The young database made to hold what the large one's rows hold, so that a ratio compares
/// sizes and not contents: a backend for each of its users (every bulk-seeded user has one, and
/// a listing's or GetMe's rows carry it), and audit rows a month old, more than a page of them
/// on the day the time ranges ask for (otherwise a page that is full at size is empty there).
/// The day holds rows not about any user, of an action no other call filters on, and rows of
/// `login_success` about `me` (the first seeded user), for the day of one action and of one user.
pub async fn seed_like_large(
    db: &instachatico_auth::db::DbPool,
    cipher: &instachatico_auth::crypto::secrets::TokenCipher,
    usernames: &[String],
) {
    use instachatico_auth::db::bulk_seed;
    use instachatico_auth::db::models::{audit, backends, users};
    let mut conn = db.get().await.expect("database");
    let mut ids = Vec::with_capacity(usernames.len());
    for name in usernames {
        let (user, _) = users::find_by_login(&mut conn, name).await.expect("user").expect("seeded user");
        ids.push(user.id);
    }
    let token = cipher.encrypt("scale-backend-token");
    let records: Vec<_> = ids.iter().map(|id| bulk_seed::backend(*id, &token, Utc::now())).collect();
    for part in records.chunks(100) {
        backends::insert_many(&mut conn, part).await.expect("backends");
    }
    let start = Utc::now() - chrono::Duration::days(31);
    let entry = |i: i64, user_id, action: &str| instachatico_auth::model::AuditEntry {
        id: 0,
        user_id,
        actor_id: user_id,
        action: action.to_owned(),
        ip_address: Some("10.0.0.1".to_owned()),
        user_agent: Some(bulk_seed::USER_AGENTS[0].to_owned()),
        metadata: serde_json::json!({}),
        created_at: start + chrono::Duration::minutes(10 * i + 5),
    };
    let me = ids.first().copied();
    let rows: Vec<_> =
        (0..120).flat_map(|i| [entry(i, None, "token_refresh"), entry(i, me, "login_success")]).collect();
    audit::insert_many(&mut conn, &rows).await.expect("audit rows");
}

/// GetMe while a purge runs: closed-loop runs of `chunk` until `done()` says the purge is over
/// (at most `limit`), merged into one report; and how long the purge took, as seen from here.
pub async fn getme_during(
    target: &Target,
    concurrency: usize,
    chunk: Duration,
    limit: Duration,
    done: impl Fn() -> bool,
) -> (Report, Duration) {
    let started = std::time::Instant::now();
    let mut all = Report::new(&format!("getme grpc during the purge c={concurrency}"));
    let (mut elapsed, mut windows) = (Duration::ZERO, Vec::new());
    while !done() && started.elapsed() < limit {
        let part = super::getme_grpc(target, concurrency, chunk).await;
        windows.push(format!("{:.1}", part.ms(0.99)));
        all.ok += part.ok;
        all.shed += part.shed;
        all.errors += part.errors;
        all.latency.add(&part.latency).expect("same histogram bounds");
        elapsed += part.elapsed;
    }
    all.elapsed = elapsed;
    // Whether the tail is spread over the purge or bunched in a few moments.
    all.notes.push(format!("p99 ms of each {} s window: {}", chunk.as_secs_f64(), windows.join(" ")));
    (all, started.elapsed())
}
