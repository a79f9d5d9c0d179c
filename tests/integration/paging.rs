//! Keyset paging of ListUsers and ListAuditLogs through the real server: the pages asked by
//! `next_page_token` see every row that exists throughout exactly once, in order, while other
//! clients insert and delete rows between (and during) the pages; a token the listing never gave
//! is refused with INVALID_ARGUMENT (400 through Envoy) and changes nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{Duration, Utc};
use instachatico_auth::db::bulk_seed::{self, ScaleSpec};
use instachatico_auth::db::models::{audit, users};
use instachatico_auth::model::{AuditEntry, AuditQuery, NewUserRecord, Role, UserId};
use instachatico_auth::pb::audit_service_client::AuditServiceClient;
use instachatico_auth::pb::{self};
use tonic::Code;

use crate::common::{Envoy, Json, TestServer, authed, expect_code};

const SPEC: ScaleSpec = ScaleSpec { users: 120, audit_rows: 900, live_sessions: 40, ended_sessions: 40, days: 90 };

async fn seed(s: &TestServer) {
    let token = s.app().cipher().encrypt("backend-token");
    bulk_seed::seed(
        s.app().db(),
        &SPEC,
        "$2b$04$invalidinvalidinvalidinvalidinvalidinvalidinvalidinva",
        &token,
        Utc::now(),
    )
    .await
    .unwrap();
}

/// Inserts and deletes users and audit rows until `stop`; returns the ids it deleted.
fn churn(s: &TestServer, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(HashSet<i32>, HashSet<i64>)> {
    let db = s.app().db().clone();
    tokio::spawn(async move {
        let (mut gone_users, mut gone_rows) = (HashSet::new(), HashSet::new());
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let mut conn = db.get().await.unwrap();
            let now = Utc::now();
            let new = NewUserRecord {
                username: format!("churn{i}"),
                email: format!("churn{i}@example.com"),
                password_hash: "x".into(),
                role: Role::User,
                created_at: now,
            };
            users::insert(&mut conn, &new).await.unwrap();
            // A seeded user (low ids: some before the pages reach them, some after) goes.
            let victim = UserId(3 + (i * 7) % 110);
            if users::delete(&mut conn, victim).await.unwrap() {
                gone_users.insert(victim.get());
            }
            let entry = AuditEntry {
                id: 0,
                user_id: None,
                actor_id: None,
                action: "login_success".into(),
                ip_address: None,
                user_agent: None,
                metadata: serde_json::json!({}),
                created_at: now,
            };
            audit::insert(&mut conn, &entry).await.unwrap();
            // The oldest rows go, as the retention purge deletes them.
            let before = now - Duration::days(SPEC.days) + Duration::hours(i64::from(i) * 6);
            let older = AuditQuery { until: Some(before), ..Default::default() };
            let doomed = audit::query(&mut conn, &older, 1000, 0).await.unwrap().0;
            gone_rows.extend(doomed.iter().map(|e| e.id));
            audit::purge_before(&mut conn, before, None, 1000).await.unwrap();
            drop(conn);
            tokio::task::yield_now().await;
        }
        (gone_users, gone_rows)
    })
}

async fn keyset_pages_see_every_row_once_despite_concurrent_changes(s: TestServer) {
    seed(&s).await;
    let admin = s.admin_token().await;
    let mut users_api = s.users().await;
    let mut audit_api = AuditServiceClient::new(s.channel().await);
    let before_users: HashSet<i32> = {
        let mut conn = s.app().db().get().await.unwrap();
        users::list(&mut conn, 10_000, 0, None).await.unwrap().iter().map(|(u, _)| u.id.get()).collect()
    };
    let before_rows: HashSet<i64> = {
        let mut conn = s.app().db().get().await.unwrap();
        audit::query(&mut conn, &Default::default(), 10_000, 0).await.unwrap().0.iter().map(|e| e.id).collect()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(&s, Arc::clone(&stop));

    let (mut seen_users, mut token, mut first) = (Vec::new(), String::new(), true);
    loop {
        let request = pb::ListUsersRequest { limit: 7, offset: 0, page_token: token.clone(), include_total: true };
        let page = users_api.list_users(authed(&admin, request)).await.unwrap().into_inner();
        assert_eq!(page.total.is_some(), first, "only the first page counts");
        first = false;
        seen_users.extend(page.users.iter().map(|u| u.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        tokio::task::yield_now().await;
    }
    let (mut seen_rows, mut token) = (Vec::new(), String::new());
    loop {
        let request = pb::ListAuditLogsRequest { limit: 13, page_token: token.clone(), ..Default::default() };
        let page = audit_api.list_audit_logs(authed(&admin, request)).await.unwrap().into_inner();
        seen_rows.extend(page.entries.iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        tokio::task::yield_now().await;
    }
    // The same log listed by time (a range that holds every row): by (created_at, id).
    let since = prost_types::Timestamp { seconds: (Utc::now() - Duration::days(SPEC.days + 1)).timestamp(), nanos: 0 };
    let (mut seen_by_time, mut token) = (Vec::new(), String::new());
    loop {
        let request =
            pb::ListAuditLogsRequest { limit: 13, since: Some(since), page_token: token.clone(), ..Default::default() };
        let page = audit_api.list_audit_logs(authed(&admin, request)).await.unwrap().into_inner();
        seen_by_time.extend(page.entries.iter().map(|e| {
            let at = e.created_at.unwrap();
            (at.seconds, at.nanos, e.id)
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(page.next_page_token.starts_with('t'), "{}", page.next_page_token);
        token = page.next_page_token;
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    let (gone_users, gone_rows) = churner.await.unwrap();
    assert!(seen_by_time.is_sorted_by(|a, b| a > b), "by time, newest first, none twice");
    let seen: HashSet<i64> = seen_by_time.iter().map(|(_, _, id)| *id).collect();
    let throughout: HashSet<i64> = before_rows.difference(&gone_rows).copied().collect();
    assert!(throughout.is_subset(&seen), "missed rows by time: {:?}", throughout.difference(&seen).collect::<Vec<_>>());
    assert!(!gone_users.is_empty() && !gone_rows.is_empty(), "the churn deleted rows while the pages were read");

    assert!(seen_users.is_sorted_by(|a, b| a < b), "users ascending, none twice: {seen_users:?}");
    let seen: HashSet<i32> = seen_users.iter().copied().collect();
    let throughout: HashSet<i32> = before_users.difference(&gone_users).copied().collect();
    assert!(throughout.is_subset(&seen), "missed users: {:?}", throughout.difference(&seen).collect::<Vec<_>>());
    assert!(seen_rows.is_sorted_by(|a, b| a > b), "audit rows newest first, none twice");
    let seen: HashSet<i64> = seen_rows.iter().copied().collect();
    let throughout: HashSet<i64> = before_rows.difference(&gone_rows).copied().collect();
    assert!(throughout.is_subset(&seen), "missed rows: {:?}", throughout.difference(&seen).collect::<Vec<_>>());
}

/// Filtered pages, by keyset and by offset, are the filtered rows, the same as one big page. A
/// range's pages end at its start with older rows beyond it (the seeded log goes back 90 days),
/// in the statement or, for a range alone, after it.
async fn filtered_keyset_pages_are_the_filtered_rows(s: TestServer) {
    seed(&s).await;
    let admin = s.admin_token().await;
    let mut audit_api = AuditServiceClient::new(s.channel().await);
    let now = Utc::now();
    let since = prost_types::Timestamp { seconds: (now - Duration::days(20)).timestamp(), nanos: 0 };
    let until = prost_types::Timestamp { seconds: (now - Duration::days(15)).timestamp(), nanos: 0 };
    let filters = [
        pb::ListAuditLogsRequest { action: "login_failed".into(), ..Default::default() },
        pb::ListAuditLogsRequest { user_id: 5, ..Default::default() },
        pb::ListAuditLogsRequest { since: Some(since), until: Some(until), ..Default::default() },
        pb::ListAuditLogsRequest { since: Some(until), ..Default::default() },
        pb::ListAuditLogsRequest { action: "login_success".into(), since: Some(since), ..Default::default() },
    ];
    for filter in filters {
        let all = pb::ListAuditLogsRequest { limit: 200, include_total: true, ..filter.clone() };
        let all = audit_api.list_audit_logs(authed(&admin, all)).await.unwrap().into_inner();
        assert!(all.entries.len() < 200 && !all.entries.is_empty(), "{filter:?}");
        assert_eq!(all.total, Some(i32::try_from(all.entries.len()).unwrap()));
        let (mut paged, mut token) = (Vec::new(), String::new());
        loop {
            let request = pb::ListAuditLogsRequest { limit: 4, page_token: token.clone(), ..filter.clone() };
            let page = audit_api.list_audit_logs(authed(&admin, request)).await.unwrap().into_inner();
            paged.extend(page.entries.into_iter().map(|e| e.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let all: Vec<i64> = all.entries.iter().map(|e| e.id).collect();
        assert_eq!(paged, all, "{filter:?}");
        let mut by_offset = Vec::new();
        for offset in (0..).step_by(4) {
            let request = pb::ListAuditLogsRequest { limit: 4, offset, ..filter.clone() };
            let page = audit_api.list_audit_logs(authed(&admin, request)).await.unwrap().into_inner();
            assert_eq!(
                page.next_page_token.is_empty(),
                by_offset.len() + page.entries.len() == all.len(),
                "{filter:?}"
            );
            if page.entries.is_empty() {
                break;
            }
            by_offset.extend(page.entries.into_iter().map(|e| e.id));
        }
        assert_eq!(by_offset, all, "{filter:?} by offset");
    }
}

/// A token the listing never gave: INVALID_ARGUMENT naming page_token over gRPC, 400 with that
/// detail through Envoy, and nothing written (not even an audit row).
async fn bad_page_tokens_are_refused_and_change_nothing(s: TestServer) {
    let admin = s.admin_token().await;
    let mut users_api = s.users().await;
    let mut audit_api = AuditServiceClient::new(s.channel().await);
    let count = async |audit_api: &mut AuditServiceClient<_>| {
        let request = pb::ListAuditLogsRequest { limit: 1, include_total: true, ..Default::default() };
        audit_api.list_audit_logs(authed(&admin, request)).await.unwrap().into_inner().total
    };
    let rows_before = count(&mut audit_api).await;
    for token in ["x", "a1", "u", "u01", "u-1", "u1 ", "u99999999999999999999", "dTE"] {
        let request = pb::ListUsersRequest { limit: 5, offset: 0, page_token: token.into(), include_total: false };
        let message = expect_code(users_api.list_users(authed(&admin, request)).await, Code::InvalidArgument);
        assert!(message.starts_with("page_token:"), "{token}: {message}");
        let other = if token == "a1" { "u1".to_owned() } else { token.replace('u', "a") };
        let request = pb::ListAuditLogsRequest { page_token: other.clone(), ..Default::default() };
        let message = expect_code(audit_api.list_audit_logs(authed(&admin, request)).await, Code::InvalidArgument);
        assert!(message.starts_with("page_token:"), "{other}: {message}");
    }
    // A listing by time (a time bound) takes only its own tokens, and the other way round.
    let since = prost_types::Timestamp { seconds: 0, nanos: 0 };
    for (token, since) in [("a1", Some(since)), ("t1.000000000_1", None), ("t1_1", Some(since))] {
        let request = pb::ListAuditLogsRequest { page_token: token.into(), since, ..Default::default() };
        let message = expect_code(audit_api.list_audit_logs(authed(&admin, request)).await, Code::InvalidArgument);
        assert!(message.starts_with("page_token:"), "{token}: {message}");
    }
    assert_eq!(count(&mut audit_api).await, rows_before, "a refused listing wrote nothing");

    let Some(envoy) = Envoy::start(&[s.upstream()]).await else {
        return;
    };
    let api = Json::new(&envoy.url);
    let reply = api.get("/api/v1/users?limit=1&page_token=a1", Some(&admin)).await;
    assert!(reply.detail(400).starts_with("page_token:"), "{reply:?}");
    let reply = api.get("/api/v1/audit-logs?page_token=zz", Some(&admin)).await;
    assert!(reply.detail(400).starts_with("page_token:"), "{reply:?}");
    // A good token through Envoy: the page past it, and the next one's token.
    let first = api.get("/api/v1/users?limit=1", Some(&admin)).await;
    assert_eq!((first.status, first.body["next_page_token"].as_str()), (200, Some("")), "one user: {first:?}");
    let past = api.get("/api/v1/users?limit=1&page_token=u0", Some(&admin)).await;
    assert_eq!(past.body["users"][0]["id"], first.body["users"][0]["id"]);
    assert_eq!(past.body.get("total"), None, "pages asked by token do not count");
    let counted = api.get("/api/v1/users?limit=1&page_token=u0&include_total=true", Some(&admin)).await;
    assert_eq!((counted.status, counted.body.get("total")), (200, None), "not even when asked: {counted:?}");
    assert_eq!(count(&mut audit_api).await, rows_before);
}

/// A well-formed token of a time range that points outside it (a client can write one): one
/// after the range's end lists the range from its end, one before its start lists nothing.
async fn tokens_outside_a_range_stay_within_it(s: TestServer) {
    seed(&s).await;
    let admin = s.admin_token().await;
    let mut audit_api = AuditServiceClient::new(s.channel().await);
    let now = Utc::now();
    let at = |t: chrono::DateTime<Utc>| prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 };
    let range = pb::ListAuditLogsRequest {
        since: Some(at(now - Duration::days(20))),
        until: Some(at(now - Duration::days(15))),
        limit: 200,
        ..Default::default()
    };
    let mut list = async |token: String| {
        let request = pb::ListAuditLogsRequest { page_token: token, ..range.clone() };
        let page = audit_api.list_audit_logs(authed(&admin, request)).await.unwrap().into_inner();
        page.entries.into_iter().map(|e| e.id).collect::<Vec<_>>()
    };
    let whole = list(String::new()).await;
    assert!(!whole.is_empty());
    let token = |t: chrono::DateTime<Utc>| format!("t{}.000000000_999999", t.timestamp());
    assert_eq!(list(token(now - Duration::days(10))).await, whole, "a token after the range's end");
    assert!(list(token(now - Duration::days(25))).await.is_empty(), "a token before the range's start");
}

crate::on_both_backends!(
    keyset_pages_see_every_row_once_despite_concurrent_changes,
    filtered_keyset_pages_are_the_filtered_rows,
    tokens_outside_a_range_stay_within_it,
    bad_page_tokens_are_refused_and_change_nothing,
);
