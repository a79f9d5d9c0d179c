//! The binary itself: operator commands (secrets from stdin, never argv), start-up checks on
//! keys, development key generation, and graceful shutdown on SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tonic::Code;

use crate::common::{Backend, JWT_SECRET, PgTestDb, ServiceProcess, TestServer, expect_code};

const BIN: &str = env!("CARGO_BIN_EXE_instachatico-auth");

/// Runs the binary in `dir` with only `env` set, feeding `stdin`.
pub(crate) fn run(dir: &Path, env: &[(&str, &str)], args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn binary");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().expect("binary runs")
}

pub(crate) fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn cli_manages_users(s: TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", s.database_url.as_str()),
        ("JWT_SECRET_KEY", JWT_SECRET),
        ("ENCRYPTION_KEY", s.encryption_key.as_str()),
        ("BCRYPT_COST", "10"),
        ("LOG_LEVEL", "warn"),
    ];
    let cli = |args: &[&str], stdin: &str| run(dir.path(), &env, args, stdin);

    let out = cli(
        &[
            "create-user",
            "--username",
            "bob",
            "--email",
            "bob@example.com",
            "--backend-url",
            "http://localhost:4292/api/v1",
            "--instagram-username",
            "bob_ig",
        ],
        "Bob_password123!\nbob-backend-token\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("created user bob"));
    let reply = s.login_reply("bob", "Bob_password123!").await.unwrap();
    let backend = reply.backend_config.unwrap();
    assert_eq!(
        (backend.api_base_url.as_str(), backend.bearer_token.as_str()),
        ("http://localhost:4292/api/v1", "bob-backend-token")
    );
    assert_eq!(reply.user.unwrap().instagram_username, "bob_ig");

    // Errors are clear and change nothing.
    let dup = cli(&["create-user", "--username", "BOB", "--email", "x@example.com"], "Bob_password123!\n");
    assert!(!dup.status.success() && text(&dup).contains("username already exists"), "{}", text(&dup));
    let weak = cli(&["create-user", "--username", "weakling", "--email", "w@example.com"], "weak\n");
    assert!(!weak.status.success() && text(&weak).contains("password"), "{}", text(&weak));
    assert!(!text(&weak).contains("weak\n"));
    let missing = cli(
        &["create-user", "--username", "tok", "--email", "tok@example.com", "--backend-url", "http://x.example"],
        "Tok_password123!\n",
    );
    assert!(!missing.status.success() && text(&missing).contains("stdin ended"), "{}", text(&missing));

    let out = cli(&["deactivate", "--username", "bob"], "");
    assert!(out.status.success(), "{}", text(&out));
    expect_code(s.login_reply("bob", "Bob_password123!").await, Code::PermissionDenied);
    assert!(cli(&["activate", "--username", "bob@example.com"], "").status.success());
    s.login("bob", "Bob_password123!").await;

    let out = cli(&["reset-password", "--username", "bob"], "Reset_password789!\n");
    assert!(out.status.success(), "{}", text(&out));
    expect_code(s.login_reply("bob", "Bob_password123!").await, Code::Unauthenticated);
    s.login("bob", "Reset_password789!").await;
    assert!(!cli(&["reset-password", "--username", "nobody"], "Reset_password789!\n").status.success());

    // A service's key: printed once on stdout (the only line there), nothing secret on argv.
    let out = cli(&["create-api-key", "--service-account", "billing", "--name", "prod", "--scope", "users:read"], "");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let key = stdout.trim();
    assert!(key.starts_with("iak_") && stdout.lines().count() == 1, "{stdout:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("created service account billing"), "{}", text(&out));
    let mut users = s.users().await;
    users.list_users(crate::common::authed(key, instachatico_auth::pb::ListUsersRequest::default())).await.unwrap();
    expect_code(
        users.get_me(crate::common::authed(key, instachatico_auth::pb::GetMeRequest {})).await,
        Code::PermissionDenied,
    );
    let bad = cli(&["create-api-key", "--service-account", "billing", "--name", "x", "--scope", "root"], "");
    assert!(!bad.status.success() && text(&bad).contains("scopes"), "{}", text(&bad));
    let second = cli(&["create-api-key", "--service-account", "BILLING", "--name", "two", "--scope", "audit:read"], "");
    assert!(second.status.success() && !text(&second).contains("created service account"), "{}", text(&second));

    let out = cli(&["create-admin", "--username", "root2", "--email", "root2@example.com"], "Root_password123!\n");
    assert!(out.status.success(), "{}", text(&out));
    let token = s.login("root2", "Root_password123!").await;
    let mut users = s.users().await;
    users.list_users(crate::common::authed(&token, instachatico_auth::pb::ListUsersRequest::default())).await.unwrap();
    s.stop().await;
}

/// Runs `serve` expecting it to stop by itself (a refused start); killed after 30 s.
fn serve_expecting_refusal(dir: &Path, env: &[(&str, &str)]) -> String {
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .env_clear()
        .envs([("PORT", "0"), ("METRICS_ADDR", "off"), ("BCRYPT_COST", "10")])
        .envs(env.iter().copied())
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn binary");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the service started instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    text(&out)
}

/// A wrong ENCRYPTION_KEY is found at start-up, before any login fails on it: production
/// refuses to start; development starts, says so loudly, and health reports it.
async fn a_wrong_encryption_key_is_found_at_start_up(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "keyed", Some(("http://localhost:4291/api/v1", "backend-token-1"))).await;
    let wrong = instachatico_auth::crypto::secrets::TokenCipher::generate_key();
    let dir = tempfile::tempdir().unwrap();
    let env =
        [("DATABASE_URL", s.database_url.as_str()), ("JWT_SECRET_KEY", JWT_SECRET), ("ENCRYPTION_KEY", wrong.as_str())];
    let mut production = env.to_vec();
    production.push(("APP_ENV", "production"));
    let t = serve_expecting_refusal(dir.path(), &production);
    assert!(t.contains("cannot decrypt 1 of 1 sampled backend tokens"), "{t}");
    assert!(!t.contains(&wrong) && !t.contains("backend-token-1"), "no secret in the message");

    let service = crate::common::ServiceProcess::spawn(&env);
    let log = service.log().join("\n");
    assert!(log.contains("cannot decrypt 1 of 1 sampled backend tokens"), "{log}");
    let mut health = instachatico_auth::pb::health_service_client::HealthServiceClient::new(service.channel().await);
    let reply = health.check(instachatico_auth::pb::CheckRequest {}).await.unwrap().into_inner();
    assert_eq!((reply.status.as_str(), reply.encryption_keys.as_str()), ("unhealthy", "unreadable"));
    assert_eq!(reply.database, "connected");
    drop(service);
    s.stop().await;
}

crate::on_both_backends!(cli_manages_users, a_wrong_encryption_key_is_found_at_start_up);

/// Settings that are never what an operator meant stop a production start; the merely risky
/// ones are warned about.
#[test]
fn unsafe_settings_are_refused_in_production_and_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let fernet = "KSDEUmaWmBWPfjVWm8Pkru5oXPd2OaHkVt0xXkx-Qbg=";
    let repeated = "a".repeat(40);
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("JWT_SECRET_KEY", repeated.as_str())], "JWT_SECRET_KEY is one character repeated"),
        (&[("JWT_SECRET_KEY", fernet)], "JWT_SECRET_KEY equals ENCRYPTION_KEY"),
        (&[("TRUSTED_PROXIES", "127.0.0.1/32,0.0.0.0/0")], "TRUSTED_PROXIES contains 0.0.0.0/0"),
        (&[("TRUSTED_PROXIES", "::/0")], "TRUSTED_PROXIES contains ::/0"),
    ];
    for (extra, expected) in cases {
        let mut env = vec![("APP_ENV", "production"), ("JWT_SECRET_KEY", JWT_SECRET), ("ENCRYPTION_KEY", fernet)];
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k, v));
        }
        let t = serve_expecting_refusal(dir.path(), &env);
        assert!(t.contains("refusing to start with APP_ENV=production") && t.contains(expected), "{t}");
        assert!(!t.contains(fernet) && !t.contains(&repeated), "no key in the message: {t}");
    }
    // Development starts, with a warning for each.
    let service = crate::common::ServiceProcess::spawn(&[
        ("DATA_DIR", dir.path().join("dev").to_str().unwrap()),
        ("JWT_SECRET_KEY", fernet),
        ("ENCRYPTION_KEY", fernet),
        ("TRUSTED_PROXIES", "0.0.0.0/0"),
        ("METRICS_ADDR", "0.0.0.0:0"),
        ("RATE_LIMIT_LOGIN_PER_MINUTE", "0"),
        ("RATE_LIMIT_API_PER_MINUTE", "0"),
    ]);
    let log = service.log().join("\n");
    for expected in [
        "JWT_SECRET_KEY equals ENCRYPTION_KEY",
        "TRUSTED_PROXIES contains 0.0.0.0/0",
        "METRICS_ADDR 0.0.0.0:0 is not a loopback address",
        "RATE_LIMIT_LOGIN_PER_MINUTE=0",
        "RATE_LIMIT_API_PER_MINUTE=0",
    ] {
        assert!(log.contains(&format!("UNSAFE SETTING: {expected}")), "{expected} in {log}");
    }
}

/// Every setting is checked before start-up does anything: a typo in one that is used late (the
/// metrics port, CORS, trusted proxies, the listen address, the first admin, hashing) stops the
/// binary with the setting's name and leaves nothing behind: no data directory (so no SQLite
/// file, no development keys, no socket), no table in the PostgreSQL database (so no migration
/// and no admin). The same settings without the typo do all of that, so the checks can see it.
async fn nothing_is_written_before_every_setting_is_checked(backend: Backend) {
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let Some(pg) = PgTestDb::create().await else { return };
            Some(pg)
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_dir = data.to_str().unwrap().to_owned();
    let mut good = vec![
        ("DATA_DIR", data_dir.as_str()),
        ("ADMIN_USERNAME", "root"),
        ("ADMIN_EMAIL", "root@example.com"),
        ("ADMIN_PASSWORD", "Root_password123!"),
        ("LOG_LEVEL", "debug"),
    ];
    if let Some(pg) = &pg {
        good.push(("DATABASE_URL", pg.url.as_str()));
    }
    let tables = || async {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        let Some(pg) = &pg else { return 0 };
        let mut conn = diesel_async::AsyncPgConnection::establish(&pg.url).await.unwrap();
        let count = "(SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public')";
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(count)).get_result::<i64>(&mut conn).await.unwrap()
    };
    for (name, value, expected) in [
        ("METRICS_ADDR", "127.0.0.1", "METRICS_ADDR must be host:port"),
        ("FRONTEND_URL", "localhost:5173", "FRONTEND_URL: \"localhost:5173\""),
        ("TRUSTED_PROXIES", "10.0.0.0/33", "TRUSTED_PROXIES: \"10.0.0.0/33\" is not an IP address or CIDR"),
        ("HOST", "localhost", "HOST must be an IP address"),
        ("ADMIN_EMAIL", "root-at-example.com", "ADMIN_EMAIL must be a valid email address"),
        ("BCRYPT_COST", "40", "BCRYPT_COST must be between 10 and 16"),
    ] {
        let mut env = good.clone();
        env.push((name, value));
        let t = serve_expecting_refusal(dir.path(), &env);
        assert!(t.contains(expected), "{name}={value}: {t}");
        assert!(!t.contains("migration") && !t.contains("database ready"), "{name}: {t}");
        assert!(!data.exists(), "{name}: nothing written, found {:?}", std::fs::read_dir(&data).map(|d| d.count()));
        assert_eq!(tables().await, 0, "{name}: no migration ran");
    }

    let service = ServiceProcess::spawn(&good);
    let mut auth = instachatico_auth::pb::auth_service_client::AuthServiceClient::new(service.channel().await);
    let login = instachatico_auth::pb::LoginRequest { username: "root".into(), password: "Root_password123!".into() };
    auth.login(login).await.expect("the admin was created");
    assert!(data.join(instachatico_auth::config::DEV_KEYS_FILE).exists());
    assert_eq!(data.join("instachatico_auth.db").exists(), backend == Backend::Sqlite);
    assert!(backend == Backend::Sqlite || tables().await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_before_every_setting_is_checked_sqlite() {
    nothing_is_written_before_every_setting_is_checked(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_before_every_setting_is_checked_postgres() {
    nothing_is_written_before_every_setting_is_checked(Backend::Postgres).await;
}

#[test]
fn bad_keys_stop_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &[("ENCRYPTION_KEY", "not-a-fernet-key"), ("JWT_SECRET_KEY", JWT_SECRET), ("PORT", "0")],
        &["serve"],
        "",
    );
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("ENCRYPTION_KEY is not a valid Fernet key") && t.contains("generate-keys"), "{t}");
    assert!(!t.contains("not-a-fernet-key"), "the key itself is never printed");

    let out = run(dir.path(), &[("JWT_SECRET_KEY", "short"), ("PORT", "0")], &["serve"], "");
    assert!(!out.status.success() && text(&out).contains("JWT_SECRET_KEY must be at least 32 bytes"), "{}", text(&out));

    let prod = tempfile::tempdir().unwrap();
    let out = run(prod.path(), &[("APP_ENV", "production"), ("PORT", "0")], &["serve"], "");
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("JWT_SECRET_KEY and ENCRYPTION_KEY not set") && t.contains("generate-keys"), "{t}");
    assert!(!prod.path().join("data/dev-keys.env").exists(), "production never generates keys");

    let out = run(dir.path(), &[("DATABASE_URL", "mysql://x"), ("PORT", "0")], &["migrate"], "");
    assert!(!out.status.success() && text(&out).contains("DATABASE_URL must be"), "{}", text(&out));
}

#[test]
fn development_keys_are_generated_once_privately() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let env = [("BCRYPT_COST", "10"), ("LOG_LEVEL", "warn")];
    let out = run(
        dir.path(),
        &env,
        &["create-admin", "--username", "first", "--email", "first@example.com"],
        "First_password123!\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("DEVELOPMENT keys"), "loud warning: {}", text(&out));
    let keys = dir.path().join("data/dev-keys.env");
    let mode = std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read_to_string(&keys).unwrap();
    let out = run(
        dir.path(),
        &env,
        &["create-user", "--username", "second", "--email", "second@example.com"],
        "Second_password123!\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), before, "reused, not regenerated");
    assert!(dir.path().join("data/instachatico_auth.db").exists(), "default SQLite file under ./data");
}

#[test]
fn generated_keys_work_and_sigterm_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &[], &["generate-keys"], "");
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {stdout}"))
            .to_owned()
    };
    let (jwt, enc) = (key("JWT_SECRET_KEY"), key("ENCRYPTION_KEY"));
    assert!(jwt.len() >= 32 && enc.len() == 44);

    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .envs([
            ("JWT_SECRET_KEY", jwt.as_str()),
            ("ENCRYPTION_KEY", enc.as_str()),
            ("APP_ENV", "production"),
            ("PORT", "0"),
            ("METRICS_ADDR", "127.0.0.1:0"),
            ("BCRYPT_COST", "10"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let serving = lines.by_ref().map_while(Result::ok).any(|l| l.contains("serving gRPC and grpc-web"));
    assert!(serving, "server came up with generated keys in production mode");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?} {rest:?}");
    assert!(rest.iter().any(|l| l.contains("server stopped")), "{rest:?}");
}

/// A database migrated at the commit that shipped two migrations under one version
/// (2026-12-04-000001: passkeys, merged first, and listing_indexes) had recorded that version
/// for passkeys alone, and would have skipped the listing indexes for ever. Rewound to exactly
/// that state, `migrate` now brings it to the full schema (the two re-versioned migrations are
/// idempotent), on both databases.
#[tokio::test]
async fn a_database_from_the_duplicate_migration_version_upgrades_whole() {
    let dir = tempfile::tempdir().unwrap();
    // SQLAlchemy's form, as the service reads it: four slashes for an absolute path.
    let sqlite_url = format!("sqlite:///{}/upgrade.db", dir.path().display());
    let pg = PgTestDb::create().await;
    let mut urls = vec![sqlite_url];
    urls.extend(pg.as_ref().map(|db| db.url.clone()));
    for url in urls {
        let migrate = || run(dir.path(), &[("DATABASE_URL", url.as_str()), ("LOG_LEVEL", "warn")], &["migrate"], "");
        let out = migrate();
        assert!(out.status.success(), "{url}: {}", text(&out));
        let flavour = if url.starts_with("sqlite") { "sqlite" } else { "postgres" };
        // Undo, newest first, what that commit did not have yet; then its version table.
        let mut rewind = String::new();
        for later in [
            "2026-12-06-000001_audit_action_by_time",
            "2026-12-05-000002_passkey_sign_count",
            "2026-12-05-000001_audit_by_time",
            "2026-12-04-000002_listing_indexes",
        ] {
            let down = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("migrations/{flavour}/{later}/down.sql"));
            rewind.push_str(&std::fs::read_to_string(down).unwrap());
            rewind.push('\n');
        }
        rewind.push_str(
            "DELETE FROM __diesel_schema_migrations WHERE version >= '20261204000000';
             INSERT INTO __diesel_schema_migrations (version) VALUES ('20261204000001');",
        );
        // Statements that fail unless the full schema is there (DROP INDEX without IF EXISTS).
        let whole = "SELECT sign_count FROM passkeys LIMIT 0;
                     DROP INDEX audit_logs_user_id_id_idx; DROP INDEX audit_logs_action_id_idx;
                     DROP INDEX audit_logs_created_at_id_idx; DROP INDEX passkeys_user_idx;
                     DROP INDEX audit_logs_action_created_at_id_idx;";
        execute(&url, &rewind).await.unwrap_or_else(|e| panic!("{url}: rewinding: {e}"));
        assert!(execute(&url, "SELECT sign_count FROM passkeys LIMIT 0").await.is_err(), "{url}: rewound");
        let out = migrate();
        assert!(out.status.success(), "{url}: {}", text(&out));
        execute(&url, whole).await.unwrap_or_else(|e| panic!("{url}: after the upgrade: {e}"));
    }
}

async fn execute(url: &str, sql: &str) -> Result<(), String> {
    use diesel::connection::SimpleConnection;
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    if let Some(path) = url.strip_prefix("sqlite:///") {
        let mut conn = <diesel::SqliteConnection as diesel::Connection>::establish(path).map_err(|e| e.to_string())?;
        conn.batch_execute(sql).map_err(|e| e.to_string())
    } else {
        let mut conn = AsyncPgConnection::establish(url).await.map_err(|e| e.to_string())?;
        conn.batch_execute(sql).await.map_err(|e| e.to_string())
    }
}
