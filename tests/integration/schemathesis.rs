//! Schemathesis (PyPI, pinned in scripts/lib/deps.sh) against the live Envoy, on both databases:
//! it reads `/openapi.json` as Envoy serves it, generates requests that the document says are
//! valid and requests it says are not, sends them, and runs all its checks on the replies (no
//! 5xx, only documented statuses, content types and bodies; schema-valid requests accepted,
//! invalid ones refused; 405 with `Allow` for a method a path does not have; 401 without
//! credentials...). Any finding fails the test, and its report is printed. The seed is fixed, so
//! a run is repeatable. `schemathesis_hooks.py` generates what the document states but a schema
//! generator cannot make (valid new passwords fast enough, API key expiries in the future).

use std::time::Instant;

use serde_json::json;

use crate::common::{ADMIN_PASSWORD, ADMIN_USERNAME, Envoy, Json, Options, TestServer, skipped};

/// The seed of every run: the same requests each time.
const SEED: &str = "17";
/// Generated requests per operation and phase: enough for every rule to be met and broken, few
/// enough that a backend's run stays well under a minute.
const MAX_EXAMPLES: &str = "15";

/// Operations left out, each because it ends the session the run is signed in with (after which
/// every call would be a 401 and test nothing), or would change its password:
/// - Logout ends it;
/// - RevokeMySession ends the session it names, which may be the run's own;
/// - ChangeMyPassword changes the signed-in admin's password (and ends its other sessions);
/// - ResetPassword and RevokeUserSessions end every session of the user whose id they are given,
///   and the generated ids include the signed-in admin's (1).
const EXCLUDED: [&str; 5] = [
    "AuthService_Logout",
    "UserService_RevokeMySession",
    "UserService_ChangeMyPassword",
    "UserService_ResetPassword",
    "UserService_RevokeUserSessions",
];

fn binary() -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/schemathesis");
    let runs = std::process::Command::new(&path).arg("--version").output().is_ok_and(|o| o.status.success());
    if runs {
        Some(path)
    } else {
        skipped("no .venv/bin/schemathesis (./scripts/test installs it): the OpenAPI document was not fuzzed");
        None
    }
}

async fn openapi_document_holds_against_the_live_service(s: TestServer) {
    let Some(schemathesis) = binary() else { return };
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let api = Json::new(&envoy.url);
    // Credentials for every security scheme of the document: an admin's session (`bearer`), and
    // an API key with the introspect scope for Introspect, the one operation only keys may call.
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let account = api.post("/api/v1/service-accounts", Some(&admin), json!({"name": "schemathesis"})).await;
    assert_eq!(account.status, 201, "{account:?}");
    let keys = format!("/api/v1/service-accounts/{}/keys", account.body["id"]);
    let key = api.post(&keys, Some(&admin), json!({"name": "fuzz", "scopes": ["introspect"]})).await;
    assert_eq!(key.status, 201, "{key:?}");
    let key = key.body["key"].as_str().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!("[auth.openapi.bearer]\nbearer = \"{admin}\"\n\n[auth.openapi.api_key]\nbearer = \"{key}\"\n"),
    )
    .unwrap();
    let mut args: Vec<String> = ["--config-file", config.to_str().unwrap(), "run"].map(str::to_owned).into();
    args.push(format!("{}/openapi.json", envoy.url));
    for flag in [
        "--checks=all",
        &format!("--seed={SEED}"),
        &format!("--max-examples={MAX_EXAMPLES}"),
        "--workers=1",
        "--generation-database=none",
        "--request-timeout=10",
        "--no-color",
    ] {
        args.push(flag.to_owned());
    }
    for operation in EXCLUDED {
        args.push(format!("--exclude-operation-id={operation}"));
    }
    let started = Instant::now();
    let cwd = dir.path().to_owned();
    let hooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/schemathesis_hooks.py");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&schemathesis).args(&args).current_dir(cwd).env("SCHEMATHESIS_HOOKS", hooks).output()
    })
    .await
    .unwrap()
    .expect("schemathesis runs");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("schemathesis on {:?}, {:.0?}:\n{report}", s.backend, started.elapsed());
    assert!(output.status.success(), "schemathesis found problems ({:?}):\n{report}", s.backend);
    s.stop().await;
}

/// The server as the run needs it: registration on, so that Register is exercised too; and no
/// shedding of password hashes on a machine busy with the rest of the suite (a 503 would be a
/// finding, and the run checks the document, not the load shedding).
async fn start(backend: crate::common::Backend) -> Option<TestServer> {
    let options = Options::default().arg("allow-registration", "true").arg("bcrypt-max-wait-ms", "60000");
    TestServer::start_with(backend, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_on_sqlite() {
    if let Some(server) = start(crate::common::Backend::Sqlite).await {
        openapi_document_holds_against_the_live_service(server).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_on_postgres() {
    if let Some(server) = start(crate::common::Backend::Postgres).await {
        openapi_document_holds_against_the_live_service(server).await;
    }
}
