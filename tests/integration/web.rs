//! grpc-web over HTTP/1.1 as a browser sends it, and CORS for the UI's origin only.

use instachatico_auth::pb;
use prost::Message;

use crate::common::{ADMIN_PASSWORD, ADMIN_USERNAME, FRONTEND, TestServer};

fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Splits a grpc-web body into its data frame and its trailers (as text).
fn unframe(mut body: &[u8]) -> (Vec<u8>, String) {
    let (mut data, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let payload = &body[5..5 + len];
        if flag & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(payload));
        } else {
            data.extend_from_slice(payload);
        }
        body = &body[5 + len..];
    }
    (data, trailers)
}

async fn grpc_web_over_http1(s: TestServer) {
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let url = format!("{}/instachatico.auth.v1.AuthService/Login", s.url);
    let login = |password: &str| pb::LoginRequest { username: ADMIN_USERNAME.into(), password: password.into() };

    let response = client
        .post(&url)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", FRONTEND)
        .body(frame(&login(ADMIN_PASSWORD)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], FRONTEND);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/grpc-web"));
    let (data, trailers) = unframe(&response.bytes().await.unwrap());
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let reply = pb::LoginResponse::decode(data.as_slice()).unwrap();
    assert_eq!(reply.user.unwrap().username, ADMIN_USERNAME);
    assert_eq!(reply.token_type.as_deref(), Some("bearer"));

    // Errors are trailers-only: HTTP 200 with grpc-status in the headers.
    let response = client
        .post(&url)
        .header("content-type", "application/grpc-web+proto")
        .header("origin", FRONTEND)
        .body(frame(&login("Wrong_password1!")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "16");
    // Percent-escapes only where gRPC requires them (codec::PlainMessageLayer).
    assert_eq!(response.headers()["grpc-message"], "Incorrect username or password");
    s.stop().await;
}

async fn cors_preflight_allows_only_the_ui(s: TestServer) {
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let url = format!("{}/instachatico.auth.v1.UserService/GetMe", s.url);
    let preflight = |origin: &str| {
        client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type,x-grpc-web")
            .send()
    };
    let allowed = preflight(FRONTEND).await.unwrap();
    assert!(allowed.status().is_success());
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], FRONTEND);
    assert_eq!(h["access-control-allow-credentials"], "true");
    let allow_headers = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allow_headers.contains("authorization") && allow_headers.contains("x-grpc-web"));
    assert!(h.contains_key("access-control-max-age"));

    let refused = preflight("http://evil.example").await.unwrap();
    assert!(!refused.headers().contains_key("access-control-allow-origin"), "{:?}", refused.headers());

    // A real request from a refused origin carries no CORS grant either, so browsers drop it.
    let response = client
        .post(format!("{}/instachatico.auth.v1.HealthService/Check", s.url))
        .header("content-type", "application/grpc-web+proto")
        .header("origin", "http://evil.example")
        .body(frame(&pb::CheckRequest {}))
        .send()
        .await
        .unwrap();
    assert!(!response.headers().contains_key("access-control-allow-origin"));
    s.stop().await;
}

crate::on_both_backends!(grpc_web_over_http1, cors_preflight_allows_only_the_ui);
