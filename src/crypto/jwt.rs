//! Session JWTs (seed 4.3): HS256 (default) or EdDSA (Ed25519), issuer `instachatico-auth`,
//! strictly validated. Tokens name their signing key in `kid` (for Ed25519, the key's RFC 7638
//! thumbprint); the current key signs and previous keys still verify, so keys can rotate without
//! logging anyone out. Each kid verifies with its own algorithm only. Public keys are published
//! (JWKS); HS256 secrets never are.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Role, SessionId, UserId};

mod legacy;
pub use legacy::session_id as legacy_session_id;

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
    /// Issued by the seed's Python service (LEGACY_JWT_SECRET_KEY): `sid` is derived from the
    /// token and its session may not exist yet. Never read from a token.
    #[serde(skip)]
    pub legacy: bool,
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

/// Which algorithm signs new tokens (`JWT_ALGORITHM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    /// HMAC-SHA256 with `JWT_SECRET_KEY`: only holders of the secret can verify.
    Hs256,
    /// Ed25519 with `JWT_SIGNING_KEY`: anyone can verify with the published public key.
    EdDsa,
}

/// An Ed25519 key pair that signs tokens (PKCS#8 PEM). `Debug` shows only the key id.
#[derive(Clone)]
pub struct Ed25519SigningKey {
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for Ed25519SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ed25519SigningKey(kid={})", self.public().kid)
    }
}

impl Ed25519SigningKey {
    /// Reads a PKCS#8 PEM private key. The error names `setting` and never the key.
    pub fn from_pem(pem: &SecretString, setting: &str) -> anyhow::Result<Self> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem.expose_secret().trim()).map_err(|e| {
            anyhow::anyhow!(
                "{setting} is not an Ed25519 private key in PKCS#8 PEM ({}); generate one with `instachatico-auth generate-keys`",
                pem_problem(&e.to_string())
            )
        })?;
        Ok(Self { key })
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        seed.fill(0);
        Self { key }
    }

    /// The key as PKCS#8 PEM, for `JWT_SIGNING_KEY`.
    pub fn to_pem(&self) -> anyhow::Result<SecretString> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let pem = self
            .key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|_| anyhow::anyhow!("cannot encode the Ed25519 key as PEM"))?;
        Ok(SecretString::from(pem.as_str().to_owned()))
    }

    pub fn public(&self) -> Ed25519PublicKey {
        Ed25519PublicKey::new(self.key.verifying_key())
    }

    fn encoding(&self) -> anyhow::Result<EncodingKey> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let der = self.key.to_pkcs8_der().map_err(|_| anyhow::anyhow!("cannot encode the Ed25519 key"))?;
        Ok(EncodingKey::from_ed_der(der.as_bytes()))
    }
}

/// The most a key parser's message may say: what kind of problem, never the input.
fn pem_problem(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("oid") || m.contains("algorithm") { "wrong key type: not Ed25519" } else { "unparseable PEM" }
}

/// An Ed25519 public key, with its RFC 7638 thumbprint as `kid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ed25519PublicKey {
    /// The raw 32-byte key, base64url (the JWK's `x`).
    pub x: String,
    /// RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub kid: String,
    bytes: [u8; 32],
}

impl Ed25519PublicKey {
    fn new(key: ed25519_dalek::VerifyingKey) -> Self {
        use base64::Engine;
        use sha2::Digest;
        let bytes = key.to_bytes();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        // RFC 7638 section 3.2: the required members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical));
        Self { x, kid, bytes }
    }

    /// Reads one SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`). The error names `setting`.
    pub fn from_pem(pem: &str, setting: &str) -> anyhow::Result<Self> {
        use ed25519_dalek::pkcs8::DecodePublicKey;
        let key = ed25519_dalek::VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
            anyhow::anyhow!(
                "{setting} holds a key that is not an Ed25519 public key in SPKI PEM ({})",
                pem_problem(&e.to_string())
            )
        })?;
        Ok(Self::new(key))
    }

    /// Every `-----BEGIN ...-----`/`-----END ...-----` block of `text` (keys may be separated
    /// by newlines or commas), each read as a public key.
    pub fn all_from_pem(text: &str, setting: &str) -> anyhow::Result<Vec<Self>> {
        const END: &str = "-----END PUBLIC KEY-----";
        let separator = |c: char| c.is_whitespace() || c == ',';
        let mut keys = Vec::new();
        let mut rest = text.trim_matches(separator);
        while !rest.is_empty() {
            let block_end = rest.find(END).map(|i| i + END.len()).ok_or_else(|| {
                anyhow::anyhow!("{setting} must hold Ed25519 public keys in SPKI PEM (-----BEGIN PUBLIC KEY-----)")
            })?;
            keys.push(Self::from_pem(&rest[..block_end], setting)?);
            rest = rest[block_end..].trim_start_matches(separator);
        }
        Ok(keys)
    }

    /// The key in SPKI PEM, as `JWT_PREVIOUS_PUBLIC_KEYS` takes it.
    pub fn to_pem(&self) -> anyhow::Result<String> {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.bytes).map_err(|_| anyhow::anyhow!("bad key"))?;
        key.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|_| anyhow::anyhow!("cannot encode the public key"))
    }
}

/// A key others may verify with: what the JWKS publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKey {
    pub kid: String,
    /// JWK `x` of an Ed25519 key.
    pub x: String,
}

#[derive(Clone)]
struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
}

/// The keys that sign and verify, as configured.
pub struct KeyConfig<'a> {
    pub algorithm: SigningAlgorithm,
    /// HS256 secret: signs with HS256, and verifies HS256 tokens in either mode (with EdDSA:
    /// mixed mode, for a migration).
    pub secret: Option<&'a SecretString>,
    pub previous_secrets: &'a [SecretString],
    /// Signs with EdDSA.
    pub signing_key: Option<&'a Ed25519SigningKey>,
    pub previous_public_keys: &'a [Ed25519PublicKey],
}

/// The signing key and every key that may verify, each bound to its one algorithm.
#[derive(Clone)]
pub struct JwtKeys {
    signing: SigningKey,
    verifying: HashMap<String, (Algorithm, DecodingKey)>,
    hs256: Validation,
    eddsa: Validation,
    published: Vec<PublishedKey>,
    legacy: Option<legacy::LegacyKey>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtKeys({:?}, kid={}, {} verifying)", self.signing.algorithm, self.signing.kid, self.verifying.len())
    }
}

/// Strict validation for one algorithm. exp/iat are checked by hand against the caller's
/// clock (time is a parameter), so the library's own clock check is off and leeway is zero.
fn validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
    validation.validate_exp = false;
    validation.leeway = 0;
    validation.validate_aud = false;
    validation
}

impl JwtKeys {
    /// HS256 only: `current` signs, `previous` still verify.
    pub fn new(current: &SecretString, previous: &[SecretString]) -> anyhow::Result<Self> {
        Self::from_config(&KeyConfig {
            algorithm: SigningAlgorithm::Hs256,
            secret: Some(current),
            previous_secrets: previous,
            signing_key: None,
            previous_public_keys: &[],
        })
    }

    pub fn from_config(config: &KeyConfig<'_>) -> anyhow::Result<Self> {
        let check = |name: &str, key: &SecretString| {
            anyhow::ensure!(
                key.expose_secret().len() >= MIN_SECRET_BYTES,
                "{name} must be at least {MIN_SECRET_BYTES} bytes; generate one with `instachatico-auth generate-keys`"
            );
            Ok(())
        };
        let mut verifying = HashMap::new();
        for key in config.previous_secrets {
            check("JWT_PREVIOUS_SECRET_KEYS", key)?;
            verifying.insert(
                super::key_id(key),
                (Algorithm::HS256, DecodingKey::from_secret(key.expose_secret().as_bytes())),
            );
        }
        if let Some(secret) = config.secret {
            check("JWT_SECRET_KEY", secret)?;
            verifying.insert(
                super::key_id(secret),
                (Algorithm::HS256, DecodingKey::from_secret(secret.expose_secret().as_bytes())),
            );
        }
        let mut published = Vec::new();
        let current_public = config.signing_key.map(Ed25519SigningKey::public);
        for key in current_public.iter().chain(config.previous_public_keys) {
            if verifying.contains_key(&key.kid) {
                continue;
            }
            verifying.insert(key.kid.clone(), (Algorithm::EdDSA, DecodingKey::from_ed_der(&key.bytes)));
            published.push(PublishedKey { kid: key.kid.clone(), x: key.x.clone() });
        }
        let signing = match config.algorithm {
            SigningAlgorithm::Hs256 => {
                let secret =
                    config.secret.ok_or_else(|| anyhow::anyhow!("JWT_ALGORITHM=HS256 needs JWT_SECRET_KEY"))?;
                SigningKey {
                    kid: super::key_id(secret),
                    algorithm: Algorithm::HS256,
                    encoding: EncodingKey::from_secret(secret.expose_secret().as_bytes()),
                }
            }
            SigningAlgorithm::EdDsa => {
                let key = config.signing_key.ok_or_else(|| {
                    anyhow::anyhow!("JWT_ALGORITHM=EdDSA needs JWT_SIGNING_KEY (or JWT_SIGNING_KEY_FILE)")
                })?;
                SigningKey { kid: key.public().kid, algorithm: Algorithm::EdDSA, encoding: key.encoding()? }
            }
        };
        Ok(Self {
            signing,
            verifying,
            hs256: validation(Algorithm::HS256),
            eddsa: validation(Algorithm::EdDSA),
            published,
            legacy: None,
        })
    }

    /// Also accepts the Python service's tokens (no `kid`), verified with its secret.
    pub fn with_legacy_secret(mut self, secret: &SecretString) -> Self {
        self.legacy = Some(legacy::LegacyKey::new(secret));
        self
    }

    /// The algorithm new tokens are signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.signing.algorithm
    }

    /// The public keys that verify tokens (the current signing key first): never a secret.
    pub fn published(&self) -> &[PublishedKey] {
        &self.published
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
            legacy: false,
        };
        let mut header = Header::new(self.signing.algorithm);
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
        // Only the Python service's tokens lack a kid; without LEGACY_JWT_SECRET_KEY they are refused.
        if header.kid.is_none()
            && let Some(legacy) = &self.legacy
        {
            let claims = legacy.decode(token, &header, &self.hs256)?;
            crate::metrics::jwt_verify(started.elapsed());
            return check_iat(claims, now);
        }
        // The kid chooses the key, and the key its one algorithm: a token may not pick another
        // (an HS256 token keyed with a public key's bytes is refused here).
        let (algorithm, key) = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(Error::Unauthenticated("Invalid token"))?;
        if header.alg != *algorithm {
            return Err(invalid);
        }
        let validation = if *algorithm == Algorithm::EdDSA { &self.eddsa } else { &self.hs256 };
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|_| Error::Unauthenticated("Invalid token"))?;
        crate::metrics::jwt_verify(started.elapsed());
        check_iat(data.claims, now)
    }
}

/// jsonwebtoken never checks `iat`: not (beyond skew) in the future, not after `exp`.
fn check_iat(claims: Claims, now: DateTime<Utc>) -> Result<Claims> {
    if claims.iat > now.timestamp() + IAT_SKEW_SECS || claims.iat > claims.exp {
        return Err(Error::Unauthenticated("Invalid token"));
    }
    Ok(claims)
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

    /// A P-256 key in PKCS#8 PEM: the right format, the wrong key type.
    const P256_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgi8MLtCJKCqKeXnnT
Gd219cUp7i+j60sCN4B/eemWra+hRANCAASKRyovzJozvFMDRRXsvAtCTzDxSlU8
CzMtegDHrr1gNFDYZYV+SJXQUrfIIdZL7kyWVqOMkRGHOC2F1Xjvpt7Z
-----END PRIVATE KEY-----";
    /// An X25519 public key: SPKI PEM of a key that cannot sign.
    const X25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VuAyEAj+vpeFvnMhgCZk0e+T848ks3weXaszKcUNLQ3CCA/wY=
-----END PUBLIC KEY-----";

    fn ed_keys(signing: &Ed25519SigningKey, secret: Option<&SecretString>, previous: &[Ed25519PublicKey]) -> JwtKeys {
        JwtKeys::from_config(&KeyConfig {
            algorithm: SigningAlgorithm::EdDsa,
            secret,
            previous_secrets: &[],
            signing_key: Some(signing),
            previous_public_keys: previous,
        })
        .unwrap()
    }

    fn header(token: &str) -> serde_json::Value {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        serde_json::from_slice(&b64.decode(token.split('.').next().unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn eddsa_signs_with_the_thumbprint_as_kid() {
        let key = Ed25519SigningKey::generate();
        let k = ed_keys(&key, None, &[]);
        let now = Utc::now();
        let t = token(&k, now);
        let h = header(&t);
        assert_eq!((h["alg"].as_str(), h["kid"].as_str()), (Some("EdDSA"), Some(key.public().kid.as_str())));
        assert!(k.verify(&t, now).is_ok());
        assert_eq!(k.published(), [PublishedKey { kid: key.public().kid, x: key.public().x }]);
        // Another Ed25519 key under the same kid.
        let other = ed_keys(&Ed25519SigningKey::generate(), None, &[]);
        let forged = token(&other, now);
        let parts: Vec<&str> = forged.split('.').collect();
        let (real_header, _) = t.split_once('.').unwrap();
        assert!(k.verify(&format!("{real_header}.{}.{}", parts[1], parts[2]), now).is_err());
    }

    /// RFC 8037 appendix A.3: the thumbprint of its example key.
    #[test]
    fn kid_is_the_rfc_7638_thumbprint() {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let key = Ed25519PublicKey::new(ed25519_dalek::VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap());
        assert_eq!(key.kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn a_kid_verifies_with_its_own_algorithm_only() {
        let key = Ed25519SigningKey::generate();
        let secret = SecretString::from(A.to_owned());
        let k = ed_keys(&key, Some(&secret), &[]);
        let now = Utc::now();
        let claims = k.verify(&token(&k, now), now).unwrap();
        // HS256 keyed with the public key's bytes (raw, base64url, PEM), under the Ed25519 kid.
        let public = key.public();
        for hmac_key in [public.bytes.to_vec(), public.x.clone().into_bytes(), public.to_pem().unwrap().into_bytes()] {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some(public.kid.clone());
            let confused = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&hmac_key)).unwrap();
            assert!(k.verify(&confused, now).is_err());
        }
        // Mixed mode: a token of the HS256 secret still verifies, and the secret is not published.
        assert!(k.verify(&token(&keys(A), now), now).is_ok());
        assert_eq!(k.published().len(), 1);
        // An HS256 kid with alg EdDSA is refused too.
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(crate::crypto::key_id(&secret));
        let der = {
            use ed25519_dalek::pkcs8::EncodePrivateKey;
            key.key.to_pkcs8_der().unwrap()
        };
        let swapped = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap();
        assert!(k.verify(&swapped, now).is_err());
    }

    #[test]
    fn previous_public_key_still_verifies() {
        let now = Utc::now();
        let old = Ed25519SigningKey::generate();
        let t = token(&ed_keys(&old, None, &[]), now);
        let new = Ed25519SigningKey::generate();
        let previous = Ed25519PublicKey::all_from_pem(&old.public().to_pem().unwrap(), "T").unwrap();
        let rotated = ed_keys(&new, None, &previous);
        assert!(rotated.verify(&t, now).is_ok());
        assert_eq!(
            rotated.published().iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
            [new.public().kid, old.public().kid]
        );
        assert!(ed_keys(&new, None, &[]).verify(&t, now).is_err());
    }

    #[test]
    fn pem_round_trips_and_lists_split() {
        let key = Ed25519SigningKey::generate();
        let again = Ed25519SigningKey::from_pem(&key.to_pem().unwrap(), "JWT_SIGNING_KEY").unwrap();
        assert_eq!(again.public(), key.public());
        let two = format!(
            "{},\n{}",
            key.public().to_pem().unwrap(),
            Ed25519SigningKey::generate().public().to_pem().unwrap()
        );
        assert_eq!(Ed25519PublicKey::all_from_pem(&two, "T").unwrap().len(), 2);
        assert!(Ed25519PublicKey::all_from_pem(" \n", "T").unwrap().is_empty());
    }

    #[test]
    fn bad_keys_are_named_and_never_echoed() {
        let garbage = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LW11c3Qtbm90LWxlYWs=\n-----END PRIVATE KEY-----";
        let cases: [(&str, &str); 3] = [
            (garbage, "unparseable PEM"),
            ("not a pem at all: hunter2hunter2", "unparseable PEM"),
            (P256_PRIVATE, "not Ed25519"),
        ];
        for (pem, expected) in cases {
            let error = format!(
                "{:#}",
                Ed25519SigningKey::from_pem(&SecretString::from(pem.to_owned()), "JWT_SIGNING_KEY").unwrap_err()
            );
            assert!(error.contains("JWT_SIGNING_KEY") && error.contains(expected), "{error}");
            for line in pem.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!error.contains(line), "key material in {error}");
            }
        }
        let error =
            format!("{:#}", Ed25519PublicKey::all_from_pem(X25519_PUBLIC, "JWT_PREVIOUS_PUBLIC_KEYS").unwrap_err());
        assert!(error.contains("JWT_PREVIOUS_PUBLIC_KEYS") && error.contains("not Ed25519"), "{error}");
        let error =
            format!("{:#}", Ed25519PublicKey::all_from_pem("MCowBQYDK2Vw", "JWT_PREVIOUS_PUBLIC_KEYS").unwrap_err());
        assert!(error.contains("JWT_PREVIOUS_PUBLIC_KEYS") && !error.contains("MCowBQYDK2Vw"), "{error}");

        let key = Ed25519SigningKey::generate();
        let pem = key.to_pem().unwrap();
        let body: String = pem.expose_secret().lines().filter(|l| !l.starts_with("-----")).collect();
        for debug in [format!("{key:?}"), format!("{:?}", ed_keys(&key, None, &[])), format!("{pem:?}")] {
            assert!(!debug.contains(&body), "{debug}");
        }
    }
}
