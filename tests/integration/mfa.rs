//! The second factor (issue 14, TOTP slice) on the real server, both databases: enrolment and
//! the two-step sign-in over gRPC and as JSON through Envoy, single use of codes under races,
//! the mfa_token's limits (five wrong codes, expiry, address, not a token anywhere else),
//! throttling, removal and new recovery codes, the admin and CLI reset, key rotation.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use instachatico_auth::domain::mfa::SecondFactor;
use instachatico_auth::domain::types::{ClientInfo, SignIn};
use instachatico_auth::pb::auth_service_client::AuthServiceClient;
use instachatico_auth::pb::mfa_service_client::MfaServiceClient;
use instachatico_auth::pb::{self};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use totp_rs::{Algorithm, Secret, TOTP};

use crate::common::{
    ADMIN_PASSWORD, ADMIN_USERNAME, Backend, Envoy, JWT_SECRET, Json, TestServer, USER_PASSWORD, authed, expect_code,
};

/// The code of `secret` (base32) for the 30-second step holding `at`.
fn code_at(secret: &str, at: DateTime<Utc>) -> String {
    let raw = Secret::Encoded(secret.to_owned()).to_bytes().unwrap();
    TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, raw, None, String::new())
        .generate(u64::try_from(at.timestamp()).unwrap())
}

/// An authenticator that hands out each step's code once, oldest acceptable first (the
/// server accepts the previous, current and next step, each once).
struct Authenticator {
    secret: String,
    last_step: i64,
}

impl Authenticator {
    fn code(&mut self) -> String {
        let now = Utc::now().timestamp() / 30;
        let step = (now - 1).max(self.last_step + 1);
        assert!(step <= now + 1, "test used more than three codes within one step");
        self.last_step = step;
        code_at(&self.secret, DateTime::from_timestamp(step * 30, 0).unwrap())
    }
}

async fn mfa_client(s: &TestServer) -> MfaServiceClient<Channel> {
    MfaServiceClient::new(s.channel().await)
}

/// Enrols the holder of `token`; returns their authenticator and recovery codes.
async fn enrol(s: &TestServer, token: &str) -> (Authenticator, Vec<String>) {
    let mut mfa = mfa_client(s).await;
    let started = mfa.start_totp(authed(token, pb::StartTotpRequest {})).await.unwrap().into_inner();
    let mut app = Authenticator { secret: started.secret, last_step: 0 };
    let confirm = pb::ConfirmTotpRequest { code: app.code() };
    let codes = mfa.confirm_totp(authed(token, confirm)).await.unwrap().into_inner().recovery_codes;
    (app, codes)
}

/// A user with a confirmed factor: (id, authenticator, recovery codes).
async fn enrolled_user(s: &TestServer, admin: &str, name: &str) -> (i32, Authenticator, Vec<String>) {
    let user = s.create_user(admin, name, Some(("http://localhost:4300/api/v1", "backend-secret-token"))).await;
    let token = s.login(name, USER_PASSWORD).await;
    let (app, codes) = enrol(s, &token).await;
    (user.id, app, codes)
}

/// Login's first step for a user with a factor: the mfa_token.
async fn mfa_token(s: &TestServer, name: &str) -> String {
    let reply = s.login_reply(name, USER_PASSWORD).await.unwrap();
    assert_eq!(reply.mfa_required, Some(true), "{reply:?}");
    reply.mfa_token.unwrap()
}

fn with_code(mfa_token: &str, code: &str) -> pb::VerifyMfaRequest {
    pb::VerifyMfaRequest { mfa_token: mfa_token.into(), code: code.into(), recovery_code: String::new() }
}

fn with_recovery(mfa_token: &str, code: &str) -> pb::VerifyMfaRequest {
    pb::VerifyMfaRequest { mfa_token: mfa_token.into(), code: String::new(), recovery_code: code.into() }
}

async fn audit_count(s: &TestServer, admin: &str, user_id: i32, action: &str) -> i32 {
    let mut audit = pb::audit_service_client::AuditServiceClient::new(s.channel().await);
    let filter = pb::ListAuditLogsRequest { user_id, action: action.into(), include_total: true, ..Default::default() };
    audit.list_audit_logs(authed(admin, filter)).await.unwrap().into_inner().total.expect("counted")
}

async fn totp_enrol_and_sign_in_over_grpc(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "tess", Some(("http://localhost:4300/api/v1", "tess-backend-token"))).await;
    let token = s.login("tess", USER_PASSWORD).await;
    let mut mfa = mfa_client(&s).await;
    let none = mfa.list_mfa_factors(authed(&token, pb::ListMfaFactorsRequest {})).await.unwrap().into_inner();
    assert!(none.factors.is_empty() && none.recovery_codes_remaining == 0);

    // Enrolment: a secret, its otpauth URI and a QR code.
    let first = mfa.start_totp(authed(&token, pb::StartTotpRequest {})).await.unwrap().into_inner();
    assert_eq!(first.secret.len(), 32, "160 bits in base32");
    assert!(first.otpauth_uri.starts_with("otpauth://totp/Instachatico:tess?secret="), "{}", first.otpauth_uri);
    assert!(first.otpauth_uri.contains("issuer=Instachatico"));
    assert!(first.qr_svg.contains("<svg") && first.qr_svg.contains("</svg>"));
    // Pending: nothing changes for the login.
    assert!(s.login_reply("tess", USER_PASSWORD).await.unwrap().access_token.is_some());
    // Starting again replaces the pending secret: the first one's codes no longer confirm.
    let second = mfa.start_totp(authed(&token, pb::StartTotpRequest {})).await.unwrap().into_inner();
    assert_ne!(second.secret, first.secret);
    let stale = pb::ConfirmTotpRequest { code: code_at(&first.secret, Utc::now()) };
    expect_code(mfa.confirm_totp(authed(&token, stale)).await, Code::PermissionDenied);
    let mut app = Authenticator { secret: second.secret.clone(), last_step: 0 };
    let codes = mfa
        .confirm_totp(authed(&token, pb::ConfirmTotpRequest { code: app.code() }))
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    assert_eq!(codes.len(), 10);
    assert_eq!(codes.iter().collect::<HashSet<_>>().len(), 10);
    // Confirmed: starting again is refused until the factor is removed.
    expect_code(mfa.start_totp(authed(&token, pb::StartTotpRequest {})).await, Code::FailedPrecondition);
    let listed = mfa.list_mfa_factors(authed(&token, pb::ListMfaFactorsRequest {})).await.unwrap().into_inner();
    assert_eq!(listed.factors.len(), 1);
    assert_eq!(listed.factors[0].method, "totp");
    assert!(listed.factors[0].confirmed_at.is_some());
    assert_eq!(listed.recovery_codes_remaining, 10);

    // Sign-in: the password alone earns an mfa_token, nothing else.
    let mut users = s.users().await;
    let sessions_before =
        users.list_my_sessions(authed(&token, pb::ListMySessionsRequest {})).await.unwrap().into_inner().sessions.len();
    let step = s.login_reply("tess", USER_PASSWORD).await.unwrap();
    assert_eq!(step.mfa_required, Some(true));
    assert!(step.access_token.is_none() && step.token_type.is_none() && step.expires_in.is_none());
    assert!(step.user.is_none() && step.backend_config.is_none());
    let methods: Vec<String> = step
        .methods
        .unwrap()
        .values
        .into_iter()
        .map(|v| match v.kind {
            Some(prost_types::value::Kind::StringValue(m)) => m,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(methods, ["totp", "recovery_code"]);
    let sessions_after =
        users.list_my_sessions(authed(&token, pb::ListMySessionsRequest {})).await.unwrap().into_inner().sessions.len();
    assert_eq!(sessions_before, sessions_after, "no session before the second step");

    let code = app.code();
    let mut auth = s.auth().await;
    let done = auth.verify_mfa(with_code(step.mfa_token.as_ref().unwrap(), &code)).await.unwrap().into_inner();
    assert_eq!(done.token_type.as_deref(), Some("bearer"));
    assert_eq!(done.expires_in, Some(3600));
    assert_eq!(done.user.unwrap().username, "tess");
    assert_eq!(done.backend_config.unwrap().bearer_token, "tess-backend-token");
    assert!(done.mfa_required.is_none() && done.mfa_token.is_none() && done.methods.is_none());
    users.get_me(authed(&done.access_token.unwrap(), pb::GetMeRequest {})).await.unwrap();
    // The mfa_token was single-use.
    let again = auth.verify_mfa(with_code(step.mfa_token.as_ref().unwrap(), &app.code())).await;
    expect_code(again, Code::Unauthenticated);
    // The same code again, on a fresh mfa_token: a replay, refused.
    let fresh = mfa_token(&s, "tess").await;
    expect_code(auth.verify_mfa(with_code(&fresh, &code)).await, Code::Unauthenticated);
    // A recovery code works once.
    auth.verify_mfa(with_recovery(&fresh, &codes[0].to_uppercase())).await.unwrap();
    let fresh = mfa_token(&s, "tess").await;
    expect_code(auth.verify_mfa(with_recovery(&fresh, &codes[0])).await, Code::Unauthenticated);
    let left = mfa.list_mfa_factors(authed(&token, pb::ListMfaFactorsRequest {})).await.unwrap().into_inner();
    assert_eq!(left.recovery_codes_remaining, 9);

    // Audited, with no secret, code or token in any row.
    let mut audit = pb::audit_service_client::AuditServiceClient::new(s.channel().await);
    let all = audit
        .list_audit_logs(authed(&admin, pb::ListAuditLogsRequest { limit: 200, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<&str> = all.entries.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "mfa_totp_started",
        "mfa_totp_confirmed",
        "mfa_required",
        "mfa_success",
        "mfa_failure",
        "mfa_recovery_code_used",
    ] {
        assert!(actions.contains(&action), "{action} missing from {actions:?}");
    }
    let text = format!("{:?}", all.entries);
    // Nor in the server's logs (debug level, this process's servers).
    let logs = std::fs::read_to_string(crate::common::LOG_FILE).unwrap_or_default();
    for secret in [&first.secret, &second.secret, &code, &codes[0], step.mfa_token.as_ref().unwrap(), &fresh] {
        assert!(!text.contains(secret.as_str()), "a secret in the audit log");
        // (A 6-digit code may occur in any log line by chance: the long ones only.)
        assert!(secret.len() < 10 || !logs.contains(secret.as_str()), "a secret in the logs");
    }
    s.stop().await;
}

async fn totp_sign_in_through_envoy_as_json(s: TestServer) {
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let api = Json::new(&envoy.url);
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let created = api
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": "jade", "email": "jade@example.com", "password": USER_PASSWORD,
                   "instagram_username": "jade_ig", "api_base_url": "http://localhost:4301/api/v1", "bearer_token": "jade-token"}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let token = api.login("jade", USER_PASSWORD).await;
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };

    let listed = api.get("/api/v1/users/me/mfa", Some(&token)).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.body, json!({"factors": [], "recovery_codes_remaining": 0}));
    let started = api.post("/api/v1/users/me/mfa/totp", Some(&token), json!({})).await;
    assert_eq!(started.status, 200, "{started:?}");
    assert_eq!(keys(&started.body), ["otpauth_uri", "qr_svg", "secret"]);
    let mut app = Authenticator { secret: started.body["secret"].as_str().unwrap().to_owned(), last_step: 0 };
    let wrong = api.post("/api/v1/users/me/mfa/totp/confirm", Some(&token), json!({"code": "12345"})).await;
    assert!(wrong.detail(400).contains("code"), "{wrong:?}");
    // Well formed, but none of the codes of the steps the service accepts now: 403.
    let near: Vec<String> =
        (-1..=1).map(|d| code_at(&app.secret, Utc::now() + chrono::Duration::seconds(30 * d))).collect();
    let other = ["000000", "111111", "222222", "333333"].into_iter().find(|c| !near.iter().any(|n| n == c)).unwrap();
    let wrong = api.post("/api/v1/users/me/mfa/totp/confirm", Some(&token), json!({"code": other})).await;
    assert!(wrong.detail(403).contains("code"), "{wrong:?}");
    let confirmed = api.post("/api/v1/users/me/mfa/totp/confirm", Some(&token), json!({"code": app.code()})).await;
    assert_eq!(confirmed.status, 200, "{confirmed:?}");
    let codes: Vec<String> =
        confirmed.body["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(codes.len(), 10);

    // The first answer a UI must handle: exactly these three fields.
    let step = api.post("/api/v1/auth/login", None, json!({"username": "jade", "password": USER_PASSWORD})).await;
    assert_eq!(step.status, 200, "{step:?}");
    assert_eq!(keys(&step.body), ["methods", "mfa_required", "mfa_token"]);
    assert_eq!(step.body["mfa_required"], json!(true));
    assert_eq!(step.body["methods"], json!(["totp", "recovery_code"]));
    let mfa_token = step.body["mfa_token"].as_str().unwrap().to_owned();
    // Useless as an access token.
    assert_eq!(api.get("/api/v1/users/me", Some(&mfa_token)).await.status, 401);
    // Hostile input: clear 4xx, and the token still works afterwards.
    let bad = api.post("/api/v1/auth/mfa", None, json!({"mfa_token": mfa_token, "code": "abcdef"})).await;
    bad.detail(400);
    let both = api
        .post("/api/v1/auth/mfa", None, json!({"mfa_token": mfa_token, "code": "123456", "recovery_code": codes[0]}))
        .await;
    both.detail(400);
    let forged = api.post("/api/v1/auth/mfa", None, json!({"mfa_token": "mfa_forged", "code": "123456"})).await;
    assert!(forged.detail(401).contains("MFA token"), "{forged:?}");
    let not_json = api.post("/api/v1/auth/mfa", None, json!({"mfa_token": 5})).await;
    assert_eq!(not_json.status, 400, "{not_json:?}");

    // The second: exactly the seed's LoginResponse.
    let done = api.post("/api/v1/auth/mfa", None, json!({"mfa_token": mfa_token, "code": app.code()})).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(keys(&done.body), ["access_token", "backend_config", "expires_in", "token_type", "user"]);
    assert_eq!(done.body["token_type"], "bearer");
    assert_eq!(done.body["expires_in"], 3600);
    assert_eq!(done.body["backend_config"]["bearer_token"], "jade-token");
    assert_eq!(keys(&done.body["user"]), ["email", "id", "instagram_username", "role", "username"]);
    let session = done.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(api.get("/api/v1/users/me", Some(&session)).await.status, 200);
    let reused = api.post("/api/v1/auth/mfa", None, json!({"mfa_token": mfa_token, "code": "123456"})).await;
    reused.detail(401);

    // With a recovery code.
    let step = api.post("/api/v1/auth/login", None, json!({"username": "jade", "password": USER_PASSWORD})).await;
    let recovered = api
        .post("/api/v1/auth/mfa", None, json!({"mfa_token": step.body["mfa_token"], "recovery_code": codes[3]}))
        .await;
    assert_eq!(recovered.status, 200, "{recovered:?}");
    assert_eq!(keys(&recovered.body), ["access_token", "backend_config", "expires_in", "token_type", "user"]);

    // Removal needs the password and a current code; then the login is the seed's again.
    let wrong_password = json!({"password": "Wrong_password1!", "code": "123456"});
    let refused = api.call(Method::DELETE, "/api/v1/users/me/mfa/totp", Some(&session), Some(wrong_password)).await;
    assert!(refused.detail(403).contains("password"), "{refused:?}");
    let wrong_code = json!({"password": USER_PASSWORD, "code": "000000"});
    let refused = api.call(Method::DELETE, "/api/v1/users/me/mfa/totp", Some(&session), Some(wrong_code)).await;
    assert!(refused.detail(403).contains("code"), "{refused:?}");
    let removal = json!({"password": USER_PASSWORD, "code": app.code()});
    let removed = api.call(Method::DELETE, "/api/v1/users/me/mfa/totp", Some(&session), Some(removal)).await;
    assert_eq!(removed.status, 200, "{removed:?}");
    let plain = api.post("/api/v1/auth/login", None, json!({"username": "jade", "password": USER_PASSWORD})).await;
    assert_eq!(keys(&plain.body), ["access_token", "backend_config", "expires_in", "token_type", "user"]);
    s.stop().await;
}

/// Rounds of each race; contenders per round.
const ROUNDS: usize = 6;
const CONTENDERS: usize = 4;

/// Submits `requests` at once (each on its own connection) and counts the successes.
async fn race(s: &TestServer, requests: Vec<pb::VerifyMfaRequest>) -> usize {
    race_with(s, requests, |mut client, request| async move { client.verify_mfa(request).await.map(drop) }).await
}

/// Sends each of `requests` with `send` at once, each on its own connection, and counts the
/// successes; every loser must be refused as UNAUTHENTICATED.
pub(crate) async fn race_with<R, F, Fut>(s: &TestServer, requests: Vec<R>, send: F) -> usize
where
    R: Send + 'static,
    F: Fn(AuthServiceClient<Channel>, R) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let mut clients = Vec::new();
    for _ in 0..requests.len() {
        clients.push(s.auth().await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(requests.len()));
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(requests)
        .map(|(client, request)| {
            let (barrier, send) = (std::sync::Arc::clone(&barrier), send.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                send(client, request).await
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => wins += 1,
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
        }
    }
    wins
}

async fn one_code_one_sign_in_under_races(s: TestServer) {
    // The losers' answers are failures of the account too; this test is about single use.
    let s = s.restart(&[("login-throttle-threshold", "1000")]).await;
    let admin = s.admin_token().await;
    for round in 0..ROUNDS {
        // A fresh user per round: each round races a code no one has used.
        let name = format!("racer{round}");
        let (_, mut app, _) = enrolled_user(&s, &admin, &name).await;
        let code = app.code();
        let mut requests = Vec::new();
        for _ in 0..CONTENDERS {
            requests.push(with_code(&mfa_token(&s, &name).await, &code));
        }
        assert_eq!(race(&s, requests).await, 1, "round {round}: exactly one submission of one code wins");
    }
    // Recovery codes: one user, a different code per round, each raced by several sign-ins.
    let (_, _, codes) = enrolled_user(&s, &admin, "recoverer").await;
    for (round, code) in codes.iter().take(ROUNDS).enumerate() {
        let mut requests = Vec::new();
        for _ in 0..CONTENDERS {
            requests.push(with_recovery(&mfa_token(&s, "recoverer").await, code));
        }
        assert_eq!(race(&s, requests).await, 1, "round {round}: a recovery code is spent once");
    }
    // One mfa_token raced with different valid answers: one session.
    let (_, mut app, codes) = enrolled_user(&s, &admin, "forked").await;
    let token = mfa_token(&s, "forked").await;
    let requests = vec![
        with_code(&token, &app.code()),
        with_recovery(&token, &codes[0]),
        with_recovery(&token, &codes[1]),
        with_recovery(&token, &codes[2]),
    ];
    assert_eq!(race(&s, requests).await, 1, "an mfa_token opens one session");
    s.stop().await;
}

async fn five_wrong_codes_end_the_mfa_token(s: TestServer) {
    // Not the account's throttling (five failures by default): the token's own limit.
    let s = s.restart(&[("login-throttle-threshold", "100")]).await;
    let admin = s.admin_token().await;
    let (id, mut app, codes) = enrolled_user(&s, &admin, "fumbler").await;
    let token = mfa_token(&s, "fumbler").await;
    let mut auth = s.auth().await;
    let right = app.code();
    let wrong = if right == "000000" { "111111" } else { "000000" };
    for attempt in 1..=5 {
        let message = expect_code(auth.verify_mfa(with_code(&token, wrong)).await, Code::Unauthenticated);
        if attempt < 5 {
            assert_eq!(message, "Invalid authentication code");
        } else {
            assert!(message.contains("Too many wrong codes"), "{message}");
        }
    }
    // Ended: the right code and a recovery code no longer help with this token.
    expect_code(auth.verify_mfa(with_code(&token, &right)).await, Code::Unauthenticated);
    expect_code(auth.verify_mfa(with_recovery(&token, &codes[0])).await, Code::Unauthenticated);
    // Wrong recovery codes count the same.
    let token = mfa_token(&s, "fumbler").await;
    let unknown = "aaaa-bbbb-cccc-dddd";
    for _ in 0..5 {
        expect_code(auth.verify_mfa(with_recovery(&token, unknown)).await, Code::Unauthenticated);
    }
    expect_code(auth.verify_mfa(with_recovery(&token, &codes[0])).await, Code::Unauthenticated);
    // Neither spent the code nor the recovery code: a new sign-in works with them.
    let token = mfa_token(&s, "fumbler").await;
    auth.verify_mfa(with_code(&token, &right)).await.unwrap();
    let token = mfa_token(&s, "fumbler").await;
    auth.verify_mfa(with_recovery(&token, &codes[0])).await.unwrap();
    // Five wrong codes and five wrong recovery codes; the tries with an ended token are not
    // guesses at anything.
    assert_eq!(audit_count(&s, &admin, id, "mfa_failure").await, 10);
    s.stop().await;
}

async fn wrong_codes_throttle_the_account_like_wrong_passwords(s: TestServer) {
    let s = s.restart(&[("login-throttle-threshold", "3"), ("login-throttle-cooldown-seconds", "60")]).await;
    let admin = s.admin_token().await;
    let (id, mut app, _) = enrolled_user(&s, &admin, "guessed").await;
    let mut auth = s.auth().await;
    // Two wrong passwords and one wrong code: the third failure of the account starts the
    // cool-down.
    for _ in 0..2 {
        let wrong = pb::LoginRequest { username: "guessed".into(), password: "Wrong_password1!".into() };
        expect_code(auth.login(wrong).await, Code::Unauthenticated);
    }
    let token = mfa_token(&s, "guessed").await;
    let right = app.code();
    let wrong = if right == "000000" { "111111" } else { "000000" };
    expect_code(auth.verify_mfa(with_code(&token, wrong)).await, Code::Unauthenticated);
    // Throttled now: the right code, and the right password, wait.
    expect_code(auth.verify_mfa(with_code(&token, &right)).await, Code::ResourceExhausted);
    expect_code(s.login_reply("guessed", USER_PASSWORD).await, Code::ResourceExhausted);
    assert_eq!(audit_count(&s, &admin, id, "login_throttled").await, 1);
    // After the cool-down (the clock moved for this call), the same token and code work.
    let client = ClientInfo { ip: Some("127.0.0.1".parse().unwrap()), user_agent: None };
    let later = Utc::now() + Duration::seconds(61);
    let factor = SecondFactor::Totp(SecretString::from(code_at(&app.secret, later)));
    s.app().verify_mfa(&token, &factor, &client, later).await.unwrap();
    s.stop().await;
}

fn refused<T: std::fmt::Debug>(r: Result<T, instachatico_auth::error::Error>) {
    assert!(matches!(r, Err(instachatico_auth::error::Error::Unauthenticated(_))), "{r:?}");
}

async fn the_mfa_token_is_short_lived_bound_and_nothing_else(s: TestServer) {
    let admin = s.admin_token().await;
    let (_, app, _) = enrolled_user(&s, &admin, "bound").await;
    let here = ClientInfo { ip: Some("127.0.0.1".parse().unwrap()), user_agent: None };
    let elsewhere = ClientInfo { ip: Some("198.51.100.9".parse().unwrap()), user_agent: None };
    let now = Utc::now();
    let SignIn::MfaRequired { mfa_token, .. } =
        s.app().login("bound", &SecretString::from(USER_PASSWORD), &here, now).await.unwrap()
    else {
        panic!("a second step expected");
    };
    let token = mfa_token.expose_secret().to_owned();
    let later = now + Duration::minutes(4);
    let code = SecondFactor::Totp(SecretString::from(code_at(&app.secret, later)));
    // From another address: refused.
    refused(s.app().verify_mfa(&token, &code, &elsewhere, later).await);
    // After five minutes: refused.
    refused(s.app().verify_mfa(&token, &code, &here, now + Duration::minutes(5)).await);
    // Not an access token, not refreshable, not active to introspection.
    let mut users = s.users().await;
    expect_code(users.get_me(authed(&token, pb::GetMeRequest {})).await, Code::Unauthenticated);
    expect_code(s.auth().await.refresh(authed(&token, pb::RefreshRequest {})).await, Code::Unauthenticated);
    expect_code(s.auth().await.logout(authed(&token, pb::LogoutRequest {})).await, Code::Unauthenticated);
    assert!(s.app().introspect(&token, now).await.unwrap().is_none());
    let mut mfa = mfa_client(&s).await;
    expect_code(mfa.list_mfa_factors(authed(&token, pb::ListMfaFactorsRequest {})).await, Code::Unauthenticated);
    // None of that used it up: within its time, from its address, it works once.
    let outcome = s.app().verify_mfa(&token, &code, &here, later).await.unwrap();
    assert!(!outcome.token.access_token.expose_secret().is_empty());
    refused(s.app().verify_mfa(&token, &code, &here, later).await);
    s.stop().await;
}

async fn admin_reset_clears_factors_and_ends_sessions(s: TestServer) {
    let admin = s.admin_token().await;
    let (id, mut app, _) = enrolled_user(&s, &admin, "lost").await;
    let token = mfa_token(&s, "lost").await;
    let session =
        s.auth().await.verify_mfa(with_code(&token, &app.code())).await.unwrap().into_inner().access_token.unwrap();
    let pending = mfa_token(&s, "lost").await;
    let mut mfa = mfa_client(&s).await;
    // Only an admin may.
    expect_code(mfa.reset_user_mfa(authed(&session, pb::ResetUserMfaRequest { id })).await, Code::PermissionDenied);
    expect_code(mfa.reset_user_mfa(authed(&admin, pb::ResetUserMfaRequest { id: 999_999 })).await, Code::NotFound);
    expect_code(mfa.reset_user_mfa(authed(&admin, pb::ResetUserMfaRequest { id: 0 })).await, Code::InvalidArgument);
    let reset = mfa.reset_user_mfa(authed(&admin, pb::ResetUserMfaRequest { id })).await.unwrap().into_inner();
    assert!(reset.revoked >= 1, "{reset:?}");
    // The user's sessions ended at once; the password alone signs in again.
    expect_code(s.users().await.get_me(authed(&session, pb::GetMeRequest {})).await, Code::Unauthenticated);
    // A sign-in that was waiting for its second step ended too.
    expect_code(s.auth().await.verify_mfa(with_code(&pending, &app.code())).await, Code::Unauthenticated);
    let plain = s.login_reply("lost", USER_PASSWORD).await.unwrap();
    assert!(plain.access_token.is_some() && plain.mfa_required.is_none());
    assert_eq!(audit_count(&s, &admin, id, "mfa_reset").await, 1);
    // The CLI does the same, by name.
    let plain = plain.access_token.unwrap();
    enrol(&s, &plain).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", s.database_url.as_str()),
        ("JWT_SECRET_KEY", JWT_SECRET),
        ("ENCRYPTION_KEY", s.encryption_key.as_str()),
        ("LOG_LEVEL", "warn"),
    ];
    let out = crate::cli::run(dir.path(), &env, &["reset-mfa", "--username", "lost"], "");
    assert!(out.status.success(), "{}", crate::cli::text(&out));
    assert!(
        crate::cli::text(&out).contains("second factors of lost cleared; 1 session(s) ended"),
        "{}",
        crate::cli::text(&out)
    );
    if s.backend == Backend::Postgres {
        // Another process's change reaches the server's session cache through NOTIFY, a moment
        // later (on SQLite, when the cache entry expires): poll, within 2 s on a loaded machine.
        let mut users = s.users().await;
        let mut refused = false;
        for _ in 0..100 {
            match users.get_me(authed(&plain, pb::GetMeRequest {})).await {
                Err(status) if status.code() == Code::Unauthenticated => {
                    refused = true;
                    break;
                }
                Err(status) => panic!("unexpected {status:?}"),
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        assert!(refused, "the CLI's reset did not reach the server's session cache within 2 s");
    }
    assert!(s.login_reply("lost", USER_PASSWORD).await.unwrap().access_token.is_some());
    assert_eq!(audit_count(&s, &admin, id, "mfa_reset").await, 2);
    s.stop().await;
}

async fn rotate_keys_reencrypts_totp_secrets(s: TestServer) {
    let admin = s.admin_token().await;
    let (_, mut app, _) = enrolled_user(&s, &admin, "rotor").await;
    let old_key = s.encryption_key.clone();
    let new_key = "KSDEUmaWmBWPfjVWm8Pkru5oXPd2OaHkVt0xXkx-Qbg=";
    let s = s.restart(&[("encryption-key", new_key), ("encryption-previous-keys", &old_key)]).await;
    // The command, as an operator runs it.
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", s.database_url.as_str()),
        ("JWT_SECRET_KEY", JWT_SECRET),
        ("ENCRYPTION_KEY", new_key),
        ("ENCRYPTION_PREVIOUS_KEYS", old_key.as_str()),
        ("LOG_LEVEL", "warn"),
    ];
    let out = crate::cli::run(dir.path(), &env, &["rotate-keys"], "");
    assert!(out.status.success(), "{}", crate::cli::text(&out));
    assert!(crate::cli::text(&out).contains("re-encrypted 1 of 1 TOTP secret(s)"), "{}", crate::cli::text(&out));
    let again = s.app().reencrypt_totp_secrets(&ClientInfo::default(), Utc::now()).await.unwrap();
    assert_eq!(again, (1, 0), "idempotent");
    // Old key gone: the secret still decrypts, the sign-in still works.
    let s = s.restart(&[("encryption-previous-keys", "")]).await;
    let token = mfa_token(&s, "rotor").await;
    s.auth().await.verify_mfa(with_code(&token, &app.code())).await.unwrap();
    s.stop().await;
}

async fn new_recovery_codes_need_password_and_code(s: TestServer) {
    let admin = s.admin_token().await;
    let (id, mut app, old_codes) = enrolled_user(&s, &admin, "regen").await;
    let session = s.auth().await.verify_mfa(with_recovery(&mfa_token(&s, "regen").await, &old_codes[0])).await;
    let session = session.unwrap().into_inner().access_token.unwrap();
    let mut mfa = mfa_client(&s).await;
    let ask = |password: &str, code: &str| {
        authed(&session, pb::ReauthenticateRequest { password: password.into(), code: code.into() })
    };
    expect_code(mfa.regenerate_recovery_codes(ask("", "123456")).await, Code::InvalidArgument);
    expect_code(mfa.regenerate_recovery_codes(ask(USER_PASSWORD, "12")).await, Code::InvalidArgument);
    expect_code(mfa.regenerate_recovery_codes(ask("Wrong_password1!", "123456")).await, Code::PermissionDenied);
    let code = app.code();
    let fresh = mfa.regenerate_recovery_codes(ask(USER_PASSWORD, &code)).await.unwrap().into_inner().recovery_codes;
    assert_eq!(fresh.len(), 10);
    // The code was spent by that: not again.
    expect_code(mfa.regenerate_recovery_codes(ask(USER_PASSWORD, &code)).await, Code::PermissionDenied);
    // Old codes stop working, new ones work.
    let mut auth = s.auth().await;
    expect_code(
        auth.verify_mfa(with_recovery(&mfa_token(&s, "regen").await, &old_codes[1])).await,
        Code::Unauthenticated,
    );
    auth.verify_mfa(with_recovery(&mfa_token(&s, "regen").await, &fresh[0])).await.unwrap();
    assert_eq!(audit_count(&s, &admin, id, "mfa_recovery_codes_regenerated").await, 1);
    // Removal: the same checks, then the login is the seed's.
    expect_code(mfa.remove_totp(ask(USER_PASSWORD, &code)).await, Code::PermissionDenied);
    mfa.remove_totp(ask(USER_PASSWORD, &app.code())).await.unwrap();
    assert!(s.login_reply("regen", USER_PASSWORD).await.unwrap().access_token.is_some());
    expect_code(mfa.remove_totp(ask(USER_PASSWORD, "123456")).await, Code::FailedPrecondition);
    assert_eq!(audit_count(&s, &admin, id, "mfa_totp_removed").await, 1);
    s.stop().await;
}

async fn hostile_second_steps_change_nothing(s: TestServer) {
    let admin = s.admin_token().await;
    let (id, mut app, codes) = enrolled_user(&s, &admin, "probed").await;
    let token = mfa_token(&s, "probed").await;
    let mut auth = s.auth().await;
    let request = |mfa_token: &str, code: &str, recovery: &str| pb::VerifyMfaRequest {
        mfa_token: mfa_token.into(),
        code: code.into(),
        recovery_code: recovery.into(),
    };
    for (r, code) in [
        (request("", "123456", ""), Code::InvalidArgument),
        (request(&token, "", ""), Code::InvalidArgument),
        (request(&token, "123456", &codes[0]), Code::InvalidArgument),
        (request(&token, "12345", ""), Code::InvalidArgument),
        (request(&token, "１２３４５６", ""), Code::InvalidArgument),
        (request(&token, "", "not-a-code"), Code::InvalidArgument),
        (request(&token, "12\u{0}456", ""), Code::InvalidArgument),
        (request(&format!("{token}\u{0}"), "123456", ""), Code::InvalidArgument),
        (request("mfa_forged", "123456", ""), Code::Unauthenticated),
        (request(&"mfa_x".repeat(100), "123456", ""), Code::Unauthenticated),
        (request(&s.admin_token().await, "123456", ""), Code::Unauthenticated),
    ] {
        expect_code(auth.verify_mfa(r).await, code);
    }
    // Nothing was counted against the token or the account, and nothing was spent.
    assert_eq!(audit_count(&s, &admin, id, "mfa_failure").await, 0);
    auth.verify_mfa(with_code(&token, &app.code())).await.unwrap();
    let mut mfa = mfa_client(&s).await;
    let session = s.auth().await.verify_mfa(with_recovery(&mfa_token(&s, "probed").await, &codes[0])).await;
    let session = session.unwrap().into_inner().access_token.unwrap();
    expect_code(
        mfa.confirm_totp(authed(&session, pb::ConfirmTotpRequest { code: "123456".into() })).await,
        Code::FailedPrecondition,
    );
    s.stop().await;
}

async fn admins_enrol_before_a_session_under_the_policy(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "plain", None).await;
    let s = s.restart(&[("mfa-required-for-admins", "true")]).await;
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let api = Json::new(&envoy.url);
    // A user who is not an admin: nothing changes.
    api.login("plain", USER_PASSWORD).await;
    // The admin gets exactly the enrolment answer.
    let login = json!({"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD});
    let step = api.post("/api/v1/auth/login", None, login.clone()).await;
    assert_eq!(step.status, 200, "{step:?}");
    let mut keys: Vec<&String> = step.body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["mfa_enrollment_required", "mfa_token"]);
    assert_eq!(step.body["mfa_enrollment_required"], json!(true));
    let grant = step.body["mfa_token"].as_str().unwrap().to_owned();
    // Only the enrolment routes take it.
    assert_eq!(api.get("/api/v1/users/me", Some(&grant)).await.status, 401);
    assert_eq!(api.get("/api/v1/users/me/mfa", Some(&grant)).await.status, 401);
    assert_eq!(api.get("/api/v1/users", Some(&grant)).await.status, 401);
    let verify = api.post("/api/v1/auth/mfa", None, json!({"mfa_token": grant, "code": "123456"})).await;
    assert_eq!(verify.status, 401, "{verify:?}");
    let started = api.post("/api/v1/users/me/mfa/totp", Some(&grant), json!({})).await;
    assert_eq!(started.status, 200, "{started:?}");
    let mut app = Authenticator { secret: started.body["secret"].as_str().unwrap().to_owned(), last_step: 0 };
    let confirmed = api.post("/api/v1/users/me/mfa/totp/confirm", Some(&grant), json!({"code": app.code()})).await;
    assert_eq!(confirmed.status, 200, "{confirmed:?}");
    assert_eq!(confirmed.body["recovery_codes"].as_array().unwrap().len(), 10);
    // The grant ended with the enrolment.
    assert_eq!(api.post("/api/v1/users/me/mfa/totp", Some(&grant), json!({})).await.status, 401);
    // Now the admin signs in with the second factor.
    let step = api.post("/api/v1/auth/login", None, login).await;
    assert_eq!(step.body["mfa_required"], json!(true), "{step:?}");
    let done =
        api.post("/api/v1/auth/mfa", None, json!({"mfa_token": step.body["mfa_token"], "code": app.code()})).await;
    assert_eq!(done.status, 200, "{done:?}");
    let session = done.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(api.get("/api/v1/users", Some(&session)).await.status, 200);
    // Over gRPC the same, and an enrolment grant from another address is refused.
    let here = ClientInfo { ip: Some("127.0.0.1".parse().unwrap()), user_agent: None };
    let elsewhere = ClientInfo { ip: Some("198.51.100.9".parse().unwrap()), user_agent: None };
    let admin2 = pb::CreateUserRequest {
        username: "second_admin".into(),
        email: "second_admin@example.com".into(),
        password: USER_PASSWORD.into(),
        role: "admin".into(),
        ..Default::default()
    };
    s.users().await.create_user(authed(&session, admin2)).await.unwrap();
    let reply = s.login_reply("second_admin", USER_PASSWORD).await.unwrap();
    assert_eq!(reply.mfa_enrollment_required, Some(true));
    assert!(reply.access_token.is_none() && reply.user.is_none());
    let grant = reply.mfa_token.unwrap();
    assert!(s.app().authenticate_enrolment(&grant, &here, Utc::now()).await.is_ok());
    refused(s.app().authenticate_enrolment(&grant, &elsewhere, Utc::now()).await);
    refused(s.app().authenticate_enrolment(&grant, &here, Utc::now() + Duration::minutes(5)).await);
    enrol(&s, &grant).await;
    s.stop().await;
}

crate::on_both_backends!(
    totp_enrol_and_sign_in_over_grpc,
    totp_sign_in_through_envoy_as_json,
    one_code_one_sign_in_under_races,
    five_wrong_codes_end_the_mfa_token,
    wrong_codes_throttle_the_account_like_wrong_passwords,
    the_mfa_token_is_short_lived_bound_and_nothing_else,
    admin_reset_clears_factors_and_ends_sessions,
    rotate_keys_reencrypts_totp_secrets,
    new_recovery_codes_need_password_and_code,
    hostile_second_steps_change_nothing,
    admins_enrol_before_a_session_under_the_policy,
);

/// Login's first step commits without waiting for the disk on PostgreSQL
/// (`DbPool::write_losable`): what that may lose in a crash, and that what it commits is there
/// at once for every connection (PgBouncer in transaction mode included).
mod first_step_commit {
    use super::*;

    /// An mfa_token whose issuance a crash lost (its row is gone) is refused like any unknown
    /// one, spends nothing and counts nothing: the user signs in again, with the same code.
    async fn a_lost_mfa_token_only_means_signing_in_again(s: TestServer) {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use instachatico_auth::db::schema::mfa_challenges;

        let admin = s.admin_token().await;
        let (id, mut app, codes) = enrolled_user(&s, &admin, "crashed").await;
        let lost = mfa_token(&s, "crashed").await;
        let sha = instachatico_auth::crypto::hex(&<sha2::Sha256 as sha2::Digest>::digest(lost.as_bytes()));
        let mut conn = s.app().db().get().await.unwrap();
        let conn = &mut conn;
        let gone = instachatico_auth::db_run!(conn, "test::lose_challenge": {
            diesel::delete(mfa_challenges::table.find(&sha)).execute(conn).await.unwrap()
        });
        assert_eq!(gone, 1, "the mfa_token's row is stored under its SHA-256");
        let code = app.code();
        let mut auth = s.auth().await;
        let refused = expect_code(auth.verify_mfa(with_code(&lost, &code)).await, Code::Unauthenticated);
        assert!(refused.contains("sign in again"), "{refused}");
        expect_code(auth.verify_mfa(with_recovery(&lost, &codes[0])).await, Code::Unauthenticated);
        assert_eq!(audit_count(&s, &admin, id, "mfa_failure").await, 0, "not a wrong code");
        // Neither the code nor the recovery code was spent.
        auth.verify_mfa(with_code(&mfa_token(&s, "crashed").await, &code)).await.unwrap();
        auth.verify_mfa(with_recovery(&mfa_token(&s, "crashed").await, &codes[0])).await.unwrap();
        s.stop().await;
    }

    /// Round after round, the mfa_token Login just answered is raced by several second steps
    /// with the same code, each on its own connection (through PgBouncer, on any server
    /// connection): it is there for all of them at once, and exactly one wins.
    async fn a_fresh_mfa_token_is_seen_at_once_and_spent_once(s: TestServer) {
        let s = s.restart(&[("login-throttle-threshold", "1000")]).await;
        let admin = s.admin_token().await;
        let (id, mut app, codes) = enrolled_user(&s, &admin, "eager").await;
        let mut rounds = 0;
        for code in codes.iter().take(ROUNDS) {
            let token = mfa_token(&s, "eager").await;
            let requests = (0..CONTENDERS).map(|_| with_recovery(&token, code)).collect();
            assert_eq!(race(&s, requests).await, 1, "round {rounds}");
            rounds += 1;
        }
        let token = mfa_token(&s, "eager").await;
        let code = app.code();
        assert_eq!(race(&s, (0..CONTENDERS).map(|_| with_code(&token, &code)).collect()).await, 1);
        rounds += 1;
        assert_eq!(audit_count(&s, &admin, id, "mfa_required").await, rounds);
        assert_eq!(audit_count(&s, &admin, id, "mfa_success").await, rounds);
        s.stop().await;
    }

    /// PostgreSQL's `synchronous_commit` of the current session.
    async fn synchronous_commit(conn: &mut instachatico_auth::db::DbConn) -> String {
        #[derive(diesel::QueryableByName)]
        struct Setting {
            #[diesel(sql_type = diesel::sql_types::Text)]
            synchronous_commit: String,
        }
        let instachatico_auth::db::DbConn::Postgres(c) = conn else { unreachable!("PostgreSQL only") };
        let setting: Setting =
            diesel_async::RunQueryDsl::get_result(diesel::sql_query("SHOW synchronous_commit"), &mut **c)
                .await
                .unwrap();
        setting.synchronous_commit
    }

    /// The asynchronous commit holds inside the losable transaction only: every pooled
    /// connection (through PgBouncer, every server connection it reached) commits durably after.
    async fn asynchronous_commit_stays_in_its_transaction(s: TestServer) {
        if s.backend != Backend::Postgres {
            return s.stop().await;
        }
        let db = s.app().db();
        for _ in 0..5 {
            let inside = db.write_losable(Box::new(|c| Box::pin(async move { Ok(synchronous_commit(c).await) })));
            assert_eq!(inside.await.unwrap(), "off");
            let durable = db.write(Box::new(|c| Box::pin(async move { Ok(synchronous_commit(c).await) })));
            assert_eq!(durable.await.unwrap(), "on");
        }
        let (_, size) = db.usage();
        let mut held = Vec::new();
        for _ in 0..size {
            let mut conn = db.get().await.unwrap();
            assert_eq!(synchronous_commit(&mut conn).await, "on");
            held.push(conn);
        }
        drop(held);
        s.stop().await;
    }

    crate::on_both_backends!(
        and_through_pgbouncer;
        asynchronous_commit_stays_in_its_transaction,
        a_lost_mfa_token_only_means_signing_in_again,
        a_fresh_mfa_token_is_seen_at_once_and_spent_once,
    );
}
