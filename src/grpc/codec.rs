//! What request bodies the service reads, and how replies spell their status message.
//!
//! - gRPC's protobuf (`application/grpc`, `application/grpc+proto`), as tonic reads it; grpc-web
//!   arrives here already translated by tonic-web.
//! - gRPC with JSON messages (`application/grpc+json`), for unary calls: the request's JSON
//!   becomes protobuf before tonic sees it, the reply's protobuf becomes JSON. Envoy's Connect
//!   bridge sends this for a Connect JSON call (Connect's binary `application/proto` becomes plain
//!   gRPC). The mapping is proto3 JSON, as Connect and `buf curl` speak it, from the same
//!   descriptor set reflection serves, so every RPC gets it and none can forget it. Everything
//!   after this layer (the control-character rule, validation, handlers) sees protobuf.
//! - Anything else is HTTP 415 before any handler runs: tonic would otherwise read a `text/plain`
//!   or untyped body as a gRPC frame, and those are what a browser sends cross-site without a
//!   CORS preflight (a form post, a `no-cors` fetch), so a page on any site could make the
//!   service check a password.
//!
//! [`PlainMessageLayer`] spells `grpc-message` with only the percent-escapes gRPC requires
//! (`%`, and bytes outside printable ASCII); tonic also escapes spaces and punctuation, and
//! Envoy's Connect bridge copies the header into Connect's error JSON without decoding it, so
//! Connect clients read "Incorrect%20username...".

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use super::status::MALFORMED_REQUEST;

const GRPC_JSON: &str = "application/grpc+json";

/// A gRPC frame's header: the compressed flag and the message length (big-endian u32).
const FRAME_HEADER: usize = 5;

/// Every method of every service we serve, by path: a unary one's request and reply types, or
/// `None` for a stream.
static METHODS: LazyLock<HashMap<String, Option<(MessageDescriptor, MessageDescriptor)>>> = LazyLock::new(|| {
    let mut pool = DescriptorPool::new();
    for set in [crate::pb::FILE_DESCRIPTOR_SET, crate::pb::STANDARD_FILE_DESCRIPTOR_SET] {
        if let Err(e) = pool.decode_file_descriptor_set(set) {
            tracing::error!(error = %e, "descriptor set unreadable: no JSON codec for gRPC");
        }
    }
    pool.services()
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .map(|m| {
            let unary = !m.is_client_streaming() && !m.is_server_streaming();
            (format!("/{}/{}", m.parent_service().full_name(), m.name()), unary.then(|| (m.input(), m.output())))
        })
        .collect()
});

/// How a request body is encoded, from its content type.
#[derive(Debug, PartialEq, Eq)]
enum Encoding {
    Proto,
    Json,
    /// Not gRPC: refused.
    Other,
}

fn encoding(headers: &HeaderMap) -> Encoding {
    let media = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some("application/grpc" | "application/grpc+proto") => Encoding::Proto,
        Some(GRPC_JSON) => Encoding::Json,
        _ => Encoding::Other,
    }
}

/// The single uncompressed message of a unary request body, or `None` when the body is not
/// exactly one such frame.
fn single_frame(mut body: Bytes) -> Option<Bytes> {
    if body.len() < FRAME_HEADER || body[0] != 0 {
        return None;
    }
    body.advance(1);
    let len = usize::try_from(body.get_u32()).ok()?;
    (body.len() == len).then_some(body)
}

fn framed(message: &[u8]) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(FRAME_HEADER + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).ok()?);
    out.put_slice(message);
    Some(out.freeze())
}

/// The request's JSON message as a framed protobuf message.
fn json_to_proto(body: Bytes, input: &MessageDescriptor) -> Option<Bytes> {
    let json = single_frame(body)?;
    let mut deserializer = serde_json::Deserializer::from_slice(&json);
    let message =
        DynamicMessage::deserialize_with_options(input.clone(), &mut deserializer, &DeserializeOptions::new())
            // Not the error's text: serde quotes the offending value, which may be a password.
            .map_err(|_| tracing::debug!(message = input.full_name(), "grpc+json request is not the message's JSON"))
            .ok()?;
    deserializer.end().ok()?;
    framed(&prost::Message::encode_to_vec(&message))
}

/// Every framed protobuf message of a reply body as a framed JSON message.
fn proto_to_json(mut body: Bytes, output: &MessageDescriptor) -> Result<Bytes, String> {
    let mut out = BytesMut::new();
    let options = SerializeOptions::new();
    while !body.is_empty() {
        if body.len() < FRAME_HEADER || body[0] != 0 {
            return Err("reply frame header".into());
        }
        body.advance(1);
        let len = usize::try_from(body.get_u32()).map_err(|e| e.to_string())?;
        if body.len() < len {
            return Err("truncated reply frame".into());
        }
        let message = DynamicMessage::decode(output.clone(), body.split_to(len)).map_err(|e| e.to_string())?;
        let mut json = Vec::new();
        message
            .serialize_with_options(&mut serde_json::Serializer::new(&mut json), &options)
            .map_err(|e| e.to_string())?;
        out.put(framed(&json).ok_or("reply too large")?);
    }
    Ok(out.freeze())
}

fn status_reply(status: &Status) -> http::Response<Body> {
    let mut response = status.clone().into_http();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(GRPC_JSON));
    response
}

#[derive(Clone, Debug)]
pub struct CodecLayer {
    max_request_bytes: usize,
}

impl CodecLayer {
    /// `max_request_bytes` bounds the JSON request body read into memory.
    pub fn new(max_request_bytes: usize) -> Self {
        Self { max_request_bytes }
    }
}

impl<S> Layer<S> for CodecLayer {
    type Service = Codec<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Codec { inner, max_request_bytes: self.max_request_bytes }
    }
}

#[derive(Clone, Debug)]
pub struct Codec<S> {
    inner: S,
    max_request_bytes: usize,
}

impl<S, B> Service<http::Request<B>> for Codec<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        match encoding(request.headers()) {
            Encoding::Proto => return Box::pin(inner.call(request.map(Body::new))),
            // CORS preflights carry no body and are answered further out; nothing else here.
            Encoding::Other if request.method() == http::Method::OPTIONS => {
                return Box::pin(inner.call(request.map(Body::new)));
            }
            Encoding::Other => {
                tracing::debug!(path = request.uri().path(), "request body is not gRPC: 415");
                let refusal = http::Response::builder()
                    .status(http::StatusCode::UNSUPPORTED_MEDIA_TYPE)
                    .header(CONTENT_TYPE, "text/plain; charset=utf-8")
                    .body(Body::new(http_body_util::Full::new(Bytes::from_static(b"Unsupported Media Type"))));
                return Box::pin(async move { Ok(refusal.unwrap_or_default()) });
            }
            Encoding::Json => {}
        }
        let (input, output) = match METHODS.get(request.uri().path()) {
            Some(Some(types)) => types.clone(),
            Some(None) => {
                let refusal = status_reply(&Status::unimplemented("JSON messages are served for unary calls only"));
                return Box::pin(async move { Ok(refusal) });
            }
            // Not ours: tonic answers UNIMPLEMENTED without reading the body.
            None => return Box::pin(inner.call(request.map(Body::new))),
        };
        let limit = self.max_request_bytes;
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let body = match Limited::new(body, limit.saturating_add(FRAME_HEADER)).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    tracing::debug!(error = %e, "grpc+json request body unreadable or over the limit");
                    return Ok(status_reply(&Status::invalid_argument(MALFORMED_REQUEST)));
                }
            };
            let Some(proto) = json_to_proto(body, &input) else {
                return Ok(status_reply(&Status::invalid_argument(MALFORMED_REQUEST)));
            };
            parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            parts.headers.remove(CONTENT_LENGTH);
            let reply =
                inner.call(http::Request::from_parts(parts, Body::new(http_body_util::Full::new(proto)))).await?;
            let (mut parts, body) = reply.into_parts();
            parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static(GRPC_JSON));
            parts.headers.remove(CONTENT_LENGTH);
            // A trailers-only reply (every refusal) has no message to convert.
            if parts.headers.contains_key("grpc-status") {
                return Ok(http::Response::from_parts(parts, body));
            }
            let collected = match body.collect().await {
                Ok(collected) => collected,
                Err(e) => {
                    tracing::error!(error = %e, "reply body failed");
                    return Ok(status_reply(&Status::internal("Internal server error")));
                }
            };
            let trailers = collected.trailers().cloned();
            let json = match proto_to_json(collected.to_bytes(), &output) {
                Ok(json) => json,
                Err(e) => {
                    tracing::error!(error = %e, "reply message not convertible to JSON");
                    return Ok(status_reply(&Status::internal("Internal server error")));
                }
            };
            let frames = [Some(Frame::data(json)), trailers.map(Frame::trailers)];
            let stream = futures_util::stream::iter(frames.into_iter().flatten().map(Ok::<_, Infallible>));
            Ok(http::Response::from_parts(parts, Body::new(StreamBody::new(stream))))
        })
    }
}

/// `grpc-message` with only the escapes gRPC requires: `%` and bytes outside printable ASCII.
/// `None` when the value needs no change (or is not valid percent-encoding).
fn plain_message(value: &HeaderValue) -> Option<HeaderValue> {
    let raw = value.as_bytes();
    if !raw.contains(&b'%') {
        return None;
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode(raw).collect();
    let mut out = String::with_capacity(decoded.len());
    for byte in decoded {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    (out.as_bytes() != raw).then(|| HeaderValue::from_str(&out).ok()).flatten()
}

fn plain_grpc_message(headers: &mut HeaderMap) {
    if let Some(plain) = headers.get("grpc-message").and_then(plain_message) {
        headers.insert("grpc-message", plain);
    }
}

/// Rewrites `grpc-message` (in trailers-only replies' headers and in trailers) with
/// [`plain_message`]. Outside every layer that sets a status, so it sees the final one.
#[derive(Clone, Debug, Default)]
pub struct PlainMessageLayer;

impl<S> Layer<S> for PlainMessageLayer {
    type Service = PlainMessage<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PlainMessage { inner }
    }
}

#[derive(Clone, Debug)]
pub struct PlainMessage<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for PlainMessage<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let reply = self.inner.call(request);
        Box::pin(async move {
            let (mut parts, body) = reply.await?.into_parts();
            plain_grpc_message(&mut parts.headers);
            let body = body.map_frame(|mut frame| {
                if let Some(trailers) = frame.trailers_mut() {
                    plain_grpc_message(trailers);
                }
                frame
            });
            Ok(http::Response::from_parts(parts, Body::new(body)))
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_message_keeps_only_the_required_escapes() {
        let plain = |s: &str| plain_message(&HeaderValue::from_str(s).unwrap()).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(plain("Incorrect%20username%20or%20password").as_deref(), Some("Incorrect username or password"));
        assert_eq!(plain("username%3A%20must%20not").as_deref(), Some("username: must not"));
        assert_eq!(plain("100%25%20sure%0A").as_deref(), Some("100%25 sure%0A"));
        assert_eq!(plain("caf%C3%A9").as_deref(), None, "non-ASCII stays escaped");
        assert_eq!(plain("Already plain"), None);
    }

    #[test]
    fn only_grpc_bodies_are_read() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            encoding(&h)
        };
        assert_eq!(with("application/grpc"), Encoding::Proto);
        assert_eq!(with("application/grpc+proto"), Encoding::Proto);
        assert_eq!(with("Application/GRPC+JSON; charset=utf-8"), Encoding::Json);
        for other in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x", "application/json"]
        {
            assert_eq!(with(other), Encoding::Other, "{other}");
        }
        assert_eq!(encoding(&HeaderMap::new()), Encoding::Other);
    }

    use super::*;

    fn input(path: &str) -> MessageDescriptor {
        METHODS.get(path).unwrap().clone().unwrap().0
    }

    #[test]
    fn every_unary_rpc_has_json_and_no_stream_has() {
        for rule in crate::grpc::access::RPCS.iter() {
            assert!(METHODS.contains_key(rule.0), "{}", rule.0);
        }
        assert!(matches!(METHODS.get("/instachatico.auth.v1.AuthService/Login"), Some(Some(_))));
        assert!(matches!(METHODS.get("/grpc.health.v1.Health/Check"), Some(Some(_))));
        assert!(matches!(METHODS.get("/grpc.health.v1.Health/Watch"), Some(None)));
        assert!(matches!(METHODS.get("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Some(None)));
    }

    #[test]
    fn json_request_becomes_the_same_protobuf() {
        let login = input("/instachatico.auth.v1.AuthService/Login");
        let body = framed(br#"{"username":"alice","password":"pw"}"#).unwrap();
        let proto = single_frame(json_to_proto(body, &login).unwrap()).unwrap();
        let decoded: crate::pb::LoginRequest = prost::Message::decode(proto).unwrap();
        assert_eq!((decoded.username.as_str(), decoded.password.as_str()), ("alice", "pw"));
        // JSON names and proto names alike (proto3 JSON accepts both); int64 as string or number.
        let list = input("/instachatico.auth.v1.AuditService/ListAuditLogs");
        for json in [&br#"{"user_id":7}"#[..], br#"{"userId":"7"}"#] {
            let proto = single_frame(json_to_proto(framed(json).unwrap(), &list).unwrap()).unwrap();
            let decoded: crate::pb::ListAuditLogsRequest = prost::Message::decode(proto).unwrap();
            assert_eq!(decoded.user_id, 7, "{}", String::from_utf8_lossy(json));
        }
    }

    #[test]
    fn anything_but_one_frame_of_the_message_json_is_refused() {
        let login = input("/instachatico.auth.v1.AuthService/Login");
        let refused: [&[u8]; 7] = [
            b"",
            b"\x00\x00\x00\x00",
            b"\x01\x00\x00\x00\x02{}",                       // compressed flag
            b"\x00\x00\x00\x00\x05{}",                       // length past the end
            b"\x00\x00\x00\x00\x02{}\x00\x00\x00\x00\x02{}", // two messages
            b"\x00\x00\x00\x00\x0c{\"nope\": 1}",            // unknown field
            b"\x00\x00\x00\x00\x05{},{}",                    // trailing data
        ];
        for body in refused {
            assert!(json_to_proto(Bytes::from_static(body), &login).is_none(), "{body:?}");
        }
    }

    #[test]
    fn reply_protobuf_becomes_json() {
        let output = METHODS.get("/instachatico.auth.v1.UserService/GetMe").unwrap().clone().unwrap().1;
        let user = crate::pb::User { id: 3, username: "alice".into(), ..Default::default() };
        let body = framed(&prost::Message::encode_to_vec(&user)).unwrap();
        let json = single_frame(proto_to_json(body, &output).unwrap()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!((value["id"].as_i64(), value["username"].as_str()), (Some(3), Some("alice")));
    }
}
