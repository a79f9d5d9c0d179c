//! Server reflection, v1 and v1alpha: every service listed, and the standard services under the
//! file names every gRPC implementation uses (`grpc/health/v1/health.proto`, ...), so a client
//! that already holds those files (grpc-go, grpc-java and tools built on them register them by
//! those names) gets the same file back instead of a second copy of its symbols.

use prost::Message;
use prost_types::FileDescriptorProto;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
use tonic_reflection::pb::v1alpha as alpha;

use crate::common::{Backend, TestServer};

const CANONICAL: [(&str, &str); 4] = [
    ("grpc.health.v1.Health", "grpc/health/v1/health.proto"),
    ("grpc.health.v1.HealthCheckRequest", "grpc/health/v1/health.proto"),
    ("grpc.reflection.v1.ServerReflection", "grpc/reflection/v1/reflection.proto"),
    ("grpc.reflection.v1alpha.ServerReflection", "grpc/reflection/v1alpha/reflection.proto"),
];

/// One v1 request, one answer.
async fn ask(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> MessageResponse {
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let mut replies = client.server_reflection_info(futures_util::stream::iter([request])).await.unwrap().into_inner();
    let reply: ServerReflectionResponse = replies.message().await.unwrap().expect("one reply");
    reply.message_response.expect("a response")
}

fn file_names(response: MessageResponse) -> Vec<String> {
    match response {
        MessageResponse::FileDescriptorResponse(files) => files
            .file_descriptor_proto
            .iter()
            .map(|raw| FileDescriptorProto::decode(raw.as_slice()).unwrap().name().to_owned())
            .collect(),
        other => panic!("expected files, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_services_have_canonical_file_names() {
    let Some(s) = TestServer::start(Backend::Sqlite).await else { return };
    let mut v1 = ServerReflectionClient::new(s.channel().await);

    let MessageResponse::ListServicesResponse(list) = ask(&mut v1, MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a service list")
    };
    let mut services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    services.sort();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "instachatico.auth.v1.AuditService",
            "instachatico.auth.v1.AuthService",
            "instachatico.auth.v1.HealthService",
            "instachatico.auth.v1.KeysService",
            "instachatico.auth.v1.MfaService",
            "instachatico.auth.v1.PasskeyService",
            "instachatico.auth.v1.ServiceAccountService",
            "instachatico.auth.v1.UserService",
        ]
    );

    for (symbol, file) in CANONICAL {
        let names = file_names(ask(&mut v1, MessageRequest::FileContainingSymbol(symbol.into())).await);
        assert_eq!(names.first().map(String::as_str), Some(file), "v1: the file containing {symbol}");
        let names = file_names(ask(&mut v1, MessageRequest::FileByFilename(file.into())).await);
        assert_eq!(names.first().map(String::as_str), Some(file));
    }
    // The crates' own names are gone: one file per set of symbols.
    for old in ["health.proto", "reflection_v1.proto", "reflection_v1alpha.proto"] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileByFilename(old.into())),
        };
        let mut replies = v1.server_reflection_info(futures_util::stream::iter([request])).await.unwrap().into_inner();
        match replies.message().await {
            Err(status) => assert_eq!(status.code(), tonic::Code::NotFound, "{old}: {status:?}"),
            Ok(reply) => panic!("{old} is still served: {reply:?}"),
        }
    }

    // v1alpha (grpcurl and older clients) answers the same.
    let mut v1alpha = alpha::server_reflection_client::ServerReflectionClient::new(s.channel().await);
    for (symbol, file) in CANONICAL {
        let request = alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                symbol.into(),
            )),
        };
        let mut replies =
            v1alpha.server_reflection_info(futures_util::stream::iter([request])).await.unwrap().into_inner();
        let reply = replies.message().await.unwrap().expect("one reply").message_response;
        let Some(alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) = reply else {
            panic!("v1alpha {symbol}: {reply:?}")
        };
        let first = FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
        assert_eq!(first.name(), file, "v1alpha: the file containing {symbol}");
    }

    // A client that builds one descriptor pool from everything listed, fetching imports by
    // name, gets every service and no duplicate symbol.
    let mut files: std::collections::BTreeMap<String, FileDescriptorProto> = std::collections::BTreeMap::new();
    let mut wanted: Vec<MessageRequest> = services.iter().cloned().map(MessageRequest::FileContainingSymbol).collect();
    while let Some(request) = wanted.pop() {
        let MessageResponse::FileDescriptorResponse(reply) = ask(&mut v1, request.clone()).await else {
            panic!("{request:?} found nothing")
        };
        for raw in reply.file_descriptor_proto {
            let file = FileDescriptorProto::decode(raw.as_slice()).unwrap();
            for import in &file.dependency {
                if !files.contains_key(import) {
                    wanted.push(MessageRequest::FileByFilename(import.clone()));
                }
            }
            files.insert(file.name().to_owned(), file);
        }
    }
    let mut pool = prost_reflect::DescriptorPool::new();
    while !files.is_empty() {
        let ready: Vec<String> = files
            .values()
            .filter(|f| f.dependency.iter().all(|d| pool.get_file_by_name(d).is_some()))
            .map(|f| f.name().to_owned())
            .collect();
        assert!(!ready.is_empty(), "unresolvable imports in {:?}", files.keys());
        for name in ready {
            let file = files.remove(&name).unwrap();
            pool.add_file_descriptor_proto(file).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    for service in &services {
        assert!(pool.get_service_by_name(service).is_some(), "{service}");
    }
    s.stop().await;
}
