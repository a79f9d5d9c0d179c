//! `KeysService`: the public keys that verify our access tokens (JWKS) and the discovery
//! document pointing at them. Public; Envoy serves both under `/.well-known/` with a
//! `Cache-Control` that lets verifiers cache them.

use tonic::{Request, Response, Status};

use crate::domain::App;
use crate::domain::keys::JWKS_PATH;
use crate::pb;
use crate::pb::keys_service_server::KeysService;

pub struct KeysApi {
    app: App,
}

impl KeysApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl KeysService for KeysApi {
    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        let keys = self
            .app
            .published_keys()
            .keys
            .into_iter()
            .map(|key| pb::Jwk {
                kty: "OKP".to_owned(),
                crv: "Ed25519".to_owned(),
                x: key.x,
                kid: key.kid,
                alg: "EdDSA".to_owned(),
                r#use: "sig".to_owned(),
            })
            .collect();
        Ok(Response::new(pb::GetJwksResponse { keys }))
    }

    async fn get_open_id_configuration(
        &self,
        _request: Request<pb::GetOpenIdConfigurationRequest>,
    ) -> Result<Response<pb::GetOpenIdConfigurationResponse>, Status> {
        let published = self.app.published_keys();
        Ok(Response::new(pb::GetOpenIdConfigurationResponse {
            issuer: published.issuer.to_owned(),
            jwks_uri: JWKS_PATH.to_owned(),
            id_token_signing_alg_values_supported: published.algorithms.iter().map(|a| (*a).to_owned()).collect(),
        }))
    }
}
