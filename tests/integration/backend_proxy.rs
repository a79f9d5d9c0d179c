//! Backend proxy mode (issue 13): Login hands out a proxy credential instead of the backend's
//! token; Envoy asks the service (ext_authz) and forwards to the user's real backend, a real HTTP
//! server started here that records what it receives. Through the real Envoy, on both databases.

use std::time::Duration;

use instachatico_auth::db::models::audit as audit_rows;
use instachatico_auth::model::AuditQuery;
use serde_json::json;

use crate::common::fake_backend::FakeBackend;
use crate::common::{Backend, Envoy, FRONTEND, Json, Options, TestServer, USER_PASSWORD};

/// What Login hands out as the backend's URL in these tests.
const PUBLIC_URL: &str = "http://proxy.test/backend";

/// Generates a `#[tokio::test]` per database for each `async fn name(Backend)`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::common::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::common::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both!(
    forwards_requests_as_sent_with_the_backend_token,
    the_credential_lives_and_dies_with_its_session,
    backends_outside_the_allow_list_are_refused,
    the_cookie_variant_needs_the_uis_origin_for_unsafe_methods,
    revocation_wins_every_race_with_proxied_requests,
    proxied_calls_have_their_own_limit_and_fail_closed,
);

/// A proxy-mode server for `backends` behind a real Envoy, with an admin's token.
struct Proxy {
    s: TestServer,
    envoy: Envoy,
    api: Json,
    admin: String,
}

impl Proxy {
    async fn start(db: Backend, allowed: &str, extra: Options) -> Option<Self> {
        Self::start_edited(db, allowed, extra, str::to_owned).await
    }

    /// The same, with envoy.yaml changed by `edit`.
    async fn start_edited(db: Backend, allowed: &str, extra: Options, edit: impl Fn(&str) -> String) -> Option<Self> {
        let mut options = extra
            .arg("backend-proxy", "true")
            .arg("backend-proxy-public-url", PUBLIC_URL)
            .arg("backend-allowed-hosts", allowed);
        if !options.args.iter().any(|(k, _)| k == "rate-limit-proxy-per-minute") {
            options = options.arg("rate-limit-proxy-per-minute", "100000");
        }
        let s = TestServer::start_with(db, options).await?;
        let envoy = Envoy::start_edited(&[s.upstream()], edit).await?;
        let api = Json::new(&envoy.url);
        let admin = s.admin_token().await;
        Some(Self { s, envoy, api, admin })
    }

    /// Creates `name` with a backend at `url` and `token`; logs in through the JSON face and
    /// returns (access token, proxy credential).
    async fn user(&self, name: &str, url: &str, token: &str) -> (String, String) {
        self.s.create_user(&self.admin, name, Some((url, token))).await;
        self.login(name).await
    }

    async fn login(&self, name: &str) -> (String, String) {
        let reply =
            self.api.post("/api/v1/auth/login", None, json!({"username": name, "password": USER_PASSWORD})).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let config = &reply.body["backend_config"];
        assert_eq!(config["api_base_url"], PUBLIC_URL, "{reply:?}");
        let credential = config["bearer_token"].as_str().unwrap().to_owned();
        assert!(credential.starts_with("ipx_"), "{reply:?}");
        (reply.body["access_token"].as_str().unwrap().to_owned(), credential)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.api.client.request(method, format!("{}/backend{path}", self.envoy.url))
    }

    /// GET `path` under the proxy with `credential`: status and body text.
    async fn get(&self, path: &str, credential: &str) -> (u16, String) {
        let response = self.request(reqwest::Method::GET, path).bearer_auth(credential).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The id of the user signed in with `access`.
    async fn user_id(&self, access: &str) -> i32 {
        let me = self.api.get("/api/v1/users/me", Some(access)).await;
        i32::try_from(me.body["id"].as_i64().expect("an id")).unwrap()
    }

    /// The reasons of the audited proxy refusals.
    async fn refusal_reasons(&self) -> Vec<String> {
        let entries = self.audit("proxy_refused").await;
        entries.iter().filter_map(|e| e.metadata["reason"].as_str().map(str::to_owned)).collect()
    }

    /// Waits (up to 5 s: Envoy's access log reports in batches, every second) until `reason`
    /// is audited, for the user `user_id`, without a credential or token; fails otherwise.
    async fn audited_within(&self, reason: &str, user_id: i32) {
        for _ in 0..50 {
            let entries = self.audit("proxy_refused").await;
            if let Some(entry) = entries.iter().find(|e| e.metadata["reason"] == reason) {
                assert_eq!(entry.user_id.map(|u| u.0), Some(user_id), "{entry:?}");
                let text = format!("{entry:?}");
                assert!(!text.contains("ipx_") && !text.contains("backend-token"), "{text}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no proxy_refused audit with reason {reason}: {:?}", self.refusal_reasons().await);
    }

    async fn audit(&self, action: &str) -> Vec<instachatico_auth::model::AuditEntry> {
        let mut conn = self.s.app().db().get().await.unwrap();
        let query = AuditQuery { action: Some(action.into()), ..Default::default() };
        audit_rows::query(&mut conn, &query, 200, 0).await.unwrap().0
    }
}

fn base(backend: &FakeBackend, path: &str) -> String {
    format!("http://{}{path}", backend.addr)
}

async fn forwards_requests_as_sent_with_the_backend_token(db: Backend) {
    let backend = FakeBackend::start("one").await;
    let Some(p) = Proxy::start(db, &backend.addr.to_string(), Options::default()).await else { return };
    let token = "proxied-backend-token-one";
    let (access, credential) = p.user("paula", &base(&backend, "/api/v1"), token).await;
    let mut seen = Vec::<String>::new();

    // Path below the prefix joins the backend's base; the query is kept byte for byte.
    let response = p
        .request(reqwest::Method::GET, "/media/list?limit=5&q=caf%C3%A9+x&empty=")
        .bearer_auth(&credential)
        .header("cookie", "session=ui-cookie")
        .header("origin", FRONTEND)
        .header("x-custom", "kept")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = format!("{:?}", response.headers());
    // The backend's own CORS header is replaced by the UI's.
    assert_eq!(response.headers()["access-control-allow-origin"], FRONTEND);
    let body: serde_json::Value = response.json().await.unwrap();
    seen.extend([headers, body.to_string()]);
    assert_eq!(body["backend"], "one");
    let got = backend.last();
    assert_eq!((got.method.as_str(), got.target.as_str()), ("GET", "/api/v1/media/list?limit=5&q=caf%C3%A9+x&empty="));
    assert_eq!(got.header("authorization"), Some(&*format!("Bearer {token}")));
    assert_eq!(got.header("host"), Some(&*backend.addr.to_string()));
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert!(got.header("cookie").is_none(), "the client's cookies never reach the backend: {got:?}");
    assert!(got.header("proxy-authorization").is_none(), "{got:?}");
    assert!(got.header("x-instachatico-upstream-scheme").is_none(), "{got:?}");
    let everything = format!("{:?}", got.headers);
    assert!(!everything.contains(&credential), "the proxy credential reaches the backend: {got:?}");

    // Envoy keeps its connections to the backend: sequential requests share them. A new backend
    // address can open a connection or two more at first: a worker that asks before the main
    // thread has published the address's host makes a host (and a pool) of its own
    // (ORIGINAL_DST's addHost). So first wait until five requests in a row open none.
    let mut settled = false;
    for _ in 0..20 {
        let before = backend.connections();
        for _ in 0..5 {
            assert_eq!(p.get("/warm", &credential).await.0, 200);
        }
        if backend.connections() == before {
            settled = true;
            break;
        }
    }
    assert!(settled, "proxied requests kept opening backend connections: {}", backend.connections());
    let before = backend.connections();
    for _ in 0..20 {
        assert_eq!(p.get("/again", &credential).await.0, 200);
    }
    let opened = backend.connections() - before;
    // At most one: should the client reconnect, its new connection may land on a worker
    // without a pool yet.
    assert!(opened <= 1, "20 proxied requests opened {opened} backend connections");

    // Methods and bodies as sent, binary included.
    let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    for method in [reqwest::Method::POST, reqwest::Method::PUT, reqwest::Method::PATCH, reqwest::Method::DELETE] {
        let response = p
            .request(method.clone(), "/items/7")
            .bearer_auth(&credential)
            .header("content-type", "application/octet-stream")
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        seen.push(response.text().await.unwrap());
        let got = backend.last();
        assert_eq!((got.method.as_str(), got.target.as_str()), (method.as_str(), "/api/v1/items/7"));
        assert_eq!(got.body, payload, "{method}: the body arrives as sent");
    }

    // A streamed reply (server-sent events) arrives as the backend sends it: the first event
    // comes through while the backend still holds back the last.
    let mut stream = p.request(reqwest::Method::GET, "/events/stream").bearer_auth(&credential).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(10), stream.chunk()).await.expect("first event streamed");
    assert_eq!(first.unwrap().unwrap(), "data: first\n\n");
    backend.release_stream();
    let rest = stream.text().await.unwrap();
    assert_eq!(rest, "data: last\n\n");

    // Backend errors pass through as the backend sent them.
    let response = p.request(reqwest::Method::GET, "/teapot").bearer_auth(&credential).send().await.unwrap();
    assert_eq!(response.status(), 418);
    assert_eq!(response.headers()["x-backend-own"], "kept");
    assert_eq!(response.text().await.unwrap(), "short and stout");

    // UpdateMyBackend takes effect on the next proxied request.
    let other = FakeBackend::start("two").await;
    let p = restart_allowing(p, &format!("{},{}", backend.addr, other.addr)).await;
    let new_token = "proxied-backend-token-two";
    let reply = p
        .api
        .put(
            "/api/v1/users/me/backend",
            Some(&access),
            json!({"api_base_url": base(&other, "/"), "bearer_token": new_token}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let (status, body) = p.get("/after-update", &credential).await;
    assert_eq!(status, 200, "{body}");
    seen.push(body);
    let got = other.last();
    assert_eq!(got.target, "/after-update");
    assert_eq!(got.header("authorization"), Some(&*format!("Bearer {new_token}")));

    // The backend tokens appear in no reply, no audit row and no metric.
    let mut conn = p.s.app().db().get().await.unwrap();
    let (entries, _) = audit_rows::query(&mut conn, &AuditQuery::default(), 200, 0).await.unwrap();
    drop(conn);
    seen.extend(entries.iter().map(|e| format!("{e:?}")));
    let metrics_addr = p.s.running.as_ref().unwrap().metrics_addr.unwrap();
    seen.push(reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap().text().await.unwrap());
    for text in &seen {
        for secret in [token, new_token] {
            assert!(!text.contains(secret), "backend token leaked: {text}");
        }
        assert!(!text.contains(&credential), "proxy credential leaked: {text}");
    }
}

/// Restarts the proxy's server with another allow-list (Envoy stays).
async fn restart_allowing(p: Proxy, allowed: &str) -> Proxy {
    let Proxy { s, envoy, api, .. } = p;
    let s = s.restart(&[("backend-allowed-hosts", allowed)]).await;
    let admin = s.admin_token().await;
    Proxy { s, envoy, api, admin }
}

async fn the_credential_lives_and_dies_with_its_session(db: Backend) {
    let backend = FakeBackend::start("b").await;
    let Some(p) = Proxy::start(db, &backend.addr.to_string(), Options::default()).await else { return };
    let url = base(&backend, "/api");
    let (access, credential) = p.user("rosa", &url, "proxied-backend-token-rosa").await;
    assert_eq!(p.get("/x", &credential).await.0, 200);

    // Not interchangeable: the access token is not a proxy credential, nor the reverse.
    let (status, body) = p.get("/x", &access).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(p.api.get("/api/v1/users/me", Some(&credential)).await.status, 401);
    let (status, body) = p.get("/x", "").await;
    assert_eq!((status, serde_json::from_str::<serde_json::Value>(&body).unwrap()["detail"].is_string()), (401, true));
    let forged = format!("{}{}", &credential[..credential.len() - 4], "AAAA");
    assert_eq!(p.get("/x", &forged).await.0, 401);

    // A refresh leaves it alone; logout ends it.
    let reply = p.api.post("/api/v1/auth/refresh", Some(&access), json!({})).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(p.get("/x", &credential).await.0, 200);
    assert_eq!(p.api.post("/api/v1/auth/logout", Some(&access), json!({})).await.status, 200);
    let (status, body) = p.get("/x", &credential).await;
    assert_eq!(status, 401, "{body}");

    // Every other end of a session ends it too.
    let me = p.api.get("/api/v1/users/me", Some(&p.login("rosa").await.0)).await.body;
    let user_id = me["id"].as_i64().unwrap();
    type End<'a> = Box<dyn Fn(String) -> reqwest::RequestBuilder + 'a>;
    let ends: [(&str, End<'_>); 5] = [
        (
            "password change",
            Box::new(|access| {
                p.api
                    .request(reqwest::Method::PUT, "/api/v1/users/me/password")
                    .bearer_auth(access)
                    .json(&json!({"current_password": USER_PASSWORD, "new_password": "Changed_password456!"}))
            }),
        ),
        (
            "password reset",
            Box::new(|_| {
                p.api
                    .request(reqwest::Method::POST, &format!("/api/v1/users/{user_id}/reset-password"))
                    .bearer_auth(&p.admin)
                    .json(&json!({"new_password": USER_PASSWORD}))
            }),
        ),
        (
            "revocation by an admin",
            Box::new(|_| {
                p.api
                    .request(reqwest::Method::DELETE, &format!("/api/v1/users/{user_id}/sessions"))
                    .bearer_auth(&p.admin)
            }),
        ),
        (
            "deactivation",
            Box::new(|_| {
                p.api
                    .request(reqwest::Method::PATCH, &format!("/api/v1/users/{user_id}"))
                    .bearer_auth(&p.admin)
                    .json(&json!({"is_active": false}))
            }),
        ),
        (
            "deletion",
            Box::new(|_| {
                p.api.request(reqwest::Method::DELETE, &format!("/api/v1/users/{user_id}")).bearer_auth(&p.admin)
            }),
        ),
    ];
    for (what, end) in ends {
        // The change is made from another session of hers (a password change keeps its own).
        let (access, _) = match what {
            "password reset" => login_as(&p, "rosa", "Changed_password456!").await,
            "deletion" => {
                // Reactivated after the deactivation above.
                let path = format!("/api/v1/users/{user_id}");
                let r =
                    p.api.call(reqwest::Method::PATCH, &path, Some(&p.admin), Some(json!({"is_active": true}))).await;
                assert_eq!(r.status, 200, "{r:?}");
                p.login("rosa").await
            }
            _ => p.login("rosa").await,
        };
        let password = if what == "password reset" { "Changed_password456!" } else { USER_PASSWORD };
        let (_, credential) = login_as(&p, "rosa", password).await;
        assert_eq!(p.get("/x", &credential).await.0, 200, "{what}: live before");
        let reply = p.api.send(end(access)).await;
        assert!(reply.status < 300, "{what}: {reply:?}");
        let (status, body) = p.get("/x", &credential).await;
        assert_eq!(status, 401, "{what}: {body}");
    }

    // Refusals are audited without the credential.
    let refused = p.audit("proxy_refused").await;
    assert!(!refused.is_empty());
    for entry in &refused {
        let text = format!("{entry:?}");
        assert!(!text.contains("ipx_") && !text.contains(&credential), "{text}");
    }
}

async fn login_as(p: &Proxy, name: &str, password: &str) -> (String, String) {
    let reply = p.api.post("/api/v1/auth/login", None, json!({"username": name, "password": password})).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    (
        reply.body["access_token"].as_str().unwrap().into(),
        reply.body["backend_config"]["bearer_token"].as_str().unwrap().into(),
    )
}

async fn backends_outside_the_allow_list_are_refused(db: Backend) {
    let backend = FakeBackend::start("ok").await;
    let port = backend.addr.port();
    // Nothing listens there: an allowed but unreachable backend.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // A forbidden target that must never be reached.
    let forbidden = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forbidden_addr = forbidden.local_addr().unwrap();
    // `localhost` at the forbidden target's port is on the list by name; its address is not.
    let allowed = format!("127.0.0.1:{port}, localhost:{}, {dead}", forbidden_addr.port());
    let Some(p) = Proxy::start(db, &allowed, Options::default()).await else { return };
    drop(std::net::TcpListener::bind(dead).ok());

    // Storing a backend outside the list: 400, and nothing changes.
    let (access, credential) = p.user("sam", &base(&backend, "/"), "proxied-backend-token-sam").await;
    for url in [
        format!("http://{forbidden_addr}/"),
        "http://127.0.0.1:9464/metrics".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://127.0.0.2:{port}/"),
    ] {
        let reply = p
            .api
            .put("/api/v1/users/me/backend", Some(&access), json!({"api_base_url": url, "bearer_token": "t"}))
            .await;
        assert!(reply.detail(400).contains("api_base_url"), "{url}: {reply:?}");
        let reply = p
            .api
            .post(
                "/api/v1/users",
                Some(&p.admin),
                json!({"username": "eve", "email": "eve@example.com", "password": USER_PASSWORD, "api_base_url": url, "bearer_token": "t"}),
            )
            .await;
        assert_eq!(reply.status, 400, "{url}: {reply:?}");
    }
    assert_eq!(p.get("/still", &credential).await.0, 200);
    assert_eq!(backend.last().target, "/still");

    // A redirect is passed to the client, not followed (nor by this client).
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = no_redirects
        .get(format!("{}/backend/redirect?to=http://{forbidden_addr}/", p.envoy.url))
        .bearer_auth(&credential)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], format!("http://{forbidden_addr}/"));

    // A name on the list that resolves to an address not on it (loopback): 403.
    let reply = p
        .api
        .put(
            "/api/v1/users/me/backend",
            Some(&access),
            json!({"api_base_url": format!("http://localhost:{}/", forbidden_addr.port()), "bearer_token": "t"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let (status, body) = p.get("/rebound", &credential).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("address"), "{body}");

    // Unreachable: 502.
    let reply = p
        .api
        .put(
            "/api/v1/users/me/backend",
            Some(&access),
            json!({"api_base_url": format!("http://{dead}/"), "bearer_token": "t"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let (status, body) = p.get("/down", &credential).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["detail"], "Backend unreachable");
    // Envoy's own refusal, reported back by its access log: audited like the service's.
    p.audited_within("backend_unreachable", p.user_id(&access).await).await;

    // A host taken off the list: 403 on the next request.
    let reply = p
        .api
        .put(
            "/api/v1/users/me/backend",
            Some(&access),
            json!({"api_base_url": base(&backend, "/"), "bearer_token": "t"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(p.get("/fine", &credential).await.0, 200);
    let p = restart_allowing(p, &format!("{dead}")).await;
    let (status, body) = p.get("/gone", &credential).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("host"), "{body}");

    // The forbidden target never saw a connection.
    let accepted = tokio::time::timeout(Duration::from_millis(200), forbidden.accept()).await;
    assert!(accepted.is_err(), "the proxy connected to a forbidden address");
    let user_id = p.user_id(&access).await;
    for reason in ["address_not_allowed", "host_not_allowed"] {
        p.audited_within(reason, user_id).await;
    }
}

async fn the_cookie_variant_needs_the_uis_origin_for_unsafe_methods(db: Backend) {
    let backend = FakeBackend::start("c").await;
    let options = Options::default().arg("backend-proxy-cookie", "true");
    let Some(p) = Proxy::start(db, &backend.addr.to_string(), options).await else { return };
    p.s.create_user(&p.admin, "cleo", Some((&base(&backend, "/api"), "proxied-backend-token-cleo"))).await;
    let reply = p.api.post("/api/v1/auth/login", None, json!({"username": "cleo", "password": USER_PASSWORD})).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let set_cookie = reply.header("set-cookie").expect("the login sets the cookie").to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/backend"] {
        assert!(set_cookie.contains(attribute), "{attribute}: {set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let access = reply.body["access_token"].as_str().unwrap().to_owned();

    let send = |method: reqwest::Method, origin: Option<&str>| {
        let mut request = p.request(method, "/things").header("cookie", &cookie);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send(reqwest::Method::GET, None).await, 200);
    assert!(backend.last().header("cookie").is_none(), "the cookie is the proxy's, not the backend's");
    assert_eq!(send(reqwest::Method::POST, Some(FRONTEND)).await, 200);
    assert_eq!(send(reqwest::Method::POST, None).await, 403);
    assert_eq!(send(reqwest::Method::DELETE, Some("https://evil.example")).await, 403);

    // Logout clears the cookie, and the session's credential is dead anyway.
    let reply = p.api.post("/api/v1/auth/logout", Some(&access), json!({})).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")), "{reply:?}");
    assert_eq!(send(reqwest::Method::GET, None).await, 401);
}

/// Proxied requests race the logout that ends their session: every request sent after the
/// logout's reply is refused, on every round. Three decision threads answer Envoy's workers at
/// once (PROXY_DECISION_THREADS), so a decision may be made on a thread other than the one that
/// saw the session before.
async fn revocation_wins_every_race_with_proxied_requests(db: Backend) {
    let backend = FakeBackend::start("r").await;
    let threads = Options::default().arg("proxy-decision-threads", "3");
    let Some(p) = Proxy::start(db, &backend.addr.to_string(), threads).await else { return };
    p.s.create_user(&p.admin, "rey", Some((&base(&backend, "/"), "proxied-backend-token-rey"))).await;
    for round in 0..15 {
        let (access, credential) = p.login("rey").await;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..6)
            .map(|_| {
                let (client, url, credential, done) =
                    (p.api.client.clone(), format!("{}/backend/r", p.envoy.url), credential.clone(), done.clone());
                tokio::spawn(async move {
                    let mut after = Vec::new();
                    loop {
                        // Read before sending: a request counts as "after" only if it started
                        // once the logout had returned.
                        let started_after = done.load(std::sync::atomic::Ordering::SeqCst);
                        let status = client.get(&url).bearer_auth(&credential).send().await.unwrap().status().as_u16();
                        assert!(status == 200 || status == 401, "{status}");
                        if started_after {
                            after.push(status);
                            if after.len() >= 3 {
                                return after;
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reply = p.api.post("/api/v1/auth/logout", Some(&access), json!({})).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        for worker in workers {
            let after = worker.await.unwrap();
            assert!(after.iter().all(|s| *s == 401), "round {round}: accepted after logout: {after:?}");
        }
    }
}

/// The proxy's own limits: a request body over 10 MiB is refused (413) before the backend sees
/// a byte, and a backend that goes quiet mid-request is a 504; both audited (Envoy's access log
/// reports them to the service). Envoy's config, so one database;
/// the idle timeout is cut from 60 s to 1 s here (the edit fails if the routes change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_and_silent_backends_are_refused() {
    const COMMITTED: &str = "per_try_idle_timeout: 60s";
    let backend = FakeBackend::start("slow").await;
    let edit = |config: &str| {
        assert_eq!(config.matches(COMMITTED).count(), 2, "the backend routes' timeouts changed; update this test");
        config.replace(COMMITTED, "per_try_idle_timeout: 1s")
    };
    let allowed = backend.addr.to_string();
    let Some(p) = Proxy::start_edited(Backend::Sqlite, &allowed, Options::default(), edit).await else { return };
    let (access, credential) = p.user("tess", &base(&backend, "/api"), "tess-backend-token").await;
    let tess = p.user_id(&access).await;

    let post = |body: Vec<u8>| {
        p.request(reqwest::Method::POST, "/upload")
            .bearer_auth(&credential)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    let limit = 10 * 1024 * 1024;
    let reply = post(vec![b'x'; limit]).await.unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(backend.last().body.len(), limit, "a body at the limit arrives whole");
    let seen = backend.received().len();
    let reply = post(vec![b'x'; limit + 1]).await.unwrap();
    assert_eq!(reply.status(), 413);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    assert_eq!(backend.received().len(), seen, "the backend saw nothing of the refused body");
    p.audited_within("body_too_large", tess).await;

    let (status, body) = p.get("/feed?sleep_ms=3000", &credential).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["detail"], "Backend timed out");
    assert!(!body.contains("tess-backend-token"));
    p.audited_within("backend_timed_out", tess).await;
    let (status, _) = p.get("/feed?sleep_ms=200", &credential).await;
    assert_eq!(status, 200, "a backend that answers within the idle timeout is served");
}

/// The sidecar's two RPCs answer only the sidecar (its Unix socket, or TRUSTED_PROXIES): a local
/// process on the TCP port can neither ask for a decision (it carries the backend's token) nor
/// report failures into the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sidecar_may_ask_for_decisions_or_report_failures() {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::data::accesslog::v3::{AccessLogCommon, HttpAccessLogEntry};
    use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
    use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
    use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
        HttpAccessLogEntries, LogEntries,
    };
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, attribute_context};
    use envoy_types::pb::google::protobuf::{Struct, Value, value};

    let backend = FakeBackend::start("sidecar").await;
    let Some(p) = Proxy::start(Backend::Sqlite, &backend.addr.to_string(), Options::default()).await else { return };
    let (access, credential) = p.user("sid", &base(&backend, "/api"), "sid-backend-token").await;
    let sid = p.user_id(&access).await;
    let channel = p.s.channel().await;

    let http = attribute_context::HttpRequest {
        method: "GET".into(),
        path: "/backend/feed".into(),
        headers: [("authorization".to_owned(), format!("Bearer {credential}"))].into(),
        ..Default::default()
    };
    let request = attribute_context::Request { http: Some(http), ..Default::default() };
    let check = CheckRequest { attributes: Some(AttributeContext { request: Some(request), ..Default::default() }) };
    let refused = AuthorizationClient::new(channel.clone()).check(check).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(!format!("{refused:?}").contains("sid-backend-token"));

    let user = Value { kind: Some(value::Kind::NumberValue(f64::from(sid))) };
    let authz = Struct { fields: [("instachatico_user_id".to_owned(), user)].into() };
    let metadata =
        Metadata { filter_metadata: [("envoy.filters.http.ext_authz".to_owned(), authz)].into(), ..Default::default() };
    let entry = HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon { metadata: Some(metadata), ..Default::default() }),
        ..Default::default()
    };
    let forged = StreamAccessLogsMessage {
        identifier: None,
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries { log_entry: vec![entry] })),
    };
    let refused = AccessLogServiceClient::new(channel).stream_access_logs(futures_util::stream::iter([forged])).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.refusal_reasons().await.is_empty(), "a forged report was audited");
}

/// Proxy mode off (the default): nothing of the proxy is there, and Login hands out the real
/// backend as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_off_changes_nothing() {
    let Some(s) = TestServer::start(Backend::Sqlite).await else { return };
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let api = Json::new(&envoy.url);
    let admin = s.admin_token().await;
    s.create_user(&admin, "olga", Some(("http://127.0.0.1:9/anything", "olga-backend-token"))).await;
    let reply = api.post("/api/v1/auth/login", None, json!({"username": "olga", "password": USER_PASSWORD})).await;
    assert_eq!(
        reply.body["backend_config"],
        json!({"api_base_url": "http://127.0.0.1:9/anything", "bearer_token": "olga-backend-token"})
    );
    let access = reply.body["access_token"].as_str().unwrap();
    let reply = api.get("/backend/anything", Some(access)).await;
    assert_eq!(reply.detail(404), "The backend proxy is off");
}

/// Proxy mode needs its allow-list, and bad entries are named.
#[test]
fn proxy_mode_needs_an_allow_list() {
    use clap::Parser;
    let settings = |extra: &[&str]| {
        let mut args =
            vec!["instachatico-auth", "--jwt-secret-key", crate::common::JWT_SECRET, "--data-dir", "/nonexistent"];
        args.extend_from_slice(extra);
        let cli = instachatico_auth::cli::Cli::try_parse_from(args).unwrap();
        instachatico_auth::config::Settings::from_config(&cli.config).map(drop).map_err(|e| e.to_string())
    };
    let error = settings(&["--backend-proxy", "true"]).unwrap_err();
    assert!(error.contains("BACKEND_ALLOWED_HOSTS"), "{error}");
    let error = settings(&["--backend-proxy", "true", "--backend-allowed-hosts", "api.example.com:http"]).unwrap_err();
    assert!(error.contains("api.example.com:http"), "{error}");
    let error = settings(&["--backend-proxy-cookie", "true"]).unwrap_err();
    assert!(error.contains("BACKEND_PROXY=true"), "{error}");
    let error = settings(&[
        "--backend-proxy",
        "true",
        "--backend-allowed-hosts",
        "a.example",
        "--backend-proxy-public-url",
        "http://x/",
    ])
    .unwrap_err();
    assert!(error.contains("BACKEND_PROXY_PUBLIC_URL"), "{error}");
}

/// The proxy's own per-user limit (RATE_LIMIT_PROXY_PER_MINUTE), apart from the API's; and the
/// service down: Envoy answers 503 rather than forwarding anything.
async fn proxied_calls_have_their_own_limit_and_fail_closed(db: Backend) {
    let backend = FakeBackend::start("limited").await;
    let options = Options::default().arg("rate-limit-proxy-per-minute", "3");
    let Some(p) = Proxy::start(db, &backend.addr.to_string(), options).await else { return };
    let (access, credential) = p.user("lim", &base(&backend, "/"), "proxied-backend-token-lim").await;
    for _ in 0..3 {
        assert_eq!(p.get("/x", &credential).await.0, 200);
    }
    let response = p.request(reqwest::Method::GET, "/x").bearer_auth(&credential).send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"), "{response:?}");
    assert_eq!(backend.received().len(), 3, "the refused call never reached the backend");
    // The API's own limit is apart: the account still works.
    assert_eq!(p.api.get("/api/v1/users/me", Some(&access)).await.status, 200);
    // Refusals are audited off the request's path: wait for the row.
    p.audited_within("rate_limited", p.user_id(&access).await).await;

    let Proxy { s, envoy, api, .. } = p;
    s.stop().await;
    let reply = api.send(api.request(reqwest::Method::GET, "/backend/x").bearer_auth(&credential)).await;
    assert_eq!(reply.detail(503), "Service unavailable");
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
    assert_eq!(backend.received().len(), 3);
    drop(envoy);
}

/// An https backend: Envoy's `backend_https` cluster sends the backend's host name as SNI and
/// checks its certificate against it. The backend is `openssl s_server -WWW` with a certificate
/// for `localhost`, which the test's Envoy trusts in place of the system's CAs; the same backend
/// reached by its IP address fails the name check, and nothing is forwarded unverified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backends_are_verified_against_their_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (./scripts/test installs it)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    // -WWW serves files below its working directory: GET /api/feed answers with this file.
    std::fs::create_dir(dir.path().join("api")).unwrap();
    std::fs::write(dir.path().join("api/feed"), "served over TLS").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _server = KillOnDrop(
        std::process::Command::new("openssl")
            .current_dir(dir.path())
            .args(["s_server", "-quiet", "-WWW", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let options = Options::default()
        .arg("backend-proxy", "true")
        .arg("backend-proxy-public-url", PUBLIC_URL)
        .arg("backend-allowed-hosts", format!("localhost:{port}, 127.0.0.1:{port}"))
        .arg("rate-limit-proxy-per-minute", "100000");
    let Some(s) = TestServer::start_with(Backend::Sqlite, options).await else { return };
    let trusted = cert.display().to_string();
    let edit = |config: &str| {
        assert!(config.contains("/etc/ssl/certs/ca-certificates.crt"), "envoy.yaml's CA bundle moved");
        config.replace("/etc/ssl/certs/ca-certificates.crt", &trusted)
    };
    let Some(envoy) = Envoy::start_edited(&[s.upstream()], edit).await else { return };
    let (admin, api) = (s.admin_token().await, Json::new(&envoy.url));
    let p = Proxy { s, envoy, api, admin };

    let (_, credential) = p.user("tia", &format!("https://localhost:{port}/api"), "proxied-backend-token-tia").await;
    let (status, body) = p.get("/feed", &credential).await;
    assert_eq!((status, body.as_str()), (200, "served over TLS"));

    // The same server by its address: the certificate does not name 127.0.0.1.
    let (_, credential) = p.user("ivo", &format!("https://127.0.0.1:{port}/api"), "proxied-backend-token-ivo").await;
    let (status, body) = p.get("/feed", &credential).await;
    assert_eq!(status, 502, "{body}");
}

/// A child process ended with the test, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
