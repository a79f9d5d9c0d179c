//! Session JWTs (seed 4.3): HS256, issuer `instachatico-auth`, strictly validated. Tokens name
//! their signing key in `kid`; the current key signs and previous keys still verify, so the
//! secret can rotate without logging anyone out.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Role, SessionId, UserId};

pub const ISSUER: &str = "instachatico-auth";
/// Shortest secret accepted: HS256 wants at least 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;
/// Tolerated clock skew for `iat` in the future.
const IAT_SKEW_SECS: i64 = 60;

/// What a session token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id, as a string (RFC 7519).
    pub sub: String,
    pub username: String,
    /// "admin" or "user" at issue time; authorization reads the database, this is for UIs.
    pub role: String,
    /// Server-side session id.
    pub sid: String,
    /// Unique token id.
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

impl Claims {
    pub fn user_id(&self) -> Result<UserId> {
        self.sub.parse().map(UserId).map_err(|_| Error::Unauthenticated("Invalid token"))
    }

    pub fn session_id(&self) -> SessionId {
        SessionId::from(self.sid.clone())
    }
}

/// Whom a token is issued to, in which session.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub user_id: UserId,
    pub username: &'a str,
    pub role: Role,
    pub session: &'a SessionId,
}

#[derive(Clone)]
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
}

/// The signing key and every key that may verify.
#[derive(Clone)]
pub struct JwtKeys {
    signing: SigningKey,
    verifying: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtKeys(kid={}, {} verifying)", self.signing.kid, self.verifying.len())
    }
}

impl JwtKeys {
    pub fn new(current: &SecretString, previous: &[SecretString]) -> anyhow::Result<Self> {
        let check = |name: &str, key: &SecretString| {
            anyhow::ensure!(
                key.expose_secret().len() >= MIN_SECRET_BYTES,
                "{name} must be at least {MIN_SECRET_BYTES} bytes; generate one with `instachatico-auth generate-keys`"
            );
            Ok(())
        };
        check("JWT_SECRET_KEY", current)?;
        let mut verifying = HashMap::new();
        for key in previous {
            check("JWT_PREVIOUS_SECRET_KEYS", key)?;
            verifying.insert(super::key_id(key), DecodingKey::from_secret(key.expose_secret().as_bytes()));
        }
        let kid = super::key_id(current);
        verifying.insert(kid.clone(), DecodingKey::from_secret(current.expose_secret().as_bytes()));

        // Only HS256; exp/iat are checked by hand against the caller's clock (time is a
        // parameter), so the library's own clock check is off and leeway is zero.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.validate_aud = false;

        Ok(Self {
            signing: SigningKey { kid, encoding: EncodingKey::from_secret(current.expose_secret().as_bytes()) },
            verifying,
            validation,
        })
    }

    /// Signs a token for the session. `expires_at` is already capped by the caller.
    pub fn issue(&self, subject: &Subject<'_>, now: DateTime<Utc>, expires_at: DateTime<Utc>) -> Result<String> {
        let claims = Claims {
            sub: subject.user_id.to_string(),
            username: subject.username.to_owned(),
            role: subject.role.as_str().to_owned(),
            sid: subject.session.as_str().to_owned(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            iss: ISSUER.to_owned(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing.kid.clone());
        let started = std::time::Instant::now();
        let token = jsonwebtoken::encode(&header, &claims, &self.signing.encoding)
            .map_err(|e| Error::internal("jwt encode failed", e));
        crate::metrics::jwt_issue(started.elapsed());
        token
    }

    /// Verifies signature, algorithm, issuer, `iat` and `exp` at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims> {
        let claims = self.decode(token, now)?;
        if claims.exp <= now.timestamp() {
            return Err(Error::Unauthenticated("Token expired"));
        }
        Ok(claims)
    }

    /// Like [`verify`](Self::verify) but also accepts a token that expired at most
    /// `window_secs` ago (seed 3.2.2: refresh takes an expired or valid token).
    pub fn verify_allowing_expired(&self, token: &str, now: DateTime<Utc>, window_secs: i64) -> Result<Claims> {
        let claims = self.decode(token, now)?;
        if claims.exp.saturating_add(window_secs) <= now.timestamp() {
            return Err(Error::Unauthenticated("Token expired beyond the refresh window; sign in again"));
        }
        Ok(claims)
    }

    fn decode(&self, token: &str, now: DateTime<Utc>) -> Result<Claims> {
        let started = std::time::Instant::now();
        let invalid = Error::Unauthenticated("Invalid token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| Error::Unauthenticated("Invalid token"))?;
        if header.alg != Algorithm::HS256 {
            return Err(invalid);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(Error::Unauthenticated("Invalid token"))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|_| Error::Unauthenticated("Invalid token"))?;
        crate::metrics::jwt_verify(started.elapsed());
        let claims = data.claims;
        if claims.iat > now.timestamp() + IAT_SKEW_SECS || claims.iat > claims.exp {
            return Err(invalid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use chrono::Duration;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&SecretString::from(secret.to_owned()), &[]).unwrap()
    }

    const A: &str = "a-very-long-secret-key-for-tests-0123456789";
    const B: &str = "another-very-long-secret-key-for-tests-987654";

    fn token(k: &JwtKeys, now: DateTime<Utc>) -> String {
        let session = SessionId::from("sid-1".to_owned());
        let subject = Subject { user_id: UserId(7), username: "alice", role: Role::User, session: &session };
        k.issue(&subject, now, now + Duration::minutes(60)).unwrap()
    }

    #[test]
    fn issue_and_verify() {
        let k = keys(A);
        let now = Utc::now();
        let claims = k.verify(&token(&k, now), now).unwrap();
        assert_eq!((claims.sub.as_str(), claims.username.as_str(), claims.iss.as_str()), ("7", "alice", ISSUER));
        assert_eq!(claims.exp - claims.iat, 3600);
    }

    #[test]
    fn rejects_expired_and_future() {
        let k = keys(A);
        let now = Utc::now();
        let t = token(&k, now);
        assert!(k.verify(&t, now + Duration::minutes(61)).is_err());
        assert!(k.verify_allowing_expired(&t, now + Duration::minutes(61), 300).is_ok());
        assert!(k.verify_allowing_expired(&t, now + Duration::minutes(66), 300).is_err());
        // Issued in the future (beyond skew).
        assert!(k.verify(&t, now - Duration::minutes(5)).is_err());
    }

    #[test]
    fn rejects_wrong_key_and_alg_none_and_tampering() {
        let now = Utc::now();
        let t = token(&keys(B), now);
        assert!(keys(A).verify(&t, now).is_err());

        let k = keys(A);
        let good = token(&k, now);
        let parts: Vec<&str> = good.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none_header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(k.verify(&format!("{none_header}.{}.", parts[1]), now).is_err());

        let mut payload: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        payload["sub"] = "1".into();
        let forged = format!("{}.{}.{}", parts[0], b64.encode(payload.to_string()), parts[2]);
        assert!(k.verify(&forged, now).is_err());
    }

    #[test]
    fn previous_key_still_verifies() {
        let now = Utc::now();
        let old = keys(A);
        let t = token(&old, now);
        let rotated = JwtKeys::new(&SecretString::from(B.to_owned()), &[SecretString::from(A.to_owned())]).unwrap();
        assert!(rotated.verify(&t, now).is_ok());
        assert!(keys(B).verify(&t, now).is_err());
    }

    #[test]
    fn short_secret_refused() {
        assert!(JwtKeys::new(&SecretString::from("short".to_owned()), &[]).is_err());
    }
}
