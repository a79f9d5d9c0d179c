//! Rows and queries, one file per table. Every query goes through `db_run!` so it compiles for
//! both backends; callers get domain errors (unique violations already mapped).

pub mod audit;
pub mod backends;
pub mod rate_limits;
pub mod sessions;
pub mod throttles;
pub mod users;

pub use audit::{AuditRow, NewAuditRow};
pub use backends::BackendRow;
pub use sessions::SessionRow;
pub use users::{UserRow, UserWithBackend};
