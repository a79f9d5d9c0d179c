//! instachatico-auth: the central authentication service for Instachatico.
//!
//! Layers, outermost first: `server` (assembly) → `grpc` (transport) → `domain` (rules) →
//! `db` (storage), with `crypto` beside the domain. `model` is the vocabulary all of them share
//! (ids, roles, users, sessions; no imports from any layer). `pb` is generated code.

pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http1_drain;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod pb;
pub mod server;
pub mod telemetry;

/// The layering above, checked on the source: a careless `use` fails the build's tests.
#[cfg(test)]
mod layering {
    use std::path::Path;

    /// Every `.rs` file under `dir` (or `dir` itself), with its text.
    fn sources(dir: &str) -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
        let mut files = Vec::new();
        let mut stack = vec![root];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
            }
        }
        assert!(!files.is_empty(), "no sources under {dir}");
        files
    }

    fn refuse(dir: &str, forbidden: &[&str]) {
        for (path, text) in sources(dir) {
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for word in forbidden {
                    assert!(!code.contains(word), "{path}:{}: `{word}` crosses a layer: {line}", n + 1);
                }
            }
        }
    }

    #[test]
    fn transports_never_reach_storage() {
        refuse("grpc", &["crate::db", "diesel"]);
    }

    #[test]
    fn rules_know_no_transport_and_no_sql() {
        refuse("domain", &["tonic", "diesel", "crate::grpc", "crate::pb", "http::"]);
    }

    #[test]
    fn the_vocabulary_imports_no_layer() {
        refuse("model.rs", &["crate::db", "crate::domain", "crate::grpc", "crate::crypto", "tonic", "diesel"]);
    }

    #[test]
    fn storage_never_reaches_up() {
        refuse("db", &["crate::domain", "crate::grpc", "crate::pb", "tonic"]);
    }
}
