//! Connect clients through Envoy (issue 17, point 1): connect-node's `createConnectTransport`
//! (JSON and binary, HTTP/1.1 and HTTP/2) and `buf curl` with its default protocol, Connect,
//! against the real Envoy and service. Envoy's Connect bridge turns the calls into gRPC; the
//! service reads JSON messages itself (src/grpc/codec.rs). The edge rules hold for Connect too:
//! CORS from FRONTEND_URL only, Connect's GET form refused, and what a browser sends cross-site
//! without a preflight never reaches a password check, through Envoy or straight to the service.

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use reqwest::Method;

use crate::common::{ADMIN_PASSWORD, ADMIN_USERNAME, Envoy, FRONTEND, TestServer, skipped};
use crate::hostile::admin_login_failures;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// node and tests/clients/node_modules (connect-node, buf), or `None` after [`skipped`].
fn clients() -> Option<PathBuf> {
    let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let modules = root().join("tests/clients/node_modules");
    if node && modules.join("@connectrpc/connect-node").exists() && modules.join(".bin/buf").exists() {
        return Some(modules);
    }
    skipped("node or tests/clients/node_modules missing (./scripts/test installs them)");
    None
}

/// Runs `program` with `args` on a blocking thread; returns (success, stdout, stderr).
async fn run(program: PathBuf, args: Vec<String>, env: Vec<(&'static str, String)>) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&program).current_dir(root()).args(&args).envs(env).output().expect("client runs")
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn connect_node_and_buf_curl_through_envoy(s: TestServer) {
    let Some(modules) = clients() else { return };
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };

    let (ok, out, err) = run(
        "node".into(),
        vec!["tests/clients/connect.mjs".into()],
        vec![
            ("ENVOY_URL", envoy.url.clone()),
            ("ADMIN_USERNAME", ADMIN_USERNAME.into()),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
            ("DESCRIPTOR_PATH", root().join("envoy/instachatico_auth.pb").display().to_string()),
        ],
    )
    .await;
    eprintln!("{out}{err}");
    assert!(ok && out.contains("connect-node OK"), "connect-node failed:\n{out}{err}\nenvoy log:\n{}", envoy.log());

    // buf curl with no --protocol speaks Connect, and finds the schema by reflection, through
    // Envoy too.
    let buf = modules.join(".bin/buf");
    let url = |rpc: &str| format!("{}/instachatico.auth.v1.{rpc}", envoy.url);
    let login = format!(r#"{{"username":"{ADMIN_USERNAME}","password":"{ADMIN_PASSWORD}"}}"#);
    let (ok, out, err) =
        run(buf.clone(), vec!["curl".into(), "-d".into(), login, url("AuthService/Login")], vec![]).await;
    assert!(ok, "buf curl Login: {out}{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    let token = reply["accessToken"].as_str().expect("accessToken").to_owned();
    assert_eq!(reply["user"]["username"], ADMIN_USERNAME);

    let auth = format!("authorization: Bearer {token}");
    let (ok, out, err) =
        run(buf.clone(), vec!["curl".into(), "-H".into(), auth, url("UserService/GetMe")], vec![]).await;
    assert!(ok, "buf curl GetMe: {out}{err}");
    let me: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((me["id"].as_i64(), me["username"].as_str()), (Some(1), Some(ADMIN_USERNAME)));

    let wrong = r#"{"username":"nobody_buf","password":"Wrong_password1!"}"#.to_owned();
    let (ok, out, err) =
        run(buf.clone(), vec!["curl".into(), "-d".into(), wrong, url("AuthService/Login")], vec![]).await;
    assert!(!ok, "a wrong password succeeded: {out}");
    // buf curl prints a Connect error's JSON on stderr.
    let error: serde_json::Value = serde_json::from_str(&err).unwrap_or_else(|_| panic!("{out}{err}"));
    assert_eq!(error["code"], "unauthenticated", "{out}{err}");
    assert_eq!(error["message"], "Incorrect username or password", "no percent-escapes for Connect: {out}");

    let (ok, out, err) = run(buf, vec!["curl".into(), "--list-methods".into(), envoy.url.clone()], vec![]).await;
    assert!(ok && out.contains("instachatico.auth.v1.UserService/GetMe"), "{out}{err}");
    s.stop().await;
}

/// A valid gRPC frame of `LoginRequest` for the admin with a wrong password.
fn login_frame() -> Vec<u8> {
    let message =
        instachatico_auth::pb::LoginRequest { username: ADMIN_USERNAME.into(), password: "Wrong_password1!".into() }
            .encode_to_vec();
    let mut frame = vec![0];
    frame.extend(u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend(message);
    frame
}

async fn connect_keeps_the_edge_rules(s: TestServer) {
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let client = reqwest::Client::new();
    let login = format!("{}/instachatico.auth.v1.AuthService/Login", envoy.url);
    let before = admin_login_failures(&s).await;

    // Positive control: a Connect JSON call with a wrong password is a password check, and its
    // error is Connect's JSON, readable.
    let r = client
        .post(&login)
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .header("origin", FRONTEND)
        .body(format!(r#"{{"username":"{ADMIN_USERNAME}","password":"Wrong_password1!"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers().get_all("access-control-allow-origin").iter().collect::<Vec<_>>(), [FRONTEND]);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (body["code"].as_str(), body["message"].as_str()),
        (Some("unauthenticated"), Some("Incorrect username or password"))
    );
    assert_eq!(admin_login_failures(&s).await, before + 1);

    // CORS preflight for Connect's headers: FRONTEND_URL yes, any other origin no.
    for (origin, allowed) in [(FRONTEND, true), ("https://evil.example", false)] {
        let r = client
            .request(Method::OPTIONS, &login)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,connect-protocol-version,connect-timeout-ms")
            .send()
            .await
            .unwrap();
        let allow_origin = r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(allow_origin.as_deref(), allowed.then_some(origin), "{origin}");
        if allowed {
            let headers = r.headers()["access-control-allow-headers"].to_str().unwrap().to_owned();
            assert!(
                headers.contains("connect-protocol-version") && headers.contains("connect-timeout-ms"),
                "{headers}"
            );
        }
    }

    // Malformed Connect JSON (an unknown field, not JSON, over 64 KiB): refused, no password checked.
    let big = format!(r#"{{"username":"{ADMIN_USERNAME}","password":"{}"}}"#, "x".repeat(100 * 1024));
    for (body, status) in [
        (format!(r#"{{"username":"{ADMIN_USERNAME}","password":"Wrong_password1!","x":1}}"#), 400),
        ("{'username': 'admin'}".to_owned(), 400),
        (big, 400),
    ] {
        let r = client
            .post(&login)
            .header("content-type", "application/json")
            .header("connect-protocol-version", "1")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status() == status || r.status() == 413, "{}", r.status());
        let text = r.text().await.unwrap();
        assert!(!text.contains("Wrong_password1!"), "the reply quotes the body: {text}");
    }
    assert_eq!(admin_login_failures(&s).await, before + 1, "a malformed Connect body reached the password check");

    // Connect's GET form is what a page sends cross-site without a preflight: refused for every
    // RPC, before the service.
    for path in [
        "/instachatico.auth.v1.AuthService/Login?connect=v1&encoding=json&message=%7B%7D",
        "/instachatico.auth.v1.HealthService/Check?connect=v1&encoding=json&message=%7B%7D",
        "/grpc.health.v1.Health/Check?connect=v1&encoding=json&message=%7B%7D",
    ] {
        let r = client.get(format!("{}{path}", envoy.url)).send().await.unwrap();
        assert_eq!(r.status(), 405, "{path}");
    }

    // What a browser sends cross-site without a preflight (a text/plain or form post, a no-cors
    // fetch of an untyped Blob) carrying a real gRPC frame of Login: 415, through Envoy and
    // straight to the service, and no password checked.
    for base in [envoy.url.as_str(), s.url.as_str()] {
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            None,
        ] {
            let mut request = client.post(format!("{base}/instachatico.auth.v1.AuthService/Login")).body(login_frame());
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let status = request.send().await.unwrap().status().as_u16();
            // Straight to the service over HTTP/1.1, tonic-web refuses anything but grpc-web
            // (400) before this service's 415.
            let expected: &[u16] = if base == envoy.url { &[415] } else { &[400, 415] };
            assert!(expected.contains(&status), "{base} {content_type:?}: {status}");
        }
    }
    assert_eq!(admin_login_failures(&s).await, before + 1, "a cross-site simple request reached the password check");
    s.stop().await;
}

crate::on_both_backends!(connect_node_and_buf_curl_through_envoy, connect_keeps_the_edge_rules);
