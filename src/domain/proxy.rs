//! Backend proxy mode (BACKEND_PROXY): the browser never holds a backend's bearer token. Login
//! hands out a proxy credential bound to its session instead, and Envoy asks this service
//! (ext_authz) about every request under the proxy's path: the decision names the address to
//! connect to, the path, and the decrypted token to send. Envoy carries the bodies; this
//! service never sees them.
//!
//! A credential is `ipx_<session id>_<43 base64url chars>` (256 random bits). Only the secret's
//! SHA-256 is stored, in the session's row, so the credential dies with its session (logout,
//! revocation, password change or reset, deactivation, deletion, the absolute lifetime) and a
//! refresh leaves it alone. Decisions come from the session cache, invalidated like GetMe's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::{Host, Url};

use super::App;
use super::allowed_hosts::AllowedHosts;
use super::audit::{self, Action, Event};
use super::limits::ApiLimiter;
use super::types::{ClientInfo, Principal, SessionId, UserId};
use crate::db::models::sessions;
use crate::error::Error;

const PREFIX: &str = "ipx_";
/// A session id is a hyphenated UUID.
const SESSION_ID_LEN: usize = 36;
const SECRET_LEN: usize = 43;

/// The cookie of the cookie variant (BACKEND_PROXY_COOKIE). `__Secure-`: browsers keep it only
/// from a secure context, and `HttpOnly` keeps it from every script.
pub const COOKIE_NAME: &str = "__Secure-instachatico_proxy";

/// How the proxy is set up, from the configuration.
#[derive(Debug, Clone)]
pub struct ProxyPolicy {
    /// Handed out as `backend_config.api_base_url` (BACKEND_PROXY_PUBLIC_URL).
    pub public_url: String,
    /// Its path without a trailing slash (`/backend`): what Envoy's requests start with.
    pub path_prefix: String,
    /// Login also sets the credential as an HttpOnly cookie (BACKEND_PROXY_COOKIE).
    pub cookie: bool,
    /// Proxied requests per minute per user (per replica); 0 disables.
    pub per_minute: u32,
    /// The UI's origins (FRONTEND_URL): the only ones whose cookie-borne unsafe requests pass.
    pub origins: Vec<String>,
}

/// The proxy's state beside its policy: its own rate limiter, the resolver's cache, and which
/// refusals were audited lately.
pub struct ProxyState {
    pub policy: ProxyPolicy,
    limiter: ApiLimiter,
    /// host:port → addresses, for a few seconds (the address checked is the address used, so a
    /// cached answer cannot be rebound).
    resolved: moka::sync::Cache<(String, u16), Arc<Vec<SocketAddr>>>,
    /// One audit row per minute per (reason, user or address): a flood of refusals is counted
    /// in the metrics, not written row by row.
    refusals: moka::sync::Cache<String, ()>,
}

const RESOLVE_TTL: Duration = Duration::from_secs(10);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
const AUDIT_EVERY: Duration = Duration::from_secs(60);

impl ProxyState {
    pub fn new(policy: ProxyPolicy) -> Self {
        Self {
            limiter: ApiLimiter::new(policy.per_minute),
            resolved: moka::sync::Cache::builder().max_capacity(10_000).time_to_live(RESOLVE_TTL).build(),
            refusals: moka::sync::Cache::builder().max_capacity(10_000).time_to_live(AUDIT_EVERY).build(),
            policy,
        }
    }

    pub fn shrink(&self) {
        self.limiter.shrink();
    }
}

/// A new credential for `session` and the hash its row stores.
pub(super) fn mint(session: &SessionId) -> (SecretString, String) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let hash = sha256_hex(&secret);
    (SecretString::from(format!("{PREFIX}{}_{secret}", session.as_str())), hash)
}

fn sha256_hex(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        use std::fmt::Write;
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The session id and secret of a well-formed credential.
fn parse(credential: &str) -> Option<(&str, &str)> {
    let rest = credential.strip_prefix(PREFIX)?;
    if rest.len() != SESSION_ID_LEN + 1 + SECRET_LEN || !rest.is_char_boundary(SESSION_ID_LEN) {
        return None;
    }
    let (sid, secret) = rest.split_at(SESSION_ID_LEN);
    let secret = secret.strip_prefix('_')?;
    let sid_ok = sid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let secret_ok = secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (sid_ok && secret_ok).then_some((sid, secret))
}

/// How the client presented its credential.
#[derive(Debug, Clone, Copy)]
pub enum Presented<'a> {
    Bearer(&'a str),
    Cookie(&'a str),
}

/// One request Envoy asks about.
#[derive(Debug)]
pub struct ProxyRequest<'a> {
    pub credential: Option<Presented<'a>>,
    pub method: &'a str,
    /// Path and query as the client sent them (after Envoy's normalization).
    pub path: &'a str,
    pub origin: Option<&'a str>,
    pub client: ClientInfo,
}

/// Where and how to forward an admitted request.
pub struct ProxyGrant {
    pub user_id: UserId,
    /// The address checked against BACKEND_ALLOWED_HOSTS, which Envoy connects to.
    pub upstream: SocketAddr,
    /// Host header (and TLS server name) for the backend: its URL's host and port.
    pub authority: String,
    pub https: bool,
    /// The backend's base path joined with the request's path below the proxy's prefix.
    pub path: String,
    /// The backend's bearer token, decrypted.
    pub token: SecretString,
}

impl std::fmt::Debug for ProxyGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyGrant").field("user_id", &self.user_id).field("upstream", &self.upstream).finish()
    }
}

/// A refusal: the HTTP status and `{"detail"}` the client gets, and the audited reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyDenial {
    pub status: u16,
    pub detail: &'static str,
    pub reason: &'static str,
    pub retry_after: Option<Duration>,
}

const fn deny(status: u16, reason: &'static str, detail: &'static str) -> ProxyDenial {
    ProxyDenial { status, detail, reason, retry_after: None }
}

pub const OFF: ProxyDenial = deny(404, "off", "The backend proxy is off");
pub const MISSING: ProxyDenial = deny(401, "missing", "Sign in first: no proxy credential");
pub const DEAD: ProxyDenial = deny(401, "invalid", "Session has ended; sign in again");
pub const ORIGIN: ProxyDenial = deny(403, "origin", "Cross-origin request refused");
pub const NO_BACKEND: ProxyDenial = deny(404, "no_backend", "No backend is configured for this account");
pub const HOST_NOT_ALLOWED: ProxyDenial = deny(403, "host_not_allowed", "The backend's host is not allowed");
pub const ADDRESS_NOT_ALLOWED: ProxyDenial = deny(403, "address_not_allowed", "The backend's address is not allowed");
pub const UNRESOLVABLE: ProxyDenial = deny(502, "unresolvable", "Backend unreachable");
pub const UNAVAILABLE: ProxyDenial = deny(503, "unavailable", "Service unavailable");
// Envoy's own refusals after an admitted decision, reported back through its access log.
pub const BACKEND_UNREACHABLE: ProxyDenial = deny(502, "backend_unreachable", "Backend unreachable");
pub const BACKEND_TIMED_OUT: ProxyDenial = deny(504, "backend_timed_out", "Backend timed out");
pub const BODY_TOO_LARGE: ProxyDenial = deny(413, "body_too_large", "Request body too large");

impl App {
    /// Decides one proxied request. Every refusal is counted and audited (coalesced).
    pub async fn authorize_proxy(
        &self,
        request: &ProxyRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<ProxyGrant, ProxyDenial> {
        let Some(proxy) = self.inner.proxy.as_ref() else { return Err(OFF) };
        let mut user_id = None;
        let decided = self.decide(proxy, request, &mut user_id, now).await;
        if let Err(denial) = &decided {
            self.refused(proxy, *denial, user_id, &request.client, now);
        }
        decided
    }

    async fn decide(
        &self,
        proxy: &ProxyState,
        request: &ProxyRequest<'_>,
        user_id: &mut Option<UserId>,
        now: DateTime<Utc>,
    ) -> Result<ProxyGrant, ProxyDenial> {
        let (credential, via_cookie) = match request.credential {
            Some(Presented::Bearer(c)) => (c, false),
            Some(Presented::Cookie(c)) if proxy.policy.cookie => (c, true),
            _ => return Err(MISSING),
        };
        let principal = self.resolve_proxy_credential(credential, now).await?;
        *user_id = Some(principal.user.id);
        proxy.limiter.check(principal.user.id).map_err(|e| match e {
            Error::TooManyRequests { retry_after, .. } => ProxyDenial {
                retry_after: Some(retry_after),
                ..deny(429, "rate_limited", "Too many requests; slow down")
            },
            _ => UNAVAILABLE,
        })?;
        // The cookie rides along on any request the browser makes to the proxy: an unsafe one
        // must come from the UI itself (SameSite=Strict already keeps other sites out).
        let safe = matches!(request.method, "GET" | "HEAD" | "OPTIONS");
        if via_cookie && !safe && !request.origin.is_some_and(|o| proxy.policy.origins.iter().any(|a| a == o)) {
            return Err(ORIGIN);
        }
        let backend = principal.backend.as_ref().ok_or(NO_BACKEND)?;
        let url = Url::parse(&backend.api_base_url).map_err(|_| HOST_NOT_ALLOWED)?;
        if !self.allowed_hosts().permits_url(&url) {
            return Err(HOST_NOT_ALLOWED);
        }
        let upstream = self.resolve_backend(proxy, &url).await?;
        let token = self.cipher().decrypt(&backend.encrypted_token).map_err(|_| UNAVAILABLE)?;
        let authority = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(HOST_NOT_ALLOWED),
        };
        Ok(ProxyGrant {
            user_id: principal.user.id,
            upstream,
            authority,
            https: url.scheme() == "https",
            path: forwarded_path(url.path(), request.path, &proxy.policy.path_prefix),
            token,
        })
    }

    /// The live principal behind a proxy credential: from the cache, or one query and a
    /// constant-time comparison of the secret's hash.
    async fn resolve_proxy_credential(
        &self,
        credential: &str,
        now: DateTime<Utc>,
    ) -> Result<Arc<Principal>, ProxyDenial> {
        if let Some(principal) = self.cache().get_proxy(credential, now) {
            return principal.user.is_active.then_some(principal).ok_or(DEAD);
        }
        let (sid, secret) = parse(credential).ok_or(DEAD)?;
        let sid = SessionId::from(sid.to_owned());
        let mark = self.cache().mark_before_read();
        let mut conn = self.db().get().await.map_err(|_| UNAVAILABLE)?;
        let found = sessions::find_live(&mut conn, &sid, now).await.map_err(|_| UNAVAILABLE)?;
        drop(conn);
        let (session, user, backend) = found.ok_or(DEAD)?;
        let stored = session.proxy_secret_sha256.as_deref().ok_or(DEAD)?;
        if !bool::from(stored.as_bytes().ct_eq(sha256_hex(secret).as_bytes())) || !user.is_active {
            return Err(DEAD);
        }
        let principal = Arc::new(Principal { user, backend, session });
        self.cache().put_proxy(credential, Arc::clone(&principal), mark);
        Ok(principal)
    }

    /// The first address of the backend's host that the allow-list admits.
    async fn resolve_backend(&self, proxy: &ProxyState, url: &Url) -> Result<SocketAddr, ProxyDenial> {
        let port = url.port_or_known_default().ok_or(HOST_NOT_ALLOWED)?;
        let addresses = match url.host() {
            Some(Host::Ipv4(ip)) => Arc::new(vec![SocketAddr::from((ip, port))]),
            Some(Host::Ipv6(ip)) => Arc::new(vec![SocketAddr::from((ip, port))]),
            Some(Host::Domain(name)) => {
                let key = (name.to_ascii_lowercase(), port);
                match proxy.resolved.get(&key) {
                    Some(found) => found,
                    None => {
                        let lookup = tokio::net::lookup_host((key.0.as_str(), port));
                        let found: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
                            .await
                            .map_err(|_| UNRESOLVABLE)?
                            .map_err(|_| UNRESOLVABLE)?
                            .collect();
                        let found = Arc::new(found);
                        proxy.resolved.insert(key, Arc::clone(&found));
                        found
                    }
                }
            }
            None => return Err(HOST_NOT_ALLOWED),
        };
        if addresses.is_empty() {
            return Err(UNRESOLVABLE);
        }
        let allowed = self.allowed_hosts();
        addresses.iter().copied().find(|a| allowed.permits_address(*a)).ok_or(ADDRESS_NOT_ALLOWED)
    }

    /// A refusal Envoy made itself after admitting `user_id`'s request (the backend unreachable
    /// or silent, the body too large): counted and audited like the service's own.
    pub fn proxy_failed(&self, denial: ProxyDenial, user_id: UserId, client: &ClientInfo, now: DateTime<Utc>) {
        if let Some(proxy) = self.inner.proxy.as_ref() {
            self.refused(proxy, denial, Some(user_id), client, now);
        }
    }

    /// Counts a refusal, and audits it unless one like it was audited this past minute.
    fn refused(
        &self,
        proxy: &ProxyState,
        denial: ProxyDenial,
        user_id: Option<UserId>,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) {
        crate::metrics::proxy_refusal(denial.reason);
        let who = user_id.map_or_else(|| client.ip.map(|ip| ip.to_string()).unwrap_or_default(), |u| format!("u{u}"));
        if !proxy.refusals.entry(format!("{}|{who}", denial.reason)).or_insert(()).is_fresh() {
            return;
        }
        let (app, client) = (self.clone(), client.clone());
        tokio::spawn(async move {
            let Ok(mut conn) = app.db().get().await else { return };
            let event =
                Event::new(Action::ProxyRefused, user_id).with("reason", denial.reason).with("status", denial.status);
            audit::record_best_effort(&mut conn, event, &client, now).await;
        });
    }

    /// BACKEND_ALLOWED_HOSTS, checked when a backend is stored (400) and again on every
    /// proxied request. Unset (and proxy mode off): every http(s) URL, as the seed allows.
    pub(super) fn check_backend_url(&self, api_base_url: &str) -> crate::error::Result<()> {
        let allowed = self.allowed_hosts();
        if allowed.is_empty() && self.inner.proxy.is_none() {
            return Ok(());
        }
        let permitted = Url::parse(api_base_url).is_ok_and(|url| allowed.permits_url(&url));
        if permitted {
            Ok(())
        } else {
            Err(Error::invalid("api_base_url", "is not on this service's list of allowed backend hosts"))
        }
    }

    pub fn allowed_hosts(&self) -> &AllowedHosts {
        &self.inner.allowed_hosts
    }

    /// The proxy's policy, when proxy mode is on.
    pub fn proxy_policy(&self) -> Option<&ProxyPolicy> {
        self.inner.proxy.as_ref().map(|p| &p.policy)
    }
}

/// `base` (the backend URL's path) joined with what follows `prefix` in `requested`.
fn forwarded_path(base: &str, requested: &str, prefix: &str) -> String {
    let rest = requested.strip_prefix(prefix).unwrap_or(requested);
    let rest = if rest.is_empty() || rest.starts_with('?') { format!("/{rest}") } else { rest.to_owned() };
    format!("{}{rest}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_only_in_their_exact_shape() {
        let sid = SessionId::random();
        let (credential, hash) = mint(&sid);
        use secrecy::ExposeSecret;
        let (parsed_sid, secret) = parse(credential.expose_secret()).unwrap();
        assert_eq!(parsed_sid, sid.as_str());
        assert_eq!(sha256_hex(secret), hash);
        assert_eq!(hash.len(), 64);
        let c = credential.expose_secret();
        for bad in [
            "",
            "ipx_",
            &c[..c.len() - 1],
            &format!("{c}x"),
            &c.replacen("ipx_", "iak_", 1),
            &c.replacen('_', "-", 2),
            "eyJhbGciOiJIUzI1NiJ9.e30.sig",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert_ne!(mint(&sid).1, hash, "every credential has its own secret");
    }

    #[test]
    fn paths_join_the_backend_base_and_keep_the_query() {
        assert_eq!(forwarded_path("/api/v1", "/backend/media?x=1&y=2", "/backend"), "/api/v1/media?x=1&y=2");
        assert_eq!(forwarded_path("/api/v1/", "/backend/media", "/backend"), "/api/v1/media");
        assert_eq!(forwarded_path("/", "/backend/media", "/backend"), "/media");
        assert_eq!(forwarded_path("", "/backend", "/backend"), "/");
        assert_eq!(forwarded_path("/api", "/backend?q", "/backend"), "/api/?q");
    }
}
