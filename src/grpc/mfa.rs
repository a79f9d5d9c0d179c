//! `MfaService`: the caller's second factor (TOTP enrolment and removal, recovery codes, the
//! factor list) and the admin reset. Served behind
//! [`super::AccessLayer`] with a live session; the second step of a sign-in is
//! `AuthService.VerifyMfa` (public: it carries its own mfa_token).

use std::sync::Arc;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use tonic::{Request, Response, Status};

use super::convert::{timestamp, user_id};
use super::meta::ClientIpPolicy;
use super::{caller, principal};
use crate::domain::App;
use crate::domain::mfa::{Claim, Enroller, EnrolmentGrant};
use crate::domain::passkeys::METHOD;
use crate::pb;
use crate::pb::mfa_service_server::MfaService;

pub struct MfaApi {
    app: App,
    ips: ClientIpPolicy,
}

impl MfaApi {
    pub fn new(app: App, ips: ClientIpPolicy) -> Self {
        Self { app, ips }
    }
}

/// The caller of an enrolment RPC: a session, or the enrolment grant the access layer found.
fn enroller<T>(request: &Request<T>) -> Result<Enroller, Status> {
    match request.extensions().get::<Arc<EnrolmentGrant>>() {
        Some(grant) => Ok(Enroller::Grant(Arc::clone(grant))),
        None => Ok(Enroller::Session(principal(request)?)),
    }
}

#[tonic::async_trait]
impl MfaService for MfaApi {
    async fn start_totp(
        &self,
        request: Request<pb::StartTotpRequest>,
    ) -> Result<Response<pb::StartTotpResponse>, Status> {
        let enroller = enroller(&request)?;
        let client = self.ips.client_info(&request);
        let enrolment = self.app.start_totp(&enroller, &client, Utc::now()).await?;
        Ok(Response::new(pb::StartTotpResponse {
            secret: enrolment.secret.expose_secret().to_owned(),
            otpauth_uri: enrolment.otpauth_uri.expose_secret().to_owned(),
            qr_svg: enrolment.qr_svg.expose_secret().to_owned(),
        }))
    }

    async fn confirm_totp(
        &self,
        request: Request<pb::ConfirmTotpRequest>,
    ) -> Result<Response<pb::RecoveryCodesResponse>, Status> {
        let enroller = enroller(&request)?;
        let client = self.ips.client_info(&request);
        let code = SecretString::from(super::text::body(request)?.code);
        let codes = self.app.confirm_totp(&enroller, &code, &client, Utc::now()).await?;
        Ok(Response::new(pb::RecoveryCodesResponse {
            recovery_codes: codes.iter().map(|c| c.expose_secret().to_owned()).collect(),
        }))
    }

    async fn remove_totp(
        &self,
        request: Request<pb::ReauthenticateRequest>,
    ) -> Result<Response<pb::MessageResponse>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let (password, code) = (SecretString::from(body.password), SecretString::from(body.code));
        self.app.remove_totp(&me, &password, &code, &client, Utc::now()).await?;
        Ok(Response::new(pb::MessageResponse { message: "Two-factor authentication removed".to_owned() }))
    }

    async fn regenerate_recovery_codes(
        &self,
        request: Request<pb::ReauthenticateRequest>,
    ) -> Result<Response<pb::RecoveryCodesResponse>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let (password, code) = (SecretString::from(body.password), SecretString::from(body.code));
        let codes = self.app.regenerate_recovery_codes(&me, &password, &code, &client, Utc::now()).await?;
        Ok(Response::new(pb::RecoveryCodesResponse {
            recovery_codes: codes.iter().map(|c| c.expose_secret().to_owned()).collect(),
        }))
    }

    async fn reset_user_mfa(
        &self,
        request: Request<pb::ResetUserMfaRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        let me = caller(&request)?;
        let client = self.ips.client_info(&request);
        let id = user_id(super::text::body(request)?.id)?;
        let revoked = self.app.reset_mfa(&me.actor(), id, &client, Utc::now()).await?;
        Ok(Response::new(pb::RevokeSessionsResponse {
            message: "Second factors cleared; sessions ended".to_owned(),
            revoked: i32::try_from(revoked).unwrap_or(i32::MAX),
        }))
    }

    async fn list_mfa_factors(
        &self,
        request: Request<pb::ListMfaFactorsRequest>,
    ) -> Result<Response<pb::ListMfaFactorsResponse>, Status> {
        let me = principal(&request)?;
        let factors = self.app.mfa_factors(me.user.id).await?;
        Ok(Response::new(pb::ListMfaFactorsResponse {
            factors: [(Claim::TOTP, factors.totp_confirmed_at), (METHOD, factors.passkeys_since)]
                .into_iter()
                .filter_map(|(method, at)| {
                    at.map(|at| pb::MfaFactor { method: method.to_owned(), confirmed_at: Some(timestamp(at)) })
                })
                .collect(),
            recovery_codes_remaining: i32::try_from(factors.recovery_codes_left).unwrap_or(i32::MAX),
        }))
    }
}
