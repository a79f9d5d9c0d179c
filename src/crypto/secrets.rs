//! Fernet encryption of backend bearer tokens (seed 4.2). The current key encrypts; previous
//! keys still decrypt, so a new `ENCRYPTION_KEY` can roll out without losing stored tokens.

use fernet::Fernet;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};

/// The Fernet keys, current first.
#[derive(Clone)]
pub struct TokenCipher {
    keys: Vec<Fernet>,
}

/// What decrypting told us besides the plaintext.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyUsed {
    Current,
    Previous,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenCipher({} keys)", self.keys.len())
    }
}

impl TokenCipher {
    /// `current` and `previous` are url-safe base64 32-byte Fernet keys. The error names the
    /// setting that is wrong, never the key.
    pub fn new(current: &SecretString, previous: &[SecretString]) -> anyhow::Result<Self> {
        let parse = |name: &str, key: &SecretString| {
            Fernet::new(key.expose_secret().trim()).ok_or_else(|| {
                anyhow::anyhow!(
                    "{name} is not a valid Fernet key (32 bytes, url-safe base64, 44 characters). \
                     Generate one with `instachatico-auth generate-keys`."
                )
            })
        };
        let mut keys = vec![parse("ENCRYPTION_KEY", current)?];
        for key in previous {
            keys.push(parse("ENCRYPTION_PREVIOUS_KEYS", key)?);
        }
        Ok(Self { keys })
    }

    /// A fresh random key, in Fernet's text form.
    pub fn generate_key() -> String {
        Fernet::generate_key()
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        self.keys[0].encrypt(plaintext.as_bytes())
    }

    pub fn decrypt(&self, token: &str) -> Result<SecretString> {
        self.decrypt_with_key_info(token).map(|(s, _)| s)
    }

    /// Decrypts with whichever key works, saying whether it was the current one.
    pub fn decrypt_with_key_info(&self, token: &str) -> Result<(SecretString, KeyUsed)> {
        for (i, key) in self.keys.iter().enumerate() {
            if let Ok(bytes) = key.decrypt(token) {
                let text =
                    String::from_utf8(bytes).map_err(|e| Error::internal("decrypted backend token is not UTF-8", e))?;
                let used = if i == 0 { KeyUsed::Current } else { KeyUsed::Previous };
                return Ok((SecretString::from(text), used));
            }
        }
        Err(Error::internal(
            "backend token cannot be decrypted with any configured ENCRYPTION_KEY",
            anyhow::anyhow!("fernet decryption failed"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rotation() {
        let old = SecretString::from(TokenCipher::generate_key());
        let new = SecretString::from(TokenCipher::generate_key());
        let before = TokenCipher::new(&old, &[]).unwrap();
        let token = before.encrypt("bearer_token_322");
        let after = TokenCipher::new(&new, &[old]).unwrap();
        let (plain, used) = after.decrypt_with_key_info(&token).unwrap();
        assert_eq!(plain.expose_secret(), "bearer_token_322");
        assert_eq!(used, KeyUsed::Previous);
        let reencrypted = after.encrypt(plain.expose_secret());
        assert_eq!(after.decrypt_with_key_info(&reencrypted).unwrap().1, KeyUsed::Current);
        assert!(TokenCipher::new(&new, &[]).unwrap().decrypt(&token).is_err());
    }

    #[test]
    fn bad_key_is_named_not_shown() {
        let err = TokenCipher::new(&SecretString::from("not-a-key".to_owned()), &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ENCRYPTION_KEY"));
        assert!(!text.contains("not-a-key"));
    }
}
