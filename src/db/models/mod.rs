//! Rows and queries, one file per table. Every query goes through `db_run!` so it compiles for
//! both backends. Rows stay in here: callers pass and get the vocabulary of `crate::model`, and
//! domain errors (unique violations already mapped).

pub mod api_keys;
pub mod audit;
pub mod backends;
pub mod rate_limits;
pub mod sessions;
pub mod throttles;
pub mod users;

use backends::BackendRow;
use users::UserRow;
