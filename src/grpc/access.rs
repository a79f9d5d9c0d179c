//! Who may call what, decided once for every call before any service sees it: one table of
//! access by gRPC path, and one async layer that authenticates the bearer token, checks the
//! table and hands the principal to the handler in the request's extensions. An RPC missing
//! from the table needs an admin: a new RPC is closed until someone opens it here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chrono::Utc;
use tonic::Status;
use tower::{Layer, Service};

use crate::domain::App;
use crate::domain::types::{Principal, Role};
use crate::error::Error;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (login, registration, health, reflection).
    Public,
    /// A bearer token the handler verifies itself: refresh and logout accept a token that
    /// expired within the refresh window, which no other call does.
    OwnToken,
    /// A live session of an active user.
    Session,
    /// A live session of an active admin.
    Admin,
}

/// The access of the RPC at `path` (`/package.Service/Method`).
pub fn access(path: &str) -> Access {
    const PKG: &str = "/instachatico.auth.v1.";
    if path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.") {
        return Access::Public;
    }
    let Some(rpc) = path.strip_prefix(PKG) else { return Access::Admin };
    match rpc {
        "AuthService/Login" | "AuthService/Register" | "HealthService/Check" => Access::Public,
        "AuthService/Refresh" | "AuthService/Logout" => Access::OwnToken,
        "UserService/GetMe"
        | "UserService/UpdateMyBackend"
        | "UserService/ChangeMyPassword"
        | "UserService/ListMySessions"
        | "UserService/RevokeMySession" => Access::Session,
        _ => Access::Admin,
    }
}

/// The authenticated caller of a request that passed [`AccessLayer`].
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Arc<Principal>, Status> {
    request
        .extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| Status::from(Error::Unauthenticated("Not authenticated")))
}

/// The layer applying [`access`] to every call.
#[derive(Clone)]
pub struct AccessLayer {
    app: App,
}

impl AccessLayer {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService { app: self.app.clone(), inner }
    }
}

#[derive(Clone)]
pub struct AccessService<S> {
    app: App,
    inner: S,
}

impl<S, B> Service<http::Request<B>> for AccessService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let app = self.app.clone();
        Box::pin(async move {
            let need = access(request.uri().path());
            if request.method() == http::Method::OPTIONS || need == Access::Public {
                return inner.call(request).await;
            }
            let headers = request.headers();
            let checked = async {
                let token = super::meta::bearer_from_headers(headers)?;
                if need == Access::OwnToken {
                    return Ok(None);
                }
                let principal = app.authenticate_token(token, Utc::now()).await?;
                if need == Access::Admin && principal.role() != Role::Admin {
                    return Err(Error::PermissionDenied("Admin privileges required"));
                }
                Ok(Some(principal))
            };
            match checked.await {
                Ok(Some(principal)) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Ok(None) => inner.call(request).await,
                Err(e) => Ok(Status::from(e).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_rpcs_need_an_admin() {
        assert_eq!(access("/instachatico.auth.v1.UserService/SomethingNew"), Access::Admin);
        assert_eq!(access("/other.Service/Method"), Access::Admin);
        assert_eq!(access("/instachatico.auth.v1.AuthService/Login"), Access::Public);
        assert_eq!(access("/instachatico.auth.v1.UserService/GetMe"), Access::Session);
    }
}
