//! instachatico-auth: the central authentication service for Instachatico.
//!
//! Layers, outermost first: `server` (assembly) → `grpc` (transport) → `domain` (rules) →
//! `db` (storage), with `crypto` beside the domain. `pb` is generated code.

pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http1_drain;
pub mod metrics;
pub mod openapi;
pub mod pb;
pub mod server;
pub mod telemetry;
