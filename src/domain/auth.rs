//! Sign-in and sessions: login, refresh, logout, and resolving a token's claims to a live
//! session of an active user. Every JWT belongs to a row in `sessions`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::App;
use super::audit::{self, Action, Event};
use super::cache::TokenTimes;
use super::legacy;
use super::mfa::{Claim, Proof};
use super::sessions::user_subject;
use super::types::{
    ClientInfo, IssuedToken, LoginOutcome, Principal, Role, Scope, Session, SessionId, SignIn, User, UserId, UserView,
};
use crate::crypto::jwt::{Claims, Subject};
use crate::db::models::audit as audit_rows;
use crate::db::models::{mfa, passkeys, sessions, throttles, users};
use crate::model::Backend;

use crate::error::{Error, Result};

/// Longest username/email accepted at login (longer ones cannot exist).
const LOGIN_MAX: usize = 254;

impl App {
    /// Checks the password and opens a session (seed 3.2.1), or, for a user with a second
    /// factor, issues the mfa_token of the second step instead (no session yet). Unknown users and wrong passwords
    /// fail identically, in message and in time. Limited per client address (all replicas) and
    /// throttled per account and address after repeated failures.
    pub async fn login(
        &self,
        login: &str,
        password: &SecretString,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<SignIn> {
        let login = login.trim();
        if login.is_empty() {
            return Err(Error::invalid("username", "is required"));
        }
        if password.expose_secret().is_empty() {
            return Err(Error::invalid("password", "is required"));
        }
        self.check_login_rate(client.ip, now).await?;

        let mut conn = self.db().get().await?;
        // No account name holds a control character (and PostgreSQL refuses NUL): such a name
        // is simply unknown, and is not sent to the database.
        let plausible = login.len() <= LOGIN_MAX && !login.chars().any(char::is_control);
        let found = if plausible { users::find_by_login(&mut conn, login).await? } else { None };
        // Release the connection while bcrypt runs: hashing is the slow part of a login.
        drop(conn);
        let known_id = found.as_ref().map(|(u, _)| u.id);
        let subject = known_id.map_or_else(|| self.inner.names.unknown_login(login), user_subject);
        self.refuse_if_throttled(known_id, &subject, client, now).await?;

        let stored_hash = found.as_ref().map(|(u, _)| u.password_hash.as_str());
        let matched = self
            .hasher()
            .verify(password, stored_hash)
            .await
            .map_err(|e| e.overload_as("Too many sign-in attempts are in progress; retry shortly"))?;
        let (user, backend) = match found {
            Some(found) if matched => found,
            _ => {
                let reason = if known_id.is_some() { "bad_password" } else { "unknown_user" };
                self.sign_in_failed(known_id, &subject, reason, client, now).await;
                return Err(Error::InvalidCredentials);
            }
        };
        if !user.is_active {
            self.record_login_failure(Some(user.id), "inactive", client, now).await;
            return Err(Error::AccountInactive);
        }

        let methods = self.second_factor_methods(user.id).await?;
        if !methods.is_empty() {
            let mfa_token = self.issue_mfa_challenge(&user, false, client, now).await?;
            return Ok(SignIn::MfaRequired { mfa_token, methods });
        }
        if self.security().mfa_required_for_admins && user.role == Role::Admin {
            let mfa_token = self.issue_mfa_challenge(&user, true, client, now).await?;
            return Ok(SignIn::EnrollmentRequired { mfa_token });
        }
        let checked = Proof::Password { checked_hash: user.password_hash.clone() };
        let outcome = self.open_session(user, backend, checked, client, now).await?.ok_or(Error::InvalidCredentials)?;
        self.rehash_if_weak(&outcome.1, password);
        Ok(SignIn::Session(Box::new(outcome.0)))
    }

    /// Opens a session for `user` once `proof` holds inside the write transaction: the
    /// password checked is still the account's (a reset that committed meanwhile wins) and the
    /// account still active; for a second step, also the mfa_token still live and the code
    /// claimed (a TOTP step or a recovery code, once). `Ok(None)`: the code was already used
    /// (nothing written).
    pub(super) async fn open_session(
        &self,
        user: User,
        backend: Option<Backend>,
        proof: Proof,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<Option<(LoginOutcome, User)>> {
        let session_id = SessionId::random();
        // Proxy mode: a credential of this session instead of the backend's token, which never
        // leaves the service.
        let proxy = self.proxy_policy().map(|policy| (policy, super::proxy::mint(&session_id)));
        let backend_config = match (&backend, &proxy) {
            (Some(_), Some((policy, (credential, _)))) => Some((policy.public_url.clone(), credential.clone())),
            // Decrypt before committing the session, so a key problem fails the login cleanly.
            (Some(b), None) => Some((b.api_base_url.clone(), self.cipher().decrypt(&b.encrypted_token)?)),
            (None, _) => None,
        };
        let proxy_cookie =
            proxy.as_ref().filter(|(policy, _)| policy.cookie).map(|(_, (credential, _))| credential.clone());

        let session = Session {
            id: session_id,
            user_id: user.id,
            created_at: now,
            refreshed_at: now,
            expires_at: now + self.session_policy().session_lifetime,
            revoked_at: None,
            ip_address: client.ip.map(|ip| ip.to_string()),
            user_agent: client.user_agent.clone(),
            proxy_secret_sha256: proxy.map(|(_, (_, hash))| hash),
        };
        let token = self.issue_token(&user, &session, now)?;

        let (user_id, client_for_task) = (user.id, client.clone());
        let new_session = session.clone();
        let recorded = self
            .db()
            .write(Box::new(move |c| {
                let (session, proof, client) = (new_session.clone(), proof.clone(), client_for_task.clone());
                Box::pin(async move {
                    // In one order with every other change to this user.
                    users::lock(c, user_id).await?;
                    let (current, _) = users::find(c, user_id).await?.ok_or(Error::InvalidCredentials)?;
                    let mut method = None;
                    let mut passwordless = false;
                    match &proof {
                        Proof::Password { checked_hash } => {
                            if current.password_hash != *checked_hash {
                                return Err(Error::InvalidCredentials);
                            }
                        }
                        Proof::SecondFactor { password_sha256, token_sha256, claim } => {
                            if super::mfa::sha256_hex(&current.password_hash) != *password_sha256 {
                                return Err(Error::Unauthenticated(super::mfa::TOKEN_REFUSED));
                            }
                            let claimed = match claim {
                                Claim::TotpStep(step) => mfa::claim_totp_step(c, user_id, *step).await?,
                                Claim::RecoveryCode(hash) => mfa::use_recovery_code(c, user_id, hash, now).await?,
                            };
                            if !claimed {
                                return Ok(None);
                            }
                            if !mfa::end_challenge(c, token_sha256, now).await? {
                                return Err(Error::Unauthenticated(super::mfa::TOKEN_REFUSED));
                            }
                            method = Some(claim.method());
                        }
                        Proof::Passkey(passkey) => {
                            if let Some((password_sha256, _)) = &passkey.second_factor
                                && super::mfa::sha256_hex(&current.password_hash) != *password_sha256
                            {
                                return Err(Error::Unauthenticated(super::mfa::TOKEN_REFUSED));
                            }
                            // The ceremony is spent once: of concurrent finishes, one gets here.
                            if !passkeys::take_ceremony(c, &passkey.ceremony_sha256, now).await? {
                                return Ok(None);
                            }
                            if let Some((_, token_sha256)) = &passkey.second_factor {
                                if !mfa::end_challenge(c, token_sha256, now).await? {
                                    return Err(Error::Unauthenticated(super::mfa::TOKEN_REFUSED));
                                }
                                method = Some(super::passkeys::METHOD);
                            } else {
                                passwordless = true;
                            }
                            // False: a concurrent use with a higher counter committed first.
                            passkeys::mark_used(c, passkey.passkey_id, &passkey.passkey_json, passkey.counter, now)
                                .await?;
                        }
                    }
                    if !current.is_active {
                        return Err(Error::AccountInactive);
                    }
                    sessions::insert(c, &session).await?;
                    users::set_last_login(c, user_id, now).await?;
                    throttles::clear(c, &user_subject(user_id), &client_key(&client)).await?;
                    if let Some(method) = method {
                        let event = Event::new(Action::MfaSuccess, Some(user_id)).with("method", method);
                        audit::record(c, event, &client, now).await?.nothing_cached();
                        if method == Claim::RECOVERY_CODE {
                            let left = mfa::recovery_codes_left(c, user_id).await?;
                            let event = Event::new(Action::MfaRecoveryCodeUsed, Some(user_id)).with("remaining", left);
                            audit::record(c, event, &client, now).await?.nothing_cached();
                        }
                    }
                    let mut event =
                        Event::new(Action::LoginSuccess, Some(user_id)).with("session_id", session.id.as_str());
                    if let Some(method) = method {
                        event = event.with("second_factor", method);
                    }
                    if passwordless {
                        event = event.with("method", "passkey");
                    }
                    audit::record(c, event, &client, now).await.map(Some)
                })
            }))
            .await?;
        let Some(recorded) = recorded else { return Ok(None) };
        self.committed(recorded);
        crate::metrics::login_attempt("success");

        let mut user = user;
        user.last_login = Some(now);
        let outcome = LoginOutcome {
            token,
            user: UserView::from((&user, backend.as_ref())),
            backend: backend_config,
            proxy_cookie,
        };
        Ok(Some((outcome, user)))
    }

    /// Resolves verified claims to a live session of an active user (one query).
    pub async fn authenticate(&self, claims: &Claims, now: DateTime<Utc>) -> Result<Arc<Principal>> {
        let user_id = claims.user_id()?;
        let mut conn = self.db().get().await?;
        let mut found = sessions::find_live(&mut conn, &claims.session_id(), now).await?;
        drop(conn);
        if found.is_none() && claims.legacy {
            self.bind_legacy(claims, now).await?;
            found = sessions::find_live(&mut self.db().get().await?, &claims.session_id(), now).await?;
        }
        let (session, user, backend) = found.ok_or(Error::Unauthenticated("Session has ended; sign in again"))?;
        let principal = Arc::new(Principal { user, backend, session });
        admit(&principal, user_id)?;
        Ok(principal)
    }

    /// Verifies a bearer token and resolves it to a live principal. Runs on every authenticated
    /// request: from the cache when it holds this exact token, else JWT verification and one
    /// query.
    pub async fn authenticate_token(&self, token: &str, now: DateTime<Utc>) -> Result<Arc<Principal>> {
        let (principal, _) = self.resolve_token(token, now).await?;
        self.inner.api_limiter.check(principal.user.id)?;
        Ok(principal)
    }

    /// The live principal behind `token` and the token's times, without counting a request of
    /// the user (introspection asks about a token; its holder is not calling).
    async fn resolve_token(&self, token: &str, now: DateTime<Utc>) -> Result<(Arc<Principal>, TokenTimes)> {
        if let Some((principal, times)) = self.cache().get(token, now) {
            admit(&principal, principal.user.id)?;
            return Ok((principal, times));
        }
        let claims = self.jwt().verify(token, now)?;
        // Read before the query: a change committed meanwhile leaves the entry stale.
        let generation = self.cache().generation_before_read(claims.user_id()?);
        let principal = self.authenticate(&claims, now).await?;
        let times = TokenTimes { iat: claims.iat, exp: claims.exp };
        self.cache().put(token, times, Arc::clone(&principal), generation);
        Ok((principal, times))
    }

    /// RFC 7662: what a service may know about `token`, or `None` when it is not a live access
    /// token (forged, expired, its session ended, its user inactive or gone, or not a token at
    /// all: the caller learns nothing about why). Served from the session cache like any
    /// request.
    pub async fn introspect(&self, token: &str, now: DateTime<Utc>) -> Result<Option<Introspection>> {
        match self.resolve_token(token, now).await {
            Ok((principal, times)) => Ok(Some(Introspection { principal, times })),
            // Not knowing is not "inactive": the service may retry.
            Err(e @ (Error::Unavailable(_) | Error::Overloaded { .. } | Error::Internal(_) | Error::Contention)) => {
                Err(e)
            }
            Err(_) => Ok(None),
        }
    }

    /// Issues a new token for the session behind `token`, which may have expired within the
    /// refresh window (seed 3.2.2). The session's absolute lifetime still bounds it.
    pub async fn refresh(&self, token: &str, client: &ClientInfo, now: DateTime<Utc>) -> Result<IssuedToken> {
        let window = self.session_policy().refresh_window.num_seconds();
        let claims = self.jwt().verify_allowing_expired(token, now, window)?;
        let user_id = claims.user_id()?;
        self.inner.api_limiter.check(user_id)?;
        let (app, sid, client) = (self.clone(), claims.session_id(), client.clone());
        // The old token stays valid until it expires: a client whose reply was lost retries with
        // it, and concurrent refreshes of one token all succeed.
        self.db()
            .write(Box::new(move |c| {
                let (app, sid, client, claims) = (app.clone(), sid.clone(), client.clone(), claims.clone());
                Box::pin(async move {
                    users::lock(c, user_id).await?;
                    legacy::bind(c, &claims, app.session_policy().session_lifetime, &client, now).await?;
                    let (session, user, _) = sessions::find_live(c, &sid, now)
                        .await?
                        .filter(|(s, u, _)| s.user_id == user_id && u.is_active)
                        .ok_or(Error::Unauthenticated("Session has ended; sign in again"))?;
                    sessions::mark_refreshed(c, &sid, now).await?;
                    let event = Event::new(Action::TokenRefresh, Some(user_id)).with("session_id", sid.as_str());
                    audit::record(c, event, &client, now).await?.nothing_cached();
                    app.issue_token(&user, &session, now)
                })
            }))
            .await
    }

    /// Ends the session behind `token` everywhere at once. A token that expired within the
    /// refresh window can still end its session.
    pub async fn logout(&self, token: &str, client: &ClientInfo, now: DateTime<Utc>) -> Result<()> {
        let window = self.session_policy().refresh_window.num_seconds();
        let claims = self.jwt().verify_allowing_expired(token, now, window)?;
        let user_id = claims.user_id()?;
        let (sid, client, lifetime) = (claims.session_id(), client.clone(), self.session_policy().session_lifetime);
        let recorded = self
            .db()
            .write(Box::new(move |c| {
                let (sid, client, claims) = (sid.clone(), client.clone(), claims.clone());
                Box::pin(async move {
                    users::lock(c, user_id).await?;
                    legacy::bind(c, &claims, lifetime, &client, now).await?;
                    if !sessions::revoke(c, &sid, now).await? {
                        return Err(Error::Unauthenticated("Session has already ended"));
                    }
                    let event = Event::new(Action::Logout, Some(user_id)).with("session_id", sid.as_str());
                    audit::record(c, event, &client, now).await
                })
            }))
            .await?;
        self.committed(recorded);
        Ok(())
    }

    /// Signs a token for `session`, never outliving it.
    fn issue_token(&self, user: &User, session: &Session, now: DateTime<Utc>) -> Result<IssuedToken> {
        let expires_at = (now + self.session_policy().token_lifetime).min(session.expires_at);
        let subject = Subject { user_id: user.id, username: &user.username, role: user.role, session: &session.id };
        let token = self.jwt().issue(&subject, now, expires_at)?;
        let expires_in = i32::try_from((expires_at - now).num_seconds().max(0)).unwrap_or(i32::MAX);
        Ok(IssuedToken { access_token: SecretString::from(token), expires_in })
    }

    /// Refuses a sign-in attempt while `subject` is in a cool-down from this client's address
    /// (audited as a throttled sign-in).
    pub(super) async fn refuse_if_throttled(
        &self,
        user_id: Option<UserId>,
        subject: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut conn = self.db().get().await?;
        let until = throttles::locked_until(&mut conn, subject, &client_key(client), now).await?;
        drop(conn);
        let Some(until) = until else { return Ok(()) };
        self.record_login_failure(user_id, "throttled", client, now).await;
        Err(Error::TooManyRequests {
            message: "Too many failed sign-in attempts; try again later",
            retry_after: (until - now).to_std().unwrap_or_default(),
        })
    }

    /// A failed sign-in (a wrong password at login, or a wrong current password): audited,
    /// counted toward the address alert and toward the account's throttling from this address.
    pub(super) async fn sign_in_failed(
        &self,
        user_id: Option<UserId>,
        subject: &str,
        reason: &'static str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) {
        self.record_login_failure(user_id, reason, client, now).await;
        self.count_failure(subject, user_id, client, now).await;
    }

    async fn record_login_failure(
        &self,
        user_id: Option<UserId>,
        reason: &'static str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) {
        crate::metrics::login_attempt(reason);
        let Ok(mut conn) = self.db().get().await else {
            return;
        };
        let event = Event::new(Action::LoginFailed, user_id).with("reason", reason);
        audit::record_best_effort(&mut conn, event, client, now).await;
        // Seed 9.3: more than 10 failed logins from one address in 5 minutes is an alert (once,
        // when the count crosses the threshold).
        if let Some(ip) = client.ip {
            let since = now - chrono::Duration::minutes(SUSPICIOUS_WINDOW_MINUTES);
            let count = audit_rows::count_failed_logins_from(&mut conn, &ip.to_string(), since).await;
            if matches!(count, Ok(n) if n == SUSPICIOUS_FAILURES + 1) {
                crate::metrics::suspicious_address();
                tracing::warn!(%ip, failures = SUSPICIOUS_FAILURES + 1, window_minutes = SUSPICIOUS_WINDOW_MINUTES, "ALERT: many failed logins from one address");
            }
        }
    }

    /// Counts a failure of `subject` from this address; at the threshold, starts a cool-down.
    pub(super) async fn count_failure(
        &self,
        subject: &str,
        user_id: Option<UserId>,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) {
        let policy = self.security();
        let address = client_key(client);
        let result: Result<()> = async {
            let mut conn = self.db().get().await?;
            let failures = throttles::record_failure(&mut conn, subject, &address, now).await?;
            if u32::try_from(failures).unwrap_or(0) >= policy.throttle_threshold {
                let until = now + policy.throttle_cooldown;
                throttles::lock(&mut conn, subject, &address, until, now).await?;
                tracing::warn!(user_id = ?user_id.map(UserId::get), ip = %address, failures, cooldown_seconds = policy.throttle_cooldown.num_seconds(), "login throttled after repeated failures");
                let event = Event::new(Action::LoginThrottled, user_id)
                    .with("failures", failures)
                    .with("until", until.to_rfc3339());
                audit::record(&mut conn, event, client, now).await?.nothing_cached();
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = ?e, "failed to record login throttling");
        }
    }

    /// Re-hashes at the configured cost when the stored hash is weaker, after the reply (the
    /// user already waited for one hash).
    fn rehash_if_weak(&self, user: &User, password: &SecretString) {
        let weak =
            crate::crypto::password::hash_cost(&user.password_hash).is_none_or(|cost| cost < self.hasher().cost());
        if !weak {
            return;
        }
        let (app, password, user_id, old_hash) = (self.clone(), password.clone(), user.id, user.password_hash.clone());
        tokio::spawn(async move {
            let result: Result<bool> = async {
                let hash = app.hasher().hash(&password).await?;
                let mut conn = app.db().get().await?;
                // Only if nobody changed the password meanwhile.
                users::replace_password_hash(&mut conn, user_id, &old_hash, &hash).await
            }
            .await;
            match result {
                Ok(true) => {
                    tracing::info!(
                        user_id = user_id.get(),
                        cost = app.hasher().cost(),
                        "password re-hashed at the configured cost"
                    )
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(user_id = user_id.get(), error = ?e, "password re-hash failed"),
            }
        });
    }
}

/// The checks every resolved token passes, cached or not.
fn admit(principal: &Principal, token_user: UserId) -> Result<()> {
    if principal.session.user_id != token_user {
        return Err(Error::Unauthenticated("Invalid token"));
    }
    if !principal.user.is_active {
        return Err(Error::Unauthenticated("Account is inactive"));
    }
    Ok(())
}

/// A live token as introspection reports it.
#[derive(Debug, Clone)]
pub struct Introspection {
    pub principal: Arc<Principal>,
    pub times: TokenTimes,
}

impl Introspection {
    /// What the token may call, space-separated (RFC 7662 `scope`): its user's own account,
    /// and for an admin what the admin scopes allow.
    pub fn scope(&self) -> String {
        let mut scope = String::from("session");
        if self.principal.role() == Role::Admin {
            for s in [Scope::UsersRead, Scope::UsersWrite, Scope::AuditRead] {
                scope.push(' ');
                scope.push_str(s.as_str());
            }
        }
        scope
    }
}

/// Failed logins from one address within the window that raise the alert (seed 9.3).
const SUSPICIOUS_FAILURES: i64 = 10;
const SUSPICIOUS_WINDOW_MINUTES: i64 = 5;

/// The address key of throttling state.
pub(super) fn client_key(client: &ClientInfo) -> String {
    client.ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}
