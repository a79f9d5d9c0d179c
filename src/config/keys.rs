//! The keys in force: from the settings, their `*_FILE`s, or (development only) a key file in
//! DATA_DIR. Read and checked first; a new development key file is written only when asked.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};

use super::{AppEnv, Config, JwtAlgorithm, create_private_dir, write_private};
use crate::crypto::jwt::{Ed25519PublicKey, Ed25519SigningKey, JwtKeys, KeyConfig};
use crate::crypto::keyed::NameHasher;
use crate::crypto::secrets::TokenCipher;

/// Name of the development key file inside DATA_DIR.
pub const DEV_KEYS_FILE: &str = "dev-keys.env";
/// Name of the development Ed25519 signing key (PKCS#8 PEM) inside DATA_DIR, for
/// JWT_ALGORITHM=EdDSA without JWT_SIGNING_KEY.
pub const DEV_SIGNING_KEY_FILE: &str = "dev-jwt-signing-key.pem";

/// The keys, ready to use: signing and verifying keys, the backend-token cipher, and the key
/// that hashes unknown login names. `Debug` shows key ids and counts only.
#[derive(Debug, Clone)]
pub struct Keys {
    pub jwt: JwtKeys,
    pub cipher: TokenCipher,
    pub names: NameHasher,
}

/// Keys read and checked, and the development key files they may still need written.
pub(super) struct Resolved {
    pub keys: Keys,
    /// The HS256 secret in force, for the checks that compare them (`settings::risky_settings`).
    pub jwt_current: Option<SecretString>,
    pub encryption_current: SecretString,
    dev_file: Option<DevKeyFile>,
    dev_signing_key: Option<DevKeyFile>,
}

/// Development keys, from an existing file or generated and not yet written.
enum DevKeyFile {
    Existing(PathBuf),
    Generated { path: PathBuf, text: SecretString },
}

impl Resolved {
    /// Reads the keys: settings, then `*_FILE`, then (development only) DATA_DIR's key files,
    /// generating keys in memory when there are none. Nothing is written. In production a
    /// missing key is an error that says how to make one.
    pub fn read(config: &Config) -> anyhow::Result<Self> {
        let eddsa = config.jwt_algorithm == JwtAlgorithm::EdDsa;
        let jwt =
            from_setting_or_file(&config.jwt_secret_key, config.jwt_secret_key_file.as_deref(), "JWT_SECRET_KEY")?;
        let enc =
            from_setting_or_file(&config.encryption_key, config.encryption_key_file.as_deref(), "ENCRYPTION_KEY")?;
        let signing_pem = if eddsa {
            from_setting_or_file(&config.jwt_signing_key, config.jwt_signing_key_file.as_deref(), "JWT_SIGNING_KEY")?
        } else {
            None
        };
        let previous_public_keys = previous_public_keys(config)?;
        if config.app_env == AppEnv::Production {
            let missing: Vec<&str> = [
                ("JWT_SECRET_KEY", !eddsa && jwt.is_none()),
                ("JWT_SIGNING_KEY", eddsa && signing_pem.is_none()),
                ("ENCRYPTION_KEY", enc.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, missing)| missing.then_some(name))
            .collect();
            if !missing.is_empty() {
                bail!(
                    "{} not set and APP_ENV=production. Generate keys with `instachatico-auth generate-keys` \
                     and set them in the environment (or *_FILE). Keep ENCRYPTION_KEY safe: stored backend \
                     tokens cannot be read without it.",
                    missing.join(" and ")
                );
            }
        }
        let signing_key = match &signing_pem {
            Some(pem) => Some(Ed25519SigningKey::from_pem(pem, "JWT_SIGNING_KEY")?),
            None => None,
        };
        // Development: DATA_DIR's key file fills in what is missing. With EdDSA its HS256
        // secret only keys the name hasher; HS256 tokens verify only with a configured secret.
        let needs_dev_file = config.app_env != AppEnv::Production && (enc.is_none() || jwt.is_none());
        let (dev_jwt, dev_enc, dev_file) = if needs_dev_file {
            let (j, e, file) = dev_keys(&config.data_dir)?;
            (Some(j), Some(e), Some(file))
        } else {
            (None, None, None)
        };
        let (signing_key, dev_signing_key) = match signing_key {
            Some(key) => (Some(key), None),
            None if eddsa => {
                let (key, file) = dev_signing_key(&config.data_dir)?;
                (Some(key), Some(file))
            }
            None => (None, None),
        };
        let enc = enc.or(dev_enc).ok_or_else(|| anyhow::anyhow!("ENCRYPTION_KEY missing"))?;
        let hs256_secret = if eddsa { jwt.clone() } else { jwt.clone().or(dev_jwt.clone()) };
        // The name hasher's key: the HS256 secret, or (EdDSA in production without one) the
        // signing key, which is just as secret.
        let names_key = jwt.or(dev_jwt).or(signing_pem).ok_or_else(|| anyhow::anyhow!("JWT_SECRET_KEY missing"))?;
        let legacy = from_setting_or_file(
            &config.legacy_jwt_secret_key,
            config.legacy_jwt_secret_key_file.as_deref(),
            "LEGACY_JWT_SECRET_KEY",
        )?;
        let jwt_previous = present(&config.jwt_previous_secret_keys);
        let encryption_previous = present(&config.encryption_previous_keys);
        let jwt = JwtKeys::from_config(&KeyConfig {
            algorithm: config.jwt_algorithm.into(),
            secret: hs256_secret.as_ref(),
            previous_secrets: &jwt_previous,
            signing_key: signing_key.as_ref(),
            previous_public_keys: &previous_public_keys,
        })?;
        let keys = Keys {
            jwt: match &legacy {
                Some(secret) => jwt.with_legacy_secret(secret),
                None => jwt,
            },
            cipher: TokenCipher::new(&enc, &encryption_previous)?,
            names: NameHasher::new(&names_key),
        };
        Ok(Self { keys, jwt_current: hs256_secret, encryption_current: enc, dev_file, dev_signing_key })
    }

    /// The keys, after writing generated development keys (mode 0600) so that the next start
    /// uses the same ones. Call it once every other setting has been checked.
    pub fn commit(self) -> anyhow::Result<Keys> {
        for file in [self.dev_file, self.dev_signing_key].into_iter().flatten() {
            match file {
                DevKeyFile::Existing(path) => {
                    tracing::warn!(path = %path.display(), "using DEVELOPMENT keys from the data directory; not for production");
                }
                DevKeyFile::Generated { path, text } => {
                    if let Some(dir) = path.parent() {
                        create_private_dir(dir)?;
                    }
                    write_private(&path, text.expose_secret())?;
                    tracing::warn!(
                        path = %path.display(),
                        "!!! Keys not configured (JWT_SECRET_KEY/JWT_SIGNING_KEY/ENCRYPTION_KEY): generated DEVELOPMENT keys. \
                         Set real keys (instachatico-auth generate-keys) and APP_ENV=production for any real deployment. !!!"
                    );
                }
            }
        }
        Ok(self.keys)
    }
}

/// `JWT_PREVIOUS_PUBLIC_KEYS`, or the keys in its `_FILE`.
fn previous_public_keys(config: &Config) -> anyhow::Result<Vec<Ed25519PublicKey>> {
    if let Some(text) = config.jwt_previous_public_keys.as_deref().filter(|t| !t.trim().is_empty()) {
        return Ed25519PublicKey::all_from_pem(text, "JWT_PREVIOUS_PUBLIC_KEYS");
    }
    match &config.jwt_previous_public_keys_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read JWT_PREVIOUS_PUBLIC_KEYS_FILE {}", path.display()))?;
            Ed25519PublicKey::all_from_pem(&text, "JWT_PREVIOUS_PUBLIC_KEYS_FILE")
        }
        None => Ok(Vec::new()),
    }
}

/// The development Ed25519 key: DATA_DIR's PEM file, or a fresh one for [`Resolved::commit`]
/// to write there.
fn dev_signing_key(data_dir: &Path) -> anyhow::Result<(Ed25519SigningKey, DevKeyFile)> {
    let path = data_dir.join(DEV_SIGNING_KEY_FILE);
    if path.exists() {
        let pem = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let key = Ed25519SigningKey::from_pem(&SecretString::from(pem), &path.display().to_string())?;
        return Ok((key, DevKeyFile::Existing(path)));
    }
    let key = Ed25519SigningKey::generate();
    let text = key.to_pem()?;
    Ok((key, DevKeyFile::Generated { path, text }))
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
        return Ok((
            SecretString::from(jwt),
            SecretString::from(enc),
            DevKeyFile::Generated { path, text: text.into() },
        ));
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
