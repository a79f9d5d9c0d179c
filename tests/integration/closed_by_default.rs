//! Every RPC needs a live session unless it is listed here as public: the test walks every
//! method of the descriptor set, so a new RPC that forgets authentication fails it.

use crate::common::TestServer;
use crate::generated_input::call;

/// The methods anyone may call.
const PUBLIC: [&str; 8] = [
    "instachatico.auth.v1.AuthService/Login",
    // Its credential is the mfa_token in the body, checked by the domain.
    "instachatico.auth.v1.AuthService/VerifyMfa",
    // Passwordless passkey sign-in (or a second step, with the mfa_token in the body).
    "instachatico.auth.v1.AuthService/StartPasskeySignIn",
    "instachatico.auth.v1.AuthService/FinishPasskeySignIn",
    "instachatico.auth.v1.AuthService/Register",
    "instachatico.auth.v1.HealthService/Check",
    "instachatico.auth.v1.KeysService/GetJwks",
    "instachatico.auth.v1.KeysService/GetOpenIdConfiguration",
];

/// Every method of our package in the descriptor set, as `package.Service/Method`.
fn our_methods() -> Vec<String> {
    let pool = instachatico_auth::openapi::pool().unwrap();
    pool.services()
        .filter(|s| s.package_name() == "instachatico.auth.v1")
        .flat_map(|service| {
            service.methods().map(|m| format!("{}/{}", service.full_name(), m.name())).collect::<Vec<_>>()
        })
        .collect()
}

async fn every_method_but_the_public_ones_needs_a_session(s: TestServer) {
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let mut checked = 0;
    for name in our_methods() {
        if PUBLIC.contains(&name.as_str()) {
            continue;
        }
        // No token, a malformed one, and a well-formed token of no live session.
        let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        for token in [None, Some("not-a-jwt"), Some(forged)] {
            let (code, message) = call(&client, &s.url, &name, token, &[]).await;
            assert_eq!(code, 16, "{name} with {token:?} answered {code} {message:?}: not UNAUTHENTICATED");
        }
        checked += 1;
    }
    assert!(checked >= 15, "every protected method was tried ({checked})");
    s.stop().await;
}

/// The access table decides for every method: a signed-in user without the admin role gets
/// PERMISSION_DENIED from every admin RPC (before any handler runs), and is let through to the
/// others.
async fn admin_rpcs_refuse_users_in_one_place(s: TestServer) {
    use instachatico_auth::grpc::access::{Access, access};
    let admin = s.admin_token().await;
    s.create_user(&admin, "plain", None).await;
    let user = s.login("plain", crate::common::USER_PASSWORD).await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let mut admins = 0;
    for name in our_methods() {
        // Logout would end the session the loop uses.
        if name.ends_with("AuthService/Logout") {
            continue;
        }
        let (code, message) = call(&client, &s.url, &name, Some(&user), &[]).await;
        match access(&format!("/{name}")) {
            Access::Admin => {
                admins += 1;
                assert_eq!((code, message.as_str()), (7, "Admin privileges required"), "{name}");
            }
            Access::Service => assert_eq!(code, 7, "{name}: a service's call, refused to a user: {message}"),
            _ => assert!(!matches!(code, 7 | 16), "{name} refused a signed-in user: {code} {message:?}"),
        }
    }
    assert!(admins >= 9, "{admins} admin RPCs");
    s.stop().await;
}

crate::on_both_backends!(every_method_but_the_public_ones_needs_a_session, admin_rpcs_refuse_users_in_one_place);
