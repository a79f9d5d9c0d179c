//! Passkeys (WebAuthn, issue 14) with `webauthn-rs`: registration by a signed-in user, the
//! user's list (rename, delete), a passkey as the second step of a sign-in (bound to the
//! mfa_token Login answered) and a passwordless sign-in with a discoverable credential.
//!
//! A ceremony's state (the challenge) stays server-side in `passkey_ceremonies`, found by the
//! SHA-256 of a random ceremony token the client holds, bound to the client address and to the
//! user or the mfa_token. It is single-use: whatever finishes it deletes the row with a
//! conditional DELETE inside the transaction that acts (stores the passkey, or opens the session
//! in `auth::open_session`), so of many concurrent finishes exactly one wins. A failed check
//! spends the ceremony too. After each use the stored credential is rewritten as the crate
//! updated it (its signature counter), so a counter that goes backwards (a cloned
//! authenticator) is refused by the crate at the next use; that rewrite only moves the counter
//! forward, so of concurrent uses the highest counter stays.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Uuid, Webauthn, WebauthnBuilder, WebauthnError,
};

use super::App;
use super::audit::{self, Action, Event};
use super::auth::client_key;
use super::mfa::{Proof, sha256_hex};
use super::sessions::user_subject;
use super::types::{ClientInfo, LoginOutcome, Principal, UserId};
use super::writes::{Acting, Target};
use crate::db::models::{mfa, passkeys, users};
use crate::error::{Error, Result};
use crate::model::{PasskeyCeremony, PasskeyRecord};

/// How the methods list of Login names a passkey.
pub const METHOD: &str = "webauthn";
/// How long a ceremony may take (the browser's own timeout is the crate's, 5 minutes).
pub const CEREMONY_LIFETIME_MINUTES: i64 = 5;
/// Passkeys one user may hold.
pub const MAX_PASSKEYS: usize = 20;
/// Longest passkey name, in characters.
pub const NAME_MAX: usize = 64;
/// The name of a passkey registered without one.
pub const DEFAULT_NAME: &str = "Passkey";
/// Ceremony tokens start with this.
pub const CEREMONY_PREFIX: &str = "pkc_";
/// A ceremony token is at most this long (anything longer is not one of ours).
pub const CEREMONY_MAX: usize = 128;

pub(crate) const CEREMONY_REFUSED: &str = "Invalid, used or expired passkey ceremony; start again";
const NOT_VERIFIED: &str = "The passkey could not be verified";
const OFF: &str = "Passkeys are off: FRONTEND_URL names no domain the browser can use as relying party id";

const PURPOSE_REGISTER: &str = "register";
const PURPOSE_SECOND_FACTOR: &str = "second_factor";
const PURPOSE_PASSWORDLESS: &str = "passwordless";

/// The relying party: its id is the host of the first FRONTEND_URL origin, and exactly the
/// FRONTEND_URL origins on that host (or a subdomain of it) may run ceremonies: not any other
/// subdomain, port or scheme, since a page there is not the UI (a subdomain may be another
/// tenant's, or a forgotten one).
pub struct RelyingParty {
    webauthn: Webauthn,
    id: String,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty").field("id", &self.id).finish_non_exhaustive()
    }
}

impl RelyingParty {
    /// From FRONTEND_URL's origins. `Ok(None)` when the first names no domain (an IP address:
    /// WebAuthn needs a domain), so passkeys are off; an origin on another site is an error.
    pub fn from_origins(origins: &[String]) -> anyhow::Result<Option<Self>> {
        let urls = origins
            .iter()
            .map(|s| s.trim().trim_end_matches('/'))
            .filter(|s| !s.is_empty())
            .map(Url::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = urls.first() else { return Ok(None) };
        let Some(id) = first.domain().map(str::to_owned) else { return Ok(None) };
        let mut builder = WebauthnBuilder::new(&id, first)
            .map_err(|e| anyhow::anyhow!("FRONTEND_URL: {first} cannot be a WebAuthn origin: {e}"))?
            .rp_name(super::mfa::ISSUER);
        for url in &urls[1..] {
            let same_site = url.domain().is_some_and(|d| d == id || d.ends_with(&format!(".{id}")));
            if same_site {
                builder = builder.append_allowed_origin(url);
            }
        }
        let webauthn = builder.build().map_err(|e| anyhow::anyhow!("cannot set up WebAuthn: {e}"))?;
        Ok(Some(Self { webauthn, id }))
    }

    /// The relying-party id (a domain).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// What the browser gets to start a ceremony: the token its finish names and the options for
/// `navigator.credentials.create()` or `.get()` (`{"publicKey": {...}}`).
pub struct CeremonyStart {
    pub ceremony: SecretString,
    pub options: serde_json::Value,
}

impl std::fmt::Debug for CeremonyStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CeremonyStart").finish_non_exhaustive()
    }
}

/// A passkey as its owner sees it (no key material).
#[derive(Debug, Clone)]
pub struct PasskeyView {
    pub id: i32,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<&PasskeyRecord> for PasskeyView {
    fn from(r: &PasskeyRecord) -> Self {
        Self { id: r.id, name: r.name.clone(), created_at: r.created_at, last_used_at: r.last_used_at }
    }
}

/// The state a registration ceremony keeps: the user handle the options named, and the crate's.
#[derive(Serialize, Deserialize)]
struct RegistrationState {
    user_handle: Uuid,
    state: PasskeyRegistration,
}

/// What a finished sign-in with a passkey proves, for `auth::open_session`: the ceremony is
/// spent and the credential's new state stored in the transaction that opens the session; a
/// second step also re-checks the password behind the mfa_token and ends it.
#[derive(Clone)]
pub(super) struct PasskeyProof {
    pub ceremony_sha256: String,
    pub passkey_id: i32,
    pub passkey_json: String,
    /// The signature counter this use presented (stored only if no higher one is).
    pub counter: u32,
    /// (SHA-256 of the password hash checked, SHA-256 of the mfa_token): a second step.
    pub second_factor: Option<(String, String)>,
}

impl std::fmt::Debug for PasskeyProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasskeyProof")
            .field("passkey_id", &self.passkey_id)
            .field("second_factor", &self.second_factor.is_some())
            .finish_non_exhaustive()
    }
}

impl App {
    fn relying_party(&self) -> Result<&RelyingParty> {
        self.inner.relying_party.as_deref().ok_or(Error::FailedPrecondition(OFF))
    }

    /// Starts registering a passkey for the caller: options that ask the authenticator for a
    /// discoverable credential (usable passwordless) verified by the user, excluding the
    /// caller's existing ones.
    pub async fn start_passkey_registration(
        &self,
        principal: &Principal,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<CeremonyStart> {
        let rp = self.relying_party()?;
        let user = &principal.user;
        let mut conn = self.db().get().await?;
        let existing = passkeys::list(&mut conn, user.id).await?;
        drop(conn);
        if existing.len() >= MAX_PASSKEYS {
            return Err(Error::FailedPrecondition("You already have 20 passkeys; delete one first"));
        }
        let user_handle = match existing.first() {
            Some(record) => Uuid::parse_str(&record.user_handle)
                .map_err(|e| Error::internal("a stored passkey user handle is not a UUID", e))?,
            None => Uuid::new_v4(),
        };
        let exclude = existing.iter().map(|r| decode_passkey(r).map(|p| p.cred_id().clone())).collect::<Result<_>>()?;
        let (mut ccr, state) = rp
            .webauthn
            .start_passkey_registration(user_handle, &user.username, &user.username, Some(exclude))
            .map_err(|e| Error::internal("cannot start a passkey registration", anyhow::anyhow!("{e}")))?;
        // A discoverable credential, so that the passkey also signs in without a password.
        if let Some(selection) = ccr.public_key.authenticator_selection.as_mut() {
            selection.resident_key = Some(webauthn_rs_proto::ResidentKeyRequirement::Required);
            selection.require_resident_key = true;
        }
        let state = to_json(&RegistrationState { user_handle, state })?;
        let options = serde_json::to_value(&ccr).map_err(|e| Error::internal("cannot write passkey options", e))?;
        let ceremony = self.begin_ceremony(PURPOSE_REGISTER, Some(user.id), None, state, client, now).await?;
        Ok(CeremonyStart { ceremony, options })
    }

    /// Finishes a registration: the credential the authenticator made for this ceremony is
    /// checked and stored under `name`. The ceremony is spent either way.
    pub async fn finish_passkey_registration(
        &self,
        principal: &Principal,
        ceremony: &str,
        name: &str,
        credential: serde_json::Value,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<PasskeyView> {
        let rp = self.relying_party()?;
        let name = passkey_name(name, true)?;
        let ceremony_sha256 = ceremony_hash(ceremony)?;
        let user_id = principal.user.id;
        let found = self
            .live_ceremony(&ceremony_sha256, client, now)
            .await?
            .filter(|c| c.purpose == PURPOSE_REGISTER && c.user_id == Some(user_id))
            .ok_or(Error::FailedPrecondition(CEREMONY_REFUSED))?;
        let credential: RegisterPublicKeyCredential =
            serde_json::from_value(without_extensions(credential)).map_err(|_| {
                Error::invalid(
                    "credential",
                    "is not the JSON of a PublicKeyCredential from navigator.credentials.create()",
                )
            })?;
        let state: RegistrationState = from_json(&found.state_json)?;
        let passkey = match rp.webauthn.finish_passkey_registration(&credential, &state.state) {
            Ok(passkey) => passkey,
            Err(e) => {
                self.spend_ceremony(&ceremony_sha256, now).await;
                let event = Event::new(Action::PasskeyRefused, Some(user_id))
                    .with("ceremony", PURPOSE_REGISTER)
                    .with("reason", refusal_reason(&e));
                self.audit_best_effort(event, client, now).await;
                return Err(Error::PermissionDenied(NOT_VERIFIED));
            }
        };
        let credential_id = URL_SAFE_NO_PAD.encode::<&[u8]>(passkey.cred_id().as_ref());
        let passkey_json = to_json(&passkey)?;
        let user_handle = state.user_handle.to_string();
        let record = self
            .change_user(
                Acting::owner(principal),
                Target::user(user_id),
                client,
                now,
                Box::new(move |c, _| {
                    let (ceremony_sha256, credential_id, user_handle, passkey_json, name) = (
                        ceremony_sha256.clone(),
                        credential_id.clone(),
                        user_handle.clone(),
                        passkey_json.clone(),
                        name.clone(),
                    );
                    Box::pin(async move {
                        if !passkeys::take_ceremony(c, &ceremony_sha256, now).await? {
                            return Err(Error::FailedPrecondition(CEREMONY_REFUSED));
                        }
                        let record =
                            passkeys::insert(c, user_id, &credential_id, &user_handle, &passkey_json, &name, now)
                                .await
                                .map_err(|e| match e {
                                    Error::AlreadyExists { .. } => {
                                        Error::FailedPrecondition("That passkey is already registered")
                                    }
                                    other => other,
                                })?;
                        let event = Event::new(Action::PasskeyRegistered, Some(user_id)).with("passkey_id", record.id);
                        Ok((record, event))
                    })
                }),
            )
            .await?;
        Ok(PasskeyView::from(&record))
    }

    /// The caller's passkeys (no key material).
    pub async fn list_passkeys(&self, user_id: UserId) -> Result<Vec<PasskeyView>> {
        let mut conn = self.db().get().await?;
        Ok(passkeys::list(&mut conn, user_id).await?.iter().map(PasskeyView::from).collect())
    }

    /// Renames one of the caller's passkeys, answering it as renamed (from the same statement:
    /// a delete that commits right after cannot turn a done rename into NotFound).
    pub async fn rename_passkey(
        &self,
        principal: &Principal,
        id: i32,
        name: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<PasskeyView> {
        let name = passkey_name(name, false)?;
        let user_id = principal.user.id;
        let record = self
            .change_user(
                Acting::owner(principal),
                Target::user(user_id),
                client,
                now,
                Box::new(move |c, _| {
                    let name = name.clone();
                    Box::pin(async move {
                        let record =
                            passkeys::rename(c, user_id, id, &name).await?.ok_or(Error::NotFound("passkey"))?;
                        Ok((record, Event::new(Action::PasskeyRenamed, Some(user_id)).with("passkey_id", id)))
                    })
                }),
            )
            .await?;
        Ok(PasskeyView::from(&record))
    }

    /// Deletes one of the caller's passkeys.
    pub async fn delete_passkey(
        &self,
        principal: &Principal,
        id: i32,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let user_id = principal.user.id;
        self.change_user(
            Acting::owner(principal),
            Target::user(user_id),
            client,
            now,
            Box::new(move |c, _| {
                Box::pin(async move {
                    if !passkeys::delete(c, user_id, id).await? {
                        return Err(Error::NotFound("passkey"));
                    }
                    Ok(((), Event::new(Action::PasskeyDeleted, Some(user_id)).with("passkey_id", id)))
                })
            }),
        )
        .await
    }

    /// Starts a sign-in with a passkey: passwordless (no `mfa_token`: any discoverable
    /// credential), or the second step of the sign-in whose mfa_token this is (that user's
    /// passkeys only).
    pub async fn start_passkey_sign_in(
        &self,
        mfa_token: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<CeremonyStart> {
        let rp = self.relying_party()?;
        let mfa_token = mfa_token.trim();
        if mfa_token.is_empty() {
            // Unauthenticated and it writes a row: limited like Login.
            self.check_login_rate(client.ip, now).await?;
            let (mut rcr, state) = rp
                .webauthn
                .start_discoverable_authentication()
                .map_err(|e| Error::internal("cannot start a passkey sign-in", anyhow::anyhow!("{e}")))?;
            // The crate asks for conditional mediation (autofill UI); a sign-in button wants the
            // normal modal one, and the page may add `mediation` itself.
            rcr.mediation = None;
            let options = serde_json::to_value(&rcr).map_err(|e| Error::internal("cannot write passkey options", e))?;
            let ceremony = self.begin_ceremony(PURPOSE_PASSWORDLESS, None, None, to_json(&state)?, client, now).await?;
            return Ok(CeremonyStart { ceremony, options });
        }
        let (challenge_sha256, challenge) = self.live_challenge(mfa_token, false, client, now).await?;
        let user_id = challenge.user_id;
        let mut conn = self.db().get().await?;
        let records = passkeys::list(&mut conn, user_id).await?;
        drop(conn);
        if records.is_empty() {
            return Err(Error::Unauthenticated("This account has no passkey; use another method"));
        }
        let creds = records.iter().map(decode_passkey).collect::<Result<Vec<_>>>()?;
        let (rcr, state) = rp
            .webauthn
            .start_passkey_authentication(&creds)
            .map_err(|e| Error::internal("cannot start a passkey sign-in", anyhow::anyhow!("{e}")))?;
        let options = serde_json::to_value(&rcr).map_err(|e| Error::internal("cannot write passkey options", e))?;
        let ceremony = self
            .begin_ceremony(PURPOSE_SECOND_FACTOR, Some(user_id), Some(challenge_sha256), to_json(&state)?, client, now)
            .await?;
        Ok(CeremonyStart { ceremony, options })
    }

    /// Finishes a sign-in with a passkey and opens the session Login would have opened.
    pub async fn finish_passkey_sign_in(
        &self,
        ceremony: &str,
        credential: serde_json::Value,
        mfa_token: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<LoginOutcome> {
        let rp = self.relying_party()?;
        let ceremony_sha256 = ceremony_hash(ceremony)?;
        let credential: PublicKeyCredential = serde_json::from_value(without_extensions(credential)).map_err(|_| {
            Error::invalid("credential", "is not the JSON of a PublicKeyCredential from navigator.credentials.get()")
        })?;
        let mfa_token = mfa_token.trim();
        let found = self.live_ceremony(&ceremony_sha256, client, now).await?.filter(|c| {
            if mfa_token.is_empty() {
                c.purpose == PURPOSE_PASSWORDLESS
            } else {
                c.purpose == PURPOSE_SECOND_FACTOR && c.mfa_token_sha256.as_deref() == Some(&sha256_hex(mfa_token))
            }
        });
        let Some(found) = found else { return Err(Error::Unauthenticated(CEREMONY_REFUSED)) };
        let credential_id = URL_SAFE_NO_PAD.encode(credential.get_credential_id());
        let mut conn = self.db().get().await?;
        let record = passkeys::find_by_credential(&mut conn, &credential_id).await?;
        drop(conn);
        let second_factor = found.purpose == PURPOSE_SECOND_FACTOR;
        // The mfa_token a refused second step counts against.
        let step = found.mfa_token_sha256.as_deref().filter(|_| second_factor);

        // Whose credential it is, before any signature is checked.
        let record = match (record, found.user_id) {
            (Some(r), Some(owner)) if r.user_id == owner => r,
            (Some(r), None) => {
                let handle = rp.webauthn.identify_discoverable_authentication(&credential).ok().map(|(u, _)| u);
                if handle.is_none_or(|h| h.to_string() != r.user_handle) {
                    let user = Some(r.user_id);
                    return Err(self.passkey_refused(&ceremony_sha256, user, None, "user_handle", client, now).await);
                }
                r
            }
            // Unknown, or another user's: counted against the user of a second step only.
            (_, owner) => {
                let reason = "unknown_credential";
                return Err(self.passkey_refused(&ceremony_sha256, owner, step, reason, client, now).await);
            }
        };
        let user_id = record.user_id;
        self.refuse_if_throttled(Some(user_id), &user_subject(user_id), client, now).await?;
        let mut passkey = decode_passkey(&record)?;
        let verified = if second_factor {
            let state: PasskeyAuthentication = from_json(&found.state_json)?;
            rp.webauthn.finish_passkey_authentication(&credential, &state)
        } else {
            let state: DiscoverableAuthentication = from_json(&found.state_json)?;
            rp.webauthn.finish_discoverable_authentication_v2(&credential, state, &passkey)
        };
        let result = match verified {
            Ok(result) => result,
            Err(e) => {
                let (reason, user) = (refusal_reason(&e), Some(user_id));
                return Err(self.passkey_refused(&ceremony_sha256, user, step, reason, client, now).await);
            }
        };
        passkey.update_credential(&result);
        let mut conn = self.db().get().await?;
        let (user, backend) = users::find(&mut conn, user_id).await?.ok_or(Error::Unauthenticated(CEREMONY_REFUSED))?;
        let second = match &found.mfa_token_sha256 {
            Some(token_sha256) if second_factor => {
                let challenge = mfa::find_challenge(&mut conn, token_sha256)
                    .await?
                    .ok_or(Error::Unauthenticated(super::mfa::TOKEN_REFUSED))?;
                Some((challenge.password_sha256, token_sha256.clone()))
            }
            _ => None,
        };
        drop(conn);
        let proof = Proof::Passkey(PasskeyProof {
            ceremony_sha256,
            passkey_id: record.id,
            passkey_json: to_json(&passkey)?,
            counter: result.counter(),
            second_factor: second,
        });
        match self.open_session(user, backend, proof, client, now).await? {
            Some((outcome, _)) => Ok(outcome),
            None => Err(Error::Unauthenticated(CEREMONY_REFUSED)),
        }
    }

    /// Stores a new ceremony and returns its token (only its SHA-256 is kept).
    async fn begin_ceremony(
        &self,
        purpose: &'static str,
        user_id: Option<UserId>,
        mfa_token_sha256: Option<String>,
        state_json: String,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<SecretString> {
        let token = SecretString::from(format!("{CEREMONY_PREFIX}{}", crate::crypto::random_token(32)));
        let ceremony = PasskeyCeremony {
            token_sha256: sha256_hex(token.expose_secret()),
            purpose: purpose.to_owned(),
            user_id,
            mfa_token_sha256,
            ip_address: client_key(client),
            state_json,
            created_at: now,
            expires_at: now + chrono::Duration::minutes(CEREMONY_LIFETIME_MINUTES),
        };
        self.db()
            .write(Box::new(move |c| {
                let ceremony = ceremony.clone();
                Box::pin(async move { passkeys::insert_ceremony(c, &ceremony).await })
            }))
            .await?;
        Ok(token)
    }

    /// The live ceremony with this hash, started from this client's address.
    async fn live_ceremony(
        &self,
        ceremony_sha256: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<Option<PasskeyCeremony>> {
        let mut conn = self.db().get().await?;
        let found = passkeys::find_ceremony(&mut conn, ceremony_sha256, now).await?;
        Ok(found.filter(|c| c.ip_address == client_key(client)))
    }

    /// Spends a ceremony whose finish failed (best effort: it expires anyway).
    async fn spend_ceremony(&self, ceremony_sha256: &str, now: DateTime<Utc>) {
        let ceremony_sha256 = ceremony_sha256.to_owned();
        let spent = self
            .db()
            .write(Box::new(move |c| {
                let ceremony_sha256 = ceremony_sha256.clone();
                Box::pin(async move { passkeys::take_ceremony(c, &ceremony_sha256, now).await })
            }))
            .await;
        if let Err(e) = spent {
            tracing::warn!(error = ?e, "failed to spend a passkey ceremony");
        }
    }

    /// A refused sign-in with a passkey: the ceremony spent, the refusal audited and, for a
    /// known user, counted toward the account's throttling like a wrong password; a refused
    /// second step counts against its mfa_token like a wrong code (five end it).
    async fn passkey_refused(
        &self,
        ceremony_sha256: &str,
        user_id: Option<UserId>,
        mfa_token_sha256: Option<&str>,
        reason: &'static str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Error {
        self.spend_ceremony(ceremony_sha256, now).await;
        let ceremony = if mfa_token_sha256.is_some() { PURPOSE_SECOND_FACTOR } else { PURPOSE_PASSWORDLESS };
        let event = Event::new(Action::PasskeyRefused, user_id).with("ceremony", ceremony).with("reason", reason);
        self.audit_best_effort(event, client, now).await;
        match (user_id, mfa_token_sha256) {
            (Some(user_id), Some(token_sha256)) => {
                self.wrong_code(token_sha256, user_id, "bad_passkey", client, now).await
            }
            (Some(user_id), None) => {
                crate::metrics::login_attempt("bad_passkey");
                self.count_failure(&user_subject(user_id), Some(user_id), client, now).await;
                Error::Unauthenticated(NOT_VERIFIED)
            }
            (None, _) => {
                crate::metrics::login_attempt("bad_passkey");
                Error::Unauthenticated(NOT_VERIFIED)
            }
        }
    }

    async fn audit_best_effort(&self, event: Event, client: &ClientInfo, now: DateTime<Utc>) {
        if let Ok(mut conn) = self.db().get().await {
            audit::record_best_effort(&mut conn, event, client, now).await;
        }
    }
}

/// A passkey name: trimmed, 1 to [`NAME_MAX`] characters; empty is [`DEFAULT_NAME`] when
/// `default_if_empty`.
pub(crate) fn passkey_name(name: &str, default_if_empty: bool) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        return if default_if_empty { Ok(DEFAULT_NAME.to_owned()) } else { Err(Error::invalid("name", "is required")) };
    }
    if name.chars().count() > NAME_MAX {
        return Err(Error::invalid("name", format!("must be at most {NAME_MAX} characters")));
    }
    Ok(name.to_owned())
}

/// The SHA-256 a ceremony token is stored by; a token of the wrong shape is refused as unknown.
fn ceremony_hash(ceremony: &str) -> Result<String> {
    let ceremony = ceremony.trim();
    if ceremony.is_empty() {
        return Err(Error::invalid("ceremony", "is required"));
    }
    let well_formed = ceremony.len() <= CEREMONY_MAX
        && ceremony.len() > CEREMONY_PREFIX.len()
        && ceremony.starts_with(CEREMONY_PREFIX)
        && ceremony[CEREMONY_PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(Error::invalid("ceremony", "is not a ceremony token this service issued"));
    }
    Ok(sha256_hex(ceremony))
}

/// Why the crate refused, for the audit row (never the credential itself).
fn refusal_reason(e: &WebauthnError) -> &'static str {
    match e {
        WebauthnError::CredentialPossibleCompromise => "counter_went_back",
        WebauthnError::InvalidRPOrigin | WebauthnError::InvalidRPIDHash => "wrong_origin",
        WebauthnError::MismatchedChallenge => "wrong_challenge",
        WebauthnError::UserNotVerified => "user_not_verified",
        WebauthnError::CredentialNotFound => "not_allowed",
        _ => "not_verified",
    }
}

/// The credential without its client extension outputs: the service reads none of them, and a
/// browser's may hold members the crate's types do not expect.
fn without_extensions(mut credential: serde_json::Value) -> serde_json::Value {
    if let Some(members) = credential.as_object_mut() {
        members.remove("clientExtensionResults");
        members.remove("extensions");
    }
    credential
}

fn decode_passkey(record: &PasskeyRecord) -> Result<Passkey> {
    from_json(&record.passkey_json)
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::internal("cannot serialise WebAuthn state", e))
}

fn from_json<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::internal("stored WebAuthn state does not read back", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relying_party_from_frontend_url() {
        let rp = RelyingParty::from_origins(&["http://localhost:5173".to_owned()]).unwrap().unwrap();
        assert_eq!(rp.id(), "localhost");
        assert!(RelyingParty::from_origins(&["http://127.0.0.1:5173".to_owned()]).unwrap().is_none());
        assert!(RelyingParty::from_origins(&[]).unwrap().is_none());
    }

    #[test]
    fn names_and_ceremony_tokens_are_checked() {
        assert_eq!(passkey_name("  ", true).unwrap(), DEFAULT_NAME);
        assert!(passkey_name("  ", false).is_err());
        assert!(passkey_name(&"x".repeat(NAME_MAX + 1), true).is_err());
        assert_eq!(passkey_name(" Laptop ", false).unwrap(), "Laptop");
        assert!(ceremony_hash("").is_err());
        assert!(ceremony_hash("mfa_abc").is_err());
        assert!(ceremony_hash(&format!("{CEREMONY_PREFIX}{}", "a".repeat(CEREMONY_MAX))).is_err());
        assert!(ceremony_hash("pkc_abc").is_ok());
    }
}
