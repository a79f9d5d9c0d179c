//! The load harness itself, each scenario for about a second against the real server: the
//! benchmark cannot rot unnoticed. No timing assertions: only that requests flow and every
//! outcome is accounted for.

use std::time::Duration;

#[path = "../../benches/harness/fixed_authz.rs"]
mod fixed_authz;
#[path = "../../benches/harness/mod.rs"]
mod harness;

use crate::common::{Backend, Envoy, TestServer, skipped};
use harness::WrkCall;

async fn target(s: &TestServer, json: bool) -> (harness::Target, Option<Envoy>) {
    let hash = bcrypt::hash(harness::PASSWORD, 10).unwrap();
    let (users, tokens) = harness::seed(s.app().db(), s.app().jwt(), 20, &hash).await;
    let (admin_token, api_key) = harness::seed_service(s.app().db(), s.app().jwt(), &hash).await;
    let envoy = if json { Envoy::start(&[s.upstream()]).await } else { None };
    let target = harness::Target {
        grpc_url: s.url.clone(),
        json_url: envoy.as_ref().map(|e| e.url.clone()),
        users,
        tokens,
        pid: Some(std::process::id()),
        api_key: Some(api_key),
        admin_token: Some(admin_token),
    };
    (target, envoy)
}

async fn wrk(call: WrkCall, url: &str, target: &harness::Target) -> harness::Report {
    let (url, t, dir) = (url.to_owned(), target.clone(), tempfile::tempdir().unwrap());
    tokio::task::spawn_blocking(move || {
        harness::wrk_getme("smoke", call, &url, &t, 4, Duration::from_secs(1), dir.path())
    })
    .await
    .unwrap()
}

fn flows(report: &harness::Report) {
    assert!(report.ok > 0, "{}", report.summary());
    assert_eq!(report.errors, 0, "{}", report.summary());
    assert!(report.throughput() > 0.0 && report.ms(0.99) > 0.0);
}

async fn every_scenario_runs(s: TestServer) {
    let second = Duration::from_secs(1);
    let (target, envoy) = target(&s, true).await;
    flows(&harness::null_rpc(&target, 4, second).await);
    flows(&harness::getme_grpc(&target, 4, second).await);
    flows(&harness::login(&target, 2, second).await);
    for report in harness::login_mfa(&target, 3, second).await {
        flows(&report);
    }
    flows(&harness::introspect_grpc(&target, 4, second).await);
    for (credential, what) in [(&target.api_key, "api key"), (&target.admin_token, "admin session")] {
        flows(&harness::get_user_grpc(&target, credential.as_deref().unwrap(), what, 4, second).await);
    }

    let (logins, probes) = harness::storm(&target, 40, 2, Duration::from_secs(10)).await;
    assert_eq!(logins.ok + logins.shed + logins.errors, 40, "every login answered: {}", logins.summary());
    assert_eq!(logins.errors, 0, "{:?}", logins.notes);
    flows(&probes);

    let (sustained, windows) = harness::sustained(&target, 1200, second, Duration::from_millis(500)).await;
    flows(&sustained);
    assert!(!windows.is_empty() && windows.iter().all(|w| w.rss_kib.is_some()));

    let sampler = harness::RssSampler::start(std::process::id());
    let wrk_found = std::process::Command::new("wrk").arg("--version").output().is_ok();
    if let (Some(envoy), true) = (&envoy, wrk_found) {
        let dir = tempfile::tempdir().unwrap();
        let t = target.clone();
        let json =
            tokio::task::spawn_blocking(move || harness::getme_json_wrk(&t, 4, Duration::from_secs(1), dir.path()))
                .await
                .unwrap();
        flows(&json);
        let envoy_url = envoy.url.clone();
        flows(&wrk(WrkCall::GrpcWebGetMe, &envoy_url, &target).await);
        // The replicas scenario's Login: JSON bodies in turn, every one a 200.
        flows(&wrk(WrkCall::JsonLogin, &envoy_url, &target).await);
        // A refused grpc-web call is still HTTP 200: the harness must count it by its grpc-status.
        let strangers = harness::Target { tokens: vec!["not-a-token".to_owned()], ..target.clone() };
        let refused = wrk(WrkCall::GrpcWebGetMe, &envoy_url, &strangers).await;
        assert!(refused.ok == 0 && refused.errors > 0, "{}", refused.summary());
        let ceiling = Envoy::start_static(r#"{"id":1,"username":"static"}"#).await.expect("static Envoy");
        flows(&wrk(WrkCall::JsonGetMe, &ceiling.url, &target).await);
    } else if !wrk_found {
        // A missing Envoy was reported when it did not start.
        skipped("no wrk (./scripts/test installs it): the wrk scenarios did not run");
    }
    assert!(sampler.finish() > 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_harness_smoke() {
    let Some(s) = TestServer::start(Backend::Postgres).await else { return };
    every_scenario_runs(s).await;
}

/// The scale scenario (issue 18) at a thousandth of its size: every call of both phases flows,
/// the ratios pair them up, and GetMe runs while a purge of the old rows does.
async fn scale_scenario_runs(s: TestServer) {
    let second = Duration::from_secs(1);
    let (target, envoy) = target(&s, true).await;
    let dir = tempfile::tempdir().unwrap();
    let small = harness::scale::suite(&target, "small", 2, second, dir.path(), None).await;
    let spec = instachatico_auth::db::bulk_seed::ScaleSpec::divided_by(1000);
    harness::scale::seed_large(s.app().db(), s.app().cipher(), &spec).await;
    // The large phase timed inside the service too (its Prometheus endpoint, which this test
    // process's other servers share: the notes only need to name the listing's statement).
    let metrics = s.running.as_ref().unwrap().metrics_addr.expect("metrics enabled");
    let clock = harness::scale::ServiceClock::new(format!("http://{metrics}/metrics"));
    let large = harness::scale::suite(&target, "large", 2, second, dir.path(), Some(&clock)).await;
    for report in small.iter().chain(&large) {
        flows(report);
    }
    for report in large.iter().filter(|r| r.scenario.contains("listusers")) {
        let noted = report.notes.iter().any(|n| n.starts_with("in the service") && n.contains("op=\"users::list\""));
        assert!(noted, "{}: {:?}", report.scenario, report.notes);
    }
    let expected =
        if envoy.is_some() && std::process::Command::new("wrk").arg("--version").output().is_ok() { 16 } else { 15 };
    assert_eq!(harness::scale::ratios(&small, &large, 1.5).len(), expected, "every call in both phases");

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let purge = tokio::spawn({
        let (app, done) = (s.app().clone(), std::sync::Arc::clone(&done));
        async move {
            // The seeded sessions that ended over a week ago, ten a batch (no audit retention here).
            let purged = app.purge(chrono::Utc::now(), app.purge_pacing().with_batch(10)).await.unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            purged
        }
    });
    let during = harness::scale::getme_during(&target, 2, Duration::from_millis(200), Duration::from_secs(60), || {
        done.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    let purged = purge.await.unwrap();
    assert!(purged.sessions > 0, "{purged:?}");
    assert_eq!(during.0.errors, 0, "{}", during.0.summary());
    assert!(during.0.notes.iter().any(|n| n.starts_with("p99 ms of each 0.2 s window:")), "{:?}", during.0.notes);
    s.stop().await;
}

crate::on_both_backends!(scale_scenario_runs);

/// The proxy scenario: wrk through the backend proxy, and straight to the same backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_proxy_scenario_smoke() {
    if std::process::Command::new("wrk").arg("--version").output().is_err() {
        skipped("no wrk (./scripts/test installs it): the proxy scenario did not run");
        return;
    }
    let backend = crate::common::fake_backend::FakeBackend::start_quiet("smoke").await;
    let options = crate::common::Options::default()
        .arg("backend-proxy", "true")
        .arg("backend-allowed-hosts", backend.addr.to_string())
        .arg("rate-limit-proxy-per-minute", "0");
    let Some(s) = TestServer::start_with(Backend::Sqlite, options).await else { return };
    let (target, envoy) = target(&s, true).await;
    let Some(envoy) = envoy else { return };
    let credentials =
        harness::proxy_credentials(&target, &format!("http://{}/api", backend.addr), "smoke-backend-token", 2).await;
    let proxied = harness::Target { tokens: credentials, ..target.clone() };
    flows(&wrk(WrkCall::Get("/backend/feed"), &envoy.url, &proxied).await);
    let direct = harness::Target { tokens: vec!["smoke-backend-token".into()], ..target.clone() };
    flows(&wrk(WrkCall::Get("/api/feed"), &format!("http://{}", backend.addr), &direct).await);
    // The floors: Envoy forwarding with no decision, and envoy.yaml asking a fixed decision.
    let forwarding = Envoy::start_forwarding(backend.addr).await.expect("forwarding Envoy");
    flows(&wrk(WrkCall::Get("/backend/feed"), &forwarding.url, &direct).await);
    let fixed = fixed_authz::start(backend.addr, "/api", "smoke-backend-token").await;
    let checked = Envoy::start_checked_forwarding(backend.addr, fixed).await.expect("Envoy with ext_authz only");
    flows(&wrk(WrkCall::Get("/backend/feed"), &checked.url, &direct).await);
    let fixed = Envoy::start(&[fixed]).await.expect("Envoy with the fixed decision");
    flows(&wrk(WrkCall::Get("/backend/feed"), &fixed.url, &direct).await);
    // A refused credential is counted as an error, not a success.
    let strangers = harness::Target { tokens: vec!["ipx_not-a-credential".into()], ..target };
    let refused = wrk(WrkCall::Get("/backend/feed"), &envoy.url, &strangers).await;
    assert!(refused.ok == 0 && refused.errors > 0, "{}", refused.summary());
    s.stop().await;
}

/// `bench/envoy-instructions` (Envoy's instructions per request under callgrind, issue 17 point
/// 5): every variant's config still applies to envoy.yaml and Envoy accepts it, and a tiny real
/// run under valgrind prints the two rows the target compares.
#[test]
fn envoy_instructions_script_runs() {
    let Some(envoy) = Envoy::binary() else { return };
    if std::process::Command::new("valgrind").arg("--version").output().is_err() {
        skipped("no valgrind (Debian package valgrind): Envoy's instruction counts did not run");
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/envoy-instructions");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("python3")
            .arg(&script)
            .args(args)
            .env("ENVOY_BIN", &envoy)
            .output()
            .expect("python3");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{args:?}:\n{stdout}\n{stderr}");
        stdout.into_owned()
    };
    let checked = run(&["--check"]);
    for variant in ["committed", "static", "minimal-proxy", "envoy-request-id", "lua-where-needed"] {
        assert!(checked.contains(&format!("variant {variant}: valid")), "{checked}");
    }
    let bin = env!("CARGO_BIN_EXE_instachatico-auth");
    let table = run(&["--variants", "committed,static", "--requests", "3", "--warmup", "1", "--binary", bin]);
    let count = |prefix: &str| -> f64 {
        let row =
            table.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} row:\n{table}"));
        row.split('|').nth(3).unwrap().trim().replace(',', "").parse().unwrap()
    };
    // Proxying and transcoding a call costs Envoy more than answering by itself.
    assert!(count("| committed | JSON GetMe |") > count("| static |"), "{table}");
}
