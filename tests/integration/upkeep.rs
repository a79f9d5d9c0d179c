//! Housekeeping at size: the purges delete exactly what has outlived its use, in batches, and
//! AUDIT_RETENTION_DAYS drops old audit entries (and nothing when unset). Rows are seeded
//! through the crate's storage code and the clock is a parameter: the tests live a century
//! ahead, so the server's own housekeeping round (at start, on the real clock) never sees them.

use chrono::{DateTime, Duration, Utc};
use instachatico_auth::db::DbConn;
use instachatico_auth::db::models::{audit, mfa, passkeys, rate_limits, sessions, throttles, users};
use instachatico_auth::domain::maintenance::{Pacing, Purged};
use instachatico_auth::model::{
    AuditEntry, AuditQuery, MfaChallenge, NewUserRecord, PasskeyCeremony, Role, Session, SessionId, UserId,
};

use crate::common::{Backend, Options, TestServer};

/// The tests' "now".
fn now() -> DateTime<Utc> {
    Utc::now() + Duration::days(36_500)
}

async fn user(conn: &mut DbConn, name: &str, now: DateTime<Utc>) -> UserId {
    let record = NewUserRecord {
        username: name.to_owned(),
        email: format!("{name}@example.com"),
        password_hash: "$2b$10$notarealhashnotarealhashnotarealhashnotarealhashnotar".into(),
        role: Role::User,
        created_at: now,
    };
    users::insert(conn, &record).await.unwrap().id
}

/// Stores `n` sessions of `user` created at `created`, ending at `expires` (or revoked at
/// `revoked`), in one transaction; returns their ids.
async fn sessions_of(
    conn: &mut DbConn,
    user: UserId,
    n: usize,
    created: DateTime<Utc>,
    expires: DateTime<Utc>,
    revoked: Option<DateTime<Utc>>,
) -> Vec<SessionId> {
    conn.transaction(async |c: &mut DbConn| {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let session = Session {
                id: SessionId::random(),
                user_id: user,
                created_at: created,
                refreshed_at: created,
                expires_at: expires,
                revoked_at: revoked,
                ip_address: None,
                user_agent: Some("upkeep test".into()),
                proxy_secret_sha256: None,
            };
            sessions::insert(c, &session).await?;
            ids.push(session.id);
        }
        Ok(ids)
    })
    .await
    .unwrap()
}

async fn audit_entries(conn: &mut DbConn, n: usize, at: DateTime<Utc>) {
    conn.transaction(async |c: &mut DbConn| {
        for i in 0..n {
            let entry = AuditEntry {
                id: 0,
                user_id: None,
                actor_id: None,
                action: "upkeep_test".into(),
                ip_address: Some("192.0.2.1".into()),
                user_agent: None,
                metadata: serde_json::json!({ "i": i }),
                created_at: at,
            };
            audit::insert(c, &entry).await?;
        }
        Ok(())
    })
    .await
    .unwrap();
}

async fn audit_count(conn: &mut DbConn) -> i64 {
    audit::query(conn, &AuditQuery::default(), 1, 0).await.unwrap().1
}

async fn live(conn: &mut DbConn, ids: &[SessionId], now: DateTime<Utc>) -> usize {
    let mut found = 0;
    for id in ids {
        if sessions::find_live(conn, id, now).await.unwrap().is_some() {
            found += 1;
        }
    }
    found
}

/// Ended sessions go after a week, drained rate-limit keys at once, idle throttling rows after a
/// day unless still locked; everything live stays. Seven rows per batch: every purge takes
/// several.
async fn purge_deletes_exactly_what_has_ended(s: TestServer) {
    let now = now();
    let mut conn = s.app().db().get().await.unwrap();
    let alice = user(&mut conn, "alice", now).await;
    let month_ago = now - Duration::days(30);
    let expired_long_ago = sessions_of(&mut conn, alice, 23, month_ago, now - Duration::days(8), None).await;
    let revoked_long_ago =
        sessions_of(&mut conn, alice, 12, month_ago, now + Duration::days(1), Some(now - Duration::days(8))).await;
    let expired_lately = sessions_of(&mut conn, alice, 5, month_ago, now - Duration::days(2), None).await;
    let revoked_lately =
        sessions_of(&mut conn, alice, 4, now, now + Duration::days(1), Some(now - Duration::hours(1))).await;
    let alive = sessions_of(&mut conn, alice, 9, now, now + Duration::days(1), None).await;
    assert_eq!(expired_long_ago.len() + revoked_long_ago.len() + expired_lately.len() + revoked_lately.len(), 44);

    // Rate limits: 20 keys drained an hour ago, 3 still holding state a minute ahead.
    let (us, minute) = (now.timestamp_micros(), 60_000_000);
    for i in 0..20 {
        assert_eq!(
            rate_limits::acquire(&mut conn, &format!("old:{i}"), us - 3_600_000_000, minute, minute).await.unwrap(),
            None
        );
    }
    for i in 0..3 {
        assert_eq!(rate_limits::acquire(&mut conn, &format!("busy:{i}"), us, minute, minute).await.unwrap(), None);
    }
    // Throttles: 15 idle for two days, 2 idle as long but locked for another hour, 4 fresh.
    let two_days_ago = now - Duration::days(2);
    for i in 0..15 {
        throttles::record_failure(&mut conn, &format!("idle:{i}"), "192.0.2.1", two_days_ago).await.unwrap();
    }
    for i in 0..2 {
        let subject = format!("locked:{i}");
        throttles::record_failure(&mut conn, &subject, "192.0.2.1", two_days_ago).await.unwrap();
        throttles::lock(&mut conn, &subject, "192.0.2.1", now + Duration::hours(1), two_days_ago).await.unwrap();
    }
    for i in 0..4 {
        throttles::record_failure(&mut conn, &format!("fresh:{i}"), "192.0.2.1", now).await.unwrap();
    }
    audit_entries(&mut conn, 10, now - Duration::days(3650)).await;
    let audit_before = audit_count(&mut conn).await;

    let pacing = s.app().purge_pacing().with_batch(7);
    let purged = s.app().purge(now, pacing).await.unwrap();
    assert_eq!(purged, Purged { sessions: 35, rate_limits: 20, throttles: 15, audit: 0, ..Purged::default() });
    assert_eq!(live(&mut conn, &alive, now).await, alive.len(), "live sessions stay");
    assert_eq!(audit_count(&mut conn).await, audit_before, "no AUDIT_RETENTION_DAYS: every audit entry stays");
    for i in 0..2 {
        let until = throttles::locked_until(&mut conn, &format!("locked:{i}"), "192.0.2.1", now).await.unwrap();
        assert!(until.is_some(), "a running lock stays");
    }
    // The keys still holding state were kept: with no burst allowed, the next request waits.
    assert!(rate_limits::acquire(&mut conn, "busy:0", us, minute, 0).await.unwrap().is_some());

    // Nothing more is due now; what was kept goes once it is due.
    assert_eq!(s.app().purge(now, pacing).await.unwrap(), Purged::default());
    let later = s.app().purge(now + Duration::days(9), pacing).await.unwrap();
    assert_eq!(later, Purged { sessions: 5 + 4 + 9, rate_limits: 3, throttles: 2 + 4, audit: 0, ..Purged::default() });
    assert_eq!(live(&mut conn, &alive, now).await, 0);
}

/// More rows than one batch: the default housekeeping round removes them all.
async fn housekeeping_purges_beyond_one_batch(s: TestServer) {
    let now = now();
    let mut conn = s.app().db().get().await.unwrap();
    let bob = user(&mut conn, "bob", now).await;
    let past = now - Duration::days(30);
    let batch = s.app().purge_pacing().batch;
    let due = usize::try_from(2 * batch).unwrap() + 17;
    sessions_of(&mut conn, bob, due, past, now - Duration::days(8), None).await;
    let alive = sessions_of(&mut conn, bob, 3, now, now + Duration::days(1), None).await;

    let purged = s.app().housekeeping(now).await.unwrap();
    assert_eq!(purged.sessions, due, "three batches, the last one short");
    assert_eq!(live(&mut conn, &alive, now).await, 3);
    assert_eq!(s.app().housekeeping(now).await.unwrap().sessions, 0);
}

/// mfa_tokens go once ended or expired, passkey ceremonies once expired; live ones stay.
async fn purge_ends_mfa_tokens_and_passkey_ceremonies(s: TestServer) {
    let now = now();
    let mut conn = s.app().db().get().await.unwrap();
    let carol = user(&mut conn, "carol", now).await;
    let challenge = |n: usize, expires: DateTime<Utc>| MfaChallenge {
        token_sha256: format!("{n:064x}"),
        user_id: carol,
        ip_address: "192.0.2.1".into(),
        password_sha256: "0".repeat(64),
        enrolment: false,
        failures: 0,
        created_at: now - Duration::hours(1),
        expires_at: expires,
        ended_at: None,
    };
    for n in 0..9 {
        mfa::insert_challenge(&mut conn, &challenge(n, now - Duration::minutes(1))).await.unwrap();
    }
    for n in 9..16 {
        mfa::insert_challenge(&mut conn, &challenge(n, now + Duration::minutes(4))).await.unwrap();
    }
    // Four of the live ones were used.
    for n in 9..13 {
        assert!(mfa::end_challenge(&mut conn, &format!("{n:064x}"), now).await.unwrap());
    }
    let ceremony = |n: usize, expires: DateTime<Utc>| PasskeyCeremony {
        token_sha256: format!("{n:064x}"),
        purpose: "passwordless".into(),
        user_id: None,
        mfa_token_sha256: None,
        ip_address: "192.0.2.1".into(),
        state_json: "{}".into(),
        created_at: now - Duration::minutes(10),
        expires_at: expires,
    };
    for n in 0..11 {
        passkeys::insert_ceremony(&mut conn, &ceremony(n, now - Duration::seconds(1))).await.unwrap();
    }
    for n in 11..14 {
        passkeys::insert_ceremony(&mut conn, &ceremony(n, now + Duration::minutes(3))).await.unwrap();
    }

    let pacing = s.app().purge_pacing().with_batch(4);
    let purged = s.app().purge(now, pacing).await.unwrap();
    assert_eq!((purged.mfa_challenges, purged.passkey_ceremonies), (9 + 4, 11));
    for n in 13..16 {
        assert!(mfa::find_challenge(&mut conn, &format!("{n:064x}")).await.unwrap().is_some(), "live token {n} stays");
    }
    for n in 11..14 {
        assert!(passkeys::find_ceremony(&mut conn, &format!("{n:064x}"), now).await.unwrap().is_some());
    }
    let later = s.app().purge(now + Duration::minutes(5), pacing).await.unwrap();
    assert_eq!((later.mfa_challenges, later.passkey_ceremonies), (3, 3));
}

crate::on_both_backends!(
    purge_deletes_exactly_what_has_ended,
    housekeeping_purges_beyond_one_batch,
    purge_ends_mfa_tokens_and_passkey_ceremonies,
);

/// AUDIT_RETENTION_DAYS=30: entries older than 30 days go, in batches; newer ones stay.
async fn audit_retention_drops_old_entries(backend: Backend) {
    let options = Options::default().arg("audit-retention-days", "30");
    let Some(s) = TestServer::start_with(backend, options).await else { return };
    let now = now();
    let mut conn = s.app().db().get().await.unwrap();
    let written_at_start = audit_count(&mut conn).await;
    audit_entries(&mut conn, 40, now - Duration::days(365)).await;
    audit_entries(&mut conn, 11, now - Duration::days(31)).await;
    audit_entries(&mut conn, 6, now - Duration::days(29)).await;
    audit_entries(&mut conn, 5, now).await;

    // The server's own entries (at start, on the real clock) are a century old by now.
    let purged = s.app().purge(now, s.app().purge_pacing().with_batch(8)).await.unwrap();
    assert_eq!(purged.audit, 40 + 11 + usize::try_from(written_at_start).unwrap());
    assert_eq!(audit_count(&mut conn).await, 6 + 5);
    let old = AuditQuery { until: Some(now - Duration::days(30)), ..AuditQuery::default() };
    assert_eq!(audit::query(&mut conn, &old, 1, 0).await.unwrap().1, 0, "nothing older than 30 days");
    assert_eq!(s.app().housekeeping(now).await.unwrap().audit, 0);
    assert_eq!(s.app().housekeeping(now + Duration::days(2)).await.unwrap().audit, 6);
}

/// PURGE_BATCH_ROWS and PURGE_PAUSE_FACTOR replace the database's pacing; a round still
/// removes a backlog of many batches.
async fn purge_pacing_follows_its_settings(backend: Backend) {
    let options = Options::default().arg("purge-batch-rows", "7").arg("purge-pause-factor", "0");
    let Some(s) = TestServer::start_with(backend, options).await else { return };
    assert_eq!(s.app().purge_pacing(), Pacing { batch: 7, pause_factor: 0 });
    let now = now();
    let mut conn = s.app().db().get().await.unwrap();
    let bob = user(&mut conn, "bob", now).await;
    sessions_of(&mut conn, bob, 7 * 5 + 3, now - Duration::days(30), now - Duration::days(8), None).await;
    let alive = sessions_of(&mut conn, bob, 2, now, now + Duration::days(1), None).await;
    assert_eq!(s.app().housekeeping(now).await.unwrap().sessions, 7 * 5 + 3, "six batches of at most 7");
    assert_eq!(live(&mut conn, &alive, now).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_pacing_follows_its_settings_sqlite() {
    purge_pacing_follows_its_settings(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_pacing_follows_its_settings_postgres() {
    purge_pacing_follows_its_settings(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_drops_old_entries_sqlite() {
    audit_retention_drops_old_entries(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_drops_old_entries_postgres() {
    audit_retention_drops_old_entries(Backend::Postgres).await;
}
