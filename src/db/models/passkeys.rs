//! The passkey tables: `passkeys` (a user's WebAuthn credentials, the crate's `Passkey` as
//! JSON) and `passkey_ceremonies` (the state between the start and the finish of a ceremony,
//! by the SHA-256 of its token). Taking a ceremony is one conditional DELETE, so two concurrent
//! finishes of one ceremony cannot both win on either database.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::delete_batch;
use crate::db::schema::{passkey_ceremonies, passkeys};
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;
use crate::model::{PasskeyCeremony, PasskeyRecord, UserId};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = passkeys)]
struct PasskeyRow {
    id: i32,
    user_id: i32,
    credential_id: String,
    user_handle: String,
    passkey: String,
    name: String,
    created_at: NaiveDateTime,
    last_used_at: Option<NaiveDateTime>,
}

impl From<PasskeyRow> for PasskeyRecord {
    fn from(r: PasskeyRow) -> Self {
        Self {
            id: r.id,
            user_id: UserId(r.user_id),
            credential_id: r.credential_id,
            user_handle: r.user_handle,
            passkey_json: r.passkey,
            name: r.name,
            created_at: r.created_at.and_utc(),
            last_used_at: r.last_used_at.map(|t| t.and_utc()),
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = passkey_ceremonies)]
struct CeremonyRow {
    token_sha256: String,
    purpose: String,
    user_id: Option<i32>,
    mfa_token_sha256: Option<String>,
    ip_address: String,
    state: String,
    created_at: NaiveDateTime,
    expires_at: NaiveDateTime,
}

impl From<CeremonyRow> for PasskeyCeremony {
    fn from(r: CeremonyRow) -> Self {
        Self {
            token_sha256: r.token_sha256,
            purpose: r.purpose,
            user_id: r.user_id.map(UserId),
            mfa_token_sha256: r.mfa_token_sha256,
            ip_address: r.ip_address,
            state_json: r.state,
            created_at: r.created_at.and_utc(),
            expires_at: r.expires_at.and_utc(),
        }
    }
}

impl From<&PasskeyCeremony> for CeremonyRow {
    fn from(c: &PasskeyCeremony) -> Self {
        Self {
            token_sha256: c.token_sha256.clone(),
            purpose: c.purpose.clone(),
            user_id: c.user_id.map(|u| u.0),
            mfa_token_sha256: c.mfa_token_sha256.clone(),
            ip_address: c.ip_address.clone(),
            state: c.state_json.clone(),
            created_at: c.created_at.naive_utc(),
            expires_at: c.expires_at.naive_utc(),
        }
    }
}

/// The user's passkeys, oldest first.
pub async fn list(conn: &mut DbConn, user_id: UserId) -> Result<Vec<PasskeyRecord>> {
    let rows: Vec<PasskeyRow> = db_run!(conn, "passkeys::list": {
        passkeys::table
            .filter(passkeys::user_id.eq(user_id.0))
            .order(passkeys::id)
            .select(PasskeyRow::as_select())
            .load(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(rows.into_iter().map(PasskeyRecord::from).collect())
}

/// The passkey with this credential id (base64url), whoever's it is.
pub async fn find_by_credential(conn: &mut DbConn, credential_id: &str) -> Result<Option<PasskeyRecord>> {
    let row = db_run!(conn, "passkeys::find_by_credential": {
        passkeys::table
            .filter(passkeys::credential_id.eq(credential_id))
            .select(PasskeyRow::as_select())
            .first::<PasskeyRow>(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(PasskeyRecord::from))
}

/// The user handle the user's passkeys share, if the user has one.
pub async fn user_handle(conn: &mut DbConn, user_id: UserId) -> Result<Option<String>> {
    db_run!(conn, "passkeys::user_handle": {
        passkeys::table
            .filter(passkeys::user_id.eq(user_id.0))
            .order(passkeys::id)
            .select(passkeys::user_handle)
            .first::<String>(conn)
            .await
            .optional()
            .map_err(map_err)
    })
}

/// Stores a new passkey and returns it; a credential id already stored is
/// `AlreadyExists { credential_id }`.
pub async fn insert(
    conn: &mut DbConn,
    user_id: UserId,
    credential_id: &str,
    user_handle: &str,
    passkey_json: &str,
    name: &str,
    now: DateTime<Utc>,
) -> Result<PasskeyRecord> {
    let now = now.naive_utc();
    let row = db_run!(conn, "passkeys::insert": {
        diesel::insert_into(passkeys::table)
            .values((
                passkeys::user_id.eq(user_id.0),
                passkeys::credential_id.eq(credential_id),
                passkeys::user_handle.eq(user_handle),
                passkeys::passkey.eq(passkey_json),
                passkeys::name.eq(name),
                passkeys::created_at.eq(now),
            ))
            .returning(PasskeyRow::as_returning())
            .get_result::<PasskeyRow>(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(PasskeyRecord::from(row))
}

/// Renames the user's passkey `id` and returns it as renamed; `None` when the user has no such
/// passkey.
pub async fn rename(conn: &mut DbConn, user_id: UserId, id: i32, name: &str) -> Result<Option<PasskeyRecord>> {
    let row = db_run!(conn, "passkeys::rename": {
        diesel::update(passkeys::table.filter(passkeys::id.eq(id)).filter(passkeys::user_id.eq(user_id.0)))
            .set(passkeys::name.eq(name))
            .returning(PasskeyRow::as_returning())
            .get_result::<PasskeyRow>(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(PasskeyRecord::from))
}

/// Deletes the user's passkey `id`; false when the user has no such passkey.
pub async fn delete(conn: &mut DbConn, user_id: UserId, id: i32) -> Result<bool> {
    let n = db_run!(conn, "passkeys::delete": {
        diesel::delete(passkeys::table.filter(passkeys::id.eq(id)).filter(passkeys::user_id.eq(user_id.0)))
            .execute(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(n == 1)
}

/// After a use with signature counter `counter`: the credential as the crate updated it, and
/// when. Only forward: a concurrent use that stored a higher counter meanwhile stays (it was
/// checked against the same older value). False when nothing was stored.
pub async fn mark_used(
    conn: &mut DbConn,
    id: i32,
    passkey_json: &str,
    counter: u32,
    now: DateTime<Utc>,
) -> Result<bool> {
    let (now, counter) = (now.naive_utc(), i64::from(counter));
    let n = db_run!(conn, "passkeys::mark_used": {
        diesel::update(passkeys::table.filter(passkeys::id.eq(id)).filter(passkeys::sign_count.le(counter)))
            .set((passkeys::passkey.eq(passkey_json), passkeys::sign_count.eq(counter), passkeys::last_used_at.eq(now)))
            .execute(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(n == 1)
}

/// Removes all of the user's passkeys and open ceremonies; returns how many passkeys went.
pub async fn delete_all(conn: &mut DbConn, user_id: UserId) -> Result<usize> {
    let n = db_run!(conn, "passkeys::delete_all": {
        diesel::delete(passkeys::table.filter(passkeys::user_id.eq(user_id.0))).execute(conn).await.map_err(map_err)
    })?;
    db_run!(conn, "passkeys::delete_all": {
        diesel::delete(passkey_ceremonies::table.filter(passkey_ceremonies::user_id.eq(user_id.0)))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })?;
    Ok(n)
}

/// Stores the state of a ceremony that started.
pub async fn insert_ceremony(conn: &mut DbConn, ceremony: &PasskeyCeremony) -> Result<()> {
    let row = CeremonyRow::from(ceremony);
    db_run!(conn, "passkeys::insert_ceremony": {
        diesel::insert_into(passkey_ceremonies::table).values(row.clone()).execute(conn).await.map(drop).map_err(map_err)
    })
}

/// The live ceremony whose token hashes to `token_sha256` (read only: [`take_ceremony`] spends it).
pub async fn find_ceremony(
    conn: &mut DbConn,
    token_sha256: &str,
    now: DateTime<Utc>,
) -> Result<Option<PasskeyCeremony>> {
    let now = now.naive_utc();
    let row = db_run!(conn, "passkeys::find_ceremony": {
        passkey_ceremonies::table
            .find(token_sha256)
            .filter(passkey_ceremonies::expires_at.gt(now))
            .select(CeremonyRow::as_select())
            .first::<CeremonyRow>(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(PasskeyCeremony::from))
}

/// Spends a live ceremony: true for the one caller that deletes it.
pub async fn take_ceremony(conn: &mut DbConn, token_sha256: &str, now: DateTime<Utc>) -> Result<bool> {
    let now = now.naive_utc();
    let n = db_run!(conn, "passkeys::take_ceremony": {
        diesel::delete(
            passkey_ceremonies::table
                .filter(passkey_ceremonies::token_sha256.eq(token_sha256))
                .filter(passkey_ceremonies::expires_at.gt(now)),
        )
        .execute(conn)
        .await
        .map_err(map_err)
    })?;
    Ok(n == 1)
}

/// Deletes at most `limit` ceremonies that expired before `now`.
pub async fn purge_ceremonies(conn: &mut DbConn, now: DateTime<Utc>, limit: i64) -> Result<usize> {
    let now = now.naive_utc();
    db_run!(conn, "passkeys::purge_ceremonies": {
        delete_batch!(conn, "passkey_ceremonies", "expires_at <= {p}1", limit, diesel::sql_types::Timestamp = now)
    })
}
