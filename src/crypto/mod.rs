//! Cryptographic primitives: password hashing on a bounded pool, the JWT keyring, and
//! Fernet encryption of backend bearer tokens. Nothing here touches the database.

pub mod jwt;
pub mod keyed;
pub mod password;
pub mod secrets;

use secrecy::{ExposeSecret, SecretString};

/// Random URL-safe string of `bytes` bytes of entropy, for generated keys.
pub fn random_token(bytes: usize) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// A short, stable, non-reversible id for a key: the first 8 bytes of its SHA-256, hex.
/// Lets a token name the key that signed it without revealing anything about the key.
pub fn key_id(secret: &SecretString) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(secret.expose_secret().as_bytes());
    hex(&digest[..8])
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
