//! Database locations as `Debug` and logs may show them: scheme, host and database stay, a
//! password (in the URL's user part or a `password=` parameter) becomes `***`.

use std::fmt;

use super::DbTarget;

const HIDDEN: &str = "***";

/// `url` without its password. Strings that are not URLs pass unchanged unless they might hold
/// a password, which then hides everything after the scheme.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return match url.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') || rest.to_ascii_lowercase().contains("password") => {
                format!("{scheme}://{HIDDEN}")
            }
            _ => url.to_owned(),
        };
    };
    let secret_param = |key: &str| key.eq_ignore_ascii_case("password");
    let has_secret = parsed.password().is_some() || parsed.query_pairs().any(|(k, _)| secret_param(&k));
    if !has_secret {
        return url.to_owned();
    }
    if parsed.password().is_some() && parsed.set_password(Some(HIDDEN)).is_err() {
        return format!("{}://{HIDDEN}", parsed.scheme());
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if secret_param(&k) { HIDDEN.to_owned() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    if !pairs.is_empty() {
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

impl fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&redact_url(url)).finish(),
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_the_rest_is_kept() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db.example:5433/auth?sslmode=require"),
            "postgres://app:***@db.example:5433/auth?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://app@db.example/auth?password=hunter2&sslmode=require"),
            "postgresql://app@db.example/auth?password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://app@db.example/auth"), "postgres://app@db.example/auth");
        assert_eq!(redact_url("sqlite:///./data/auth.db"), "sqlite:///./data/auth.db");
        assert_eq!(redact_url("data/auth.db"), "data/auth.db");
        assert_eq!(redact_url("postgres://app:hunter2@[bad/auth"), "postgres://***");
    }
}
