//! Field rules (seed 2.2 constraints and 4.1 policy). Each failure names the request field.

use crate::error::{Error, Result};

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 50;
pub const EMAIL_MAX: usize = 100;
pub const URL_MAX: usize = 255;
pub const INSTAGRAM_MAX: usize = 50;
pub const BEARER_TOKEN_MAX: usize = 4096;
pub const EMAIL_TLD_MIN: usize = 2;
/// The audit filter `action`, in characters.
pub const AUDIT_ACTION_MAX: usize = 50;

// The characters each rule admits, shared with the OpenAPI document (`openapi::rules`), which
// states them as patterns: the two cannot drift.

/// Usernames and service account names: ASCII letters, digits, `_`, `.` and `-`.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// API key names: a name's characters and spaces.
pub fn is_key_name_char(c: char) -> bool {
    is_name_char(c) || c == ' '
}

/// Instagram handles: ASCII letters, digits, `.` and `_`.
pub fn is_instagram_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_')
}

/// The local part of an email address (the seed's `[A-Za-z0-9._%+-]`).
pub fn is_email_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-')
}

/// The domain of an email address before its last dot (the seed's `[A-Za-z0-9.-]`).
pub fn is_email_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-')
}

/// 3-50 characters of ASCII letters, digits, `_`, `.` or `-`. ASCII keeps case-insensitive
/// uniqueness identical on both databases and rules out look-alike names.
pub fn username(value: &str) -> Result<String> {
    let v = value.trim();
    let len = v.chars().count();
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&len) {
        return Err(Error::invalid("username", "must be 3 to 50 characters"));
    }
    if !v.chars().all(is_name_char) {
        return Err(Error::invalid("username", "may contain only letters, digits, '_', '.' and '-'"));
    }
    Ok(v.to_owned())
}

/// The seed's pattern `^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$`, at most 100 characters.
pub fn email(value: &str) -> Result<String> {
    let v = value.trim();
    let bad = || Error::invalid("email", "must be a valid email address");
    // Counted as sent, surrounding whitespace included: the document's maxLength.
    if value.chars().count() > EMAIL_MAX {
        return Err(Error::invalid("email", "must be at most 100 characters"));
    }
    let (local, domain) = v.split_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty() && local.chars().all(is_email_local_char);
    let (host, tld) = domain.rsplit_once('.').ok_or_else(bad)?;
    let host_ok = !host.is_empty() && host.chars().all(is_email_host_char);
    let tld_ok = tld.len() >= EMAIL_TLD_MIN && tld.chars().all(|c| c.is_ascii_alphabetic());
    if local_ok && host_ok && tld_ok { Ok(v.to_owned()) } else { Err(bad()) }
}

/// The form a backend URL is written in, as a regular expression (also the OpenAPI document's
/// pattern): `http://` or `https://` in any case; a host name (ASCII letters, digits and hyphens
/// in dot-separated labels, the last starting with a letter; an international name in its
/// `xn--` form), an IPv4 address or an IPv6 address in brackets; an optional port; then a path,
/// query or fragment of URL characters. No credentials, whitespace or backslash fit in it.
pub fn url_pattern() -> String {
    let label = "[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?";
    let last = "[A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?";
    let octet = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
    let h = "[0-9A-Fa-f]{1,4}";
    let ipv6 = format!(
        "(({h}:){{7}}{h}|({h}:){{1,7}}:|({h}:){{1,6}}:{h}|({h}:){{1,5}}(:{h}){{1,2}}|({h}:){{1,4}}(:{h}){{1,3}}|\
         ({h}:){{1,3}}(:{h}){{1,4}}|({h}:){{1,2}}(:{h}){{1,5}}|{h}:(:{h}){{1,6}}|:((:{h}){{1,7}}|:))"
    );
    let host = format!("(({label}\\.)*{last}|{octet}(\\.{octet}){{3}}|\\[{ipv6}\\])");
    let port = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})";
    let rest = "[A-Za-z0-9._~!$&'()*+,;=:@%/?#-]";
    format!("[Hh][Tt][Tt][Pp][Ss]?://{host}(:{port})?([/?#]{rest}*)?")
}

static URL_FORM: std::sync::LazyLock<Option<regex::Regex>> =
    std::sync::LazyLock::new(|| regex::Regex::new(&format!("^{}$", url_pattern())).ok());

/// An absolute http(s) URL with a host, no embedded credentials, at most 255 characters, written
/// as the URL it is: it must itself begin with `http://` or `https://` (the URL parser would
/// read `http:x` or `http:\\x` as `http://x/`, which the database's CHECK refuses) and hold no
/// whitespace, control character or backslash (the parser drops or rewrites those silently).
pub fn api_base_url(value: &str) -> Result<String> {
    let field = "api_base_url";
    let v = value.trim();
    if v.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    // Counted as sent, in characters (the column's unit), like the document's maxLength.
    if value.chars().count() > URL_MAX {
        return Err(Error::invalid(field, "must be at most 255 characters"));
    }
    let lower = v.get(..8).unwrap_or(v).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(Error::invalid(field, "must be an absolute http:// or https:// URL"));
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control() || c == '\\') {
        return Err(Error::invalid(field, "must not contain whitespace, control characters or backslashes"));
    }
    let url = url::Url::parse(v).map_err(|_| Error::invalid(field, "must be an absolute http:// or https:// URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid(field, "must be an absolute http:// or https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid(field, "must not contain credentials; use bearer_token"));
    }
    if !URL_FORM.as_ref().is_some_and(|form| form.is_match(v)) {
        return Err(Error::invalid(
            field,
            "must be an http(s) URL whose host is a name (international ones in their xn-- form), an IPv4 \
             address or a bracketed IPv6 address, followed by a path of URL characters",
        ));
    }
    // Keep what the user wrote (the seed's UI appends paths to it); only whitespace is trimmed.
    Ok(v.to_owned())
}

pub fn bearer_token(value: &str) -> Result<()> {
    let field = "bearer_token";
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if value.chars().count() > BEARER_TOKEN_MAX {
        return Err(Error::invalid(field, "must be at most 4096 characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Empty, or up to 50 of Instagram's handle characters (letters, digits, `.`, `_`).
pub fn instagram_username(value: &str) -> Result<String> {
    let v = value.trim().trim_start_matches('@');
    if v.chars().count() > INSTAGRAM_MAX {
        return Err(Error::invalid("instagram_username", "must be at most 50 characters"));
    }
    if !v.chars().all(is_instagram_char) {
        return Err(Error::invalid("instagram_username", "may contain only letters, digits, '.' and '_'"));
    }
    Ok(v.to_owned())
}

pub const SERVICE_ACCOUNT_NAME_MAX: usize = 64;
pub const DESCRIPTION_MAX: usize = 256;
pub const KEY_NAME_MAX: usize = 64;
pub const CIDRS_MAX: usize = 32;

/// A service account's name: 1-64 ASCII letters, digits, `_`, `.` or `-` (unique,
/// case-insensitively).
pub fn service_account_name(value: &str) -> Result<String> {
    let v = value.trim();
    if v.is_empty() || v.len() > SERVICE_ACCOUNT_NAME_MAX {
        return Err(Error::invalid("name", "must be 1 to 64 characters"));
    }
    if !v.chars().all(is_name_char) {
        return Err(Error::invalid("name", "may contain only letters, digits, '_', '.' and '-'"));
    }
    Ok(v.to_owned())
}

/// Free text of at most 256 characters, without control characters.
pub fn description(value: &str) -> Result<String> {
    let v = value.trim();
    if v.chars().count() > DESCRIPTION_MAX {
        return Err(Error::invalid("description", "must be at most 256 characters"));
    }
    if v.chars().any(char::is_control) {
        return Err(Error::invalid("description", "must not contain control characters"));
    }
    Ok(v.to_owned())
}

/// An API key's name: 1-64 ASCII letters, digits, spaces, `_`, `.` or `-`.
pub fn key_name(value: &str) -> Result<String> {
    let v = value.trim();
    if v.is_empty() || v.len() > KEY_NAME_MAX {
        return Err(Error::invalid("name", "must be 1 to 64 characters"));
    }
    if !v.chars().all(is_key_name_char) {
        return Err(Error::invalid("name", "may contain only letters, digits, spaces, '_', '.' and '-'"));
    }
    Ok(v.to_owned())
}

/// One or more scopes from the closed list, each once, in a stable order.
pub fn scopes(values: &[String]) -> Result<Vec<crate::model::Scope>> {
    use crate::model::Scope;
    let mut scopes = Vec::new();
    for value in values {
        let scope = Scope::from_name(value.trim()).ok_or_else(|| {
            Error::invalid(
                "scopes",
                "each must be one of \"introspect\", \"users:read\", \"users:write\", \"audit:read\"",
            )
        })?;
        scopes.push(scope);
    }
    scopes.sort_unstable();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(Error::invalid("scopes", "must name at least one scope"));
    }
    Ok(scopes)
}

/// At most 32 networks in CIDR form, or single addresses (a /32 or /128), host bits cleared.
pub fn cidrs(values: &[String]) -> Result<Vec<ipnet::IpNet>> {
    if values.len() > CIDRS_MAX {
        return Err(Error::invalid("allowed_cidrs", "must hold at most 32 networks"));
    }
    let mut nets = Vec::with_capacity(values.len());
    for value in values {
        let v = value.trim();
        let net = v
            .parse::<ipnet::IpNet>()
            .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| Error::invalid("allowed_cidrs", "each must be a CIDR such as 10.0.0.0/8 or an address"))?;
        nets.push(net.trunc());
    }
    nets.sort_unstable();
    nets.dedup();
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(username("alice").is_ok());
        assert!(username("al").is_err());
        assert!(username(&"a".repeat(51)).is_err());
        assert!(username("bad name").is_err());
        assert!(username("ålice").is_err());
    }

    #[test]
    fn emails() {
        for good in ["alice@example.com", "a.b+c@sub.example.org"] {
            assert!(email(good).is_ok(), "{good}");
        }
        for bad in ["", "alice", "alice@", "@example.com", "alice@example", "alice@example.c", "a b@x.com"] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        assert!(api_base_url("http://localhost:4291/api/v1").is_ok());
        assert!(api_base_url("https://backend.example.com").is_ok());
        assert!(api_base_url("HTTPS://Backend.example.com/api?x=1").is_ok());
        for good in ["http://127.0.0.1:4291", "http://[::1]:8080/x", "https://xn--m-0ga.example/#a", "http://a:0"] {
            assert!(api_base_url(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ftp://x.com",
            "localhost:4291",
            "http://",
            "http://user:pw@x.com",
            "javascript:alert(1)",
            // Accepted by the URL parser, refused by the database's CHECK (issue 11, point 4).
            "http:x",
            "http:/x",
            "https:x.example",
            "http:\\\\x.example",
            "http://x.example/\r\nSet-Cookie: a=b",
            "http://x.example/a b",
            "http://x.example/\0",
            // Hosts the URL parser takes but nobody means (issue 17: found by schemathesis).
            "HTTP://s*",
            "http://mí.example",
            "http://a.09",
        ] {
            assert!(api_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instagram() {
        assert_eq!(instagram_username("@alice_ig").unwrap(), "alice_ig");
        assert!(instagram_username("").is_ok());
        assert!(instagram_username("bad name").is_err());
    }
}
