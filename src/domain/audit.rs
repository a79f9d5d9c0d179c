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
}

impl Action {
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
        Self {
            action,
            user_id,
            actor_id: user_id,
            metadata: json!({}),
        }
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

pub async fn record(
    conn: &mut DbConn,
    event: Event,
    client: &ClientInfo,
    now: DateTime<Utc>,
) -> Result<()> {
    let user_agent = client
        .user_agent
        .as_deref()
        .map(|ua| ua.chars().take(USER_AGENT_MAX).collect::<String>());
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
pub async fn record_best_effort(
    conn: &mut DbConn,
    event: Event,
    client: &ClientInfo,
    now: DateTime<Utc>,
) {
    let action = event.action.as_str();
    if let Err(e) = record(conn, event, client, now).await {
        tracing::error!(action, error = ?e, "failed to write audit row");
    }
}
