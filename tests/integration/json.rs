//! The JSON contract through a real Envoy, written from the seed's examples (seed 000 sections
//! 3 and 12.2): exact field names and JSON types, every error as {"detail"} with SPEC 3.3's
//! status, Envoy's own errors, CORS, security headers, client IP.

use instachatico_auth::db::models::audit;
use instachatico_auth::model::UserId;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{ADMIN_PASSWORD, ADMIN_USERNAME, Envoy, FRONTEND, Json, Reply, TestServer, USER_PASSWORD};

async fn envoy(s: &TestServer) -> Option<(Envoy, Json)> {
    let envoy = Envoy::start(&[s.upstream()]).await?;
    let json = Json::new(&envoy.url);
    Some((envoy, json))
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> =
        v.as_object().unwrap_or_else(|| panic!("object expected: {v}")).keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str().is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok() && s.ends_with('Z'))
}

/// Success replies are plain JSON: no gRPC or hint headers, security headers present.
fn clean_success(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert!(reply.header("content-type").unwrap().starts_with("application/json"));
    for leaked in ["grpc-status", "grpc-message", "x-http-status"] {
        assert!(reply.header(leaked).is_none(), "{leaked} leaked: {reply:?}");
    }
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(reply.header("content-security-policy"), Some("default-src 'none'; frame-ancestors 'none'"));
    assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert!(reply.header("strict-transport-security").is_none(), "no HSTS over plain HTTP");
    assert!(reply.header("x-request-id").is_some());
}

async fn seed_flow_exactly_as_the_ui_reads_it(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else {
        return;
    };
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;

    // Seed 3.3.1: create a user with a backend -> 201.
    let created = api
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({
                "username": "charlie", "email": "charlie@example.com", "password": "Secure_password456!",
                "instagram_username": "charlie_instagram", "api_base_url": "http://localhost:4293/api/v1",
                "bearer_token": "bearer_token_789"
            }),
        )
        .await;
    clean_success(&created, 201);
    let c = &created.body;
    for key in ["id", "username", "email", "instagram_username", "created_at"] {
        assert!(c.get(key).is_some(), "{key} in {c}");
    }
    assert!(c["id"].is_i64(), "id is a JSON number: {c}");
    assert_eq!(
        (c["username"].as_str(), c["instagram_username"].as_str()),
        (Some("charlie"), Some("charlie_instagram"))
    );
    assert!(is_rfc3339(&c["created_at"]), "{c}");
    assert!(c.get("bearer_token").is_none() && !created.body.to_string().contains("bearer_token_789"));

    // Seed 3.2.1: login.
    let login =
        api.post("/api/v1/auth/login", None, json!({"username": "charlie", "password": "Secure_password456!"})).await;
    clean_success(&login, 200);
    let l = &login.body;
    assert_eq!(keys(l), ["access_token", "backend_config", "expires_in", "token_type", "user"]);
    assert!(l["access_token"].as_str().unwrap().starts_with("eyJ"));
    assert_eq!(l["token_type"], "bearer");
    assert_eq!(l["expires_in"], 3600, "a JSON number");
    assert_eq!(l["user"]["id"], c["id"]);
    assert_eq!(l["user"]["username"], "charlie");
    assert_eq!(l["user"]["email"], "charlie@example.com");
    assert_eq!(l["user"]["instagram_username"], "charlie_instagram");
    assert_eq!(keys(&l["backend_config"]), ["api_base_url", "bearer_token"]);
    assert_eq!(l["backend_config"]["api_base_url"], "http://localhost:4293/api/v1");
    assert_eq!(l["backend_config"]["bearer_token"], "bearer_token_789", "decrypted");
    let token = l["access_token"].as_str().unwrap().to_owned();

    // Seed 3.3.2: profile.
    let me = api.get("/api/v1/users/me", Some(&token)).await;
    clean_success(&me, 200);
    for key in ["id", "username", "email", "instagram_username", "created_at", "last_login"] {
        assert!(me.body.get(key).is_some(), "{key} in {}", me.body);
    }
    assert!(is_rfc3339(&me.body["created_at"]) && is_rfc3339(&me.body["last_login"]));
    assert_eq!(me.body["id"], c["id"]);

    // Seed 3.3.3: backend update; the token is never echoed.
    let updated = api
        .put(
            "/api/v1/users/me/backend",
            Some(&token),
            json!({"api_base_url": "http://new-server:4291/api/v1", "bearer_token": "new_bearer_token_456"}),
        )
        .await;
    clean_success(&updated, 200);
    assert_eq!(updated.body["message"], "Backend configuration updated successfully");
    assert_eq!(updated.body["backend_config"]["api_base_url"], "http://new-server:4291/api/v1");
    assert!(is_rfc3339(&updated.body["backend_config"]["updated_at"]));
    assert!(!updated.body.to_string().contains("new_bearer_token_456"));
    let again =
        api.post("/api/v1/auth/login", None, json!({"username": "charlie", "password": "Secure_password456!"})).await;
    assert_eq!(again.body["backend_config"]["bearer_token"], "new_bearer_token_456");

    // Seed 3.2.2: refresh.
    let refreshed = api.post("/api/v1/auth/refresh", Some(&token), json!({})).await;
    clean_success(&refreshed, 200);
    assert_eq!(keys(&refreshed.body), ["access_token", "expires_in", "token_type"]);
    assert_eq!(
        (refreshed.body["token_type"].as_str(), refreshed.body["expires_in"].as_i64()),
        (Some("bearer"), Some(3600))
    );
    // The UI may POST with no body at all.
    let bare = api.send(api.request(Method::POST, "/api/v1/auth/refresh").bearer_auth(&token)).await;
    assert_eq!(bare.status, 200, "{bare:?}");

    // Seed 3.3.4: password change.
    let changed = api
        .put(
            "/api/v1/users/me/password",
            Some(&token),
            json!({"current_password": "Secure_password456!", "new_password": "New_secure_password789!"}),
        )
        .await;
    clean_success(&changed, 200);
    assert_eq!(changed.body, json!({"message": "Password updated successfully"}));

    // Seed 3.2.3: logout; the token stops working at once.
    let bye = api.post("/api/v1/auth/logout", Some(&token), json!({})).await;
    clean_success(&bye, 200);
    assert_eq!(bye.body, json!({"message": "Successfully logged out"}));
    let after = api.get("/api/v1/users/me", Some(&token)).await;
    assert!(!after.detail(401).is_empty());
    s.stop().await;
}

async fn user_without_backend_prints_defaults(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else {
        return;
    };
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let created = api
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": "dora", "email": "dora@example.com", "password": USER_PASSWORD}),
        )
        .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.body["instagram_username"], "", "default values are printed");
    assert_eq!(created.body["is_active"], true);
    let login =
        api.post("/api/v1/auth/login", None, json!({"username": "dora@example.com", "password": USER_PASSWORD})).await;
    assert_eq!(login.status, 200);
    assert!(login.body.get("backend_config").is_none_or(Value::is_null), "no backend: {}", login.body);
    assert_eq!(login.body["user"]["instagram_username"], "");
    s.stop().await;
}

async fn every_error_is_detail_json(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else {
        return;
    };
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let create = |username: &str, email: &str| json!({"username": username, "email": email, "password": USER_PASSWORD});
    let user = api.post("/api/v1/users", Some(&admin), create("eve", "eve@example.com")).await;
    let eve_id = user.body["id"].as_i64().unwrap();
    let eve = api.login("eve", USER_PASSWORD).await;

    // Seed 3.2.1 errors.
    let r = api.post("/api/v1/auth/login", None, json!({"username": "eve", "password": "Wrong_password1!"})).await;
    assert_eq!(r.detail(401), "Incorrect username or password");
    let r = api.post("/api/v1/auth/login", None, json!({"username": "nobody", "password": "Wrong_password1!"})).await;
    assert_eq!(r.detail(401), "Incorrect username or password");
    let r = api
        .call(Method::PATCH, &format!("/api/v1/users/{eve_id}"), Some(&admin), Some(json!({"is_active": false})))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = api.post("/api/v1/auth/login", None, json!({"username": "eve", "password": USER_PASSWORD})).await;
    assert_eq!(r.detail(403), "Account is inactive");
    api.call(Method::PATCH, &format!("/api/v1/users/{eve_id}"), Some(&admin), Some(json!({"is_active": true}))).await;
    let eve2 = api.login("eve", USER_PASSWORD).await;

    // Authentication and authorization.
    assert_eq!(api.get("/api/v1/users/me", None).await.detail(401), "Not authenticated");
    assert_eq!(api.get("/api/v1/users/me", Some("not-a-jwt")).await.detail(401), "Invalid token");
    assert!(!api.get("/api/v1/users/me", Some(&eve)).await.detail(401).is_empty(), "deactivation ended the session");
    assert_eq!(api.get("/api/v1/users", Some(&eve2)).await.detail(403), "Admin privileges required");
    assert_eq!(
        api.post("/api/v1/users", Some(&eve2), create("x_user", "x@example.com")).await.detail(403),
        "Admin privileges required"
    );

    // Validation names the field; duplicates conflict; unknown ids are 404.
    let r = api.post("/api/v1/users", Some(&admin), create("ab", "ab@example.com")).await;
    assert!(r.detail(400).starts_with("username:"), "{r:?}");
    let r = api
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": "frank", "email": "frank@example.com", "password": "weak"}),
        )
        .await;
    let detail = r.detail(400);
    assert!(detail.starts_with("password:") && !detail.contains("weak"), "{detail}");
    assert!(
        api.post("/api/v1/users", Some(&admin), create("EVE", "other@example.com"))
            .await
            .detail(409)
            .contains("username")
    );
    assert!(
        api.post("/api/v1/users", Some(&admin), create("evelyn", "Eve@Example.com"))
            .await
            .detail(409)
            .contains("email")
    );
    let r =
        api.put("/api/v1/users/me/backend", Some(&eve2), json!({"api_base_url": "ftp://x", "bearer_token": "t"})).await;
    assert!(r.detail(400).starts_with("api_base_url:"));
    assert_eq!(api.get("/api/v1/users/99999", Some(&admin)).await.detail(404), "User not found");
    let r = api.call(Method::DELETE, &format!("/api/v1/users/{}", 1), Some(&admin), None).await;
    assert_eq!(r.status, 409, "FAILED_PRECONDITION -> 409: {r:?}");
    assert!(r.detail(409).contains("own account"));

    // Envoy's own errors, in the same shape, never echoing the request.
    let r = api
        .send(
            api.request(Method::POST, "/api/v1/auth/login")
                .header("content-type", "application/json")
                .body(r#"{"username":"eve","password":"Hunter2_secret!"#),
        )
        .await;
    let detail = r.detail(400);
    assert!(!detail.contains("Hunter2"), "malformed JSON reply must not quote the body: {detail}");
    assert_eq!(api.get("/api/v1/users/abc", Some(&admin)).await.status, 400);
    assert_eq!(api.get("/api/v1/users?bogus=1", Some(&admin)).await.status, 400);
    assert_eq!(api.get("/api/v1/nothing-here", None).await.detail(404), "Not Found");
    assert_eq!(api.get("/elsewhere", None).await.detail(404), "Not Found");
    assert_eq!(api.call(Method::DELETE, "/api/v1/auth/login", None, None).await.detail(405), "Method Not Allowed");
    assert_eq!(api.get("/api/v1/auth/login", None).await.detail(405), "Method Not Allowed");
    assert_eq!(
        api.call(Method::POST, "/api/v1/users/me", Some(&eve2), Some(json!({}))).await.detail(405),
        "Method Not Allowed"
    );
    // 405 names the methods the path has (RFC 9110), /users/me apart from /users/{id}.
    for (method, path, allow) in [
        (Method::GET, "/api/v1/auth/login", "POST"),
        (Method::PUT, "/api/v1/users", "GET, POST"),
        (Method::POST, "/api/v1/users/7", "GET, PATCH, DELETE"),
        (Method::PATCH, "/api/v1/users/me", "GET"),
        (Method::DELETE, "/api/v1/users/me", "GET"),
        (Method::DELETE, "/api/v1/users/me/sessions", "GET"),
        (Method::GET, "/api/v1/users/7/sessions", "DELETE"),
        (Method::POST, "/api/v1/users/me/password", "PUT"),
        (Method::POST, "/health", "GET"),
        (Method::GET, "/api/v1/service-accounts/3/keys/0123456789abcdef/rotate", "POST"),
    ] {
        let r = api.call(method.clone(), path, Some(&eve2), None).await;
        assert_eq!((r.status, r.header("allow")), (405, Some(allow)), "{method} {path}: {r:?}");
    }
    // QUERY (which Envoy refuses with 400 without a content type) is a method like the others.
    let query = Method::from_bytes(b"QUERY").unwrap();
    let r = api.call(query, "/api/v1/users/me", Some(&eve2), None).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")), "{r:?}");
    // The transcoder would drop a null item and flatten a nested list: refused, in any field.
    for body in [json!({"username": "eve", "password": "x", "z": [[1]]}), json!({"username": [null], "password": "x"})]
    {
        let r = api.post("/api/v1/auth/login", None, body).await;
        assert_eq!(r.detail(400), "A list in the body may hold neither null nor another list");
    }
    let huge = json!({"username": "eve", "password": "x".repeat(70_000)});
    assert_eq!(api.post("/api/v1/auth/login", None, huge).await.detail(413), "Request body too large");
    s.stop().await;
}

async fn admin_routes_in_json(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else {
        return;
    };
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    for name in ["gina", "hank"] {
        let r = api
            .post("/api/v1/users", Some(&admin), json!({"username": name, "email": format!("{name}@example.com"), "password": USER_PASSWORD, "api_base_url": "https://b.example", "bearer_token": "t"}))
            .await;
        assert_eq!(r.status, 201);
    }
    let page = api.get("/api/v1/users?limit=2&offset=1&include_total=true", Some(&admin)).await;
    clean_success(&page, 200);
    assert_eq!(page.body["total"], 3, "a JSON number");
    let uncounted = api.get("/api/v1/users?limit=1&offset=1", Some(&admin)).await;
    clean_success(&uncounted, 200);
    assert_eq!(uncounted.body.get("total"), None, "not counted unless asked: absent, not 0");
    assert!(uncounted.body["next_page_token"].as_str().is_some_and(|t| !t.is_empty()), "{uncounted:?}");
    let users = page.body["users"].as_array().unwrap();
    assert_eq!(users.iter().map(|u| u["username"].as_str().unwrap()).collect::<Vec<_>>(), ["gina", "hank"]);
    assert!(users.iter().all(|u| u.get("password_hash").is_none() && u["backend"].get("bearer_token").is_none()));
    let hank = users[1]["id"].as_i64().unwrap();

    let got = api.get(&format!("/api/v1/users/{hank}"), Some(&admin)).await;
    clean_success(&got, 200);
    assert_eq!(got.body["backend"]["api_base_url"], "https://b.example");
    let patched = api
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{hank}"),
            Some(&admin),
            Some(json!({"role": "admin", "remove_backend": true})),
        )
        .await;
    clean_success(&patched, 200);
    assert_eq!((patched.body["role"].as_str(), patched.body.get("backend")), (Some("admin"), None));
    let reset = api
        .post(
            &format!("/api/v1/users/{hank}/reset-password"),
            Some(&admin),
            json!({"new_password": "Reset_password789!"}),
        )
        .await;
    clean_success(&reset, 200);
    assert_eq!(reset.body, json!({"message": "Password reset successfully"}));
    api.login("hank", "Reset_password789!").await;
    let deleted = api.call(Method::DELETE, &format!("/api/v1/users/{hank}"), Some(&admin), None).await;
    clean_success(&deleted, 200);
    assert_eq!(deleted.body, json!({"message": "User deleted successfully"}));
    assert_eq!(api.get(&format!("/api/v1/users/{hank}"), Some(&admin)).await.status, 404);
    s.stop().await;
}

async fn health_on_both_paths(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else {
        return;
    };
    for path in ["/health", "/api/v1/health"] {
        let r = api.get(path, None).await;
        clean_success(&r, 200);
        // The seed's three fields, plus the start-up key check's.
        assert_eq!(keys(&r.body), ["database", "encryption_keys", "status", "timestamp"]);
        assert_eq!((r.body["status"].as_str(), r.body["database"].as_str()), (Some("healthy"), Some("connected")));
        assert_eq!(r.body["encryption_keys"], "ok");
        assert!(is_rfc3339(&r.body["timestamp"]));
    }
    s.stop().await;
}

async fn cors_in_exactly_one_place(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else {
        return;
    };
    let preflight = |origin: &'static str, method: &'static str| {
        api.request(Method::OPTIONS, "/api/v1/users/me/backend")
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "authorization,content-type")
    };
    let ok = api.client.execute(preflight(FRONTEND, "PUT").build().unwrap()).await.unwrap();
    assert_eq!(ok.status(), 200);
    let h = ok.headers();
    assert_eq!(h.get_all("access-control-allow-origin").iter().count(), 1);
    assert_eq!(h["access-control-allow-origin"], FRONTEND);
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("PUT"));
    assert!(h["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    assert_eq!(h["access-control-max-age"], "7200");

    let refused = api.client.execute(preflight("http://evil.example", "PUT").build().unwrap()).await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());

    // Actual requests: one grant for the UI, none for others, on success and on error.
    for (path, status) in [("/api/v1/health", 200), ("/api/v1/users/me", 401)] {
        let r = api.send(api.request(Method::GET, path).header("origin", FRONTEND)).await;
        assert_eq!(r.status, status);
        assert_eq!(r.headers.get_all("access-control-allow-origin").iter().count(), 1, "{r:?}");
        assert_eq!(r.header("access-control-allow-origin"), Some(FRONTEND));
        assert_eq!(r.headers.get_all("access-control-allow-credentials").iter().count(), 1);
        let exposed = r.header("access-control-expose-headers").unwrap_or_default();
        assert!(exposed.contains("retry-after") && exposed.contains("x-request-id"), "{exposed}");
        let r = api.send(api.request(Method::GET, path).header("origin", "http://evil.example")).await;
        assert!(r.header("access-control-allow-origin").is_none(), "{r:?}");
    }
    s.stop().await;
}

async fn forwarded_for_cannot_be_spoofed(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else {
        return;
    };
    let login = |xff: Option<&'static str>| {
        let mut request = api
            .request(Method::POST, "/api/v1/auth/login")
            .header("user-agent", "contract-test/1.0")
            .json(&json!({"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}));
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        api.send(request)
    };
    assert_eq!(login(None).await.status, 200);
    assert_eq!(login(Some("6.6.6.6, 7.7.7.7")).await.status, 200);
    let mut conn = s.app().db().get().await.unwrap();
    let rows = audit::list_for_user(&mut conn, Some(UserId(1)), 10).await.unwrap();
    let ips: Vec<&str> =
        rows.iter().filter(|r| r.action == "login_success").filter_map(|r| r.ip_address.as_deref()).collect();
    assert_eq!(ips.len(), 2, "{rows:?}");
    // Envoy appends the peer it saw (for a loopback peer, its own local address); the service
    // believes only that entry, so a claimed address changes nothing.
    assert_eq!(ips[0], ips[1], "the spoofed header was ignored");
    assert!(
        ips.iter().all(|ip| !["6.6.6.6", "7.7.7.7"].contains(ip) && ip.parse::<std::net::IpAddr>().is_ok()),
        "{ips:?}"
    );
    assert!(rows.iter().all(|r| r.user_agent.as_deref() == Some("contract-test/1.0") || r.action != "login_success"));
    s.stop().await;
}

async fn docs_and_every_documented_route_is_served(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else {
        return;
    };
    let docs = api.client.get(format!("{}/docs", api.base)).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    // Everything the page loads is served here (it works offline), and its CSP names no host.
    let csp = docs.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(!csp.contains("http") && !csp.contains('*') && csp.contains("script-src 'self'"), "{csp}");
    let page = docs.text().await.unwrap();
    for (asset, content_type, needle) in [
        ("/docs/swagger-ui-bundle.js", "text/javascript", "SwaggerUIBundle"),
        ("/docs/swagger-ui.css", "text/css", ".swagger-ui"),
        ("/docs/docs.js", "text/javascript", "/openapi.json"),
    ] {
        assert!(page.contains(asset), "/docs does not load {asset}");
        let r = api.client.get(format!("{}{asset}", api.base)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(content_type), "{asset}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{asset}");
        assert!(r.text().await.unwrap().contains(needle), "{asset}");
    }
    let spec = api.get("/openapi.json", None).await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.body["openapi"], "3.1.0");
    // Relative: Try-it-out calls whichever host and port served the document.
    assert_eq!(spec.body["servers"], serde_json::json!([{"url": "/"}]));

    // Every documented route reaches the service (no Envoy 404/405): unauthenticated calls get
    // the service's own answer.
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let paths = spec.body["paths"].as_object().unwrap();
    let mut count = 0;
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "99999")
                .replace("{session_id}", "no-such-session")
                .replace("{service_account_id}", "99999")
                .replace("{key_id}", "0123456789abcdef");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = matches!(method, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
            let token = if path.ends_with("/logout") { None } else { Some(admin.as_str()) };
            let r = api.call(method.clone(), &concrete, token, body).await;
            let not_found = r.body["detail"].as_str().is_some_and(|d| d.ends_with(" not found"));
            assert!(![404, 405].contains(&r.status) || not_found, "{method} {path}: {r:?}");
            count += 1;
        }
    }
    assert_eq!(count, 44);
    s.stop().await;
}

crate::on_both_backends!(
    and_through_pgbouncer;
    seed_flow_exactly_as_the_ui_reads_it,
    user_without_backend_prints_defaults,
    every_error_is_detail_json,
    admin_routes_in_json,
    health_on_both_paths,
    cors_in_exactly_one_place,
    forwarded_for_cannot_be_spoofed,
    docs_and_every_documented_route_is_served,
    grpc_and_grpc_web_through_envoy,
);

/// JSON CORS follows the service's FRONTEND_URL: one setting for every transport.
/// Envoy's JSON face over TLS (a second listener on the same HTTP stack, as envoy.yaml tells
/// operators to add) sends HSTS on success and error replies alike; the plain listener never
/// does (`clean_success`). The client is `openssl s_client`: the test's HTTP client has no TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_over_tls() {
    let Some(s) = TestServer::start(crate::common::Backend::Sqlite).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (./scripts/test installs it)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listener = format!(
        r#"  - name: public_tls
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {tls_port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: "{}" }}
              private_key: {{ filename: "{}" }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config: *public_http
"#,
        cert.display(),
        key.display()
    );
    let add_tls = |config: &str| {
        assert!(config.contains("\n  clusters:"), "envoy.yaml layout changed; update this test");
        config.replacen("\n  clusters:", &format!("\n{listener}  clusters:"), 1)
    };
    let Some(envoy) = Envoy::start_edited(&[s.upstream()], add_tls).await else {
        return;
    };
    let https_get = |path: &str| {
        use std::io::Write;
        let mut client = std::process::Command::new("openssl")
            .args(["s_client", "-quiet", "-servername", "localhost", "-connect"])
            .arg(format!("127.0.0.1:{tls_port}"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        client.stdin.take().unwrap().write_all(request.as_bytes()).unwrap();
        String::from_utf8_lossy(&client.wait_with_output().unwrap().stdout).to_lowercase()
    };
    let hsts = "strict-transport-security: max-age=63072000; includesubdomains";
    let health = https_get("/api/v1/health");
    assert!(health.starts_with("http/1.1 200"), "{health}");
    assert!(health.contains(hsts) && health.contains("x-content-type-options: nosniff"), "{health}");
    let refused = https_get("/api/v1/users/me");
    assert!(refused.starts_with("http/1.1 401") && refused.contains(r#"{"detail":"#), "{refused}");
    assert!(refused.contains(hsts), "{refused}");
    // The plain listener of the same Envoy: no HSTS.
    let plain = Json::new(&envoy.url).get("/api/v1/health", None).await;
    assert_eq!(plain.status, 200);
    assert!(plain.header("strict-transport-security").is_none());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_cors_follows_frontend_url() {
    let options = crate::common::Options::default().arg("frontend-url", "https://ui.example.com,http://localhost:3000");
    let Some(s) = TestServer::start_with(crate::common::Backend::Sqlite, options).await else {
        return;
    };
    let Some((_envoy, api)) = envoy(&s).await else {
        return;
    };
    for (origin, allowed) in [("https://ui.example.com", true), ("http://localhost:3000", true), (FRONTEND, false)] {
        let request = api
            .request(Method::OPTIONS, "/api/v1/auth/login")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type");
        let r = api.client.execute(request.build().unwrap()).await.unwrap();
        let granted = r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(granted.as_deref(), allowed.then_some(origin), "{origin}");
    }
    s.stop().await;
}

/// Database down: 503 with the unhealthy body (PostgreSQL, whose connections we can refuse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_when_the_database_is_down() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let Some(s) = TestServer::start(crate::common::Backend::Postgres).await else {
        return;
    };
    let Some((_envoy, api)) = envoy(&s).await else {
        return;
    };
    assert_eq!(api.get("/health", None).await.status, 200);

    let name = s.database_url.rsplit('/').next().unwrap().to_owned();
    let admin_url = s.database_url.replace(&format!("/{name}"), "/postgres");
    let mut conn = AsyncPgConnection::establish(&admin_url).await.unwrap();
    let sql = |q: String| diesel::sql_query(q);
    sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).execute(&mut conn).await.unwrap();
    sql(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        .execute(&mut conn)
        .await
        .unwrap();

    let r = api.get("/health", None).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!((r.body["status"].as_str(), r.body["database"].as_str()), (Some("unhealthy"), Some("disconnected")));
    let r = api.post("/api/v1/auth/login", None, json!({"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD})).await;
    assert_eq!(r.detail(503), "database unavailable");
    assert!(r.header("retry-after").is_some(), "{r:?}");

    sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).execute(&mut conn).await.unwrap();
    let mut healthy = false;
    for _ in 0..50 {
        if api.get("/health", None).await.status == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(healthy, "recovers when the database is back");
    s.stop().await;
}

/// The service down: Envoy answers 503 {"detail"} with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_503_json() {
    let Some(s) = TestServer::start(crate::common::Backend::Sqlite).await else {
        return;
    };
    let Some((envoy, api)) = envoy(&s).await else {
        return;
    };
    s.stop().await;
    let r = api.post("/api/v1/auth/login", None, json!({"username": "a", "password": "b"})).await;
    assert_eq!(r.detail(503), "Service unavailable", "{}", envoy.log());
    assert!(r.header("retry-after").is_some());
}

/// One URL serves all three: native gRPC (with reflection) and grpc-web pass through Envoy to
/// the service untouched, beside the JSON routes.
async fn grpc_and_grpc_web_through_envoy(s: TestServer) {
    use instachatico_auth::pb;
    use prost::Message;
    let Some((envoy, api)) = envoy(&s).await else { return };

    // Native gRPC over h2c to Envoy's listener.
    let channel = tonic::transport::Channel::from_shared(envoy.url.clone()).unwrap().connect().await.unwrap();
    let mut auth = pb::auth_service_client::AuthServiceClient::new(channel.clone());
    let login = pb::LoginRequest { username: ADMIN_USERNAME.into(), password: ADMIN_PASSWORD.into() };
    let token = auth.login(login).await.unwrap().into_inner().access_token.unwrap();
    let mut users = pb::user_service_client::UserServiceClient::new(channel.clone());
    let me = users.get_me(crate::common::authed(&token, pb::GetMeRequest {})).await.unwrap();
    // The JSON face's header filter (which strips grpc-status) must not touch gRPC.
    assert_eq!(me.metadata().get("grpc-status").map(|v| v.to_str().unwrap()), Some("0"));
    assert!(me.metadata().get("content-security-policy").is_none());
    assert_eq!(me.into_inner().username, ADMIN_USERNAME);
    let status = users.get_me(crate::common::authed("bad", pb::GetMeRequest {})).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();

    // grpc-web over HTTP/1.1 to the same listener; the service's CORS answers for it.
    let r = crate::common::grpc_web_get_me(&envoy.url, &token)
        .header("x-grpc-web", "1")
        .header("origin", FRONTEND)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get_all("access-control-allow-origin").iter().count(), 1);
    assert!(r.headers()["access-control-expose-headers"].to_str().unwrap().contains("grpc-status"));
    let bytes = r.bytes().await.unwrap();
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let user = pb::User::decode(&bytes[5..5 + len]).unwrap();
    assert_eq!(user.username, ADMIN_USERNAME);
    assert!(String::from_utf8_lossy(&bytes[5 + len..]).contains("grpc-status:0"), "trailers in the body");
    drop(api);
    s.stop().await;
}
