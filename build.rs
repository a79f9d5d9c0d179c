//! Compiles the protos in `proto/` into tonic servers/clients and writes the
//! descriptor set that server reflection (and Envoy's JSON transcoder) read, plus a descriptor
//! set of the standard gRPC services we serve (health, reflection) under their canonical file
//! names, for reflection only.

use std::path::PathBuf;

const PROTOS: [&str; 9] = [
    "proto/instachatico/auth/v1/types.proto",
    "proto/instachatico/auth/v1/auth.proto",
    "proto/instachatico/auth/v1/user.proto",
    "proto/instachatico/auth/v1/health.proto",
    "proto/instachatico/auth/v1/audit.proto",
    "proto/instachatico/auth/v1/keys.proto",
    "proto/instachatico/auth/v1/service_accounts.proto",
    "proto/instachatico/auth/v1/mfa.proto",
    "proto/instachatico/auth/v1/passkey.proto",
];

/// The standard services tonic-health and tonic-reflection implement, vendored from those crates
/// under the file names every gRPC implementation registers them by (grpc-proto's layout).
/// The crates' own descriptor sets call them `health.proto` and `reflection_v1alpha.proto`, so a
/// client that already knows `grpc/health/v1/health.proto` saw the same symbols twice.
const STANDARD_PROTOS: [&str; 3] =
    ["grpc/health/v1/health.proto", "grpc/reflection/v1/reflection.proto", "grpc/reflection/v1alpha/reflection.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // `embed_migrations!` reads migrations/ at compile time but cannot tell cargo so: a new
    // migration would otherwise not reach a binary built incrementally.
    println!("cargo:rerun-if-changed=migrations");

    // The vendored protoc keeps fresh machines free of system packages.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `prost::Name` on every message: the transport finds a request's descriptor by its name.
    config.enable_type_names();

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("instachatico_auth_descriptor.bin"))
        .compile_with_config(config, &PROTOS, &["proto"])?;

    // Descriptors only: the servers' code comes from tonic-health and tonic-reflection.
    let status = std::process::Command::new(protoc_bin_vendored::protoc_bin_path()?)
        .arg("--proto_path=proto")
        .arg(format!("--descriptor_set_out={}", out_dir.join("grpc_standard_descriptor.bin").display()))
        .args(STANDARD_PROTOS)
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed on {STANDARD_PROTOS:?}: {status}").into());
    }

    // Without this, cargo would only rerun the script when build.rs changes.
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
