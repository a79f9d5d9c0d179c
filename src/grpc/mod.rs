//! Transport: the tonic services. Each file adapts one proto service to the domain; nothing
//! here decides policy.

pub mod audit;
pub mod auth;
pub mod convert;
pub mod health;
pub mod meta;
pub mod status;
pub mod user;

use chrono::Utc;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::crypto::jwt::Claims;
use crate::domain::App;
use crate::domain::types::Principal;
use crate::error::Error;
pub use meta::ClientIpPolicy;

/// Verifies the bearer JWT (CPU only) before a protected service sees the request and leaves
/// the claims in the request's extensions. Session and user checks happen in the handler,
/// which can reach the database.
#[derive(Clone)]
pub struct AuthInterceptor {
    app: App,
}

impl AuthInterceptor {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let claims = meta::bearer_token(request.metadata()).and_then(|t| self.app.jwt().verify(t, Utc::now()))?;
        request.extensions_mut().insert(claims);
        Ok(request)
    }
}

/// The live principal behind a request that passed [`AuthInterceptor`].
pub async fn principal<T>(app: &App, request: &Request<T>) -> Result<std::sync::Arc<Principal>, Status> {
    let claims = request.extensions().get::<Claims>().ok_or(Error::Unauthenticated("Not authenticated"))?;
    Ok(app.authenticate(claims, Utc::now()).await?)
}
