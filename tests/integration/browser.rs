//! A real browser from another origin: Debian's headless Chromium (playwright-core) loads a
//! page from http://localhost:5173 that runs the seed's auth-store flow with fetch against
//! Envoy's JSON routes and calls the service directly over grpc-web. The checks live in
//! tests/browser/run.mjs; this test starts the real server and Envoy for it. Also: /docs with the
//! outside network cut (tests/browser/docs.mjs).

use std::path::Path;
use std::process::Command;

use crate::common::{ADMIN_PASSWORD, ADMIN_USERNAME, Backend, Envoy, TestServer, skipped};

fn ready() -> bool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing: Vec<&str> = [
        ("node", Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success())),
        ("chromium", Path::new(&chromium).exists()),
        ("tests/browser/node_modules", root.join("tests/browser/node_modules/playwright-core").exists()),
    ]
    .into_iter()
    .filter_map(|(what, ok)| (!ok).then_some(what))
    .collect();
    if missing.is_empty() {
        return true;
    }
    skipped(&format!("missing {missing:?} (./scripts/test installs them)"));
    false
}

/// Runs `script` with node from the repository root; fails the test with its output (and
/// Envoy's log) unless it exits 0.
async fn run_node(script: &'static str, env: Vec<(&'static str, std::ffi::OsString)>, envoy: &Envoy) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node").current_dir(root).arg(script).envs(env).output().expect("node runs")
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    eprintln!("{text}");
    assert!(run.status.success(), "{script} failed:\n{text}\nenvoy log:\n{}", envoy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_auth_flow_and_grpc_web_in_chromium() {
    if !ready() {
        return;
    }
    let Some(s) = TestServer::start(Backend::Sqlite).await else { return };
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let output = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/output/browser");
    let descriptor = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/instachatico_auth.pb");
    run_node(
        "tests/browser/run.mjs",
        vec![
            ("ENVOY_URL", envoy.url.clone().into()),
            ("GRPC_WEB_URL", s.url.clone().into()),
            ("ADMIN_USERNAME", ADMIN_USERNAME.into()),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
            ("OUTPUT_DIR", output.clone().into()),
            ("DESCRIPTOR_PATH", descriptor.into()),
        ],
        &envoy,
    )
    .await;
    assert!(output.join("browser-flow.png").exists(), "screenshot saved");
    s.stop().await;
}

/// `/docs` offline (issue 17, point 2): Chromium with every non-loopback request aborted loads
/// Envoy's /docs, Swagger UI (served by Envoy from envoy/swagger-ui/) renders the route list, and
/// "Try it out" on GET /api/v1/health answers 200 from the host that served the page. The checks
/// live in tests/browser/docs.mjs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_docs_work_offline_in_chromium() {
    if !ready() {
        return;
    }
    let Some(s) = TestServer::start(Backend::Sqlite).await else { return };
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let output = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/output/browser");
    let _ = std::fs::remove_file(output.join("docs.png"));
    run_node(
        "tests/browser/docs.mjs",
        vec![("ENVOY_URL", envoy.url.clone().into()), ("OUTPUT_DIR", output.clone().into())],
        &envoy,
    )
    .await;
    assert!(output.join("docs.png").exists(), "screenshot saved");
    s.stop().await;
}

/// The Swagger UI Envoy serves is npm's swagger-ui-dist at the version tests/browser pins,
/// byte for byte: update both together (copy the files from tests/browser/node_modules).
#[test]
fn committed_swagger_ui_is_the_pinned_swagger_ui_dist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dist = root.join("tests/browser/node_modules/swagger-ui-dist");
    if !dist.exists() {
        skipped("tests/browser/node_modules missing (./scripts/test installs it)");
        return;
    }
    let package: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tests/browser/package.json")).unwrap()).unwrap();
    let installed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dist.join("package.json")).unwrap()).unwrap();
    assert_eq!(package["dependencies"]["swagger-ui-dist"], installed["version"], "npm ci in tests/browser");
    for file in ["swagger-ui-bundle.js", "swagger-ui.css", "LICENSE", "NOTICE", "swagger-ui-bundle.js.LICENSE.txt"] {
        assert!(
            std::fs::read(root.join("envoy/swagger-ui").join(file)).unwrap() == std::fs::read(dist.join(file)).unwrap(),
            "envoy/swagger-ui/{file} differs from swagger-ui-dist {}",
            installed["version"]
        );
    }
}
