//! Forged and broken tokens are UNAUTHENTICATED, never anything else.

use base64::Engine;
use chrono::{Duration, Utc};
use instachatico_auth::pb;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::Code;

use crate::common::{JWT_SECRET, TestServer, USER_PASSWORD, authed, expect_code};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn forged_tokens_are_rejected(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "sam", None).await;
    let good = s.login("sam", USER_PASSWORD).await;
    let parts: Vec<&str> = good.split('.').collect();
    let header: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();

    let sign = |claims: &serde_json::Value, secret: &str, alg: Algorithm| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let with = |key: &str, value: serde_json::Value| {
        let mut c = claims.clone();
        c[key] = value;
        c
    };
    let now = Utc::now();
    let mut admin_claims = with("sub", "1".into());
    admin_claims["role"] = "admin".into();

    let forged = [
        ("alg none", format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1])),
        (
            "alg none, kid",
            format!("{}.{}.", b64(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#).as_bytes()), parts[1]),
        ),
        ("wrong key", sign(&claims, "some-other-secret-that-is-long-enough-000", Algorithm::HS256)),
        ("HS512", sign(&claims, JWT_SECRET, Algorithm::HS512)),
        ("wrong issuer", sign(&with("iss", "someone-else".into()), JWT_SECRET, Algorithm::HS256)),
        ("no issuer", {
            let mut c = claims.clone();
            c.as_object_mut().unwrap().remove("iss");
            sign(&c, JWT_SECRET, Algorithm::HS256)
        }),
        ("expired", sign(&with("exp", (now - Duration::minutes(1)).timestamp().into()), JWT_SECRET, Algorithm::HS256)),
        (
            "issued in the future",
            sign(&with("iat", (now + Duration::hours(1)).timestamp().into()), JWT_SECRET, Algorithm::HS256),
        ),
        ("tampered payload", format!("{}.{}.{}", parts[0], b64(admin_claims.to_string().as_bytes()), parts[2])),
        (
            "unknown session",
            sign(&with("sid", "00000000-0000-0000-0000-000000000000".into()), JWT_SECRET, Algorithm::HS256),
        ),
        ("other user's session", sign(&with("sub", "1".into()), JWT_SECRET, Algorithm::HS256)),
        ("garbage", "not.a.jwt".to_owned()),
        ("empty", String::new()),
    ];
    let mut users = s.users().await;
    for (what, token) in &forged {
        let result = users.get_me(authed(token, pb::GetMeRequest {})).await;
        let msg = expect_code(result, Code::Unauthenticated);
        assert!(!msg.contains(JWT_SECRET), "{what}");
    }
    // A token signed with the right key but naming another session is still bound to it.
    let mut auth = s.auth().await;
    for (what, token) in &forged[..9] {
        let result = auth.refresh(authed(token, pb::RefreshRequest {})).await;
        assert_eq!(result.map(|_| ()).unwrap_err().code(), Code::Unauthenticated, "refresh with {what}");
    }
    // Other authorization schemes and malformed headers.
    for header in ["Basic YWRtaW46cGFzcw==", "Bearer", "bearer  ", good.as_str()] {
        let mut request = tonic::Request::new(pb::GetMeRequest {});
        request.metadata_mut().insert("authorization", header.parse().unwrap());
        expect_code(users.get_me(request).await, Code::Unauthenticated);
    }
    users.get_me(authed(&good, pb::GetMeRequest {})).await.unwrap();
    s.stop().await;
}

crate::on_both_backends!(forged_tokens_are_rejected);
