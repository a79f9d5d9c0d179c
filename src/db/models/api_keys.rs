//! The `service_accounts` and `api_keys` tables.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::lower;
use crate::db::schema::{api_keys, service_accounts};
use crate::db::{DbConn, map_err};
use crate::db_run;
use crate::error::Result;
use crate::model::{ApiKey, Scope, ServiceAccount, ServiceAccountId};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = service_accounts)]
struct AccountRow {
    id: i32,
    name: String,
    description: String,
    created_at: NaiveDateTime,
}

impl From<AccountRow> for ServiceAccount {
    fn from(r: AccountRow) -> Self {
        Self {
            id: ServiceAccountId(r.id),
            name: r.name,
            description: r.description,
            created_at: r.created_at.and_utc(),
        }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = service_accounts)]
struct NewAccountRow<'a> {
    name: &'a str,
    description: &'a str,
    created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
struct KeyRow {
    id: String,
    service_account_id: i32,
    name: String,
    secret_sha256: String,
    scopes: String,
    allowed_cidrs: String,
    expires_at: Option<NaiveDateTime>,
    created_at: NaiveDateTime,
    revoked_at: Option<NaiveDateTime>,
    last_used_at: Option<NaiveDateTime>,
}

impl From<KeyRow> for ApiKey {
    fn from(r: KeyRow) -> Self {
        Self {
            id: r.id,
            service_account_id: ServiceAccountId(r.service_account_id),
            name: r.name,
            secret_sha256: r.secret_sha256,
            // Unknown names (none are written) grant nothing; a malformed CIDR admits nobody
            // rather than everybody: it becomes an address no client has.
            scopes: r.scopes.split_whitespace().filter_map(Scope::from_name).collect(),
            allowed_cidrs: r
                .allowed_cidrs
                .split_whitespace()
                .map(|c| {
                    c.parse()
                        .unwrap_or_else(|_| ipnet::IpNet::from(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)))
                })
                .collect(),
            expires_at: r.expires_at.map(|t| t.and_utc()),
            created_at: r.created_at.and_utc(),
            revoked_at: r.revoked_at.map(|t| t.and_utc()),
            last_used_at: r.last_used_at.map(|t| t.and_utc()),
        }
    }
}

impl From<&ApiKey> for KeyRow {
    fn from(k: &ApiKey) -> Self {
        Self {
            id: k.id.clone(),
            service_account_id: k.service_account_id.0,
            name: k.name.clone(),
            secret_sha256: k.secret_sha256.clone(),
            scopes: k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "),
            allowed_cidrs: k.allowed_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            expires_at: k.expires_at.map(|t| t.naive_utc()),
            created_at: k.created_at.naive_utc(),
            revoked_at: k.revoked_at.map(|t| t.naive_utc()),
            last_used_at: k.last_used_at.map(|t| t.naive_utc()),
        }
    }
}

pub async fn insert_account(
    conn: &mut DbConn,
    name: &str,
    description: &str,
    now: DateTime<Utc>,
) -> Result<ServiceAccount> {
    let row = NewAccountRow { name, description, created_at: now.naive_utc() };
    let row = db_run!(conn, "api_keys::insert_account": {
        diesel::insert_into(service_accounts::table)
            .values(&row)
            .returning(AccountRow::as_returning())
            .get_result(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(row.into())
}

pub async fn find_account(conn: &mut DbConn, id: ServiceAccountId) -> Result<Option<ServiceAccount>> {
    let row = db_run!(conn, "api_keys::find_account": {
        service_accounts::table
            .find(id.0)
            .select(AccountRow::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(Into::into))
}

/// The account named `name`, case-insensitively.
pub async fn find_account_by_name(conn: &mut DbConn, name: &str) -> Result<Option<ServiceAccount>> {
    let name = name.to_lowercase();
    let row = db_run!(conn, "api_keys::find_account_by_name": {
        service_accounts::table
            .filter(lower(service_accounts::name).eq(&name))
            .select(AccountRow::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(Into::into))
}

pub async fn list_accounts(conn: &mut DbConn) -> Result<Vec<ServiceAccount>> {
    let rows = db_run!(conn, "api_keys::list_accounts": {
        service_accounts::table
            .order(service_accounts::id.asc())
            .select(AccountRow::as_select())
            .load(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Deletes the account; its keys cascade. False when there was none.
pub async fn delete_account(conn: &mut DbConn, id: ServiceAccountId) -> Result<bool> {
    db_run!(conn, "api_keys::delete_account": {
        diesel::delete(service_accounts::table.find(id.0))
            .execute(conn)
            .await
            .map(|n| n > 0)
            .map_err(map_err)
    })
}

/// Locks the account's row until the transaction ends (PostgreSQL; SQLite's write lock already
/// serialises writers): key changes of one account, and writes made with its keys, happen one
/// after the other. False when there is no such account.
pub async fn lock_account(conn: &mut DbConn, id: ServiceAccountId) -> Result<bool> {
    match conn {
        DbConn::Postgres(c) => service_accounts::table
            .find(id.0)
            .select(service_accounts::id)
            .for_update()
            .first::<i32>(&mut **c)
            .await
            .optional()
            .map(|row| row.is_some())
            .map_err(map_err),
        DbConn::Sqlite(c) => service_accounts::table
            .find(id.0)
            .select(service_accounts::id)
            .first::<i32>(&mut **c)
            .await
            .optional()
            .map(|row| row.is_some())
            .map_err(map_err),
    }
}

pub async fn insert_key(conn: &mut DbConn, key: &ApiKey) -> Result<()> {
    let row = KeyRow::from(key);
    db_run!(conn, "api_keys::insert_key": {
        diesel::insert_into(api_keys::table).values(&row).execute(conn).await.map(drop).map_err(map_err)
    })
}

/// The key with public id `id` (live or not).
pub async fn find_key(conn: &mut DbConn, id: &str) -> Result<Option<ApiKey>> {
    let row = db_run!(conn, "api_keys::find_key": {
        api_keys::table
            .find(id)
            .select(KeyRow::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(map_err)
    })?;
    Ok(row.map(Into::into))
}

/// The account's keys, oldest first.
pub async fn list_keys(conn: &mut DbConn, account: ServiceAccountId) -> Result<Vec<ApiKey>> {
    let rows = db_run!(conn, "api_keys::list_keys": {
        api_keys::table
            .filter(api_keys::service_account_id.eq(account.0))
            .order((api_keys::created_at.asc(), api_keys::id.asc()))
            .select(KeyRow::as_select())
            .load(conn)
            .await
            .map_err(map_err)
    })?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// How many of the account's keys are live at `now`.
pub async fn count_live_keys(conn: &mut DbConn, account: ServiceAccountId, now: DateTime<Utc>) -> Result<i64> {
    let now = now.naive_utc();
    db_run!(conn, "api_keys::count_live_keys": {
        api_keys::table
            .filter(api_keys::service_account_id.eq(account.0))
            .filter(api_keys::revoked_at.is_null())
            .filter(api_keys::expires_at.is_null().or(api_keys::expires_at.gt(now)))
            .count()
            .get_result(conn)
            .await
            .map_err(map_err)
    })
}

/// Revokes a live key of `account`; false when it has no such key or the key had already ended.
pub async fn revoke_key(conn: &mut DbConn, account: ServiceAccountId, id: &str, now: DateTime<Utc>) -> Result<bool> {
    let now = now.naive_utc();
    db_run!(conn, "api_keys::revoke_key": {
        diesel::update(
            api_keys::table
                .filter(api_keys::id.eq(id))
                .filter(api_keys::service_account_id.eq(account.0))
                .filter(api_keys::revoked_at.is_null())
                .filter(api_keys::expires_at.is_null().or(api_keys::expires_at.gt(now))),
        )
        .set(api_keys::revoked_at.eq(now))
        .execute(conn)
        .await
        .map(|n| n > 0)
        .map_err(map_err)
    })
}

/// Moves a key's expiry to `at` (rotation's grace period).
pub async fn set_expiry(conn: &mut DbConn, id: &str, at: DateTime<Utc>) -> Result<()> {
    db_run!(conn, "api_keys::set_expiry": {
        diesel::update(api_keys::table.find(id))
            .set(api_keys::expires_at.eq(Some(at.naive_utc())))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}

/// Records a use of the key (callers coalesce: at most one write per key a minute).
pub async fn touch(conn: &mut DbConn, id: &str, at: DateTime<Utc>) -> Result<()> {
    let at = at.naive_utc();
    db_run!(conn, "api_keys::touch": {
        diesel::update(api_keys::table.find(id))
            .filter(api_keys::last_used_at.is_null().or(api_keys::last_used_at.lt(at)))
            .set(api_keys::last_used_at.eq(Some(at)))
            .execute(conn)
            .await
            .map(drop)
            .map_err(map_err)
    })
}
