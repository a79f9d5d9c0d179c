//! Sign-in and sessions: login, refresh, logout, and resolving a token's claims to a live
//! session of an active user. Every JWT belongs to a row in `sessions`.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::App;
use super::audit::{self, Action, Event};
use super::types::{ClientInfo, IssuedToken, LoginOutcome, Principal, UserView};
use crate::crypto::jwt::Claims;
use crate::db::models::{SessionRow, UserRow, sessions, users};
use crate::db::{DbConn, detached};
use crate::error::{Error, Result};

/// Longest username/email accepted at login (longer ones cannot exist).
const LOGIN_MAX: usize = 254;

impl App {
    /// Checks the password and opens a session (seed 3.2.1). Unknown users and wrong passwords
    /// fail identically, in message and in time.
    pub async fn login(
        &self,
        login: &str,
        password: &SecretString,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<LoginOutcome> {
        let login = login.trim();
        if login.is_empty() {
            return Err(Error::invalid("username", "is required"));
        }
        if password.expose_secret().is_empty() {
            return Err(Error::invalid("password", "is required"));
        }
        let mut conn = self.db().get().await?;
        let found = if login.len() <= LOGIN_MAX {
            users::find_by_login(&mut conn, login).await?
        } else {
            None
        };
        // Release the connection while bcrypt runs: hashing is the slow part of a login.
        drop(conn);

        let known_id = found.as_ref().map(|(u, _)| u.id);
        let stored_hash = found.as_ref().map(|(u, _)| u.password_hash.as_str());
        let matched = self.hasher().verify(password, stored_hash).await?;
        let (user, backend) = match found {
            Some(found) if matched => found,
            _ => {
                let reason = if known_id.is_some() {
                    "bad_password"
                } else {
                    "unknown_user"
                };
                self.record_login_failure(known_id, reason, client, now)
                    .await;
                return Err(Error::InvalidCredentials);
            }
        };
        if !user.is_active {
            self.record_login_failure(Some(user.id), "inactive", client, now)
                .await;
            return Err(Error::AccountInactive);
        }

        // Decrypt before committing the session, so a key problem fails the login cleanly.
        let backend_config = match &backend {
            Some(b) => Some((
                b.api_base_url.clone(),
                self.cipher().decrypt(&b.bearer_token_encrypted)?,
            )),
            None => None,
        };

        let session = SessionRow {
            id: uuid::Uuid::new_v4().to_string(),
            user_id: user.id,
            created_at: now.naive_utc(),
            refreshed_at: now.naive_utc(),
            expires_at: (now + self.session_policy().session_lifetime).naive_utc(),
            revoked_at: None,
            ip_address: client.ip.map(|ip| ip.to_string()),
            user_agent: client.user_agent.clone(),
        };
        let token = self.issue_token(&user, &session, now)?;

        let db = self.db().clone();
        let (user_id, session_for_task, client_for_task) =
            (user.id, session.clone(), client.clone());
        detached(async move {
            let mut conn = db.get().await?;
            conn.transaction(async |c: &mut DbConn| {
                sessions::insert(c, &session_for_task).await?;
                users::set_last_login(c, user_id, now.naive_utc()).await?;
                let event = Event::new(Action::LoginSuccess, Some(user_id))
                    .with("session_id", session_for_task.id.as_str());
                audit::record(c, event, &client_for_task, now).await
            })
            .await
        })
        .await?;

        crate::metrics::login_attempt("success");
        let mut user = user;
        user.last_login = Some(now.naive_utc());
        Ok(LoginOutcome {
            token,
            user: UserView::from((&user, backend.as_ref())),
            backend: backend_config,
        })
    }

    /// Resolves verified claims to a live session of an active user. Runs on every
    /// authenticated request: one query.
    pub async fn authenticate(&self, claims: &Claims, now: DateTime<Utc>) -> Result<Principal> {
        let user_id = claims.user_id()?;
        let mut conn = self.db().get().await?;
        let (session, user, backend) = sessions::find_live(&mut conn, &claims.sid, now.naive_utc())
            .await?
            .ok_or(Error::Unauthenticated("Session has ended; sign in again"))?;
        if session.user_id != user_id {
            return Err(Error::Unauthenticated("Invalid token"));
        }
        if !user.is_active {
            return Err(Error::Unauthenticated("Account is inactive"));
        }
        Ok(Principal {
            user,
            backend,
            session,
        })
    }

    /// Verifies a bearer token and resolves it to a principal.
    pub async fn authenticate_token(&self, token: &str, now: DateTime<Utc>) -> Result<Principal> {
        let claims = self.jwt().verify(token, now)?;
        self.authenticate(&claims, now).await
    }

    /// Issues a new token for the session behind `token`, which may have expired within the
    /// refresh window (seed 3.2.2). The session's absolute lifetime still bounds it.
    pub async fn refresh(
        &self,
        token: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken> {
        let window = self.session_policy().refresh_window.num_seconds();
        let claims = self.jwt().verify_allowing_expired(token, now, window)?;
        let principal = self.authenticate(&claims, now).await?;
        let issued = self.issue_token(&principal.user, &principal.session, now)?;

        let (db, sid, user_id, client) = (
            self.db().clone(),
            principal.session.id,
            principal.user.id,
            client.clone(),
        );
        detached(async move {
            let mut conn = db.get().await?;
            conn.transaction(async |c: &mut DbConn| {
                sessions::mark_refreshed(c, &sid, now.naive_utc()).await?;
                audit::record(
                    c,
                    Event::new(Action::TokenRefresh, Some(user_id))
                        .with("session_id", sid.as_str()),
                    &client,
                    now,
                )
                .await
            })
            .await
        })
        .await?;
        Ok(issued)
    }

    /// Ends the session behind `token` everywhere at once. A token that expired within the
    /// refresh window can still end its session.
    pub async fn logout(&self, token: &str, client: &ClientInfo, now: DateTime<Utc>) -> Result<()> {
        let window = self.session_policy().refresh_window.num_seconds();
        let claims = self.jwt().verify_allowing_expired(token, now, window)?;
        let user_id = claims.user_id()?;
        let (db, client) = (self.db().clone(), client.clone());
        detached(async move {
            let mut conn = db.get().await?;
            conn.transaction(async |c: &mut DbConn| {
                if !sessions::revoke(c, &claims.sid, now.naive_utc()).await? {
                    return Err(Error::Unauthenticated("Session has already ended"));
                }
                audit::record(
                    c,
                    Event::new(Action::Logout, Some(user_id))
                        .with("session_id", claims.sid.as_str()),
                    &client,
                    now,
                )
                .await
            })
            .await
        })
        .await
    }

    /// Signs a token for `session`, never outliving it.
    fn issue_token(
        &self,
        user: &UserRow,
        session: &SessionRow,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken> {
        let expires_at =
            (now + self.session_policy().token_lifetime).min(session.expires_at.and_utc());
        let token = self.jwt().issue(
            user.id,
            &user.username,
            &user.role,
            &session.id,
            now,
            expires_at,
        )?;
        let expires_in = i32::try_from((expires_at - now).num_seconds().max(0)).unwrap_or(i32::MAX);
        Ok(IssuedToken {
            access_token: SecretString::from(token),
            expires_in,
        })
    }

    async fn record_login_failure(
        &self,
        user_id: Option<i32>,
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
    }
}
