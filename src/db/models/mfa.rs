//! The second-factor tables: `mfa_totp` (one TOTP factor per user, its secret encrypted),
//! `mfa_recovery_codes` (SHA-256 of single-use codes) and `mfa_challenges` (the mfa_token of a
//! sign-in in progress, by SHA-256). Every single-use rule is one conditional UPDATE, so two
//! concurrent uses cannot both win on either database.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::dsl::exists;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::BackendRow;
use super::delete_batch;
use super::users::{UserRow, with_backend};
use crate::db::schema::{mfa_challenges, mfa_recovery_codes, mfa_totp, passkeys, user_backends, users};
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;
use crate::model::{MfaChallenge, TotpFactor, UserId, UserWithBackend};

const PURPOSE_SIGN_IN: &str = "sign_in";
const PURPOSE_ENROL: &str = "enrol";

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = mfa_totp)]
struct TotpRow {
    user_id: i32,
    secret_encrypted: String,
    confirmed_at: Option<NaiveDateTime>,
    last_used_step: i64,
}

impl From<TotpRow> for TotpFactor {
    fn from(r: TotpRow) -> Self {
        Self {
            user_id: UserId(r.user_id),
            secret_encrypted: r.secret_encrypted,
            confirmed_at: r.confirmed_at.map(|t| t.and_utc()),
            last_used_step: r.last_used_step,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = mfa_challenges)]
struct ChallengeRow {
    token_sha256: String,
    user_id: i32,
    ip_address: String,
    password_sha256: String,
    purpose: String,
    failures: i32,
    created_at: NaiveDateTime,
    expires_at: NaiveDateTime,
    ended_at: Option<NaiveDateTime>,
}

impl From<ChallengeRow> for MfaChallenge {
    fn from(r: ChallengeRow) -> Self {
        Self {
            token_sha256: r.token_sha256,
            user_id: UserId(r.user_id),
            ip_address: r.ip_address,
            password_sha256: r.password_sha256,
            enrolment: r.purpose == PURPOSE_ENROL,
            failures: r.failures,
            created_at: r.created_at.and_utc(),
            expires_at: r.expires_at.and_utc(),
            ended_at: r.ended_at.map(|t| t.and_utc()),
        }
    }
}

impl From<&MfaChallenge> for ChallengeRow {
    fn from(c: &MfaChallenge) -> Self {
        Self {
            token_sha256: c.token_sha256.clone(),
            user_id: c.user_id.0,
            ip_address: c.ip_address.clone(),
            password_sha256: c.password_sha256.clone(),
            purpose: if c.enrolment { PURPOSE_ENROL } else { PURPOSE_SIGN_IN }.to_owned(),
            failures: c.failures,
            created_at: c.created_at.naive_utc(),
            expires_at: c.expires_at.naive_utc(),
            ended_at: c.ended_at.map(|t| t.naive_utc()),
        }
    }
}

/// The user's TOTP factor, pending or confirmed.
pub async fn find_totp(conn: &mut DbConn, user_id: UserId) -> Result<Option<TotpFactor>> {
    let row = db_run!(conn, "mfa::find_totp": {
        mfa_totp::table
            .find(user_id.0)
            .select(TotpRow::as_select())
            .first::<TotpRow>(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(TotpFactor::from))
}

/// Which second factors the user has, in one round trip: (a confirmed TOTP factor, a passkey).
pub async fn second_factors(conn: &mut DbConn, user_id: UserId) -> Result<(bool, bool)> {
    db_run!(conn, "mfa::second_factors": {
        diesel::select((
            exists(
                mfa_totp::table.filter(mfa_totp::user_id.eq(user_id.0)).filter(mfa_totp::confirmed_at.is_not_null()),
            ),
            exists(passkeys::table.filter(passkeys::user_id.eq(user_id.0))),
        ))
        .get_result(conn)
        .await
        .map_err(map_err)
    })
}

/// Stores a pending factor, replacing a pending one. Returns false (and changes nothing) when
/// the user has a confirmed factor.
pub async fn put_pending_totp(
    conn: &mut DbConn,
    user_id: UserId,
    secret_encrypted: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let now = now.naive_utc();
    db_run!(conn, "mfa::put_pending_totp": {
        diesel::delete(mfa_totp::table.filter(mfa_totp::user_id.eq(user_id.0)).filter(mfa_totp::confirmed_at.is_null()))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })?;
    let inserted = db_run!(conn, "mfa::put_pending_totp": {
        diesel::insert_into(mfa_totp::table)
            .values((
                mfa_totp::user_id.eq(user_id.0),
                mfa_totp::secret_encrypted.eq(secret_encrypted),
                mfa_totp::last_used_step.eq(0_i64),
                mfa_totp::created_at.eq(now),
            ))
            .on_conflict(mfa_totp::user_id)
            .do_nothing()
            .execute(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(inserted == 1)
}

/// Confirms the pending factor holding exactly `secret_encrypted` (not one that replaced it
/// meanwhile), with `step` as its last used step. False when there is no such pending factor.
pub async fn confirm_totp(
    conn: &mut DbConn,
    user_id: UserId,
    secret_encrypted: &str,
    step: i64,
    now: DateTime<Utc>,
) -> Result<bool> {
    let now = now.naive_utc();
    let n = db_run!(conn, "mfa::confirm_totp": {
        diesel::update(
            mfa_totp::table
                .filter(mfa_totp::user_id.eq(user_id.0))
                .filter(mfa_totp::confirmed_at.is_null())
                .filter(mfa_totp::secret_encrypted.eq(secret_encrypted)),
        )
        .set((mfa_totp::confirmed_at.eq(now), mfa_totp::last_used_step.eq(step)))
        .execute(conn)
        .await
        .map_err(map_err)
    })?;
    Ok(n == 1)
}

/// Claims time step `step` of the user's confirmed factor: true for the one caller that moves
/// `last_used_step` forward to it, false for a replay (that step or an older one).
pub async fn claim_totp_step(conn: &mut DbConn, user_id: UserId, step: i64) -> Result<bool> {
    let n = db_run!(conn, "mfa::claim_totp_step": {
        diesel::update(
            mfa_totp::table
                .filter(mfa_totp::user_id.eq(user_id.0))
                .filter(mfa_totp::confirmed_at.is_not_null())
                .filter(mfa_totp::last_used_step.lt(step)),
        )
        .set(mfa_totp::last_used_step.eq(step))
        .execute(conn)
        .await
        .map_err(map_err)
    })?;
    Ok(n == 1)
}

/// Every stored TOTP secret (pending or confirmed), for re-encryption.
pub async fn all_totp_secrets(conn: &mut DbConn) -> Result<Vec<(UserId, String)>> {
    let rows: Vec<(i32, String)> = db_run!(conn, "mfa::all_totp_secrets": {
        mfa_totp::table
            .select((mfa_totp::user_id, mfa_totp::secret_encrypted))
            .order(mfa_totp::user_id)
            .load(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(rows.into_iter().map(|(id, s)| (UserId(id), s)).collect())
}

/// Replaces one stored secret (re-encryption under a new key).
pub async fn set_totp_secret(conn: &mut DbConn, user_id: UserId, secret_encrypted: &str) -> Result<()> {
    db_run!(conn, "mfa::set_totp_secret": {
        diesel::update(mfa_totp::table.find(user_id.0))
            .set(mfa_totp::secret_encrypted.eq(secret_encrypted))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

/// Replaces the user's recovery codes with `hashes` (SHA-256, hex).
pub async fn replace_recovery_codes(
    conn: &mut DbConn,
    user_id: UserId,
    hashes: &[String],
    now: DateTime<Utc>,
) -> Result<()> {
    let now = now.naive_utc();
    db_run!(conn, "mfa::replace_recovery_codes": {
        diesel::delete(mfa_recovery_codes::table.filter(mfa_recovery_codes::user_id.eq(user_id.0)))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })?;
    // One row at a time: SQLite has no multi-row insert in Diesel (ten rows, once).
    for hash in hashes {
        db_run!(conn, "mfa::replace_recovery_codes": {
            diesel::insert_into(mfa_recovery_codes::table)
                .values((
                    mfa_recovery_codes::user_id.eq(user_id.0),
                    mfa_recovery_codes::code_sha256.eq(hash.as_str()),
                    mfa_recovery_codes::created_at.eq(now),
                ))
                .execute(conn)
                .await
                .map(drop)
                .map_err(map_err)
        })?;
    }
    Ok(())
}

/// Uses the recovery code with this hash: true for the one caller that marks it used.
pub async fn use_recovery_code(conn: &mut DbConn, user_id: UserId, hash: &str, now: DateTime<Utc>) -> Result<bool> {
    let now = now.naive_utc();
    let n = db_run!(conn, "mfa::use_recovery_code": {
        diesel::update(
            mfa_recovery_codes::table
                .filter(mfa_recovery_codes::user_id.eq(user_id.0))
                .filter(mfa_recovery_codes::code_sha256.eq(hash))
                .filter(mfa_recovery_codes::used_at.is_null()),
        )
        .set(mfa_recovery_codes::used_at.eq(now))
        .execute(conn)
        .await
        .map_err(map_err)
    })?;
    Ok(n == 1)
}

/// Unused recovery codes of the user.
pub async fn recovery_codes_left(conn: &mut DbConn, user_id: UserId) -> Result<i64> {
    db_run!(conn, "mfa::recovery_codes_left": {
        mfa_recovery_codes::table
            .filter(mfa_recovery_codes::user_id.eq(user_id.0))
            .filter(mfa_recovery_codes::used_at.is_null())
            .count()
            .get_result(conn)
            .await
            .map_err(map_err)
    })
}

/// Stores a new challenge. Ended and expired ones stay until the housekeeping purge (every
/// minute), not deleted here: Login's second-factor answer is one statement shorter.
pub async fn insert_challenge(conn: &mut DbConn, challenge: &MfaChallenge) -> Result<()> {
    let row = ChallengeRow::from(challenge);
    db_run!(conn, "mfa::insert_challenge": {
        diesel::insert_into(mfa_challenges::table).values(row.clone()).execute(conn).await.map(drop).map_err(map_err)
    })
}

/// The challenge whose token hashes to `token_sha256`, in any state.
pub async fn find_challenge(conn: &mut DbConn, token_sha256: &str) -> Result<Option<MfaChallenge>> {
    let row = db_run!(conn, "mfa::find_challenge": {
        mfa_challenges::table
            .find(token_sha256)
            .select(ChallengeRow::as_select())
            .first::<ChallengeRow>(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(MfaChallenge::from))
}

/// What the second step of a sign-in reads, in one round trip: the challenge whose token
/// hashes to `token_sha256` (in any state), its user with the backend, and the user's TOTP
/// factor (pending or confirmed).
pub async fn find_sign_in(
    conn: &mut DbConn,
    token_sha256: &str,
) -> Result<Option<(MfaChallenge, UserWithBackend, Option<TotpFactor>)>> {
    let row = db_run!(conn, "mfa::find_sign_in": {
        mfa_challenges::table
            .inner_join(users::table.on(users::id.eq(mfa_challenges::user_id)))
            .left_join(user_backends::table.on(user_backends::user_id.eq(mfa_challenges::user_id)))
            .left_join(mfa_totp::table.on(mfa_totp::user_id.eq(mfa_challenges::user_id)))
            .filter(mfa_challenges::token_sha256.eq(token_sha256))
            .select((
                ChallengeRow::as_select(),
                UserRow::as_select(),
                Option::<BackendRow>::as_select(),
                Option::<TotpRow>::as_select(),
            ))
            .first::<(ChallengeRow, UserRow, Option<BackendRow>, Option<TotpRow>)>(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(|(challenge, user, backend, totp)| {
        (MfaChallenge::from(challenge), with_backend((user, backend)), totp.map(TotpFactor::from))
    }))
}

/// Ends a live challenge: true for the one caller that ends it.
pub async fn end_challenge(conn: &mut DbConn, token_sha256: &str, now: DateTime<Utc>) -> Result<bool> {
    let now = now.naive_utc();
    let n = db_run!(conn, "mfa::end_challenge": {
        diesel::update(
            mfa_challenges::table
                .filter(mfa_challenges::token_sha256.eq(token_sha256))
                .filter(mfa_challenges::ended_at.is_null())
                .filter(mfa_challenges::expires_at.gt(now)),
        )
        .set(mfa_challenges::ended_at.eq(now))
        .execute(conn)
        .await
        .map_err(map_err)
    })?;
    Ok(n == 1)
}

/// Counts a wrong code against a live challenge and ends it at `max` failures. Returns the
/// failures after this one (`None`: the challenge was not live).
pub async fn challenge_failed(
    conn: &mut DbConn,
    token_sha256: &str,
    max: i32,
    now: DateTime<Utc>,
) -> Result<Option<i32>> {
    let now = now.naive_utc();
    let failures: Option<i32> = db_run!(conn, "mfa::challenge_failed": {
        diesel::update(
            mfa_challenges::table
                .filter(mfa_challenges::token_sha256.eq(token_sha256))
                .filter(mfa_challenges::ended_at.is_null()),
        )
        .set(mfa_challenges::failures.eq(mfa_challenges::failures + 1))
        .returning(mfa_challenges::failures)
        .get_result(conn)
        .await
        .optional()
        .map_err(map_err)
    })?;
    if let Some(n) = failures
        && n >= max
    {
        db_run!(conn, "mfa::challenge_failed": {
            diesel::update(mfa_challenges::table.find(token_sha256))
                .set(mfa_challenges::ended_at.eq(now))
                .execute(conn)
                .await
                .map(drop)
                .map_err(map_err)
        })?;
    }
    Ok(failures)
}

/// Removes the user's TOTP factor (pending or confirmed), recovery codes and open
/// challenges. Returns whether a factor was there.
pub async fn delete_factors(conn: &mut DbConn, user_id: UserId) -> Result<bool> {
    let removed = db_run!(conn, "mfa::delete_factors": {
        diesel::delete(mfa_totp::table.filter(mfa_totp::user_id.eq(user_id.0))).execute(conn).await.map_err(map_err)
    })?;
    db_run!(conn, "mfa::delete_factors": {
        diesel::delete(mfa_recovery_codes::table.filter(mfa_recovery_codes::user_id.eq(user_id.0)))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })?;
    db_run!(conn, "mfa::delete_factors": {
        diesel::delete(mfa_challenges::table.filter(mfa_challenges::user_id.eq(user_id.0)))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })?;
    Ok(removed > 0)
}

/// Deletes at most `limit` challenges that ended or expired before `now`.
pub async fn purge_challenges(conn: &mut DbConn, now: DateTime<Utc>, limit: i64) -> Result<usize> {
    let now = now.naive_utc();
    db_run!(conn, "mfa::purge_challenges": {
        delete_batch!(
            conn,
            "mfa_challenges",
            "ended_at <= {p}1 OR expires_at <= {p}1",
            limit,
            diesel::sql_types::Timestamp = now
        )
    })
}
