//! Service accounts and their API keys: how a key is made, checked on every call, and managed.
//!
//! A key is `iak_<id>_<secret>`: 16 hex digits of public id (the lookup) and 256 random bits of
//! secret (43 base64url characters). Only the SHA-256 of the secret is stored: the secret is
//! random, so a fast hash is as good as a slow one, and it keeps the check cheap. The check
//! compares hashes in constant time, then the key's life and address allow-list, then the
//! key's rate limit. Keys are cached by id (see `cache::KeyCache`), so a call usually needs no
//! database round trip; a revocation reaches every replica at once through NOTIFY.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::App;
use super::audit::{self, Action, Event};
use super::types::{Actor, ApiKey, ClientInfo, Scope, ServiceAccount, ServiceAccountId, ServiceCaller};
use crate::db::models::api_keys;
use crate::error::{Error, Result};

/// What every API key starts with (and no JWT does).
pub const KEY_PREFIX: &str = "iak_";
pub const ID_HEX: usize = 16;
const SECRET_BYTES: usize = 32;
/// 32 bytes in base64url without padding.
const SECRET_CHARS: usize = 43;
/// Live keys one service account may hold: enough for rotation with margin.
const LIVE_KEYS_MAX: i64 = 10;
/// How long a rotated key keeps working when the request does not say.
pub const ROTATION_GRACE_DEFAULT: Duration = Duration::days(1);
pub const ROTATION_GRACE_MAX: Duration = Duration::days(30);

/// Whether `token` is meant as an API key (rather than a JWT).
pub fn is_api_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

/// Whether `id` has the form of a key's public id: 16 lowercase hex digits.
pub fn is_key_id(id: &str) -> bool {
    id.len() == ID_HEX && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The public id and secret of a well-formed key.
fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(KEY_PREFIX)?.split_once('_')?;
    let id_ok = is_key_id(id);
    let secret_ok =
        secret.len() == SECRET_CHARS && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

fn secret_sha256(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Lowercase hex, in one allocation (it runs on every API-key call).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// A fresh key: its public id and the whole key (shown once).
fn generate() -> (String, SecretString, String) {
    let mut rng = rand::rng();
    let mut id = [0u8; ID_HEX / 2];
    rng.fill_bytes(&mut id);
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill_bytes(&mut secret);
    let id = hex(&id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let hash = secret_sha256(&secret);
    let token = SecretString::from(format!("{KEY_PREFIX}{id}_{secret}"));
    (id, token, hash)
}

/// A key to create.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key just made: the stored record and the key itself, shown this once.
#[derive(Debug)]
pub struct IssuedKey {
    pub key: ApiKey,
    pub token: SecretString,
}

/// Why a key that exists was refused (for the audit row; the caller hears less).
#[derive(Debug, Clone, Copy)]
enum Refusal {
    BadSecret,
    Ended,
    Address,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Self::BadSecret => "bad_secret",
            Self::Ended => "revoked_or_expired",
            Self::Address => "address_not_allowed",
        }
    }

    fn error(self) -> Error {
        match self {
            Self::BadSecret => Error::Unauthenticated("Invalid API key"),
            Self::Ended => Error::Unauthenticated("API key has been revoked or has expired"),
            Self::Address => Error::PermissionDenied("API key is not allowed from this address"),
        }
    }
}

impl App {
    /// The service behind `token` (`iak_...`), if the key is live, its secret right, the client
    /// address allowed and the key within its rate limit. `client` is asked only when the key
    /// has an allow-list or is refused (the hot path reads no header).
    pub async fn authenticate_api_key(
        &self,
        token: &str,
        client: impl Fn() -> ClientInfo + Send,
        now: DateTime<Utc>,
    ) -> Result<Arc<ServiceCaller>> {
        let (id, secret) = parse(token).ok_or(Error::Unauthenticated("Invalid API key"))?;
        let caller = match self.key_cache().get(id) {
            Some(caller) => caller,
            None => {
                let invalid = Error::Unauthenticated("Invalid API key");
                if self.key_cache().is_known_unknown(id) {
                    return Err(invalid);
                }
                let generation = self.key_cache().generation_before_read();
                let mut conn = self.db().get().await?;
                let found = api_keys::find_key(&mut conn, id).await?;
                drop(conn);
                let Some(key) = found else {
                    self.key_cache().put_unknown(id, generation);
                    return Err(invalid);
                };
                let caller = Arc::new(ServiceCaller { key });
                self.key_cache().put(Arc::clone(&caller), generation);
                caller
            }
        };
        let key = &caller.key;
        let hash = secret_sha256(secret);
        let refusal = if !bool::from(hash.as_bytes().ct_eq(key.secret_sha256.as_bytes())) {
            Some(Refusal::BadSecret)
        } else if !key.is_live(now) {
            Some(Refusal::Ended)
        } else if !key.allowed_cidrs.is_empty() && !address_allowed(&key.allowed_cidrs, client().ip) {
            Some(Refusal::Address)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            crate::metrics::api_key_refused(refusal.reason());
            self.audit_refusal(key, refusal, &client(), now).await;
            return Err(refusal.error());
        }
        self.inner.key_limiter.check(key.id.clone()).inspect_err(|_| crate::metrics::rate_limited("api_key"))?;
        if self.key_cache().due_for_touch(&key.id) {
            self.touch_later(key.id.clone(), now);
        }
        Ok(caller)
    }

    /// Audits a refused use of a known key, once a minute per key and replica.
    async fn audit_refusal(&self, key: &ApiKey, refusal: Refusal, client: &ClientInfo, now: DateTime<Utc>) {
        if !self.key_cache().due_for_refusal_audit(&key.id) {
            return;
        }
        tracing::warn!(api_key_id = %key.id, reason = refusal.reason(), ip = ?client.ip, "API key refused");
        let Ok(mut conn) = self.db().get().await else { return };
        let event = Event::new(Action::ApiKeyRefused, None)
            .with("api_key_id", key.id.as_str())
            .with("service_account_id", key.service_account_id.get())
            .with("reason", refusal.reason());
        audit::record_best_effort(&mut conn, event, client, now).await;
    }

    /// Writes `last_used_at` after the reply: a lost write only makes the time older.
    fn touch_later(&self, id: String, now: DateTime<Utc>) {
        let app = self.clone();
        tokio::spawn(async move {
            let result = async {
                let mut conn = app.db().get().await?;
                api_keys::touch(&mut conn, &id, now).await
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(api_key_id = %id, error = ?e, "could not record an API key's use");
            }
        });
    }

    /// Admin: a new service account.
    pub async fn create_service_account(
        &self,
        actor: &Actor<'_>,
        name: &str,
        description: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<ServiceAccount> {
        actor.require_admin()?;
        let (name, description) = (name.to_owned(), description.to_owned());
        self.key_change(actor, None, client, now, move |c| {
            let (name, description) = (name.clone(), description.clone());
            Box::pin(async move {
                let account = api_keys::insert_account(c, &name, &description, now).await?;
                let event = Event::new(Action::ServiceAccountCreate, None)
                    .with("service_account_id", account.id.get())
                    .with("name", account.name.as_str());
                Ok((account, event))
            })
        })
        .await
    }

    /// Admin: every service account.
    pub async fn list_service_accounts(&self, actor: &Actor<'_>) -> Result<Vec<ServiceAccount>> {
        actor.require_admin()?;
        let mut conn = self.db().get().await?;
        api_keys::list_accounts(&mut conn).await
    }

    /// Admin: the service account named `name` (the CLI's way to name one).
    pub async fn find_service_account(&self, name: &str) -> Result<Option<ServiceAccount>> {
        let mut conn = self.db().get().await?;
        api_keys::find_account_by_name(&mut conn, name).await
    }

    /// Admin: deletes a service account and its keys.
    pub async fn delete_service_account(
        &self,
        actor: &Actor<'_>,
        account: ServiceAccountId,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<()> {
        actor.require_admin()?;
        self.key_change(actor, Some(account), client, now, move |c| {
            Box::pin(async move {
                let keys = api_keys::list_keys(c, account).await?;
                api_keys::delete_account(c, account).await?;
                let event = Event::new(Action::ServiceAccountDelete, None)
                    .with("service_account_id", account.get())
                    .with("api_keys_deleted", keys.len());
                Ok(((), event))
            })
        })
        .await
    }

    /// Admin: a new key for `account`.
    pub async fn create_api_key(
        &self,
        actor: &Actor<'_>,
        account: ServiceAccountId,
        new: NewApiKey,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<IssuedKey> {
        actor.require_admin()?;
        if new.expires_at.is_some_and(|at| at <= now) {
            return Err(Error::invalid("expires_at", "must be in the future"));
        }
        self.key_change(actor, Some(account), client, now, move |c| {
            let new = new.clone();
            Box::pin(async move {
                let issued = insert_new_key(c, account, new, now).await?;
                let event = Event::new(Action::ApiKeyCreate, None)
                    .with("service_account_id", account.get())
                    .with("api_key_id", issued.key.id.as_str())
                    .with("scopes", issued.key.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>());
                Ok((issued, event))
            })
        })
        .await
    }

    /// Admin: the account's keys.
    pub async fn list_api_keys(&self, actor: &Actor<'_>, account: ServiceAccountId) -> Result<Vec<ApiKey>> {
        actor.require_admin()?;
        let mut conn = self.db().get().await?;
        if api_keys::find_account(&mut conn, account).await?.is_none() {
            return Err(Error::NotFound("service account"));
        }
        api_keys::list_keys(&mut conn, account).await
    }

    /// Admin: revokes a live key of `account`.
    pub async fn revoke_api_key(
        &self,
        actor: &Actor<'_>,
        account: ServiceAccountId,
        key_id: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<()> {
        actor.require_admin()?;
        let key_id = key_id.to_owned();
        self.key_change(actor, Some(account), client, now, move |c| {
            let key_id = key_id.clone();
            Box::pin(async move {
                if !api_keys::revoke_key(c, account, &key_id, now).await? {
                    return Err(Error::NotFound("live API key"));
                }
                let event = Event::new(Action::ApiKeyRevoke, None)
                    .with("service_account_id", account.get())
                    .with("api_key_id", key_id.as_str());
                Ok(((), event))
            })
        })
        .await
    }

    /// Admin: a successor of a live key with its name, scopes, expiry and allow-list; the old
    /// key keeps working for `grace` (zero ends it now).
    pub async fn rotate_api_key(
        &self,
        actor: &Actor<'_>,
        account: ServiceAccountId,
        key_id: &str,
        grace: Duration,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<IssuedKey> {
        actor.require_admin()?;
        let key_id = key_id.to_owned();
        self.key_change(actor, Some(account), client, now, move |c| {
            let key_id = key_id.clone();
            Box::pin(async move {
                let old = api_keys::find_key(c, &key_id)
                    .await?
                    .filter(|k| k.service_account_id == account && k.is_live(now))
                    .ok_or(Error::NotFound("live API key"))?;
                let new = NewApiKey {
                    name: old.name.clone(),
                    scopes: old.scopes.clone(),
                    allowed_cidrs: old.allowed_cidrs.clone(),
                    expires_at: old.expires_at,
                };
                let issued = insert_new_key(c, account, new, now).await?;
                let old_ends = old.expires_at.map_or(now + grace, |at| at.min(now + grace));
                if grace.is_zero() {
                    api_keys::revoke_key(c, account, &old.id, now).await?;
                } else {
                    api_keys::set_expiry(c, &old.id, old_ends).await?;
                }
                let event = Event::new(Action::ApiKeyRotate, None)
                    .with("service_account_id", account.get())
                    .with("api_key_id", old.id.as_str())
                    .with("successor_id", issued.key.id.as_str())
                    .with("old_key_ends", old_ends.to_rfc3339());
                Ok((issued, event))
            })
        })
        .await
    }

    /// One change to service accounts or keys, in one transaction with its audit row: the
    /// acting admin's session re-checked, the account (if any) locked first, so two changes to
    /// one account's keys (and writes made with them) happen one after the other.
    async fn key_change<T: Send + 'static>(
        &self,
        actor: &Actor<'_>,
        account: Option<ServiceAccountId>,
        client: &ClientInfo,
        now: DateTime<Utc>,
        change: impl for<'c> Fn(&'c mut crate::db::DbConn) -> futures_util::future::BoxFuture<'c, Result<(T, Event)>>
        + Send
        + Sync
        + 'static,
    ) -> Result<T> {
        let acting = super::writes::Acting::admin(actor);
        let (client, change) = (client.clone(), Arc::new(change));
        let (value, recorded) = self
            .db()
            .write(Box::new(move |c| {
                let (acting, client, change) = (acting.clone(), client.clone(), Arc::clone(&change));
                Box::pin(async move {
                    if let Some(account) = account
                        && !api_keys::lock_account(c, account).await?
                    {
                        return Err(Error::NotFound("service account"));
                    }
                    acting.recheck(c, now).await?;
                    let (value, mut event) = change(c).await?;
                    event.actor_id = acting.user_id();
                    if let super::writes::Acting::System(via) = &acting {
                        event = event.with("via", *via);
                    }
                    let recorded = audit::record(c, event, &client, now).await?;
                    Ok((value, recorded))
                })
            }))
            .await?;
        self.committed(recorded);
        Ok(value)
    }
}

/// Inserts a fresh key for `account`, within the cap on live keys.
async fn insert_new_key(
    c: &mut crate::db::DbConn,
    account: ServiceAccountId,
    new: NewApiKey,
    now: DateTime<Utc>,
) -> Result<IssuedKey> {
    if api_keys::count_live_keys(c, account, now).await? >= LIVE_KEYS_MAX {
        return Err(Error::FailedPrecondition("This service account already has 10 live keys; revoke one first"));
    }
    let (id, token, secret_sha256) = generate();
    let key = ApiKey {
        id,
        service_account_id: account,
        name: new.name,
        secret_sha256,
        scopes: new.scopes,
        allowed_cidrs: new.allowed_cidrs,
        expires_at: new.expires_at,
        created_at: now,
        revoked_at: None,
        last_used_at: None,
    };
    api_keys::insert_key(c, &key).await?;
    Ok(IssuedKey { key, token })
}

/// An empty allow-list admits any address; otherwise the client's address must be known and
/// inside one of the networks.
fn address_allowed(allowed: &[ipnet::IpNet], ip: Option<IpAddr>) -> bool {
    allowed.is_empty() || ip.is_some_and(|ip| allowed.iter().any(|net| net.contains(&ip)))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn keys_are_well_formed_and_parse_back() {
        let (id, token, hash) = generate();
        let token = token.expose_secret();
        assert!(is_api_key(token));
        assert_eq!(token.len(), KEY_PREFIX.len() + ID_HEX + 1 + SECRET_CHARS);
        let (parsed_id, secret) = parse(token).unwrap();
        assert_eq!(parsed_id, id);
        assert_eq!(secret_sha256(secret), hash);
        assert_ne!(generate().0, id, "ids are random");
        assert_eq!(secret_sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let (_, token, _) = generate();
        let token = token.expose_secret();
        for bad in [
            "iak_",
            "iak_0123456789abcdef",
            "iak_0123456789abcdef_",
            "iak_0123456789ABCDEF_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "iak_0123456789abcde_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "iak_0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=",
            &token[..token.len() - 1],
            &format!("{token}a"),
            &token.replacen("iak_", "iak-", 1),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn allow_lists() {
        let nets: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(address_allowed(&[], None));
        assert!(address_allowed(&nets, Some("10.1.2.3".parse().unwrap())));
        assert!(address_allowed(&nets, Some("::1".parse().unwrap())));
        assert!(!address_allowed(&nets, Some("11.0.0.1".parse().unwrap())));
        assert!(!address_allowed(&nets, None), "an unknown address is not in any list");
    }
}
