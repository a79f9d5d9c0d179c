//! Audit events: what happened, to whom, by whom, from where. Metadata holds structured
//! context (reasons, changed field names); never a secret.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::paging::{Cursor, Listing, Page, Paged};
use super::types::{ClientInfo, Scope, UserId};
use crate::db::DbConn;
use crate::db::models::audit;
use crate::error::Result;
pub use crate::model::{AuditEntry, AuditQuery};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    LoginSuccess,
    LoginFailed,
    Logout,
    TokenRefresh,
    PasswordChange,
    BackendUpdate,
    UserCreate,
    UserUpdate,
    UserDelete,
    PasswordReset,
    LoginThrottled,
    UserUnlock,
    SessionRevoke,
    TokensReencrypted,
    ServiceAccountCreate,
    ServiceAccountDelete,
    ApiKeyCreate,
    ApiKeyRevoke,
    ApiKeyRotate,
    /// A key whose public id exists was refused (wrong secret, ended, wrong address).
    ApiKeyRefused,
    /// The backend proxy refused a request (no or a dead credential, a host not allowed...).
    ProxyRefused,
    /// `import-seed` ran (its counts in the metadata).
    SeedImport,
    /// A Python service's token was first used and got its session here.
    LegacySessionBound,
    /// A TOTP secret was handed out for enrolment (pending until confirmed).
    MfaTotpStarted,
    /// TOTP was switched on (and recovery codes issued).
    MfaTotpConfirmed,
    /// A correct password of a user with a second factor: an mfa_token was issued.
    MfaRequired,
    /// The second step of a sign-in succeeded (method in the metadata).
    MfaSuccess,
    /// A wrong, replayed or unusable second-factor code (reason in the metadata).
    MfaFailure,
    /// A recovery code was spent.
    MfaRecoveryCodeUsed,
    /// The user removed their TOTP factor (with password and code).
    MfaTotpRemoved,
    /// The user replaced their recovery codes (with password and code).
    MfaRecoveryCodesRegenerated,
    /// An admin (or the CLI) cleared a user's factors; the user's sessions ended.
    MfaReset,
    /// The user registered a passkey.
    PasskeyRegistered,
    /// The user renamed a passkey.
    PasskeyRenamed,
    /// The user deleted a passkey.
    PasskeyDeleted,
    /// A passkey ceremony failed its checks (reason and ceremony in the metadata).
    PasskeyRefused,
}

impl Action {
    /// Whether the event changes what cached sessions hold (so replicas must drop them).
    pub fn changes_sessions(self) -> bool {
        matches!(
            self,
            Self::LoginSuccess
                | Self::Logout
                | Self::PasswordChange
                | Self::BackendUpdate
                | Self::UserUpdate
                | Self::UserDelete
                | Self::PasswordReset
                | Self::SessionRevoke
                | Self::MfaReset
        )
    }

    /// Whether the event ends, changes or creates API keys that replicas may have cached (a
    /// new key's id may be cached as unknown).
    pub fn changes_api_keys(self) -> bool {
        matches!(self, Self::ServiceAccountDelete | Self::ApiKeyCreate | Self::ApiKeyRevoke | Self::ApiKeyRotate)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoginSuccess => "login_success",
            Self::LoginFailed => "login_failed",
            Self::Logout => "logout",
            Self::TokenRefresh => "token_refresh",
            Self::PasswordChange => "password_change",
            Self::BackendUpdate => "backend_update",
            Self::UserCreate => "user_create",
            Self::UserUpdate => "user_update",
            Self::UserDelete => "user_delete",
            Self::PasswordReset => "password_reset",
            Self::LoginThrottled => "login_throttled",
            Self::UserUnlock => "user_unlock",
            Self::SessionRevoke => "session_revoke",
            Self::TokensReencrypted => "tokens_reencrypted",
            Self::ServiceAccountCreate => "service_account_create",
            Self::ServiceAccountDelete => "service_account_delete",
            Self::ApiKeyCreate => "api_key_create",
            Self::ApiKeyRevoke => "api_key_revoke",
            Self::ApiKeyRotate => "api_key_rotate",
            Self::ApiKeyRefused => "api_key_refused",
            Self::ProxyRefused => "proxy_refused",
            Self::SeedImport => "seed_import",
            Self::LegacySessionBound => "legacy_session_bound",
            Self::MfaTotpStarted => "mfa_totp_started",
            Self::MfaTotpConfirmed => "mfa_totp_confirmed",
            Self::MfaRequired => "mfa_required",
            Self::MfaSuccess => "mfa_success",
            Self::MfaFailure => "mfa_failure",
            Self::MfaRecoveryCodeUsed => "mfa_recovery_code_used",
            Self::MfaTotpRemoved => "mfa_totp_removed",
            Self::MfaRecoveryCodesRegenerated => "mfa_recovery_codes_regenerated",
            Self::PasskeyRegistered => "passkey_registered",
            Self::PasskeyRenamed => "passkey_renamed",
            Self::PasskeyDeleted => "passkey_deleted",
            Self::PasskeyRefused => "passkey_refused",
            Self::MfaReset => "mfa_reset",
        }
    }
}

/// One event about to be written.
#[derive(Debug)]
pub struct Event {
    pub action: Action,
    /// The account the event is about.
    pub user_id: Option<UserId>,
    /// Who acted, when not the user themself.
    pub actor_id: Option<UserId>,
    pub metadata: Value,
    /// The user whose cached sessions the event makes stale, if any.
    invalidates: Option<UserId>,
}

impl Event {
    pub fn new(action: Action, user_id: Option<UserId>) -> Self {
        let invalidates = user_id.filter(|_| action.changes_sessions());
        Self { action, user_id, actor_id: user_id, metadata: json!({}), invalidates }
    }

    /// An event about a user who is gone (`user_id` cannot point at them) whose cached sessions
    /// must still go.
    pub fn invalidating(mut self, user_id: UserId) -> Self {
        self.invalidates = Some(user_id);
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        if let Value::Object(map) = &mut self.metadata {
            map.insert(key.to_owned(), value.into());
        }
        self
    }
}

/// Longest user agent kept.
const USER_AGENT_MAX: usize = 512;

/// What a recorded event asks of the caches once its transaction commits: hand it to
/// [`App::committed`](super::App::committed).
#[must_use = "a committed change must reach this replica's cache (App::committed)"]
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    invalidates: Option<UserId>,
    api_keys: bool,
}

impl Recorded {
    /// For a caller whose event cannot make a cached session stale.
    pub fn nothing_cached(self) {
        debug_assert!(
            self.invalidates.is_none() && !self.api_keys,
            "a session- or key-changing event must reach the cache"
        );
    }
}

/// Writes `event` in the caller's transaction. Every state change is audited, so this is the one
/// place that decides which cached sessions it makes stale: it tells the other replicas (NOTIFY,
/// delivered on commit) and returns what this replica must drop after the commit.
pub async fn record(conn: &mut DbConn, event: Event, client: &ClientInfo, now: DateTime<Utc>) -> Result<Recorded> {
    let user_agent = client.user_agent.as_deref().map(|ua| ua.chars().take(USER_AGENT_MAX).collect::<String>());
    let recorded = Recorded { invalidates: event.invalidates, api_keys: event.action.changes_api_keys() };
    if let Some(user_id) = recorded.invalidates {
        crate::db::notify::user_changed(conn, user_id).await?;
    }
    if recorded.api_keys {
        crate::db::notify::api_keys_changed(conn).await?;
    }
    let entry = AuditEntry {
        id: 0,
        user_id: event.user_id,
        actor_id: event.actor_id,
        action: event.action.as_str().to_owned(),
        ip_address: client.ip.map(|ip| ip.to_string()),
        user_agent,
        metadata: event.metadata,
        created_at: now,
    };
    audit::insert(conn, &entry).await?;
    Ok(recorded)
}

/// Records an event outside any transaction; a failure is logged, not returned, because the
/// request it describes has already been decided.
pub async fn record_best_effort(conn: &mut DbConn, event: Event, client: &ClientInfo, now: DateTime<Utc>) {
    let action = event.action.as_str();
    match record(conn, event, client, now).await {
        Ok(recorded) => recorded.nothing_cached(),
        Err(e) => tracing::error!(action, error = ?e, "failed to write audit row"),
    }
}

impl super::App {
    /// After the transaction that recorded an event committed: drops this replica's cached
    /// sessions that the event made stale.
    pub(super) fn committed(&self, recorded: Recorded) {
        if let Some(user_id) = recorded.invalidates {
            self.cache().bump(user_id);
        }
        if recorded.api_keys {
            self.key_cache().invalidate_all();
        }
    }

    /// Admin: a page of audit rows, newest first (by time, then id, when the query bounds the
    /// time; by id otherwise), the number of matches (when asked, without a page token) and the
    /// next page's token.
    pub async fn list_audit(
        &self,
        actor: &super::types::Actor<'_>,
        filter: &AuditQuery,
        page: Page,
    ) -> crate::error::Result<Paged<AuditEntry>> {
        actor.require(Scope::AuditRead)?;
        let mut conn = self.db().get().await?;
        let listing = Listing::audit(filter.by_time());
        let after = page.after.map(|a| (a.id, a.at));
        let (rows, total) =
            audit::page(&mut conn, filter, page.limit + 1, page.offset, after, page.counts_total()).await?;
        Ok(Paged::from_rows(listing, page, rows, total, |e| Cursor { id: e.id, at: Some(e.created_at) }))
    }
}
