//! A real browser from another origin: Debian's headless Chromium (playwright-core) loads a
//! page from http://localhost:5173 that runs the seed's auth-store flow with fetch against
//! Envoy's JSON routes and calls the service directly over grpc-web. The checks live in
//! tests/browser/run.mjs; this test starts the real server and Envoy for it.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_auth_flow_and_grpc_web_in_chromium() {
    if !ready() {
        return;
    }
    let Some(s) = TestServer::start(Backend::Sqlite).await else { return };
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = root.join("tests/output/browser");
    let run = tokio::task::spawn_blocking({
        let (envoy_url, grpc_url, output) = (envoy.url.clone(), s.url.clone(), output.clone());
        move || {
            Command::new("node")
                .current_dir(root)
                .arg("tests/browser/run.mjs")
                .env("ENVOY_URL", envoy_url)
                .env("GRPC_WEB_URL", grpc_url)
                .env("ADMIN_USERNAME", ADMIN_USERNAME)
                .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
                .env("OUTPUT_DIR", &output)
                .env("DESCRIPTOR_PATH", root.join("envoy/instachatico_auth.pb"))
                .output()
                .expect("node runs")
        }
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    eprintln!("{text}");
    assert!(run.status.success(), "browser test failed:\n{text}\nenvoy log:\n{}", envoy.log());
    assert!(output.join("browser-flow.png").exists(), "screenshot saved");
    s.stop().await;
}
