//! Concurrent changes through the real server and a real Envoy (JSON), on both databases: each
//! race is run many rounds with the requests really in flight together, and the rules that hold
//! one request at a time must hold under every interleaving (issue 10).

use std::time::Duration;

use instachatico_auth::db::models::{audit, users};
use instachatico_auth::model::{AuditQuery, UserId};
use serde_json::json;

use crate::common::{ADMIN_PASSWORD, ADMIN_USERNAME, Envoy, Json, Reply, TestServer, USER_PASSWORD};

const ROUNDS: usize = 12;

async fn envoy(s: &TestServer) -> Option<(Envoy, Json)> {
    let envoy = Envoy::start(&[s.upstream()]).await?;
    let json = Json::new(&envoy.url);
    Some((envoy, json))
}

/// Waits up to `max_ms` (random), so either side of a race may go first.
async fn jitter(max_ms: u64) {
    tokio::time::sleep(Duration::from_millis(rand::random_range(0..=max_ms))).await;
}

/// No race may answer 500; a 503 must say when to retry.
fn never_internal(reply: &Reply) {
    assert_ne!(reply.status, 500, "a race answered INTERNAL: {reply:?}");
    if reply.status == 503 {
        assert!(reply.header("retry-after").is_some(), "503 without Retry-After: {reply:?}");
    }
}

async fn create(api: &Json, admin: &str, username: &str, role: &str) -> i64 {
    let reply = api
        .post(
            "/api/v1/users",
            Some(admin),
            json!({"username": username, "email": format!("{username}@example.com"),
                   "password": USER_PASSWORD, "role": role}),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    reply.body["id"].as_i64().unwrap()
}

async fn login_status(api: &Json, username: &str, password: &str) -> u16 {
    api.post("/api/v1/auth/login", None, json!({"username": username, "password": password})).await.status
}

async fn active_admins(s: &TestServer) -> i64 {
    let mut conn = s.app().db().get().await.unwrap();
    users::count_active_admins(&mut conn).await.unwrap()
}

/// The user's own password change and an admin's reset, sent together: the reset wins every
/// time. A change that loses the race fails UNAUTHENTICATED (its session was ended) and changes
/// nothing; one that got in first is overwritten by the reset.
async fn a_password_change_never_undoes_a_reset(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else { return };
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let id = create(&api, &admin, "rita", "user").await;
    let mut current = USER_PASSWORD.to_owned();
    let (mut won_first, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        let token = api.login("rita", &current).await;
        let mine = format!("Mine_{round}_password1!");
        let reset = format!("Reset_{round}_password1!");
        let (change, reset_reply) = tokio::join!(
            async {
                jitter(30).await;
                api.put(
                    "/api/v1/users/me/password",
                    Some(&token),
                    json!({"current_password": current, "new_password": mine}),
                )
                .await
            },
            async {
                // The change hashes twice (check, new hash), the reset once: a wider jitter here
                // lets either one commit first.
                jitter(200).await;
                api.post(&format!("/api/v1/users/{id}/reset-password"), Some(&admin), json!({"new_password": reset}))
                    .await
            }
        );
        never_internal(&change);
        assert_eq!(reset_reply.status, 200, "round {round}: {reset_reply:?}");
        match change.status {
            200 => won_first += 1,
            401 => refused += 1,
            _ => panic!("round {round}: the change answered {change:?}"),
        }
        assert_eq!(
            login_status(&api, "rita", &mine).await,
            401,
            "round {round}: the user's password survived the reset"
        );
        assert_eq!(
            login_status(&api, "rita", &reset).await,
            200,
            "round {round}: the reset's password does not sign in"
        );
        assert_eq!(
            api.get("/api/v1/users/me", Some(&token)).await.status,
            401,
            "round {round}: session outlived reset"
        );
        current = reset;
    }
    eprintln!("password change vs reset: change first {won_first}, refused {refused} of {ROUNDS}");
}

/// A login with the old password racing a reset never leaves a live session behind: the
/// password it checked must still be the account's when its session is written.
async fn a_login_racing_a_reset_leaves_no_live_session(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else { return };
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let id = create(&api, &admin, "lena", "user").await;
    let mut current = USER_PASSWORD.to_owned();
    for round in 0..ROUNDS {
        let reset = format!("Reset_{round}_password1!");
        let (login, reset_reply) = tokio::join!(
            async {
                jitter(30).await;
                api.post("/api/v1/auth/login", None, json!({"username": "lena", "password": current})).await
            },
            async {
                jitter(30).await;
                api.post(&format!("/api/v1/users/{id}/reset-password"), Some(&admin), json!({"new_password": reset}))
                    .await
            }
        );
        never_internal(&login);
        assert_eq!(reset_reply.status, 200, "round {round}: {reset_reply:?}");
        if login.status == 200 {
            let token = login.body["access_token"].as_str().unwrap();
            assert_eq!(
                api.get("/api/v1/users/me", Some(token)).await.status,
                401,
                "round {round}: a login with the old password kept a session through the reset"
            );
        } else {
            assert_eq!(login.status, 401, "round {round}: {login:?}");
        }
        current = reset;
    }
}

/// A user's backend change racing an admin's deactivation (and the user's own session
/// revocation): the change either committed before the deactivation (its audit row comes first)
/// or fails UNAUTHENTICATED and leaves the backend as it was.
async fn a_backend_change_racing_deactivation_is_ordered(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else { return };
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let id = create(&api, &admin, "bodo", "user").await;
    for round in 0..ROUNDS {
        let token = api.login("bodo", USER_PASSWORD).await;
        let url = format!("http://round{round}.example/api/v1");
        let (change, deactivate) = tokio::join!(
            async {
                jitter(8).await;
                api.put("/api/v1/users/me/backend", Some(&token), json!({"api_base_url": url, "bearer_token": "t"}))
                    .await
            },
            async {
                jitter(8).await;
                api.call(
                    reqwest::Method::PATCH,
                    &format!("/api/v1/users/{id}"),
                    Some(&admin),
                    Some(json!({"is_active": false})),
                )
                .await
            }
        );
        never_internal(&change);
        assert_eq!(deactivate.status, 200, "{deactivate:?}");
        let user = api.get(&format!("/api/v1/users/{id}"), Some(&admin)).await;
        let stored = user.body["backend"]["api_base_url"].as_str().unwrap_or_default().to_owned();
        let mut conn = s.app().db().get().await.unwrap();
        let filter = AuditQuery { user_id: Some(UserId(i32::try_from(id).unwrap())), ..Default::default() };
        let (rows, _) = audit::query(&mut conn, &filter, 2, 0).await.unwrap();
        let newest: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
        match change.status {
            // Committed first: the deactivation is the newest event, the backend is the new one.
            200 => {
                assert_eq!(stored, url, "round {round}");
                assert_eq!(newest, ["user_update", "backend_update"], "round {round}");
            }
            401 => {
                assert_ne!(stored, url, "round {round}: a refused change was applied");
                assert_eq!(newest[0], "user_update", "round {round}");
            }
            _ => panic!("round {round}: {change:?}"),
        }
        let reactivate = api
            .call(
                reqwest::Method::PATCH,
                &format!("/api/v1/users/{id}"),
                Some(&admin),
                Some(json!({"is_active": true})),
            )
            .await;
        assert_eq!(reactivate.status, 200);
    }
}

/// One session ended three ways at once (its own logout, the owner's other session revoking it,
/// an admin ending all of the user's sessions) while the admin also clears the user's
/// throttling: every answer is a clear one, the admin's always succeed, and no session survives.
async fn session_revocations_racing_each_other(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else { return };
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let id = create(&api, &admin, "sami", "user").await;
    for round in 0..ROUNDS {
        let (a, b) = (api.login("sami", USER_PASSWORD).await, api.login("sami", USER_PASSWORD).await);
        let listed = api.get("/api/v1/users/me/sessions", Some(&b)).await;
        let a_sid = listed.body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["current"] == false)
            .map(|x| x["id"].as_str().unwrap().to_owned())
            .unwrap();
        let (logout, revoke, revoke_all, unlock) = tokio::join!(
            async {
                jitter(5).await;
                api.post("/api/v1/auth/logout", Some(&a), json!({})).await
            },
            async {
                jitter(5).await;
                api.call(reqwest::Method::DELETE, &format!("/api/v1/users/me/sessions/{a_sid}"), Some(&b), None).await
            },
            async {
                jitter(5).await;
                api.call(reqwest::Method::DELETE, &format!("/api/v1/users/{id}/sessions"), Some(&admin), None).await
            },
            async {
                jitter(5).await;
                api.post(&format!("/api/v1/users/{id}/unlock"), Some(&admin), json!({})).await
            }
        );
        for reply in [&logout, &revoke, &revoke_all, &unlock] {
            never_internal(reply);
        }
        assert_eq!((revoke_all.status, unlock.status), (200, 200), "round {round}: {revoke_all:?} / {unlock:?}");
        assert!(matches!(logout.status, 200 | 401), "round {round}: {logout:?}");
        assert!(matches!(revoke.status, 200 | 401 | 404), "round {round}: {revoke:?}");
        for token in [&a, &b] {
            assert_eq!(api.get("/api/v1/users/me", Some(token)).await.status, 401, "round {round}: a session survived");
        }
    }
}

/// Admins creating the same account at once: one 201, the others 409, never a 500.
async fn concurrent_creates_of_one_name(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else { return };
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    for round in 0..ROUNDS / 2 {
        let calls = (0..4).map(|i| {
            let (api, admin) = (api.clone(), admin.clone());
            // Same username in two cases, same email: each collides with the others.
            let name = if i % 2 == 0 { format!("twin{round}") } else { format!("TWIN{round}") };
            let body =
                json!({"username": name, "email": format!("twin{round}@example.com"), "password": USER_PASSWORD});
            async move { api.post("/api/v1/users", Some(&admin), body).await }
        });
        let replies = futures_util::future::join_all(calls).await;
        for reply in &replies {
            never_internal(reply);
        }
        let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "round {round}: {statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 3, "round {round}: {statuses:?}");
    }
}

/// The last two active admins demote or deactivate each other at the same moment: one of them
/// wins, the other is refused (it is no longer an admin, or its session ended), and an active
/// admin always remains.
async fn the_last_two_admins_cannot_remove_each_other(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else { return };
    let root = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let b_id = create(&api, &root, "bea", "admin").await;
    let me = api.get("/api/v1/users/me", Some(&root)).await;
    let a_id = me.body["id"].as_i64().unwrap();
    let moves = [json!({"is_active": false}), json!({"role": "user"})];
    for round in 0..ROUNDS {
        let a = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
        let b = api.login("bea", USER_PASSWORD).await;
        let (a_move, b_move) = (&moves[round % 2], &moves[(round / 2) % 2]);
        let (ra, rb) = tokio::join!(
            async {
                jitter(10).await;
                api.call(reqwest::Method::PATCH, &format!("/api/v1/users/{b_id}"), Some(&a), Some(a_move.clone())).await
            },
            async {
                jitter(10).await;
                api.call(reqwest::Method::PATCH, &format!("/api/v1/users/{a_id}"), Some(&b), Some(b_move.clone())).await
            }
        );
        never_internal(&ra);
        never_internal(&rb);
        assert!(active_admins(&s).await >= 1, "round {round}: no active admin left ({ra:?} / {rb:?})");
        let winners = [&ra, &rb].iter().filter(|r| r.status == 200).count();
        assert_eq!(winners, 1, "round {round}: exactly one side wins: {ra:?} / {rb:?}");
        for loser in [&ra, &rb].into_iter().filter(|r| r.status != 200) {
            assert!(matches!(loser.status, 400 | 401 | 403), "round {round}: {loser:?}");
        }
        // The winner restores the other for the next round.
        let (winner, other) = if ra.status == 200 { (&a, b_id) } else { (&b, a_id) };
        let restore = api
            .call(
                reqwest::Method::PATCH,
                &format!("/api/v1/users/{other}"),
                Some(winner),
                Some(json!({"is_active": true, "role": "admin"})),
            )
            .await;
        assert_eq!(restore.status, 200, "{restore:?}");
    }
    assert_eq!(active_admins(&s).await, 2);
}

/// Two admins delete each other at once: one is deleted, the other is refused with a clear
/// 4xx (never a deadlock or a foreign-key error as 500).
async fn two_admins_deleting_each_other_get_clear_answers(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else { return };
    let root = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    for round in 0..ROUNDS {
        let (x, y) = (format!("xavier{round}"), format!("yara{round}"));
        let x_id = create(&api, &root, &x, "admin").await;
        let y_id = create(&api, &root, &y, "admin").await;
        let (xt, yt) = (api.login(&x, USER_PASSWORD).await, api.login(&y, USER_PASSWORD).await);
        let (rx, ry) = tokio::join!(
            async {
                jitter(5).await;
                api.call(reqwest::Method::DELETE, &format!("/api/v1/users/{y_id}"), Some(&xt), None).await
            },
            async {
                jitter(5).await;
                api.call(reqwest::Method::DELETE, &format!("/api/v1/users/{x_id}"), Some(&yt), None).await
            }
        );
        never_internal(&rx);
        never_internal(&ry);
        let winners = [&rx, &ry].iter().filter(|r| r.status == 200).count();
        assert_eq!(winners, 1, "round {round}: exactly one deletion: {rx:?} / {ry:?}");
        for loser in [&rx, &ry].into_iter().filter(|r| r.status != 200) {
            assert!(matches!(loser.status, 401 | 403 | 404), "round {round}: {loser:?}");
        }
    }
    assert!(active_admins(&s).await >= 1);
}

/// Eight admin edits at once all succeed (on SQLite too: writers wait their turn).
async fn concurrent_admin_updates_all_succeed(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else { return };
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(create(&api, &admin, &format!("upd{i}"), "user").await);
    }
    for round in 0..ROUNDS {
        let calls = ids.iter().enumerate().map(|(i, id)| {
            let (api, admin) = (api.clone(), admin.clone());
            // Half edit their own user, half pile onto the first one.
            let target = if i % 2 == 0 { *id } else { ids[0] };
            let body = json!({"email": format!("u{i}r{round}@example.com"), "is_active": true});
            async move {
                api.call(reqwest::Method::PATCH, &format!("/api/v1/users/{target}"), Some(&admin), Some(body)).await
            }
        });
        for reply in futures_util::future::join_all(calls).await {
            assert_eq!(reply.status, 200, "round {round}: {reply:?}");
        }
    }
}

/// Ten concurrent refreshes of one token all succeed and every token they return works; a
/// client whose refresh reply was lost retries with the token it still has.
async fn concurrent_refreshes_all_succeed(s: TestServer) {
    let Some((_envoy, api)) = envoy(&s).await else { return };
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    create(&api, &admin, "rafa", "user").await;
    for round in 0..ROUNDS / 2 {
        let token = api.login("rafa", USER_PASSWORD).await;
        let calls = (0..10).map(|_| {
            let (api, token) = (api.clone(), token.clone());
            async move { api.post("/api/v1/auth/refresh", Some(&token), json!({})).await }
        });
        let replies = futures_util::future::join_all(calls).await;
        for reply in &replies {
            assert_eq!(reply.status, 200, "round {round}: {reply:?}");
            let fresh = reply.body["access_token"].as_str().unwrap();
            assert_eq!(api.get("/api/v1/users/me", Some(fresh)).await.status, 200, "round {round}");
        }
        // The reply was lost: the client still holds the token it sent, and may retry.
        let retry = api.post("/api/v1/auth/refresh", Some(&token), json!({})).await;
        assert_eq!(retry.status, 200, "round {round}: {retry:?}");
        assert_eq!(api.get("/api/v1/users/me", Some(&token)).await.status, 200);
    }
}

crate::on_both_backends!(
    a_password_change_never_undoes_a_reset,
    a_login_racing_a_reset_leaves_no_live_session,
    a_backend_change_racing_deactivation_is_ordered,
    the_last_two_admins_cannot_remove_each_other,
    two_admins_deleting_each_other_get_clear_answers,
    concurrent_admin_updates_all_succeed,
    concurrent_refreshes_all_succeed,
    session_revocations_racing_each_other,
    concurrent_creates_of_one_name,
);
