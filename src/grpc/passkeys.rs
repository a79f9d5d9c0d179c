//! `PasskeyService`: the signed-in user's passkeys (registration, list, rename, delete). Served
//! behind [`super::AccessLayer`] with a live session. Signing in with a passkey is
//! `AuthService.StartPasskeySignIn` and `FinishPasskeySignIn` (public).

use chrono::Utc;
use secrecy::ExposeSecret;
use tonic::{Request, Response, Status};

use super::convert::{json_struct, struct_json, timestamp};
use super::meta::ClientIpPolicy;
use super::principal;
use crate::domain::App;
use crate::domain::passkeys::{CeremonyStart, PasskeyView};
use crate::error::Error;
use crate::pb;
use crate::pb::passkey_service_server::PasskeyService;

pub struct PasskeyApi {
    app: App,
    ips: ClientIpPolicy,
}

impl PasskeyApi {
    pub fn new(app: App, ips: ClientIpPolicy) -> Self {
        Self { app, ips }
    }
}

impl From<&PasskeyView> for pb::Passkey {
    fn from(p: &PasskeyView) -> Self {
        Self {
            id: p.id,
            name: p.name.clone(),
            created_at: Some(timestamp(p.created_at)),
            last_used_at: p.last_used_at.map(timestamp),
        }
    }
}

/// The start of a ceremony as the browser takes it.
pub fn challenge(start: CeremonyStart) -> pb::PasskeyChallenge {
    pb::PasskeyChallenge {
        ceremony: start.ceremony.expose_secret().to_owned(),
        options: Some(json_struct(start.options)),
    }
}

/// The credential the browser made, as JSON; required.
pub fn credential(credential: Option<prost_types::Struct>) -> Result<serde_json::Value, Error> {
    match credential {
        Some(s) if !s.fields.is_empty() => Ok(struct_json(s)),
        _ => Err(Error::invalid("credential", "is required")),
    }
}

#[tonic::async_trait]
impl PasskeyService for PasskeyApi {
    async fn start_passkey_registration(
        &self,
        request: Request<pb::StartPasskeyRegistrationRequest>,
    ) -> Result<Response<pb::PasskeyChallenge>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let start = self.app.start_passkey_registration(&me, &client, Utc::now()).await?;
        Ok(Response::new(challenge(start)))
    }

    async fn finish_passkey_registration(
        &self,
        request: Request<pb::FinishPasskeyRegistrationRequest>,
    ) -> Result<Response<pb::Passkey>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let credential = credential(body.credential)?;
        let view = self
            .app
            .finish_passkey_registration(&me, &body.ceremony, &body.name, credential, &client, Utc::now())
            .await?;
        Ok(Response::new(pb::Passkey::from(&view)))
    }

    async fn list_passkeys(
        &self,
        request: Request<pb::ListPasskeysRequest>,
    ) -> Result<Response<pb::ListPasskeysResponse>, Status> {
        let me = principal(&request)?;
        let passkeys = self.app.list_passkeys(me.user.id).await?;
        Ok(Response::new(pb::ListPasskeysResponse { passkeys: passkeys.iter().map(pb::Passkey::from).collect() }))
    }

    async fn rename_passkey(
        &self,
        request: Request<pb::RenamePasskeyRequest>,
    ) -> Result<Response<pb::Passkey>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let id = passkey_id(body.id)?;
        let view = self.app.rename_passkey(&me, id, &body.name, &client, Utc::now()).await?;
        Ok(Response::new(pb::Passkey::from(&view)))
    }

    async fn delete_passkey(
        &self,
        request: Request<pb::DeletePasskeyRequest>,
    ) -> Result<Response<pb::MessageResponse>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let id = passkey_id(super::text::body(request)?.id)?;
        self.app.delete_passkey(&me, id, &client, Utc::now()).await?;
        Ok(Response::new(pb::MessageResponse { message: "Passkey deleted".to_owned() }))
    }
}

fn passkey_id(id: i32) -> Result<i32, Error> {
    if id < 1 {
        return Err(Error::invalid("id", "must be a positive passkey id"));
    }
    Ok(id)
}
