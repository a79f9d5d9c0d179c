//! Hostile input (issue 11): whatever a client sends, it gets a clear 4xx and changes nothing it
//! did not ask for. Through the real server and a real Envoy, on both databases where storage
//! matters.

use instachatico_auth::db::models::audit;
use instachatico_auth::model::UserId;
use instachatico_auth::openapi;
use prost_reflect::Kind;
use reqwest::Method;
use serde_json::json;

use crate::common::{
    ADMIN_PASSWORD, ADMIN_USERNAME, Envoy, JWT_SECRET, Json, Reply, ServiceProcess, TestServer, USER_PASSWORD,
};

async fn envoy(s: &TestServer) -> Option<(Envoy, Json)> {
    let envoy = Envoy::start(&[s.upstream()]).await?;
    let json = Json::new(&envoy.url);
    Some((envoy, json))
}

/// The admin's (user 1) failed logins so far: each is a password check.
pub(crate) async fn admin_login_failures(s: &TestServer) -> usize {
    let mut conn = s.app().db().get().await.unwrap();
    let rows = audit::list_for_user(&mut conn, Some(UserId(1)), 1000).await.unwrap();
    rows.iter().filter(|r| r.action.starts_with("login_fail")).count()
}

/// A JSON-face error with a non-empty detail.
fn refused(reply: &Reply, status: u16, what: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert!(!reply.detail(status).is_empty(), "{what}: {reply:?}");
}

/// Issue 11.1: Every annotated route with a path variable: the path is the only source of that field.
/// A conflicting value in the query (proto or JSON name) or in the body is a 400 that changes
/// nothing; the routes come from the descriptor, so a new one is covered by itself.
async fn path_is_the_only_source_of_its_field(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else { return };
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let other_session_token = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let sessions = api.get("/api/v1/users/me/sessions", Some(&admin)).await;
    assert_eq!(sessions.status, 200, "{sessions:?}");
    // The newest session is the second login's.
    let other_session = sessions.body["sessions"][0]["id"].as_str().unwrap().to_owned();
    let create = |name: &str| {
        json!({"username": name, "email": format!("{name}@example.com"), "password": USER_PASSWORD,
               "api_base_url": "https://b.example", "bearer_token": "t"})
    };
    let target = api.post("/api/v1/users", Some(&admin), create("target")).await.body["id"].as_i64().unwrap();
    let victim = api.post("/api/v1/users", Some(&admin), create("victim")).await.body["id"].as_i64().unwrap();
    let victim_token = api.login("victim", USER_PASSWORD).await;

    let mut checked = 0;
    for (route, method) in openapi::routes().unwrap() {
        let vars: Vec<String> =
            route.path.split('{').skip(1).filter_map(|s| s.split('}').next()).map(str::to_owned).collect();
        for var in vars {
            let field = method.input().get_field_by_name(&var).unwrap_or_else(|| panic!("{var} in {}", route.rpc));
            // The path names the harmless target; the conflicting value names the victim.
            let (in_path, conflicting) = match field.kind() {
                Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 => (target.to_string(), json!(victim)),
                _ => ("no-such-session".to_owned(), json!(other_session)),
            };
            let path = route.path.replace(&format!("{{{var}}}"), &in_path);
            let verb = Method::from_bytes(route.method.to_uppercase().as_bytes()).unwrap();
            // What the call would do to the victim if the conflicting value won.
            let mut effect = match route.rpc.as_str() {
                "UserService.UpdateUser" => json!({"is_active": false}),
                "UserService.ResetPassword" => json!({"new_password": "Reset_password789!"}),
                "PasskeyService.RenamePasskey" => json!({"name": "renamed"}),
                _ => json!({}),
            };
            let body = (!route.body.is_empty()).then(|| effect.clone());
            let plain = conflicting.as_str().map_or_else(|| conflicting.to_string(), str::to_owned);
            let mut names = vec![field.name().to_owned()];
            if field.json_name() != field.name() {
                names.push(field.json_name().to_owned());
            }
            for name in names {
                let what = format!("{} {path}?{name}=... ({})", route.method, route.rpc);
                let r = api.call(verb.clone(), &format!("{path}?{name}={plain}"), Some(&admin), body.clone()).await;
                refused(&r, 400, &what);
                assert!(r.detail(400).contains(&name), "{what}: {r:?}");
                checked += 1;
            }
            if !route.body.is_empty() {
                effect[field.name()] = conflicting.clone();
                let r = api.call(verb.clone(), &path, Some(&admin), Some(effect)).await;
                refused(&r, 400, &format!("{} {path} with {var} in the body ({})", route.method, route.rpc));
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} conflicts tried");

    // Nothing happened to the victim, nor to the session the queries named.
    let got = api.get(&format!("/api/v1/users/{victim}"), Some(&admin)).await;
    assert_eq!(got.status, 200, "the victim still exists: {got:?}");
    assert_eq!(got.body["is_active"], true);
    assert_eq!(got.body["backend"]["api_base_url"], "https://b.example");
    assert_eq!(api.get("/api/v1/users/me", Some(&victim_token)).await.status, 200, "the victim's session lives");
    api.login("victim", USER_PASSWORD).await;
    assert_eq!(api.get("/api/v1/users/me", Some(&other_session_token)).await.status, 200, "that session lives");
    // The same value in the body as in the path is no conflict.
    let same = api
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{target}"),
            Some(&admin),
            Some(json!({"id": target, "is_active": true})),
        )
        .await;
    assert_eq!(same.status, 200, "{same:?}");
    s.stop().await;
}

/// A body in the given content type (`None`: no content-type header at all).
fn raw(api: &Json, method: Method, path: &str, content_type: Option<&str>, body: &str) -> reqwest::RequestBuilder {
    let mut request = api.request(method, path).body(body.to_owned());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request
}

/// Issue 11.2: Bodies only as application/json: what a browser sends cross-site without a preflight
/// (text/plain, form-urlencoded, multipart, or a Blob with no type) is a 415 before the service
/// sees it: no password is checked. Body-less requests need no content-type; gRPC and grpc-web
/// on the same listener are untouched.
async fn bodies_only_as_application_json(s: TestServer) {
    let Some((envoy, api)) = envoy(&s).await else { return };
    let wrong = r#"{"username":"admin","password":"Wrong_password1!"}"#;
    let before = admin_login_failures(&s).await;
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=xyz"),
        Some("application/json; charset=latin1"),
        Some("application/jsonp"),
        None,
    ] {
        let r = api.send(raw(&api, Method::POST, "/api/v1/auth/login", content_type, wrong)).await;
        refused(&r, 415, &format!("{content_type:?}"));
    }
    let form = api.send(raw(
        &api,
        Method::POST,
        "/api/v1/auth/login",
        Some("application/x-www-form-urlencoded"),
        "username=admin&password=Wrong_password1%21",
    ));
    refused(&form.await, 415, "form fields");
    assert_eq!(admin_login_failures(&s).await, before, "a refused body reached the password check");

    // JSON with parameters is JSON.
    for content_type in ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"] {
        let r = api.send(raw(&api, Method::POST, "/api/v1/auth/login", Some(content_type), wrong)).await;
        assert_eq!(r.detail(401), "Incorrect username or password", "{content_type}");
    }
    assert_eq!(admin_login_failures(&s).await, before + 3);
    // No body: no content-type needed (GET, and the UI's bare POST /auth/refresh); a body-less
    // request that names a non-JSON type is still refused.
    let token = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    assert_eq!(api.get("/api/v1/users/me", Some(&token)).await.status, 200);
    let bare = api.send(api.request(Method::POST, "/api/v1/auth/refresh").bearer_auth(&token)).await;
    assert_eq!(bare.status, 200, "{bare:?}");
    let typed = raw(&api, Method::POST, "/api/v1/auth/logout", Some("text/plain"), "").bearer_auth(&token);
    refused(&api.send(typed).await, 415, "text/plain without a body");

    // grpc-web and gRPC share the listener and are untouched.
    let r = crate::common::grpc_web_get_me(&envoy.url, &token).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned())),
        (200, None)
    );
    let channel = tonic::transport::Channel::from_shared(envoy.url.clone()).unwrap().connect().await.unwrap();
    let mut users = instachatico_auth::pb::user_service_client::UserServiceClient::new(channel);
    users.get_me(crate::common::authed(&token, instachatico_auth::pb::GetMeRequest {})).await.unwrap();
    s.stop().await;
}

/// Issue 11.3: A body that is not RFC 8259 JSON is a 400, with no password checked; valid JSON in any
/// spelling still works.
async fn bodies_must_be_strict_json(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else { return };
    let before = admin_login_failures(&s).await;
    for body in [
        r#"{"username": "admin", "password": "Wrong_password1!",}"#,
        r#"{'username': 'admin', 'password': 'Wrong_password1!'}"#,
        r#"{username: "admin", password: "Wrong_password1!"}"#,
        r#"{"username": "admin", "password": "Wrong_password1!"} trailing"#,
        r#"{"username": "admin", /* c */ "password": "Wrong_password1!"}"#,
        "{\"username\": \"admin\", \"password\": \"Wrong\u{1}password1!\"}",
        "{\"username\": \"admin\", \"password\": \"Wrong_password1!\"\n",
        r#"{"username": "admin", "password": "Wrong_password1!", "x": 01}"#,
        r#"{"username": "admin", "password": "Wrong_password1!", "x": NaN}"#,
        r#"{"username": "admin", "password": "Wrong_password1!", "x": [1,]}"#,
        r#"{"username": "admin", "password": "Wrong_password1!", "x": "\x41"}"#,
    ] {
        let r = api.send(raw(&api, Method::POST, "/api/v1/auth/login", Some("application/json"), body)).await;
        assert_eq!(r.detail(400), "Request body is not valid JSON", "{body}");
    }
    // Not UTF-8.
    let latin1 = b"{\"username\": \"admin\", \"password\": \"Wrong_passw\xf6rd1!\"}".to_vec();
    let r = api
        .send(api.request(Method::POST, "/api/v1/auth/login").header("content-type", "application/json").body(latin1))
        .await;
    r.detail(400);
    assert_eq!(admin_login_failures(&s).await, before, "an invalid body reached the password check");

    for body in [
        " {\n\t\"username\" : \"admin\" ,\r\n \"password\":\"Wrong_password1!\" } ",
        r#"{"username": "\u0061dmin", "password": "Wrong_password1!", "x": [1, -0.5e3, true, {}], "y": null}"#,
        r#"{"username": "admin", "password": "Wrong_pässword1!"}"#,
    ] {
        let r = api.send(raw(&api, Method::POST, "/api/v1/auth/login", Some("application/json"), body)).await;
        assert_eq!(r.detail(401), "Incorrect username or password", "{body}");
    }
    assert_eq!(admin_login_failures(&s).await, before + 3);
    s.stop().await;
}

crate::on_both_backends!(
    path_is_the_only_source_of_its_field,
    bodies_only_as_application_json,
    bodies_must_be_strict_json,
    malformed_messages_are_invalid_argument,
    request_ids_are_kept_only_when_safe,
);

/// The service as its own process on a fresh SQLite file (its text log captured) behind Envoy.
fn service_process(dir: &tempfile::TempDir, log_level: &str) -> ServiceProcess {
    let fixture = crate::common::python_fixture();
    let db = dir.path().join("auth.db");
    ServiceProcess::spawn(&[
        ("DATABASE_URL", db.to_str().unwrap()),
        ("DATA_DIR", dir.path().to_str().unwrap()),
        ("JWT_SECRET_KEY", JWT_SECRET),
        ("ENCRYPTION_KEY", fixture["fernet_key"].as_str().unwrap()),
        ("ADMIN_USERNAME", ADMIN_USERNAME),
        ("ADMIN_EMAIL", "admin@example.com"),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("RATE_LIMIT_LOGIN_PER_MINUTE", "30"),
        ("RATE_LIMIT_API_PER_MINUTE", "10000"),
        ("LOG_LEVEL", log_level),
    ])
}

/// Issue 11.6: Requests handled as designed leave no error-level line in Envoy's log or the service's:
/// successes and every kind of error reply of the JSON face.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn designed_replies_log_no_errors() {
    let dir = tempfile::tempdir().unwrap();
    let service = service_process(&dir, "info");
    let Some(envoy) = Envoy::start(std::slice::from_ref(&service.socket)).await else { return };
    let api = Json::new(&envoy.url);
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let create =
        |name: &str| json!({"username": name, "email": format!("{name}@example.com"), "password": USER_PASSWORD});
    let mut statuses = std::collections::BTreeSet::new();
    let mut note = |r: Reply| {
        statuses.insert(r.status);
        r
    };
    let id = note(api.post("/api/v1/users", Some(&admin), create("uma")).await).body["id"].as_i64().unwrap();
    note(api.get("/api/v1/users/me", Some(&admin)).await);
    note(api.get("/api/v1/users?limit=5", Some(&admin)).await);
    note(api.get("/api/v1/health", None).await);
    note(api.post("/api/v1/auth/login", None, json!({"username": "uma", "password": "Wrong_password1!"})).await); // 401
    note(api.get("/api/v1/users/me", None).await); // 401
    let uma = api.login("uma", USER_PASSWORD).await;
    note(api.get("/api/v1/users", Some(&uma)).await); // 403
    note(api.post("/api/v1/users", Some(&admin), create("ab")).await); // 400
    note(api.post("/api/v1/users", Some(&admin), create("uma")).await); // 409
    note(api.get("/api/v1/users/99999", Some(&admin)).await); // 404
    note(api.call(Method::DELETE, "/api/v1/users/1", Some(&admin), None).await); // 400 precondition
    note(api.get("/api/v1/users/abc", Some(&admin)).await); // 400 (Envoy)
    note(api.get("/api/v1/nothing", None).await); // 404 (Envoy)
    note(api.get("/api/v1/auth/login", None).await); // 405
    note(api.post("/api/v1/auth/login", None, json!({"username": "x", "password": "y".repeat(70_000)})).await); // 413
    note(api.send(raw(&api, Method::POST, "/api/v1/auth/login", Some("text/plain"), "{}")).await); // 415
    note(api.send(raw(&api, Method::POST, "/api/v1/auth/login", Some("application/json"), "{,}")).await); // 400
    note(api.send(api.request(Method::GET, &format!("/api/v1/users/{id}?id=1")).bearer_auth(&admin)).await); // 400
    note(api.call(Method::PATCH, &format!("/api/v1/users/{id}"), Some(&admin), Some(json!({"id": 1}))).await); // 400
    note(api.call(Method::DELETE, &format!("/api/v1/users/{id}"), Some(&admin), None).await);
    for _ in 0..40 {
        let r = note(
            api.post("/api/v1/auth/login", None, json!({"username": "nobody", "password": "Wrong_password1!"})).await,
        );
        if r.status == 429 {
            break;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let envoy_errors: Vec<String> =
        envoy.log().lines().filter(|l| l.contains("[error]") || l.contains("[critical]")).map(str::to_owned).collect();
    assert!(envoy_errors.is_empty(), "Envoy logged errors: {envoy_errors:#?}");
    let service_errors: Vec<String> = service.log().into_iter().filter(|l| l.contains(" ERROR ")).collect();
    assert!(service_errors.is_empty(), "the service logged errors: {service_errors:#?}");
    for status in [200, 201, 400, 401, 403, 404, 405, 409, 413, 415, 429] {
        assert!(statuses.contains(&status), "no {status} reply was exercised: {statuses:?}");
    }
}

/// gRPC frames of Login that tonic cannot decode, by what is wrong with them.
fn malformed_frames() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("no frame at all", vec![]),
        ("a truncated frame header", vec![0, 0, 0]),
        ("a frame shorter than its length", vec![0, 0, 0, 0, 10, 0x0a, 0x01]),
        ("not protobuf", vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff]),
        ("a string field that is not UTF-8", vec![0, 0, 0, 0, 4, 0x0a, 0x02, 0xff, 0xfe]),
        ("the compressed flag without grpc-encoding", vec![1, 0, 0, 0, 0]),
    ]
}

/// Sends `frame` to Login as native gRPC (h2c) or grpc-web (HTTP/1.1); returns the status and
/// message, which an error reply carries in its headers (trailers-only).
async fn send_frame(base: &str, grpc_web: bool, frame: Vec<u8>) -> (String, String) {
    let client = if grpc_web {
        reqwest::Client::builder().http1_only().build().unwrap()
    } else {
        reqwest::Client::builder().http2_prior_knowledge().build().unwrap()
    };
    let content_type = if grpc_web { "application/grpc-web+proto" } else { "application/grpc" };
    let mut request = client
        .post(format!("{base}/instachatico.auth.v1.AuthService/Login"))
        .header("content-type", content_type)
        .body(frame);
    if !grpc_web {
        request = request.header("te", "trailers");
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_else(|| format!("no {name}"))
    };
    let (code, message) = (header("grpc-status"), header("grpc-message"));
    let message = percent_decode(&message);
    let _ = response.bytes().await;
    (code, message)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex =
            (bytes[i] == b'%').then(|| s.get(i + 1..i + 3)).flatten().and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(byte) = hex {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Issue 11.4: Malformed gRPC and grpc-web frames: INVALID_ARGUMENT with a short generic message, not
/// INTERNAL with the decoder's text; directly and through Envoy.
async fn malformed_messages_are_invalid_argument(s: TestServer) {
    let envoy = Envoy::start(&[s.upstream()]).await;
    let mut bases = vec![("the service", s.url.clone())];
    if let Some(envoy) = &envoy {
        bases.push(("Envoy", envoy.url.clone()));
    }
    for (via, base) in &bases {
        for grpc_web in [false, true] {
            for (what, frame) in malformed_frames() {
                let (code, message) = send_frame(base, grpc_web, frame).await;
                let call = format!("{} to {via}: {what}", if grpc_web { "grpc-web" } else { "gRPC" });
                assert_eq!((code.as_str(), message.as_str()), ("3", "Malformed request message"), "{call}");
            }
        }
    }
    // A well-formed call is still answered, and the service's own errors are untouched.
    let r = send_frame(&s.url, false, vec![0, 0, 0, 0, 0]).await;
    assert_eq!(r.0, "3", "empty username and password: {r:?}");
    assert_ne!(r.1, "Malformed request message");
    s.stop().await;
}

/// Issue 11.5: A client's x-request-id is kept only when it is short and of safe characters; anything
/// else is replaced by a fresh id, directly and through Envoy, on JSON, gRPC and grpc-web.
async fn request_ids_are_kept_only_when_safe(s: TestServer) {
    let forged = r#"fake}: instachatico_auth::grpc::status: internal error error="forged""#;
    let long = "a".repeat(65);
    let envoy = Envoy::start(&[s.upstream()]).await;
    let token = s.admin_token().await;
    let mut checks = 0;
    let mut bases = vec![s.url.clone()];
    if let Some(envoy) = &envoy {
        bases.push(envoy.url.clone());
        // The JSON face.
        let api = Json::new(&envoy.url);
        for (sent, kept) in [("trace-me_1.2", true), (forged, false), (long.as_str(), false), ("<b>x</b>", false)] {
            let r = api
                .send(api.request(Method::GET, "/api/v1/users/me").bearer_auth(&token).header("x-request-id", sent))
                .await;
            assert_eq!(r.status, 200);
            assert_request_id(r.header("x-request-id"), sent, kept);
            checks += 1;
        }
    }
    for base in &bases {
        for (sent, kept) in [("trace-me_1.2", true), (forged, false), (long.as_str(), false)] {
            let r = crate::common::grpc_web_get_me(base, &token).header("x-request-id", sent).send().await.unwrap();
            assert_request_id(r.headers().get("x-request-id").and_then(|v| v.to_str().ok()), sent, kept);
            let channel = tonic::transport::Channel::from_shared(base.clone()).unwrap().connect().await.unwrap();
            let mut users = instachatico_auth::pb::user_service_client::UserServiceClient::new(channel);
            let mut request = crate::common::authed(&token, instachatico_auth::pb::GetMeRequest {});
            request.metadata_mut().insert("x-request-id", sent.parse().unwrap());
            let reply = users.get_me(request).await.unwrap();
            assert_request_id(reply.metadata().get("x-request-id").and_then(|v| v.to_str().ok()), sent, kept);
            checks += 2;
        }
    }
    assert!(checks >= 6);
    s.stop().await;
}

fn assert_request_id(returned: Option<&str>, sent: &str, kept: bool) {
    let returned = returned.unwrap_or_else(|| panic!("no x-request-id returned for {sent:?}"));
    if kept {
        assert_eq!(returned, sent);
    } else {
        assert!(uuid::Uuid::parse_str(returned).is_ok(), "{sent:?} came back as {returned:?}");
    }
}

/// Issue 11.5: The service's text log cannot be forged through x-request-id: an unsafe id never reaches
/// it, and the ids it does print are quoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_cannot_forge_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let service = service_process(&dir, "debug,h2=info,hyper=info,tower=info");
    let forged = "fake}: instachatico_auth::grpc::status: internal error error=\"forged\"";
    let mut bases = vec![service.url()];
    let envoy = Envoy::start(std::slice::from_ref(&service.socket)).await;
    if let Some(envoy) = &envoy {
        bases.push(envoy.url.clone());
        let api = Json::new(&envoy.url);
        let r = api.send(api.request(Method::GET, "/api/v1/health").header("x-request-id", forged)).await;
        assert_eq!(r.status, 200);
    }
    for base in &bases {
        let r =
            crate::common::grpc_web_get_me(base, "not-a-token").header("x-request-id", forged).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = crate::common::grpc_web_get_me(base, "not-a-token")
            .header("x-request-id", "safe-id-42")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let log = service.log_once_it_has("request_id=\"safe-id-42\"").await;
    let leaked: Vec<&String> = log.iter().filter(|l| l.contains("forged") || l.contains("fake}")).collect();
    assert!(leaked.is_empty(), "the forged id reached the log: {leaked:#?}");
    assert!(
        log.iter().any(|l| l.contains("request_id=\"safe-id-42\"")),
        "safe ids are logged, quoted:\n{}",
        log.join("\n")
    );
}
