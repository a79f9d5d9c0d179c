//! What the service checks of each request field, as JSON Schema: required fields, lengths,
//! patterns, bounds, enumerations. Built from the validators' own constants and character
//! predicates (`domain::validate`, `crypto::password`, the paging and key limits), so the
//! document states the rules the service runs and cannot drift from them (a unit test checks the
//! limits against the validators).
//!
//! The service trims surrounding whitespace of names, emails, URLs and the like before checking
//! them, so their patterns admit it (`WS*` on both sides: the whitespace `str::trim` removes, less
//! control characters, which no string may hold).

use std::sync::LazyLock;

use prost_reflect::MessageDescriptor;
use serde_json::{Value, json};

use crate::crypto::password::{MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};
use crate::domain::api_keys::{ID_HEX, ROTATION_GRACE_MAX};
use crate::domain::mfa::{CODE_DIGITS, RECOVERY_ALPHABET, RECOVERY_CODE_CHARS};
use crate::domain::paging::Listing;
use crate::domain::passkeys::{CEREMONY_MAX, CEREMONY_PREFIX, NAME_MAX as PASSKEY_NAME_MAX};
use crate::domain::validate::{
    self, AUDIT_ACTION_MAX, BEARER_TOKEN_MAX, CIDRS_MAX, DESCRIPTION_MAX, EMAIL_MAX, EMAIL_TLD_MIN, INSTAGRAM_MAX,
    KEY_NAME_MAX, SERVICE_ACCOUNT_NAME_MAX, URL_MAX, USERNAME_MAX, USERNAME_MIN,
};
use crate::domain::{PAGE_DEFAULT, PAGE_MAX};
use crate::model::Scope;

/// Messages read from requests: their rules apply, unknown fields are refused.
pub fn is_request(message: &MessageDescriptor) -> bool {
    message.name().ends_with("Request") || message.name() == "BackendInput"
}

/// The fields a request must give (absent, empty or blank is refused with 400).
pub fn required(message: &str) -> &'static [&'static str] {
    match message {
        "LoginRequest" => &["username", "password"],
        "RegisterRequest" | "CreateUserRequest" => &["username", "email", "password"],
        "UpdateMyBackendRequest" | "BackendInput" => &["api_base_url", "bearer_token"],
        "ChangeMyPasswordRequest" => &["current_password", "new_password"],
        "ResetPasswordRequest" => &["new_password"],
        "CreateServiceAccountRequest" => &["name"],
        "CreateApiKeyRequest" => &["name", "scopes"],
        "ConfirmTotpRequest" => &["code"],
        "ReauthenticateRequest" => &["password", "code"],
        "VerifyMfaRequest" => &["mfa_token"],
        "FinishPasskeyRegistrationRequest" | "FinishPasskeySignInRequest" => &["ceremony", "credential"],
        "RenamePasskeyRequest" => &["name"],
        _ => &[],
    }
}

/// The rule of one request field (of a list: of each item), or `None`: any string without
/// control characters, any value of its type.
pub fn field(message: &str, field: &str) -> Option<Value> {
    Some(match (message, field) {
        ("LoginRequest", "username") => nonblank("Username or email; surrounding whitespace is ignored"),
        ("LoginRequest", "password")
        | ("ChangeMyPasswordRequest", "current_password")
        | ("ReauthenticateRequest", "password") => {
            json!({"minLength": 1, "pattern": text_pattern()})
        }
        ("RegisterRequest" | "CreateUserRequest", "username") => username(),
        ("RegisterRequest" | "CreateUserRequest" | "UpdateUserRequest", "email") => email(),
        ("RegisterRequest" | "CreateUserRequest", "password")
        | ("ChangeMyPasswordRequest" | "ResetPasswordRequest", "new_password") => {
            json!({"$ref": format!("#/components/schemas/{NEW_PASSWORD}")})
        }
        ("CreateUserRequest", "instagram_username")
        | ("UpdateMyBackendRequest" | "BackendInput", "instagram_username") => instagram(),
        ("CreateUserRequest", "api_base_url") => url_or_blank(),
        ("UpdateMyBackendRequest" | "BackendInput", "api_base_url") => url(),
        ("CreateUserRequest", "bearer_token") => json!({"maxLength": BEARER_TOKEN_MAX, "pattern": text_pattern()}),
        ("UpdateMyBackendRequest" | "BackendInput", "bearer_token") => bearer_token(),
        ("CreateUserRequest", "role") => role(true),
        ("UpdateUserRequest", "role") => role(false),
        (_, "id" | "service_account_id") => json!({"minimum": 1}),
        ("ListUsersRequest" | "ListAuditLogsRequest", "limit") => json!({"minimum": 0, "maximum": PAGE_MAX,
            "description": format!("1 to {PAGE_MAX}; {PAGE_DEFAULT} when 0 or absent")}),
        ("ListUsersRequest" | "ListAuditLogsRequest", "offset") | ("ListAuditLogsRequest", "user_id") => {
            json!({"minimum": 0})
        }
        ("ListAuditLogsRequest", "action") => trimmed_text(AUDIT_ACTION_MAX),
        ("ListUsersRequest", "page_token") => page_token(&[Listing::Users]),
        ("ListAuditLogsRequest", "page_token") => page_token(&[Listing::Audit, Listing::AuditByTime]),
        // Envoy refuses an escaped slash or backslash in a path (400).
        ("RevokeMySessionRequest", "session_id") => {
            let (any, solid) = (format!("[^{}/\\\\]", *CONTROL), format!("[^{}/\\\\]", &SOLID[2..SOLID.len() - 1]));
            json!({"pattern": format!("^{any}*{solid}{any}*$")})
        }
        ("CreateServiceAccountRequest", "name") => {
            json!({"pattern": trimmed(&format!("[{}]{{1,{SERVICE_ACCOUNT_NAME_MAX}}}", class(validate::is_name_char)))})
        }
        ("CreateServiceAccountRequest", "description") => trimmed_text(DESCRIPTION_MAX),
        ("CreateApiKeyRequest", "name") => key_name(),
        ("CreateApiKeyRequest", "scopes") => json!({"pattern": trimmed(&format!("({})",
            Scope::ALL.iter().map(|s| regex_escape(s.as_str())).collect::<Vec<_>>().join("|")))}),
        ("CreateApiKeyRequest", "allowed_cidrs") => cidr(),
        ("RevokeApiKeyRequest" | "RotateApiKeyRequest", "key_id") => {
            json!({"pattern": format!("^[0-9a-f]{{{ID_HEX}}}$")})
        }
        ("ConfirmTotpRequest" | "ReauthenticateRequest", "code") => totp_code(),
        ("VerifyMfaRequest", "mfa_token") => {
            nonblank("The mfa_token Login answered; surrounding whitespace is ignored")
        }
        ("FinishPasskeyRegistrationRequest" | "FinishPasskeySignInRequest", "ceremony") => ceremony(),
        ("FinishPasskeyRegistrationRequest", "name") => {
            let mut rule = trimmed_text(PASSKEY_NAME_MAX);
            rule["description"] = json!(format!(
                "At most {PASSKEY_NAME_MAX} characters (surrounding whitespace is ignored); \"Passkey\" when empty"
            ));
            rule
        }
        ("RenamePasskeyRequest", "name") => {
            let (any, solid) = (&*ANY, &*SOLID);
            json!({"pattern": trimmed(&format!("{solid}({any}{{0,{}}}{solid})?", PASSKEY_NAME_MAX - 2)),
                   "description": format!("1 to {PASSKEY_NAME_MAX} characters (surrounding whitespace is ignored)")})
        }
        ("FinishPasskeyRegistrationRequest", "credential") => {
            webauthn_credential(&["attestationObject", "clientDataJSON"])
        }
        ("FinishPasskeySignInRequest", "credential") => {
            webauthn_credential(&["authenticatorData", "clientDataJSON", "signature"])
        }
        ("RotateApiKeyRequest", "grace_seconds") => {
            json!({"minimum": 0, "maximum": ROTATION_GRACE_MAX.num_seconds()})
        }
        _ => return None,
    })
}

/// The rule of a list field itself.
pub fn list(message: &str, field: &str) -> Option<Value> {
    match (message, field) {
        ("CreateApiKeyRequest", "scopes") => Some(json!({"minItems": 1})),
        ("CreateApiKeyRequest", "allowed_cidrs") => Some(json!({"maxItems": CIDRS_MAX})),
        _ => None,
    }
}

/// Rules between the fields of one message.
pub fn message_constraints(message: &str, schema: &mut Value) {
    match message {
        // The backend fields go together: api_base_url and bearer_token both, or none of the three.
        "CreateUserRequest" => {
            schema["anyOf"] = json!([
                {"properties": {"api_base_url": {"pattern": blank()}, "bearer_token": {"maxLength": 0},
                                "instagram_username": {"pattern": blank()}}},
                {"required": ["api_base_url", "bearer_token"],
                 "properties": {"api_base_url": with_type(url()), "bearer_token": with_type(bearer_token())}},
            ]);
        }
        // A TOTP code or a recovery code: exactly one of the two.
        "VerifyMfaRequest" => {
            schema["oneOf"] = json!([
                {"required": ["code"], "properties": {"code": with_type(totp_code()), "recovery_code": {"maxLength": 0}}},
                {"required": ["recovery_code"],
                 "properties": {"recovery_code": with_type(recovery_code()), "code": {"maxLength": 0}}},
            ]);
        }
        // `backend` sets it, `remove_backend` removes it: not both.
        "UpdateUserRequest" => {
            schema["not"] = json!({"required": ["backend", "remove_backend"],
                                   "properties": {"backend": {"type": "object"}, "remove_backend": {"enum": [true]}}});
        }
        _ => {}
    }
}

/// The component schema of the value of a field the request message does not have.
pub const UNKNOWN_FIELD: &str = "UnknownField";

/// The component schema of a member of a WebAuthn credential the service does not read.
pub const UNREAD_MEMBER: &str = "UnreadMember";

/// An unknown field is ignored whatever its value, except that no list in a body may hold null
/// or another list (envoy/json_face.lua), nor may an object have a member with an empty name.
/// A member of a WebAuthn credential the service does not read is the same, except that, being
/// part of a field, its strings are checked like every string of a request: no control
/// characters.
pub fn unknown_field() -> [(String, Value); 4] {
    let schemas = |name: &str, string: Value, description: &str| {
        let field = format!("#/components/schemas/{name}");
        let item = format!("#/components/schemas/{name}Item");
        let object = json!({"type": "object", "additionalProperties": {"$ref": field}});
        [
            (
                name.to_owned(),
                json!({"description": description,
                       "anyOf": [{"type": ["null", "boolean", "number"]}, string.clone(), object,
                                 {"type": "array", "items": {"$ref": item}}]}),
            ),
            (format!("{name}Item"), json!({"anyOf": [{"type": ["boolean", "number"]}, string, object]})),
        ]
    };
    let [a, b] = schemas(UNKNOWN_FIELD, json!({"type": "string"}), "A field the request does not have: ignored.");
    let [c, d] = schemas(
        UNREAD_MEMBER,
        json!({"type": "string", "pattern": text_pattern()}),
        "A member the service does not read: ignored.",
    );
    [a, b, c, d]
}

/// A string rule that does not also admit null (or any other type).
fn with_type(mut rule: Value) -> Value {
    rule["type"] = json!("string");
    rule
}

/// `schema` that may also be null (proto3 JSON reads null as the field's default).
pub fn nullable(schema: Value) -> Value {
    match schema {
        Value::Object(mut map) if map.get("type").is_some_and(Value::is_string) && !map.contains_key("$ref") => {
            let kind = map.remove("type").unwrap_or_default();
            map.insert("type".into(), json!([kind, "null"]));
            Value::Object(map)
        }
        other => json!({"anyOf": [other, {"type": "null"}]}),
    }
}

/// Adds `rule`'s keywords to `schema` (a description is appended to the field's own).
pub fn merge(schema: &mut Value, rule: Value) {
    let (Value::Object(target), Value::Object(rule)) = (schema, rule) else { return };
    for (key, value) in rule {
        target.insert(key, value);
    }
}

/// The classes used over and over (each is a walk over every code point).
static CONTROL: LazyLock<String> = LazyLock::new(|| class(char::is_control));
/// Neither a control character nor whitespace.
static SOLID: LazyLock<String> = LazyLock::new(|| format!("[^{}]", class(|c| c.is_control() || c.is_whitespace())));
static WS: LazyLock<String> = LazyLock::new(|| format!("[{}]", class(|c| c.is_whitespace() && !c.is_control())));
/// Not a control character.
static ANY: LazyLock<String> = LazyLock::new(|| format!("[^{}]", *CONTROL));

/// Any string without control characters: every string of every request.
pub fn text() -> Value {
    json!({"pattern": text_pattern()})
}

fn text_pattern() -> String {
    format!("^{}*$", *ANY)
}

/// The characters of a character class (without its brackets) holding exactly the characters
/// `admits`, as ranges.
pub fn class(admits: impl Fn(char) -> bool) -> String {
    let mut out = String::new();
    let mut run: Option<(char, char)> = None;
    let flush = |out: &mut String, (first, last): (char, char)| {
        out.push_str(&class_char(first));
        if last != first {
            if u32::from(last) > u32::from(first) + 1 {
                out.push('-');
            }
            out.push_str(&class_char(last));
        }
    };
    for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
        if admits(c) {
            run = match run {
                Some((first, last)) if u32::from(c) == u32::from(last) + 1 => Some((first, c)),
                Some(done) => {
                    flush(&mut out, done);
                    Some((c, c))
                }
                None => Some((c, c)),
            };
        }
    }
    if let Some(done) = run {
        flush(&mut out, done);
    }
    out
}

/// One character inside a class: ASCII letters, digits and harmless punctuation as they are,
/// the rest as `\uXXXX` (astral characters, beyond `\u`, as they are).
fn class_char(c: char) -> String {
    match c {
        '\\' | ']' | '[' | '^' | '-' => format!("\\{c}"),
        ' '..='~' => c.to_string(),
        _ if u32::from(c) <= 0xFFFF => format!("\\u{:04x}", u32::from(c)),
        _ => c.to_string(),
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .map(
            |c| {
                if c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-') { c.to_string() } else { format!("\\{c}") }
            },
        )
        .collect()
}

/// The whitespace the service trims: what `str::trim` removes, less control characters.
fn ws() -> String {
    WS.clone()
}

/// `core`, with any surrounding whitespace.
fn trimmed(core: &str) -> String {
    let ws = ws();
    format!("^{ws}*{core}{ws}*$")
}

fn blank() -> String {
    format!("^{}*$", ws())
}

/// A string that is not blank, without control characters.
fn nonblank(description: &str) -> Value {
    let (any, solid) = (&*ANY, &*SOLID);
    json!({"pattern": format!("^{any}*{solid}{any}*$"), "description": description})
}

/// Free text of at most `max` characters once trimmed, without control characters.
fn trimmed_text(max: usize) -> Value {
    let (any, solid) = (&*ANY, &*SOLID);
    json!({"pattern": trimmed(&format!("({solid}({any}{{0,{}}}{solid})?)?", max.saturating_sub(2))),
           "description": format!("At most {max} characters (surrounding whitespace is ignored)")})
}

fn username() -> Value {
    json!({"pattern": trimmed(&format!("[{}]{{{USERNAME_MIN},{USERNAME_MAX}}}", class(validate::is_name_char))),
           "description": format!("{USERNAME_MIN} to {USERNAME_MAX} ASCII letters, digits, '_', '.' and '-'; \
                                   unique, case-insensitively")})
}

fn email() -> Value {
    let (local, host) = (class(validate::is_email_local_char), class(validate::is_email_host_char));
    json!({"maxLength": EMAIL_MAX,
           "pattern": trimmed(&format!("[{local}]+@[{host}]+\\.[A-Za-z]{{{EMAIL_TLD_MIN},}}")),
           "description": format!("An email address, at most {EMAIL_MAX} characters; unique, case-insensitively")})
}

/// The component schema of a new password (the policy's classes are long: stated once).
pub const NEW_PASSWORD: &str = "NewPassword";

/// The password policy. bcrypt's limit is in bytes: at most 72 bytes of UTF-8, so at most 72
/// characters.
pub fn new_password() -> Value {
    let upper = class(char::is_uppercase);
    let lower = class(char::is_lowercase);
    let special = class(|c| !c.is_alphanumeric() && !c.is_whitespace() && !c.is_control());
    json!({"type": "string", "format": "password", "minLength": MIN_PASSWORD_CHARS, "maxLength": MAX_PASSWORD_BYTES,
           "allOf": [{"pattern": text_pattern()}, {"pattern": format!("[{upper}]")}, {"pattern": format!("[{lower}]")},
                     {"pattern": "[0-9]"}, {"pattern": format!("[{special}]")}],
           "description": format!("At least {MIN_PASSWORD_CHARS} characters and at most {MAX_PASSWORD_BYTES} bytes \
                                   (bcrypt's limit), with an uppercase and a lowercase letter, a digit and a \
                                   character that is neither a letter, a digit nor whitespace")})
}

fn instagram() -> Value {
    json!({"pattern": trimmed(&format!("@*[{}]{{0,{INSTAGRAM_MAX}}}", class(validate::is_instagram_char))),
           "description": format!("Up to {INSTAGRAM_MAX} of Instagram's handle characters (letters, digits, '.', \
                                   '_'); a leading '@' is dropped")})
}

fn url_pattern() -> String {
    validate::url_pattern()
}

const URL_DESCRIPTION: &str = "An absolute http:// or https:// URL: a host name (an international one in its xn-- \
                               form), an IPv4 address or a bracketed IPv6 address, an optional port, then a path, \
                               query or fragment; no credentials";

fn url() -> Value {
    json!({"maxLength": URL_MAX, "pattern": trimmed(&url_pattern()),
           "description": format!("{URL_DESCRIPTION}; at most {URL_MAX} characters")})
}

fn url_or_blank() -> Value {
    json!({"maxLength": URL_MAX, "pattern": trimmed(&format!("({})?", url_pattern())),
           "description": format!("{URL_DESCRIPTION}; at most {URL_MAX} characters. Empty: no backend")})
}

fn bearer_token() -> Value {
    let mut rule = nonblank("The backend's bearer token");
    rule["maxLength"] = json!(BEARER_TOKEN_MAX);
    rule
}

fn role(blank_is_user: bool) -> Value {
    let names = [crate::model::Role::Admin, crate::model::Role::User]
        .map(|r| r.as_str().chars().map(|c| format!("[{}{}]", c.to_ascii_uppercase(), c)).collect::<String>());
    let core = format!("({})", names.join("|"));
    let (core, description) = if blank_is_user {
        (format!("{core}?"), "\"admin\" or \"user\" (any case); \"user\" when empty")
    } else {
        (core, "\"admin\" or \"user\" (any case)")
    };
    json!({"pattern": trimmed(&core), "description": description})
}

fn key_name() -> Value {
    let (name, inner) = (class(validate::is_name_char), class(validate::is_key_name_char));
    json!({"pattern": trimmed(&format!("[{name}]([{inner}]{{0,{}}}[{name}])?", KEY_NAME_MAX - 2)),
           "description": format!("1 to {KEY_NAME_MAX} letters, digits, spaces, '_', '.' and '-'")})
}

/// An IPv4 or IPv6 network in CIDR form, or a single address.
/// The 6 digits an authenticator app shows; spaces anywhere are ignored.
fn totp_code() -> Value {
    json!({"pattern": format!("^ *(?:[0-9] *){{{CODE_DIGITS}}}$"),
           "description": format!("The {CODE_DIGITS} digits the authenticator app shows (spaces are ignored)")})
}

/// A recovery code as it was shown (`xxxx-xxxx-xxxx-xxxx`), in either case, dashes and spaces ignored.
fn recovery_code() -> Value {
    let letters: String = RECOVERY_ALPHABET.iter().map(|b| char::from(*b)).collect();
    let class = format!(
        "[{letters}{}]",
        letters.to_ascii_uppercase().chars().filter(char::is_ascii_alphabetic).collect::<String>()
    );
    json!({"pattern": format!("^[- ]*(?:{class}[- ]*){{{RECOVERY_CODE_CHARS}}}$"),
           "description": "An unused recovery code, as shown (dashes, spaces and case are ignored)"})
}

/// A ceremony token as StartPasskeyRegistration or StartPasskeySignIn answered it.
fn ceremony() -> Value {
    let max = CEREMONY_MAX - CEREMONY_PREFIX.len();
    json!({"pattern": trimmed(&format!("{CEREMONY_PREFIX}[A-Za-z0-9_-]{{1,{max}}}")),
           "description": "The `ceremony` the start answered; surrounding whitespace is ignored"})
}

/// Bytes as canonical base64url without padding (what `PublicKeyCredential.toJSON()` gives).
fn base64url() -> Value {
    let c = "[A-Za-z0-9_-]";
    json!({"type": "string", "pattern": format!("^(?:{c}{{4}})*(?:{c}[AQgw]|{c}{{2}}[AEIMQUYcgkosw048])?$")})
}

/// A PublicKeyCredential's JSON serialisation (`toJSON()`) with the `response` members given.
/// Members the service does not read are ignored; extension outputs are not read.
fn webauthn_credential(response: &[&str]) -> Value {
    let unknown = json!({"$ref": format!("#/components/schemas/{UNREAD_MEMBER}")});
    let mut members = serde_json::Map::new();
    for name in response {
        members.insert((*name).to_owned(), base64url());
    }
    if response.contains(&"signature") {
        members.insert("userHandle".into(), json!({"anyOf": [base64url(), {"type": "null"}]}));
    } else {
        members.insert(
            "transports".into(),
            json!({"anyOf": [{"type": "array", "items": {"type": "string", "pattern": text_pattern()}}, {"type": "null"}]}),
        );
    }
    json!({
        "required": ["id", "rawId", "type", "response"],
        "properties": {
            "id": {"type": "string", "pattern": text_pattern()},
            "rawId": base64url(),
            "type": {"type": "string", "pattern": text_pattern()},
            "response": {"type": "object", "required": response, "properties": members,
                         "propertyNames": {"minLength": 1}, "additionalProperties": unknown},
        },
        "propertyNames": {"minLength": 1},
        "additionalProperties": unknown,
        "description": "What navigator.credentials.create() or .get() gave, as PublicKeyCredential.toJSON() \
                        serialises it: binary members are base64url without padding",
    })
}

fn cidr() -> Value {
    let octet = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
    json!({"anyOf": [{"format": "ipv4"}, {"format": "ipv6"},
                     {"pattern": format!("^{octet}(\\.{octet}){{3}}/(3[0-2]|[12]?[0-9])$")}],
           "description": "A network such as 10.0.0.0/8 or 2001:db8::/32, or a single address"})
}

/// A listing's page token: empty, or exactly what its `next_page_token` gives. An offset other
/// than 0 beside a token is refused too (a rule between fields the document does not state).
fn page_token(listings: &[Listing]) -> Value {
    json!({"pattern": Listing::token_pattern(listings),
           "description": "Empty for the first page; then the previous page's next_page_token, as given"})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_hold_exactly_the_predicates_characters() {
        assert_eq!(class(validate::is_name_char), "\\-.0-9A-Z_a-z");
        assert_eq!(class(char::is_control), "\\u0000-\\u001f\\u007f-\\u009f");
        assert_eq!(ws(), "[ \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]");
    }
}
