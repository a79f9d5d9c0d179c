//! Generated strings in every string field of every RPC (issue 11, point 4), found through the
//! descriptor set so a new RPC or field is covered without editing this file. Each call goes to
//! the real server as native gRPC with an admin's token, on both databases. Whatever the string,
//! the answer is never INTERNAL or UNKNOWN; a string with a control character (NUL included) is
//! INVALID_ARGUMENT. The other fields hold plausible values, so the generated one reaches the
//! validation, the database and bcrypt behind it.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value};

use crate::common::TestServer;

/// Generated strings per field, besides the fixed ones below.
const CASES: usize = 24;

/// Strings that broke something once (issue 11): NUL on PostgreSQL, URLs the parser accepts
/// but the database refuses, header injection.
const FIXED: [&str; 10] = [
    "ab\u{0}cd",
    "\u{0}",
    "line\r\nSet-Cookie: a=b",
    "http:x",
    "http:/x",
    "https:x.example",
    "http:\\\\x.example",
    "http://x.example/\r\nSet-Cookie: a=b",
    "\u{7f}\u{1b}[31m",
    "ｅｘａｍｐｌｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
];

/// A plausible value for a field, so that a request fails (or succeeds) on the generated one.
fn plausible(field: &str) -> &'static str {
    match field {
        "username" => "probe_user",
        "email" => "probe@example.com",
        "password" | "new_password" | "current_password" => "Probe_password1!",
        "api_base_url" => "http://probe.example/api/v1",
        "bearer_token" => "probe-token",
        "session_id" => "probe-session",
        // VerifyMfa with a generated token reaches the lookup; with a generated code, the
        // code's check (recovery_code stays empty: one of the two is given).
        "mfa_token" => "mfa_probe",
        "code" => "123456",
        _ => "",
    }
}

/// Paths of the string fields of `message`, one level of sub-messages deep.
fn string_paths(message: &MessageDescriptor) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for field in message.fields() {
        match field.kind() {
            Kind::String if !field.is_list() => paths.push(vec![field.name().to_owned()]),
            Kind::Message(inner) if !field.is_list() && !inner.full_name().starts_with("google.") => {
                for sub in inner.fields().filter(|f| matches!(f.kind(), Kind::String) && !f.is_list()) {
                    paths.push(vec![field.name().to_owned(), sub.name().to_owned()]);
                }
            }
            _ => {}
        }
    }
    paths
}

/// Every string field plausible, sub-messages included, then `path` set to `value`.
fn request(message: &MessageDescriptor, path: &[String], value: &str) -> DynamicMessage {
    fn fill(message: &mut DynamicMessage) {
        for field in message.descriptor().fields() {
            if let (Kind::String, false) = (field.kind(), field.is_list()) {
                let v = plausible(field.name());
                if !v.is_empty() {
                    message.set_field(&field, Value::String(v.to_owned()));
                }
            }
        }
    }
    let mut root = DynamicMessage::new(message.clone());
    fill(&mut root);
    match path {
        [field] => root.set_field_by_name(field, Value::String(value.to_owned())),
        [outer, inner] => {
            let Some(Kind::Message(sub)) = message.get_field_by_name(outer).map(|f| f.kind()) else {
                unreachable!("paths come from string_paths")
            };
            let mut nested = DynamicMessage::new(sub);
            fill(&mut nested);
            nested.set_field_by_name(inner, Value::String(value.to_owned()));
            root.set_field_by_name(outer, Value::Message(nested));
        }
        _ => unreachable!("one level deep"),
    }
    root
}

/// One native gRPC call; returns the grpc-status (0 when the reply carried a message).
pub(crate) async fn call(
    client: &reqwest::Client,
    base: &str,
    method: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u32, String) {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(body);
    let mut request = client
        .post(format!("{base}/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.expect("the service answers");
    assert_eq!(response.status(), 200, "{method}");
    // Errors are trailers-only: the status is in the headers. A reply with a message carries
    // it in the trailers, after a body; that is a success here.
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match header("grpc-status") {
        Some(code) => (code.parse().unwrap(), percent_decode(&header("grpc-message").unwrap_or_default())),
        None => (0, String::new()),
    }
}

/// grpc-message is percent-encoded on the wire.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn strings() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[a-zA-Z0-9._%+@:/\\\\-]{0,40}",
        2 => "(http|https|HTTP)?:?/?/?[a-z.\\\\]{0,12}(/[ -~]{0,10})?",
        1 => "[\\x00-\\x1f\\x7f][a-z]{0,5}",
        1 => "[a-z]{250,300}",
    ]
}

async fn generated_strings_never_get_internal(s: TestServer) {
    // Wrong "current passwords" are failed sign-ins: let them all through the throttle.
    let s = s.restart(&[("login-throttle-threshold", "1000")]).await;
    let token = s.admin_token().await;
    // Introspection is a service's call: it gets a key of every scope.
    let key = crate::api_keys::key_with_every_scope(&s, &token).await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let pool = instachatico_auth::openapi::pool().unwrap();
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let strategy = strings();
    let mut calls = 0;
    for service in pool.services().filter(|s| s.package_name() == "instachatico.auth.v1") {
        for method in service.methods() {
            for path in string_paths(&method.input()) {
                let generated: Vec<String> =
                    (0..CASES).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect();
                for value in FIXED.iter().map(|v| (*v).to_owned()).chain(generated) {
                    let body = request(&method.input(), &path, &value).encode_to_vec();
                    let name = format!("{}/{}", service.full_name(), method.name());
                    let service_only = instachatico_auth::grpc::access::access(&format!("/{name}"))
                        == instachatico_auth::grpc::access::Access::Service;
                    let credential = if service_only { &key } else { &token };
                    let (code, message) = call(&client, &s.url, &name, Some(credential), &body).await;
                    calls += 1;
                    let field = path.join(".");
                    assert!(
                        !matches!(code, 2 | 13),
                        "{name} {field}={value:?} answered {code} {message:?}: never INTERNAL or UNKNOWN"
                    );
                    if value.chars().any(char::is_control) {
                        assert_eq!(
                            (code, message.as_str()),
                            (3, format!("{field}: must not contain control characters").as_str()),
                            "{name} {field}={value:?}"
                        );
                    }
                }
            }
        }
    }
    assert!(calls > 300, "every string field of every RPC was tried ({calls} calls)");
    s.stop().await;
}

crate::on_both_backends!(generated_strings_never_get_internal);
