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

/// The UI's origin, http://localhost:5173, is one port: one browser test serves it at a time.
static UI_PORT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_auth_flow_and_grpc_web_in_chromium() {
    if !ready() {
        return;
    }
    let _port = UI_PORT.lock().await;
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

/// Backend proxy mode (issue 13) in Chromium: the seed's UI code, unchanged, logs in and calls
/// its backend through the proxy, with a proxy credential and then with the HttpOnly cookie; the
/// backend's token is nowhere the page can see, its heap included. The checks live in
/// tests/browser/proxy.mjs; here, the real server, Envoy and a fake backend that records what
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_keeps_the_backend_token_out_of_the_browser() {
    if !ready() {
        return;
    }
    let _port = UI_PORT.lock().await;
    let backend = crate::common::fake_backend::FakeBackend::start("browser").await;
    let options = crate::common::Options::default()
        .arg("backend-proxy", "true")
        .arg("backend-proxy-cookie", "true")
        .arg("backend-allowed-hosts", backend.addr.to_string());
    let Some(s) = TestServer::start_with(Backend::Sqlite, options).await else { return };
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    // The UI and the proxy must be one site (localhost) for the SameSite=Strict cookie; Login
    // hands out the proxy's URL, which is Envoy's, known only now.
    let envoy_url = envoy.url.replace("127.0.0.1", "localhost");
    let s = s.restart(&[("backend-proxy-public-url", &format!("{envoy_url}/backend"))]).await;
    let admin = s.admin_token().await;
    let token = "browser-backend-token-7f3a9c";
    s.create_user(&admin, "brenda", Some((&format!("http://{}/api/v1", backend.addr), token))).await;
    let output = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/output/browser");
    run_node(
        "tests/browser/proxy.mjs",
        vec![
            ("ENVOY_URL", envoy_url.into()),
            ("USERNAME", "brenda".into()),
            ("PASSWORD", crate::common::USER_PASSWORD.into()),
            ("BACKEND_TOKEN", token.into()),
            ("OUTPUT_DIR", output.into()),
        ],
        &envoy,
    )
    .await;
    // What the backend received: the page's three calls, each with the real token.
    let received = backend.received();
    let targets: Vec<&str> = received.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/api/v1/media?limit=3", "/api/v1/posts", "/api/v1/via-cookie"]);
    for r in &received {
        assert_eq!(r.header("authorization"), Some(&*format!("Bearer {token}")), "{r:?}");
        assert_eq!(r.header("origin"), Some(crate::common::FRONTEND), "{r:?}");
        assert!(r.header("cookie").is_none(), "{r:?}");
    }
    assert_eq!(received[1].body, br#"{"caption":"from the browser"}"#);
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
    let _port = UI_PORT.lock().await;
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
