//! `import-seed`: the Python service's users, backends and audit rows, brought over in one
//! transaction so that every password, backend token and id keeps working here. Re-runs copy
//! nothing twice and bring over what changed in the source since, so an operator can import,
//! test, and import again just before the switch. The plan is made first (`plan`), so a dry run
//! reports exactly what the real run would do.

mod plan;

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::App;
use super::audit::{self, Action, Event, Recorded};
use super::types::ClientInfo;
use crate::crypto::secrets::TokenCipher;
use crate::db::DbConn;
use crate::db::models::{backends, import as rows, sessions, users};
use crate::db::seed_source::SeedTables;
use crate::error::{Error, Result};

/// How to import.
#[derive(Debug, Default)]
pub struct ImportOptions {
    /// Usernames that become admins (the seed has no roles).
    pub admins: Vec<String>,
    /// The Python service's ENCRYPTION_KEY, when it is not one of ours.
    pub source_cipher: Option<TokenCipher>,
    /// Import the rest when some backend tokens decrypt with no key.
    pub skip_undecryptable: bool,
    pub dry_run: bool,
}

/// A source row this service does not take, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub table: &'static str,
    /// The row's id in the source (for `user_backends`, its user's id).
    pub id: i32,
    pub reason: String,
}

/// What happened (or would happen) to one table's rows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableCounts {
    pub source: usize,
    pub new: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub refused: usize,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct ImportReport {
    pub dry_run: bool,
    pub users: TableCounts,
    pub backends: TableCounts,
    /// `None` when the source has no audit_logs table.
    pub audit: Option<TableCounts>,
    pub refusals: Vec<Refusal>,
    pub reencrypted: usize,
    /// Users whose backend token no key decrypts (also among the refusals).
    pub undecryptable: Vec<i32>,
    /// Sessions here that ended because their user's password or activation changed.
    pub sessions_ended: usize,
    /// Active admins after the run (for a dry run: once it is done).
    pub active_admins: i64,
}

/// Reports progress of the long steps: (step, done, total).
pub type Progress<'a> = &'a (dyn Fn(&'static str, u64, u64) + Sync);

impl App {
    /// Imports `source` (already read) into this service's database; see the module docs.
    pub async fn import_seed(
        &self,
        source: &SeedTables,
        options: &ImportOptions,
        progress: Progress<'_>,
        now: DateTime<Utc>,
    ) -> Result<ImportReport> {
        let mut conn = self.db().get().await?;
        if options.dry_run {
            return self.make_plan(&mut conn, source, options, now).await.map(|(_, report)| report);
        }
        let (report, recorded) = conn
            .transaction(async |c: &mut DbConn| {
                // First, so that two imports (or an import and a change that may shrink the set of
                // active admins, writes.rs) run one after the other, each planning from what the
                // other committed. On SQLite the transaction's write lock already does it.
                users::lock_admin_set(c).await?;
                let admins_before = users::count_active_admins(c).await?;
                let (plan, mut report) = self.make_plan(c, source, options, now).await?;
                if !plan.undecryptable.is_empty() && !options.skip_undecryptable {
                    return Err(Error::FailedPrecondition(
                        "some backend tokens decrypt with no key (see the list above); give \
                         --source-encryption-key, or --skip-undecryptable to import those users without their backend",
                    ));
                }
                let (ended, recorded) = apply(c, &plan, progress, now).await?;
                if admins_before > 0 && report.active_admins == 0 {
                    return Err(Error::FailedPrecondition(
                        "the import would leave no active admin; name one with --admins",
                    ));
                }
                let summary = Event::new(Action::SeedImport, None)
                    .with("users_new", report.users.new)
                    .with("users_updated", report.users.updated)
                    .with("backends_written", plan.backends.len())
                    .with("audit_new", plan.audit.len())
                    .with("refused", report.refusals.len());
                audit::record(c, summary, &ClientInfo::default(), now).await?.nothing_cached();
                report.sessions_ended = ended;
                Ok((report, recorded))
            })
            .await?;
        for r in recorded {
            self.committed(r);
        }
        Ok(report)
    }

    /// The plan against what is in the database now, and the report it makes.
    async fn make_plan(
        &self,
        c: &mut DbConn,
        source: &SeedTables,
        options: &ImportOptions,
        now: DateTime<Utc>,
    ) -> Result<(plan::Plan, ImportReport)> {
        let existing = users::list(c, i64::MAX, 0, None).await?;
        let imported_audit: HashSet<i32> = rows::imported_audit_ids(c).await?.into_iter().collect();
        let plan = plan::plan(source, &existing, &imported_audit, self.cipher(), options, now);
        let report = ImportReport {
            dry_run: options.dry_run,
            users: plan.users,
            backends: plan.backend_counts,
            audit: plan.audit_counts,
            refusals: plan.refusals.clone(),
            reencrypted: plan.reencrypted,
            undecryptable: plan.undecryptable.clone(),
            sessions_ended: 0,
            active_admins: projected_admins(&existing, &plan),
        };
        Ok((plan, report))
    }
}

/// Writes `plan`; returns how many sessions ended and what the caches must drop after commit.
async fn apply(
    c: &mut DbConn,
    plan: &plan::Plan,
    progress: Progress<'_>,
    now: DateTime<Utc>,
) -> Result<(usize, Vec<Recorded>)> {
    let total = (plan.new_users.len() + plan.changed_users.len()) as u64;
    for (done, user) in plan.new_users.iter().enumerate() {
        rows::insert_user(c, user).await?;
        progress("users", done as u64 + 1, total);
    }
    let mut ended = 0;
    let mut recorded = Vec::new();
    // Ascending ids, as every other change locks users (no lock cycle).
    for (done, (user, ends_sessions)) in plan.changed_users.iter().enumerate() {
        users::lock(c, user.id).await?;
        rows::update_user(c, user).await?;
        if *ends_sessions {
            ended += sessions::revoke_all_for_user(c, user.id, None, now).await?;
            // Audited as an update, which also stops the user's older Python tokens from
            // starting a session (`legacy`).
            let event = Event::new(Action::UserUpdate, Some(user.id)).with("via", "import-seed");
            recorded.push(audit::record(c, event, &ClientInfo::default(), now).await?);
        } else {
            // A new email or sign-in time ends nothing, but cached copies are stale.
            crate::db::notify::user_changed(c, user.id).await?;
        }
        progress("users", (plan.new_users.len() + done) as u64 + 1, total);
    }
    for (done, backend) in plan.backends.iter().enumerate() {
        backends::upsert(c, backend).await?;
        progress("user_backends", done as u64 + 1, plan.backends.len() as u64);
    }
    for (done, chunk) in plan.audit.chunks(1000).enumerate() {
        rows::insert_audit(c, chunk).await?;
        progress("audit_logs", ((done * 1000) + chunk.len()) as u64, plan.audit.len() as u64);
    }
    rows::advance_sequences(c).await?;
    Ok((ended, recorded))
}

/// Active admins once `plan` is applied to `existing` (a dry run reports it).
fn projected_admins(existing: &[crate::model::UserWithBackend], plan: &plan::Plan) -> i64 {
    use crate::model::Role;
    let changed: HashSet<_> = plan.changed_users.iter().map(|(u, _)| u.id).collect();
    let admin = |u: &crate::model::User| u.role == Role::Admin && u.is_active;
    let kept = existing.iter().filter(|(u, _)| !changed.contains(&u.id) && admin(u)).count();
    let imported = plan.new_users.iter().chain(plan.changed_users.iter().map(|(u, _)| u)).filter(|u| admin(u)).count();
    i64::try_from(kept + imported).unwrap_or(i64::MAX)
}
