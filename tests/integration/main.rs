//! Integration tests: the real server over real sockets, on SQLite and PostgreSQL.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod api_docs;
mod api_keys;
mod at_rest;
mod auth;
mod backend_proxy;
mod bench_smoke;
mod browser;
mod cli;
mod closed_by_default;
mod compat;
mod connect;
mod generated_input;
mod health;
mod hostile;
mod http1;
mod import_seed;
mod json;
mod mfa;
mod observability;
mod paging;
mod passkeys;
mod pgbouncer;
mod plans;
mod proxy_socket;
mod races;
mod reflection;
mod refusals;
mod replicas;
mod schemathesis;
mod security;
mod signing;
mod tokens;
mod upkeep;
mod validation;
mod web;
