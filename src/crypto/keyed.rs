//! Keyed hashes of what people type where a name belongs: a name that matches no account is
//! kept (as a throttling subject) only as an HMAC under a server secret, so a password typed
//! into the username box by mistake does not sit in the database as an easily cracked hash.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The HMAC key, derived from the JWT signing secret for this one purpose.
#[derive(Clone)]
pub struct NameHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for NameHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameHasher(..)")
    }
}

impl NameHasher {
    /// Derives the key from `secret` (HMAC-SHA256 of a fixed label), so that it differs from
    /// every other use of that secret. Rotating the secret only forgets the throttling state of
    /// names that match no account.
    pub fn new(secret: &SecretString) -> Self {
        let key = mac(secret.expose_secret().as_bytes(), b"instachatico-auth/unknown-login-subject/v1");
        Self { key }
    }

    /// The throttling subject of a name that matches no account: case-insensitive, as logins are.
    pub fn unknown_login(&self, login: &str) -> String {
        let digest = mac(&self.key, login.to_lowercase().as_bytes());
        format!("login:{}", super::hex(&digest[..16]))
    }
}

fn mac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("any key length"));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_keyed_and_case_insensitive() {
        let a = NameHasher::new(&SecretString::from("a".repeat(32)));
        let b = NameHasher::new(&SecretString::from("b".repeat(32)));
        assert_eq!(a.unknown_login("Typo_Password1!"), a.unknown_login("typo_password1!"));
        assert_ne!(a.unknown_login("typo_password1!"), b.unknown_login("typo_password1!"));
        // Not the plain SHA-256 that an attacker could look up or crack without the key.
        use sha2::Digest;
        let plain = crate::crypto::hex(&sha2::Sha256::digest(b"typo_password1!")[..16]);
        assert!(!a.unknown_login("typo_password1!").contains(&plain[..24]));
        assert!(a.unknown_login("x").len() <= 80, "fits login_throttles.subject");
    }
}
