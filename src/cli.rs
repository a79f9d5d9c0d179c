//! The command line: `serve` (default) and the operator's commands, the seed's scripts done
//! properly. Passwords and bearer tokens come from a prompt or stdin, never from argv.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, bail};
use chrono::Utc;
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, LogFormat, Settings};
use crate::domain::api_keys::NewApiKey;
use crate::domain::types::{Actor, BackendChange, BackendInput, ClientInfo, NewUser, Role, UserPatch};
use crate::domain::{App, validate};
use crate::server;

mod import_seed;

#[derive(Debug, Parser)]
#[command(
    name = "instachatico-auth",
    version,
    about = "Central authentication service for Instachatico (gRPC, grpc-web, JSON via Envoy)"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create an admin. Reads the password from a prompt, or the first line of stdin.
    CreateAdmin {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
    },
    /// Create a user, optionally with a backend. Reads the password, then (with
    /// --backend-url) the backend bearer token, from prompts or stdin lines.
    CreateUser {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
        /// The user's backend, e.g. http://localhost:4291/api/v1.
        #[arg(long)]
        backend_url: Option<String>,
        #[arg(long, requires = "backend_url")]
        instagram_username: Option<String>,
        /// "user" or "admin".
        #[arg(long, default_value = "user")]
        role: String,
    },
    /// Set a new password (prompt or stdin) and end every session of the user.
    ResetPassword {
        /// Username or email.
        #[arg(long)]
        username: String,
    },
    /// Clear a user's second factors (TOTP and recovery codes) and end all their sessions, for
    /// a user who lost the authenticator and the recovery codes.
    ResetMfa {
        /// Username or email.
        #[arg(long)]
        username: String,
    },
    /// Deactivate a user and end all their sessions.
    Deactivate {
        #[arg(long)]
        username: String,
    },
    /// Reactivate a user.
    Activate {
        #[arg(long)]
        username: String,
    },
    /// Print a fresh JWT_SECRET_KEY, ENCRYPTION_KEY and (for JWT_ALGORITHM=EdDSA) JWT_SIGNING_KEY
    /// for a .env file.
    GenerateKeys,
    /// Re-encrypt every stored backend token and TOTP secret under the current ENCRYPTION_KEY
    /// (those under a key in ENCRYPTION_PREVIOUS_KEYS), in one transaction. After it, the
    /// previous keys can go.
    RotateKeys,
    /// Create an API key for a service account (created too if it does not exist) and print the
    /// key, once, on stdout; only its hash is stored.
    CreateApiKey {
        /// The service account's name.
        #[arg(long)]
        service_account: String,
        /// The key's name, e.g. "billing-prod".
        #[arg(long)]
        name: String,
        /// A scope: introspect, users:read, users:write or audit:read (repeat for several).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// An address or CIDR the key is accepted from (repeat; none: any address).
        #[arg(long = "allow-cidr")]
        allowed_cidrs: Vec<String>,
        /// Days until the key expires (none: it does not expire).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        expires_in_days: Option<u32>,
    },
    /// Import the Python service's database (users, backends, audit rows) in one transaction;
    /// passwords, backend tokens and ids keep working. Re-runs bring over only what changed.
    ImportSeed(import_seed::ImportSeedArgs),
    /// Write the descriptor set Envoy transcodes with and the OpenAPI document of the JSON
    /// routes, both generated from this binary's protos.
    ExportApi {
        #[arg(long, default_value = "envoy")]
        dir: std::path::PathBuf,
    },
}

/// Parses the command line (after loading `.env`), runs, and returns the exit code.
pub fn main() -> std::process::ExitCode {
    // .env fills only what the environment does not already set.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    if let Err(e) = init_tracing(&cli.config) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("LOG_LEVEL {:?} is not a valid filter (try info or debug)", config.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            // First: a SIGTERM during start-up then stops us cleanly instead of killing us.
            let shutdown = server::shutdown_signal()?;
            let settings = Settings::from_config(&config)?;
            server::start(settings, shutdown).await?.wait().await
        }
        Command::Migrate => {
            let target = config.db_target()?;
            let applied = crate::db::migrate(&target).await?;
            println!("{}: {} migration(s) applied", target.describe(), applied.len());
            Ok(())
        }
        Command::GenerateKeys => {
            println!("JWT_SECRET_KEY={}", crate::crypto::random_token(48));
            println!("ENCRYPTION_KEY={}", crate::crypto::secrets::TokenCipher::generate_key());
            let signing = crate::crypto::jwt::Ed25519SigningKey::generate().to_pem()?;
            println!("# For JWT_ALGORITHM=EdDSA: an Ed25519 key (PKCS#8 PEM; or this PEM in JWT_SIGNING_KEY_FILE)");
            println!("JWT_SIGNING_KEY=\"{}\"", secrecy::ExposeSecret::expose_secret(&signing).trim());
            Ok(())
        }
        Command::RotateKeys => {
            let app = app(&config).await?;
            let (total, changed) = app.reencrypt_backend_tokens(&ClientInfo::default(), Utc::now()).await?;
            println!("re-encrypted {changed} of {total} backend token(s) under the current ENCRYPTION_KEY");
            let (total, changed) = app.reencrypt_totp_secrets(&ClientInfo::default(), Utc::now()).await?;
            println!("re-encrypted {changed} of {total} TOTP secret(s) under the current ENCRYPTION_KEY");
            Ok(())
        }
        Command::ExportApi { dir } => {
            crate::openapi::export(&dir)?;
            println!(
                "wrote {0}/{1} and {0}/{2}",
                dir.display(),
                crate::openapi::DESCRIPTOR_FILE,
                crate::openapi::OPENAPI_FILE
            );
            Ok(())
        }
        Command::CreateAdmin { username, email } => {
            let app = app(&config).await?;
            let mut input = SecretInput::new();
            let password = input.read("Password for the new admin")?;
            create(&app, &username, &email, password, Role::Admin, None).await
        }
        Command::CreateUser { username, email, backend_url, instagram_username, role } => {
            let role = Role::parse("role", &role)?;
            let app = app(&config).await?;
            let mut input = SecretInput::new();
            let password = input.read("Password for the new user")?;
            let backend = match backend_url {
                Some(url) => {
                    let token = input.read("Backend bearer token")?;
                    validate::bearer_token(token.expose_secret())?;
                    Some(BackendInput {
                        api_base_url: validate::api_base_url(&url)?,
                        bearer_token: token,
                        instagram_username: instagram_username
                            .as_deref()
                            .map(validate::instagram_username)
                            .transpose()?,
                    })
                }
                None => None,
            };
            create(&app, &username, &email, password, role, backend).await
        }
        Command::ResetPassword { username } => {
            let app = app(&config).await?;
            let user = app.find_user(&username).await?;
            let password = SecretInput::new().read(&format!("New password for {}", user.username))?;
            app.reset_password(&Actor::System("cli"), user.id, &password, &ClientInfo::default(), Utc::now()).await?;
            println!("password of {} reset; all their sessions ended", user.username);
            Ok(())
        }
        Command::CreateApiKey { service_account, name, scopes, allowed_cidrs, expires_in_days } => {
            let now = Utc::now();
            let new = NewApiKey {
                name: validate::key_name(&name)?,
                scopes: validate::scopes(&scopes)?,
                allowed_cidrs: validate::cidrs(&allowed_cidrs)?,
                expires_at: expires_in_days.map(|days| now + chrono::Duration::days(i64::from(days))),
            };
            let account_name = validate::service_account_name(&service_account)?;
            let app = app(&config).await?;
            let (actor, client) = (Actor::System("cli"), ClientInfo::default());
            let account = match app.find_service_account(&account_name).await? {
                Some(account) => account,
                None => {
                    let account = app.create_service_account(&actor, &account_name, "", &client, now).await?;
                    eprintln!("created service account {} (id {})", account.name, account.id.get());
                    account
                }
            };
            let issued = app.create_api_key(&actor, account.id, new, &client, now).await?;
            eprintln!(
                "created API key {} for {} with scopes {}; it is shown once, below",
                issued.key.id,
                account.name,
                issued.key.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
            );
            println!("{}", issued.token.expose_secret());
            Ok(())
        }
        Command::ImportSeed(args) => import_seed::run(&config, args).await,
        Command::ResetMfa { username } => {
            let app = app(&config).await?;
            let user = app.find_user(&username).await?;
            let ended = app.reset_mfa(&Actor::System("cli"), user.id, &ClientInfo::default(), Utc::now()).await?;
            println!("second factors of {} cleared; {ended} session(s) ended", user.username);
            Ok(())
        }
        Command::Deactivate { username } => set_active(&config, &username, false).await,
        Command::Activate { username } => set_active(&config, &username, true).await,
    }
}

async fn create(
    app: &App,
    username: &str,
    email: &str,
    password: SecretString,
    role: Role,
    backend: Option<BackendInput>,
) -> anyhow::Result<()> {
    let new =
        NewUser { username: validate::username(username)?, email: validate::email(email)?, password, role, backend };
    let user = app.create_user(&Actor::System("cli"), new, &ClientInfo::default(), Utc::now()).await?;
    println!("created {} {} (id {})", user.role.as_str(), user.username, user.id);
    Ok(())
}

/// The application for an operator command, on the same checked settings as `serve`.
async fn app(config: &Config) -> anyhow::Result<App> {
    server::build_app(&Settings::from_config(config)?).await
}

async fn set_active(config: &Config, username: &str, active: bool) -> anyhow::Result<()> {
    let app = app(config).await?;
    let user = app.find_user(username).await?;
    let patch = UserPatch { is_active: Some(active), backend: BackendChange::Keep, ..Default::default() };
    app.update_user(&Actor::System("cli"), user.id, patch, &ClientInfo::default(), Utc::now()).await?;
    println!("{} {}", user.username, if active { "activated" } else { "deactivated; all their sessions ended" });
    Ok(())
}

/// Reads secrets from a terminal prompt (asked twice) or, when piped, one per stdin line.
struct SecretInput {
    lines: Option<std::io::Lines<std::io::StdinLock<'static>>>,
}

impl SecretInput {
    fn new() -> Self {
        let stdin = std::io::stdin();
        let lines = (!stdin.is_terminal()).then(|| stdin.lock().lines());
        Self { lines }
    }

    fn read(&mut self, prompt: &str) -> anyhow::Result<SecretString> {
        let value = match &mut self.lines {
            Some(lines) => lines
                .next()
                .transpose()
                .context("cannot read stdin")?
                .with_context(|| format!("stdin ended before: {prompt}"))?,
            None => {
                let first = rpassword::prompt_password(format!("{prompt}: "))?;
                let again = rpassword::prompt_password(format!("{prompt} (again): "))?;
                if first != again {
                    bail!("the two entries differ");
                }
                first
            }
        };
        let value = value.trim_end_matches(['\r', '\n']).to_owned();
        if value.is_empty() {
            bail!("{prompt}: empty input");
        }
        Ok(SecretString::from(value))
    }
}
