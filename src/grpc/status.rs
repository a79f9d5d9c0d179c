//! The one mapping from the domain error to a gRPC status. Envoy turns the code into the HTTP
//! status of SPEC 3.3 and the message into `{"detail": ...}`, so messages must be safe.

use tonic::{Code, Status};

use crate::error::Error;

/// Response metadata Envoy reads to set an HTTP status the gRPC code cannot express (201, 503
/// with a body).
pub const HTTP_STATUS_HINT: &str = "x-http-status";

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(message),
            Error::InvalidCredentials | Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::AccountInactive | Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::NotFound(what) => Status::not_found(capitalize(&format!("{what} not found"))),
            Error::AlreadyExists { field } => {
                Status::already_exists(format!("A user with this {field} already exists"))
            }
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::TooManyRequests { retry_after, .. } => {
                with_retry_after(Status::resource_exhausted(message), retry_after)
            }
            Error::Overloaded { retry_after, .. } => with_retry_after(Status::unavailable(message), retry_after),
            Error::Unavailable(_) | Error::Contention => {
                with_retry_after(Status::unavailable(message), std::time::Duration::from_secs(1))
            }
            Error::Internal(cause) => {
                // The cause can name tables or files: it goes to the log, never to the client.
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::new(Code::Internal, "Internal server error")
            }
        }
    }
}

fn with_retry_after(mut status: Status, after: std::time::Duration) -> Status {
    let secs = after.as_secs_f64().ceil().max(1.0).to_string();
    if let Ok(value) = secs.parse() {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// Asks Envoy to answer with `code` instead of 200.
pub fn hint_http_status<T>(response: &mut tonic::Response<T>, code: u16) {
    if let Ok(value) = code.to_string().parse() {
        response.metadata_mut().insert(HTTP_STATUS_HINT, value);
    }
}
