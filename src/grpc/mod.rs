//! Transport: the tonic services. Each file adapts one proto service to the domain; nothing
//! here decides policy. Who may call which RPC is decided once, in [`access`]. Imports the
//! domain and the vocabulary (`model`), never storage. Shaped after tonic's examples: one
//! struct per service holding shared state, `Request` in, `Response` or `Status` out.

pub mod access;
pub mod audit;
pub mod auth;
pub mod codec;
pub mod convert;
pub mod ext_authz;
pub mod health;
pub mod keys;
pub mod meta;
pub mod mfa;
pub mod passkeys;
pub mod proxy_log;
pub mod service_accounts;
pub mod status;
pub mod text;
pub mod user;

pub use access::{AccessLayer, caller, principal};
pub use meta::ClientIpPolicy;
