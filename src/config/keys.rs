//! The keys in force: from the settings, their `*_FILE`s, or (development only) a key file in
//! DATA_DIR. Read and checked first; a new development key file is written only when asked.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};

use super::{AppEnv, Config, create_private_dir, write_private};
use crate::crypto::jwt::JwtKeys;
use crate::crypto::keyed::NameHasher;
use crate::crypto::secrets::TokenCipher;

/// Name of the development key file inside DATA_DIR.
pub const DEV_KEYS_FILE: &str = "dev-keys.env";

/// The keys, ready to use: signing and verifying keys, the backend-token cipher, and the key
/// that hashes unknown login names. `Debug` shows key ids and counts only.
#[derive(Debug, Clone)]
pub struct Keys {
    pub jwt: JwtKeys,
    pub cipher: TokenCipher,
    pub names: NameHasher,
}

/// Keys read and checked, and the development key file they may still need written.
pub(super) struct Resolved {
    pub keys: Keys,
    /// The current secrets, for the checks that compare them (`settings::risky_settings`).
    pub jwt_current: SecretString,
    pub encryption_current: SecretString,
    dev_file: Option<DevKeyFile>,
}

/// Development keys, from an existing file or generated and not yet written.
enum DevKeyFile {
    Existing(PathBuf),
    Generated { path: PathBuf, text: String },
}

impl Resolved {
    /// Reads the keys: settings, then `*_FILE`, then (development only) DATA_DIR's key file,
    /// generating keys in memory when there is none. Nothing is written. In production a
    /// missing key is an error that says how to make one.
    pub fn read(config: &Config) -> anyhow::Result<Self> {
        let jwt =
            from_setting_or_file(&config.jwt_secret_key, config.jwt_secret_key_file.as_deref(), "JWT_SECRET_KEY")?;
        let enc =
            from_setting_or_file(&config.encryption_key, config.encryption_key_file.as_deref(), "ENCRYPTION_KEY")?;
        let (jwt, enc, dev_file) = match (jwt, enc) {
            (Some(j), Some(e)) => (j, e, None),
            (j, e) => {
                if config.app_env == AppEnv::Production {
                    let missing: Vec<&str> = [("JWT_SECRET_KEY", j.is_none()), ("ENCRYPTION_KEY", e.is_none())]
                        .into_iter()
                        .filter_map(|(name, missing)| missing.then_some(name))
                        .collect();
                    bail!(
                        "{} not set and APP_ENV=production. Generate keys with `instachatico-auth generate-keys` \
                         and set them in the environment (or *_FILE). Keep ENCRYPTION_KEY safe: stored backend \
                         tokens cannot be read without it.",
                        missing.join(" and ")
                    );
                }
                let (dev_jwt, dev_enc, file) = dev_keys(&config.data_dir)?;
                (j.unwrap_or(dev_jwt), e.unwrap_or(dev_enc), Some(file))
            }
        };
        let jwt_previous = present(&config.jwt_previous_secret_keys);
        let encryption_previous = present(&config.encryption_previous_keys);
        let keys = Keys {
            jwt: JwtKeys::new(&jwt, &jwt_previous)?,
            cipher: TokenCipher::new(&enc, &encryption_previous)?,
            names: NameHasher::new(&jwt),
        };
        Ok(Self { keys, jwt_current: jwt, encryption_current: enc, dev_file })
    }

    /// The keys, after writing generated development keys (mode 0600) so that the next start
    /// uses the same ones. Call it once every other setting has been checked.
    pub fn commit(self) -> anyhow::Result<Keys> {
        match self.dev_file {
            None => {}
            Some(DevKeyFile::Existing(path)) => {
                tracing::warn!(path = %path.display(), "using DEVELOPMENT keys from the data directory; not for production");
            }
            Some(DevKeyFile::Generated { path, text }) => {
                if let Some(dir) = path.parent() {
                    create_private_dir(dir)?;
                }
                write_private(&path, &text)?;
                tracing::warn!(
                    path = %path.display(),
                    "!!! No JWT_SECRET_KEY/ENCRYPTION_KEY configured: generated DEVELOPMENT keys. \
                     Set real keys (instachatico-auth generate-keys) and APP_ENV=production for any real deployment. !!!"
                );
            }
        }
        Ok(self.keys)
    }
}

/// An empty list setting (KEY="" or a trailing comma) means no key, not an empty key.
fn present(keys: &[SecretString]) -> Vec<SecretString> {
    keys.iter()
        .map(|k| k.expose_secret().trim())
        .filter(|k| !k.is_empty())
        .map(|k| SecretString::from(k.to_owned()))
        .collect()
}

fn from_setting_or_file(
    value: &Option<SecretString>,
    file: Option<&Path>,
    name: &str,
) -> anyhow::Result<Option<SecretString>> {
    if let Some(v) = value.as_ref().filter(|v| !v.expose_secret().trim().is_empty()) {
        return Ok(Some(SecretString::from(v.expose_secret().trim().to_owned())));
    }
    match file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {name}_FILE {}", path.display()))?;
            Ok(Some(SecretString::from(text.trim().to_owned())))
        }
        None => Ok(None),
    }
}

/// Development keys: those of DATA_DIR's key file, or fresh ones for [`Resolved::commit`] to
/// write there (generated once, then reused on every start).
fn dev_keys(data_dir: &Path) -> anyhow::Result<(SecretString, SecretString, DevKeyFile)> {
    let path = data_dir.join(DEV_KEYS_FILE);
    if !path.exists() {
        let (jwt, enc) = (crate::crypto::random_token(48), TokenCipher::generate_key());
        let text = format!(
            "# Development keys generated by instachatico-auth. Never use them in production.\n\
             JWT_SECRET_KEY={jwt}\nENCRYPTION_KEY={enc}\n"
        );
        return Ok((SecretString::from(jwt), SecretString::from(enc), DevKeyFile::Generated { path, text }));
    }
    let mut jwt = None;
    let mut enc = None;
    for item in dotenvy::from_path_iter(&path).with_context(|| format!("cannot read {}", path.display()))? {
        let (key, value) = item.with_context(|| format!("malformed {}", path.display()))?;
        match key.as_str() {
            "JWT_SECRET_KEY" => jwt = Some(SecretString::from(value)),
            "ENCRYPTION_KEY" => enc = Some(SecretString::from(value)),
            _ => {}
        }
    }
    match (jwt, enc) {
        (Some(j), Some(e)) => Ok((j, e, DevKeyFile::Existing(path))),
        _ => bail!("{} lacks JWT_SECRET_KEY or ENCRYPTION_KEY; delete it to regenerate", path.display()),
    }
}
