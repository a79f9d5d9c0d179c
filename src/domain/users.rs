//! Accounts: self-service (profile, backend, password) and administration (create, list,
//! edit, delete, reset). Admin operations take an [`Actor`] so the CLI shares the rules.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::App;
use super::audit::{self, Action, Event};
use super::types::{
    Actor, BackendChange, BackendInput, BackendView, ClientInfo, NewUser, Principal, Role, UserPatch, UserView,
};
use crate::crypto::password;
use crate::db::models::backends::{self, NewBackendRow};
use crate::db::models::users::{self, NewUserRow, UserChanges};
use crate::db::models::{UserWithBackend, sessions};
use crate::db::{DbConn, detached};
use crate::error::{Error, Result};

/// What start-up admin bootstrap did.
#[derive(Debug, PartialEq, Eq)]
pub enum BootstrapOutcome {
    Created(i32),
    AlreadyExists,
}

impl App {
    pub fn me(&self, principal: &Principal) -> UserView {
        UserView::from((&principal.user, principal.backend.as_ref()))
    }

    /// Creates a user (admin, CLI, or bootstrap).
    pub async fn create_user(
        &self,
        actor: &Actor<'_>,
        new: NewUser,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<UserView> {
        actor.require_admin()?;
        password::check_policy("password", new.password.expose_secret())?;
        let hash = self.hasher().hash(&new.password).await?;
        let encrypted = new.backend.as_ref().map(|b| self.cipher().encrypt(b.bearer_token.expose_secret()));
        let (db, client, actor_id, via) = (self.db().clone(), client.clone(), actor.user_id(), actor.via());
        detached(async move {
            let mut conn = db.get().await?;
            conn.transaction(async |c: &mut DbConn| {
                let user = users::insert(
                    c,
                    &NewUserRow {
                        username: &new.username,
                        email: &new.email,
                        password_hash: &hash,
                        role: new.role.as_str(),
                        is_active: true,
                        created_at: now.naive_utc(),
                        updated_at: now.naive_utc(),
                    },
                )
                .await?;
                let backend = match (&new.backend, &encrypted) {
                    (Some(b), Some(enc)) => Some(upsert_backend(c, user.id, b, enc, "", now).await?),
                    _ => None,
                };
                let event = admin_event(Action::UserCreate, Some(user.id), actor_id, via)
                    .with("role", new.role.as_str())
                    .with("with_backend", backend.is_some());
                audit::record(c, event, &client, now).await?;
                Ok(UserView::from((&user, backend.as_ref())))
            })
            .await
        })
        .await
    }

    /// Self-registration (ALLOW_REGISTRATION): a plain user without a backend, under the same
    /// password policy and per-address rate limit as login.
    pub async fn register(&self, new: NewUser, client: &ClientInfo, now: DateTime<Utc>) -> Result<UserView> {
        if !self.security().allow_registration {
            return Err(Error::PermissionDenied("Registration is disabled; ask an administrator for an account"));
        }
        self.check_login_rate(client.ip, now).await?;
        let new = NewUser { role: Role::User, backend: None, ..new };
        self.create_user(&Actor::System("register"), new, client, now).await
    }

    /// Creates the first admin from ADMIN_* settings unless that username exists.
    pub async fn bootstrap_admin(
        &self,
        username: &str,
        email: &str,
        password: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<BootstrapOutcome> {
        let username = super::validate::username(username)?;
        let email = super::validate::email(email)?;
        let mut conn = self.db().get().await?;
        if users::find_by_login(&mut conn, &username).await?.is_some() {
            return Ok(BootstrapOutcome::AlreadyExists);
        }
        drop(conn);
        let new = NewUser { username, email, password: password.clone(), role: Role::Admin, backend: None };
        match self.create_user(&Actor::System("bootstrap"), new, &ClientInfo::default(), now).await {
            Ok(user) => Ok(BootstrapOutcome::Created(user.id)),
            // Another replica created it at the same moment.
            Err(Error::AlreadyExists { field: "username" }) => Ok(BootstrapOutcome::AlreadyExists),
            Err(e) => Err(e),
        }
    }

    /// Sets the caller's backend (seed 3.3.3).
    pub async fn update_my_backend(
        &self,
        principal: &Principal,
        input: BackendInput,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<BackendView> {
        let encrypted = self.cipher().encrypt(input.bearer_token.expose_secret());
        let keep_ig = principal.backend.as_ref().map(|b| b.instagram_username.clone()).unwrap_or_default();
        let (db, client, user_id) = (self.db().clone(), client.clone(), principal.user.id);
        let result = detached(async move {
            let mut conn = db.get().await?;
            conn.transaction(async |c: &mut DbConn| {
                let row = upsert_backend(c, user_id, &input, &encrypted, &keep_ig, now).await?;
                let event =
                    Event::new(Action::BackendUpdate, Some(user_id)).with("api_base_url", row.api_base_url.as_str());
                audit::record(c, event, &client, now).await?;
                Ok(BackendView::from(&row))
            })
            .await
        })
        .await;
        self.after_write(principal.user.id, result)
    }

    /// Changes the caller's password (seed 3.3.4) and ends their other sessions.
    pub async fn change_my_password(
        &self,
        principal: &Principal,
        current: &SecretString,
        new: &SecretString,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if current.expose_secret().is_empty() {
            return Err(Error::invalid("current_password", "is required"));
        }
        password::check_policy("new_password", new.expose_secret())?;
        if !self.hasher().verify(current, Some(&principal.user.password_hash)).await? {
            return Err(Error::invalid("current_password", "is incorrect"));
        }
        if current.expose_secret() == new.expose_secret() {
            return Err(Error::invalid("new_password", "must differ from the current password"));
        }
        let hash = self.hasher().hash(new).await?;
        let (db, client, user_id, keep) =
            (self.db().clone(), client.clone(), principal.user.id, principal.session.id.clone());
        let result = detached(async move {
            let mut conn = db.get().await?;
            conn.transaction(async |c: &mut DbConn| {
                let changes =
                    UserChanges { password_hash: Some(hash), updated_at: Some(now.naive_utc()), ..Default::default() };
                users::update(c, user_id, &changes).await?;
                let ended = sessions::revoke_all_for_user(c, user_id, Some(&keep), now.naive_utc()).await?;
                audit::record(
                    c,
                    Event::new(Action::PasswordChange, Some(user_id)).with("sessions_ended", ended),
                    &client,
                    now,
                )
                .await
            })
            .await
        })
        .await;
        self.after_write(principal.user.id, result)
    }

    /// Admin: a page of users by id, and the total count.
    pub async fn list_users(&self, actor: &Actor<'_>, limit: i64, offset: i64) -> Result<(Vec<UserView>, i64)> {
        actor.require_admin()?;
        let (limit, offset) = super::page(limit, offset)?;
        let mut conn = self.db().get().await?;
        let rows = users::list(&mut conn, limit, offset).await?;
        let total = users::count(&mut conn).await?;
        Ok((rows.iter().map(view).collect(), total))
    }

    /// Admin: one user.
    pub async fn get_user(&self, actor: &Actor<'_>, id: i32) -> Result<UserView> {
        actor.require_admin()?;
        let mut conn = self.db().get().await?;
        users::find(&mut conn, id).await?.as_ref().map(view).ok_or(Error::NotFound("user"))
    }

    /// Finds a user by username or email (CLI).
    pub async fn find_user(&self, login: &str) -> Result<UserView> {
        let mut conn = self.db().get().await?;
        users::find_by_login(&mut conn, login).await?.as_ref().map(view).ok_or(Error::NotFound("user"))
    }

    /// Admin: edits email, role, active flag and backend. Deactivation ends every session.
    pub async fn update_user(
        &self,
        actor: &Actor<'_>,
        id: i32,
        patch: UserPatch,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<UserView> {
        actor.require_admin()?;
        let demotes = patch.role == Some(Role::User) || patch.is_active == Some(false);
        if demotes && actor.user_id() == Some(id) {
            return Err(Error::FailedPrecondition("You cannot deactivate or demote your own account"));
        }
        let encrypted = match &patch.backend {
            BackendChange::Set(b) => Some(self.cipher().encrypt(b.bearer_token.expose_secret())),
            _ => None,
        };
        let (db, client, actor_id, via) = (self.db().clone(), client.clone(), actor.user_id(), actor.via());
        let result = detached(async move {
            let mut conn = db.get().await?;
            conn.transaction(async |c: &mut DbConn| {
                let (before, _) = users::find(c, id).await?.ok_or(Error::NotFound("user"))?;
                if demotes && before.role == "admin" && before.is_active && users::count_active_admins(c).await? <= 1 {
                    return Err(Error::FailedPrecondition("The last active admin cannot be deactivated or demoted"));
                }
                let mut changed: Vec<&str> = Vec::new();
                let changes = UserChanges {
                    email: patch.email.clone().filter(|e| *e != before.email),
                    role: patch.role.map(|r| r.as_str().to_owned()).filter(|r| *r != before.role),
                    is_active: patch.is_active.filter(|a| *a != before.is_active),
                    password_hash: None,
                    updated_at: Some(now.naive_utc()),
                };
                for (name, set) in [
                    ("email", changes.email.is_some()),
                    ("role", changes.role.is_some()),
                    ("is_active", changes.is_active.is_some()),
                ] {
                    if set {
                        changed.push(name);
                    }
                }
                match (&patch.backend, &encrypted) {
                    (BackendChange::Set(b), Some(enc)) => {
                        let keep_ig =
                            backends::find_for_user(c, id).await?.map(|b| b.instagram_username).unwrap_or_default();
                        upsert_backend(c, id, b, enc, &keep_ig, now).await?;
                        changed.push("backend");
                    }
                    (BackendChange::Remove, _) if backends::delete_for_user(c, id).await? => {
                        changed.push("backend_removed");
                    }
                    _ => {}
                }
                users::update(c, id, &changes).await?;
                let mut ended = 0;
                if changes.is_active == Some(false) {
                    ended = sessions::revoke_all_for_user(c, id, None, now.naive_utc()).await?;
                }
                let event = admin_event(Action::UserUpdate, Some(id), actor_id, via)
                    .with("fields", changed)
                    .with("sessions_ended", ended);
                audit::record(c, event, &client, now).await?;
                users::find(c, id).await?.as_ref().map(view).ok_or(Error::NotFound("user"))
            })
            .await
        })
        .await;
        self.after_write(id, result)
    }

    /// Admin: deletes a user; backend and sessions go with it, audit rows stay.
    pub async fn delete_user(&self, actor: &Actor<'_>, id: i32, client: &ClientInfo, now: DateTime<Utc>) -> Result<()> {
        actor.require_admin()?;
        if actor.user_id() == Some(id) {
            return Err(Error::FailedPrecondition("You cannot delete your own account"));
        }
        let (db, client, actor_id, via) = (self.db().clone(), client.clone(), actor.user_id(), actor.via());
        let result = detached(async move {
            let mut conn = db.get().await?;
            conn.transaction(async |c: &mut DbConn| {
                let (user, _) = users::find(c, id).await?.ok_or(Error::NotFound("user"))?;
                if user.role == "admin" && user.is_active && users::count_active_admins(c).await? <= 1 {
                    return Err(Error::FailedPrecondition("The last active admin cannot be deleted"));
                }
                // Written first, while the row it points to exists; the delete then sets it NULL.
                let event =
                    admin_event(Action::UserDelete, Some(id), actor_id, via).with("username", user.username.as_str());
                audit::record(c, event, &client, now).await?;
                users::delete(c, id).await?;
                Ok(())
            })
            .await
        })
        .await;
        self.after_write(id, result)
    }

    /// Admin: sets a new password and ends every session of the user.
    pub async fn reset_password(
        &self,
        actor: &Actor<'_>,
        id: i32,
        new: &SecretString,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<()> {
        actor.require_admin()?;
        password::check_policy("new_password", new.expose_secret())?;
        let hash = self.hasher().hash(new).await?;
        self.admin_write(actor, id, client, now, move |c| {
            Box::pin(async move {
                let changes =
                    UserChanges { password_hash: Some(hash), updated_at: Some(now.naive_utc()), ..Default::default() };
                users::update(c, id, &changes).await?;
                let ended = sessions::revoke_all_for_user(c, id, None, now.naive_utc()).await?;
                Ok(((), Event::new(Action::PasswordReset, Some(id)).with("sessions_ended", ended)))
            })
        })
        .await
    }
}

fn view(row: &UserWithBackend) -> UserView {
    UserView::from((&row.0, row.1.as_ref()))
}

/// The event for an admin action, from values that can move into a detached task.
fn admin_event(action: Action, user_id: Option<i32>, actor_id: Option<i32>, via: Option<&'static str>) -> Event {
    let mut event = Event::new(action, user_id);
    event.actor_id = actor_id;
    if let Some(via) = via {
        event = event.with("via", via);
    }
    event
}

async fn upsert_backend(
    c: &mut DbConn,
    user_id: i32,
    input: &BackendInput,
    encrypted: &str,
    keep_instagram: &str,
    now: DateTime<Utc>,
) -> Result<crate::db::models::BackendRow> {
    let instagram = input.instagram_username.as_deref().unwrap_or(keep_instagram);
    backends::upsert(
        c,
        &NewBackendRow {
            user_id,
            instagram_username: instagram,
            api_base_url: &input.api_base_url,
            bearer_token_encrypted: encrypted,
            is_active: true,
            created_at: now.naive_utc(),
            updated_at: now.naive_utc(),
        },
    )
    .await
}
