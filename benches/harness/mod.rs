//! Load scenarios against a running instachatico-auth, shared by the benchmark binary
//! (`benches/loadgen.rs`, release, minutes) and the smoke test (`tests/integration/bench_smoke.rs`,
//! debug, a second each). Closed-loop workers over tonic clients for gRPC, wrk for JSON through
//! Envoy; latencies in an HDR histogram (µs); the service's RSS sampled from /proc.

#![allow(dead_code, reason = "each user of the harness runs a subset")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod scale;

use hdrhistogram::Histogram;
use instachatico_auth::pb;
use instachatico_auth::pb::auth_service_client::AuthServiceClient;
use instachatico_auth::pb::user_service_client::UserServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// What the scenarios talk to.
#[derive(Clone)]
pub struct Target {
    /// The service, native gRPC.
    pub grpc_url: String,
    /// Envoy's JSON face, when running.
    pub json_url: Option<String>,
    /// (username, password) of seeded users.
    pub users: Vec<(String, String)>,
    /// Valid access tokens, one per seeded session.
    pub tokens: Vec<String>,
    /// The service's pid, for RSS samples.
    pub pid: Option<u32>,
    /// A service's API key with every scope, and an admin's access token (see [`seed_service`]).
    pub api_key: Option<String>,
    pub admin_token: Option<String>,
}

/// The outcome of one scenario run.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: String,
    pub ok: u64,
    /// Deliberate refusals with Retry-After (load shedding, rate limits).
    pub shed: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency of answered requests, µs.
    pub latency: Histogram<u64>,
    pub peak_rss_kib: Option<u64>,
    pub notes: Vec<String>,
    /// p50, p90, p99 in ms when they come from elsewhere (wrk) rather than `latency`.
    pub given_ms: Option<[f64; 3]>,
    /// False for a reference run that does not touch the service (its RSS is not sampled).
    pub measures_service: bool,
}

impl Report {
    fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            ok: 0,
            shed: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            peak_rss_kib: None,
            notes: Vec::new(),
            measures_service: true,
            given_ms: None,
        }
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in milliseconds.
    pub fn ms(&self, quantile: f64) -> f64 {
        let index = [0.5, 0.9, 0.99].iter().position(|q| (q - quantile).abs() < 1e-9);
        match (self.given_ms, index) {
            (Some(given), Some(i)) => given[i],
            _ => self.latency.value_at_quantile(quantile) as f64 / 1000.0,
        }
    }

    fn merge(&mut self, other: &Worker) {
        self.ok += other.ok;
        self.shed += other.shed;
        self.errors += other.errors;
        let _ = self.latency.add(&other.latency);
    }

    /// One line for logs and tables.
    pub fn summary(&self) -> String {
        format!(
            "{:<34} {:>9.1}/s  p50 {:>8.2} ms  p90 {:>8.2} ms  p99 {:>8.2} ms  ok {:>8}  shed {:>6}  errors {:>5}  peak RSS {}",
            self.scenario,
            self.throughput(),
            self.ms(0.50),
            self.ms(0.90),
            self.ms(0.99),
            self.ok,
            self.shed,
            self.errors,
            self.peak_rss_kib.map_or_else(|| "-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
        )
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// One closed-loop worker's tally.
struct Worker {
    ok: u64,
    shed: u64,
    errors: u64,
    latency: Histogram<u64>,
}

impl Worker {
    fn new() -> Self {
        Self { ok: 0, shed: 0, errors: 0, latency: histogram() }
    }

    fn record(&mut self, started: Instant) {
        let _ = self.latency.record(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1));
    }
}

/// `n` HTTP/2 connections to the service (requests are spread over them).
pub async fn channels(url: &str, n: usize) -> Vec<Channel> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(Channel::from_shared(url.to_owned()).expect("url").connect().await.expect("connect"));
    }
    out
}

fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    request
}

/// The retry-after of a deliberate refusal, if that is what `status` is.
fn shed_after(status: &tonic::Status) -> Option<Duration> {
    if !matches!(status.code(), Code::Unavailable | Code::ResourceExhausted) {
        return None;
    }
    let secs: f64 = status.metadata().get("retry-after")?.to_str().ok()?.parse().ok()?;
    Some(Duration::from_secs_f64(secs))
}

/// Runs `concurrency` closed-loop workers for `duration`, each calling `step(worker_index, n)`
/// on connection `worker_index % connections`.
async fn closed_loop<F, Fut>(scenario: &str, concurrency: usize, duration: Duration, step: F) -> Report
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let step = Arc::new(step);
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let step = Arc::clone(&step);
        tasks.push(tokio::spawn(async move {
            let mut tally = Worker::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match step(w, n).await {
                    Outcome::Ok => {
                        tally.ok += 1;
                        tally.record(t0);
                    }
                    Outcome::Shed(after) => {
                        tally.shed += 1;
                        // A polite client: wait as told (but not past the end of the run).
                        let wait = after.min(deadline.saturating_duration_since(Instant::now()));
                        tokio::time::sleep(wait).await;
                    }
                    Outcome::Error => tally.errors += 1,
                }
                n += 1;
            }
            tally
        }));
    }
    let mut report = Report::new(scenario);
    for task in tasks {
        report.merge(&task.await.expect("worker"));
    }
    report.elapsed = started.elapsed();
    report
}

/// What one request came to.
pub enum Outcome {
    Ok,
    Shed(Duration),
    Error,
}

fn outcome<T>(result: Result<T, tonic::Status>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(status) => shed_after(&status).map_or(Outcome::Error, Outcome::Shed),
    }
}

/// Scenario 1: `grpc.health.v1.Health/Check`, no database: the stack's ceiling.
pub async fn null_rpc(target: &Target, concurrency: usize, duration: Duration) -> Report {
    let channels = channels(&target.grpc_url, concurrency.clamp(1, 8)).await;
    let name = format!("null-rpc grpc Health/Check c={concurrency}");
    closed_loop(&name, concurrency, duration, move |w, _| {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channels[w % channels.len()].clone());
        async move { outcome(client.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await) }
    })
    .await
}

/// Scenario 2: GetMe over gRPC with tokens of many users (JWT, session, user: the real work).
pub async fn getme_grpc(target: &Target, concurrency: usize, duration: Duration) -> Report {
    let channels = channels(&target.grpc_url, concurrency.clamp(1, 8)).await;
    let tokens = Arc::new(target.tokens.clone());
    let name = format!("getme grpc c={concurrency}");
    closed_loop(&name, concurrency, duration, move |w, n| {
        let mut client = UserServiceClient::new(channels[w % channels.len()].clone());
        let token = tokens[(w + n as usize * 7919) % tokens.len()].clone();
        async move { outcome(client.get_me(authed(&token, pb::GetMeRequest {})).await) }
    })
    .await
}

/// Introspection of many users' tokens by a service with an API key (RFC 7662, over gRPC).
pub async fn introspect_grpc(target: &Target, concurrency: usize, duration: Duration) -> Report {
    let channels = channels(&target.grpc_url, concurrency.clamp(1, 8)).await;
    let tokens = Arc::new(target.tokens.clone());
    let key = target.api_key.clone().expect("an API key (seed_service)");
    let name = format!("introspect grpc c={concurrency}");
    closed_loop(&name, concurrency, duration, move |w, n| {
        let mut client = AuthServiceClient::new(channels[w % channels.len()].clone());
        let token = tokens[(w + n as usize * 7919) % tokens.len()].clone();
        let request = authed(&key, pb::IntrospectRequest { token });
        async move {
            match client.introspect(request).await {
                Ok(reply) if reply.get_ref().active => Outcome::Ok,
                Ok(_) => Outcome::Error,
                Err(status) => shed_after(&status).map_or(Outcome::Error, Outcome::Shed),
            }
        }
    })
    .await
}

/// GetUser of many users with one `credential` (`what` names it): an API key with users:read
/// against an admin's session, the same call and query behind each kind of caller.
pub async fn get_user_grpc(
    target: &Target,
    credential: &str,
    what: &str,
    concurrency: usize,
    duration: Duration,
) -> Report {
    let channels = channels(&target.grpc_url, concurrency.clamp(1, 8)).await;
    let users = i32::try_from(target.users.len()).unwrap_or(i32::MAX).max(1);
    let credential = credential.to_owned();
    let name = format!("getuser grpc by {what} c={concurrency}");
    closed_loop(&name, concurrency, duration, move |w, n| {
        let mut client = UserServiceClient::new(channels[w % channels.len()].clone());
        let id = 1 + i32::try_from((w + n as usize * 7919) % users as usize).unwrap_or(0);
        let request = authed(&credential, pb::GetUserRequest { id });
        async move { outcome(client.get_user(request).await) }
    })
    .await
}

/// Scenario 4: logins with correct passwords, cycling through the seeded users.
pub async fn login(target: &Target, concurrency: usize, duration: Duration) -> Report {
    let channels = channels(&target.grpc_url, concurrency.clamp(1, 8)).await;
    let users = Arc::new(target.users.clone());
    let name = format!("login grpc c={concurrency}");
    closed_loop(&name, concurrency, duration, move |w, n| {
        let mut client = AuthServiceClient::new(channels[w % channels.len()].clone());
        let (username, password) = users[(w + n as usize * 31) % users.len()].clone();
        async move { outcome(client.login(pb::LoginRequest { username, password }).await) }
    })
    .await
}

/// Scenario 5: `logins` concurrent logins at once while `probes` connections call GetMe.
/// Every login must be answered (success, or a refusal with Retry-After) within `answer_within`.
pub async fn storm(target: &Target, logins: usize, probes: usize, answer_within: Duration) -> (Report, Report) {
    let login_channels = channels(&target.grpc_url, 16).await;
    let probe_channels = channels(&target.grpc_url, probes).await;
    let done = Arc::new(AtomicBool::new(false));

    // The probes: closed loop until the storm is over.
    let tokens = Arc::new(target.tokens.clone());
    let mut probe_tasks = Vec::new();
    for (p, channel) in probe_channels.into_iter().enumerate() {
        let (done, tokens) = (Arc::clone(&done), Arc::clone(&tokens));
        probe_tasks.push(tokio::spawn(async move {
            let mut tally = Worker::new();
            let mut client = UserServiceClient::new(channel);
            let mut n = 0usize;
            while !done.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match client.get_me(authed(&tokens[(p + n * 13) % tokens.len()], pb::GetMeRequest {})).await {
                    Ok(_) => {
                        tally.ok += 1;
                        tally.record(t0);
                    }
                    Err(_) => tally.errors += 1,
                }
                n += 1;
            }
            tally
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let late = Arc::new(AtomicU64::new(0));
    let mut login_tasks = Vec::with_capacity(logins);
    for i in 0..logins {
        let mut client = AuthServiceClient::new(login_channels[i % login_channels.len()].clone());
        let (username, password) = target.users[i % target.users.len()].clone();
        let late = Arc::clone(&late);
        login_tasks.push(tokio::spawn(async move {
            let mut tally = Worker::new();
            let t0 = Instant::now();
            let result =
                tokio::time::timeout(answer_within * 3, client.login(pb::LoginRequest { username, password })).await;
            tally.record(t0);
            if t0.elapsed() > answer_within {
                late.fetch_add(1, Ordering::Relaxed);
            }
            match result {
                Ok(r) => match outcome(r) {
                    Outcome::Ok => tally.ok += 1,
                    Outcome::Shed(_) => tally.shed += 1,
                    Outcome::Error => tally.errors += 1,
                },
                Err(_) => tally.errors += 1,
            }
            tally
        }));
    }
    let mut logins_report = Report::new(&format!("storm: {logins} concurrent logins"));
    for task in login_tasks {
        logins_report.merge(&task.await.expect("login task"));
    }
    logins_report.elapsed = started.elapsed();
    let late = late.load(Ordering::Relaxed);
    logins_report.notes.push(format!(
        "{} of {logins} answered within {:?} ({} ok, {} refused with Retry-After, {} errors); slowest {:.2} s",
        logins as u64 - late,
        answer_within,
        logins_report.ok,
        logins_report.shed,
        logins_report.errors,
        logins_report.latency.max() as f64 / 1e6
    ));
    done.store(true, Ordering::Relaxed);
    let mut probes_report = Report::new(&format!("storm: GetMe probes c={probes}"));
    for task in probe_tasks {
        probes_report.merge(&task.await.expect("probe task"));
    }
    probes_report.elapsed = logins_report.elapsed;
    (logins_report, probes_report)
}

/// One window of the sustained run.
#[derive(Debug, Clone)]
pub struct Window {
    pub end_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rss_kib: Option<u64>,
}

/// Scenario 6: GetMe at a constant rate (open loop), reported per window so drift shows.
pub async fn sustained(
    target: &Target,
    per_minute: u64,
    duration: Duration,
    window: Duration,
) -> (Report, Vec<Window>) {
    let channels = channels(&target.grpc_url, 4).await;
    let interval = Duration::from_secs(60).div_f64(per_minute as f64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, bool, u64)>();
    let started = Instant::now();
    let tokens = Arc::new(target.tokens.clone());
    let producer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut n = 0usize;
        while started.elapsed() < duration {
            tick.tick().await;
            let mut client = UserServiceClient::new(channels[n % channels.len()].clone());
            let token = tokens[(n * 7919) % tokens.len()].clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let ok = client.get_me(authed(&token, pb::GetMeRequest {})).await.is_ok();
                let _ = tx.send((t0, ok, u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX).max(1)));
            });
            n += 1;
        }
    });
    let mut report = Report::new(&format!("sustained getme {per_minute}/min"));
    let mut windows = Vec::new();
    let mut current = Worker::new();
    let mut window_end = started + window;
    let pid = target.pid;
    loop {
        let next = tokio::time::timeout_at(tokio::time::Instant::from_std(window_end), rx.recv()).await;
        match next {
            Ok(Some((t0, ok, micros))) => {
                if ok {
                    current.ok += 1;
                    let _ = current.latency.record(micros);
                } else {
                    current.errors += 1;
                }
                let _ = t0;
            }
            Ok(None) => break,
            Err(_) => {
                windows.push(Window {
                    end_s: (window_end - started).as_secs_f64(),
                    requests: current.ok,
                    errors: current.errors,
                    p50_ms: current.latency.value_at_quantile(0.5) as f64 / 1000.0,
                    p99_ms: current.latency.value_at_quantile(0.99) as f64 / 1000.0,
                    rss_kib: pid.and_then(rss_kib),
                });
                report.merge(&current);
                current = Worker::new();
                window_end += window;
                if started.elapsed() > duration + Duration::from_secs(5) {
                    break;
                }
            }
        }
    }
    producer.await.expect("producer");
    report.merge(&current);
    report.elapsed = duration;
    (report, windows)
}

/// Scenario 3: GetMe as JSON through Envoy, driven by wrk (rotating tokens).
pub fn getme_json_wrk(target: &Target, connections: usize, duration: Duration, workdir: &std::path::Path) -> Report {
    let url = target.json_url.as_ref().expect("Envoy running");
    let scenario = format!("getme json via envoy c={connections}");
    wrk_getme(&scenario, WrkCall::JsonGetMe, url, target, connections, duration, workdir)
}

/// What wrk sends: GetMe as the JSON face's `GET /api/v1/users/me`, or as a grpc-web call; or
/// a plain `GET` of a path (the backend proxy, or the backend itself); or the JSON Login of
/// the target's users in turn.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WrkCall {
    JsonGetMe,
    GrpcWebGetMe,
    Get(&'static str),
    JsonLogin,
}

/// GetMe by wrk against `url`, rotating the target's tokens: the same client work whatever
/// answers there. grpc-web replies are 200 whatever their grpc-status, so those are checked
/// in the body (a `response` hook: it costs wrk some speed).
pub fn wrk_getme(
    scenario: &str,
    call: WrkCall,
    url: &str,
    target: &Target,
    connections: usize,
    duration: Duration,
    workdir: &std::path::Path,
) -> Report {
    let script = workdir.join("getme.lua");
    // What each request takes in turn: an access token, or a Login body (a Lua long string).
    let tokens: Vec<String> = if call == WrkCall::JsonLogin {
        let body = |(username, password): &(String, String)| {
            serde_json::json!({ "username": username, "password": password }).to_string()
        };
        target.users.iter().map(|u| format!("[[{}]]", body(u))).collect()
    } else {
        target.tokens.iter().map(|t| format!("\"{t}\"")).collect()
    };
    let get = |path: &str| {
        format!(r#"wrk.format("GET", "{path}", {{ ["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1] }})"#)
    };
    let (path, request, check) = match call {
        WrkCall::JsonGetMe => ("/api/v1/users/me", get("/api/v1/users/me"), ""),
        WrkCall::Get(path) => (path, get(path), ""),
        // A login shed for load (503 or 429, with Retry-After) is counted apart.
        WrkCall::JsonLogin => (
            "/api/v1/auth/login",
            r#"wrk.format("POST", "/api/v1/auth/login", { ["Content-Type"] = "application/json" }, tokens[(i % #tokens) + 1])"#
                .to_owned(),
            r#"shed = 0
response = function(status, headers, body)
  if status == 503 or status == 429 then shed = shed + 1 end
end
"#,
        ),
        WrkCall::GrpcWebGetMe => (
            "/instachatico.auth.v1.UserService/GetMe",
            r#"wrk.format("POST", "/instachatico.auth.v1.UserService/GetMe", {
    ["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1],
    ["Content-Type"] = "application/grpc-web+proto", ["X-Grpc-Web"] = "1" }, "\0\0\0\0\0")"#
                .to_owned(),
            r#"bad = 0
response = function(status, headers, body)
  if not body:find("grpc-status:0", 1, true) then bad = bad + 1 end
end
"#,
        ),
    };
    std::fs::write(
        &script,
        format!(
            r#"local tokens = {{ {tokens} }}
local i = 0
request = function()
  i = i + 1
  return {request}
end
{check}
local threads = {{}}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  local e = summary.errors
  local bad, shed = 0, 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("bad") or 0)
    shed = shed + (t:get("shed") or 0)
  end
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d %d\n", summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, summary.duration, bad, shed))
end
"#,
            tokens = tokens.join(", ")
        ),
    )
    .expect("wrk script");
    let threads = connections.clamp(1, 2);
    let output = std::process::Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{}s", duration.as_secs().max(1)),
            "--timeout",
            "10s",
        ])
        .arg("-s")
        .arg(&script)
        .arg(format!("{url}{path}"))
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let line =
        text.lines().find(|l| l.starts_with("RESULT ")).unwrap_or_else(|| panic!("wrk output without RESULT: {text}"));
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    let mut report = Report::new(scenario);
    let (requests, non2xx, socket, bad, shed) = (v[0], v[1], v[2], v[8], v[9]);
    report.ok = requests.saturating_sub(non2xx + bad);
    report.shed = shed;
    report.errors = non2xx.saturating_sub(shed) + socket + bad;
    report.elapsed = Duration::from_micros(v[7]);
    // wrk reports percentiles, not its histogram.
    report.given_ms = Some([v[3] as f64 / 1e3, v[4] as f64 / 1e3, v[5] as f64 / 1e3]);
    let _ = report.latency.record(v[6].max(1));
    report.notes.push(format!(
        "wrk: max {:.2} ms, {non2xx} non-2xx, {socket} socket errors, {bad} non-OK grpc-status",
        v[6] as f64 / 1e3
    ));
    report
}

/// Cores ÷ one verify at `cost`, measured here and now: the ceiling of logins per second.
pub fn bcrypt_bound(cost: u32, samples: u32) -> (Duration, f64) {
    let hash = bcrypt::hash("Secure_password123!", cost).expect("hash");
    let started = Instant::now();
    for _ in 0..samples {
        assert!(bcrypt::verify("Secure_password123!", &hash).expect("verify"));
    }
    let per = started.elapsed() / samples;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    (per, cores as f64 / per.as_secs_f64())
}

/// The resident set size of `pid` now, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status(pid, "VmRSS:")
}

/// The peak resident set size of `pid` over its life, KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_status(pid, "VmHWM:")
}

/// CPU time (user + system, all threads) `pid` has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15,
    // in USER_HZ (100 per second on Linux).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// One line for several runs of the same call: the median of their p50, p90 and p99 and of
/// their throughput (their counts summed), so that one unlucky run does not decide a row.
pub fn median_report(name: &str, runs: &[Report]) -> Report {
    fn median(mut values: Vec<f64>) -> f64 {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
    }
    let quantile = |q| median(runs.iter().map(|r| r.ms(q)).collect());
    let mut report = Report::new(name);
    report.given_ms = Some([quantile(0.5), quantile(0.9), quantile(0.99)]);
    report.ok = runs.iter().map(|r| r.ok).sum();
    report.shed = runs.iter().map(|r| r.shed).sum();
    report.errors = runs.iter().map(|r| r.errors).sum();
    // Throughput is ok / elapsed: the median run's throughput over the summed count.
    let throughput = median(runs.iter().map(Report::throughput).collect());
    report.elapsed = Duration::from_secs_f64(report.ok as f64 / throughput.max(1e-9));
    report.measures_service = runs.iter().any(|r| r.measures_service);
    report.peak_rss_kib = runs.iter().filter_map(|r| r.peak_rss_kib).max();
    report
}

/// CPU time per answered request of each `(name, pid, before)`, for a report's notes.
pub fn cpu_per_request(report: &Report, processes: &[(&str, u32, Option<Duration>)]) -> String {
    let requests = (report.ok + report.shed + report.errors).max(1);
    let parts: Vec<String> = processes
        .iter()
        .filter_map(|(name, pid, before)| {
            let used = cpu_time(*pid)?.checked_sub((*before)?)?;
            Some(format!("{name} {:.0} µs", used.as_secs_f64() * 1e6 / requests as f64))
        })
        .collect();
    format!("CPU per request: {}", parts.join(", "))
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// Samples a process's RSS every 100 ms until stopped; the maximum seen.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                max = max.max(rss_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(100));
            }
            max.max(rss_kib(pid).unwrap_or(0))
        });
        Self { stop, handle }
    }

    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

pub const PASSWORD: &str = "Secure_password123!";

/// Seeds one admin (with a live session) and one service account with an API key of every
/// scope, through the crate's storage code; returns (admin access token, API key).
pub async fn seed_service(
    db: &instachatico_auth::db::DbPool,
    jwt: &instachatico_auth::crypto::jwt::JwtKeys,
    password_hash: &str,
) -> (String, String) {
    use instachatico_auth::db::models::api_keys;
    use instachatico_auth::model::{ApiKey, Role, Scope};
    use sha2::Digest;
    let now = chrono::Utc::now();
    let mut conn = db.get().await.expect("db");
    let token = seed_account(&mut conn, jwt, "benchadmin", Role::Admin, password_hash, now).await;
    let account = api_keys::insert_account(&mut conn, "loadgen", "", now).await.expect("seed account");
    // A fixed, well-formed key: 16 hex digits of id, 43 base64url characters of secret.
    let (id, secret) = ("0123456789abcdef", "b".repeat(43));
    let hash: String = sha2::Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let key = ApiKey {
        id: id.to_owned(),
        service_account_id: account.id,
        name: "loadgen".into(),
        secret_sha256: hash,
        scopes: Scope::ALL.to_vec(),
        allowed_cidrs: Vec::new(),
        expires_at: None,
        created_at: now,
        revoked_at: None,
        last_used_at: None,
    };
    api_keys::insert_key(&mut conn, &key).await.expect("seed key");
    (token, format!("iak_{id}_{secret}"))
}

/// Seeds `n` users (all with `password_hash`, a hash of [`PASSWORD`]) and one live session
/// each, through the crate's own storage code; returns their credentials and access tokens
/// (signed with `jwt`, as the service signs them).
pub async fn seed(
    db: &instachatico_auth::db::DbPool,
    jwt: &instachatico_auth::crypto::jwt::JwtKeys,
    n: usize,
    password_hash: &str,
) -> (Vec<(String, String)>, Vec<String>) {
    use instachatico_auth::model::Role;
    let now = chrono::Utc::now();
    let mut conn = db.get().await.expect("db");
    let (mut credentials, mut tokens) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let username = format!("bench{i:04}");
        let token = seed_account(&mut conn, jwt, &username, Role::User, password_hash, now).await;
        credentials.push((username, PASSWORD.to_owned()));
        tokens.push(token);
    }
    (credentials, tokens)
}

/// One account `username` with `role`, a live session of a day, and that session's token.
async fn seed_account(
    conn: &mut instachatico_auth::db::DbConn,
    jwt: &instachatico_auth::crypto::jwt::JwtKeys,
    username: &str,
    role: instachatico_auth::model::Role,
    password_hash: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    use instachatico_auth::crypto::jwt::Subject;
    use instachatico_auth::db::models::{sessions, users};
    use instachatico_auth::model::{NewUserRecord, Session, SessionId};
    let record = NewUserRecord {
        username: username.to_owned(),
        email: format!("{username}@example.com"),
        password_hash: password_hash.to_owned(),
        role,
        created_at: now,
    };
    let user = users::insert(conn, &record).await.expect("seed user");
    let session = Session {
        id: SessionId::random(),
        user_id: user.id,
        created_at: now,
        refreshed_at: now,
        expires_at: now + chrono::Duration::hours(24),
        revoked_at: None,
        ip_address: None,
        user_agent: Some("loadgen".into()),
        proxy_secret_sha256: None,
    };
    sessions::insert(conn, &session).await.expect("seed session");
    let subject = Subject { user_id: user.id, username, role, session: &session.id };
    jwt.issue(&subject, now, now + chrono::Duration::hours(24)).expect("token")
}

/// A user whose backend is `backend_url` (token `backend_token`), created by the target's admin,
/// and `n` proxy credentials of theirs (one login each): a proxy-mode service's load.
pub async fn proxy_credentials(target: &Target, backend_url: &str, backend_token: &str, n: usize) -> Vec<String> {
    let channel = Channel::from_shared(target.grpc_url.clone()).unwrap().connect().await.expect("connect");
    let admin = target.admin_token.as_deref().expect("the target's admin");
    // A new user per call: each run has its own backend.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let username = format!("proxied{nanos}");
    let mut create = Request::new(pb::CreateUserRequest {
        username: username.clone(),
        email: format!("{username}@example.com"),
        password: PASSWORD.into(),
        api_base_url: backend_url.into(),
        bearer_token: backend_token.into(),
        ..Default::default()
    });
    create.metadata_mut().insert("authorization", format!("Bearer {admin}").parse().unwrap());
    UserServiceClient::new(channel.clone()).create_user(create).await.expect("create the proxied user");
    let mut auth = AuthServiceClient::new(channel);
    let mut credentials = Vec::with_capacity(n);
    for _ in 0..n {
        let login = pb::LoginRequest { username: username.clone(), password: PASSWORD.into() };
        let reply = auth.login(login).await.expect("login").into_inner();
        credentials.push(reply.backend_config.expect("a backend").bearer_token);
    }
    credentials
}

/// Issue 14's cost of a second factor: one after another (c=1), a Login of a user with a
/// confirmed TOTP factor followed by its code step (VerifyMfa), timed as one sign-in; beside it
/// a plain Login of a seeded user without one. `users` fresh users are created by the target's
/// admin and enrolled through the service's own RPCs first. A user's code is good once per 30 s
/// time step (the service also takes the next step), so the users are taken in turn.
pub async fn login_mfa(target: &Target, users: usize, duration: Duration) -> Vec<Report> {
    use instachatico_auth::pb::mfa_service_client::MfaServiceClient;
    let channel = Channel::from_shared(target.grpc_url.clone()).unwrap().connect().await.expect("connect");
    let admin = target.admin_token.as_deref().expect("the target's admin");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mut enrolled = Vec::with_capacity(users);
    for i in 0..users {
        let username = format!("mfa{nanos}x{i}");
        let create = pb::CreateUserRequest {
            username: username.clone(),
            email: format!("{username}@example.com"),
            password: PASSWORD.into(),
            ..Default::default()
        };
        UserServiceClient::new(channel.clone()).create_user(authed(admin, create)).await.expect("create a user");
        let login = pb::LoginRequest { username: username.clone(), password: PASSWORD.into() };
        let reply = AuthServiceClient::new(channel.clone()).login(login).await.expect("login").into_inner();
        let token = reply.access_token.expect("a session before the factor");
        let mut mfa = MfaServiceClient::new(channel.clone());
        let secret = mfa.start_totp(authed(&token, pb::StartTotpRequest {})).await.expect("start").into_inner().secret;
        let step = totp_step(std::time::SystemTime::now());
        let code = totp_code(&secret, step);
        mfa.confirm_totp(authed(&token, pb::ConfirmTotpRequest { code })).await.expect("confirm");
        enrolled.push((username, secret, step));
    }
    let enrolled = Arc::new(std::sync::Mutex::new((enrolled, 0usize)));
    // The service's CPU per sign-in (its hashing threads included) beside the latency.
    let pid = target.pid;
    let cpu = || pid.and_then(cpu_time);
    let before = cpu();
    let mut plain = login(target, 1, duration).await;
    plain.scenario = "login grpc, no second factor c=1".into();
    if let Some(pid) = pid {
        plain.notes.push(cpu_per_request(&plain, &[("service", pid, before)]));
    }
    let before = cpu();
    // Each step alone, µs: the password step (Login answering an mfa_token, mostly bcrypt) and
    // the code step (VerifyMfa).
    let (first, second) = (Arc::new(std::sync::Mutex::new(histogram())), Arc::new(std::sync::Mutex::new(histogram())));
    let (firsts, seconds) = (Arc::clone(&first), Arc::clone(&second));
    let mut two_steps = closed_loop("login + TOTP step grpc c=1", 1, duration, move |_, _| {
        let (mut auth, enrolled) = (AuthServiceClient::new(channel.clone()), Arc::clone(&enrolled));
        let (first, second) = (Arc::clone(&firsts), Arc::clone(&seconds));
        async move {
            // The next user with a step left: now, or the one after the last used, up to now + 1
            // (not now − 1: the service's clock may pass a step boundary meanwhile).
            let now = totp_step(std::time::SystemTime::now());
            let picked = {
                let mut guard = enrolled.lock().unwrap();
                let (list, next) = &mut *guard;
                let n = list.len();
                (0..n).map(|k| (*next + k) % n).find(|&k| list[k].2 < now + 1).map(|k| {
                    let step = now.max(list[k].2 + 1);
                    list[k].2 = step;
                    *next = k + 1;
                    (list[k].0.clone(), totp_code(&list[k].1, step))
                })
            };
            let Some((username, code)) = picked else { return Outcome::Shed(Duration::from_millis(200)) };
            let started = Instant::now();
            let reply = match auth.login(pb::LoginRequest { username, password: PASSWORD.into() }).await {
                Ok(reply) => reply.into_inner(),
                Err(status) => return outcome::<()>(Err(status)),
            };
            let Some(mfa_token) = reply.mfa_token else { return Outcome::Error };
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
            let _ = first.lock().unwrap().record(micros);
            let started = Instant::now();
            match auth.verify_mfa(pb::VerifyMfaRequest { mfa_token, code, ..Default::default() }).await {
                Ok(reply) if reply.get_ref().access_token.is_some() => {
                    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                    let _ = second.lock().unwrap().record(micros);
                    Outcome::Ok
                }
                Ok(_) => Outcome::Error,
                Err(status) => outcome::<()>(Err(status)),
            }
        }
    })
    .await;
    if let Some(pid) = pid {
        two_steps.notes.push(cpu_per_request(&two_steps, &[("service", pid, before)]));
    }
    let (first, second) = (first.lock().unwrap(), second.lock().unwrap());
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    two_steps.notes.push(format!(
        "the password step alone: p50 {:.2} ms, p99 {:.2} ms",
        ms(&first, 0.5),
        ms(&first, 0.99)
    ));
    two_steps.notes.push(format!(
        "the code step alone: p50 {:.2} ms, p99 {:.2} ms",
        ms(&second, 0.5),
        ms(&second, 0.99)
    ));
    vec![plain, two_steps]
}

/// The TOTP time step (30 s) of `at`.
fn totp_step(at: std::time::SystemTime) -> i64 {
    i64::try_from(at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 30).unwrap()
}

/// The code an authenticator app with `secret` (base32) shows during `step`.
fn totp_code(secret: &str, step: i64) -> String {
    let raw = totp_rs::Secret::Encoded(secret.to_owned()).to_bytes().expect("base32");
    let totp = totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 1, 30, raw, None, String::new());
    totp.generate(u64::try_from(step * 30).unwrap())
}
