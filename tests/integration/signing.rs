//! Asymmetric signing (issue 15): EdDSA tokens with the key's thumbprint as `kid`, rotation
//! with previous public keys, mixed mode with HS256, no algorithm confusion, and the public
//! keys published as a JWKS that a third-party library (PyJWT) verifies through Envoy.

use base64::Engine;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use instachatico_auth::crypto::jwt::Ed25519SigningKey;
use instachatico_auth::pb;
use instachatico_auth::pb::keys_service_client::KeysServiceClient;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::ExposeSecret;
use serde_json::Value;
use tonic::Code;

use crate::common::{Envoy, Json, TestServer, USER_PASSWORD, authed, expect_code, skipped};

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// A fresh Ed25519 key: (PKCS#8 PEM for JWT_SIGNING_KEY, SPKI PEM of its public key, kid).
fn new_key() -> (String, String, String) {
    let key = Ed25519SigningKey::generate();
    let private = key.to_pem().unwrap().expose_secret().to_owned();
    let public = key.public();
    (private, public.to_pem().unwrap(), public.kid)
}

fn part(token: &str, i: usize) -> Value {
    serde_json::from_slice(&b64().decode(token.split('.').nth(i).unwrap()).unwrap()).unwrap()
}

async fn me(s: &TestServer, token: &str) -> Result<pb::User, tonic::Status> {
    s.users().await.get_me(authed(token, pb::GetMeRequest {})).await.map(tonic::Response::into_inner)
}

async fn jwks(s: &TestServer) -> pb::GetJwksResponse {
    KeysServiceClient::new(s.channel().await).get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner()
}

/// Signs `claims` with another Ed25519 key under `kid`.
fn sign_with_other_key(claims: &Value, kid: &str) -> String {
    let other = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let der = other.to_pkcs8_der().unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
}

/// HS256 tokens whose HMAC key is the public key in each form a confused verifier might use.
fn alg_confusion_tokens(claims: &Value, kid: &str, public_pem: &str) -> Vec<String> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let public = ed25519_dalek::VerifyingKey::from_public_key_pem(public_pem).unwrap();
    let raw = public.to_bytes().to_vec();
    let der = public.to_public_key_der().unwrap().as_bytes().to_vec();
    let x = b64().encode(raw.as_slice()).into_bytes();
    [raw, der, x, public_pem.as_bytes().to_vec()]
        .iter()
        .map(|secret| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.to_owned());
            jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
        })
        .collect()
}

async fn eddsa_tokens_mixed_mode_and_no_alg_confusion(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "edwin", None).await;
    let hs256 = s.login("edwin", USER_PASSWORD).await;
    assert_eq!(part(&hs256, 0)["alg"], "HS256");
    assert!(jwks(&s).await.keys.is_empty(), "HS256 secrets are never published");

    // EdDSA on, the HS256 secret kept: mixed mode.
    let (private, public, kid) = new_key();
    let s = s.restart(&[("jwt-algorithm", "EdDSA"), ("jwt-signing-key", &private)]).await;
    let token = s.login("edwin", USER_PASSWORD).await;
    let header = part(&token, 0);
    assert_eq!((header["alg"].as_str(), header["kid"].as_str()), (Some("EdDSA"), Some(kid.as_str())), "{header}");
    assert_eq!(me(&s, &token).await.unwrap().username, "edwin");
    assert_eq!(me(&s, &hs256).await.unwrap().username, "edwin", "HS256 still verifies in mixed mode");

    let published = jwks(&s).await.keys;
    assert_eq!(published.len(), 1);
    let jwk = &published[0];
    assert_eq!(
        (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str(), jwk.r#use.as_str(), jwk.kid.as_str()),
        ("OKP", "Ed25519", "EdDSA", "sig", kid.as_str())
    );

    let claims = part(&token, 1);
    expect_code(me(&s, &sign_with_other_key(&claims, &kid)).await, Code::Unauthenticated);
    for confused in alg_confusion_tokens(&claims, &kid, &public) {
        expect_code(me(&s, &confused).await, Code::Unauthenticated);
    }

    // The HS256 secret removed: HS256 tokens stop verifying, EdDSA ones do not.
    let s = s.restart(&[("jwt-secret-key", "")]).await;
    expect_code(me(&s, &hs256).await, Code::Unauthenticated);
    assert_eq!(me(&s, &token).await.unwrap().username, "edwin");
    s.stop().await;
}

async fn rotation_keeps_previous_public_keys(s: TestServer) {
    let (old_private, old_public, old_kid) = new_key();
    let s = s.restart(&[("jwt-algorithm", "EdDSA"), ("jwt-signing-key", &old_private)]).await;
    let admin = s.admin_token().await;
    s.create_user(&admin, "rot", None).await;
    let old = s.login("rot", USER_PASSWORD).await;

    let (new_private, _, new_kid) = new_key();
    let s = s.restart(&[("jwt-signing-key", &new_private), ("jwt-previous-public-keys", &old_public)]).await;
    assert_eq!(me(&s, &old).await.unwrap().username, "rot", "the old key still verifies");
    let fresh = s.login("rot", USER_PASSWORD).await;
    assert_eq!(part(&fresh, 0)["kid"], new_kid.as_str());
    let kids: Vec<String> = jwks(&s).await.keys.into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, [new_kid.clone(), old_kid], "current key first, then the previous one");

    let s = s.restart(&[("jwt-previous-public-keys", "")]).await;
    expect_code(me(&s, &old).await, Code::Unauthenticated);
    assert_eq!(me(&s, &fresh).await.unwrap().username, "rot");
    let kids: Vec<String> = jwks(&s).await.keys.into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, [new_kid]);
    s.stop().await;
}

crate::on_both_backends!(eddsa_tokens_mixed_mode_and_no_alg_confusion, rotation_keeps_previous_public_keys);

/// The project's Python (`.venv`, where ./scripts/test installs PyJWT[crypto]).
fn python_with_pyjwt() -> Option<std::path::PathBuf> {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import jwt, cryptography; jwt.PyJWKClient"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(python)
    } else {
        skipped("no PyJWT[crypto] in .venv (./scripts/test installs it): the third-party JWKS check did not run");
        None
    }
}

/// PyJWT's PyJWKClient fetches Envoy's JWKS and verifies the token: prints "valid <sub>", or
/// "refused <error>" and exits 1.
const PYJWT_CHECK: &str = r#"
import sys, jwt
url, token = sys.argv[1], sys.argv[2]
try:
    key = jwt.PyJWKClient(url, cache_keys=False, cache_jwk_set=False).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key, algorithms=["EdDSA"], issuer="instachatico-auth")
    print("valid", claims["sub"])
except jwt.PyJWTError as e:
    print("refused", type(e).__name__, e)
    sys.exit(1)
"#;

fn pyjwt_verifies(python: &std::path::Path, url: &str, token: &str) -> (bool, String) {
    let out = std::process::Command::new(python).args(["-c", PYJWT_CHECK, url, token]).output().expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Issue 15's "done means": a third-party client verifies our EdDSA token from the JWKS that
/// Envoy serves, and refuses it once the key is gone from the JWKS. Also the route's caching
/// headers and the discovery document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_verifies_through_envoys_jwks() {
    let Some(python) = python_with_pyjwt() else { return };
    let (private, _, kid) = new_key();
    let options = crate::common::Options::default().arg("jwt-algorithm", "EdDSA").arg("jwt-signing-key", &private);
    let Some(s) = TestServer::start_with(crate::common::Backend::Sqlite, options).await else { return };
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let api = Json::new(&envoy.url);
    let token = api.login(crate::common::ADMIN_USERNAME, crate::common::ADMIN_PASSWORD).await;

    let reply = api.get("/.well-known/jwks.json", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("cache-control"), Some("public, max-age=300"), "{reply:?}");
    assert!(reply.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{reply:?}");
    assert!(reply.header("grpc-status").is_none(), "{reply:?}");
    let keys = reply.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{}", reply.body);
    let jwk = keys[0].as_object().unwrap();
    let mut names: Vec<&str> = jwk.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["alg", "crv", "kid", "kty", "use", "x"]);
    assert_eq!(jwk["kid"], kid.as_str());

    let discovery = api.get("/.well-known/openid-configuration", None).await;
    assert_eq!(discovery.status, 200, "{discovery:?}");
    assert_eq!(discovery.header("cache-control"), Some("public, max-age=300"));
    assert_eq!(
        discovery.body,
        serde_json::json!({
            "issuer": "instachatico-auth",
            "jwks_uri": "/.well-known/jwks.json",
            "id_token_signing_alg_values_supported": ["EdDSA"],
        })
    );
    // Other responses keep no-store.
    let me = api.get("/api/v1/users/me", Some(&token)).await;
    assert_eq!(me.header("cache-control"), Some("no-store"));

    let url = format!("{}/.well-known/jwks.json", envoy.url);
    let (ok, text) = pyjwt_verifies(&python, &url, &token);
    assert!(ok && text.starts_with("valid "), "PyJWT: {text}");
    drop(envoy);

    // A new key and no previous keys: the old key leaves the JWKS, and PyJWT refuses.
    let (new_private, _, _) = new_key();
    let s = s.restart(&[("jwt-signing-key", &new_private)]).await;
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let url = format!("{}/.well-known/jwks.json", envoy.url);
    let (ok, text) = pyjwt_verifies(&python, &url, &token);
    assert!(!ok && text.starts_with("refused "), "PyJWT: {text}");
    drop(envoy);
    s.stop().await;
}
