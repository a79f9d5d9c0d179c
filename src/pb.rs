//! Generated protobuf and tonic code for `instachatico.auth.v1`, and the descriptor set that
//! reflection serves (the same file Envoy's transcoder reads). Lints are relaxed here only.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("instachatico.auth.v1");

/// Descriptors of our protos and their imports (google.api, google.protobuf).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("instachatico_auth_descriptor");
