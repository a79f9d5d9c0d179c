//! `ServiceAccountService`: service accounts and their API keys. Admin sessions only (the
//! access table gives these RPCs no scope, so no key manages keys).

use chrono::{Duration, Utc};
use secrecy::ExposeSecret;
use tonic::{Request, Response, Status};

use super::convert::timestamp;
use super::meta::ClientIpPolicy;
use super::principal;
use crate::domain::App;
use crate::domain::api_keys::{IssuedKey, NewApiKey, ROTATION_GRACE_DEFAULT, ROTATION_GRACE_MAX, is_key_id};
use crate::domain::types::{Actor, ApiKey, ServiceAccount, ServiceAccountId};
use crate::domain::validate;
use crate::error::{Error, Result};
use crate::pb;
use crate::pb::service_account_service_server::ServiceAccountService;

pub struct ServiceAccountApi {
    app: App,
    ips: ClientIpPolicy,
}

impl ServiceAccountApi {
    pub fn new(app: App, ips: ClientIpPolicy) -> Self {
        Self { app, ips }
    }
}

impl From<&ServiceAccount> for pb::ServiceAccount {
    fn from(a: &ServiceAccount) -> Self {
        Self {
            id: a.id.get(),
            name: a.name.clone(),
            description: a.description.clone(),
            created_at: Some(timestamp(a.created_at)),
        }
    }
}

impl From<&ApiKey> for pb::ApiKey {
    fn from(k: &ApiKey) -> Self {
        Self {
            id: k.id.clone(),
            service_account_id: k.service_account_id.get(),
            name: k.name.clone(),
            scopes: k.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            allowed_cidrs: k.allowed_cidrs.iter().map(ToString::to_string).collect(),
            expires_at: k.expires_at.map(timestamp),
            created_at: Some(timestamp(k.created_at)),
            revoked_at: k.revoked_at.map(timestamp),
            last_used_at: k.last_used_at.map(timestamp),
        }
    }
}

fn issued(key: &IssuedKey) -> pb::CreateApiKeyResponse {
    pb::CreateApiKeyResponse { api_key: Some(pb::ApiKey::from(&key.key)), key: key.token.expose_secret().to_owned() }
}

/// A positive service account id from a request.
fn account_id(field: &'static str, id: i32) -> Result<ServiceAccountId> {
    if id > 0 { Ok(ServiceAccountId(id)) } else { Err(Error::invalid(field, "must be a positive service account id")) }
}

/// A key id as keys carry it: 16 lowercase hex digits.
fn key_id(id: &str) -> Result<&str> {
    if is_key_id(id) { Ok(id) } else { Err(Error::invalid("key_id", "must be a key's 16-hex-digit id")) }
}

impl TryFrom<pb::CreateApiKeyRequest> for NewApiKey {
    type Error = Error;

    fn try_from(r: pb::CreateApiKeyRequest) -> Result<Self> {
        Ok(Self {
            name: validate::key_name(&r.name)?,
            scopes: validate::scopes(&r.scopes)?,
            allowed_cidrs: validate::cidrs(&r.allowed_cidrs)?,
            expires_at: r.expires_at.map(|t| super::convert::timestamp_in_range("expires_at", t)).transpose()?,
        })
    }
}

/// The grace period of a rotation, in seconds: 0 to 30 days; a day when absent.
fn grace(seconds: Option<i32>) -> Result<Duration> {
    let Some(seconds) = seconds else { return Ok(ROTATION_GRACE_DEFAULT) };
    let grace = Duration::seconds(i64::from(seconds));
    if seconds < 0 || grace > ROTATION_GRACE_MAX {
        return Err(Error::invalid("grace_seconds", "must be between 0 and 2592000 (30 days)"));
    }
    Ok(grace)
}

fn message(text: &str) -> Response<pb::MessageResponse> {
    Response::new(pb::MessageResponse { message: text.to_owned() })
}

#[tonic::async_trait]
impl ServiceAccountService for ServiceAccountApi {
    async fn create_service_account(
        &self,
        request: Request<pb::CreateServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccount>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let (name, description) =
            (validate::service_account_name(&body.name)?, validate::description(&body.description)?);
        let account =
            self.app.create_service_account(&Actor::User(&me), &name, &description, &client, Utc::now()).await?;
        Ok(Response::new(pb::ServiceAccount::from(&account)))
    }

    async fn list_service_accounts(
        &self,
        request: Request<pb::ListServiceAccountsRequest>,
    ) -> Result<Response<pb::ListServiceAccountsResponse>, Status> {
        let me = principal(&request)?;
        let accounts = self.app.list_service_accounts(&Actor::User(&me)).await?;
        Ok(Response::new(pb::ListServiceAccountsResponse {
            service_accounts: accounts.iter().map(pb::ServiceAccount::from).collect(),
        }))
    }

    async fn delete_service_account(
        &self,
        request: Request<pb::DeleteServiceAccountRequest>,
    ) -> Result<Response<pb::MessageResponse>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let id = account_id("id", super::text::body(request)?.id)?;
        self.app.delete_service_account(&Actor::User(&me), id, &client, Utc::now()).await?;
        Ok(message("Service account deleted"))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let account = account_id("service_account_id", body.service_account_id)?;
        let new = NewApiKey::try_from(body)?;
        let key = self.app.create_api_key(&Actor::User(&me), account, new, &client, Utc::now()).await?;
        Ok(Response::new(issued(&key)))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let me = principal(&request)?;
        let account = account_id("service_account_id", super::text::body(request)?.service_account_id)?;
        let keys = self.app.list_api_keys(&Actor::User(&me), account).await?;
        Ok(Response::new(pb::ListApiKeysResponse { api_keys: keys.iter().map(pb::ApiKey::from).collect() }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::MessageResponse>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let account = account_id("service_account_id", body.service_account_id)?;
        self.app.revoke_api_key(&Actor::User(&me), account, key_id(&body.key_id)?, &client, Utc::now()).await?;
        Ok(message("API key revoked"))
    }

    async fn rotate_api_key(
        &self,
        request: Request<pb::RotateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let account = account_id("service_account_id", body.service_account_id)?;
        let grace = grace(body.grace_seconds)?;
        let key = self
            .app
            .rotate_api_key(&Actor::User(&me), account, key_id(&body.key_id)?, grace, &client, Utc::now())
            .await?;
        Ok(Response::new(issued(&key)))
    }
}
