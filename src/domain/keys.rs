//! What the service publishes about its token keys: the public keys that verify its tokens and
//! the algorithms others can verify. Secrets never leave the keyring.

use super::App;
use crate::crypto::jwt::{ISSUER, PublishedKey};

/// Where the key set is served through the JSON face.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The published verification keys and what a discovery client may rely on.
#[derive(Debug, Clone)]
pub struct PublishedKeys {
    pub issuer: &'static str,
    /// Ed25519 public keys, the current signing key first.
    pub keys: Vec<PublishedKey>,
    /// Algorithms others can verify our tokens with: `EdDSA` when it signs, else none.
    pub algorithms: Vec<&'static str>,
}

impl App {
    pub fn published_keys(&self) -> PublishedKeys {
        let jwt = self.jwt();
        let algorithms = if jwt.algorithm() == jsonwebtoken::Algorithm::EdDSA { vec!["EdDSA"] } else { Vec::new() };
        PublishedKeys { issuer: ISSUER, keys: jwt.published().to_vec(), algorithms }
    }
}
