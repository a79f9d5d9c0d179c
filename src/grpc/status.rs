//! The one mapping from the domain error to a gRPC status. Envoy turns the code into the HTTP
//! status of SPEC 3.3 and the message into `{"detail": ...}`, so messages must be safe.
//! Follows InfluxDB IOx: one `From<Error> for Status` at the transport edge.

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
            // A well-formed request the state refuses: 409 Conflict through Envoy, not the
            // transcoder's 400 (which would call the request malformed).
            Error::FailedPrecondition(_) => {
                let mut status = Status::failed_precondition(message);
                set_http_status_hint(status.metadata_mut().as_mut(), 409);
                status
            }
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

/// Asks Envoy to answer with `code` instead of 200, for a status that depends on the outcome
/// (health's 503). Fixed success statuses (201) are the RPC table's (`grpc::access::RPCS`),
/// attached once by the access layer.
pub fn hint_http_status<T>(response: &mut tonic::Response<T>, code: u16) {
    set_http_status_hint(response.metadata_mut().as_mut(), code);
}

/// The same on raw response headers.
pub fn set_http_status_hint(headers: &mut http::HeaderMap, code: u16) {
    if let Ok(value) = http::HeaderValue::from_str(&code.to_string()) {
        headers.insert(HTTP_STATUS_HINT, value);
    }
}

/// What tonic says, as INTERNAL, when it cannot read a request message: an empty or truncated
/// frame, bytes that are not the message's protobuf (or not UTF-8 in a string field), a
/// compressed flag without `grpc-encoding`. The prefixes are tonic's and prost's own texts.
const DECODER_ERRORS: [&str; 5] = [
    "Missing request message",
    "Unexpected EOF decoding stream",
    "protocol error:",
    "failed to decode Protobuf message",
    "Error decompressing",
];

/// Turns tonic's INTERNAL for a request it could not decode into INVALID_ARGUMENT with a
/// short generic message: the client sent it, and the decoder's text is no business of theirs.
/// Such replies are trailers-only, so the status is in the response headers. The service's
/// own INTERNAL ("Internal server error") is left alone.
pub fn refuse_malformed_requests(headers: &mut http::HeaderMap) {
    if headers.get("grpc-status").is_none_or(|code| code != "13") {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else { return };
    if !DECODER_ERRORS.iter().any(|prefix| status.message().starts_with(prefix)) {
        return;
    }
    tracing::debug!(decoder = status.message(), "malformed request message");
    headers.remove("grpc-status-details-bin");
    let _ = Status::invalid_argument(MALFORMED_REQUEST).add_header(headers);
}

/// The message of INVALID_ARGUMENT for a request message that cannot be decoded.
pub const MALFORMED_REQUEST: &str = "Malformed request message";
