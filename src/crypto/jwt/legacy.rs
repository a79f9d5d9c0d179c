//! Access tokens of the seed's Python service (`LEGACY_JWT_SECRET_KEY`): HS256 under its
//! `JWT_SECRET_KEY`, issuer `instachatico-auth`, `sub` = user id, no `kid` and no `sid`. Accepted
//! until their own `exp` so that nobody is logged out at the switch; each is bound on first use
//! to a server-side session whose id is derived from the token (`domain::legacy`).

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::Claims;
use crate::error::{Error, Result};

/// The Python service's secret; verifies only, never signs.
#[derive(Clone)]
pub(super) struct LegacyKey(DecodingKey);

/// What python-jose's `create_access_token` writes (seed 4.3).
#[derive(Deserialize)]
struct PythonClaims {
    sub: String,
    #[serde(default)]
    username: String,
    iat: i64,
    exp: i64,
    iss: String,
    /// Present only in tokens of this service: one with it is not a Python token.
    #[serde(default)]
    sid: Option<serde_json::Value>,
}

impl LegacyKey {
    pub(super) fn new(secret: &SecretString) -> Self {
        Self(DecodingKey::from_secret(secret.expose_secret().as_bytes()))
    }

    /// Verifies a kid-less token as the Python service did (signature, HS256 only, issuer; `exp`
    /// and `iat` are checked by the caller against its clock).
    pub(super) fn decode(&self, token: &str, header: &Header, validation: &Validation) -> Result<Claims> {
        let invalid = || Error::Unauthenticated("Invalid token");
        if header.alg != Algorithm::HS256 {
            return Err(invalid());
        }
        let data = jsonwebtoken::decode::<PythonClaims>(token, &self.0, validation).map_err(|_| invalid())?;
        let c = data.claims;
        if c.sid.is_some() {
            return Err(invalid());
        }
        Ok(Claims {
            sub: c.sub,
            username: c.username,
            role: String::new(),
            sid: session_id(token),
            jti: String::new(),
            iat: c.iat,
            exp: c.exp,
            iss: c.iss,
            legacy: true,
        })
    }
}

/// The session a Python token is bound to: the same for every use of one token (so concurrent
/// first uses insert one row), and nothing about the token can be learnt from it. Fits the
/// 36 characters of `sessions.id`.
pub fn session_id(token: &str) -> String {
    use sha2::Digest;
    let digest = super::super::hex(&sha2::Sha256::digest(token.as_bytes()));
    format!("legacy-{}", &digest[..29])
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::super::JwtKeys;
    use super::*;

    const OURS: &str = "a-very-long-secret-key-for-tests-0123456789";
    const PYTHON: &str = "python-secret";

    fn python_token(secret: &str, alg: Algorithm, extra: serde_json::Value) -> String {
        let now = Utc::now().timestamp();
        let mut claims =
            json!({"sub": "7", "username": "alice", "iat": now, "exp": now + 3600, "iss": "instachatico-auth"});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    #[test]
    fn python_tokens_only_with_the_legacy_secret() {
        let now = Utc::now();
        let plain = JwtKeys::new(&SecretString::from(OURS.to_owned()), &[]).unwrap();
        let legacy = plain.clone().with_legacy_secret(&SecretString::from(PYTHON.to_owned()));
        let token = python_token(PYTHON, Algorithm::HS256, json!({}));
        assert!(plain.verify(&token, now).is_err(), "refused without LEGACY_JWT_SECRET_KEY");
        let claims = legacy.verify(&token, now).unwrap();
        assert!(claims.legacy);
        assert_eq!((claims.sub.as_str(), claims.username.as_str()), ("7", "alice"));
        assert_eq!(claims.sid, session_id(&token));
        assert!(claims.sid.starts_with("legacy-") && claims.sid.len() == 36);
        assert_ne!(session_id(&token), session_id(&python_token(PYTHON, Algorithm::HS256, json!({"username": "b"}))));
        // Its own expiry still holds.
        assert!(legacy.verify(&token, now + chrono::Duration::minutes(61)).is_err());
        // Forged, another algorithm, another issuer, or one of ours without a kid: refused.
        for bad in [
            python_token("another-secret", Algorithm::HS256, json!({})),
            python_token(PYTHON, Algorithm::HS384, json!({})),
            python_token(PYTHON, Algorithm::HS256, json!({"iss": "someone-else"})),
            python_token(PYTHON, Algorithm::HS256, json!({"sid": "s-1"})),
        ] {
            assert!(legacy.verify(&bad, now).is_err(), "{bad}");
        }
        // Tokens of this service are unaffected.
        let session = crate::model::SessionId::from("sid-1".to_owned());
        let subject = super::super::Subject {
            user_id: crate::model::UserId(7),
            username: "alice",
            role: crate::model::Role::User,
            session: &session,
        };
        let ours = legacy.issue(&subject, now, now + chrono::Duration::minutes(60)).unwrap();
        assert!(!legacy.verify(&ours, now).unwrap().legacy);
    }
}
