//! A large database, written through the storage code's own inserts: the load harness's "scale"
//! data (issue 18) and the tests that check query plans at size. Everything is synthetic and
//! deterministic: users `scale000000`.. with one shared password hash and one shared encrypted
//! backend token (hashing 100,000 passwords would take hours), audit rows spread evenly over the
//! last `days` days in time order (as a real log is), live sessions and ended ones. Multi-row
//! INSERTs of [`ROWS_PER_STATEMENT`] rows, [`STATEMENTS_PER_TRANSACTION`] to a transaction.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use crate::db::models::{audit, backends, sessions, users};
use crate::db::{DbConn, DbPool};
use crate::error::Result;
use crate::model::{AuditEntry, BackendRecord, NewUserRecord, Role, Session, SessionId, UserId};

/// Rows of one INSERT: 9 columns at most, so 9,000 parameters (PostgreSQL allows 65,535 and
/// SQLite 32,766).
pub const ROWS_PER_STATEMENT: usize = 1000;
/// Statements per transaction: commits of 10,000 rows keep each one short.
pub const STATEMENTS_PER_TRANSACTION: usize = 10;

/// How much to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleSpec {
    /// Users, each with a backend.
    pub users: usize,
    /// Audit rows over `days` days, about users picked evenly.
    pub audit_rows: usize,
    /// Live sessions (a day long, begun within the last 12 hours).
    pub live_sessions: usize,
    /// Ended sessions: half revoked, half expired, ended within the last `days` days.
    pub ended_sessions: usize,
    pub days: i64,
}

impl ScaleSpec {
    /// The sizes of issue 18: 100,000 users, 1,000,000 audit rows over 90 days, 100,000 live and
    /// 100,000 ended sessions.
    pub const FULL: Self =
        Self { users: 100_000, audit_rows: 1_000_000, live_sessions: 100_000, ended_sessions: 100_000, days: 90 };

    /// [`FULL`](Self::FULL) divided by `divisor` (at least one of each).
    pub fn divided_by(divisor: usize) -> Self {
        let d = |n: usize| (n / divisor.max(1)).max(1);
        let full = Self::FULL;
        Self {
            users: d(full.users),
            audit_rows: d(full.audit_rows),
            live_sessions: d(full.live_sessions),
            ended_sessions: d(full.ended_sessions),
            days: full.days,
        }
    }
}

/// What was written: the users' ids in creation order, and the live sessions' (user, id).
#[derive(Debug, Clone, Default)]
pub struct Seeded {
    pub users: Vec<UserId>,
    pub live_sessions: Vec<(UserId, SessionId)>,
}

/// Name of the `i`th seeded user.
pub fn username(i: usize) -> String {
    format!("scale{i:06}")
}

/// Actions of the seeded log and their share in a hundred: what a login service's log holds.
const ACTIONS: [(&str, usize); 9] = [
    ("login_success", 42),
    ("token_refresh", 30),
    ("login_failed", 10),
    ("logout", 8),
    ("backend_update", 3),
    ("password_change", 2),
    ("session_revoke", 2),
    ("login_throttled", 2),
    ("user_update", 1),
];

/// The user agents of the seeded sessions and audit rows, in turn.
pub const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) Mobile/15E148",
    "instachatico-ui/1.0",
];

/// A well-mixed index (SplitMix64's finaliser): spreads rows over users and actions without a
/// random generator, so two seeds of one spec are identical.
fn mix(i: usize) -> usize {
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    usize::try_from(z ^ (z >> 31)).unwrap_or(usize::MAX)
}

/// Writes `spec`'s rows as of `now`. Every user gets `password_hash` and a backend whose token
/// is `encrypted_token` (one Fernet token of the service's key).
pub async fn seed(
    pool: &DbPool,
    spec: &ScaleSpec,
    password_hash: &str,
    encrypted_token: &str,
    now: DateTime<Utc>,
) -> Result<Seeded> {
    let mut conn = pool.get().await?;
    let (mut user_ids, mut live) = (Vec::with_capacity(spec.users), Vec::with_capacity(spec.live_sessions));
    let created = now - Duration::days(spec.days);
    for batch in chunks(spec.users) {
        let records: Vec<NewUserRecord> = batch
            .map(|i| NewUserRecord {
                username: username(i),
                email: format!("{}@example.com", username(i)),
                password_hash: password_hash.to_owned(),
                role: Role::User,
                created_at: created,
            })
            .collect();
        let ids = in_transaction(&mut conn, records, async |c, part| {
            let ids = users::insert_many(c, part).await?;
            let backends: Vec<BackendRecord> = ids.iter().map(|id| backend(*id, encrypted_token, created)).collect();
            backends::insert_many(c, &backends).await?;
            Ok(ids)
        })
        .await?;
        user_ids.extend(ids.into_iter().flatten());
    }
    if user_ids.is_empty() {
        return Ok(Seeded::default());
    }
    let user = |i: usize| user_ids[mix(i) % user_ids.len()];

    for batch in chunks(spec.live_sessions) {
        let rows: Vec<Session> = batch
            .map(|i| {
                let begun = now - Duration::seconds(i64::try_from(mix(i) % 43_200).unwrap_or(0));
                session(user(i), begun, begun + Duration::hours(24), None, i)
            })
            .collect();
        live.extend(rows.iter().map(|s| (s.user_id, s.id.clone())));
        in_transaction(&mut conn, rows, async |c, part| sessions::insert_many(c, part).await).await?;
    }

    let span = spec.days * 86_400;
    let ended_at =
        |i: usize, n: usize| now - Duration::seconds(span - span * i64::try_from(i).unwrap_or(0) / n.max(1) as i64);
    for batch in chunks(spec.ended_sessions) {
        let rows: Vec<Session> = batch
            .map(|i| {
                let end = ended_at(i, spec.ended_sessions) - Duration::seconds(1);
                let revoked = (i % 2 == 0).then_some(end);
                let expires = if revoked.is_some() { end + Duration::hours(12) } else { end };
                session(user(i + spec.live_sessions), expires - Duration::hours(24), expires, revoked, i)
            })
            .collect();
        in_transaction(&mut conn, rows, async |c, part| sessions::insert_many(c, part).await).await?;
    }

    for batch in chunks(spec.audit_rows) {
        let rows: Vec<AuditEntry> = batch
            .map(|i| {
                let action = action(i);
                let about = user(i.wrapping_add(7));
                AuditEntry {
                    id: 0,
                    user_id: Some(about),
                    actor_id: Some(if action == "user_update" { user_ids[0] } else { about }),
                    action: action.to_owned(),
                    ip_address: Some(format!("10.{}.{}.{}", mix(i) % 4, (mix(i) >> 8) % 256, (mix(i) >> 16) % 256)),
                    user_agent: Some(USER_AGENTS[mix(i) % USER_AGENTS.len()].to_owned()),
                    metadata: if action == "login_failed" { json!({"reason": "bad_password"}) } else { json!({}) },
                    created_at: ended_at(i, spec.audit_rows),
                }
            })
            .collect();
        in_transaction(&mut conn, rows, async |c, part| audit::insert_many(c, part).await).await?;
    }
    Ok(Seeded { users: user_ids, live_sessions: live })
}

/// The backend every seeded user gets: the same address, `encrypted_token`, as of `at`.
pub fn backend(user_id: UserId, encrypted_token: &str, at: DateTime<Utc>) -> BackendRecord {
    BackendRecord {
        user_id,
        instagram_username: format!("ig_{}", user_id.get()),
        api_base_url: "http://127.0.0.1:4291/api/v1".to_owned(),
        encrypted_token: encrypted_token.to_owned(),
        updated_at: at,
    }
}

fn session(
    user_id: UserId,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    i: usize,
) -> Session {
    Session {
        id: SessionId::random(),
        user_id,
        created_at,
        refreshed_at: created_at,
        expires_at,
        revoked_at,
        ip_address: Some(format!("10.1.{}.{}", (i >> 8) % 256, i % 256)),
        user_agent: Some(USER_AGENTS[i % USER_AGENTS.len()].to_owned()),
        proxy_secret_sha256: None,
    }
}

/// `0..n` in transactions' worth of rows.
fn chunks(n: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let per = ROWS_PER_STATEMENT * STATEMENTS_PER_TRANSACTION;
    (0..n.div_ceil(per)).map(move |k| k * per..((k + 1) * per).min(n))
}

/// Runs `insert` on `rows` in statements of [`ROWS_PER_STATEMENT`], in one transaction;
/// returns what each statement returned.
async fn in_transaction<R: Sync, O>(
    conn: &mut DbConn,
    rows: Vec<R>,
    insert: impl AsyncFn(&mut DbConn, &[R]) -> Result<O>,
) -> Result<Vec<O>> {
    conn.transaction(async |c: &mut DbConn| {
        let mut out = Vec::new();
        for part in rows.chunks(ROWS_PER_STATEMENT) {
            out.push(insert(c, part).await?);
        }
        Ok(out)
    })
    .await
}

/// The action of the `i`th audit row, by the shares of [`ACTIONS`].
fn action(i: usize) -> &'static str {
    let total: usize = ACTIONS.iter().map(|(_, w)| w).sum();
    let mut pick = mix(i.wrapping_mul(31)) % total;
    for (action, weight) in ACTIONS {
        if pick < weight {
            return action;
        }
        pick -= weight;
    }
    ACTIONS[0].0
}
