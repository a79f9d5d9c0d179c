//! Session management beyond login/logout: my sessions (list, revoke one), an admin ending
//! all sessions of a user, and an admin clearing a user's login throttling.

use chrono::{DateTime, Utc};

use super::App;
use super::audit::{Action, Event};
use super::types::{Actor, ClientInfo, Principal, Scope, Session, SessionId, UserId};
use super::writes::{Acting, Target};
use crate::db::models::{sessions, throttles};
use crate::error::{Error, Result};

/// A session as its owner sees it.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub id: SessionId,
    pub created_at: DateTime<Utc>,
    pub refreshed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    /// The session of the calling token.
    pub current: bool,
}

impl SessionView {
    fn new(session: Session, current_id: &SessionId) -> Self {
        Self {
            current: session.id == *current_id,
            id: session.id,
            created_at: session.created_at,
            refreshed_at: session.refreshed_at,
            expires_at: session.expires_at,
            ip_address: session.ip_address,
            user_agent: session.user_agent,
        }
    }
}

/// The throttling subject of an account.
pub(super) fn user_subject(user_id: UserId) -> String {
    format!("user:{user_id}")
}

impl App {
    pub async fn list_my_sessions(&self, principal: &Principal, now: DateTime<Utc>) -> Result<Vec<SessionView>> {
        let mut conn = self.db().get().await?;
        let rows = sessions::list_live_for_user(&mut conn, principal.user.id, now).await?;
        Ok(rows.into_iter().map(|row| SessionView::new(row, &principal.session.id)).collect())
    }

    /// Ends one of the caller's own sessions.
    pub async fn revoke_my_session(
        &self,
        principal: &Principal,
        session_id: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let session_id = session_id.trim();
        if session_id.is_empty() {
            return Err(Error::invalid("session_id", "is required"));
        }
        let (user_id, sid) = (principal.user.id, SessionId::from(session_id.to_owned()));
        self.change_user(
            Acting::owner(principal),
            Target::user(user_id),
            client,
            now,
            Box::new(move |c, _| {
                let sid = sid.clone();
                Box::pin(async move {
                    if !sessions::revoke_owned(c, &sid, user_id, now).await? {
                        return Err(Error::NotFound("session"));
                    }
                    Ok(((), Event::new(Action::SessionRevoke, Some(user_id)).with("session_id", sid.as_str())))
                })
            }),
        )
        .await
    }

    /// Admin: ends every session of a user; returns how many were live.
    pub async fn revoke_user_sessions(
        &self,
        actor: &Actor<'_>,
        user_id: UserId,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        actor.require(Scope::UsersWrite)?;
        self.change_user(
            Acting::admin(actor),
            Target::user(user_id),
            client,
            now,
            Box::new(move |c, _| {
                Box::pin(async move {
                    let ended = sessions::revoke_all_for_user(c, user_id, None, now).await?;
                    let event = Event::new(Action::SessionRevoke, Some(user_id))
                        .with("sessions_ended", ended)
                        .with("all", true);
                    Ok((ended, event))
                })
            }),
        )
        .await
    }

    /// Admin: forgets a user's failed logins and cool-downs from every address.
    pub async fn unlock_user(
        &self,
        actor: &Actor<'_>,
        user_id: UserId,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        actor.require(Scope::UsersWrite)?;
        self.change_user(
            Acting::admin(actor),
            Target::user(user_id),
            client,
            now,
            Box::new(move |c, _| {
                Box::pin(async move {
                    let cleared = throttles::clear_subject(c, &user_subject(user_id)).await?;
                    Ok((cleared, Event::new(Action::UserUnlock, Some(user_id)).with("addresses_cleared", cleared)))
                })
            }),
        )
        .await
    }
}
