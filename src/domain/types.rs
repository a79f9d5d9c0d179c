//! Domain values: who is calling, from where, and the user views the transports render.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::error::{Error, Result};
pub use crate::model::{
    ApiKey, AuditQuery, Backend, Role, Scope, ServiceAccount, ServiceAccountId, Session, SessionId, User, UserId,
};

/// Where a request came from, for audit rows (and rate limits).
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

/// An authenticated caller: a live session of an active user.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub backend: Option<Backend>,
    pub session: Session,
}

impl Principal {
    pub fn role(&self) -> Role {
        self.user.role
    }
}

/// An authenticated service: a live API key of a service account, used from an address its
/// allow-list admits.
#[derive(Debug, Clone)]
pub struct ServiceCaller {
    pub key: ApiKey,
}

impl ServiceCaller {
    pub fn has(&self, scope: Scope) -> bool {
        self.key.scopes.contains(&scope)
    }
}

/// Who performs an administrative action.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// A signed-in user (must be an admin for admin actions).
    User(&'a Principal),
    /// A service with an API key: only what its scopes allow.
    Service(&'a ServiceCaller),
    /// The operator at the CLI or the start-up bootstrap.
    System(&'static str),
}

impl Actor<'_> {
    /// Admin actions only a person may take (managing service accounts and their keys).
    pub fn require_admin(&self) -> Result<()> {
        match self {
            Self::User(p) if p.role() != Role::Admin => Err(Error::PermissionDenied("Admin privileges required")),
            Self::Service(_) => Err(Error::PermissionDenied("This call needs an admin's session, not an API key")),
            _ => Ok(()),
        }
    }

    /// An admin action a service may also take with `scope`.
    pub fn require(&self, scope: Scope) -> Result<()> {
        match self {
            Self::Service(caller) if !caller.has(scope) => Err(Error::PermissionDenied("API key lacks the scope")),
            Self::Service(_) => Ok(()),
            _ => self.require_admin(),
        }
    }

    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Self::User(p) => Some(p.user.id),
            Self::Service(_) | Self::System(_) => None,
        }
    }

    /// How a system actor came in (`cli`, `bootstrap`), for audit metadata.
    pub fn via(&self) -> Option<&'static str> {
        match self {
            Self::System(via) => Some(via),
            Self::User(_) | Self::Service(_) => None,
        }
    }
}

/// A backend to store for a user (validated).
#[derive(Debug, Clone)]
pub struct BackendInput {
    pub api_base_url: String,
    pub bearer_token: SecretString,
    /// `None` keeps the stored value (or "" for a new backend).
    pub instagram_username: Option<String>,
}

/// A user to create (validated, except the password policy which the domain applies).
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub email: String,
    pub password: SecretString,
    pub role: Role,
    pub backend: Option<BackendInput>,
}

#[derive(Debug, Clone, Default)]
pub enum BackendChange {
    #[default]
    Keep,
    Set(BackendInput),
    Remove,
}

/// An admin's edit of a user; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub email: Option<String>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
    pub backend: BackendChange,
}

/// A user as the API shows it: no password hash, no backend token.
#[derive(Debug, Clone)]
pub struct UserView {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub role: Role,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login: Option<DateTime<Utc>>,
    pub backend: Option<BackendView>,
}

#[derive(Debug, Clone)]
pub struct BackendView {
    pub api_base_url: String,
    pub instagram_username: String,
    pub updated_at: DateTime<Utc>,
}

impl UserView {
    pub fn instagram_username(&self) -> &str {
        self.backend.as_ref().map_or("", |b| b.instagram_username.as_str())
    }
}

impl From<&Backend> for BackendView {
    fn from(b: &Backend) -> Self {
        Self {
            api_base_url: b.api_base_url.clone(),
            instagram_username: b.instagram_username.clone(),
            updated_at: b.updated_at,
        }
    }
}

impl From<(&User, Option<&Backend>)> for UserView {
    fn from((u, b): (&User, Option<&Backend>)) -> Self {
        Self {
            id: u.id,
            username: u.username.clone(),
            email: u.email.clone(),
            role: u.role,
            is_active: u.is_active,
            created_at: u.created_at,
            updated_at: u.updated_at,
            last_login: u.last_login,
            backend: b.map(BackendView::from),
        }
    }
}

/// What a successful login hands back.
#[derive(Debug)]
pub struct LoginOutcome {
    pub token: IssuedToken,
    pub user: UserView,
    /// The backend URL and its decrypted bearer token, when the user has a backend.
    /// In proxy mode: the backend URL is the proxy's and the token a proxy credential.
    pub backend: Option<(String, SecretString)>,
    /// The proxy credential to set as a cookie too (BACKEND_PROXY_COOKIE).
    pub proxy_cookie: Option<SecretString>,
}

/// What a correct password leads to.
#[derive(Debug)]
pub enum SignIn {
    /// A session: the user has no second factor.
    Session(Box<LoginOutcome>),
    /// The password was right; the sign-in completes with a second factor (VerifyMfa).
    MfaRequired { mfa_token: SecretString, methods: Vec<&'static str> },
    /// The password was right, but this admin must enrol a second factor first
    /// (MFA_REQUIRED_FOR_ADMINS): the token only serves TOTP enrolment.
    EnrollmentRequired { mfa_token: SecretString },
}

#[derive(Debug)]
pub struct IssuedToken {
    pub access_token: SecretString,
    /// Seconds until the token expires.
    pub expires_in: i32,
}
