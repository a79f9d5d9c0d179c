//! Generated protobuf and tonic code for `instachatico.auth.v1`, and the descriptor set that
//! reflection serves (the same file Envoy's transcoder reads). Lints are relaxed here only.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("instachatico.auth.v1");

/// Descriptors of our protos and their imports (google.api, google.protobuf).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("instachatico_auth_descriptor");

/// The standard services served beside ours (`grpc.health.v1`, `grpc.reflection.v1` and
/// `v1alpha`) under their canonical file names (`grpc/health/v1/health.proto`, ...), for
/// reflection. tonic-health's and tonic-reflection's own sets name them `health.proto` and
/// `reflection_v1alpha.proto`, which clients that already hold the canonical files reject as
/// duplicate symbols.
pub const STANDARD_FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("grpc_standard_descriptor");

#[cfg(test)]
mod tests {
    use prost_reflect::{DescriptorPool, Kind};

    /// Each service as `name(input) -> output` per method, with its streaming flags.
    fn signatures(pool: &DescriptorPool) -> Vec<String> {
        let mut out: Vec<String> = pool
            .services()
            .flat_map(|service| {
                service
                    .methods()
                    .map(|m| {
                        format!(
                            "{}/{}({}{}) -> {}{}",
                            service.full_name(),
                            m.name(),
                            if m.is_client_streaming() { "stream " } else { "" },
                            m.input().full_name(),
                            if m.is_server_streaming() { "stream " } else { "" },
                            m.output().full_name()
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    /// The vendored copies describe exactly what tonic-health and tonic-reflection serve: the
    /// same services, methods and messages (field by field), only under canonical file names.
    #[test]
    fn standard_set_is_what_tonic_serves_under_canonical_names() {
        let ours = DescriptorPool::decode(super::STANDARD_FILE_DESCRIPTOR_SET).unwrap();
        let mut theirs = DescriptorPool::new();
        for set in [
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            theirs.decode_file_descriptor_set(set).unwrap();
        }
        let mut names: Vec<String> = ours.files().map(|f| f.name().to_owned()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "grpc/health/v1/health.proto",
                "grpc/reflection/v1/reflection.proto",
                "grpc/reflection/v1alpha/reflection.proto"
            ]
        );
        assert_eq!(signatures(&ours), signatures(&theirs));
        let fields = |pool: &DescriptorPool| {
            let mut all: Vec<String> = pool
                .all_messages()
                .flat_map(|m| {
                    m.fields()
                        .map(|f| {
                            let kind = match f.kind() {
                                Kind::Message(t) => t.full_name().to_owned(),
                                Kind::Enum(t) => t.full_name().to_owned(),
                                scalar => format!("{scalar:?}"),
                            };
                            format!("{}.{}={}:{kind}:{:?}", m.full_name(), f.name(), f.number(), f.cardinality())
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            all.sort();
            all
        };
        assert_eq!(fields(&ours), fields(&theirs));
        assert!(!fields(&ours).is_empty());
    }
}
