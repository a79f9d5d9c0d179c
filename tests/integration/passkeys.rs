//! Passkeys (issue 14, WebAuthn slice) on the real server, both databases: registration, the
//! list (rename, delete), a passkey as the second step of a sign-in and passwordless, over gRPC
//! and as JSON through Envoy; single use of a ceremony under races, replayed and foreign
//! ceremonies, a cloned authenticator (its counter going back), hostile input, admin reset.
//!
//! The authenticator is a small software one written here (ES256, "none" attestation, user
//! verified, resident keys), producing exactly the JSON a browser's
//! `PublicKeyCredential.toJSON()` does; the browser test drives Chromium's own.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use instachatico_auth::pb;
use instachatico_auth::pb::auth_service_client::AuthServiceClient;
use instachatico_auth::pb::passkey_service_client::PasskeyServiceClient;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{
    ADMIN_PASSWORD, ADMIN_USERNAME, Envoy, FRONTEND, Json, TestServer, USER_PASSWORD, authed, expect_code,
};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

/// CBOR, just what an attestation object needs.
fn cbor_head(major: u8, n: u64, out: &mut Vec<u8>) {
    let major = major << 5;
    match n {
        0..24 => out.push(major | u8::try_from(n).unwrap()),
        24..256 => out.extend([major | 24, u8::try_from(n).unwrap()]),
        256..65536 => {
            out.push(major | 25);
            out.extend(u16::try_from(n).unwrap().to_be_bytes());
        }
        _ => {
            out.push(major | 26);
            out.extend(u32::try_from(n).unwrap().to_be_bytes());
        }
    }
}

fn cbor_int(i: i64, out: &mut Vec<u8>) {
    if i >= 0 { cbor_head(0, i.unsigned_abs(), out) } else { cbor_head(1, (-1 - i).unsigned_abs(), out) }
}

fn cbor_bytes(b: &[u8], out: &mut Vec<u8>) {
    cbor_head(2, b.len() as u64, out);
    out.extend(b);
}

fn cbor_text(t: &str, out: &mut Vec<u8>) {
    cbor_head(3, t.len() as u64, out);
    out.extend(t.as_bytes());
}

#[derive(Clone)]
struct Credential {
    id: Vec<u8>,
    key: SigningKey,
    user_handle: Vec<u8>,
    counter: u32,
}

/// A platform authenticator holding discoverable ES256 credentials for one origin.
#[derive(Clone)]
struct SoftAuthenticator {
    origin: String,
    credentials: Vec<Credential>,
}

impl SoftAuthenticator {
    fn new() -> Self {
        Self { origin: FRONTEND.to_owned(), credentials: Vec::new() }
    }

    fn client_data(&self, kind: &str, challenge: &str) -> Vec<u8> {
        json!({"type": kind, "challenge": challenge, "origin": self.origin, "crossOrigin": false})
            .to_string()
            .into_bytes()
    }

    /// `navigator.credentials.create(options)`, as `toJSON()` gives it.
    fn create(&mut self, options: &Value) -> Value {
        let pk = &options["publicKey"];
        let rp_id = pk["rp"]["id"].as_str().unwrap();
        let mut id = vec![0u8; 32];
        rand::rng().fill_bytes(&mut id);
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let key = SigningKey::from_slice(&secret).unwrap();
        let point = key.verifying_key().to_encoded_point(false);
        let mut cose = Vec::new();
        cbor_head(5, 5, &mut cose);
        for (k, v) in [(1, 2), (3, -7), (-1, 1)] {
            cbor_int(k, &mut cose);
            cbor_int(v, &mut cose);
        }
        cbor_int(-2, &mut cose);
        cbor_bytes(point.x().unwrap(), &mut cose);
        cbor_int(-3, &mut cose);
        cbor_bytes(point.y().unwrap(), &mut cose);
        let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
        auth_data.push(0x45); // user present, user verified, attested credential data
        auth_data.extend(0u32.to_be_bytes());
        auth_data.extend([0u8; 16]);
        auth_data.extend(u16::try_from(id.len()).unwrap().to_be_bytes());
        auth_data.extend(&id);
        auth_data.extend(cose);
        let mut attestation = Vec::new();
        cbor_head(5, 3, &mut attestation);
        cbor_text("fmt", &mut attestation);
        cbor_text("none", &mut attestation);
        cbor_text("attStmt", &mut attestation);
        cbor_head(5, 0, &mut attestation);
        cbor_text("authData", &mut attestation);
        cbor_bytes(&auth_data, &mut attestation);
        let client_data = self.client_data("webauthn.create", pk["challenge"].as_str().unwrap());
        let user_handle = unb64(pk["user"]["id"].as_str().unwrap());
        self.credentials.push(Credential { id: id.clone(), key, user_handle, counter: 0 });
        json!({
            "id": b64(&id), "rawId": b64(&id), "type": "public-key",
            "response": {"attestationObject": b64(&attestation), "clientDataJSON": b64(&client_data),
                         "transports": ["internal"]},
            "clientExtensionResults": {}, "authenticatorAttachment": "platform",
        })
    }

    /// `navigator.credentials.get(options)` with the newest credential the options allow.
    fn get(&mut self, options: &Value) -> Value {
        let pk = &options["publicKey"];
        let allowed: Vec<Vec<u8>> = pk["allowCredentials"]
            .as_array()
            .map(|a| a.iter().map(|c| unb64(c["id"].as_str().unwrap())).collect())
            .unwrap_or_default();
        let rp_id = pk["rpId"].as_str().unwrap().to_owned();
        let challenge = pk["challenge"].as_str().unwrap().to_owned();
        let client_data = self.client_data("webauthn.get", &challenge);
        let credential = self
            .credentials
            .iter_mut()
            .rev()
            .find(|c| allowed.is_empty() || allowed.contains(&c.id))
            .expect("no credential for these options");
        credential.counter += 1;
        let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
        auth_data.push(0x05); // user present, user verified
        auth_data.extend(credential.counter.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend(Sha256::digest(&client_data));
        let signature: Signature = credential.key.sign(&signed);
        json!({
            "id": b64(&credential.id), "rawId": b64(&credential.id), "type": "public-key",
            "response": {"authenticatorData": b64(&auth_data), "clientDataJSON": b64(&client_data),
                         "signature": b64(signature.to_der().as_bytes()),
                         "userHandle": b64(&credential.user_handle)},
            "clientExtensionResults": {}, "authenticatorAttachment": "platform",
        })
    }
}

fn to_struct(v: Value) -> prost_types::Struct {
    let Value::Object(map) = v else { panic!("not an object") };
    prost_types::Struct { fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect() }
}

fn to_value(v: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue { values: a.into_iter().map(to_value).collect() }),
        o @ Value::Object(_) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn from_struct(s: prost_types::Struct) -> Value {
    Value::Object(s.fields.into_iter().map(|(k, v)| (k, from_value(v))).collect())
}

fn from_value(v: prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match v.kind.unwrap() {
        Kind::NullValue(_) => Value::Null,
        Kind::BoolValue(b) => json!(b),
        Kind::NumberValue(n) if n.fract() == 0.0 => json!(n as i64),
        Kind::NumberValue(n) => json!(n),
        Kind::StringValue(s) => json!(s),
        Kind::ListValue(l) => Value::Array(l.values.into_iter().map(from_value).collect()),
        Kind::StructValue(s) => from_struct(s),
    }
}

async fn passkey_client(s: &TestServer) -> PasskeyServiceClient<Channel> {
    PasskeyServiceClient::new(s.channel().await)
}

/// Registers a passkey on `device` for the holder of `token`.
async fn register(s: &TestServer, token: &str, device: &mut SoftAuthenticator, name: &str) -> pb::Passkey {
    let mut passkeys = passkey_client(s).await;
    let start = passkeys.start_passkey_registration(authed(token, pb::StartPasskeyRegistrationRequest {})).await;
    let start = start.unwrap().into_inner();
    let credential = device.create(&from_struct(start.options.unwrap()));
    let finish = pb::FinishPasskeyRegistrationRequest {
        ceremony: start.ceremony,
        name: name.into(),
        credential: Some(to_struct(credential)),
    };
    passkeys.finish_passkey_registration(authed(token, finish)).await.unwrap().into_inner()
}

/// A sign-in with `device`: passwordless (no `mfa_token`) or a second step.
async fn sign_in(
    s: &TestServer,
    device: &mut SoftAuthenticator,
    mfa_token: &str,
) -> Result<pb::LoginResponse, tonic::Status> {
    let mut auth = s.auth().await;
    let start = auth.start_passkey_sign_in(pb::StartPasskeySignInRequest { mfa_token: mfa_token.into() }).await?;
    let start = start.into_inner();
    let credential = device.get(&from_struct(start.options.unwrap()));
    let finish = pb::FinishPasskeySignInRequest {
        ceremony: start.ceremony,
        credential: Some(to_struct(credential)),
        mfa_token: mfa_token.into(),
    };
    auth.finish_passkey_sign_in(finish).await.map(tonic::Response::into_inner)
}

async fn audit_count(s: &TestServer, admin: &str, user_id: i32, action: &str) -> i32 {
    let mut audit = pb::audit_service_client::AuditServiceClient::new(s.channel().await);
    let filter = pb::ListAuditLogsRequest { user_id, action: action.into(), include_total: true, ..Default::default() };
    audit.list_audit_logs(authed(admin, filter)).await.unwrap().into_inner().total.expect("counted")
}

fn methods(reply: &pb::LoginResponse) -> Vec<String> {
    reply
        .methods
        .as_ref()
        .map(|l| {
            l.values
                .iter()
                .filter_map(|v| match &v.kind {
                    Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn register_list_rename_delete_and_sign_in_over_grpc(s: TestServer) {
    let admin = s.admin_token().await;
    let user = s.create_user(&admin, "pia", Some(("http://localhost:4300/api/v1", "pia-backend-token"))).await;
    let token = s.login("pia", USER_PASSWORD).await;
    let mut passkeys = passkey_client(&s).await;
    let mut device = SoftAuthenticator::new();

    // The options ask for a discoverable, user-verified credential for this relying party.
    let start = passkeys.start_passkey_registration(authed(&token, pb::StartPasskeyRegistrationRequest {})).await;
    let start = start.unwrap().into_inner();
    assert!(start.ceremony.starts_with("pkc_"));
    let options = from_struct(start.options.unwrap());
    assert_eq!(options["publicKey"]["rp"]["id"], "localhost", "{options}");
    assert_eq!(options["publicKey"]["user"]["name"], "pia");
    assert_eq!(options["publicKey"]["authenticatorSelection"]["residentKey"], "required");
    assert_eq!(options["publicKey"]["authenticatorSelection"]["userVerification"], "required");
    let created = device.create(&options);
    let finish = pb::FinishPasskeyRegistrationRequest {
        ceremony: start.ceremony.clone(),
        name: "  Laptop ".into(),
        credential: Some(to_struct(created.clone())),
    };
    let laptop = passkeys.finish_passkey_registration(authed(&token, finish.clone())).await.unwrap().into_inner();
    assert_eq!(laptop.name, "Laptop");
    assert!(laptop.created_at.is_some() && laptop.last_used_at.is_none());
    // The ceremony was spent: the same finish again is refused.
    expect_code(passkeys.finish_passkey_registration(authed(&token, finish)).await, Code::FailedPrecondition);
    // A second passkey, unnamed; the options exclude the first.
    let start = passkeys.start_passkey_registration(authed(&token, pb::StartPasskeyRegistrationRequest {})).await;
    let options = from_struct(start.unwrap().into_inner().options.unwrap());
    assert_eq!(options["publicKey"]["excludeCredentials"][0]["id"], created["id"], "{options}");
    let mut phone = SoftAuthenticator::new();
    let second = register(&s, &token, &mut phone, "").await;
    assert_eq!(second.name, "Passkey");

    let listed = passkeys.list_passkeys(authed(&token, pb::ListPasskeysRequest {})).await.unwrap().into_inner();
    assert_eq!(listed.passkeys.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["Laptop", "Passkey"]);
    let renamed = pb::RenamePasskeyRequest { id: second.id, name: "Phone".into() };
    assert_eq!(passkeys.rename_passkey(authed(&token, renamed)).await.unwrap().into_inner().name, "Phone");
    assert_eq!(audit_count(&s, &admin, user.id, "passkey_registered").await, 2);
    // The factor list names them as one factor.
    let mut mfa = pb::mfa_service_client::MfaServiceClient::new(s.channel().await);
    let factors = mfa.list_mfa_factors(authed(&token, pb::ListMfaFactorsRequest {})).await.unwrap().into_inner();
    assert_eq!(factors.factors.iter().map(|f| f.method.as_str()).collect::<Vec<_>>(), ["webauthn"]);
    assert_eq!(factors.factors[0].confirmed_at, laptop.created_at);
    assert_eq!(audit_count(&s, &admin, user.id, "passkey_renamed").await, 1);

    // Login now asks for the second step, naming the passkey.
    let step = s.login_reply("pia", USER_PASSWORD).await.unwrap();
    assert_eq!(step.mfa_required, Some(true));
    assert!(step.access_token.is_none() && step.user.is_none());
    assert_eq!(methods(&step), ["webauthn"]);
    let mfa_token = step.mfa_token.unwrap();
    let done = sign_in(&s, &mut device, &mfa_token).await.unwrap();
    assert!(done.access_token.is_some());
    assert_eq!(done.backend_config.unwrap().bearer_token, "pia-backend-token");
    assert_eq!(done.user.unwrap().username, "pia");
    // The mfa_token ended with it.
    expect_code(sign_in(&s, &mut device, &mfa_token).await, Code::Unauthenticated);
    assert_eq!(audit_count(&s, &admin, user.id, "mfa_success").await, 1);

    // Passwordless, with either passkey.
    for device in [&mut device, &mut phone] {
        let done = sign_in(&s, device, "").await.unwrap();
        assert_eq!(done.token_type.as_deref(), Some("bearer"));
        let session = done.access_token.unwrap();
        let me = s.users().await.get_me(authed(&session, pb::GetMeRequest {})).await.unwrap().into_inner();
        assert_eq!(me.username, "pia");
    }
    let listed = passkeys.list_passkeys(authed(&token, pb::ListPasskeysRequest {})).await.unwrap().into_inner();
    assert!(listed.passkeys.iter().all(|p| p.last_used_at.is_some()), "{listed:?}");

    // Deleted: that passkey no longer signs in; the other does.
    let gone = pb::DeletePasskeyRequest { id: second.id };
    passkeys.delete_passkey(authed(&token, gone)).await.unwrap();
    expect_code(passkeys.delete_passkey(authed(&token, gone)).await, Code::NotFound);
    expect_code(sign_in(&s, &mut phone, "").await, Code::Unauthenticated);
    sign_in(&s, &mut device, "").await.unwrap();
    assert_eq!(audit_count(&s, &admin, user.id, "passkey_deleted").await, 1);
    // The refusal is audited; a credential no one holds names no user (0: any user).
    assert_eq!(audit_count(&s, &admin, 0, "passkey_refused").await, 1);
    s.stop().await;
}

async fn passkeys_through_envoy_as_json(s: TestServer) {
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let api = Json::new(&envoy.url);
    let admin = api.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let created = api
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": "jules", "email": "jules@example.com", "password": USER_PASSWORD}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let token = api.login("jules", USER_PASSWORD).await;
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let mut device = SoftAuthenticator::new();

    let listed = api.get("/api/v1/users/me/passkeys", Some(&token)).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.body, json!({"passkeys": []}));
    let start = api.post("/api/v1/users/me/passkeys/start", Some(&token), json!({})).await;
    assert_eq!(start.status, 200, "{start:?}");
    assert_eq!(keys(&start.body), ["ceremony", "options"]);
    assert!(start.body["options"]["publicKey"]["challenge"].is_string());
    assert_eq!(start.body["options"]["publicKey"]["timeout"], json!(300_000));
    let credential = device.create(&start.body["options"]);
    let finish = json!({"ceremony": start.body["ceremony"], "name": "Key", "credential": credential});
    let done = api.post("/api/v1/users/me/passkeys/finish", Some(&token), finish.clone()).await;
    assert_eq!(done.status, 201, "{done:?}");
    assert_eq!(keys(&done.body), ["created_at", "id", "name"]);
    let id = done.body["id"].as_i64().unwrap();
    let again = api.post("/api/v1/users/me/passkeys/finish", Some(&token), finish).await;
    again.detail(409);
    let renamed = api
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/users/me/passkeys/{id}"),
            Some(&token),
            Some(json!({"name": "Yubi"})),
        )
        .await;
    assert_eq!(renamed.status, 200, "{renamed:?}");
    assert_eq!(renamed.body["name"], "Yubi");
    let blank = api
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/users/me/passkeys/{id}"),
            Some(&token),
            Some(json!({"name": " "})),
        )
        .await;
    blank.detail(400);
    let missing = api
        .call(reqwest::Method::PATCH, "/api/v1/users/me/passkeys/9999", Some(&token), Some(json!({"name": "x"})))
        .await;
    missing.detail(404);

    // Login lists the passkey; the second step answers the seed's LoginResponse.
    let step = api.post("/api/v1/auth/login", None, json!({"username": "jules", "password": USER_PASSWORD})).await;
    assert_eq!(keys(&step.body), ["methods", "mfa_required", "mfa_token"]);
    assert_eq!(step.body["methods"], json!(["webauthn"]));
    let mfa_token = step.body["mfa_token"].as_str().unwrap().to_owned();
    let start = api.post("/api/v1/auth/passkey/start", None, json!({"mfa_token": mfa_token})).await;
    assert_eq!(start.status, 200, "{start:?}");
    assert_eq!(start.body["options"]["publicKey"]["allowCredentials"][0]["id"], credential_id(&device));
    let assertion = device.get(&start.body["options"]);
    let finish = json!({"ceremony": start.body["ceremony"], "credential": assertion, "mfa_token": mfa_token});
    let done = api.post("/api/v1/auth/passkey/finish", None, finish.clone()).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(keys(&done.body), ["access_token", "expires_in", "token_type", "user"]);
    let replayed = api.post("/api/v1/auth/passkey/finish", None, finish).await;
    replayed.detail(401);

    // Passwordless.
    let start = api.post("/api/v1/auth/passkey/start", None, json!({})).await;
    assert_eq!(start.status, 200, "{start:?}");
    assert!(start.body["options"]["publicKey"].get("allowCredentials").is_none_or(|a| a == &json!([])));
    let assertion = device.get(&start.body["options"]);
    let done = api
        .post("/api/v1/auth/passkey/finish", None, json!({"ceremony": start.body["ceremony"], "credential": assertion}))
        .await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(keys(&done.body), ["access_token", "expires_in", "token_type", "user"]);
    let session = done.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(api.get("/api/v1/users/me", Some(&session)).await.status, 200);

    // Hostile input: clear 4xx.
    let bad = api.post("/api/v1/auth/passkey/finish", None, json!({"ceremony": "pkc_x", "credential": 5})).await;
    assert_eq!(bad.status, 400, "{bad:?}");
    let bad =
        api.post("/api/v1/auth/passkey/finish", None, json!({"ceremony": "pkc_x", "credential": {"id": 1}})).await;
    bad.detail(400);
    let bad = api.post("/api/v1/auth/passkey/finish", None, json!({"ceremony": "", "credential": {"id": "x"}})).await;
    bad.detail(400);
    let bad = api.post("/api/v1/auth/passkey/start", None, json!({"mfa_token": "mfa_forged"})).await;
    bad.detail(401);

    let deleted =
        api.call(reqwest::Method::DELETE, &format!("/api/v1/users/me/passkeys/{id}"), Some(&token), None).await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    let plain = api.post("/api/v1/auth/login", None, json!({"username": "jules", "password": USER_PASSWORD})).await;
    assert_eq!(keys(&plain.body), ["access_token", "expires_in", "token_type", "user"]);
    s.stop().await;
}

fn credential_id(device: &SoftAuthenticator) -> String {
    b64(&device.credentials.last().unwrap().id)
}

/// Many concurrent finishes of one ceremony (each with a valid assertion): exactly one session.
async fn one_ceremony_one_session_under_races(s: TestServer) {
    let s = s.restart(&[("login-throttle-threshold", "1000")]).await;
    let admin = s.admin_token().await;
    for (round, second_step) in [false, true, false, true].into_iter().enumerate() {
        let name = format!("racer{round}");
        s.create_user(&admin, &name, None).await;
        let token = s.login(&name, USER_PASSWORD).await;
        let mut device = SoftAuthenticator::new();
        register(&s, &token, &mut device, "racer").await;
        let mfa_token = if second_step {
            let reply = s.login_reply(&name, USER_PASSWORD).await.unwrap();
            reply.mfa_token.unwrap()
        } else {
            String::new()
        };
        let start = s
            .auth()
            .await
            .start_passkey_sign_in(pb::StartPasskeySignInRequest { mfa_token: mfa_token.clone() })
            .await
            .unwrap()
            .into_inner();
        let options = from_struct(start.options.unwrap());
        let mut requests = Vec::new();
        for _ in 0..6 {
            requests.push(pb::FinishPasskeySignInRequest {
                ceremony: start.ceremony.clone(),
                credential: Some(to_struct(device.get(&options))),
                mfa_token: mfa_token.clone(),
            });
        }
        let send = |mut client: AuthServiceClient<Channel>, request| async move {
            client.finish_passkey_sign_in(request).await.map(drop)
        };
        let wins = crate::mfa::race_with(&s, requests, send).await;
        assert_eq!(wins, 1, "round {round}");
    }
    s.stop().await;
}

/// Ceremonies are single-use, short-lived and bound: to the user, the mfa_token and the address.
async fn ceremonies_are_bound_and_single_use(s: TestServer) {
    let admin = s.admin_token().await;
    let ann = s.create_user(&admin, "ann", None).await;
    s.create_user(&admin, "bob", None).await;
    let (ann_token, bob_token) = (s.login("ann", USER_PASSWORD).await, s.login("bob", USER_PASSWORD).await);
    let mut ann_key = SoftAuthenticator::new();
    let mut bob_key = SoftAuthenticator::new();
    register(&s, &ann_token, &mut ann_key, "ann").await;
    register(&s, &bob_token, &mut bob_key, "bob").await;
    let mut passkeys = passkey_client(&s).await;

    // Ann's registration ceremony is useless to Bob.
    let start = passkeys.start_passkey_registration(authed(&ann_token, pb::StartPasskeyRegistrationRequest {})).await;
    let start = start.unwrap().into_inner();
    let credential = SoftAuthenticator::new().create(&from_struct(start.options.unwrap()));
    let foreign = pb::FinishPasskeyRegistrationRequest {
        ceremony: start.ceremony.clone(),
        name: String::new(),
        credential: Some(to_struct(credential)),
    };
    expect_code(passkeys.finish_passkey_registration(authed(&bob_token, foreign)).await, Code::FailedPrecondition);

    // Bob's passkey is no second step for Ann, and counts against Ann's mfa_token.
    let ann_mfa = s.login_reply("ann", USER_PASSWORD).await.unwrap().mfa_token.unwrap();
    let mut auth = s.auth().await;
    let start = auth.start_passkey_sign_in(pb::StartPasskeySignInRequest { mfa_token: ann_mfa.clone() }).await;
    let start = start.unwrap().into_inner();
    let mut options = from_struct(start.options.unwrap());
    options["publicKey"]["allowCredentials"] = json!([]);
    let wrong = pb::FinishPasskeySignInRequest {
        ceremony: start.ceremony.clone(),
        credential: Some(to_struct(bob_key.get(&options))),
        mfa_token: ann_mfa.clone(),
    };
    expect_code(auth.finish_passkey_sign_in(wrong).await, Code::Unauthenticated);
    // That ceremony is spent, even with Ann's own passkey.
    let spent = pb::FinishPasskeySignInRequest {
        ceremony: start.ceremony,
        credential: Some(to_struct(ann_key.get(&options))),
        mfa_token: ann_mfa.clone(),
    };
    expect_code(auth.finish_passkey_sign_in(spent).await, Code::Unauthenticated);
    // A passwordless ceremony is no second step, and a second step's is not passwordless.
    let passwordless = auth.start_passkey_sign_in(pb::StartPasskeySignInRequest::default()).await.unwrap().into_inner();
    let mixed = pb::FinishPasskeySignInRequest {
        ceremony: passwordless.ceremony.clone(),
        credential: Some(to_struct(ann_key.get(&from_struct(passwordless.options.clone().unwrap())))),
        mfa_token: ann_mfa.clone(),
    };
    expect_code(auth.finish_passkey_sign_in(mixed).await, Code::Unauthenticated);
    // Expired or from elsewhere: the domain refuses (time and address are parameters).
    let here =
        instachatico_auth::domain::types::ClientInfo { ip: Some("127.0.0.1".parse().unwrap()), user_agent: None };
    let elsewhere =
        instachatico_auth::domain::types::ClientInfo { ip: Some("198.51.100.7".parse().unwrap()), user_agent: None };
    let start = s.app().start_passkey_sign_in("", &here, chrono::Utc::now()).await.unwrap();
    let assertion = ann_key.get(&start.options);
    let ceremony = secrecy::ExposeSecret::expose_secret(&start.ceremony).to_owned();
    let later = chrono::Utc::now() + chrono::Duration::minutes(5);
    assert!(s.app().finish_passkey_sign_in(&ceremony, assertion.clone(), "", &here, later).await.is_err());
    assert!(
        s.app().finish_passkey_sign_in(&ceremony, assertion.clone(), "", &elsewhere, chrono::Utc::now()).await.is_err()
    );
    // Neither spent it: from here, now, it signs in.
    assert!(s.app().finish_passkey_sign_in(&ceremony, assertion, "", &here, chrono::Utc::now()).await.is_ok());
    // Ann's mfa_token still completes with her passkey (a wrong passkey is one wrong code).
    sign_in(&s, &mut ann_key, &ann_mfa).await.unwrap();
    assert!(audit_count(&s, &admin, ann.id, "passkey_refused").await >= 1);
    // Bob's passkey counted as one wrong code against Ann's mfa_token (five end it).
    assert_eq!(audit_count(&s, &admin, ann.id, "mfa_failure").await, 1);
    s.stop().await;
}

/// A passkey that does not verify is a wrong code to the mfa_token: five end it.
async fn five_refused_passkeys_end_the_mfa_token(s: TestServer) {
    let admin = s.admin_token().await;
    let user = s.create_user(&admin, "dora", None).await;
    let token = s.login("dora", USER_PASSWORD).await;
    let mut own = SoftAuthenticator::new();
    register(&s, &token, &mut own, "own").await;
    let mut stranger = SoftAuthenticator::new();
    stranger.create(&json!({"publicKey": {"rp": {"id": "localhost"}, "challenge": "AAAA", "user": {"id": "AAAA"}}}));
    let mfa_token = s.login_reply("dora", USER_PASSWORD).await.unwrap().mfa_token.unwrap();
    let mut auth = s.auth().await;
    for attempt in 1..=5 {
        let start = auth.start_passkey_sign_in(pb::StartPasskeySignInRequest { mfa_token: mfa_token.clone() }).await;
        let start = start.unwrap().into_inner();
        let finish = pb::FinishPasskeySignInRequest {
            ceremony: start.ceremony,
            credential: Some(to_struct(stranger.get(&json!({"publicKey": {
                "challenge": from_struct(start.options.unwrap())["publicKey"]["challenge"], "rpId": "localhost"}})))),
            mfa_token: mfa_token.clone(),
        };
        let message = expect_code(auth.finish_passkey_sign_in(finish).await, Code::Unauthenticated);
        let expected = if attempt < 5 { "Invalid authentication code" } else { "Too many wrong codes; sign in again" };
        assert_eq!(message, expected, "attempt {attempt}");
    }
    // The token ended: even the right passkey is refused now.
    expect_code(sign_in(&s, &mut own, &mfa_token).await, Code::Unauthenticated);
    assert_eq!(audit_count(&s, &admin, user.id, "mfa_failure").await, 5);
    assert_eq!(audit_count(&s, &admin, user.id, "passkey_refused").await, 5);
    s.stop().await;
}

/// An authenticator whose counter goes back (a clone of it signed meanwhile) is refused.
async fn a_cloned_authenticator_is_refused(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "cloned", None).await;
    let token = s.login("cloned", USER_PASSWORD).await;
    let mut device = SoftAuthenticator::new();
    register(&s, &token, &mut device, "original").await;
    let clone = device.clone();
    sign_in(&s, &mut device, "").await.unwrap();
    sign_in(&s, &mut device, "").await.unwrap();
    // The clone's counter is behind what the service stored.
    let mut clone = clone;
    expect_code(sign_in(&s, &mut clone, "").await, Code::Unauthenticated);
    sign_in(&s, &mut device, "").await.unwrap();
    s.stop().await;
}

/// Malformed requests are 400 and change nothing; the ceremony survives them.
async fn hostile_passkey_input_changes_nothing(s: TestServer) {
    let admin = s.admin_token().await;
    let user = s.create_user(&admin, "probe", None).await;
    let token = s.login("probe", USER_PASSWORD).await;
    let mut passkeys = passkey_client(&s).await;
    let start = passkeys.start_passkey_registration(authed(&token, pb::StartPasskeyRegistrationRequest {})).await;
    let start = start.unwrap().into_inner();
    let options = from_struct(start.options.clone().unwrap());
    let mut device = SoftAuthenticator::new();
    let good = device.create(&options);
    let finish = |ceremony: &str, name: &str, credential: Option<Value>| pb::FinishPasskeyRegistrationRequest {
        ceremony: ceremony.into(),
        name: name.into(),
        credential: credential.map(to_struct),
    };
    for (request, code) in [
        (finish("", "", Some(good.clone())), Code::InvalidArgument),
        (finish(&start.ceremony, "", None), Code::InvalidArgument),
        (finish(&start.ceremony, "", Some(json!({"id": "x"}))), Code::InvalidArgument),
        (finish(&start.ceremony, &"n".repeat(65), Some(good.clone())), Code::InvalidArgument),
        (finish(&start.ceremony, "a\u{0}b", Some(good.clone())), Code::InvalidArgument),
        (finish("pkc_forged", "", Some(good.clone())), Code::FailedPrecondition),
        (finish(&"pkc_".repeat(40), "", Some(good.clone())), Code::InvalidArgument),
    ] {
        expect_code(passkeys.finish_passkey_registration(authed(&token, request)).await, code);
    }
    for (id, name, code) in
        [(0, "x", Code::InvalidArgument), (1, "", Code::InvalidArgument), (777, "x", Code::NotFound)]
    {
        let request = pb::RenamePasskeyRequest { id, name: name.into() };
        expect_code(passkeys.rename_passkey(authed(&token, request)).await, code);
    }
    expect_code(
        passkeys.delete_passkey(authed(&token, pb::DeletePasskeyRequest { id: -1 })).await,
        Code::InvalidArgument,
    );
    let mut auth = s.auth().await;
    for (request, code) in [
        (pb::StartPasskeySignInRequest { mfa_token: "mfa_forged".into() }, Code::Unauthenticated),
        (pb::StartPasskeySignInRequest { mfa_token: token.clone() }, Code::Unauthenticated),
        (pb::StartPasskeySignInRequest { mfa_token: "mfa_\u{7}".into() }, Code::InvalidArgument),
    ] {
        expect_code(auth.start_passkey_sign_in(request).await, code);
    }
    expect_code(
        auth.finish_passkey_sign_in(pb::FinishPasskeySignInRequest {
            ceremony: "pkc_x".into(),
            credential: None,
            mfa_token: String::new(),
        })
        .await,
        Code::InvalidArgument,
    );
    // Nothing stored, nothing audited, and the ceremony still finishes.
    let listed = passkeys.list_passkeys(authed(&token, pb::ListPasskeysRequest {})).await.unwrap().into_inner();
    assert!(listed.passkeys.is_empty());
    assert_eq!(audit_count(&s, &admin, user.id, "passkey_refused").await, 0);
    let ok = finish(&start.ceremony, "fine", Some(good));
    passkeys.finish_passkey_registration(authed(&token, ok)).await.unwrap();
    // Sessions of others see nothing of it.
    let other = s.admin_token().await;
    let theirs = passkeys.list_passkeys(authed(&other, pb::ListPasskeysRequest {})).await.unwrap().into_inner();
    assert!(theirs.passkeys.is_empty());
    s.stop().await;
}

async fn admin_reset_clears_passkeys(s: TestServer) {
    let admin = s.admin_token().await;
    let user = s.create_user(&admin, "resetme", None).await;
    let token = s.login("resetme", USER_PASSWORD).await;
    let mut device = SoftAuthenticator::new();
    register(&s, &token, &mut device, "k").await;
    assert_eq!(methods(&s.login_reply("resetme", USER_PASSWORD).await.unwrap()), ["webauthn"]);
    let mut mfa = pb::mfa_service_client::MfaServiceClient::new(s.channel().await);
    mfa.reset_user_mfa(authed(&admin, pb::ResetUserMfaRequest { id: user.id })).await.unwrap();
    // Gone: the password alone signs in again, and the passkey does not.
    assert!(s.login_reply("resetme", USER_PASSWORD).await.unwrap().access_token.is_some());
    expect_code(sign_in(&s, &mut device, "").await, Code::Unauthenticated);
    let token = s.login("resetme", USER_PASSWORD).await;
    let listed = passkey_client(&s).await.list_passkeys(authed(&token, pb::ListPasskeysRequest {})).await;
    assert!(listed.unwrap().into_inner().passkeys.is_empty());
    s.stop().await;
}

/// A page on another origin, even a subdomain of FRONTEND_URL's host, runs no ceremony: the
/// relying party accepts FRONTEND_URL's exact origin only.
async fn a_ceremony_from_a_subdomain_origin_is_refused(s: TestServer) {
    let admin = s.admin_token().await;
    let user = s.create_user(&admin, "origins", None).await;
    let token = s.login("origins", USER_PASSWORD).await;
    let mut passkeys = passkey_client(&s).await;
    for origin in ["http://evil.localhost:5173", "http://localhost:5174", "https://localhost:5173"] {
        // Registration from there: refused, nothing stored.
        let start = passkeys.start_passkey_registration(authed(&token, pb::StartPasskeyRegistrationRequest {})).await;
        let start = start.unwrap().into_inner();
        let mut elsewhere = SoftAuthenticator { origin: origin.to_owned(), credentials: Vec::new() };
        let credential = elsewhere.create(&from_struct(start.options.unwrap()));
        let finish = pb::FinishPasskeyRegistrationRequest {
            ceremony: start.ceremony,
            name: String::new(),
            credential: Some(to_struct(credential)),
        };
        expect_code(passkeys.finish_passkey_registration(authed(&token, finish)).await, Code::PermissionDenied);
    }
    let listed = passkeys.list_passkeys(authed(&token, pb::ListPasskeysRequest {})).await.unwrap().into_inner();
    assert!(listed.passkeys.is_empty(), "{listed:?}");
    // A passkey registered from the UI's origin does not sign in from the subdomain, neither
    // passwordless nor as a second step.
    let mut device = SoftAuthenticator::new();
    register(&s, &token, &mut device, "ui").await;
    let mut moved = device.clone();
    moved.origin = "http://evil.localhost:5173".to_owned();
    expect_code(sign_in(&s, &mut moved, "").await, Code::Unauthenticated);
    let mfa_token = s.login_reply("origins", USER_PASSWORD).await.unwrap().mfa_token.unwrap();
    expect_code(sign_in(&s, &mut moved, &mfa_token).await, Code::Unauthenticated);
    // From the UI's origin the same passkey works (its counter is ahead of the refused ones).
    device.credentials.last_mut().unwrap().counter = moved.credentials.last().unwrap().counter;
    sign_in(&s, &mut device, &mfa_token).await.unwrap();
    sign_in(&s, &mut device, "").await.unwrap();
    assert_eq!(audit_count(&s, &admin, user.id, "passkey_refused").await, 5);
    s.stop().await;
}

/// Rounds of the passkey races; contenders per round.
const ROUNDS: usize = 8;
const CONTENDERS: usize = 4;

/// Concurrent sign-ins with one credential through separate ceremonies (passwordless, and as
/// second steps of separate sign-ins): the stored signature counter only moves forward, so it
/// ends at the highest counter any of them presented, whatever order they commit in.
async fn the_stored_counter_ends_at_the_highest_under_races(s: TestServer) {
    let s = s.restart(&[("login-throttle-threshold", "1000")]).await;
    let admin = s.admin_token().await;
    s.create_user(&admin, "counted", None).await;
    let token = s.login("counted", USER_PASSWORD).await;
    let mut device = SoftAuthenticator::new();
    register(&s, &token, &mut device, "shared").await;
    let mut auth = s.auth().await;
    for round in 0..ROUNDS {
        let second_step = round % 2 == 1;
        let mut requests = Vec::new();
        for _ in 0..CONTENDERS {
            let mfa_token = if second_step {
                s.login_reply("counted", USER_PASSWORD).await.unwrap().mfa_token.unwrap()
            } else {
                String::new()
            };
            let start = auth.start_passkey_sign_in(pb::StartPasskeySignInRequest { mfa_token: mfa_token.clone() });
            let start = start.await.unwrap().into_inner();
            // Each assertion carries the next counter value.
            let credential = device.get(&from_struct(start.options.unwrap()));
            requests.push(pb::FinishPasskeySignInRequest {
                ceremony: start.ceremony,
                credential: Some(to_struct(credential)),
                mfa_token,
            });
        }
        let send = |mut client: AuthServiceClient<Channel>, request| async move {
            client.finish_passkey_sign_in(request).await.map(drop)
        };
        // Any may lose to one with a higher counter that committed before it was checked
        // (refused as a counter that went back); the highest never loses.
        let wins = crate::mfa::race_with(&s, requests, send).await;
        assert!(wins >= 1, "round {round}");
        // The stored counter is the highest: the same counter again is refused (a clone)...
        let highest = device.credentials.last().unwrap().counter;
        let mut clone = device.clone();
        clone.credentials.last_mut().unwrap().counter = highest - 1;
        expect_code(sign_in(&s, &mut clone, "").await, Code::Unauthenticated);
        // ... and the next one is accepted.
        device.credentials.last_mut().unwrap().counter = highest;
        sign_in(&s, &mut device, "").await.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
    }
    s.stop().await;
}

/// Renaming and deleting one passkey at once: it ends up deleted, the rename either happened
/// before (and answers the new name) or finds nothing, and the audit says exactly that.
async fn rename_and_delete_race(s: TestServer) {
    let admin = s.admin_token().await;
    let user = s.create_user(&admin, "racy", None).await;
    let token = s.login("racy", USER_PASSWORD).await;
    let mut renamed = 0;
    for round in 0..ROUNDS {
        let mut device = SoftAuthenticator::new();
        let passkey = register(&s, &token, &mut device, "before").await;
        let (mut renamer, mut deleter) = (passkey_client(&s).await, passkey_client(&s).await);
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let (b1, b2) = (std::sync::Arc::clone(&barrier), barrier);
        let name = format!("after{round}");
        let rename = authed(&token, pb::RenamePasskeyRequest { id: passkey.id, name: name.clone() });
        let delete = authed(&token, pb::DeletePasskeyRequest { id: passkey.id });
        let rename = tokio::spawn(async move {
            b1.wait().await;
            renamer.rename_passkey(rename).await
        });
        let delete = tokio::spawn(async move {
            b2.wait().await;
            deleter.delete_passkey(delete).await
        });
        let (rename, delete) = (rename.await.unwrap(), delete.await.unwrap());
        delete.unwrap_or_else(|e| panic!("round {round}: the delete failed: {e:?}"));
        match rename {
            Ok(reply) => {
                assert_eq!(reply.into_inner().name, name, "round {round}");
                renamed += 1;
            }
            Err(status) => assert_eq!(status.code(), Code::NotFound, "round {round}: {status:?}"),
        }
        let listed = passkey_client(&s).await.list_passkeys(authed(&token, pb::ListPasskeysRequest {})).await;
        assert!(listed.unwrap().into_inner().passkeys.is_empty(), "round {round}");
    }
    assert_eq!(audit_count(&s, &admin, user.id, "passkey_renamed").await, renamed);
    assert_eq!(audit_count(&s, &admin, user.id, "passkey_deleted").await, i32::try_from(ROUNDS).unwrap());
    s.stop().await;
}

crate::on_both_backends!(
    register_list_rename_delete_and_sign_in_over_grpc,
    passkeys_through_envoy_as_json,
    one_ceremony_one_session_under_races,
    ceremonies_are_bound_and_single_use,
    a_cloned_authenticator_is_refused,
    five_refused_passkeys_end_the_mfa_token,
    hostile_passkey_input_changes_nothing,
    admin_reset_clears_passkeys,
    a_ceremony_from_a_subdomain_origin_is_refused,
    the_stored_counter_ends_at_the_highest_under_races,
    rename_and_delete_race,
);
