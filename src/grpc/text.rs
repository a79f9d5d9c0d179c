//! One rule for every string of every request message: no NUL and no control characters.
//! PostgreSQL refuses NUL in text (a 500 before this rule), and a CR/LF in a stored URL or name
//! is a header or log injection waiting to happen. Checked generically, through the message's
//! descriptor, so a new field or RPC cannot forget it.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use tonic::{Request, Status};

use crate::error::Error;

static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).ok());

/// The request's message, once every string in it is free of control characters.
pub fn body<T: prost::Message + prost::Name>(request: Request<T>) -> Result<T, Status> {
    let message = request.into_inner();
    refuse_control_characters(&message)?;
    Ok(message)
}

/// INVALID_ARGUMENT naming the first string field (by its path) that holds a control character.
pub fn refuse_control_characters<T: prost::Message + prost::Name>(message: &T) -> Result<(), Error> {
    let descriptor = POOL
        .as_ref()
        .and_then(|pool| pool.get_message_by_name(&T::full_name()))
        .ok_or_else(|| Error::internal("request checks", anyhow::anyhow!("no descriptor for {}", T::full_name())))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| Error::internal("request checks", e))?;
    match first_control_character(&dynamic, "") {
        Some(field) => {
            Err(Error::InvalidArgument { field: field.into(), message: "must not contain control characters".into() })
        }
        None => Ok(()),
    }
}

fn first_control_character(message: &DynamicMessage, prefix: &str) -> Option<String> {
    message.fields().find_map(|(field, value)| {
        let path = if prefix.is_empty() { field.name().to_owned() } else { format!("{prefix}.{}", field.name()) };
        first_in_value(value, &path)
    })
}

fn first_in_value(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) if s.chars().any(char::is_control) => Some(path.to_owned()),
        Value::Message(m) => first_control_character(m, path),
        Value::List(items) => items.iter().find_map(|v| first_in_value(v, path)),
        Value::Map(map) => map.values().find_map(|v| first_in_value(v, path)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn every_string_is_checked_by_path() {
        let login = pb::LoginRequest { username: "ab\0cd".into(), password: "x".into() };
        let Err(Error::InvalidArgument { field, .. }) = refuse_control_characters(&login) else { panic!() };
        assert_eq!(field, "username");
        let update = pb::UpdateUserRequest {
            id: 1,
            backend: Some(pb::BackendInput {
                api_base_url: "http://x.example/\r\nSet-Cookie: a=b".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let Err(Error::InvalidArgument { field, .. }) = refuse_control_characters(&update) else { panic!() };
        assert_eq!(field, "backend.api_base_url");
        assert!(
            refuse_control_characters(&pb::LoginRequest { username: "älice ok".into(), password: "x".into() }).is_ok()
        );
    }
}
