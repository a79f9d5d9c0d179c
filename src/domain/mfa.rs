//! The second factor (issue 14): TOTP (RFC 6238) enrolment with recovery codes, the mfa_token
//! a correct password earns a user who has a factor, and the second step that turns it into a
//! session. Single use everywhere is a conditional UPDATE in the session-opening transaction
//! (`auth::open_session`): a TOTP time step moves `last_used_step` forward once, a recovery
//! code is marked used once, the mfa_token ends once.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Secret, TOTP};

use super::App;
use super::audit::{self, Action, Event};
use super::auth::client_key;
use super::sessions::user_subject;
use super::types::{Actor, ClientInfo, LoginOutcome, Principal, Scope, User, UserId};
use super::writes::{Acting, Target};
use crate::db::models::{mfa, passkeys, sessions, users};
use crate::error::{Error, Result};
use crate::model::MfaChallenge;

/// The issuer in the otpauth URI (what authenticator apps show above the code).
pub const ISSUER: &str = "Instachatico";
/// How to complete a sign-in with a TOTP factor, as Login lists them.
pub const METHODS: [&str; 2] = [Claim::TOTP, Claim::RECOVERY_CODE];

/// Wrong codes that end an mfa_token.
pub const MAX_CODE_FAILURES: i32 = 5;
/// How long an mfa_token lasts.
pub const TOKEN_LIFETIME_MINUTES: i64 = 5;
/// Recovery codes issued at confirmation.
pub const RECOVERY_CODE_COUNT: usize = 10;

pub(crate) const TOKEN_REFUSED: &str = "Invalid or expired MFA token; sign in again";
const WRONG_CODE: &str = "Invalid authentication code";
const TOO_MANY_WRONG: &str = "Too many wrong codes; sign in again";
const TOKEN_PREFIX: &str = "mfa_";
const STEP_SECONDS: i64 = 30;
/// Digits of a TOTP code.
pub const CODE_DIGITS: usize = 6;
/// 160 bits, as RFC 4226 recommends.
const SECRET_BYTES: usize = 20;
/// 32 letters and digits without the look-alikes l, o, 0 and 1: 5 bits per character.
pub const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// 16 characters: 80 random bits, so a SHA-256 of the code is a safe thing to store.
pub const RECOVERY_CODE_CHARS: usize = 16;

/// What must also hold, inside the transaction that opens a session.
#[derive(Debug, Clone)]
pub(super) enum Proof {
    /// The password hash that was checked is still the account's.
    Password { checked_hash: String },
    /// The second step: the password behind the mfa_token is still the account's, the token
    /// is still live, and the claim wins.
    SecondFactor { password_sha256: String, token_sha256: String, claim: Claim },
    /// A passkey, passwordless or as a second step: the ceremony is spent (once), the
    /// credential's new counter stored; for a second step as above for the mfa_token.
    Passkey(super::passkeys::PasskeyProof),
}

/// The single-use thing a second step spends.
#[derive(Debug, Clone)]
pub enum Claim {
    TotpStep(i64),
    /// SHA-256 of the normalised code.
    RecoveryCode(String),
}

impl Claim {
    pub const TOTP: &'static str = "totp";
    pub const RECOVERY_CODE: &'static str = "recovery_code";

    pub fn method(&self) -> &'static str {
        match self {
            Self::TotpStep(_) => Self::TOTP,
            Self::RecoveryCode(_) => Self::RECOVERY_CODE,
        }
    }
}

/// The second factor a VerifyMfa call offers.
#[derive(Debug)]
pub enum SecondFactor {
    Totp(SecretString),
    RecoveryCode(SecretString),
}

/// A fresh TOTP secret for enrolment, in the forms an authenticator app takes.
#[derive(Debug)]
pub struct TotpEnrolment {
    /// Base32, no padding.
    pub secret: SecretString,
    pub otpauth_uri: SecretString,
    /// The URI as a QR code (an SVG document); it holds the secret too.
    pub qr_svg: SecretString,
}

/// What an mfa_token of an enrolment grants: TOTP enrolment of its user, nothing else.
#[derive(Debug)]
pub struct EnrolmentGrant {
    pub user: User,
    token_sha256: String,
}

/// Who enrols a factor: a signed-in user, or an admin holding an enrolment grant.
#[derive(Debug, Clone)]
pub enum Enroller {
    Session(Arc<Principal>),
    Grant(Arc<EnrolmentGrant>),
}

impl Enroller {
    fn user(&self) -> &User {
        match self {
            Self::Session(p) => &p.user,
            Self::Grant(g) => &g.user,
        }
    }

    fn acting(&self) -> Acting {
        match self {
            Self::Session(p) => Acting::owner(p),
            Self::Grant(g) => Acting::Enrolment { user_id: g.user.id, token_sha256: g.token_sha256.clone() },
        }
    }

    fn grant_token(&self) -> Option<String> {
        match self {
            Self::Session(_) => None,
            Self::Grant(g) => Some(g.token_sha256.clone()),
        }
    }
}

/// Whether a bearer value is an mfa_token (not a JWT, not an API key).
pub fn is_mfa_token(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX)
}

/// The confirmed factors of a user, without secrets.
#[derive(Debug, Clone)]
pub struct MfaFactors {
    pub totp_confirmed_at: Option<DateTime<Utc>>,
    pub recovery_codes_left: i64,
    /// When the oldest of the user's passkeys was registered.
    pub passkeys_since: Option<DateTime<Utc>>,
}

impl App {
    /// The ways `user_id` can complete a sign-in, as Login lists them: empty without a factor
    /// (a correct password then opens a session), else a correct password earns an mfa_token.
    /// One query, which every Login makes, with a factor or without.
    pub(super) async fn second_factor_methods(&self, user_id: UserId) -> Result<Vec<&'static str>> {
        let (totp, passkey) = mfa::second_factors(&mut self.db().get().await?, user_id).await?;
        let mut methods = Vec::new();
        if totp {
            methods.extend(METHODS);
        }
        if passkey {
            methods.push(super::passkeys::METHOD);
        }
        Ok(methods)
    }

    /// Issues the mfa_token of a sign-in whose password was right (`enrolment`: of an admin who
    /// must enrol first); only its SHA-256 is kept.
    ///
    /// Committed without waiting for the disk (`write_losable`): a crash may lose a token
    /// issued in its last moments (with its `mfa_required` audit row: the password was right),
    /// and the user then signs in again. Nothing the token guards
    /// depends on it reaching the disk: the second step that spends it (the code's time step,
    /// the token's end, the session) commits durably, and with it everything committed before.
    pub(super) async fn issue_mfa_challenge(
        &self,
        user: &User,
        enrolment: bool,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<SecretString> {
        let token = SecretString::from(format!("{TOKEN_PREFIX}{}", crate::crypto::random_token(32)));
        let challenge = MfaChallenge {
            token_sha256: sha256_hex(token.expose_secret()),
            user_id: user.id,
            ip_address: client_key(client),
            password_sha256: sha256_hex(&user.password_hash),
            enrolment,
            failures: 0,
            created_at: now,
            expires_at: now + chrono::Duration::minutes(TOKEN_LIFETIME_MINUTES),
            ended_at: None,
        };
        let (user_id, client) = (user.id, client.clone());
        self.db()
            .write_losable(Box::new(move |c| {
                let (challenge, client) = (challenge.clone(), client.clone());
                Box::pin(async move {
                    mfa::insert_challenge(c, &challenge).await?;
                    let event = Event::new(Action::MfaRequired, Some(user_id))
                        .with("purpose", if enrolment { "enrolment" } else { "sign_in" });
                    audit::record(c, event, &client, now).await?.nothing_cached();
                    Ok(())
                })
            }))
            .await?;
        Ok(token)
    }

    /// The second step of a sign-in: a live mfa_token from this address and a current TOTP
    /// code or an unused recovery code open the session Login would have opened. A wrong code
    /// counts against the token (five end it) and toward the account's throttling, like a
    /// wrong password.
    pub async fn verify_mfa(
        &self,
        mfa_token: &str,
        factor: &SecondFactor,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<LoginOutcome> {
        let token = mfa_token.trim();
        if token.is_empty() {
            return Err(Error::invalid("mfa_token", "is required"));
        }
        // The shape of a code is public: a malformed one is a client error, not a guess.
        let offered = match factor {
            SecondFactor::Totp(code) => Offered::Totp(normalize_code(code.expose_secret())?),
            SecondFactor::RecoveryCode(code) => Offered::Recovery(normalize_recovery_code(code.expose_secret())?),
        };
        let token_sha256 = mfa_token_hash(token)?;
        // The token, its user and the factor in one round trip.
        let found = mfa::find_sign_in(&mut self.db().get().await?, &token_sha256).await?;
        let (challenge, (user, backend), totp) = found
            .filter(|(challenge, _, _)| is_live(challenge, false, client, now))
            .ok_or(Error::Unauthenticated(TOKEN_REFUSED))?;
        let totp = totp.filter(|f| f.confirmed_at.is_some());
        let subject = user_subject(user.id);
        self.refuse_if_throttled(Some(user.id), &subject, client, now).await?;

        let claim = match offered {
            Offered::Totp(code) => {
                let step = match &totp {
                    Some(factor) => {
                        let secret = self.cipher().decrypt(&factor.secret_encrypted)?;
                        matching_step(&totp_for(&secret, &user.username)?, &code, now, factor.last_used_step)
                    }
                    None => None,
                };
                match step {
                    Some(step) => Claim::TotpStep(step),
                    None => return Err(self.wrong_code(&token_sha256, user.id, "bad_totp_code", client, now).await),
                }
            }
            Offered::Recovery(code) => Claim::RecoveryCode(sha256_hex(&code)),
        };
        let method = claim.method();
        let proof = Proof::SecondFactor {
            password_sha256: challenge.password_sha256.clone(),
            token_sha256: token_sha256.clone(),
            claim,
        };
        let user_id = user.id;
        match self.open_session(user, backend, proof, client, now).await? {
            Some((outcome, _)) => Ok(outcome),
            None => {
                let reason = if method == Claim::TOTP { "replayed_totp_code" } else { "bad_recovery_code" };
                Err(self.wrong_code(&token_sha256, user_id, reason, client, now).await)
            }
        }
    }

    /// A wrong code: counted against the mfa_token (which ends at the fifth), audited, and
    /// counted toward the account's throttling from this address as a wrong password is.
    pub(super) async fn wrong_code(
        &self,
        token_sha256: &str,
        user_id: UserId,
        reason: &'static str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Error {
        let failures = match self.db().get().await {
            Ok(mut conn) => mfa::challenge_failed(&mut conn, token_sha256, MAX_CODE_FAILURES, now).await,
            Err(e) => Err(e),
        };
        let failures = failures.unwrap_or_else(|e| {
            tracing::error!(error = ?e, "failed to count a wrong code");
            None
        });
        self.record_code_failure(user_id, reason, failures, client, now).await;
        match failures {
            Some(n) if n < MAX_CODE_FAILURES => Error::Unauthenticated(WRONG_CODE),
            _ => Error::Unauthenticated(TOO_MANY_WRONG),
        }
    }

    /// The live mfa_token `token` (a sign-in's, or with `enrolment` an enrolment grant's) from
    /// the address that signed in: its SHA-256 and its challenge. Anything else is refused alike.
    pub(super) async fn live_challenge(
        &self,
        token: &str,
        enrolment: bool,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<(String, MfaChallenge)> {
        let token_sha256 = mfa_token_hash(token)?;
        let mut conn = self.db().get().await?;
        let challenge = mfa::find_challenge(&mut conn, &token_sha256)
            .await?
            .filter(|c| is_live(c, enrolment, client, now))
            .ok_or(Error::Unauthenticated(TOKEN_REFUSED))?;
        Ok((token_sha256, challenge))
    }

    /// The enrolment grant behind an mfa_token Login handed an admin under
    /// MFA_REQUIRED_FOR_ADMINS: live, from the address that signed in, its user active.
    pub async fn authenticate_enrolment(
        &self,
        token: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<Arc<EnrolmentGrant>> {
        let (token_sha256, challenge) = self.live_challenge(token, true, client, now).await?;
        let mut conn = self.db().get().await?;
        let (user, _) = users::find(&mut conn, challenge.user_id)
            .await?
            .filter(|(u, _)| u.is_active)
            .ok_or(Error::Unauthenticated(TOKEN_REFUSED))?;
        Ok(Arc::new(EnrolmentGrant { user, token_sha256 }))
    }

    /// A fresh TOTP secret for the caller, pending until confirmed; it replaces a pending one.
    /// Refused while a confirmed factor exists.
    pub async fn start_totp(
        &self,
        enroller: &Enroller,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<TotpEnrolment> {
        let user = enroller.user();
        let mut raw = vec![0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut raw);
        let encoded = match Secret::Raw(raw).to_encoded() {
            Secret::Encoded(text) => text,
            Secret::Raw(_) => {
                return Err(Error::internal("cannot encode a TOTP secret", anyhow::anyhow!("not base32")));
            }
        };
        let secret = SecretString::from(encoded);
        let totp = totp_for(&secret, &user.username)?;
        let uri = totp.get_url();
        let qr_svg = qrcode::QrCode::new(uri.as_bytes())
            .map_err(|e| Error::internal("cannot draw the QR code", anyhow::anyhow!("{e}")))?
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .build();
        let encrypted = self.cipher().encrypt(secret.expose_secret());
        let user_id = user.id;
        self.change_user(
            enroller.acting(),
            Target::user(user_id),
            client,
            now,
            Box::new(move |c, _| {
                let encrypted = encrypted.clone();
                Box::pin(async move {
                    if !mfa::put_pending_totp(c, user_id, &encrypted, now).await? {
                        return Err(Error::FailedPrecondition("TOTP is already enabled"));
                    }
                    Ok(((), Event::new(Action::MfaTotpStarted, Some(user_id))))
                })
            }),
        )
        .await?;
        Ok(TotpEnrolment { secret, otpauth_uri: SecretString::from(uri), qr_svg: SecretString::from(qr_svg) })
    }

    /// Switches the caller's pending factor on with a current code, and returns the recovery
    /// codes (shown this once; only their hashes are stored).
    /// Confirming through an enrolment grant ends the grant: the admin then signs in with the
    /// password and a code.
    pub async fn confirm_totp(
        &self,
        enroller: &Enroller,
        code: &SecretString,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<Vec<SecretString>> {
        let code = normalize_code(code.expose_secret())?;
        let user = enroller.user();
        let mut conn = self.db().get().await?;
        let factor = mfa::find_totp(&mut conn, user.id).await?;
        drop(conn);
        let factor = match factor {
            None => return Err(Error::FailedPrecondition("No TOTP enrolment to confirm; start one first")),
            Some(f) if f.confirmed_at.is_some() => return Err(Error::FailedPrecondition("TOTP is already enabled")),
            Some(f) => f,
        };
        let secret = self.cipher().decrypt(&factor.secret_encrypted)?;
        let step = matching_step(&totp_for(&secret, &user.username)?, &code, now, 0)
            .ok_or_else(|| Error::PermissionDenied("The code is not the one the authenticator app shows now"))?;
        let codes = new_recovery_codes();
        let hashes = recovery_code_hashes(&codes);
        let (user_id, encrypted) = (user.id, factor.secret_encrypted);
        let grant = enroller.grant_token();
        self.change_user(
            enroller.acting(),
            Target::user(user_id),
            client,
            now,
            Box::new(move |c, _| {
                let (encrypted, hashes, grant) = (encrypted.clone(), hashes.clone(), grant.clone());
                Box::pin(async move {
                    if !mfa::confirm_totp(c, user_id, &encrypted, step, now).await? {
                        return Err(Error::FailedPrecondition("The enrolment changed meanwhile; start again"));
                    }
                    if let Some(token_sha256) = grant
                        && !mfa::end_challenge(c, &token_sha256, now).await?
                    {
                        return Err(Error::Unauthenticated(TOKEN_REFUSED));
                    }
                    mfa::replace_recovery_codes(c, user_id, &hashes, now).await?;
                    let event =
                        Event::new(Action::MfaTotpConfirmed, Some(user_id)).with("recovery_codes", hashes.len());
                    Ok(((), event))
                })
            }),
        )
        .await?;
        Ok(codes)
    }

    /// Removes the caller's TOTP factor and recovery codes; needs the password and a current,
    /// unused code.
    pub async fn remove_totp(
        &self,
        principal: &Principal,
        password: &SecretString,
        code: &SecretString,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.change_factor(principal, password, code, FactorChange::Remove, client, now).await
    }

    /// New recovery codes for the caller (the old ones stop working); needs the password and a
    /// current, unused code.
    pub async fn regenerate_recovery_codes(
        &self,
        principal: &Principal,
        password: &SecretString,
        code: &SecretString,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<Vec<SecretString>> {
        let codes = new_recovery_codes();
        let change = FactorChange::NewRecoveryCodes(recovery_code_hashes(&codes));
        self.change_factor(principal, password, code, change, client, now).await?;
        Ok(codes)
    }

    /// A change to the caller's factor that needs the password and a current code: both
    /// checked first, then re-checked (the password) and spent (the code's time step) in the
    /// transaction that makes the change.
    async fn change_factor(
        &self,
        principal: &Principal,
        password: &SecretString,
        code: &SecretString,
        change: FactorChange,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let (checked_hash, step) = self.reauthenticate(principal, password, code, client, now).await?;
        let user_id = principal.user.id;
        self.change_user(
            Acting::owner(principal),
            Target::user(user_id),
            client,
            now,
            Box::new(move |c, current| {
                let (checked_hash, change) = (checked_hash.clone(), change.clone());
                Box::pin(async move {
                    if current.is_none_or(|(u, _)| u.password_hash != checked_hash) {
                        return Err(Error::Unavailable("The password changed meanwhile; try again"));
                    }
                    if !mfa::claim_totp_step(c, user_id, step).await? {
                        return Err(Error::PermissionDenied("The code is not a current, unused one"));
                    }
                    let event = match change {
                        FactorChange::Remove => {
                            mfa::delete_factors(c, user_id).await?;
                            Event::new(Action::MfaTotpRemoved, Some(user_id))
                        }
                        FactorChange::NewRecoveryCodes(hashes) => {
                            mfa::replace_recovery_codes(c, user_id, &hashes, now).await?;
                            Event::new(Action::MfaRecoveryCodesRegenerated, Some(user_id))
                                .with("recovery_codes", hashes.len())
                        }
                    };
                    Ok(((), event))
                })
            }),
        )
        .await
    }

    /// Admin (or the CLI): clears a user's second factors (TOTP, recovery codes, passkeys) and ends the user's sessions.
    /// Returns how many sessions were live.
    pub async fn reset_mfa(
        &self,
        actor: &Actor<'_>,
        user_id: UserId,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        actor.require(Scope::UsersWrite)?;
        self.change_user(
            Acting::admin(actor),
            Target::user(user_id),
            client,
            now,
            Box::new(move |c, _| {
                Box::pin(async move {
                    let removed = mfa::delete_factors(c, user_id).await?;
                    let passkeys_removed = passkeys::delete_all(c, user_id).await?;
                    let ended = sessions::revoke_all_for_user(c, user_id, None, now).await?;
                    let event = Event::new(Action::MfaReset, Some(user_id))
                        .with("factors_removed", removed || passkeys_removed > 0)
                        .with("passkeys_removed", passkeys_removed)
                        .with("sessions_ended", ended);
                    Ok((ended, event))
                })
            }),
        )
        .await
    }

    /// The password and a current TOTP code of the caller, checked before a change to the
    /// factor: the password hash checked and the code's time step, both re-checked (and the step
    /// claimed) inside the change. Wrong ones count toward the account's throttling.
    async fn reauthenticate(
        &self,
        principal: &Principal,
        password: &SecretString,
        code: &SecretString,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<(String, i64)> {
        if password.expose_secret().is_empty() {
            return Err(Error::invalid("password", "is required"));
        }
        let code = normalize_code(code.expose_secret())?;
        let user_id = principal.user.id;
        let subject = user_subject(user_id);
        self.refuse_if_throttled(Some(user_id), &subject, client, now).await?;
        let mut conn = self.db().get().await?;
        let (user, _) =
            users::find(&mut conn, user_id).await?.ok_or(Error::Unauthenticated("Session has ended; sign in again"))?;
        let factor = mfa::find_totp(&mut conn, user_id).await?.filter(|f| f.confirmed_at.is_some());
        drop(conn);
        let Some(factor) = factor else { return Err(Error::FailedPrecondition("TOTP is not enabled")) };
        let busy = "Too many password checks are in progress; retry shortly";
        if !self.hasher().verify(password, Some(&user.password_hash)).await.map_err(|e| e.overload_as(busy))? {
            self.sign_in_failed(Some(user_id), &subject, "bad_current_password", client, now).await;
            return Err(Error::PermissionDenied("The password is incorrect"));
        }
        let secret = self.cipher().decrypt(&factor.secret_encrypted)?;
        let Some(step) = matching_step(&totp_for(&secret, &user.username)?, &code, now, factor.last_used_step) else {
            self.record_code_failure(user_id, "bad_totp_code", None, client, now).await;
            return Err(Error::PermissionDenied("The code is not a current, unused one"));
        };
        Ok((user.password_hash, step))
    }

    /// Audits a wrong code and counts it toward the account's throttling.
    async fn record_code_failure(
        &self,
        user_id: UserId,
        reason: &'static str,
        failures: Option<i32>,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) {
        crate::metrics::login_attempt(reason);
        if let Ok(mut conn) = self.db().get().await {
            let mut event = Event::new(Action::MfaFailure, Some(user_id)).with("reason", reason);
            if let Some(n) = failures {
                event = event.with("failures", n);
            }
            audit::record_best_effort(&mut conn, event, client, now).await;
        }
        self.count_failure(&user_subject(user_id), Some(user_id), client, now).await;
    }

    /// The caller's confirmed factors (no secrets).
    pub async fn mfa_factors(&self, user_id: UserId) -> Result<MfaFactors> {
        let mut conn = self.db().get().await?;
        let totp = mfa::find_totp(&mut conn, user_id).await?;
        let recovery_codes_left = mfa::recovery_codes_left(&mut conn, user_id).await?;
        let passkeys_since = passkeys::list(&mut conn, user_id).await?.first().map(|p| p.created_at);
        Ok(MfaFactors { totp_confirmed_at: totp.and_then(|f| f.confirmed_at), recovery_codes_left, passkeys_since })
    }
}

/// A change [`App::change_factor`] makes.
#[derive(Debug, Clone)]
enum FactorChange {
    Remove,
    /// SHA-256 of each new recovery code.
    NewRecoveryCodes(Vec<String>),
}

/// A normalised code, before anything is looked up.
enum Offered {
    Totp(String),
    Recovery(String),
}

/// The SHA-256 an mfa_token is stored by; anything not shaped like one is refused as unknown.
fn mfa_token_hash(token: &str) -> Result<String> {
    if token.len() > 128 || !is_mfa_token(token) || token.chars().any(char::is_control) {
        return Err(Error::Unauthenticated(TOKEN_REFUSED));
    }
    Ok(sha256_hex(token))
}

/// Whether `challenge` still grants its step (`enrolment`: an enrolment grant, else a sign-in)
/// to this client: not ended, not expired, from the address that signed in.
fn is_live(challenge: &MfaChallenge, enrolment: bool, client: &ClientInfo, now: DateTime<Utc>) -> bool {
    challenge.enrolment == enrolment
        && challenge.ended_at.is_none()
        && challenge.expires_at > now
        && challenge.ip_address == client_key(client)
}

/// SHA-256 of `text`, lower-case hex.
pub(super) fn sha256_hex(text: &str) -> String {
    crate::crypto::hex(&Sha256::digest(text.as_bytes()))
}

/// The RFC 6238 generator of a base32 secret: SHA-1, 6 digits, 30-second steps (what every
/// authenticator app reads from an otpauth URI).
fn totp_for(secret_base32: &SecretString, username: &str) -> Result<TOTP> {
    let raw = Secret::Encoded(secret_base32.expose_secret().to_owned())
        .to_bytes()
        .map_err(|e| Error::internal("a stored TOTP secret is not base32", anyhow::anyhow!("{e:?}")))?;
    // Unchecked: a username may hold a ':' (the URI encodes it); the secret is always 160 bits.
    Ok(TOTP::new_unchecked(
        Algorithm::SHA1,
        CODE_DIGITS,
        1,
        STEP_SECONDS.unsigned_abs(),
        raw,
        Some(ISSUER.to_owned()),
        username.to_owned(),
    ))
}

/// The time step (previous, current or next: one step of clock skew) whose code is `code`,
/// if it is newer than `after` (a step already used is never accepted again).
fn matching_step(totp: &TOTP, code: &str, now: DateTime<Utc>, after: i64) -> Option<i64> {
    let current = now.timestamp().div_euclid(STEP_SECONDS);
    let mut found = None;
    // All three are computed, so the time taken does not tell which one matched.
    for step in current - 1..=current + 1 {
        let Ok(time) = u64::try_from(step * STEP_SECONDS) else { continue };
        let matches = bool::from(subtle::ConstantTimeEq::ct_eq(totp.generate(time).as_bytes(), code.as_bytes()));
        if matches && step > after && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// Six ASCII digits (spaces allowed, as apps show "123 456").
pub(crate) fn normalize_code(code: &str) -> Result<String> {
    let code: String = code.chars().filter(|c| *c != ' ').collect();
    if code.len() != CODE_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid("code", "must be the 6 digits the authenticator app shows"));
    }
    Ok(code)
}

/// A recovery code without its dashes and spaces, lower case.
pub(crate) fn normalize_recovery_code(code: &str) -> Result<String> {
    let code: String = code.chars().filter(|c| *c != '-' && *c != ' ').collect::<String>().to_ascii_lowercase();
    if code.len() != RECOVERY_CODE_CHARS || !code.bytes().all(|b| RECOVERY_ALPHABET.contains(&b)) {
        return Err(Error::invalid("recovery_code", "is not a recovery code"));
    }
    Ok(code)
}

/// What is stored of recovery codes: SHA-256 of each without its dashes.
fn recovery_code_hashes(codes: &[SecretString]) -> Vec<String> {
    codes.iter().map(|c| sha256_hex(&c.expose_secret().replace('-', ""))).collect()
}

/// Fresh recovery codes, `xxxx-xxxx-xxxx-xxxx`.
fn new_recovery_codes() -> Vec<SecretString> {
    let mut rng = rand::rng();
    (0..RECOVERY_CODE_COUNT)
        .map(|_| {
            let mut code = String::with_capacity(RECOVERY_CODE_CHARS + 3);
            for i in 0..RECOVERY_CODE_CHARS {
                if i > 0 && i % 4 == 0 {
                    code.push('-');
                }
                let pick = usize::try_from(rng.next_u32() % 32).unwrap_or(0);
                code.push(char::from(RECOVERY_ALPHABET[pick]));
            }
            SecretString::from(code)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator() -> TOTP {
        totp_for(&SecretString::from("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".to_owned()), "alice").unwrap()
    }

    #[test]
    fn a_code_matches_its_step_and_the_neighbours_only_once_newer() {
        let totp = generator();
        let now = DateTime::from_timestamp(1_800_000_015, 0).unwrap();
        let step = now.timestamp() / 30;
        let code = totp.generate(u64::try_from(now.timestamp()).unwrap());
        assert_eq!(matching_step(&totp, &code, now, 0), Some(step));
        // Replayed: that step was used.
        assert_eq!(matching_step(&totp, &code, now, step), None);
        // One step of skew either way, not two.
        assert_eq!(matching_step(&totp, &code, now + chrono::Duration::seconds(30), 0), Some(step));
        assert_eq!(matching_step(&totp, &code, now + chrono::Duration::seconds(60), 0), None);
    }

    #[test]
    fn otpauth_uri_names_issuer_and_user() {
        let uri = generator().get_url();
        assert!(uri.starts_with("otpauth://totp/Instachatico:alice?secret="), "{uri}");
        assert!(uri.contains("issuer=Instachatico"), "{uri}");
    }

    #[test]
    fn codes_are_normalised_or_refused() {
        assert_eq!(normalize_code(" 123 456").unwrap(), "123456");
        for bad in ["", "12345", "1234567", "12345a", "１２３４５６"] {
            assert!(normalize_code(bad).is_err(), "{bad}");
        }
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODE_COUNT);
        for code in &codes {
            let upper = code.expose_secret().to_ascii_uppercase();
            assert_eq!(normalize_recovery_code(&upper).unwrap(), code.expose_secret().replace('-', ""));
        }
        assert!(normalize_recovery_code("abcd-efgh-ijkm-nopq").is_err(), "o is not in the alphabet");
    }
}
