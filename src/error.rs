//! The one domain error. Transport code maps it to a status exactly once
//! (`grpc::status`); messages here are safe to show to clients.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field failed validation; `field` is the proto field name.
    #[error("{field}: {message}")]
    InvalidArgument { field: std::borrow::Cow<'static, str>, message: String },

    /// Unknown user or wrong password: one message for both, so it does not tell which.
    #[error("Incorrect username or password")]
    InvalidCredentials,

    /// Missing, malformed, forged, expired or revoked token, or an ended session.
    #[error("{0}")]
    Unauthenticated(&'static str),

    #[error("Account is inactive")]
    AccountInactive,

    #[error("{0}")]
    PermissionDenied(&'static str),

    /// `what` names the kind of thing, e.g. "user".
    #[error("{0} not found")]
    NotFound(&'static str),

    #[error("{field} already exists")]
    AlreadyExists { field: &'static str },

    /// The request is valid but the state forbids it (e.g. an admin deleting themselves).
    #[error("{0}")]
    FailedPrecondition(&'static str),

    /// Rate limit or throttling; the client may retry after the given time.
    #[error("{message}")]
    TooManyRequests { message: &'static str, retry_after: Duration },

    /// Too much work queued (e.g. the password-hashing queue is full): shed, retry later.
    #[error("{message}")]
    Overloaded { message: &'static str, retry_after: Duration },

    /// A write kept losing to concurrent ones (after retries); the client may retry.
    #[error("The service is busy; try again")]
    Contention,

    /// A dependency (the database) cannot serve now.
    #[error("{0}")]
    Unavailable(&'static str),

    /// Anything else. The cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), message: message.into() }
    }

    /// The same refusal for overload, in the words of the operation that was refused (the
    /// hashing pool does not know whether it was asked by a login or an account creation).
    pub fn overload_as(self, message: &'static str) -> Self {
        match self {
            Self::Overloaded { retry_after, .. } => Self::Overloaded { message, retry_after },
            other => other,
        }
    }

    pub fn internal(context: &'static str, cause: impl Into<anyhow::Error>) -> Self {
        Self::Internal(cause.into().context(context))
    }
}
