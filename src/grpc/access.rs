//! What the service states about each RPC, once: one table by gRPC path of who may call it,
//! the HTTP status of its success through Envoy and its particular error replies (read by the
//! access layer here and by the OpenAPI document), and one async layer that authenticates the
//! bearer token, checks the table, hands the principal to the handler in the request's
//! extensions and hints Envoy's success status. An RPC missing from the table needs an admin: a
//! new RPC is closed until someone opens it here.
//! The layer follows tonic's `examples/src/tower` middleware: a tower `Layer` over the router.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chrono::Utc;
use tonic::Status;
use tower::{Layer, Service};

use super::meta::ClientIpPolicy;
use crate::domain::App;
use crate::domain::api_keys::is_api_key;
use crate::domain::mfa::is_mfa_token;
use crate::domain::types::{Actor, Principal, Role, Scope, ServiceCaller};
use crate::error::Error;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (login, registration, health, public keys, reflection).
    Public,
    /// A bearer token the handler verifies itself: refresh and logout accept a token that
    /// expired within the refresh window, which no other call does.
    OwnToken,
    /// A live session of an active user.
    Session,
    /// A live session, or the mfa_token Login hands an admin who must enrol a second factor
    /// first (MFA_REQUIRED_FOR_ADMINS): the TOTP enrolment RPCs only.
    SessionOrEnrolment,
    /// A live session of an active admin, or an API key with the rule's scope.
    Admin,
    /// Only an API key with the rule's scope (introspection: a service's question).
    Service,
}

/// Everything the service states about one RPC, in one place: who may call it (the access
/// layer), the HTTP status of its success through Envoy (the hint the layer attaches) and the
/// error replies particular to it (the OpenAPI document).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcRule {
    pub access: Access,
    /// The scope that lets an API key call it (`Admin` and `Service` RPCs); `None`: no key may.
    pub scope: Option<Scope>,
    /// Status of a successful JSON reply; Envoy answers 200 unless hinted otherwise.
    pub success_http: u16,
    /// Error replies of this RPC beyond those every RPC may give (400, 429, 500, 503) and
    /// those its access implies (401 without a live session, 403 for a non-admin).
    pub errors: &'static [Refusal],
}

/// An error reply an RPC documents: its HTTP status (Envoy's mapping of the gRPC code) and
/// when it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub http: u16,
    pub when: &'static str,
}

const BAD_CREDENTIALS: Refusal = Refusal { http: 401, when: "Incorrect username or password" };
const INACTIVE: Refusal = Refusal { http: 403, when: "Account is inactive" };
const REGISTRATION_OFF: Refusal = Refusal { http: 403, when: "Registration is disabled" };
const NO_SUCH_USER: Refusal = Refusal { http: 404, when: "No such user" };
const NO_SUCH_SESSION: Refusal = Refusal { http: 404, when: "No such session of yours" };
const TAKEN: Refusal = Refusal { http: 409, when: "Username or email already exists" };
const NO_SUCH_ACCOUNT: Refusal = Refusal { http: 404, when: "No such service account" };
const NO_SUCH_KEY: Refusal = Refusal { http: 404, when: "No such service account, or no such live key of it" };
const NAME_TAKEN: Refusal = Refusal { http: 409, when: "A service account of that name exists" };
// FAILED_PRECONDITION, which the JSON face answers with 409 (envoy/json_face.lua).
const TAKEN_OR_LAST_ADMIN: Refusal = Refusal {
    http: 409,
    when: "Email already exists; or an admin deactivating or demoting themself, or the last active admin",
};
const SELF_OR_LAST_ADMIN: Refusal = Refusal { http: 409, when: "An admin deleting themself, or the last active admin" };
const KEYS_FULL: Refusal = Refusal { http: 409, when: "The account already has 10 live keys; revoke one first" };

// A signed-in user's proof (the password, a code) is wrong: 403, not 401, which a UI reads as
// a session that ended.
const WRONG_CODE: Refusal = Refusal { http: 403, when: "The code is not the one the authenticator app shows now" };
const WRONG_PROOF: Refusal =
    Refusal { http: 403, when: "The password is incorrect, or the code is not a current, unused one" };
const TOTP_ENABLED: Refusal = Refusal { http: 409, when: "TOTP is already enabled" };
const NOTHING_TO_CONFIRM: Refusal =
    Refusal { http: 409, when: "TOTP is already enabled, or there is no enrolment to confirm (start one first)" };
const TOTP_NOT_ENABLED: Refusal = Refusal { http: 409, when: "TOTP is not enabled" };
const CEREMONY_REFUSED: Refusal =
    Refusal { http: 409, when: "The ceremony is unknown, used or expired, or the passkey is already registered" };
const PASSKEY_NOT_VERIFIED: Refusal = Refusal { http: 403, when: "The passkey could not be verified" };
const PASSKEYS_FULL: Refusal =
    Refusal { http: 409, when: "20 passkeys already; or passkeys are off (FRONTEND_URL names no domain)" };
const NO_SUCH_PASSKEY: Refusal = Refusal { http: 404, when: "No such passkey of yours" };
const PASSKEYS_OFF: Refusal = Refusal { http: 409, when: "Passkeys are off (FRONTEND_URL names no domain)" };
const PASSKEY_SIGN_IN_REFUSED: Refusal =
    Refusal { http: 401, when: "Invalid or expired MFA token or ceremony, or the passkey could not be verified" };
const MFA_REFUSED: Refusal =
    Refusal { http: 401, when: "Invalid or expired MFA token, or a wrong, used or replayed code" };

const fn rule(access: Access, errors: &'static [Refusal]) -> RpcRule {
    RpcRule { access, scope: None, success_http: 200, errors }
}

const fn created(access: Access, errors: &'static [Refusal]) -> RpcRule {
    RpcRule { access, scope: None, success_http: 201, errors }
}

/// The same rule, open to API keys with `scope` too.
const fn or_key(rule: RpcRule, scope: Scope) -> RpcRule {
    RpcRule { scope: Some(scope), ..rule }
}

/// The rule of an RPC missing from [`RPCS`]: a new RPC is closed until someone opens it there.
pub const CLOSED: RpcRule = rule(Access::Admin, &[]);

/// Every RPC the server serves, by gRPC path. A unit test checks it against the descriptor sets.
#[rustfmt::skip]
pub const RPCS: &[(&str, RpcRule)] = {
    use Access::{Admin, OwnToken, Public, Service, Session, SessionOrEnrolment};
    use Scope::{AuditRead, Introspect, UsersRead, UsersWrite};
    &[
        ("/instachatico.auth.v1.AuthService/Login", rule(Public, &[BAD_CREDENTIALS, INACTIVE])),
        ("/instachatico.auth.v1.AuthService/VerifyMfa", rule(Public, &[MFA_REFUSED, INACTIVE])),
        ("/instachatico.auth.v1.MfaService/StartTotp", rule(SessionOrEnrolment, &[TOTP_ENABLED])),
        ("/instachatico.auth.v1.MfaService/ConfirmTotp", rule(SessionOrEnrolment, &[WRONG_CODE, NOTHING_TO_CONFIRM])),
        ("/instachatico.auth.v1.MfaService/RemoveTotp", rule(Session, &[WRONG_PROOF, TOTP_NOT_ENABLED])),
        ("/instachatico.auth.v1.MfaService/RegenerateRecoveryCodes", rule(Session, &[WRONG_PROOF, TOTP_NOT_ENABLED])),
        ("/instachatico.auth.v1.MfaService/ResetUserMfa", or_key(rule(Admin, &[NO_SUCH_USER]), UsersWrite)),
        ("/instachatico.auth.v1.MfaService/ListMfaFactors", rule(Session, &[])),
        ("/instachatico.auth.v1.AuthService/StartPasskeySignIn", rule(Public, &[PASSKEY_SIGN_IN_REFUSED, PASSKEYS_OFF])),
        ("/instachatico.auth.v1.AuthService/FinishPasskeySignIn", rule(Public, &[PASSKEY_SIGN_IN_REFUSED, INACTIVE])),
        ("/instachatico.auth.v1.PasskeyService/StartPasskeyRegistration", rule(Session, &[PASSKEYS_FULL])),
        ("/instachatico.auth.v1.PasskeyService/FinishPasskeyRegistration", created(Session, &[PASSKEY_NOT_VERIFIED, CEREMONY_REFUSED])),
        ("/instachatico.auth.v1.PasskeyService/ListPasskeys", rule(Session, &[])),
        ("/instachatico.auth.v1.PasskeyService/RenamePasskey", rule(Session, &[NO_SUCH_PASSKEY])),
        ("/instachatico.auth.v1.PasskeyService/DeletePasskey", rule(Session, &[NO_SUCH_PASSKEY])),
        ("/instachatico.auth.v1.AuthService/Register", created(Public, &[REGISTRATION_OFF, TAKEN])),
        ("/instachatico.auth.v1.AuthService/Refresh", rule(OwnToken, &[])),
        ("/instachatico.auth.v1.AuthService/Logout", rule(OwnToken, &[])),
        ("/instachatico.auth.v1.AuthService/Introspect", or_key(rule(Service, &[]), Introspect)),
        ("/instachatico.auth.v1.HealthService/Check", rule(Public, &[])),
        ("/instachatico.auth.v1.KeysService/GetJwks", rule(Public, &[])),
        ("/instachatico.auth.v1.KeysService/GetOpenIdConfiguration", rule(Public, &[])),
        ("/instachatico.auth.v1.UserService/GetMe", rule(Session, &[])),
        ("/instachatico.auth.v1.UserService/UpdateMyBackend", rule(Session, &[])),
        ("/instachatico.auth.v1.UserService/ChangeMyPassword", rule(Session, &[])),
        ("/instachatico.auth.v1.UserService/ListMySessions", rule(Session, &[])),
        ("/instachatico.auth.v1.UserService/RevokeMySession", rule(Session, &[NO_SUCH_SESSION])),
        ("/instachatico.auth.v1.UserService/CreateUser", or_key(created(Admin, &[TAKEN]), UsersWrite)),
        ("/instachatico.auth.v1.UserService/ListUsers", or_key(rule(Admin, &[]), UsersRead)),
        ("/instachatico.auth.v1.UserService/GetUser", or_key(rule(Admin, &[NO_SUCH_USER]), UsersRead)),
        ("/instachatico.auth.v1.UserService/UpdateUser", or_key(rule(Admin, &[NO_SUCH_USER, TAKEN_OR_LAST_ADMIN]), UsersWrite)),
        ("/instachatico.auth.v1.UserService/DeleteUser", or_key(rule(Admin, &[NO_SUCH_USER, SELF_OR_LAST_ADMIN]), UsersWrite)),
        ("/instachatico.auth.v1.UserService/ResetPassword", or_key(rule(Admin, &[NO_SUCH_USER]), UsersWrite)),
        ("/instachatico.auth.v1.UserService/RevokeUserSessions", or_key(rule(Admin, &[NO_SUCH_USER]), UsersWrite)),
        ("/instachatico.auth.v1.UserService/UnlockUser", or_key(rule(Admin, &[NO_SUCH_USER]), UsersWrite)),
        ("/instachatico.auth.v1.AuditService/ListAuditLogs", or_key(rule(Admin, &[]), AuditRead)),
        ("/instachatico.auth.v1.ServiceAccountService/CreateServiceAccount", created(Admin, &[NAME_TAKEN])),
        ("/instachatico.auth.v1.ServiceAccountService/ListServiceAccounts", rule(Admin, &[])),
        ("/instachatico.auth.v1.ServiceAccountService/DeleteServiceAccount", rule(Admin, &[NO_SUCH_ACCOUNT])),
        ("/instachatico.auth.v1.ServiceAccountService/CreateApiKey", created(Admin, &[NO_SUCH_ACCOUNT, KEYS_FULL])),
        ("/instachatico.auth.v1.ServiceAccountService/ListApiKeys", rule(Admin, &[NO_SUCH_ACCOUNT])),
        ("/instachatico.auth.v1.ServiceAccountService/RevokeApiKey", rule(Admin, &[NO_SUCH_KEY])),
        ("/instachatico.auth.v1.ServiceAccountService/RotateApiKey", created(Admin, &[NO_SUCH_KEY, KEYS_FULL])),
        // Standard services beside ours (tonic-health, tonic-reflection).
        ("/grpc.health.v1.Health/Check", rule(Public, &[])),
        ("/grpc.health.v1.Health/Watch", rule(Public, &[])),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", rule(Public, &[])),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", rule(Public, &[])),
    ]
};

/// The rule of the RPC at `path` (`/package.Service/Method`); [`CLOSED`] for any other path.
pub fn rpc_rule(path: &str) -> &'static RpcRule {
    RPCS.iter().find(|(p, _)| *p == path).map_or(&CLOSED, |(_, rule)| rule)
}

/// The access of the RPC at `path`.
pub fn access(path: &str) -> Access {
    rpc_rule(path).access
}

/// Who passed [`AccessLayer`]: a user's live session, or a service's API key.
#[derive(Debug, Clone)]
pub enum Caller {
    User(Arc<Principal>),
    Service(Arc<ServiceCaller>),
}

impl Caller {
    /// The caller as the domain's actor of an admin action.
    pub fn actor(&self) -> Actor<'_> {
        match self {
            Self::User(p) => Actor::User(p),
            Self::Service(s) => Actor::Service(s),
        }
    }
}

/// The authenticated user of a request that passed [`AccessLayer`] (`Session` RPCs: a user
/// session, never an API key).
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Arc<Principal>, Status> {
    match caller(request)? {
        Caller::User(principal) => Ok(principal),
        Caller::Service(_) => {
            Err(Status::from(Error::PermissionDenied("This call needs a user session, not an API key")))
        }
    }
}

/// The authenticated caller of a request that passed [`AccessLayer`].
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::from(Error::Unauthenticated("Not authenticated")))
}

/// The layer applying [`access`] to every call.
#[derive(Clone)]
pub struct AccessLayer {
    app: App,
    ips: ClientIpPolicy,
}

impl AccessLayer {
    pub fn new(app: App, ips: ClientIpPolicy) -> Self {
        Self { app, ips }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService { app: self.app.clone(), ips: self.ips.clone(), inner }
    }
}

#[derive(Clone)]
pub struct AccessService<S> {
    app: App,
    ips: ClientIpPolicy,
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
        let (app, ips) = (self.app.clone(), self.ips.clone());
        Box::pin(async move {
            // The sidecar's own question (ext_authz), not part of the API: its answers carry
            // backends' tokens, so only the sidecar may ask; and its access log, which audits.
            let path = request.uri().path();
            if path == super::ext_authz::CHECK_PATH || path == super::proxy_log::STREAM_PATH {
                if !ips.is_sidecar(request.extensions()) {
                    let refusal = Error::PermissionDenied("Only the Envoy sidecar may ask this");
                    return Ok(Status::from(refusal).into_http());
                }
                return inner.call(request).await;
            }
            let rule = rpc_rule(request.uri().path());
            if request.method() == http::Method::OPTIONS {
                return inner.call(request).await;
            }
            let enrolment_token = (rule.access == Access::SessionOrEnrolment)
                .then(|| super::meta::bearer_from_headers(request.headers()).ok().filter(|t| is_mfa_token(t)))
                .flatten()
                .map(str::to_owned);
            if let Some(token) = enrolment_token {
                let client = ips.client_info_http(request.headers(), request.extensions());
                match app.authenticate_enrolment(&token, &client, Utc::now()).await {
                    Ok(grant) => {
                        request.extensions_mut().insert(grant);
                    }
                    Err(e) => return Ok(Status::from(e).into_http()),
                }
            } else if rule.access != Access::Public {
                match authorize(&app, &ips, rule, request.headers(), request.extensions()).await {
                    Ok(Some(caller)) => {
                        request.extensions_mut().insert(caller);
                    }
                    Ok(None) => {}
                    Err(e) => return Ok(Status::from(e).into_http()),
                }
            }
            let mut response = inner.call(request).await?;
            hint_success_status(rule, &mut response);
            Ok(response)
        })
    }
}

/// Authenticates the bearer credential of a non-public call and checks it against `rule`:
/// an API key (`iak_...`) needs the rule's scope, a user token a live session (of an admin for
/// `Admin` RPCs). `None` for `OwnToken` RPCs, whose handler verifies the token itself.
async fn authorize(
    app: &App,
    ips: &ClientIpPolicy,
    rule: &RpcRule,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> Result<Option<Caller>, Error> {
    let token = super::meta::bearer_from_headers(headers)?;
    if rule.access == Access::OwnToken {
        return Ok(None);
    }
    let now = Utc::now();
    if is_api_key(token) {
        let service = app.authenticate_api_key(token, || ips.client_info_http(headers, extensions), now).await?;
        return match rule.scope {
            Some(scope) if service.has(scope) => Ok(Some(Caller::Service(service))),
            Some(_) => Err(Error::PermissionDenied("API key lacks the scope this call needs")),
            None => Err(Error::PermissionDenied("This call needs a user session, not an API key")),
        };
    }
    let principal = app.authenticate_token(token, now).await?;
    match rule.access {
        Access::Service => Err(Error::PermissionDenied("This call needs an API key with the introspect scope")),
        Access::Admin if principal.role() != Role::Admin => Err(Error::PermissionDenied("Admin privileges required")),
        _ => Ok(Some(Caller::User(principal))),
    }
}

/// Asks Envoy to answer a success with the rule's status (201) instead of 200. A reply that
/// carries `grpc-status` in its headers is a trailers-only error and keeps Envoy's mapping.
fn hint_success_status(rule: &RpcRule, response: &mut http::Response<tonic::body::Body>) {
    if rule.success_http != 200 && !response.headers().contains_key("grpc-status") {
        super::status::set_http_status_hint(response.headers_mut(), rule.success_http);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every method of every service the server registers (ours, tonic-health, reflection).
    fn served_methods() -> BTreeSet<String> {
        let sets = [crate::pb::FILE_DESCRIPTOR_SET, crate::pb::STANDARD_FILE_DESCRIPTOR_SET];
        let mut methods = BTreeSet::new();
        for set in sets {
            let pool = prost_reflect::DescriptorPool::decode(set).unwrap();
            for service in pool.services() {
                methods.extend(service.methods().map(|m| format!("/{}/{}", service.full_name(), m.name())));
            }
        }
        methods
    }

    #[test]
    fn every_served_rpc_has_a_rule_and_every_rule_an_rpc() {
        let served = served_methods();
        assert!(served.len() >= 20, "{served:?}");
        let listed: BTreeSet<String> = RPCS.iter().map(|(path, _)| (*path).to_owned()).collect();
        assert_eq!(listed.len(), RPCS.len(), "an RPC is listed twice in RPCS");
        let missing: Vec<&String> = served.difference(&listed).collect();
        assert!(missing.is_empty(), "RPCs without a rule (closed to all but admins until listed in RPCS): {missing:?}");
        let stale: Vec<&String> = listed.difference(&served).collect();
        assert!(stale.is_empty(), "rules for RPCs nobody serves: {stale:?}");
    }

    #[test]
    fn rules_state_only_what_is_particular_to_the_rpc() {
        for (path, rule) in RPCS {
            assert!(matches!(rule.success_http, 200 | 201), "{path}: success is {}", rule.success_http);
            let statuses: Vec<u16> = rule.errors.iter().map(|e| e.http).collect();
            assert!(statuses.iter().all(|s| (401..=499).contains(s) && *s != 429), "{path}: {statuses:?}");
            assert!(statuses.windows(2).all(|w| w[0] < w[1]), "{path}: one refusal per status, ascending");
        }
    }

    #[test]
    fn unknown_rpcs_need_an_admin() {
        assert_eq!(access("/instachatico.auth.v1.UserService/SomethingNew"), Access::Admin);
        assert_eq!(access("/other.Service/Method"), Access::Admin);
        assert_eq!(access("/instachatico.auth.v1.AuthService/Login"), Access::Public);
        assert_eq!(access("/instachatico.auth.v1.UserService/GetMe"), Access::Session);
    }
}
