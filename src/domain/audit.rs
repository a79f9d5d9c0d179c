//! Audit events: what happened, to whom, by whom, from where. Metadata holds structured
//! context (reasons, changed field names); never a secret.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::types::ClientInfo;
use crate::db::DbConn;
use crate::db::models::{NewAuditRow, audit};
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    LoginSuccess,
    LoginFailed,
    Logout,
    TokenRefresh,
    PasswordChange,
    BackendUpdate,
    UserCreate,
    UserUpdate,
    UserDelete,
    PasswordReset,
    LoginThrottled,
    UserUnlock,
    SessionRevoke,
    TokensReencrypted,
}

impl Action {
    /// Whether the event changes what cached sessions hold (so replicas must drop them).
    pub fn changes_sessions(self) -> bool {
        matches!(
            self,
            Self::LoginSuccess
                | Self::Logout
                | Self::PasswordChange
                | Self::BackendUpdate
                | Self::UserUpdate
                | Self::UserDelete
                | Self::PasswordReset
                | Self::SessionRevoke
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoginSuccess => "login_success",
            Self::LoginFailed => "login_failed",
            Self::Logout => "logout",
            Self::TokenRefresh => "token_refresh",
            Self::PasswordChange => "password_change",
            Self::BackendUpdate => "backend_update",
            Self::UserCreate => "user_create",
            Self::UserUpdate => "user_update",
            Self::UserDelete => "user_delete",
            Self::PasswordReset => "password_reset",
            Self::LoginThrottled => "login_throttled",
            Self::UserUnlock => "user_unlock",
            Self::SessionRevoke => "session_revoke",
            Self::TokensReencrypted => "tokens_reencrypted",
        }
    }
}

/// One event about to be written.
#[derive(Debug)]
pub struct Event {
    pub action: Action,
    /// The account the event is about.
    pub user_id: Option<i32>,
    /// Who acted, when not the user themself.
    pub actor_id: Option<i32>,
    pub metadata: Value,
}

impl Event {
    pub fn new(action: Action, user_id: Option<i32>) -> Self {
        Self { action, user_id, actor_id: user_id, metadata: json!({}) }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        if let Value::Object(map) = &mut self.metadata {
            map.insert(key.to_owned(), value.into());
        }
        self
    }
}

/// Longest user agent kept.
const USER_AGENT_MAX: usize = 512;

pub async fn record(conn: &mut DbConn, event: Event, client: &ClientInfo, now: DateTime<Utc>) -> Result<()> {
    let user_agent = client.user_agent.as_deref().map(|ua| ua.chars().take(USER_AGENT_MAX).collect::<String>());
    // Every state change is audited, so this is the one place that tells the other replicas.
    if let (true, Some(user_id)) = (event.action.changes_sessions(), event.user_id) {
        crate::db::notify::user_changed(conn, user_id).await?;
    }
    let row = NewAuditRow {
        user_id: event.user_id,
        actor_id: event.actor_id,
        action: event.action.as_str().to_owned(),
        ip_address: client.ip.map(|ip| ip.to_string()),
        user_agent,
        metadata: event.metadata.to_string(),
        created_at: now.naive_utc(),
    };
    audit::insert(conn, &row).await
}

/// Records an event outside any transaction; a failure is logged, not returned, because the
/// request it describes has already been decided.
pub async fn record_best_effort(conn: &mut DbConn, event: Event, client: &ClientInfo, now: DateTime<Utc>) {
    let action = event.action.as_str();
    if let Err(e) = record(conn, event, client, now).await {
        tracing::error!(action, error = ?e, "failed to write audit row");
    }
}

/// An audit row as admins read it.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub id: i64,
    pub user_id: Option<i32>,
    pub actor_id: Option<i32>,
    pub action: String,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
}

impl From<crate::db::models::AuditRow> for AuditEntry {
    fn from(r: crate::db::models::AuditRow) -> Self {
        Self {
            id: r.id,
            user_id: r.user_id,
            actor_id: r.actor_id,
            action: r.action,
            ip_address: r.ip_address,
            user_agent: r.user_agent,
            metadata: serde_json::from_str(&r.metadata).unwrap_or_else(|_| json!({})),
            created_at: r.created_at.and_utc(),
        }
    }
}

impl super::App {
    /// Admin: a page of audit rows, newest first, and the number of matches.
    pub async fn list_audit(
        &self,
        actor: &super::types::Actor<'_>,
        filter: &audit::AuditFilter,
        limit: i64,
        offset: i64,
    ) -> crate::error::Result<(Vec<AuditEntry>, i64)> {
        actor.require_admin()?;
        let (limit, offset) = super::page(limit, offset)?;
        let mut conn = self.db().get().await?;
        let (rows, total) = audit::query(&mut conn, filter, limit, offset).await?;
        Ok((rows.into_iter().map(AuditEntry::from).collect(), total))
    }
}
