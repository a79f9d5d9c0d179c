//! Judging the source's rows against this service's rules and its current data: what is new,
//! what changed since the last run, what is refused and why. Pure: no I/O, so a dry run and the
//! real run decide alike.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SubsecRound, Utc};
use secrecy::ExposeSecret;

use super::{ImportOptions, Refusal, TableCounts};
use crate::crypto::secrets::TokenCipher;
use crate::db::models::import::ImportedAudit;
use crate::db::seed_source::{SeedAudit, SeedBackend, SeedTables, SeedUser};
use crate::domain::validate;
use crate::error::Error;
use crate::model::{BackendRecord, Role, User, UserId, UserWithBackend};

/// The writes a run would make.
#[derive(Debug, Default)]
pub struct Plan {
    pub new_users: Vec<User>,
    /// With whether the change ends the user's sessions here (password, activation).
    pub changed_users: Vec<(User, bool)>,
    pub backends: Vec<BackendRecord>,
    pub audit: Vec<ImportedAudit>,
    pub users: TableCounts,
    pub backend_counts: TableCounts,
    /// `None` when the source has no audit_logs table.
    pub audit_counts: Option<TableCounts>,
    pub refusals: Vec<Refusal>,
    /// Tokens that only `--source-encryption-key` decrypts, re-encrypted under ENCRYPTION_KEY.
    pub reencrypted: usize,
    /// Users whose backend token no key decrypts.
    pub undecryptable: Vec<i32>,
}

/// Timestamps at the precision both databases keep, so that a re-run compares equal.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

fn reason(e: &Error) -> String {
    match e {
        Error::InvalidArgument { field, message } => format!("{field} {message}"),
        other => other.to_string(),
    }
}

/// A passlib/bcrypt hash (`$2a$`, `$2b$`, `$2y$`, 60 characters): anything else would never verify.
fn is_bcrypt(hash: &str) -> bool {
    hash.len() == 60 && ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

pub fn plan(
    source: &SeedTables,
    existing: &[UserWithBackend],
    imported_audit: &HashSet<i32>,
    keyring: &TokenCipher,
    options: &ImportOptions,
    now: DateTime<Utc>,
) -> Plan {
    let mut plan = Plan::default();
    let accepted = plan_users(&mut plan, &source.users, existing, options, now);
    let existing_backends: HashMap<UserId, &crate::model::Backend> =
        existing.iter().filter_map(|(u, b)| b.as_ref().map(|b| (u.id, b))).collect();
    let refused_users: HashSet<i32> =
        source.users.iter().map(|u| u.id).filter(|id| !accepted.contains(&UserId(*id))).collect();
    for backend in &source.backends {
        plan_backend(&mut plan, backend, &accepted, &refused_users, &existing_backends, keyring, options, now);
    }
    if let Some(rows) = &source.audit {
        let mut counts = TableCounts { source: rows.len(), ..TableCounts::default() };
        for row in rows {
            if imported_audit.contains(&row.id) {
                counts.unchanged += 1;
                continue;
            }
            match audit_row(row, &accepted) {
                Ok(entry) => {
                    counts.new += 1;
                    plan.audit.push(entry);
                }
                Err(why) => {
                    counts.refused += 1;
                    plan.refusals.push(Refusal { table: "audit_logs", id: row.id, reason: why });
                }
            }
        }
        plan.audit_counts = Some(counts);
    }
    plan
}

/// Plans the users; returns the ids that exist here after the run (new or already imported).
fn plan_users(
    plan: &mut Plan,
    users: &[SeedUser],
    existing: &[UserWithBackend],
    options: &ImportOptions,
    now: DateTime<Utc>,
) -> HashSet<UserId> {
    let by_id: HashMap<UserId, &User> = existing.iter().map(|(u, _)| (u.id, u)).collect();
    let by_name: HashMap<String, UserId> = existing.iter().map(|(u, _)| (u.username.to_lowercase(), u.id)).collect();
    let by_email: HashMap<String, UserId> = existing.iter().map(|(u, _)| (u.email.to_lowercase(), u.id)).collect();
    let admins: HashSet<String> = options.admins.iter().map(|a| a.trim().to_lowercase()).collect();
    let (mut seen_names, mut seen_emails) = (HashMap::new(), HashMap::new());
    let mut accepted = HashSet::new();
    plan.users.source = users.len();
    for source in users {
        match judge_user(source, &by_id, &by_name, &by_email, &mut seen_names, &mut seen_emails) {
            Err(why) => {
                plan.users.refused += 1;
                plan.refusals.push(Refusal { table: "users", id: source.id, reason: why });
            }
            Ok((username, email)) => {
                let id = UserId(source.id);
                accepted.insert(id);
                let current = by_id.get(&id);
                let listed = admins.contains(&username.to_lowercase());
                // `--admins` promotes; a re-run without it demotes nobody.
                let role = match current {
                    _ if listed => Role::Admin,
                    Some(u) => u.role,
                    None => Role::User,
                };
                let created_at = micros(source.created_at().or(source.updated_at()).unwrap_or(now));
                // The later sign-in wins: one made here since the last run is kept.
                let last_login = source.last_login().map(micros).max(current.and_then(|u| u.last_login));
                let user = User {
                    id,
                    username,
                    email,
                    password_hash: source.password_hash.clone(),
                    role,
                    is_active: source.is_active(),
                    created_at,
                    updated_at: micros(source.updated_at().unwrap_or(created_at)),
                    last_login,
                };
                match current {
                    None => {
                        plan.users.new += 1;
                        plan.new_users.push(user);
                    }
                    Some(u) if same_user(u, &user) => plan.users.unchanged += 1,
                    Some(u) => {
                        plan.users.updated += 1;
                        let ends_sessions = u.password_hash != user.password_hash || (u.is_active && !user.is_active);
                        plan.changed_users.push((user, ends_sessions));
                    }
                }
            }
        }
    }
    accepted
}

fn same_user(current: &User, user: &User) -> bool {
    current.username == user.username
        && current.email == user.email
        && current.password_hash == user.password_hash
        && current.role == user.role
        && current.is_active == user.is_active
        && current.created_at == user.created_at
        && current.updated_at == user.updated_at
        && current.last_login == user.last_login
}

/// The user's username and email as stored here, or why the row is refused.
fn judge_user(
    source: &SeedUser,
    by_id: &HashMap<UserId, &User>,
    by_name: &HashMap<String, UserId>,
    by_email: &HashMap<String, UserId>,
    seen_names: &mut HashMap<String, i32>,
    seen_emails: &mut HashMap<String, i32>,
) -> Result<(String, String), String> {
    let username = validate::username(&source.username).map_err(|e| reason(&e))?;
    let email = validate::email(&source.email).map_err(|e| reason(&e))?;
    if !is_bcrypt(&source.password_hash) {
        return Err("password_hash is not a bcrypt hash ($2a$/$2b$/$2y$), so no password would verify".into());
    }
    let (name_key, email_key) = (username.to_lowercase(), email.to_lowercase());
    // Within the source: the lowest id keeps the name (the seed compares case-sensitively).
    if let Some(first) = seen_names.get(&name_key) {
        return Err(format!("username duplicates user {first}'s under case-insensitive comparison"));
    }
    if let Some(first) = seen_emails.get(&email_key) {
        return Err(format!("email duplicates user {first}'s under case-insensitive comparison"));
    }
    seen_names.insert(name_key.clone(), source.id);
    seen_emails.insert(email_key.clone(), source.id);
    let id = UserId(source.id);
    if let Some(here) = by_id.get(&id)
        && here.username.to_lowercase() != name_key
    {
        return Err(format!("id {} belongs to another account here ({})", source.id, here.username));
    }
    if let Some(other) = by_name.get(&name_key).filter(|other| **other != id) {
        return Err(format!("username is taken here by user {other}"));
    }
    if let Some(other) = by_email.get(&email_key).filter(|other| **other != id) {
        return Err(format!("email is taken here by user {other}"));
    }
    Ok((username, email))
}

#[expect(clippy::too_many_arguments, reason = "one call site; the plan's inputs, named")]
fn plan_backend(
    plan: &mut Plan,
    backend: &SeedBackend,
    accepted: &HashSet<UserId>,
    refused_users: &HashSet<i32>,
    existing: &HashMap<UserId, &crate::model::Backend>,
    keyring: &TokenCipher,
    options: &ImportOptions,
    now: DateTime<Utc>,
) {
    plan.backend_counts.source += 1;
    let user_id = backend.user_id.unwrap_or_default();
    let refuse = |plan: &mut Plan, why: String| {
        plan.backend_counts.refused += 1;
        plan.refusals.push(Refusal { table: "user_backends", id: user_id, reason: why });
    };
    if !accepted.contains(&UserId(user_id)) {
        let why = if refused_users.contains(&user_id) { "its user is refused" } else { "it belongs to no user" };
        return refuse(plan, why.into());
    }
    let checked = validate::api_base_url(&backend.api_base_url)
        .and_then(|url| validate::instagram_username(&backend.instagram_username).map(|ig| (url, ig)));
    let (api_base_url, instagram_username) = match checked {
        Ok(v) => v,
        Err(e) => return refuse(plan, reason(&e)),
    };
    // The configured keys first: a token they decrypt is copied as it is.
    let (plain, encrypted) = match keyring.decrypt(&backend.bearer_token_encrypted) {
        Ok(plain) => (plain, backend.bearer_token_encrypted.clone()),
        Err(_) => match options.source_cipher.as_ref().map(|c| c.decrypt(&backend.bearer_token_encrypted)) {
            Some(Ok(plain)) => {
                let encrypted = keyring.encrypt(plain.expose_secret());
                (plain, encrypted)
            }
            _ => {
                plan.undecryptable.push(user_id);
                return refuse(
                    plan,
                    "bearer token decrypts with neither ENCRYPTION_KEY (nor its previous keys) nor --source-encryption-key"
                        .into(),
                );
            }
        },
    };
    if let Err(e) = validate::bearer_token(plain.expose_secret()) {
        return refuse(plan, reason(&e));
    }
    let reencrypted = encrypted != backend.bearer_token_encrypted;
    if let Some(current) = existing.get(&UserId(user_id)) {
        let same_token = current.encrypted_token == encrypted
            || keyring.decrypt(&current.encrypted_token).is_ok_and(|t| t.expose_secret() == plain.expose_secret());
        if same_token && current.api_base_url == api_base_url && current.instagram_username == instagram_username {
            plan.backend_counts.unchanged += 1;
            return;
        }
        plan.backend_counts.updated += 1;
    } else {
        plan.backend_counts.new += 1;
    }
    plan.reencrypted += usize::from(reencrypted);
    plan.backends.push(BackendRecord {
        user_id: UserId(user_id),
        instagram_username,
        api_base_url,
        encrypted_token: encrypted,
        updated_at: micros(backend.updated_at().unwrap_or(now)),
    });
}

/// An audit row as stored here, or why it is refused. Its user is kept when imported; otherwise
/// `user_id` is NULL (as for a deleted user) and the seed's id stays in the metadata.
fn audit_row(row: &SeedAudit, accepted: &HashSet<UserId>) -> Result<ImportedAudit, String> {
    let action = row.action.trim();
    if action.is_empty() || action.chars().count() > 50 {
        return Err("action must be 1 to 50 characters".into());
    }
    let ip_address = match row.ip_address.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => {
            // INET prints a host as its address, a network as address/prefix.
            let address = text.split('/').next().unwrap_or_default();
            let ip: std::net::IpAddr = address.parse().map_err(|_| "ip_address is not an IP address".to_owned())?;
            Some(ip.to_string())
        }
    };
    let created_at = row.created_at().ok_or("created_at is empty")?;
    let mut metadata = match row.metadata.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => serde_json::json!({}),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => serde_json::Value::Object(map),
            Ok(serde_json::Value::Null) => serde_json::json!({}),
            Ok(other) => serde_json::json!({ "value": other }),
            Err(_) => return Err("metadata is not JSON".into()),
        },
    };
    let user_id = row.user_id.map(UserId).filter(|id| accepted.contains(id));
    if let (Some(seed_user), None, serde_json::Value::Object(map)) = (row.user_id, user_id, &mut metadata) {
        map.insert("seed_user_id".into(), seed_user.into());
    }
    Ok(ImportedAudit {
        seed_id: row.id,
        user_id,
        action: action.to_owned(),
        ip_address,
        user_agent: row.user_agent.clone(),
        metadata: metadata.to_string(),
        created_at: micros(created_at),
    })
}
