//! The one write path for changes to a user: every change to one user's credentials, role,
//! activation, backend or sessions runs through [`App::change_user`], which makes them happen in
//! one order and re-checks, inside the transaction that writes, the facts the change relies on.
//!
//! Why it holds under any interleaving:
//! - On PostgreSQL each such transaction first locks the rows of the acting user and of the
//!   user it changes (always in ascending id order, so two transactions cannot wait on each
//!   other). READ COMMITTED then shows every later statement of the transaction what the
//!   previous holder of the lock committed: a session revoked by a reset, a role taken away.
//! - Changes that could leave no active admin (demote, deactivate, delete) first take one
//!   advisory lock, so their "is another active admin left?" checks run one after the other
//!   and no write skew can remove the last two admins at once.
//! - On SQLite every write transaction begins IMMEDIATE and holds the only write lock.
//! - A transaction that still loses (a deadlock or serialization failure) is retried from the
//!   start a bounded number of times (`DbPool::write`), then answered 503 with Retry-After.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;

use super::App;
use super::audit::{self, Event};
use super::types::{Actor, ClientInfo, Role, ServiceAccountId, SessionId, UserId};
use crate::db::DbConn;
use crate::db::models::{api_keys, mfa, sessions, users};
use crate::error::{Error, Result};
use crate::model::UserWithBackend;

/// Who makes a change, in a form a transaction can re-check (and own across retries).
#[derive(Debug, Clone)]
pub(super) enum Acting {
    /// A signed-in user through one session; `admin` when the change needs an admin.
    Session { user_id: UserId, session_id: SessionId, admin: bool },
    /// A service through one API key (its scope already checked).
    Service { key_id: String, account: ServiceAccountId },
    /// The operator at the CLI, start-up bootstrap, or self-registration.
    System(&'static str),
    /// An admin enrolling a second factor with the mfa_token MFA_REQUIRED_FOR_ADMINS hands out
    /// instead of a session (its SHA-256).
    Enrolment { user_id: UserId, token_sha256: String },
}

impl Acting {
    /// An admin action by `actor`.
    pub(super) fn admin(actor: &Actor<'_>) -> Self {
        match actor {
            Actor::User(p) => Self::Session { user_id: p.user.id, session_id: p.session.id.clone(), admin: true },
            Actor::Service(caller) => {
                Self::Service { key_id: caller.key.id.clone(), account: caller.key.service_account_id }
            }
            Actor::System(via) => Self::System(via),
        }
    }

    /// A user acting on their own account through the session of `principal`.
    pub(super) fn owner(principal: &super::types::Principal) -> Self {
        Self::Session { user_id: principal.user.id, session_id: principal.session.id.clone(), admin: false }
    }

    pub(super) fn user_id(&self) -> Option<UserId> {
        match self {
            Self::Session { user_id, .. } | Self::Enrolment { user_id, .. } => Some(*user_id),
            Self::Service { .. } | Self::System(_) => None,
        }
    }

    /// Inside the transaction, after the locks: the acting session is still live, its user
    /// active, and an admin when the change needs one; or the acting API key still live (a
    /// revocation that committed first wins: it locks the same account row).
    pub(super) async fn recheck(&self, c: &mut DbConn, now: DateTime<Utc>) -> Result<()> {
        if let Self::Service { key_id, account } = self {
            api_keys::lock_account(c, *account).await?;
            let live = api_keys::find_key(c, key_id).await?.is_some_and(|k| k.is_live(now));
            return if live { Ok(()) } else { Err(Error::Unauthenticated("API key has been revoked or has expired")) };
        }
        if let Self::Enrolment { user_id, token_sha256 } = self {
            let refused = Error::Unauthenticated(super::mfa::TOKEN_REFUSED);
            let live = mfa::find_challenge(c, token_sha256).await?.is_some_and(|ch| {
                ch.enrolment && ch.user_id == *user_id && ch.ended_at.is_none() && ch.expires_at > now
            });
            let active = users::find(c, *user_id).await?.is_some_and(|(u, _)| u.is_active);
            return if live && active { Ok(()) } else { Err(refused) };
        }
        let Self::Session { user_id, session_id, admin } = self else { return Ok(()) };
        let ended = Error::Unauthenticated("Session has ended; sign in again");
        let (session, user, _) = sessions::find_live(c, session_id, now).await?.ok_or(ended)?;
        if session.user_id != *user_id || !user.is_active {
            return Err(Error::Unauthenticated("Session has ended; sign in again"));
        }
        if *admin && user.role != Role::Admin {
            return Err(Error::PermissionDenied("Admin privileges required"));
        }
        Ok(())
    }
}

/// What a change is about and what it must lock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target {
    /// The user changed (must exist); `None` for a change that creates one.
    pub user_id: Option<UserId>,
    /// The change may reduce the set of active admins.
    pub shrinks_admins: bool,
}

impl Target {
    pub(super) fn user(user_id: UserId) -> Self {
        Self { user_id: Some(user_id), shrinks_admins: false }
    }
}

/// The change itself: given the locked, current row of the target (if any), it writes and
/// returns its result and the audit event to record. Called again if the transaction is retried.
pub(super) type ChangeFn<T> =
    Box<dyn for<'c> Fn(&'c mut DbConn, Option<UserWithBackend>) -> BoxFuture<'c, Result<(T, Event)>> + Send + Sync>;

impl App {
    /// Runs one change to a user as described in the module docs and records its audit event (with
    /// the acting user), which decides the cached sessions the change makes stale.
    pub(super) async fn change_user<T: Send + 'static>(
        &self,
        acting: Acting,
        target: Target,
        client: &ClientInfo,
        now: DateTime<Utc>,
        change: ChangeFn<T>,
    ) -> Result<T> {
        let (client, change) = (client.clone(), std::sync::Arc::new(change));
        let (value, recorded) = self
            .db()
            .write(Box::new(move |c| {
                let (acting, client, change) = (acting.clone(), client.clone(), std::sync::Arc::clone(&change));
                Box::pin(async move {
                    if target.shrinks_admins {
                        users::lock_admin_set(c).await?;
                    }
                    let mut ids: Vec<UserId> = acting.user_id().into_iter().chain(target.user_id).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    for id in ids {
                        users::lock(c, id).await?;
                    }
                    acting.recheck(c, now).await?;
                    let row = match target.user_id {
                        Some(id) => Some(users::find(c, id).await?.ok_or(Error::NotFound("user"))?),
                        None => None,
                    };
                    let (value, mut event) = change(c, row).await?;
                    if let Acting::Session { user_id, admin: true, .. } = acting {
                        event.actor_id = Some(user_id);
                    }
                    match &acting {
                        Acting::System(via) => event = event.with("via", *via),
                        Acting::Service { key_id, account } => {
                            event.actor_id = None;
                            event = event.with("api_key_id", key_id.as_str()).with("service_account_id", account.get());
                        }
                        Acting::Session { .. } | Acting::Enrolment { .. } => {}
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
