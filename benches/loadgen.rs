//! The load harness: `bench/run` (or `cargo bench --bench loadgen -- --help`).
//!
//! For each database it seeds users and sessions through the crate's own storage code, then
//! for each scenario starts a fresh release service process (and Envoy for JSON), warms it up,
//! runs the scenario while sampling the service's RSS, and stops it. Rate limits and login
//! throttling are switched off for the run (it says so), everything else is the default
//! configuration (bcrypt cost 12, pool of 16). Results: a table on stdout and
//! `results.json` / `results.md` in the output directory.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark tool: a panic is its error report")]

#[path = "harness/fake_backend.rs"]
mod fake_backend;
#[path = "harness/fixed_authz.rs"]
mod fixed_authz;
#[path = "harness/mod.rs"]
mod harness;
#[path = "harness/process.rs"]
mod process;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use harness::{Report, RssSampler, Target, WrkCall};
use process::{Envoy, PgBouncer, ServiceProcess, Upstream};
use secrecy::{ExposeSecret, SecretString};

const JWT_SECRET: &str = "loadgen-jwt-secret-0123456789-abcdefghijklmnop";
const FERNET_KEY: &str = "KSDEUmaWmBWPfjVWm8Pkru5oXPd2OaHkVt0xXkx-Qbg=";
/// The proxy scenario's backend token.
const PROXIED_TOKEN: &str = "loadgen-backend-token";

#[derive(Debug, Parser)]
#[command(about = "Load scenarios against a real instachatico-auth (release build)")]
struct Args {
    /// Databases to run on: sqlite, postgres; also postgres-unnamed (DB_PREPARED_STATEMENTS=false,
    /// direct) and pgbouncer (the same through a PgBouncer in transaction mode, LISTEN direct).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    db: Vec<String>,
    /// Scenarios: null, getme, json, login, storm, sustained; also getme-eddsa (GetMe with
    /// EdDSA-signed tokens), introspect (RFC 7662 by an API key) and apikey (GetUser by an API
    /// key and by an admin session), proxy (a request through the backend proxy vs. the same
    /// request straight to the backend), login-mfa (a sign-in with a TOTP step vs. a plain
    /// Login, one after another); replicas (JSON GetMe and Login through one Envoy in front of
    /// 1, 2 and 3 replicas; PostgreSQL only); scale (issue 18: the calls on the seeded database, then again
    /// after a bulk seed of 100,000 users, 1,000,000 audit rows and 200,000 sessions divided by
    /// --scale-divisor, with ratios; then GetMe while housekeeping purges the old rows).
    #[arg(long, value_delimiter = ',', default_value = "null,getme,json,login,storm,sustained")]
    scenarios: Vec<String>,
    /// The scale scenario's sizes are issue 18's divided by this (1: full size).
    #[arg(long, default_value_t = 1)]
    scale_divisor: usize,
    /// The scale scenario measures only GetMe during the purge against GetMe before it (on the
    /// seeded database) and after: no 200-user phase, no other call. A few minutes a run, so
    /// the purge's pacing can be compared over several runs.
    #[arg(long)]
    scale_purge_only: bool,
    /// Concurrency of the scale scenario's calls (Login: 2).
    #[arg(long, default_value_t = 4)]
    scale_concurrency: usize,
    /// Seconds per closed-loop run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of the sustained run (seed 8.3: 10,000 GetMe/min; 5 minutes).
    #[arg(long, default_value_t = 300)]
    sustained_seconds: u64,
    /// Databases the sustained run uses (the issue asks for PostgreSQL).
    #[arg(long, value_delimiter = ',', default_value = "postgres")]
    sustained_on: Vec<String>,
    /// Concurrency of the throughput runs (null, getme, json).
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    concurrency: Vec<usize>,
    /// Logins of the storm (seed 8.3: 1000).
    #[arg(long, default_value_t = 1000)]
    storm_logins: usize,
    /// Seeded users (and sessions).
    #[arg(long, default_value_t = 200)]
    users: usize,
    #[arg(long, default_value_t = 12)]
    bcrypt_cost: u32,
    /// PostgreSQL server on which throwaway databases are created.
    #[arg(long, env = "BENCH_PG_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_url: String,
    /// Where results.json and results.md go.
    #[arg(long, default_value = "bench/results/latest")]
    out: PathBuf,
    /// How Envoy reaches the service in the JSON scenario: `unix` (its proxy socket, as
    /// deployed) or `tcp` (its port), to compare the two.
    #[arg(long, default_value = "unix")]
    envoy_upstream: String,
    /// KEY=VALUE settings added to every service's environment (e.g. SESSION_CACHE_TTL_MS=0, so
    /// that every GetMe reads the database).
    #[arg(long, value_delimiter = ',')]
    service_env: Vec<String>,
    /// The proxy scenario's rows are run this many times, interleaved (each round in a rotated
    /// order), and each row also gets a line with its medians: on a shared machine one run of
    /// each row is at the mercy of whatever else ran at that moment.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    std::fs::create_dir_all(&args.out).expect("output dir");
    println!(
        "instachatico-auth load harness: rate limits and login throttling OFF for this run; bcrypt cost {}",
        args.bcrypt_cost
    );
    println!(
        "machine: {} cores; service {}",
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        env!("CARGO_BIN_EXE_instachatico-auth")
    );
    let (per_verify, bound) = tokio::task::spawn_blocking({
        let cost = args.bcrypt_cost;
        move || harness::bcrypt_bound(cost, 6)
    })
    .await
    .unwrap();
    println!(
        "bcrypt bound: one verify at cost {} = {:.1} ms here -> {:.2} logins/s on all cores\n",
        args.bcrypt_cost,
        per_verify.as_secs_f64() * 1e3,
        bound
    );

    let mut all: Vec<(String, Report)> = Vec::new();
    let mut sustained_windows = Vec::new();
    for db in &args.db {
        let database = Database::create(db, &args.pg_url).await;
        let seeded = database.seed(args.users, args.bcrypt_cost).await;
        for scenario in &args.scenarios {
            if scenario == "sustained" && !args.sustained_on.contains(db) {
                continue;
            }
            if scenario == "scale" {
                for report in run_scale(&database, &seeded, &args).await {
                    println!("[{db}] {}", report.summary());
                    for note in &report.notes {
                        println!("         {note}");
                    }
                    all.push((db.clone(), report));
                }
                continue;
            }
            for report in run_scenario(scenario, &database, &seeded, &args, &mut sustained_windows).await {
                println!("[{db}] {}", report.summary());
                for note in &report.notes {
                    println!("         {note}");
                }
                all.push((db.clone(), report));
            }
        }
        database.drop().await;
    }
    write_results(&args, per_verify, bound, &all, &sustained_windows);
}

async fn run_scenario(
    scenario: &str,
    database: &Database,
    seeded: &Seeded,
    args: &Args,
    windows: &mut Vec<(String, harness::Window)>,
) -> Vec<Report> {
    let seconds = Duration::from_secs(args.seconds);
    if scenario == "replicas" {
        return replicas(database, seeded, args).await;
    }
    let mut reports = Vec::new();
    let runs: Vec<Option<usize>> = match scenario {
        "null" | "getme" | "json" | "getme-eddsa" | "introspect" | "apikey" | "proxy" => {
            args.concurrency.iter().copied().map(Some).collect()
        }
        "login" => vec![Some(1), Some(8), Some(64)],
        _ => vec![None],
    };
    // The proxy scenario's backend: a real HTTP server in this process.
    let backend = if scenario == "proxy" { Some(fake_backend::FakeBackend::start_quiet("bench").await) } else { None };
    for c in runs {
        // A fresh service per run: one run's leftovers never colour the next.
        let mut env = database.service_env(scenario == "getme-eddsa");
        if let Some(backend) = &backend {
            env.extend([
                ("BACKEND_PROXY".to_owned(), "true".to_owned()),
                ("BACKEND_ALLOWED_HOSTS".to_owned(), backend.addr.to_string()),
                ("RATE_LIMIT_PROXY_PER_MINUTE".to_owned(), "0".to_owned()),
            ]);
        }
        env.extend(args.service_env.iter().map(|setting| {
            let (key, value) = setting.split_once('=').expect("--service-env KEY=VALUE");
            (key.to_owned(), value.to_owned())
        }));
        let service = ServiceProcess::spawn(&env);
        let upstream = if args.envoy_upstream == "tcp" {
            Upstream::Tcp(service.addr)
        } else {
            Upstream::Unix(service.socket.clone())
        };
        let through_envoy = matches!(scenario, "json" | "proxy");
        let envoy = if through_envoy { Envoy::start(&[upstream]).await } else { None };
        if through_envoy && envoy.is_none() {
            println!("(no envoy binary: skipping the {scenario} scenario)");
            return reports;
        }
        let target = Target {
            grpc_url: service.url(),
            json_url: envoy.as_ref().map(|e| e.url.clone()),
            users: seeded.users.clone(),
            tokens: if scenario == "getme-eddsa" { seeded.eddsa_tokens.clone() } else { seeded.tokens.clone() },
            pid: Some(service.pid()),
            api_key: Some(seeded.api_key.clone()),
            admin_token: Some(seeded.admin_token.clone()),
        };
        // Warm up connections, caches and the allocator.
        if !matches!(scenario, "login" | "login-mfa" | "storm") {
            let _ = harness::getme_grpc(&target, 8, Duration::from_secs(2)).await;
        }
        let sampler = RssSampler::start(service.pid());
        let cpu_before = harness::cpu_time(service.pid());
        let mut produced = match (scenario, c) {
            ("null", Some(c)) => vec![harness::null_rpc(&target, c, seconds).await],
            ("getme", Some(c)) => vec![harness::getme_grpc(&target, c, seconds).await],
            ("getme-eddsa", Some(c)) => {
                let mut report = harness::getme_grpc(&target, c, seconds).await;
                report.scenario = format!("getme grpc, EdDSA tokens c={c}");
                vec![report]
            }
            ("introspect", Some(c)) => vec![harness::introspect_grpc(&target, c, seconds).await],
            ("apikey", Some(c)) => {
                let mut reports = Vec::new();
                for (credential, what) in [(&seeded.api_key, "api key"), (&seeded.admin_token, "admin session")] {
                    reports.push(harness::get_user_grpc(&target, credential, what, c, seconds).await);
                }
                reports
            }
            ("json", Some(c)) => {
                let envoy = envoy.as_ref().expect("Envoy running");
                let watched = [("Envoy", envoy.pid()), ("service", service.pid())];
                let mut reports = Vec::new();
                for (name, call) in [
                    (format!("getme json via envoy c={c}"), WrkCall::JsonGetMe),
                    (format!("getme grpc-web via envoy c={c}"), WrkCall::GrpcWebGetMe),
                ] {
                    reports.push(wrk_measured(name, call, &envoy.url, &target, c, seconds, &watched).await);
                }
                reports.extend(envoy_ceiling(&target, c, seconds).await);
                reports
            }
            ("proxy", Some(c)) => {
                let (envoy, backend) = (envoy.as_ref().expect("Envoy running"), backend.as_ref().expect("backend"));
                let base = format!("http://{}/api", backend.addr);
                let credentials = harness::proxy_credentials(&target, &base, PROXIED_TOKEN, 8).await;
                let proxied = Target { tokens: credentials, ..target.clone() };
                let direct = Target { tokens: vec![PROXIED_TOKEN.to_owned()], ..target.clone() };
                let harness_pid = std::process::id();
                let watched = [("Envoy", envoy.pid()), ("service", service.pid()), ("backend", harness_pid)];
                let url = format!("http://{}", backend.addr);
                // The floors: Envoy forwarding with no decision, and the committed envoy.yaml
                // asking a decision server that answers at once (in this process).
                let fixed = fixed_authz::start(backend.addr, "/api", PROXIED_TOKEN).await;
                let floors = (
                    Envoy::start_forwarding(backend.addr).await,
                    Envoy::start_checked_forwarding(backend.addr, fixed).await,
                    Envoy::start(&[fixed]).await,
                );
                let (Some(forwarding), Some(checked), Some(fixed)) = floors else { panic!("Envoy starts") };
                let rounds = args.rounds.max(1);
                let mut reports = Vec::new();
                // An instant backend (the proxy's whole cost shows), and one taking 5 ms.
                for (what, proxied_path, direct_path) in [
                    ("", "/backend/feed?limit=20", "/api/feed?limit=20"),
                    (", backend 5 ms", "/backend/feed?limit=20&sleep_ms=5", "/api/feed?limit=20&sleep_ms=5"),
                ] {
                    let names = [
                        format!("GET via the backend proxy{what} c={c}"),
                        format!("GET straight to the backend{what} c={c}"),
                        format!("GET via Envoy alone, no decision{what} c={c}"),
                        format!("GET via Envoy with ext_authz only, a decision that costs nothing{what} c={c}"),
                        format!("GET via envoy.yaml, a decision that costs nothing{what} c={c}"),
                    ];
                    let mut rows: Vec<Vec<Report>> = names.iter().map(|_| Vec::new()).collect();
                    for round in 0..rounds {
                        for row in (0..names.len()).map(|i| (i + round) % names.len()) {
                            let mut name = names[row].clone();
                            if rounds > 1 {
                                name.push_str(&format!(" (round {}/{rounds})", round + 1));
                            }
                            let call = WrkCall::Get(if row == 1 { direct_path } else { proxied_path });
                            let report = match row {
                                0 => wrk_measured(name, call, &envoy.url, &proxied, c, seconds, &watched).await,
                                1 => {
                                    wrk_measured(name, call, &url, &direct, c, seconds, &[("backend", harness_pid)])
                                        .await
                                }
                                _ => {
                                    let floor = [&forwarding, &checked, &fixed][row - 2];
                                    let report = wrk_measured(
                                        name,
                                        call,
                                        &floor.url,
                                        &direct,
                                        c,
                                        seconds,
                                        &[("Envoy", floor.pid())],
                                    )
                                    .await;
                                    Report { measures_service: false, ..report }
                                }
                            };
                            rows[row].push(report);
                        }
                    }
                    for (name, runs) in names.iter().zip(rows) {
                        let median = (rounds > 1)
                            .then(|| harness::median_report(&format!("{name} (median of {rounds})"), &runs));
                        reports.extend(runs);
                        reports.extend(median);
                    }
                }
                reports
            }
            ("login", Some(c)) => vec![harness::login(&target, c, seconds).await],
            ("login-mfa", _) => harness::login_mfa(&target, 60, seconds).await,
            ("storm", _) => {
                let (logins, probes) = harness::storm(&target, args.storm_logins, 8, Duration::from_secs(10)).await;
                vec![logins, probes]
            }
            ("sustained", _) => {
                let (report, w) = harness::sustained(
                    &target,
                    10_000,
                    Duration::from_secs(args.sustained_seconds),
                    Duration::from_secs(30),
                )
                .await;
                windows.extend(w.into_iter().map(|w| (database.kind.clone(), w)));
                vec![report]
            }
            (other, _) => panic!("unknown scenario {other}"),
        };
        let peak = sampler.finish();
        for report in produced.iter_mut().filter(|r| r.measures_service) {
            report.peak_rss_kib = Some(peak);
        }
        // The service's CPU per request of a closed-loop run (one report per service): what the
        // call costs the service, apart from the load generator sharing the machine.
        if let [report] = produced.as_mut_slice()
            && matches!(scenario, "null" | "getme" | "getme-eddsa" | "introspect")
        {
            report.notes.push(harness::cpu_per_request(report, &[("service", service.pid(), cpu_before)]));
        }
        reports.extend(produced);
    }
    reports
}

/// Names of the replicas in the CPU notes.
const REPLICA_NAMES: [&str; 3] = ["replica 1", "replica 2", "replica 3"];

/// 1, 2 and 3 replicas of the service on one PostgreSQL behind one Envoy (issue 18 point 4):
/// JSON GetMe at each `--concurrency`, and JSON Login at c=4. The CPU notes show each
/// replica's share, so a replica that gets no traffic shows as 0.
async fn replicas(database: &Database, seeded: &Seeded, args: &Args) -> Vec<Report> {
    if database.kind == "sqlite" {
        println!("(replicas: SQLite is one instance; skipped)");
        return Vec::new();
    }
    let seconds = Duration::from_secs(args.seconds);
    let mut reports = Vec::new();
    for n in 1..=REPLICA_NAMES.len() {
        let env = database.service_env(false);
        let services: Vec<ServiceProcess> = (0..n).map(|_| ServiceProcess::spawn(&env)).collect();
        let sockets: Vec<_> = services.iter().map(|s| s.socket.clone()).collect();
        let Some(envoy) = Envoy::start(&sockets).await else {
            println!("(no envoy binary: skipping the replicas scenario)");
            return reports;
        };
        let target = Target {
            grpc_url: services[0].url(),
            json_url: Some(envoy.url.clone()),
            users: seeded.users.clone(),
            tokens: seeded.tokens.clone(),
            pid: Some(services[0].pid()),
            api_key: None,
            admin_token: None,
        };
        let mut watched = vec![("Envoy", envoy.pid())];
        watched.extend(services.iter().zip(REPLICA_NAMES).map(|(s, name)| (name, s.pid())));
        // Warm every replica's connections and caches through Envoy.
        let _ =
            wrk_measured(String::new(), WrkCall::JsonGetMe, &envoy.url, &target, 8, Duration::from_secs(2), &[]).await;
        let replicas = if n == 1 { "1 replica".to_owned() } else { format!("{n} replicas") };
        for &c in &args.concurrency {
            let name = format!("getme json, {replicas} c={c}");
            reports.push(wrk_measured(name, WrkCall::JsonGetMe, &envoy.url, &target, c, seconds, &watched).await);
        }
        // Logins at 4 in flight: two per core, so bcrypt is busy without the admission control
        // shedding most of them (a closed loop retries a shed login at once).
        let name = format!("login json, {replicas} c=4");
        reports.push(wrk_measured(name, WrkCall::JsonLogin, &envoy.url, &target, 4, seconds, &watched).await);
    }
    reports
}

/// Issue 18's scale runs on one database: the calls on the database as seeded (200 users), a bulk
/// seed, the same calls again, the ratios; then GetMe while housekeeping purges the audit rows
/// older than a day and the sessions ended a week ago (AUDIT_RETENTION_DAYS=1), against GetMe on
/// the same database before. SESSION_CACHE_TTL_MS=0: every GetMe reads its session from the
/// database, which is what grows.
async fn run_scale(database: &Database, seeded: &Seeded, args: &Args) -> Vec<Report> {
    let seconds = Duration::from_secs(args.seconds);
    let c = args.scale_concurrency;
    let workdir = tempfile::tempdir().unwrap();
    let mut env = database.service_env(false);
    env.push(("SESSION_CACHE_TTL_MS".to_owned(), "0".to_owned()));
    // The purges' lines and the end of each housekeeping round, which the phases wait for.
    env.retain(|(k, _)| k != "LOG_LEVEL");
    env.push((
        "LOG_LEVEL".to_owned(),
        "warn,instachatico_auth::server=info,instachatico_auth::domain::maintenance=debug".to_owned(),
    ));
    env.extend(args.service_env.iter().map(|setting| {
        let (key, value) = setting.split_once('=').expect("--service-env KEY=VALUE");
        (key.to_owned(), value.to_owned())
    }));
    let phase = async |env: &[(String, String)], name: &str| {
        let service = ServiceProcess::spawn(env);
        // Nothing is measured while the start-up housekeeping runs.
        let took = housekeeping_done(&service).await;
        println!("[{}] {name}: start-up housekeeping took {:.1} s", database.kind, took.as_secs_f64());
        let envoy = Envoy::start(&[Upstream::Unix(service.socket.clone())]).await;
        let target = scale_target(&service, envoy.as_ref(), seeded);
        let _ = harness::getme_grpc(&target, 8, Duration::from_secs(2)).await;
        if args.scale_purge_only {
            let mut getme = harness::getme_grpc(&target, c, seconds).await;
            getme.scenario = format!("{name}: {}", getme.scenario);
            return vec![getme];
        }
        let clock = service.metrics_url().map(harness::scale::ServiceClock::new);
        harness::scale::suite(&target, name, c, seconds, workdir.path(), clock.as_ref()).await
    };
    let pool = database.pool().await;
    let cipher =
        instachatico_auth::crypto::secrets::TokenCipher::new(&SecretString::from(FERNET_KEY.to_owned()), &[]).unwrap();
    let usernames: Vec<String> = seeded.users.iter().map(|(name, _)| name.clone()).collect();
    harness::scale::seed_like_large(&pool, &cipher, &usernames).await;
    let small = if args.scale_purge_only { Vec::new() } else { phase(&env, &format!("{} users", args.users)).await };

    let spec = instachatico_auth::db::bulk_seed::ScaleSpec::divided_by(args.scale_divisor);
    let took = harness::scale::seed_large(&pool, &cipher, &spec).await;
    println!("[{}] bulk seed {spec:?}: {:.1} s", database.kind, took.as_secs_f64());
    // A service's start-up housekeeping purges the seeded sessions that ended over a week ago:
    // let one do that before PostgreSQL's VACUUM ANALYZE (the large phase's service then finds
    // nothing to purge, and waits for its own round anyway).
    let service = ServiceProcess::spawn(&env);
    let took = housekeeping_done(&service).await;
    let purged: Vec<String> = service.log().into_iter().filter(|l| l.contains("purged")).collect();
    println!("[{}] start-up housekeeping after the bulk seed: {:.1} s; {purged:?}", database.kind, took.as_secs_f64());
    drop(service);
    database.settle().await;
    println!("[{}] after the bulk seed: {}", database.kind, database.size_note().await);
    let large_name = format!("{} users", spec.users + args.users);
    let checkpoints = database.checkpoints().await;
    let large = phase(&env, &large_name).await;
    if let (Some(before), Some(after)) = (checkpoints, database.checkpoints().await) {
        println!("[{}] checkpoints during the {large_name} phase: {}", database.kind, after - before);
    }

    if !args.scale_purge_only {
        println!("\n[{}] p99 of {large_name} against {} users (target <= 1.5x):", database.kind, args.users);
        println!("| call | small p50 ms | small p99 ms | large p50 ms | large p99 ms | p50 ratio | p99 ratio | |");
        println!("|---|---|---|---|---|---|---|---|");
        for line in harness::scale::ratios(&small, &large, 1.5) {
            println!("{line}");
        }
    }

    // The purge: housekeeping runs at start-up.
    let mut purge_env = env.clone();
    purge_env.push(("AUDIT_RETENTION_DAYS".to_owned(), "1".to_owned()));
    let vacuums = database.audit_autovacuums().await;
    let service = ServiceProcess::spawn(&purge_env);
    let target = scale_target(&service, None, seeded);
    let done = || service.log().iter().any(|l| l.contains("purged") && l.contains("audit_logs"));
    let (mut during, took) =
        harness::scale::getme_during(&target, c, Duration::from_secs(2), Duration::from_secs(1800), done).await;
    let purged: Vec<String> = service.log().into_iter().filter(|l| l.contains("purged")).collect();
    let quiet = harness::getme_grpc(&target, c, seconds).await;
    // The same quiet load measured as the purge's was (runs of 2 s, each on new connections):
    // what the method itself adds to a tail.
    let (mut windowed, _) = harness::scale::getme_during(&target, c, Duration::from_secs(2), seconds, || false).await;
    let before = large.iter().find(|r| r.scenario.contains("getme grpc")).expect("GetMe at size");
    during.notes.push(format!(
        "purge seen for {:.1} s; {purged:?}; p99 during / before = {:.2}, during / after = {:.2}, \
         during / after in 2 s runs = {:.2} (target < 2)",
        took.as_secs_f64(),
        during.ms(0.99) / before.ms(0.99),
        during.ms(0.99) / quiet.ms(0.99),
        during.ms(0.99) / windowed.ms(0.99)
    ));
    if let (Some(before), Some(after)) = (vacuums, database.audit_autovacuums().await) {
        during
            .notes
            .push(format!("autovacuums of audit_logs during the purge and the window after: {}", after - before));
    }
    println!("[{}] {}\n         {}", database.kind, during.summary(), during.notes.join("\n         "));
    println!("[{}] after the purge: {}", database.kind, database.size_note().await);
    let mut quiet = quiet;
    quiet.scenario = format!("after the purge: {}", quiet.scenario);
    windowed.scenario = format!("after the purge, in 2 s runs: getme grpc c={c}");
    println!("[{}] {}\n         {}", database.kind, windowed.summary(), windowed.notes.join("\n         "));
    small.into_iter().chain(large).chain([during, quiet, windowed]).collect()
}

/// Waits until `service`'s start-up housekeeping round has ended (its debug line: the service
/// must log `instachatico_auth::domain::maintenance` at debug), at most 30 minutes; returns how
/// long that took from here.
async fn housekeeping_done(service: &ServiceProcess) -> Duration {
    let started = std::time::Instant::now();
    while !service.log().iter().any(|l| l.contains("housekeeping round done")) {
        assert!(started.elapsed() < Duration::from_secs(1800), "no housekeeping round ended: {:?}", service.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    started.elapsed()
}

fn scale_target(service: &ServiceProcess, envoy: Option<&Envoy>, seeded: &Seeded) -> Target {
    Target {
        grpc_url: service.url(),
        json_url: envoy.map(|e| e.url.clone()),
        users: seeded.users.clone(),
        tokens: seeded.tokens.clone(),
        pid: Some(service.pid()),
        api_key: Some(seeded.api_key.clone()),
        admin_token: Some(seeded.admin_token.clone()),
    }
}

/// A wrk run with the CPU time each of `watched` spent per request.
async fn wrk_measured(
    name: String,
    call: WrkCall,
    url: &str,
    target: &Target,
    connections: usize,
    seconds: Duration,
    watched: &[(&'static str, u32)],
) -> Report {
    let before: Vec<_> = watched.iter().map(|(n, pid)| (*n, *pid, harness::cpu_time(*pid))).collect();
    let (t, url, dir) = (target.clone(), url.to_owned(), tempfile::tempdir().unwrap());
    let mut report = tokio::task::spawn_blocking(move || {
        harness::wrk_getme(&name, call, &url, &t, connections, seconds, dir.path())
    })
    .await
    .unwrap();
    report.notes.push(harness::cpu_per_request(&report, &before));
    report
}

/// The same wrk load against an Envoy that answers GetMe's JSON reply by itself (no upstream,
/// no filter but the router): the most any route through Envoy can do on this machine.
async fn envoy_ceiling(target: &Target, connections: usize, seconds: Duration) -> Option<Report> {
    let url = target.json_url.as_ref()?;
    let reply = reqwest::Client::new()
        .get(format!("{url}/api/v1/users/me"))
        .bearer_auth(&target.tokens[0])
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let envoy = Envoy::start_static(&reply).await?;
    let name = format!("envoy ceiling (static reply) c={connections}");
    let mut report =
        wrk_measured(name, WrkCall::JsonGetMe, &envoy.url, target, connections, seconds, &[("Envoy", envoy.pid())])
            .await;
    report.measures_service = false;
    Some(report)
}

/// A throwaway database with the schema applied, and the Ed25519 key of the EdDSA runs.
struct Database {
    kind: String,
    /// Where the harness seeds it (directly).
    url: String,
    /// The service's DATABASE_URL and its other database settings.
    service_db: Vec<(&'static str, String)>,
    _bouncer: Option<PgBouncer>,
    pg_admin: Option<(String, String)>,
    signing_key: instachatico_auth::crypto::jwt::Ed25519SigningKey,
    _dir: tempfile::TempDir,
}

/// What the seeding made: users and their tokens (HS256, and the same sessions' EdDSA tokens),
/// an admin's token and a service's API key.
struct Seeded {
    users: Vec<(String, String)>,
    tokens: Vec<String>,
    eddsa_tokens: Vec<String>,
    admin_token: String,
    api_key: String,
}

impl Database {
    async fn create(kind: &str, pg_url: &str) -> Self {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        let dir = tempfile::tempdir().unwrap();
        let (url, pg_admin) = match kind {
            "sqlite" => (dir.path().join("bench.db").to_string_lossy().into_owned(), None),
            "postgres" | "postgres-unnamed" | "pgbouncer" => {
                let name = format!("ia_bench_{}", uuid::Uuid::new_v4().simple());
                let mut conn =
                    diesel_async::AsyncPgConnection::establish(pg_url).await.expect("PostgreSQL for the benchmark");
                diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
                let mut url = url::Url::parse(pg_url).unwrap();
                url.set_path(&format!("/{name}"));
                (url.to_string(), Some((pg_url.to_owned(), name)))
            }
            other => panic!("unknown database {other}: sqlite, postgres, postgres-unnamed or pgbouncer"),
        };
        let mut service_db = vec![("DATABASE_URL", url.clone())];
        let mut bouncer = None;
        if kind == "pgbouncer" {
            // As many server connections as the service's pool: this measures the hop, not a queue.
            let started = PgBouncer::start(pg_url, 16).await.expect("pgbouncer for the benchmark");
            service_db = vec![("DATABASE_URL", started.url_of(&url)), ("DATABASE_LISTEN_URL", url.clone())];
            bouncer = Some(started);
        }
        if kind != "postgres" && kind != "sqlite" {
            service_db.push(("DB_PREPARED_STATEMENTS", "false".to_owned()));
        }
        let target = instachatico_auth::db::DbTarget::parse(&url).unwrap();
        instachatico_auth::db::migrate(&target).await.unwrap();
        let signing_key = instachatico_auth::crypto::jwt::Ed25519SigningKey::generate();
        Self { kind: kind.to_owned(), url, service_db, _bouncer: bouncer, pg_admin, signing_key, _dir: dir }
    }

    /// A small pool on the database, as the harness seeds through it.
    async fn pool(&self) -> instachatico_auth::db::DbPool {
        let target = instachatico_auth::db::DbTarget::parse(&self.url).unwrap();
        let options = instachatico_auth::db::PoolOptions {
            max_size: 2,
            wait_timeout: Duration::from_secs(10),
            prepared_statements: true,
        };
        instachatico_auth::db::DbPool::connect(&target, options).await.unwrap()
    }

    /// After a bulk load: PostgreSQL's `VACUUM ANALYZE`, what autovacuum does soon after, and a
    /// `CHECKPOINT`, what the checkpointer would otherwise spread over the next minutes (the
    /// load's and the vacuum's dirty pages, hundreds of MB written behind the first calls
    /// measured); both done now so that neither runs during the measurement. SQLite: nothing
    /// (the service never analyzes, its planner's defaults favour indexes; its WAL is the
    /// service's to checkpoint).
    async fn settle(&self) {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        if self.pg_admin.is_some() {
            let mut conn = diesel_async::AsyncPgConnection::establish(&self.url).await.unwrap();
            diesel::sql_query("VACUUM ANALYZE").execute(&mut conn).await.unwrap();
            diesel::sql_query("CHECKPOINT").execute(&mut conn).await.unwrap();
        }
    }

    /// PostgreSQL's checkpoints so far (timed and requested, the whole server); None on SQLite.
    /// Two readings around a phase say whether the checkpointer wrote behind its measurement.
    async fn checkpoints(&self) -> Option<i64> {
        self.pg_count("SELECT checkpoints_timed + checkpoints_req AS n FROM pg_stat_bgwriter").await
    }

    /// How often autovacuum has vacuumed audit_logs (PostgreSQL).
    async fn audit_autovacuums(&self) -> Option<i64> {
        self.pg_count("SELECT autovacuum_count AS n FROM pg_stat_user_tables WHERE relname = 'audit_logs'").await
    }

    /// The number `query` reads (as `n`) on PostgreSQL; None on SQLite.
    async fn pg_count(&self, query: &str) -> Option<i64> {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        self.pg_admin.as_ref()?;
        let mut conn = diesel_async::AsyncPgConnection::establish(&self.url).await.unwrap();
        Some(diesel::sql_query(query).get_result::<Count>(&mut conn).await.unwrap().n)
    }

    /// The database's size on disk: SQLite's file and its WAL, or PostgreSQL's database size.
    async fn size_note(&self) -> String {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct Size {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            bytes: i64,
        }
        if self.pg_admin.is_some() {
            let mut conn = diesel_async::AsyncPgConnection::establish(&self.url).await.unwrap();
            let size: Size = diesel::sql_query("SELECT pg_database_size(current_database()) AS bytes")
                .get_result(&mut conn)
                .await
                .unwrap();
            return format!("PostgreSQL database {:.1} MiB", size.bytes as f64 / 1_048_576.0);
        }
        let mib = |suffix: &str| {
            std::fs::metadata(format!("{}{suffix}", self.url)).map_or(0.0, |m| m.len() as f64 / 1_048_576.0)
        };
        format!("SQLite file {:.1} MiB, WAL {:.1} MiB", mib(""), mib("-wal"))
    }

    async fn seed(&self, n: usize, cost: u32) -> Seeded {
        let pool = self.pool().await;
        let jwt =
            instachatico_auth::crypto::jwt::JwtKeys::new(&SecretString::from(JWT_SECRET.to_owned()), &[]).unwrap();
        let hash = tokio::task::spawn_blocking(move || bcrypt::hash(harness::PASSWORD, cost).unwrap()).await.unwrap();
        let (users, tokens) = harness::seed(&pool, &jwt, n, &hash).await;
        let (admin_token, api_key) = harness::seed_service(&pool, &jwt, &hash).await;
        // The same sessions, signed as a service with JWT_ALGORITHM=EdDSA signs them.
        let secret = SecretString::from(JWT_SECRET.to_owned());
        let eddsa = instachatico_auth::crypto::jwt::JwtKeys::from_config(&instachatico_auth::crypto::jwt::KeyConfig {
            algorithm: instachatico_auth::crypto::jwt::SigningAlgorithm::EdDsa,
            secret: Some(&secret),
            previous_secrets: &[],
            signing_key: Some(&self.signing_key),
            previous_public_keys: &[],
        })
        .unwrap();
        let now = chrono::Utc::now();
        let eddsa_tokens = tokens
            .iter()
            .map(|token| {
                let claims = jwt.verify(token, now).unwrap();
                let session = claims.session_id();
                let subject = instachatico_auth::crypto::jwt::Subject {
                    user_id: claims.user_id().unwrap(),
                    username: &claims.username,
                    role: instachatico_auth::model::Role::User,
                    session: &session,
                };
                eddsa.issue(&subject, now, now + chrono::Duration::hours(24)).unwrap()
            })
            .collect();
        Seeded { users, tokens, eddsa_tokens, admin_token, api_key }
    }

    fn service_env(&self, eddsa: bool) -> Vec<(String, String)> {
        let mut env = self.base_env();
        if eddsa {
            env.push(("JWT_ALGORITHM", "EdDSA".to_owned()));
            env.push(("JWT_SIGNING_KEY", self.signing_key.to_pem().unwrap().expose_secret().to_owned()));
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    fn base_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.service_db.clone();
        env.extend([
            ("JWT_SECRET_KEY", JWT_SECRET.to_owned()),
            ("ENCRYPTION_KEY", FERNET_KEY.to_owned()),
            ("BCRYPT_COST", "12".to_owned()),
            // The harness's own run: limits off, so they do not cap the measurement.
            ("RATE_LIMIT_LOGIN_PER_MINUTE", "0".to_owned()),
            ("RATE_LIMIT_API_PER_MINUTE", "0".to_owned()),
            ("RATE_LIMIT_API_KEY_PER_MINUTE", "0".to_owned()),
            ("LOGIN_THROTTLE_THRESHOLD", "1000".to_owned()),
            ("LOG_LEVEL", "warn,instachatico_auth::server=info".to_owned()),
        ]);
        env
    }

    async fn drop(self) {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        if let Some((admin, name)) = &self.pg_admin
            && let Ok(mut conn) = diesel_async::AsyncPgConnection::establish(admin).await
        {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
        }
    }
}

fn write_results(
    args: &Args,
    per_verify: Duration,
    bound: f64,
    all: &[(String, Report)],
    windows: &[(String, harness::Window)],
) {
    let rows: Vec<serde_json::Value> = all
        .iter()
        .map(|(db, r)| {
            serde_json::json!({
                "db": db, "scenario": r.scenario, "throughput": r.throughput(), "ok": r.ok, "shed": r.shed,
                "errors": r.errors, "seconds": r.elapsed.as_secs_f64(), "p50_ms": r.ms(0.5), "p90_ms": r.ms(0.9),
                "p99_ms": r.ms(0.99), "max_ms": r.latency.max() as f64 / 1e3,
                "peak_rss_mib": r.peak_rss_kib.map(|k| k as f64 / 1024.0), "notes": r.notes,
            })
        })
        .collect();
    let windows_json: Vec<serde_json::Value> = windows
        .iter()
        .map(|(db, w)| serde_json::json!({"db": db, "end_s": w.end_s, "requests": w.requests, "errors": w.errors, "p50_ms": w.p50_ms, "p99_ms": w.p99_ms, "rss_mib": w.rss_kib.map(|k| k as f64 / 1024.0)}))
        .collect();
    let json = serde_json::json!({
        "bcrypt": {"cost": args.bcrypt_cost, "verify_ms": per_verify.as_secs_f64() * 1e3, "bound_logins_per_s": bound},
        "results": rows,
        "sustained_windows": windows_json,
    });
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();

    let mut md = format!(
        "bcrypt cost {}: {:.1} ms per verify, bound {:.2} logins/s\n\n| db | scenario | req/s | p50 ms | p90 ms | p99 ms | ok | shed | errors | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|\n",
        args.bcrypt_cost,
        per_verify.as_secs_f64() * 1e3,
        bound
    );
    for (db, r) in all {
        md.push_str(&format!(
            "| {db} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
            r.scenario,
            r.throughput(),
            r.ms(0.5),
            r.ms(0.9),
            r.ms(0.99),
            r.ok,
            r.shed,
            r.errors,
            r.peak_rss_kib.map_or_else(|| "-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
        ));
    }
    if !windows.is_empty() {
        md.push_str(
            "\n| db | window end s | requests | errors | p50 ms | p99 ms | RSS MiB |\n|---|---|---|---|---|---|---|\n",
        );
        for (db, w) in windows {
            md.push_str(&format!(
                "| {db} | {:.0} | {} | {} | {:.2} | {:.2} | {} |\n",
                w.end_s,
                w.requests,
                w.errors,
                w.p50_ms,
                w.p99_ms,
                w.rss_kib.map_or_else(|| "-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
            ));
        }
    }
    std::fs::write(args.out.join("results.md"), &md).unwrap();
    println!("\n{md}\nresults: {}", args.out.display());
}
