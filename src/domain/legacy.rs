//! The seed's Python access tokens during a migration (LEGACY_JWT_SECRET_KEY): each is bound on
//! first use to a session here, whose id is derived from the token, so that logout, revocation,
//! password change and deactivation end it like any other, and Refresh exchanges it for a
//! token of this service.

use chrono::{DateTime, Utc};

use super::App;
use super::audit::{self, Action, Event};
use super::types::{ClientInfo, Session, SessionId};
use crate::crypto::jwt::Claims;
use crate::db::DbConn;
use crate::db::models::{audit as audit_rows, sessions, users};
use crate::error::{Error, Result};

/// Events after which a token issued earlier no longer starts a session: each ended the user's
/// sessions here (or may have), and the Python token was not there to be ended.
const ENDS_EARLIER_TOKENS: &[&str] =
    &["password_change", "password_reset", "session_revoke", "user_update", "user_delete"];

impl App {
    /// Binds a Python token to its session (in its own transaction), for a request that only
    /// reads.
    pub(super) async fn bind_legacy(&self, claims: &Claims, now: DateTime<Utc>) -> Result<()> {
        let (claims, lifetime) = (claims.clone(), self.session_policy().session_lifetime);
        self.db()
            .write(Box::new(move |c| {
                let claims = claims.clone();
                Box::pin(async move { bind(c, &claims, lifetime, &ClientInfo::default(), now).await })
            }))
            .await
    }
}

/// In the caller's transaction: creates the session of a Python token unless it exists (ended or
/// not: a logged-out token stays out), or unless the user's sessions were ended since the token
/// was issued. Either way the caller then looks the session up as for any token.
pub(super) async fn bind(
    c: &mut DbConn,
    claims: &Claims,
    session_lifetime: chrono::Duration,
    client: &ClientInfo,
    now: DateTime<Utc>,
) -> Result<()> {
    if !claims.legacy {
        return Ok(());
    }
    let user_id = claims.user_id()?;
    // In one order with every other change to this user: a reset that commits first is seen.
    if !users::lock(c, user_id).await? {
        return Err(Error::Unauthenticated("Invalid token"));
    }
    let issued = DateTime::from_timestamp(claims.iat, 0).ok_or(Error::Unauthenticated("Invalid token"))?;
    if audit_rows::any_since(c, user_id, ENDS_EARLIER_TOKENS, issued).await? {
        return Ok(());
    }
    let session = Session {
        id: SessionId::from(claims.sid.clone()),
        user_id,
        created_at: now,
        refreshed_at: now,
        // As if the session had started when the Python service issued the token.
        expires_at: issued + session_lifetime,
        revoked_at: None,
        ip_address: client.ip.map(|ip| ip.to_string()),
        user_agent: client.user_agent.clone(),
        // The Python service's UI already holds its backend's token; no proxy credential.
        proxy_secret_sha256: None,
    };
    if sessions::insert_if_absent(c, &session).await? {
        let event = Event::new(Action::LegacySessionBound, Some(user_id)).with("session_id", session.id.as_str());
        audit::record(c, event, client, now).await?.nothing_cached();
    }
    Ok(())
}
