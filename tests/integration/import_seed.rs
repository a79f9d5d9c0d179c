//! `import-seed` (issue 16) against real sources made by the seed's own Python service
//! (`tests/seed-python`, in `.venv-seed` with its pinned requirements: `./scripts/test` installs
//! it), a SQLite file and a PostgreSQL database, imported into both of our databases, then
//! checked through Envoy's JSON face: every password, every backend token, a Python access token
//! (LEGACY_JWT_SECRET_KEY), dry run, re-run, refusals.

use std::path::{Path, PathBuf};
use std::process::Command;

use instachatico_auth::db::models::{audit, sessions, users};
use instachatico_auth::model::{AuditQuery, UserId};
use serde_json::{Value, json};

use crate::common::{Envoy, Json, Options, PgTestDb, TestServer, skipped};

/// The Python service's JWT_SECRET_KEY (short, as an operator may have set it).
const PY_JWT_SECRET: &str = "python-service-secret";
/// A Fernet key only the source knows: its tokens need --source-encryption-key.
const SOURCE_ONLY_KEY: &str = "oVthGnEh3rSyYPEiVKrqMbPjEBNx9di2Ol1t789IF3k=";
const PY_PASSWORD: &str = "Secure_password123!";
const SEED_USERS: usize = 3;

/// Seed section 2.2's audit_logs, as written there (the seed's code never creates it).
/// SQLite takes it as it is: SERIAL, INET and JSONB are type names to it.
const EXTRAS: &str = r#"
import json, os, sys
from cryptography.fernet import Fernet
from sqlalchemy import text
from app.database import SessionLocal, engine
from app.models import User, UserBackend
from app.services.crypto import encrypt_token
from app.utils.security import hash_password

password, source_only_key = sys.argv[1], sys.argv[2]
pw = hash_password(password)
db = SessionLocal()
def add(name, email, url=None, token=None):
    user = User(username=name, email=email, password_hash=pw, is_active=True)
    db.add(user)
    db.flush()
    if url:
        db.add(UserBackend(user_id=user.id, instagram_username=f"{name}_ig", api_base_url=url,
                           bearer_token_encrypted=token, is_active=True))
    return user.id
ids = {
    "bad": add("bad name", "bad@example.com"),
    "dup": add("USER0001", "other@example.com"),
    "ftp": add("ftpuser", "ftp@example.com", "ftp://files.example/api", encrypt_token("ftp_token")),
    "rekeyed": add("rekeyed", "rekeyed@example.com", "https://rekeyed.example/api/v1",
                   Fernet(source_only_key.encode()).encrypt(b"rekeyed_token").decode()),
    "lostkey": add("lostkey", "lostkey@example.com", "http://lost.example/api/v1",
                   Fernet(Fernet.generate_key()).encrypt(b"lost_token").decode()),
}
db.commit()
with engine.begin() as c:
    c.execute(text("""CREATE TABLE audit_logs (
        id SERIAL PRIMARY KEY,
        user_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
        action VARCHAR(50) NOT NULL,
        ip_address INET,
        user_agent TEXT,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        metadata JSONB
    )"""))
    c.execute(text("INSERT INTO audit_logs (id, user_id, action, ip_address, user_agent, metadata) VALUES "
                   "(1, 1, 'login', '10.1.2.3', 'Mozilla/5.0', '{\"method\": \"password\"}'), "
                   "(2, NULL, 'login', '2001:db8::1', 'curl/8', NULL), "
                   f"(3, {ids['bad']}, 'update_config', '10.1.2.4', 'Mozilla/5.0', '{{}}')"))
    if engine.dialect.name == "sqlite":
        # PostgreSQL's INET would not hold it; a SQLite deployment's table might.
        c.execute(text("INSERT INTO audit_logs (id, user_id, action, ip_address) VALUES (4, 1, 'login', 'not-an-ip')"))
print(json.dumps(ids))
"#;

/// python-jose's token, made by the seed's `create_access_token`.
const MINT: &str = r#"
import sys
from app.services.auth import create_access_token
print(create_access_token(int(sys.argv[1]), sys.argv[2]))
"#;

/// A change in the source after the first import.
const CHANGE: &str = r#"
import sys
from app.database import SessionLocal
from app.models import User
from app.utils.security import hash_password
db = SessionLocal()
user = db.query(User).filter(User.username == "user0003").first()
user.password_hash = hash_password(sys.argv[1])
user.email = "user0003-new@example.com"
db.commit()
"#;

#[derive(Clone, Copy, Debug)]
enum SourceKind {
    Sqlite,
    Postgres,
}

/// A database made by the seed's Python service.
struct Source {
    /// What `--from` takes.
    url: String,
    /// What SQLAlchemy takes.
    python_url: String,
    python: PathBuf,
    encryption_key: String,
    _pg: Option<PgTestDb>,
    _dir: tempfile::TempDir,
}

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seed-python")
}

/// `.venv-seed`'s Python with the seed's requirements, or `None` (reported by `skipped`).
fn seed_python() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-seed/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import fastapi, sqlalchemy, psycopg2, jose, passlib, cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(python)
    } else {
        skipped("no .venv-seed with the seed's requirements (./scripts/test installs it): the import test did not run");
        None
    }
}

impl Source {
    async fn create(kind: SourceKind, encryption_key: &str) -> Option<Self> {
        Self::create_with(kind, encryption_key, SEED_USERS).await
    }

    async fn create_with(kind: SourceKind, encryption_key: &str, users: usize) -> Option<Self> {
        let python = seed_python()?;
        let dir = tempfile::tempdir().unwrap();
        let (url, python_url, pg) = match kind {
            SourceKind::Sqlite => {
                let path = dir.path().join("seed.db");
                (path.display().to_string(), format!("sqlite:///{}", path.display()), None)
            }
            SourceKind::Postgres => {
                let pg = PgTestDb::create().await?;
                let python_url = pg.url.replacen("postgres://", "postgresql://", 1);
                (pg.url.clone(), python_url, Some(pg))
            }
        };
        let source = Self { url, python_url, python, encryption_key: encryption_key.to_owned(), _pg: pg, _dir: dir };
        let users = users.to_string();
        source.python(&["scripts/seed_users.py", "--users", &users, "--password", PY_PASSWORD]);
        Some(source)
    }

    /// Runs the seed's Python in its directory with its settings; returns stdout.
    fn python(&self, args: &[&str]) -> String {
        let out = Command::new(&self.python)
            .current_dir(seed_dir())
            .env("PYTHONPATH", seed_dir())
            .env("DATABASE_URL", &self.python_url)
            .env("JWT_SECRET_KEY", PY_JWT_SECRET)
            .env("ENCRYPTION_KEY", &self.encryption_key)
            .args(args)
            .output()
            .expect("python runs");
        assert!(out.status.success(), "python {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn run(&self, code: &str, args: &[&str]) -> String {
        let mut all = vec!["-c", code];
        all.extend_from_slice(args);
        self.python(&all)
    }

    fn mint(&self, user_id: i64, username: &str) -> String {
        self.run(MINT, &[&user_id.to_string(), username]).trim().to_owned()
    }
}

/// Runs `import-seed` against `s`'s database, feeding `stdin`.
fn import(s: &TestServer, args: &[&str], stdin: &str) -> (bool, String) {
    import_into(&s.database_url, &s.encryption_key, args, stdin)
}

fn import_into(database_url: &str, encryption_key: &str, args: &[&str], stdin: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", database_url),
        ("JWT_SECRET_KEY", crate::common::JWT_SECRET),
        ("ENCRYPTION_KEY", encryption_key),
        ("BCRYPT_COST", "10"),
        ("LOG_LEVEL", "warn"),
    ];
    let args: Vec<&str> = ["import-seed"].iter().chain(args).copied().collect();
    let out = crate::cli::run(dir.path(), &env, &args, stdin);
    let text = crate::cli::text(&out);
    crate::common::append_to_log(&text.lines().map(str::to_owned).collect::<Vec<_>>());
    (out.status.success(), text)
}

fn assert_has(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
}

async fn user_count(s: &TestServer) -> i64 {
    users::count(&mut s.app().db().get().await.unwrap()).await.unwrap()
}

/// The server a migration runs: Python tokens accepted, no bootstrap admin (whose id 1 would
/// take the id of the source's first user).
async fn migration_server(backend: crate::common::Backend) -> Option<TestServer> {
    let options = Options::default().arg("admin-username", "").arg("legacy-jwt-secret-key", PY_JWT_SECRET);
    TestServer::start_with(backend, options).await
}

async fn import_and_switch(backend: crate::common::Backend, kind: SourceKind) {
    let Some(s) = migration_server(backend).await else { return };
    let Some(source) = Source::create(kind, &s.encryption_key).await else { return };
    let ids: Value = serde_json::from_str(&source.run(EXTRAS, &[PY_PASSWORD, SOURCE_ONLY_KEY])).unwrap();
    let id = |k: &str| ids[k].as_i64().unwrap();
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let api = Json::new(&envoy.url);
    let from = source.url.as_str();
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), format!("{SOURCE_ONLY_KEY}\n")).unwrap();
    let key_path = key_file.path().to_str().unwrap();
    let sqlite = matches!(kind, SourceKind::Sqlite);
    let audit_rows = if sqlite { 4 } else { 3 };

    // Dry run: counts and refusals, nothing written.
    let (ok, text) =
        import(&s, &["--from", from, "--admins", "user0001", "--source-encryption-key", key_path, "--dry-run"], "");
    assert!(ok, "{text}");
    assert_has(
        &text,
        &[
            "users:         8 in source: 6 new, 0 updated, 0 unchanged, 2 refused",
            "user_backends: 6 in source: 4 new, 0 updated, 0 unchanged, 2 refused",
            &format!("refused: users {}: username may contain only letters", id("bad")),
            &format!("refused: users {}: username duplicates user 1's under case-insensitive comparison", id("dup")),
            &format!("refused: user_backends of user {}: api_base_url must be an absolute http", id("ftp")),
            &format!("refused: user_backends of user {}: bearer token decrypts with neither", id("lostkey")),
            "1 backend token(s) re-encrypted",
            "nothing written",
            &format!("note: 1 backend token(s) decrypt with no key (users {})", id("lostkey")),
        ],
    );
    assert_has(&text, &[format!("audit_logs:    {audit_rows} in source: 3 new").as_str()]);
    if sqlite {
        assert_has(&text, &["refused: audit_logs 4: ip_address is not an IP address"]);
    }
    assert!(!text.contains("bearer_token_") && !text.contains("rekeyed_token") && !text.contains(SOURCE_ONLY_KEY));
    assert_eq!(user_count(&s).await, 0, "a dry run writes nothing");

    // Tokens that no key decrypts: the import fails, names them, and writes nothing.
    let (ok, text) = import(&s, &["--from", from, "--admins", "user0001"], "");
    assert!(!ok, "{text}");
    assert_has(
        &text,
        &[
            &format!("refused: user_backends of user {}: bearer token decrypts with neither", id("rekeyed")),
            &format!("refused: user_backends of user {}: bearer token decrypts with neither", id("lostkey")),
            "nothing was imported",
            "--skip-undecryptable",
        ],
    );
    assert_eq!(user_count(&s).await, 0);

    // The import: the source's key from stdin; the one token nobody can read is skipped.
    let args = ["--from", from, "--admins", "user0001", "--source-encryption-key", "-", "--skip-undecryptable"];
    let (ok, text) = import(&s, &args, SOURCE_ONLY_KEY);
    assert!(ok, "{text}");
    assert_has(&text, &["imported: ", "users:         8 in source: 6 new", "1 active admin(s)"]);
    assert_eq!(user_count(&s).await, 6);

    // Every user signs in with the Python password, and gets the token Python encrypted.
    for i in 1..=SEED_USERS {
        let reply = api
            .post("/api/v1/auth/login", None, json!({"username": format!("user{i:04}"), "password": PY_PASSWORD}))
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body["user"]["id"], json!(i), "ids are kept");
        assert_eq!(reply.body["backend_config"]["bearer_token"], json!(format!("bearer_token_{i}")));
        assert_eq!(
            reply.body["backend_config"]["api_base_url"],
            json!(format!("http://localhost:{}/api/v1", 4000 + i))
        );
    }
    let rekeyed = api.post("/api/v1/auth/login", None, json!({"username": "rekeyed", "password": PY_PASSWORD})).await;
    assert_eq!(rekeyed.body["backend_config"]["bearer_token"], json!("rekeyed_token"), "{rekeyed:?}");
    for name in ["ftpuser", "lostkey"] {
        let reply = api.post("/api/v1/auth/login", None, json!({"username": name, "password": PY_PASSWORD})).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.body["backend_config"].is_null(), "refused backend not imported: {reply:?}");
    }
    let refused = api.post("/api/v1/auth/login", None, json!({"username": "USER0001", "password": "x"})).await;
    assert_eq!(refused.status, 401);

    // Audit rows, with addresses, agents and metadata; the refused user's row keeps its id aside.
    let mut conn = s.app().db().get().await.unwrap();
    let (entries, _) = audit::query(&mut conn, &AuditQuery::default(), 200, 0).await.unwrap();
    let seeded: Vec<_> = entries.iter().filter(|e| e.action == "login" || e.action == "update_config").collect();
    assert_eq!(seeded.len(), 3, "{entries:?}");
    let first = seeded.iter().find(|e| e.ip_address.as_deref() == Some("10.1.2.3")).unwrap();
    assert_eq!(
        (first.user_id, first.user_agent.as_deref(), &first.metadata),
        (Some(UserId(1)), Some("Mozilla/5.0"), &json!({"method": "password"}))
    );
    assert!(seeded.iter().any(|e| e.ip_address.as_deref() == Some("2001:db8::1") && e.user_id.is_none()));
    let orphan = seeded.iter().find(|e| e.action == "update_config").unwrap();
    assert_eq!((orphan.user_id, &orphan.metadata), (None, &json!({"seed_user_id": id("bad")})));
    drop(conn);

    // A token minted by the Python service: GetMe, then Refresh, then dead at Logout.
    let legacy = source.mint(2, "user0002");
    let me = api.get("/api/v1/users/me", Some(&legacy)).await;
    assert_eq!((me.status, &me.body["username"]), (200, &json!("user0002")), "{me:?}");
    let refreshed = api.post("/api/v1/auth/refresh", Some(&legacy), json!({})).await;
    assert_eq!(refreshed.status, 200, "{refreshed:?}");
    let fresh = refreshed.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(api.get("/api/v1/users/me", Some(&fresh)).await.status, 200);
    let bye = api.post("/api/v1/auth/logout", Some(&legacy), json!({})).await;
    assert_eq!(bye.status, 200, "{bye:?}");
    assert_eq!(api.get("/api/v1/users/me", Some(&legacy)).await.status, 401, "the Python token ended");
    assert_eq!(api.get("/api/v1/users/me", Some(&fresh)).await.status, 401, "with its session");

    // The source changes; the re-run brings over only that, and nothing twice.
    source.run(CHANGE, &["Changed_password456!"]);
    let (ok, text) = import(&s, &args, SOURCE_ONLY_KEY);
    assert!(ok, "{text}");
    assert_has(
        &text,
        &[
            "users:         8 in source: 0 new, 1 updated, 5 unchanged, 2 refused",
            "user_backends: 6 in source: 0 new, 0 updated, 4 unchanged, 2 refused",
            &format!("audit_logs:    {audit_rows} in source: 0 new, 0 updated, 3 unchanged"),
            "imported: 0 new, 1 updated",
        ],
    );
    let old = api.post("/api/v1/auth/login", None, json!({"username": "user0003", "password": PY_PASSWORD})).await;
    assert_eq!(old.status, 401);
    let new =
        api.post("/api/v1/auth/login", None, json!({"username": "user0003", "password": "Changed_password456!"})).await;
    assert_eq!((new.status, &new.body["user"]["email"]), (200, &json!("user0003-new@example.com")), "{new:?}");
    let (ok, text) = import(&s, &args, SOURCE_ONLY_KEY);
    assert!(ok && text.contains("imported: 0 new, 0 updated"), "{text}");

    // New users never collide with imported ids (PostgreSQL's sequences were moved on).
    let admin = api.login("user0001", PY_PASSWORD).await;
    let created = api
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": "newcomer", "email": "newcomer@example.com", "password": PY_PASSWORD}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert!(created.body["id"].as_i64().unwrap() > id("lostkey"), "{created:?}");

    // Without LEGACY_JWT_SECRET_KEY a Python token is refused, as before.
    drop(envoy);
    let s = s.restart(&[("legacy-jwt-secret-key", "")]).await;
    let Some(envoy) = Envoy::start(&[s.upstream()]).await else { return };
    let api = Json::new(&envoy.url);
    let legacy = source.mint(1, "user0001");
    assert_eq!(api.get("/api/v1/users/me", Some(&legacy)).await.status, 401);
    s.stop().await;
}

async fn from_a_sqlite_source(s: TestServer) {
    let backend = s.backend;
    s.stop().await;
    import_and_switch(backend, SourceKind::Sqlite).await;
}

async fn from_a_postgres_source(s: TestServer) {
    let backend = s.backend;
    s.stop().await;
    import_and_switch(backend, SourceKind::Postgres).await;
}

/// A migration server with a SQLite source made by the seed and imported, behind Envoy.
async fn imported(s: TestServer) -> Option<(TestServer, Source, Envoy, Json)> {
    let backend = s.backend;
    s.stop().await;
    let s = migration_server(backend).await?;
    let source = Source::create(SourceKind::Sqlite, &s.encryption_key).await?;
    let (ok, text) = import(&s, &["--from", &source.url, "--admins", "user0001"], "");
    assert!(ok, "{text}");
    let envoy = Envoy::start(&[s.upstream()]).await?;
    let api = Json::new(&envoy.url);
    Some((s, source, envoy, api))
}

/// Many first uses of one Python token at once bind it to one session (and audit it once); its
/// logout ends it for all.
async fn concurrent_first_uses_bind_one_session(s: TestServer) {
    let Some((s, source, _envoy, api)) = imported(s).await else { return };
    for user in 1..=SEED_USERS as i64 {
        let token = source.mint(user, &format!("user{user:04}"));
        let calls = (0..8).map(|i| {
            let (api, token) = (api.clone(), token.clone());
            async move {
                // Reads and a refresh race for the first use.
                if i % 4 == 0 {
                    api.post("/api/v1/auth/refresh", Some(&token), json!({})).await
                } else {
                    api.get("/api/v1/users/me", Some(&token)).await
                }
            }
        });
        for reply in futures_util::future::join_all(calls).await {
            assert_eq!(reply.status, 200, "{reply:?}");
        }
        let mut conn = s.app().db().get().await.unwrap();
        let live = sessions::list_live_for_user(&mut conn, UserId(user as i32), chrono::Utc::now()).await.unwrap();
        assert_eq!(live.len(), 1, "one session: {live:?}");
        assert!(live[0].id.as_str().starts_with("legacy-"));
        let filter = AuditQuery {
            user_id: Some(UserId(user as i32)),
            action: Some("legacy_session_bound".into()),
            ..Default::default()
        };
        assert_eq!(audit::query(&mut conn, &filter, 10, 0).await.unwrap().1, 1);
        drop(conn);
        assert_eq!(api.post("/api/v1/auth/logout", Some(&token), json!({})).await.status, 200);
        assert_eq!(api.get("/api/v1/users/me", Some(&token)).await.status, 401);
    }
    s.stop().await;
}

/// A password reset made here before a Python token's first use ends it too: it cannot start
/// a session any more.
async fn a_reset_before_first_use_ends_python_tokens(s: TestServer) {
    let Some((s, source, _envoy, api)) = imported(s).await else { return };
    let token = source.mint(2, "user0002");
    let admin = api.login("user0001", PY_PASSWORD).await;
    let reset =
        api.post("/api/v1/users/2/reset-password", Some(&admin), json!({"new_password": "Reset_password789!"})).await;
    assert_eq!(reset.status, 200, "{reset:?}");
    assert_eq!(api.get("/api/v1/users/me", Some(&token)).await.status, 401);
    s.stop().await;
}

/// A re-import that changes a password races the user's sign-ins with the old one, each round:
/// whichever commits first, no session signed in with the old password outlives the import,
/// and nothing answers 500.
async fn a_reimport_ends_sessions_of_the_old_password(s: TestServer) {
    let Some((s, source, _envoy, api)) = imported(s).await else { return };
    let mut old = PY_PASSWORD.to_owned();
    let (mut signed_in, mut refused) = (0, 0);
    for round in 0..4 {
        let new = format!("Round_password{round}!");
        source.run(CHANGE, &[&new]);
        // Spread over the import's run, so that some commit before it and some after.
        let logins = [0, 200, 400, 800].map(|delay_ms| {
            let (api, old) = (api.clone(), old.clone());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                api.post("/api/v1/auth/login", None, json!({"username": "user0003", "password": old})).await
            }
        });
        let (db, key, from) = (s.database_url.clone(), s.encryption_key.clone(), source.url.clone());
        // Later each round: the first rounds' imports commit before any sign-in, the last ones after some.
        let start = std::time::Duration::from_millis(round * 300);
        let reimport = tokio::task::spawn_blocking(move || {
            std::thread::sleep(start);
            import_into(&db, &key, &["--from", &from], "")
        });
        let (replies, reimported) = tokio::join!(futures_util::future::join_all(logins), reimport);
        let (ok, text) = reimported.unwrap();
        assert!(ok && text.contains("0 new, 1 updated"), "{text}");
        for reply in replies {
            match reply.status {
                200 => signed_in += 1,
                401 => refused += 1,
                _ => panic!("{reply:?}"),
            }
        }
        let mut conn = s.app().db().get().await.unwrap();
        let live = sessions::list_live_for_user(&mut conn, UserId(3), chrono::Utc::now()).await.unwrap();
        assert!(live.is_empty(), "round {round}: a session of the old password survived: {live:?}");
        drop(conn);
        api.login("user0003", &new).await;
        let mut conn = s.app().db().get().await.unwrap();
        sessions::revoke_all_for_user(&mut conn, UserId(3), None, chrono::Utc::now()).await.unwrap();
        old = new;
    }
    eprintln!("old-password sign-ins: {signed_in} before the import committed, {refused} after");
    s.stop().await;
}

/// Two imports of one source at once: one brings everything over, the other finds it there
/// ("0 new"), and nothing is copied twice or fails.
async fn two_imports_at_once_copy_once(s: TestServer) {
    let backend = s.backend;
    s.stop().await;
    let Some(s) = migration_server(backend).await else { return };
    // Enough rows that the two transactions overlap.
    let Some(source) = Source::create_with(SourceKind::Postgres, &s.encryption_key, 1000).await else { return };
    source.run(EXTRAS, &[PY_PASSWORD, SOURCE_ONLY_KEY]);
    let runs = (0..2).map(|_| {
        let (db, key, from) = (s.database_url.clone(), s.encryption_key.clone(), source.url.clone());
        tokio::task::spawn_blocking(move || {
            let args = ["--from", from.as_str(), "--source-encryption-key", "-", "--skip-undecryptable"];
            import_into(&db, &key, &args, SOURCE_ONLY_KEY)
        })
    });
    let outputs: Vec<(bool, String)> =
        futures_util::future::join_all(runs).await.into_iter().map(Result::unwrap).collect();
    for (ok, text) in &outputs {
        assert!(ok, "{text}");
    }
    let firsts = outputs.iter().filter(|(_, t)| t.contains("users:         1005 in source: 1003 new")).count();
    let seconds = outputs.iter().filter(|(_, t)| t.contains("imported: 0 new, 0 updated")).count();
    assert_eq!((firsts, seconds), (1, 1), "{outputs:?}");
    assert_eq!(user_count(&s).await, 1003);
    let mut conn = s.app().db().get().await.unwrap();
    let (entries, _) = audit::query(&mut conn, &AuditQuery::default(), 200, 0).await.unwrap();
    assert_eq!(entries.iter().filter(|e| e.action == "login" || e.action == "update_config").count(), 3);
    drop(conn);
    s.stop().await;
}

crate::on_both_backends!(
    two_imports_at_once_copy_once,
    a_reimport_ends_sessions_of_the_old_password,
    from_a_sqlite_source,
    from_a_postgres_source,
    concurrent_first_uses_bind_one_session,
    a_reset_before_first_use_ends_python_tokens
);
