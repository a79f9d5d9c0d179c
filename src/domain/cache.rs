//! The hot-path cache: an access token already verified, with its live session, user and
//! backend, so an authenticated RPC usually needs neither JWT verification nor a database round
//! trip. Keyed by the whole token (compared in full), bounded in bytes; a hit still checks the
//! token's expiry and the session's end. Revocation stays immediate:
//! every write that changes a user's sessions or account bumps that user's generation (here
//! after commit, and on every replica through PostgreSQL NOTIFY), and an entry filled under an
//! older generation is a miss. Entries also expire after a short TTL, and on PostgreSQL the cache
//! is bypassed entirely while the notification listener is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::types::{Principal, ServiceCaller, UserId};

/// A verified token's times (Unix seconds), which introspection reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    pub iat: i64,
    pub exp: i64,
}

#[derive(Clone)]
struct Entry {
    principal: Arc<Principal>,
    generation: u64,
    times: TokenTimes,
}

/// Generations come from one monotonic counter. A user's generation is the larger of the
/// value recorded for them and the floor; raising the floor invalidates everyone. When the
/// bounded generation map forgets a user, the floor rises past every value ever issued, so a
/// forgotten generation can only cause misses, never make a stale entry look fresh.
pub struct PrincipalCache {
    entries: Option<moka::sync::Cache<String, Entry>>,
    /// Backend-proxy credentials, apart from access tokens: neither is ever accepted as the other.
    proxy_entries: Option<moka::sync::Cache<String, (Arc<Principal>, u64)>>,
    generations: moka::sync::Cache<UserId, u64>,
    counter: Arc<AtomicU64>,
    floor: Arc<AtomicU64>,
    /// False while changes made by other replicas could go unnoticed.
    trustworthy: AtomicBool,
}

const MAX_ENTRIES: u64 = 100_000;
/// Memory budget of the entries: ~16 MiB, tokens included.
const MAX_BYTES: u64 = 16 << 20;
/// What one entry costs besides its token (the principal's rows, bookkeeping).
const ENTRY_OVERHEAD: u32 = 640;

impl PrincipalCache {
    /// `ttl` zero disables caching. `needs_listener`: trust entries only once `set_trustworthy`.
    pub fn new(ttl: Duration, needs_listener: bool) -> Self {
        let entries = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(MAX_BYTES)
                .weigher(|token: &String, _: &Entry| {
                    u32::try_from(token.len()).unwrap_or(u32::MAX).saturating_add(ENTRY_OVERHEAD)
                })
                .time_to_live(ttl)
                .build()
        });
        let proxy_entries = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(MAX_BYTES)
                .weigher(|credential: &String, _: &(Arc<Principal>, u64)| {
                    u32::try_from(credential.len()).unwrap_or(u32::MAX).saturating_add(ENTRY_OVERHEAD)
                })
                .time_to_live(ttl)
                .build()
        });
        let counter = Arc::new(AtomicU64::new(1));
        let floor = Arc::new(AtomicU64::new(1));
        let (c, f) = (Arc::clone(&counter), Arc::clone(&floor));
        let generations = moka::sync::Cache::builder()
            .max_capacity(MAX_ENTRIES)
            .eviction_listener(move |_user, _generation, _cause| {
                f.fetch_max(c.fetch_add(1, Ordering::AcqRel) + 1, Ordering::AcqRel);
            })
            .build();
        Self { entries, proxy_entries, generations, counter, floor, trustworthy: AtomicBool::new(!needs_listener) }
    }

    fn generation(&self, user_id: UserId) -> u64 {
        let floor = self.floor.load(Ordering::Acquire);
        self.generations.get(&user_id).map_or(floor, |g| g.max(floor))
    }

    /// The principal behind `token` if it was verified and is still valid at `now`: token not
    /// expired, session not ended, no change to the user since it was read.
    pub fn get(&self, token: &str, now: DateTime<Utc>) -> Option<(Arc<Principal>, TokenTimes)> {
        let entries = self.entries.as_ref()?;
        if !self.trustworthy.load(Ordering::Acquire) {
            return None;
        }
        let entry = entries.get(token)?;
        let fresh = entry.times.exp > now.timestamp()
            && entry.principal.session.expires_at > now
            && entry.generation == self.generation(entry.principal.user.id);
        crate::metrics::cache_lookup(fresh);
        fresh.then_some((entry.principal, entry.times))
    }

    /// Remembers a verified token and the principal read from the database under
    /// `generation` (read before the query, so a change committed meanwhile makes the entry
    /// stale, never wrongly fresh).
    pub fn put(&self, token: &str, times: TokenTimes, principal: Arc<Principal>, generation: u64) {
        if let Some(entries) = &self.entries {
            entries.insert(token.to_owned(), Entry { principal, generation, times });
        }
    }

    /// The generation to pass to [`put`](Self::put) for a read about to start.
    pub fn generation_before_read(&self, user_id: UserId) -> u64 {
        self.generation(user_id)
    }

    /// The principal behind a backend-proxy credential, if it was checked and its session is
    /// still live at `now` with no change to the user since.
    pub fn get_proxy(&self, credential: &str, now: DateTime<Utc>) -> Option<Arc<Principal>> {
        let entries = self.proxy_entries.as_ref()?;
        if !self.trustworthy.load(Ordering::Acquire) {
            return None;
        }
        let (principal, generation) = entries.get(credential)?;
        let fresh = principal.session.expires_at > now && generation == self.generation(principal.user.id);
        crate::metrics::cache_lookup(fresh);
        fresh.then_some(principal)
    }

    /// A mark to take before a read whose user is not known yet (a proxy credential names only
    /// its session): see [`put_proxy`](Self::put_proxy).
    pub fn mark_before_read(&self) -> u64 {
        self.counter.load(Ordering::Acquire)
    }

    /// Remembers a checked proxy credential, unless its user changed (or everything was dropped)
    /// after `mark` was taken: the read may have missed that change.
    pub fn put_proxy(&self, credential: &str, principal: Arc<Principal>, mark: u64) {
        let Some(entries) = &self.proxy_entries else { return };
        let generation = self.generation(principal.user.id);
        if generation <= mark {
            entries.insert(credential.to_owned(), (principal, generation));
        }
    }

    /// Invalidates every cached session of `user_id`.
    pub fn bump(&self, user_id: UserId) {
        self.generations.insert(user_id, self.counter.fetch_add(1, Ordering::AcqRel) + 1);
    }

    /// Invalidates everything.
    pub fn bump_all(&self) {
        self.floor.fetch_max(self.counter.fetch_add(1, Ordering::AcqRel) + 1, Ordering::AcqRel);
    }

    /// Whether other replicas' changes reach this cache (the PostgreSQL listener is up).
    pub fn set_trustworthy(&self, yes: bool) {
        if yes {
            // Whatever happened while we were not listening: forget it all.
            self.bump_all();
        }
        self.trustworthy.store(yes, Ordering::Release);
    }
}

/// Verified API keys by public id, so a service's call needs no database round trip. An entry
/// holds the stored key (its hash, scopes, expiry, allow-list), so every check but the lookup
/// still runs per request. Any revocation, rotation or deletion drops every entry, here after
/// commit and on every replica through NOTIFY: key changes are rare, so coarse is cheap. An
/// entry filled under an older generation is a miss, like [`PrincipalCache`]'s.
pub struct KeyCache {
    entries: Option<moka::sync::Cache<String, (Arc<ServiceCaller>, u64)>>,
    /// Ids no key has, so a flood of made-up keys costs no query each (kept apart from the
    /// entries, so it cannot evict them). A new key drops them all, like any key change.
    unknown: Option<moka::sync::Cache<String, u64>>,
    generation: AtomicU64,
    trustworthy: AtomicBool,
    /// Keys whose use this replica wrote in the last minute (`last_used_at` is coalesced).
    touched: moka::sync::Cache<String, ()>,
    /// Keys whose refusal this replica audited in the last minute (a flood of bad secrets for
    /// one known id writes one row a minute, not one per attempt).
    refusals: moka::sync::Cache<String, ()>,
}

/// How often a key's `last_used_at` (and its refusals' audit rows) are written, per replica.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
const MAX_KEYS: u64 = 10_000;

impl KeyCache {
    /// `ttl` zero disables caching. `needs_listener`: trust entries only once `set_trustworthy`.
    pub fn new(ttl: Duration, needs_listener: bool) -> Self {
        let entries =
            (!ttl.is_zero()).then(|| moka::sync::Cache::builder().max_capacity(MAX_KEYS).time_to_live(ttl).build());
        let unknown =
            (!ttl.is_zero()).then(|| moka::sync::Cache::builder().max_capacity(MAX_KEYS).time_to_live(ttl).build());
        let once_a_minute = || moka::sync::Cache::builder().max_capacity(MAX_KEYS).time_to_live(TOUCH_EVERY).build();
        Self {
            entries,
            unknown,
            generation: AtomicU64::new(1),
            trustworthy: AtomicBool::new(!needs_listener),
            touched: once_a_minute(),
            refusals: once_a_minute(),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<ServiceCaller>> {
        let entries = self.entries.as_ref()?;
        if !self.trustworthy.load(Ordering::Acquire) {
            return None;
        }
        let (caller, generation) = entries.get(id)?;
        (generation == self.generation.load(Ordering::Acquire)).then_some(caller)
    }

    /// The generation to pass to [`put`](Self::put) for a read about to start.
    pub fn generation_before_read(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `id` was looked up and found to be no key's (since the last key change).
    pub fn is_known_unknown(&self, id: &str) -> bool {
        let Some(unknown) = &self.unknown else { return false };
        self.trustworthy.load(Ordering::Acquire)
            && unknown.get(id).is_some_and(|generation| generation == self.generation.load(Ordering::Acquire))
    }

    pub fn put_unknown(&self, id: &str, generation: u64) {
        if let Some(unknown) = &self.unknown {
            unknown.insert(id.to_owned(), generation);
        }
    }

    pub fn put(&self, caller: Arc<ServiceCaller>, generation: u64) {
        if let Some(entries) = &self.entries {
            entries.insert(caller.key.id.clone(), (caller, generation));
        }
    }

    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            entries.invalidate_all();
        }
        if let Some(unknown) = &self.unknown {
            unknown.invalidate_all();
        }
    }

    /// Whether other replicas' key changes reach this cache (the PostgreSQL listener is up).
    pub fn set_trustworthy(&self, yes: bool) {
        if yes {
            self.invalidate_all();
        }
        self.trustworthy.store(yes, Ordering::Release);
    }

    /// True once a minute per key: time to write its `last_used_at`.
    pub fn due_for_touch(&self, id: &str) -> bool {
        // The common answer (no) with a read only, no allocation.
        !self.touched.contains_key(id) && self.touched.entry(id.to_owned()).or_insert(()).is_fresh()
    }

    /// True once a minute per key: time to audit its refusal.
    pub fn due_for_refusal_audit(&self, id: &str) -> bool {
        self.refusals.entry(id.to_owned()).or_insert(()).is_fresh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Role, Session, SessionId, User};

    fn times(exp: i64) -> TokenTimes {
        TokenTimes { iat: exp - 60, exp }
    }

    fn principal(user_id: i32, sid: &str) -> Principal {
        let t = chrono::Utc::now();
        let far = t + chrono::Duration::hours(1);
        let user_id = UserId(user_id);
        Principal {
            user: User {
                id: user_id,
                username: "u".into(),
                email: "u@example.com".into(),
                password_hash: String::new(),
                role: Role::User,
                is_active: true,
                created_at: t,
                updated_at: t,
                last_login: None,
            },
            backend: None,
            session: Session {
                id: SessionId::from(sid.to_owned()),
                user_id,
                created_at: t,
                refreshed_at: t,
                expires_at: far,
                revoked_at: None,
                ip_address: None,
                proxy_secret_sha256: None,
                user_agent: None,
            },
        }
    }

    #[test]
    fn bump_invalidates_one_user_and_reads_started_before_a_bump_are_stale() {
        let cache = PrincipalCache::new(Duration::from_secs(60), false);
        let now = chrono::Utc::now();
        let exp = now.timestamp() + 3600;
        cache.put("ta", times(exp), Arc::new(principal(1, "a")), cache.generation_before_read(UserId(1)));
        cache.put("tb", times(exp), Arc::new(principal(2, "b")), cache.generation_before_read(UserId(2)));
        assert!(cache.get("ta", now).is_some());
        assert!(cache.get("tx", now).is_none(), "only the exact token hits");
        // A read that began before a change must not fill a fresh-looking entry.
        let before = cache.generation_before_read(UserId(1));
        cache.bump(UserId(1));
        cache.put("ta", times(exp), Arc::new(principal(1, "a")), before);
        assert!(cache.get("ta", now).is_none());
        assert!(cache.get("tb", now).is_some(), "other users keep their entries");
        cache.bump_all();
        assert!(cache.get("tb", now).is_none());
    }

    #[test]
    fn untrusted_until_the_listener_is_up_and_expired_tokens_or_sessions_never_hit() {
        let cache = PrincipalCache::new(Duration::from_secs(60), true);
        let now = chrono::Utc::now();
        let exp = now.timestamp() + 60;
        cache.put("ta", times(exp), Arc::new(principal(1, "a")), cache.generation_before_read(UserId(1)));
        assert!(cache.get("ta", now).is_none());
        cache.set_trustworthy(true);
        cache.put("ta", times(exp), Arc::new(principal(1, "a")), cache.generation_before_read(UserId(1)));
        assert!(cache.get("ta", now).is_some());
        assert!(cache.get("ta", now + chrono::Duration::seconds(61)).is_none(), "past the token's exp");
        cache.put(
            "tb",
            times(now.timestamp() + 7200),
            Arc::new(principal(1, "b")),
            cache.generation_before_read(UserId(1)),
        );
        assert!(
            cache.get("tb", now + chrono::Duration::hours(1) + chrono::Duration::seconds(1)).is_none(),
            "past the session's end"
        );
        assert!(PrincipalCache::new(Duration::ZERO, false).get("ta", now).is_none());
    }

    #[test]
    fn key_cache_drops_everything_on_any_key_change_and_stale_reads_never_fill_it() {
        let cache = KeyCache::new(Duration::from_secs(60), false);
        let now = chrono::Utc::now();
        let key = crate::model::ApiKey {
            id: "0123456789abcdef".into(),
            service_account_id: crate::model::ServiceAccountId(1),
            name: "k".into(),
            secret_sha256: String::new(),
            scopes: vec![],
            allowed_cidrs: vec![],
            expires_at: None,
            created_at: now,
            revoked_at: None,
            last_used_at: None,
        };
        let caller = Arc::new(ServiceCaller { key });
        cache.put(Arc::clone(&caller), cache.generation_before_read());
        cache.put_unknown("fedcba9876543210", cache.generation_before_read());
        assert!(cache.get("0123456789abcdef").is_some());
        assert!(cache.is_known_unknown("fedcba9876543210"));
        // A read that began before a revocation must not fill a fresh-looking entry.
        let before = cache.generation_before_read();
        cache.invalidate_all();
        assert!(cache.get("0123456789abcdef").is_none());
        assert!(!cache.is_known_unknown("fedcba9876543210"), "a new key may have that id now");
        cache.put(Arc::clone(&caller), before);
        cache.put_unknown("fedcba9876543210", before);
        assert!(cache.get("0123456789abcdef").is_none());
        assert!(!cache.is_known_unknown("fedcba9876543210"));
        // Untrusted (listener down): nothing is served from memory.
        cache.put(Arc::clone(&caller), cache.generation_before_read());
        cache.set_trustworthy(false);
        assert!(cache.get("0123456789abcdef").is_none());
    }
}
