//! The service's vocabulary: ids, roles and the records the rules reason about. A leaf: storage
//! builds these from its rows (`db::models`), the domain decides with them and transports render
//! them. Nothing here knows a database or a wire format.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// A user's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub i32);

impl UserId {
    pub fn get(self) -> i32 {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A session's id (a random UUID, named in every token of the session).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for SessionId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }

    /// Parses a role from a request; `field` names the request field in the error.
    pub fn parse(field: &'static str, value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "admin" => Ok(Self::Admin),
            "user" => Ok(Self::User),
            _ => Err(Error::invalid(field, "must be \"admin\" or \"user\"")),
        }
    }
}

/// An account as stored, password hash included (never rendered).
#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login: Option<DateTime<Utc>>,
}

impl User {
    pub fn is_active_admin(&self) -> bool {
        self.is_active && self.role == Role::Admin
    }
}

/// A user's backend as stored: its bearer token still encrypted.
#[derive(Debug, Clone)]
pub struct Backend {
    pub user_id: UserId,
    pub instagram_username: String,
    pub api_base_url: String,
    pub encrypted_token: String,
    pub updated_at: DateTime<Utc>,
}

/// A user and their backend, if they have one.
pub type UserWithBackend = (User, Option<Backend>);

/// A session, live or ended.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: DateTime<Utc>,
    pub refreshed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    /// SHA-256 (hex) of the secret of the session's backend-proxy credential, when it has one.
    pub proxy_secret_sha256: Option<String>,
}

/// A user to store.
#[derive(Debug, Clone)]
pub struct NewUserRecord {
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// An edit of a stored user; `None` leaves a field as it is.
#[derive(Debug, Clone)]
pub struct UserEdit {
    pub email: Option<String>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
    pub password_hash: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl UserEdit {
    pub fn at(updated_at: DateTime<Utc>) -> Self {
        Self { email: None, role: None, is_active: None, password_hash: None, updated_at }
    }
}

/// A backend to store for a user (replacing any other).
#[derive(Debug, Clone)]
pub struct BackendRecord {
    pub user_id: UserId,
    pub instagram_username: String,
    pub api_base_url: String,
    pub encrypted_token: String,
    pub updated_at: DateTime<Utc>,
}

/// Which audit entries to list; `None` matches anything.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub user_id: Option<UserId>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl AuditQuery {
    /// Whether the query bounds the time: its rows are then listed by time, then id (an index
    /// on both reads a page at any distance from now), not by id alone.
    pub fn by_time(&self) -> bool {
        self.since.is_some() || self.until.is_some()
    }
}

/// An audit entry, stored or about to be (`id` is 0 until stored).
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub id: i64,
    /// The account the entry is about.
    pub user_id: Option<UserId>,
    /// Who acted, when not the user themself.
    pub actor_id: Option<UserId>,
    pub action: String,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// What an API key may do: a closed list, mapped to RPCs by the access table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Token introspection.
    Introspect,
    /// List and read users.
    UsersRead,
    /// Create, edit, delete users; reset passwords; end sessions; unlock.
    UsersWrite,
    /// Read the audit log.
    AuditRead,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Self::Introspect, Self::UsersRead, Self::UsersWrite, Self::AuditRead];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Introspect => "introspect",
            Self::UsersRead => "users:read",
            Self::UsersWrite => "users:write",
            Self::AuditRead => "audit:read",
        }
    }

    /// The scope named `value` exactly (scopes are case-sensitive, as in OAuth).
    pub fn from_name(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service account's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAccountId(pub i32);

impl ServiceAccountId {
    pub fn get(self) -> i32 {
        self.0
    }
}

/// An internal service that holds API keys.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    pub id: ServiceAccountId,
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

/// An API key as stored: the SHA-256 of its secret, never the secret.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// The public id (the part of the key after `iak_`, before the secret).
    pub id: String,
    pub service_account_id: ServiceAccountId,
    pub name: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub scopes: Vec<Scope>,
    /// Empty: any address.
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Not revoked and not expired at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

/// A user's TOTP factor as stored: the secret still encrypted.
#[derive(Debug, Clone)]
pub struct TotpFactor {
    pub user_id: UserId,
    pub secret_encrypted: String,
    /// `None` while enrolment is pending.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// The newest RFC 6238 time step accepted (0: none yet).
    pub last_used_step: i64,
}

/// The challenge between a correct password and the second step of a sign-in.
#[derive(Debug, Clone)]
pub struct MfaChallenge {
    pub token_sha256: String,
    pub user_id: UserId,
    pub ip_address: String,
    pub password_sha256: String,
    /// An enrolment grant (MFA_REQUIRED_FOR_ADMINS), not the second step of a sign-in.
    pub enrolment: bool,
    pub failures: i32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// A registered passkey (WebAuthn credential) of a user.
#[derive(Debug, Clone)]
pub struct PasskeyRecord {
    pub id: i32,
    pub user_id: UserId,
    /// The credential id, base64url.
    pub credential_id: String,
    /// The UUID the authenticator holds as the user's id.
    pub user_handle: String,
    /// webauthn-rs's `Passkey` as JSON: public key and counter.
    pub passkey_json: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A WebAuthn ceremony between its start and its finish.
#[derive(Clone)]
pub struct PasskeyCeremony {
    pub token_sha256: String,
    /// "register", "second_factor" or "passwordless".
    pub purpose: String,
    pub user_id: Option<UserId>,
    pub mfa_token_sha256: Option<String>,
    pub ip_address: String,
    /// webauthn-rs's ceremony state as JSON (holds the challenge).
    pub state_json: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for PasskeyCeremony {
    /// Without the state.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasskeyCeremony")
            .field("purpose", &self.purpose)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}
