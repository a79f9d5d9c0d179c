//! `AuthService`: Login (and its second step, VerifyMfa), Register, Refresh, Logout. Public in the access table (Login and Register
//! need no token); Refresh and Logout verify their own token, which may have expired recently.

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use tonic::{Request, Response, Status};

use super::meta::{self, ClientIpPolicy};
use crate::domain::App;
use crate::domain::mfa::SecondFactor;
use crate::domain::types::{LoginOutcome, NewUser, SignIn};
use crate::error::Error;
use crate::pb;
use crate::pb::auth_service_server::AuthService;

pub const TOKEN_TYPE: &str = "bearer";

pub struct AuthApi {
    app: App,
    ips: ClientIpPolicy,
}

impl AuthApi {
    pub fn new(app: App, ips: ClientIpPolicy) -> Self {
        Self { app, ips }
    }
}

impl AuthApi {
    /// The seed's LoginResponse of a new session, with the proxy cookie when configured.
    fn session_reply(&self, outcome: LoginOutcome) -> Result<Response<pb::LoginResponse>, Status> {
        let cookie = outcome.proxy_cookie.as_ref().map(|credential| self.proxy_cookie(credential.expose_secret()));
        let mut response = Response::new(pb::LoginResponse {
            access_token: Some(outcome.token.access_token.expose_secret().to_owned()),
            token_type: Some(TOKEN_TYPE.to_owned()),
            expires_in: Some(outcome.token.expires_in),
            user: Some(pb::UserInfo::from(&outcome.user)),
            backend_config: outcome.backend.map(|(api_base_url, token)| pb::BackendConfig {
                api_base_url,
                bearer_token: token.expose_secret().to_owned(),
            }),
            ..Default::default()
        });
        if let Some(cookie) = cookie {
            response.metadata_mut().insert("set-cookie", cookie?);
        }
        Ok(response)
    }

    /// The cookie variant's `Set-Cookie` (BACKEND_PROXY_COOKIE): sent only to the proxy's path,
    /// never readable by scripts, never sent cross-site; an empty value clears it.
    fn proxy_cookie(&self, credential: &str) -> Result<tonic::metadata::AsciiMetadataValue, Status> {
        let path = self.app.proxy_policy().map_or("/", |p| p.path_prefix.as_str());
        let max_age = if credential.is_empty() { 0 } else { self.app.session_policy().session_lifetime.num_seconds() };
        let name = crate::domain::proxy::COOKIE_NAME;
        format!("{name}={credential}; Path={path}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict")
            .parse()
            .map_err(|_| Status::internal("cannot set the proxy cookie"))
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let password = SecretString::from(body.password);
        match self.app.login(&body.username, &password, &client, Utc::now()).await? {
            SignIn::Session(outcome) => self.session_reply(*outcome),
            SignIn::MfaRequired { mfa_token, methods } => Ok(Response::new(pb::LoginResponse {
                mfa_required: Some(true),
                mfa_token: Some(mfa_token.expose_secret().to_owned()),
                methods: Some(prost_types::ListValue {
                    values: methods
                        .iter()
                        .map(|m| prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue((*m).to_owned())),
                        })
                        .collect(),
                }),
                ..Default::default()
            })),
            SignIn::EnrollmentRequired { mfa_token } => Ok(Response::new(pb::LoginResponse {
                mfa_enrollment_required: Some(true),
                mfa_token: Some(mfa_token.expose_secret().to_owned()),
                ..Default::default()
            })),
        }
    }

    async fn verify_mfa(&self, request: Request<pb::VerifyMfaRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let factor = match (body.code.is_empty(), body.recovery_code.is_empty()) {
            (false, true) => SecondFactor::Totp(SecretString::from(body.code)),
            (true, false) => SecondFactor::RecoveryCode(SecretString::from(body.recovery_code)),
            _ => return Err(Error::invalid("code", "give either code or recovery_code").into()),
        };
        let outcome = self.app.verify_mfa(&body.mfa_token, &factor, &client, Utc::now()).await?;
        self.session_reply(outcome)
    }

    async fn start_passkey_sign_in(
        &self,
        request: Request<pb::StartPasskeySignInRequest>,
    ) -> Result<Response<pb::PasskeyChallenge>, Status> {
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let start = self.app.start_passkey_sign_in(&body.mfa_token, &client, Utc::now()).await?;
        Ok(Response::new(super::passkeys::challenge(start)))
    }

    async fn finish_passkey_sign_in(
        &self,
        request: Request<pb::FinishPasskeySignInRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let credential = super::passkeys::credential(body.credential)?;
        let outcome =
            self.app.finish_passkey_sign_in(&body.ceremony, credential, &body.mfa_token, &client, Utc::now()).await?;
        self.session_reply(outcome)
    }

    async fn refresh(&self, request: Request<pb::RefreshRequest>) -> Result<Response<pb::RefreshResponse>, Status> {
        let client = self.ips.client_info(&request);
        let token = meta::bearer_token(request.metadata())?;
        let issued = self.app.refresh(token, &client, Utc::now()).await?;
        Ok(Response::new(pb::RefreshResponse {
            access_token: issued.access_token.expose_secret().to_owned(),
            token_type: TOKEN_TYPE.to_owned(),
            expires_in: issued.expires_in,
        }))
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let client = self.ips.client_info(&request);
        let token = meta::bearer_token(request.metadata())?;
        self.app.logout(token, &client, Utc::now()).await?;
        let mut response = Response::new(pb::LogoutResponse { message: "Successfully logged out".to_owned() });
        if self.app.proxy_policy().is_some_and(|p| p.cookie) {
            response.metadata_mut().insert("set-cookie", self.proxy_cookie("")?);
        }
        Ok(response)
    }

    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let token = super::text::body(request)?.token;
        let Some(found) = self.app.introspect(token.trim(), Utc::now()).await? else {
            return Ok(Response::new(pb::IntrospectResponse { active: false, ..Default::default() }));
        };
        let (user, times) = (&found.principal.user, found.times);
        let unix = |t: i64| u32::try_from(t).ok();
        Ok(Response::new(pb::IntrospectResponse {
            active: true,
            sub: Some(user.id.to_string()),
            username: Some(user.username.clone()),
            role: Some(user.role.as_str().to_owned()),
            sid: Some(found.principal.session.id.to_string()),
            exp: unix(times.exp),
            iat: unix(times.iat),
            scope: Some(found.scope()),
            token_type: Some("access_token".to_owned()),
        }))
    }

    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::User>, Status> {
        let client = self.ips.client_info(&request);
        let new = NewUser::try_from(super::text::body(request)?)?;
        let user = self.app.register(new, &client, Utc::now()).await?;
        Ok(Response::new(pb::User::from(&user)))
    }
}
