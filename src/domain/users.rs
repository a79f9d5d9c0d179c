//! Accounts: self-service (profile, backend, password) and administration (create, list,
//! edit, delete, reset). Admin operations take an [`Actor`] so the CLI shares the rules.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::App;
use super::audit::{Action, Event};
use super::paging::{Cursor, Listing, Page, Paged};
use super::sessions::user_subject;
use super::types::{
    Actor, Backend, BackendChange, BackendInput, BackendView, ClientInfo, NewUser, Principal, Role, Scope, UserId,
    UserPatch, UserView,
};
use super::writes::{Acting, Target};
use crate::crypto::password;
use crate::db::DbConn;
use crate::db::models::{backends, sessions, users};
use crate::error::{Error, Result};
use crate::model::{BackendRecord, NewUserRecord, UserEdit, UserWithBackend};

/// What start-up admin bootstrap did.
#[derive(Debug, PartialEq, Eq)]
pub enum BootstrapOutcome {
    Created(UserId),
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
        actor.require(Scope::UsersWrite)?;
        password::check_policy("password", new.password.expose_secret())?;
        if let Some(b) = &new.backend {
            self.check_backend_url(&b.api_base_url)?;
        }
        let hash = self
            .hasher()
            .hash(&new.password)
            .await
            .map_err(|e| e.overload_as("Too many accounts are being created at once; retry shortly"))?;
        let encrypted = new.backend.as_ref().map(|b| self.cipher().encrypt(b.bearer_token.expose_secret()));
        let target = Target { user_id: None, shrinks_admins: false };
        self.change_user(
            Acting::admin(actor),
            target,
            client,
            now,
            Box::new(move |c, _| {
                let (new, hash, encrypted) = (new.clone(), hash.clone(), encrypted.clone());
                Box::pin(async move {
                    let record = NewUserRecord {
                        username: new.username.clone(),
                        email: new.email.clone(),
                        password_hash: hash,
                        role: new.role,
                        created_at: now,
                    };
                    let user = users::insert(c, &record).await?;
                    let backend = match (&new.backend, &encrypted) {
                        (Some(b), Some(enc)) => Some(upsert_backend(c, user.id, b, enc, "", now).await?),
                        _ => None,
                    };
                    let event = Event::new(Action::UserCreate, Some(user.id))
                        .with("role", new.role.as_str())
                        .with("with_backend", backend.is_some());
                    Ok((UserView::from((&user, backend.as_ref())), event))
                })
            }),
        )
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
        self.check_backend_url(&input.api_base_url)?;
        let encrypted = self.cipher().encrypt(input.bearer_token.expose_secret());
        let user_id = principal.user.id;
        self.change_user(
            Acting::owner(principal),
            Target::user(user_id),
            client,
            now,
            Box::new(move |c, current| {
                let (input, encrypted) = (input.clone(), encrypted.clone());
                Box::pin(async move {
                    let keep_ig = current.and_then(|(_, b)| b).map(|b| b.instagram_username).unwrap_or_default();
                    let row = upsert_backend(c, user_id, &input, &encrypted, &keep_ig, now).await?;
                    let event = Event::new(Action::BackendUpdate, Some(user_id))
                        .with("api_base_url", row.api_base_url.as_str());
                    Ok((BackendView::from(&row), event))
                })
            }),
        )
        .await
    }

    /// Changes the caller's password (seed 3.3.4) and ends their other sessions. A wrong current
    /// password counts as a failed sign-in of the account (throttling, audit, alert), so this
    /// cannot be used to guess it.
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
        let user_id = principal.user.id;
        self.refuse_if_throttled(Some(user_id), &user_subject(user_id), client, now).await?;
        // The stored hash, not the cached principal's: it is compared again when writing.
        let checked_hash = {
            let mut conn = self.db().get().await?;
            let (user, _) = users::find(&mut conn, user_id)
                .await?
                .ok_or(Error::Unauthenticated("Session has ended; sign in again"))?;
            user.password_hash
        };
        let busy = "Too many password changes are in progress; retry shortly";
        if !self.hasher().verify(current, Some(&checked_hash)).await.map_err(|e| e.overload_as(busy))? {
            self.sign_in_failed(Some(user_id), &user_subject(user_id), "bad_current_password", client, now).await;
            return Err(Error::invalid("current_password", "is incorrect"));
        }
        if current.expose_secret() == new.expose_secret() {
            return Err(Error::invalid("new_password", "must differ from the current password"));
        }
        let hash = self.hasher().hash(new).await.map_err(|e| e.overload_as(busy))?;
        let keep = principal.session.id.clone();
        self.change_user(
            Acting::owner(principal),
            Target::user(user_id),
            client,
            now,
            Box::new(move |c, current| {
                let (hash, keep, checked_hash) = (hash.clone(), keep.clone(), checked_hash.clone());
                Box::pin(async move {
                    // The password verified above must still be the account's. Changes that
                    // replace it also end this session (refused above, UNAUTHENTICATED); only a
                    // re-hash at a higher cost gets here, and a retry reads the new hash.
                    if current.is_none_or(|(u, _)| u.password_hash != checked_hash) {
                        return Err(Error::Unavailable("The password changed meanwhile; try again"));
                    }
                    let edit = UserEdit { password_hash: Some(hash), ..UserEdit::at(now) };
                    users::update(c, user_id, &edit).await?;
                    let ended = sessions::revoke_all_for_user(c, user_id, Some(&keep), now).await?;
                    Ok(((), Event::new(Action::PasswordChange, Some(user_id)).with("sessions_ended", ended)))
                })
            }),
        )
        .await
    }

    /// Admin: a page of users by id, the number of users (when asked, without a page token) and
    /// the next page's token.
    pub async fn list_users(&self, actor: &Actor<'_>, page: Page) -> Result<Paged<UserView>> {
        actor.require(Scope::UsersRead)?;
        let mut conn = self.db().get().await?;
        let rows = users::list(&mut conn, page.limit + 1, page.offset, page.after.map(|a| a.id)).await?;
        let total = if page.counts_total() { Some(users::count(&mut conn).await?) } else { None };
        let views = rows.iter().map(view).collect();
        Ok(Paged::from_rows(Listing::Users, page, views, total, |u: &UserView| Cursor::id(i64::from(u.id.get()))))
    }

    /// Admin: one user.
    pub async fn get_user(&self, actor: &Actor<'_>, id: UserId) -> Result<UserView> {
        actor.require(Scope::UsersRead)?;
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
        id: UserId,
        patch: UserPatch,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<UserView> {
        actor.require(Scope::UsersWrite)?;
        let demotes = patch.role == Some(Role::User) || patch.is_active == Some(false);
        if demotes && actor.user_id() == Some(id) {
            return Err(Error::FailedPrecondition("You cannot deactivate or demote your own account"));
        }
        if let BackendChange::Set(b) = &patch.backend {
            self.check_backend_url(&b.api_base_url)?;
        }
        let encrypted = match &patch.backend {
            BackendChange::Set(b) => Some(self.cipher().encrypt(b.bearer_token.expose_secret())),
            _ => None,
        };
        let target = Target { user_id: Some(id), shrinks_admins: demotes };
        self.change_user(
            Acting::admin(actor),
            target,
            client,
            now,
            Box::new(move |c, current| {
                let (patch, encrypted) = (patch.clone(), encrypted.clone());
                Box::pin(async move {
                    let Some((before, backend)) = current else { return Err(Error::NotFound("user")) };
                    // Under the admin-set lock (taken because `demotes`): no concurrent change
                    // can remove another admin between this count and the commit.
                    if demotes && before.is_active_admin() && users::count_active_admins(c).await? <= 1 {
                        return Err(Error::FailedPrecondition(
                            "The last active admin cannot be deactivated or demoted",
                        ));
                    }
                    let changes = UserEdit {
                        email: patch.email.clone().filter(|e| *e != before.email),
                        role: patch.role.filter(|r| *r != before.role),
                        is_active: patch.is_active.filter(|a| *a != before.is_active),
                        ..UserEdit::at(now)
                    };
                    let mut changed: Vec<&str> = [
                        ("email", changes.email.is_some()),
                        ("role", changes.role.is_some()),
                        ("is_active", changes.is_active.is_some()),
                    ]
                    .into_iter()
                    .filter_map(|(name, set)| set.then_some(name))
                    .collect();
                    match (&patch.backend, &encrypted) {
                        (BackendChange::Set(b), Some(enc)) => {
                            let keep_ig = backend.map(|b| b.instagram_username).unwrap_or_default();
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
                        ended = sessions::revoke_all_for_user(c, id, None, now).await?;
                    }
                    let view = users::find(c, id).await?.as_ref().map(view).ok_or(Error::NotFound("user"))?;
                    let event =
                        Event::new(Action::UserUpdate, Some(id)).with("fields", changed).with("sessions_ended", ended);
                    Ok((view, event))
                })
            }),
        )
        .await
    }

    /// Admin: deletes a user; backend and sessions go with it, audit rows stay.
    pub async fn delete_user(
        &self,
        actor: &Actor<'_>,
        id: UserId,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<()> {
        actor.require(Scope::UsersWrite)?;
        if actor.user_id() == Some(id) {
            return Err(Error::FailedPrecondition("You cannot delete your own account"));
        }
        let target = Target { user_id: Some(id), shrinks_admins: true };
        self.change_user(
            Acting::admin(actor),
            target,
            client,
            now,
            Box::new(move |c, current| {
                Box::pin(async move {
                    let Some((user, _)) = current else { return Err(Error::NotFound("user")) };
                    if user.is_active_admin() && users::count_active_admins(c).await? <= 1 {
                        return Err(Error::FailedPrecondition("The last active admin cannot be deleted"));
                    }
                    users::delete(c, id).await?;
                    // The row is gone, so the event cannot point at it (as every earlier row about
                    // this user now does not): it names the user in its metadata.
                    let event = Event::new(Action::UserDelete, None)
                        .invalidating(id)
                        .with("deleted_user_id", id.get())
                        .with("username", user.username.as_str());
                    Ok(((), event))
                })
            }),
        )
        .await
    }

    /// Admin: sets a new password and ends every session of the user.
    pub async fn reset_password(
        &self,
        actor: &Actor<'_>,
        id: UserId,
        new: &SecretString,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<()> {
        actor.require(Scope::UsersWrite)?;
        password::check_policy("new_password", new.expose_secret())?;
        let hash = self
            .hasher()
            .hash(new)
            .await
            .map_err(|e| e.overload_as("Too many password resets are in progress; retry shortly"))?;
        self.change_user(
            Acting::admin(actor),
            Target::user(id),
            client,
            now,
            Box::new(move |c, _| {
                let hash = hash.clone();
                Box::pin(async move {
                    let edit = UserEdit { password_hash: Some(hash), ..UserEdit::at(now) };
                    users::update(c, id, &edit).await?;
                    let ended = sessions::revoke_all_for_user(c, id, None, now).await?;
                    Ok(((), Event::new(Action::PasswordReset, Some(id)).with("sessions_ended", ended)))
                })
            }),
        )
        .await
    }
}

fn view(row: &UserWithBackend) -> UserView {
    UserView::from((&row.0, row.1.as_ref()))
}

async fn upsert_backend(
    c: &mut DbConn,
    user_id: UserId,
    input: &BackendInput,
    encrypted: &str,
    keep_instagram: &str,
    now: DateTime<Utc>,
) -> Result<Backend> {
    let record = BackendRecord {
        user_id,
        instagram_username: input.instagram_username.as_deref().unwrap_or(keep_instagram).to_owned(),
        api_base_url: input.api_base_url.clone(),
        encrypted_token: encrypted.to_owned(),
        updated_at: now,
    };
    backends::upsert(c, &record).await
}
