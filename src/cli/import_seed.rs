//! `import-seed`: reads the Python deployment's database and its key (a file or stdin, never
//! argv), shows progress on a terminal, and prints what was (or, with --dry-run, would be)
//! imported and every refused row with its reason.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, bail};
use chrono::Utc;
use secrecy::SecretString;

use crate::config::Config;
use crate::crypto::secrets::TokenCipher;
use crate::db::DbTarget;
use crate::domain::import::{ImportOptions, ImportReport, TableCounts};

#[derive(Debug, clap::Args)]
pub struct ImportSeedArgs {
    /// The Python deployment's database: a SQLite file (path or sqlite:///path) or
    /// postgres://... (SEED_DATABASE_URL keeps a password off the command line).
    #[arg(long = "from", env = "SEED_DATABASE_URL", hide_env_values = true)]
    from: String,
    /// Usernames that become admins, comma-separated (the seed has no roles: everyone else is a
    /// user). A re-run without them demotes nobody.
    #[arg(long, value_delimiter = ',')]
    admins: Vec<String>,
    /// A file holding the Python service's ENCRYPTION_KEY, or `-` to read it from stdin, when it
    /// is not this service's ENCRYPTION_KEY: its tokens are re-encrypted under ours.
    #[arg(long, value_name = "FILE|-")]
    source_encryption_key: Option<PathBuf>,
    /// Import users whose backend token no key decrypts, without that backend (the default is to
    /// refuse the whole import).
    #[arg(long)]
    skip_undecryptable: bool,
    /// Print what would be imported and refused; write nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(config: &Config, args: ImportSeedArgs) -> anyhow::Result<()> {
    let source =
        DbTarget::parse(&args.from).map_err(|e| anyhow::anyhow!("--from: {}", e.replace("DATABASE_URL ", "")))?;
    if source == config.db_target()? {
        bail!("--from names this service's own database; give the Python service's database");
    }
    let source_cipher = match &args.source_encryption_key {
        Some(path) => Some(source_cipher(path)?),
        None => None,
    };
    let tables = crate::db::seed_source::read(&source).await?;
    let app = super::app(config).await?;
    let options = ImportOptions {
        admins: args.admins.iter().map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect(),
        source_cipher,
        skip_undecryptable: args.skip_undecryptable,
        dry_run: args.dry_run,
    };
    let bar = Bar::new();
    let result = app.import_seed(&tables, &options, &|step, done, total| bar.show(step, done, total), Utc::now()).await;
    bar.finish();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            // The refusals explain the error (e.g. the undecryptable tokens): print them first.
            let dry = ImportOptions { dry_run: true, ..options };
            if let Ok(plan) = app.import_seed(&tables, &dry, &|_, _, _| {}, Utc::now()).await {
                print_refusals(&plan);
            }
            bail!("nothing was imported: {e}");
        }
    };
    print_report(&source, &report);
    Ok(())
}

/// The Python service's Fernet key, from a file or stdin (`-`).
fn source_cipher(path: &std::path::Path) -> anyhow::Result<TokenCipher> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).context("cannot read --source-encryption-key from stdin")?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --source-encryption-key {}", path.display()))?;
    }
    let key = SecretString::from(text.trim().to_owned());
    TokenCipher::new(&key, &[]).map_err(|_| {
        anyhow::anyhow!("--source-encryption-key is not a Fernet key (32 bytes, url-safe base64, 44 characters)")
    })
}

fn counts(c: &TableCounts) -> String {
    format!(
        "{} in source: {} new, {} updated, {} unchanged, {} refused",
        c.source, c.new, c.updated, c.unchanged, c.refused
    )
}

fn print_refusals(report: &ImportReport) {
    for r in &report.refusals {
        let what = if r.table == "user_backends" { "user_backends of user" } else { r.table };
        println!("refused: {what} {}: {}", r.id, r.reason);
    }
}

fn print_report(source: &DbTarget, report: &ImportReport) {
    println!("source: {}", source.describe());
    println!("users:         {}", counts(&report.users));
    println!("user_backends: {}", counts(&report.backends));
    match &report.audit {
        Some(c) => println!("audit_logs:    {}", counts(c)),
        None => println!("audit_logs:    no such table in the source"),
    }
    print_refusals(report);
    let all = [Some(report.users), Some(report.backends), report.audit];
    let sum = |f: fn(&TableCounts) -> usize| all.iter().flatten().map(f).sum::<usize>();
    println!(
        "{}: {} new, {} updated, {} unchanged, {} refused; {} backend token(s) re-encrypted; {} session(s) ended; {} active admin(s){}",
        if report.dry_run { "dry run" } else { "imported" },
        sum(|c| c.new),
        sum(|c| c.updated),
        sum(|c| c.unchanged),
        sum(|c| c.refused),
        report.reencrypted,
        report.sessions_ended,
        report.active_admins,
        if report.dry_run { "; nothing written" } else { "" },
    );
    if report.dry_run && !report.undecryptable.is_empty() {
        let ids: Vec<String> = report.undecryptable.iter().map(ToString::to_string).collect();
        println!(
            "note: {} backend token(s) decrypt with no key (users {}): the import will stop unless given \
             --source-encryption-key or --skip-undecryptable",
            ids.len(),
            ids.join(", ")
        );
    }
    if report.active_admins == 0 {
        println!("warning: no active admin; name one with --admins (or set ADMIN_USERNAME)");
    }
}

/// A progress bar on a terminal (stderr), one step at a time; nothing otherwise.
struct Bar {
    current: Mutex<Option<(&'static str, indicatif::ProgressBar)>>,
    on: bool,
}

impl Bar {
    fn new() -> Self {
        Self { current: Mutex::new(None), on: std::io::stderr().is_terminal() }
    }

    fn show(&self, step: &'static str, done: u64, total: u64) {
        if !self.on {
            return;
        }
        let Ok(mut current) = self.current.lock() else { return };
        if current.as_ref().is_none_or(|(s, _)| *s != step) {
            if let Some((_, bar)) = current.take() {
                bar.finish();
            }
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len}") {
                bar.set_style(style);
            }
            bar.set_message(step);
            *current = Some((step, bar));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.set_position(done);
        }
    }

    fn finish(&self) {
        if let Ok(mut current) = self.current.lock()
            && let Some((_, bar)) = current.take()
        {
            bar.finish();
        }
    }
}
