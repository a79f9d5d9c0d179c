//! Drop-in migration from the seed's Python deployment: a `$2b$12$` hash made by Python bcrypt
//! and a Fernet token made by Python `cryptography` work unchanged.

use chrono::Utc;
use instachatico_auth::db::models::{backends, users};
use instachatico_auth::model::{BackendRecord, NewUserRecord, Role};

use crate::common::{TestServer, python_fixture};

async fn python_hash_and_fernet_token_are_accepted(s: TestServer) {
    let fx = python_fixture();
    let field = |k: &str| fx[k].as_str().unwrap().to_owned();
    let hash = field("bcrypt_hash");
    assert!(hash.starts_with("$2b$12$"));
    let now = Utc::now();
    let mut conn = s.app().db().get().await.unwrap();
    let user = users::insert(
        &mut conn,
        &NewUserRecord {
            username: "pyuser".into(),
            email: "pyuser@example.com".into(),
            password_hash: hash.clone(),
            role: Role::User,
            created_at: now,
        },
    )
    .await
    .unwrap();
    backends::upsert(
        &mut conn,
        &BackendRecord {
            user_id: user.id,
            instagram_username: "py_ig".into(),
            api_base_url: "http://localhost:4291/api/v1".into(),
            encrypted_token: field("fernet_token"),
            updated_at: now,
        },
    )
    .await
    .unwrap();
    drop(conn);

    let reply = s.login_reply("pyuser", &field("password")).await.expect("python hash verifies");
    let backend = reply.backend_config.unwrap();
    assert_eq!(backend.bearer_token, field("bearer_token"), "python Fernet token decrypts");
    // The stored hash is kept as it is (cost 12 is not below the configured cost).
    let mut conn = s.app().db().get().await.unwrap();
    let (row, _) = users::find(&mut conn, user.id).await.unwrap().unwrap();
    assert_eq!(row.password_hash, hash);
    s.stop().await;
}

crate::on_both_backends!(python_hash_and_fernet_token_are_accepted);
