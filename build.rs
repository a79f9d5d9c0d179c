//! Compiles the protos in `proto/` into tonic servers/clients and writes the
//! descriptor set that server reflection (and Envoy's JSON transcoder) read.

use std::path::PathBuf;

const PROTOS: [&str; 7] = [
    "proto/instachatico/auth/v1/types.proto",
    "proto/instachatico/auth/v1/auth.proto",
    "proto/instachatico/auth/v1/user.proto",
    "proto/instachatico/auth/v1/health.proto",
    "proto/instachatico/auth/v1/audit.proto",
    "proto/instachatico/auth/v1/keys.proto",
    "proto/instachatico/auth/v1/service_accounts.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // The vendored protoc keeps fresh machines free of system packages.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `prost::Name` on every message: the transport finds a request's descriptor by its name.
    config.enable_type_names();

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("instachatico_auth_descriptor.bin"))
        .compile_with_config(config, &PROTOS, &["proto"])?;

    // Without this, cargo would only rerun the script when build.rs changes.
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
