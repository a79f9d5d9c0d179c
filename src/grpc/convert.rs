//! Proto <-> domain conversion at the edge. Requests are validated here, failing with the
//! offending field's name; the domain never sees an unvalidated message.

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::domain::audit::{AuditEntry, AuditQuery};
use crate::domain::sessions::SessionView;
use crate::domain::types::{BackendChange, BackendInput, BackendView, NewUser, Role, UserId, UserPatch, UserView};
use crate::domain::validate;
use crate::error::{Error, Result};
use crate::pb;

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0) }
}

impl From<&UserView> for pb::User {
    fn from(u: &UserView) -> Self {
        Self {
            id: u.id.get(),
            username: u.username.clone(),
            email: u.email.clone(),
            instagram_username: u.instagram_username().to_owned(),
            created_at: Some(timestamp(u.created_at)),
            last_login: u.last_login.map(timestamp),
            role: u.role.as_str().to_owned(),
            is_active: u.is_active,
            updated_at: Some(timestamp(u.updated_at)),
            backend: u.backend.as_ref().map(pb::BackendSummary::from),
        }
    }
}

impl From<&UserView> for pb::UserInfo {
    fn from(u: &UserView) -> Self {
        Self {
            id: u.id.get(),
            username: u.username.clone(),
            email: u.email.clone(),
            instagram_username: u.instagram_username().to_owned(),
            role: u.role.as_str().to_owned(),
        }
    }
}

impl From<&BackendView> for pb::BackendSummary {
    fn from(b: &BackendView) -> Self {
        Self {
            api_base_url: b.api_base_url.clone(),
            instagram_username: b.instagram_username.clone(),
            updated_at: Some(timestamp(b.updated_at)),
        }
    }
}

impl From<&BackendView> for pb::BackendConfigSummary {
    fn from(b: &BackendView) -> Self {
        Self {
            api_base_url: b.api_base_url.clone(),
            updated_at: Some(timestamp(b.updated_at)),
            instagram_username: b.instagram_username.clone(),
        }
    }
}

/// A backend from its three request fields; `instagram_username` may be absent.
fn backend_input(api_base_url: &str, bearer_token: String, instagram_username: Option<&str>) -> Result<BackendInput> {
    let api_base_url = validate::api_base_url(api_base_url)?;
    validate::bearer_token(&bearer_token)?;
    let instagram_username = instagram_username.map(validate::instagram_username).transpose()?;
    Ok(BackendInput { api_base_url, bearer_token: SecretString::from(bearer_token), instagram_username })
}

impl TryFrom<pb::CreateUserRequest> for NewUser {
    type Error = Error;

    fn try_from(r: pb::CreateUserRequest) -> Result<Self> {
        let username = validate::username(&r.username)?;
        let email = validate::email(&r.email)?;
        if r.password.is_empty() {
            return Err(Error::invalid("password", "is required"));
        }
        let role = if r.role.trim().is_empty() { Role::User } else { Role::parse("role", &r.role)? };
        let backend = match (r.api_base_url.trim().is_empty(), r.bearer_token.is_empty()) {
            (true, true) if r.instagram_username.trim().is_empty() => None,
            (true, _) => {
                return Err(Error::invalid("api_base_url", "is required when a backend is given"));
            }
            (false, true) => {
                return Err(Error::invalid("bearer_token", "is required when api_base_url is given"));
            }
            (false, false) => Some(backend_input(&r.api_base_url, r.bearer_token, Some(&r.instagram_username))?),
        };
        Ok(Self { username, email, password: SecretString::from(r.password), role, backend })
    }
}

impl TryFrom<pb::RegisterRequest> for NewUser {
    type Error = Error;

    fn try_from(r: pb::RegisterRequest) -> Result<Self> {
        let username = validate::username(&r.username)?;
        let email = validate::email(&r.email)?;
        if r.password.is_empty() {
            return Err(Error::invalid("password", "is required"));
        }
        Ok(Self { username, email, password: SecretString::from(r.password), role: Role::User, backend: None })
    }
}

impl From<&SessionView> for pb::Session {
    fn from(s: &SessionView) -> Self {
        Self {
            id: s.id.as_str().to_owned(),
            created_at: Some(timestamp(s.created_at)),
            refreshed_at: Some(timestamp(s.refreshed_at)),
            expires_at: Some(timestamp(s.expires_at)),
            ip_address: s.ip_address.clone().unwrap_or_default(),
            user_agent: s.user_agent.clone().unwrap_or_default(),
            current: s.current,
        }
    }
}

impl From<AuditEntry> for pb::AuditLog {
    fn from(e: AuditEntry) -> Self {
        Self {
            id: e.id,
            user_id: e.user_id.map_or(0, UserId::get),
            actor_id: e.actor_id.map_or(0, UserId::get),
            action: e.action,
            ip_address: e.ip_address.unwrap_or_default(),
            user_agent: e.user_agent.unwrap_or_default(),
            metadata: match json_value(e.metadata).kind {
                Some(prost_types::value::Kind::StructValue(s)) => Some(s),
                _ => None,
            },
            created_at: Some(timestamp(e.created_at)),
        }
    }
}

/// A JSON object as google.protobuf.Struct (WebAuthn options for the browser).
pub fn json_struct(v: serde_json::Value) -> prost_types::Struct {
    match json_value(v).kind {
        Some(prost_types::value::Kind::StructValue(s)) => s,
        _ => prost_types::Struct::default(),
    }
}

/// google.protobuf.Struct as the JSON object it holds (a WebAuthn credential from the browser).
/// Whole numbers come back as integers (a Struct holds every number as a double).
pub fn struct_json(s: prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.into_iter().map(|(k, v)| (k, value_json(v))).collect())
}

fn value_json(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::NumberValue(n)) => {
            #[expect(clippy::cast_possible_truncation, reason = "only whole numbers within i64 take this path")]
            let whole = (n.fract() == 0.0 && n.abs() < 9.0e15).then_some(n as i64);
            whole.map_or_else(
                || serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number),
                |i| serde_json::Value::Number(i.into()),
            )
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.into_iter().map(value_json).collect()),
        Some(Kind::StructValue(s)) => struct_json(s),
    }
}

/// serde_json -> google.protobuf.Value (Envoy prints it back as the same JSON).
fn json_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.into_iter().map(json_value).collect() })
        }
        serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map.into_iter().map(|(k, v)| (k, json_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// The range google.protobuf.Timestamp allows: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A request's timestamp, refused outside the range protobuf defines (beyond it the two
/// databases would compare it differently) or with nanos outside 0..1e9.
pub fn timestamp_in_range(field: &'static str, t: prost_types::Timestamp) -> Result<DateTime<Utc>> {
    let out_of_range = || Error::invalid(field, "must be a time between 0001-01-01 and 9999-12-31 (UTC)");
    if !TIMESTAMP_SECONDS.contains(&t.seconds) {
        return Err(out_of_range());
    }
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000).ok_or_else(out_of_range)?;
    DateTime::from_timestamp(t.seconds, nanos).ok_or_else(out_of_range)
}

/// The audit query of a request; zero/empty fields match anything.
pub fn audit_query(r: &pb::ListAuditLogsRequest) -> Result<AuditQuery> {
    let time = |field: &'static str, t: Option<prost_types::Timestamp>| -> Result<Option<DateTime<Utc>>> {
        t.map(|t| timestamp_in_range(field, t)).transpose()
    };
    if r.user_id < 0 {
        return Err(Error::invalid("user_id", "must not be negative"));
    }
    let action = r.action.trim();
    if action.chars().count() > validate::AUDIT_ACTION_MAX {
        return Err(Error::invalid("action", "must be at most 50 characters"));
    }
    Ok(AuditQuery {
        user_id: (r.user_id > 0).then_some(UserId(r.user_id)),
        action: (!action.is_empty()).then(|| action.to_owned()),
        since: time("since", r.since)?,
        until: time("until", r.until)?,
    })
}

impl TryFrom<pb::UpdateMyBackendRequest> for BackendInput {
    type Error = Error;

    fn try_from(r: pb::UpdateMyBackendRequest) -> Result<Self> {
        backend_input(&r.api_base_url, r.bearer_token, r.instagram_username.as_deref())
    }
}

impl TryFrom<pb::UpdateUserRequest> for UserPatch {
    type Error = Error;

    fn try_from(r: pb::UpdateUserRequest) -> Result<Self> {
        let backend = match (r.backend, r.remove_backend) {
            (Some(_), true) => {
                return Err(Error::invalid("remove_backend", "cannot be combined with backend"));
            }
            (Some(b), false) => {
                BackendChange::Set(backend_input(&b.api_base_url, b.bearer_token, Some(&b.instagram_username))?)
            }
            (None, true) => BackendChange::Remove,
            (None, false) => BackendChange::Keep,
        };
        Ok(Self {
            email: r.email.as_deref().map(validate::email).transpose()?,
            role: r.role.as_deref().map(|v| Role::parse("role", v)).transpose()?,
            is_active: r.is_active,
            backend,
        })
    }
}

/// A positive user id from a request.
pub fn user_id(id: i32) -> Result<UserId> {
    if id > 0 { Ok(UserId(id)) } else { Err(Error::invalid("id", "must be a positive user id")) }
}
