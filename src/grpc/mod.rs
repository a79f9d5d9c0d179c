//! Transport: the tonic services. Each file adapts one proto service to the domain; nothing
//! here decides policy.

pub mod audit;
pub mod auth;
pub mod convert;
pub mod health;
pub mod meta;
pub mod status;
pub mod text;
pub mod user;

use chrono::Utc;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::domain::App;
use crate::domain::types::Principal;
use crate::error::Error;
pub use meta::ClientIpPolicy;

/// Rejects protected calls without a well-formed `authorization: Bearer` header before a
/// service sees them, and leaves the token in the request's extensions. Verification (JWT or
/// the verified-token cache) and the session and user checks happen in [`principal`].
#[derive(Clone, Copy, Default)]
pub struct AuthInterceptor;

/// The bearer token of a request that passed [`AuthInterceptor`].
#[derive(Clone)]
struct BearerToken(String);

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = meta::bearer_token(request.metadata())?.to_owned();
        request.extensions_mut().insert(BearerToken(token));
        Ok(request)
    }
}

/// The live principal behind a request that passed [`AuthInterceptor`].
pub async fn principal<T>(app: &App, request: &Request<T>) -> Result<std::sync::Arc<Principal>, Status> {
    let token = request.extensions().get::<BearerToken>().ok_or(Error::Unauthenticated("Not authenticated"))?;
    Ok(app.authenticate_token(&token.0, Utc::now()).await?)
}
