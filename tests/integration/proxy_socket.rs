//! Only the sidecar chooses client addresses (issue 11, point 10): Envoy reaches the service
//! over a Unix socket only it can open, and that socket alone is believed by default. A local
//! process on the TCP port that names another address in X-Forwarded-For is recorded as itself.

use instachatico_auth::db::models::audit;
use instachatico_auth::model::UserId;
use instachatico_auth::pb;
use serde_json::json;
use tonic::{Code, Request};

use crate::common::{Envoy, Json, TestServer, USER_PASSWORD, expect_code};

async fn only_the_sidecar_chooses_client_addresses(s: TestServer) {
    let s = s.restart(&[("login-throttle-threshold", "3"), ("login-throttle-cooldown-seconds", "60")]).await;
    let admin = s.admin_token().await;
    let vera = s.create_user(&admin, "vera", None).await;
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };

    // A local process on the TCP port claims, three times, to be 127.0.8.9.
    let mut auth = s.auth().await;
    for _ in 0..3 {
        let mut r = Request::new(pb::LoginRequest { username: "vera".into(), password: "Wrong_password1!".into() });
        r.metadata_mut().insert("x-forwarded-for", "127.0.8.9".parse().unwrap());
        expect_code(auth.login(r).await, Code::Unauthenticated);
    }
    // The real 127.0.8.9 signs in through Envoy: not locked out by what the process claimed.
    let client =
        reqwest::Client::builder().local_address("127.0.8.9".parse::<std::net::IpAddr>().ok()).build().unwrap();
    let api = Json { base: envoy.url.clone(), client };
    let reply = api.post("/api/v1/auth/login", None, json!({"username": "vera", "password": USER_PASSWORD})).await;
    assert_eq!(reply.status, 200, "{reply:?}");

    let mut conn = s.app().db().get().await.unwrap();
    let rows = audit::list_for_user(&mut conn, Some(UserId(vera.id)), 20).await.unwrap();
    let from = |action: &str| -> Vec<String> {
        rows.iter().filter(|r| r.action == action).filter_map(|r| r.ip_address.clone()).collect()
    };
    assert_eq!(from("login_failed"), ["127.0.0.1"; 3], "the process is recorded as itself: {rows:?}");
    assert_eq!(from("login_success"), ["127.0.8.9"], "Envoy's peer, believed on the socket: {rows:?}");

    use std::os::unix::fs::PermissionsExt;
    let socket = s.running.as_ref().unwrap().proxy_socket.clone().unwrap();
    // The backend proxy's decisions have a socket of their own beside it, as private.
    let decisions = instachatico_auth::config::authz_socket_beside(&socket);
    for socket in [&socket, &decisions] {
        assert_eq!(std::fs::metadata(socket).unwrap().permissions().mode() & 0o777, 0o600, "{socket:?}");
    }
    drop(envoy);
    s.stop().await;
    assert!(!socket.exists() && !decisions.exists(), "the sockets are removed at shutdown");
}

crate::on_both_backends!(only_the_sidecar_chooses_client_addresses);
