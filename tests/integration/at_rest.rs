//! Data at rest (issue 11, point 11): what people type into the username box is kept only as a
//! keyed hash, and the SQLite files and their directory are private to the service's user.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use instachatico_auth::db::schema::login_throttles;
use instachatico_auth::pb;
use tonic::Code;

use crate::common::{Backend, Options, TestServer, expect_code};

/// A password typed into the username box must not be stored as a plain (crackable) hash.
async fn unknown_names_are_stored_as_keyed_hashes(s: TestServer) {
    let typed = "Typo_Password1!";
    let login = pb::LoginRequest { username: typed.into(), password: "whatever".into() };
    expect_code(s.auth().await.login(login).await, Code::Unauthenticated);

    let mut conn = s.app().db().get().await.unwrap();
    let conn = &mut conn;
    let subjects: Vec<String> = instachatico_auth::db_run!(conn, "test::login_throttle_subjects": {
        login_throttles::table.select(login_throttles::subject).load(conn).await.unwrap()
    });
    let unknown: Vec<&String> = subjects.iter().filter(|s| s.starts_with("login:")).collect();
    assert_eq!(unknown.len(), 1, "{subjects:?}");
    use sha2::Digest;
    let plain = instachatico_auth::crypto::hex(&sha2::Sha256::digest(typed.to_lowercase()));
    let hex = unknown[0].trim_start_matches("login:");
    assert_eq!(hex.len(), 32, "{hex}");
    assert!(!plain.contains(hex) && !hex.contains(&plain[..16]), "an unkeyed SHA-256 of what was typed is stored");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_and_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let db = root.path().join("data").join("nested").join("auth.db");
    let options = Options::default().arg("database-url", db.to_string_lossy());
    let s = TestServer::start_with(Backend::Sqlite, options).await.unwrap();
    // Writes happen (admin bootstrap, a login), so the WAL exists.
    s.admin_token().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root.path().join("data")), 0o700);
    assert_eq!(mode(db.parent().unwrap()), 0o700);
    assert_eq!(mode(&db), 0o600);
    for suffix in ["-wal", "-shm"] {
        let file = db.with_file_name(format!("auth.db{suffix}"));
        assert!(file.exists(), "{} exists in WAL mode", file.display());
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    s.stop().await;
}

crate::on_both_backends!(unknown_names_are_stored_as_keyed_hashes);
