//! Drop-in migration from the seed's Python deployment: a `$2b$12$` hash made by Python bcrypt
//! and a Fernet token made by Python `cryptography` work unchanged.

use chrono::Utc;
use instachatico_auth::db::models::backends::{self, NewBackendRow};
use instachatico_auth::db::models::users::{self, NewUserRow};

use crate::common::{TestServer, python_fixture};

async fn python_hash_and_fernet_token_are_accepted(s: TestServer) {
    let fx = python_fixture();
    let field = |k: &str| fx[k].as_str().unwrap().to_owned();
    let hash = field("bcrypt_hash");
    assert!(hash.starts_with("$2b$12$"));
    let now = Utc::now().naive_utc();
    let mut conn = s.app().db().get().await.unwrap();
    let user = users::insert(
        &mut conn,
        &NewUserRow {
            username: "pyuser",
            email: "pyuser@example.com",
            password_hash: &hash,
            role: "user",
            is_active: true,
            created_at: now,
            updated_at: now,
        },
    )
    .await
    .unwrap();
    backends::upsert(
        &mut conn,
        &NewBackendRow {
            user_id: user.id,
            instagram_username: "py_ig",
            api_base_url: "http://localhost:4291/api/v1",
            bearer_token_encrypted: &field("fernet_token"),
            is_active: true,
            created_at: now,
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
