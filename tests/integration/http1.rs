//! grpc-web over HTTP/1.1 straight to the service, written the way a browser or connect-node
//! writes it: headers first, then the body in pieces (issue 19). Every early refusal must
//! reach the client as its grpc-web status while the body is still in flight, never as a
//! broken pipe, and the connection must stay usable afterwards when the body was consumed.
//! Raw sockets, so nothing between the test and the service hides what happens on the wire.

use std::time::Duration;

use instachatico_auth::pb;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::{FRONTEND, TestServer, USER_PASSWORD};

/// Connections per refusal kind; each sends the refusal twice, then a health check.
const ROUNDS: usize = 10;
/// Body bytes per write, and the pause between writes: the body is still being written when
/// the service decides.
const PIECE: usize = 4096;
const PAUSE: Duration = Duration::from_millis(1);
/// Longest wait for any one read.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Field 15, length-delimited: unknown to every request message, so decoders skip it.
const PAD_TAG: u8 = (15 << 3) | 2;

const GET_ME: &str = "/instachatico.auth.v1.UserService/GetMe";
const LIST_USERS: &str = "/instachatico.auth.v1.UserService/ListUsers";
const UPDATE_MY_BACKEND: &str = "/instachatico.auth.v1.UserService/UpdateMyBackend";
const HEALTH: &str = "/instachatico.auth.v1.HealthService/Check";

/// One grpc-web data frame holding `message` followed by `pad` bytes of an unknown field.
fn frame(message: &impl Message, pad: usize) -> Vec<u8> {
    let mut payload = message.encode_to_vec();
    if pad > 0 {
        payload.push(PAD_TAG);
        prost::encoding::encode_varint(pad as u64, &mut payload);
        payload.resize(payload.len() + pad, b'x');
    }
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// One refusal to provoke, and the grpc-status it must come back as.
struct Case {
    kind: &'static str,
    path: &'static str,
    token: Option<String>,
    body: Vec<u8>,
    code: &'static str,
    /// Whether the service may end the connection after this reply (a body beyond what it
    /// drains); it must then say `Connection: close`.
    closes: bool,
}

/// An HTTP/1.1 response as read off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn says_close(&self) -> bool {
        self.header("connection").is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }

    /// The grpc-status: in the headers (trailers-only), else in the grpc-web trailer frame.
    fn grpc_status(&self) -> Option<String> {
        if let Some(code) = self.header("grpc-status") {
            return Some(code.to_owned());
        }
        let mut body = self.body.as_slice();
        while body.len() >= 5 {
            let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
            let payload = body.get(5..5 + len)?;
            if body[0] & 0x80 != 0 {
                let text = String::from_utf8_lossy(payload);
                return text
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case("grpc-status")))
                    .map(|(_, v)| v.trim().to_owned());
            }
            body = &body[5 + len..];
        }
        None
    }
}

/// Writes one grpc-web request: the head at once, then the body in pieces with pauses,
/// with a content length or chunked.
async fn send(
    conn: &mut BufReader<TcpStream>,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    chunked: bool,
) -> Result<(), String> {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/grpc-web+proto\r\n\
         accept: application/grpc-web+proto\r\nx-grpc-web: 1\r\norigin: {FRONTEND}\r\n"
    );
    if let Some(token) = token {
        head.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    if chunked {
        head.push_str("transfer-encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    }
    let stream = conn.get_mut();
    let mut sent = 0;
    let fail = |sent: usize, e: std::io::Error| format!("write failed after {sent} of {} body bytes: {e}", body.len());
    stream.write_all(head.as_bytes()).await.map_err(|e| fail(0, e))?;
    for piece in body.chunks(PIECE) {
        tokio::time::sleep(PAUSE).await;
        if chunked {
            let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
            chunk.extend_from_slice(piece);
            chunk.extend_from_slice(b"\r\n");
            stream.write_all(&chunk).await
        } else {
            stream.write_all(piece).await
        }
        .map_err(|e| fail(sent, e))?;
        sent += piece.len();
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").await.map_err(|e| fail(sent, e))?;
    }
    stream.flush().await.map_err(|e| fail(sent, e))
}

async fn line(conn: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = String::new();
    match tokio::time::timeout(READ_TIMEOUT, conn.read_line(&mut line)).await {
        Err(_) => Err("timed out reading the response".to_owned()),
        Ok(Err(e)) => Err(format!("read failed: {e}")),
        Ok(Ok(0)) => Err("connection closed before a complete response".to_owned()),
        Ok(Ok(_)) => Ok(line.trim_end_matches(['\r', '\n']).to_owned()),
    }
}

async fn exact(conn: &mut BufReader<TcpStream>, n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0; n];
    match tokio::time::timeout(READ_TIMEOUT, conn.read_exact(&mut buf)).await {
        Err(_) => Err("timed out reading the response body".to_owned()),
        Ok(Err(e)) => Err(format!("read failed in the response body: {e}")),
        Ok(Ok(_)) => Ok(buf),
    }
}

/// Reads one response: head, then a body by content length, chunks, or to the end.
async fn receive(conn: &mut BufReader<TcpStream>) -> Result<Reply, String> {
    let status_line = line(conn).await?;
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP/1.1 status line: {status_line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let header = line(conn).await?;
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').ok_or_else(|| format!("bad header line {header:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut reply = Reply { status, headers, body: Vec::new() };
    if let Some(length) = reply.header("content-length") {
        let length = length.parse().map_err(|_| format!("bad content-length {length:?}"))?;
        reply.body = exact(conn, length).await?;
    } else if reply.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let size = line(conn).await?;
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size:?}"))?;
            if size == 0 {
                while !line(conn).await?.is_empty() {}
                break;
            }
            reply.body.extend(exact(conn, size).await?);
            exact(conn, 2).await?;
        }
    } else {
        tokio::time::timeout(READ_TIMEOUT, conn.read_to_end(&mut reply.body))
            .await
            .map_err(|_| "timed out reading the response body".to_owned())?
            .map_err(|e| format!("read failed in the response body: {e}"))?;
    }
    Ok(reply)
}

/// One request and its reply on `conn`.
async fn call(
    conn: &mut BufReader<TcpStream>,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    chunked: bool,
) -> Result<Reply, String> {
    send(conn, path, token, body, chunked).await?;
    receive(conn).await
}

/// One connection: the refusal twice (by content length, then chunked), then a health check
/// on the same connection, unless the service said it closes.
async fn round(addr: &str, case: &Case) -> Result<(), String> {
    let mut conn = BufReader::new(TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?);
    for chunked in [false, true] {
        let reply = call(&mut conn, case.path, case.token.as_deref(), &case.body, chunked).await?;
        if reply.status != 200 || reply.grpc_status().as_deref() != Some(case.code) {
            return Err(format!("expected HTTP 200 with grpc-status {}, got {reply:?}", case.code));
        }
        if reply.says_close() {
            if !case.closes {
                return Err(format!("the body was within the limit, yet the service closes: {reply:?}"));
            }
            let mut rest = Vec::new();
            let end = tokio::time::timeout(READ_TIMEOUT, conn.read_to_end(&mut rest)).await;
            return match end {
                Ok(Ok(_)) if rest.is_empty() => Ok(()),
                other => Err(format!("after Connection: close, expected the end, got {other:?} {rest:?}")),
            };
        }
        if case.closes {
            return Err(format!("a body beyond the drain bound, yet no Connection: close: {reply:?}"));
        }
    }
    let reply = call(&mut conn, HEALTH, None, &frame(&pb::CheckRequest {}, 0), false)
        .await
        .map_err(|e| format!("the connection was not reusable after the refusals: {e}"))?;
    match reply.grpc_status().as_deref() {
        Some("0") => Ok(()),
        _ => Err(format!("health check on the reused connection failed: {reply:?}")),
    }
}

/// Runs every case for [`ROUNDS`] connections; returns one line per failed case.
async fn run(addr: &str, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let mut errors = Vec::new();
        for _ in 0..ROUNDS {
            if let Err(e) = round(addr, case).await {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            failures.push(format!("{}: {} of {ROUNDS} rounds failed, first: {}", case.kind, errors.len(), errors[0]));
        }
    }
    failures
}

/// Unauthenticated (the interceptor refuses before the body is read), forbidden, invalid and
/// too large (the decoder refuses after the frame header), and rate-limited, each over
/// HTTP/1.1 with a body of tens of KB still in flight, both by content length and chunked.
async fn early_refusals_over_http1_reach_the_client(s: TestServer) {
    let admin = s.admin_token().await;
    s.create_user(&admin, "webby", None).await;
    let user = s.login("webby", USER_PASSWORD).await;
    let addr = s.running.as_ref().unwrap().addr.to_string();
    let control = pb::UpdateMyBackendRequest {
        api_base_url: format!("http://localhost:4291/\u{1}{}", "a".repeat(40_000)),
        bearer_token: "token".into(),
        instagram_username: None,
    };
    let cases = [
        Case {
            kind: "unauthenticated (GetMe, no token)",
            path: GET_ME,
            token: None,
            body: frame(&pb::GetMeRequest {}, 40_000),
            code: "16",
            closes: false,
        },
        Case {
            kind: "forbidden (ListUsers as a user)",
            path: LIST_USERS,
            token: Some(user.clone()),
            body: frame(&pb::ListUsersRequest { limit: 10, offset: 0, ..Default::default() }, 40_000),
            code: "7",
            closes: false,
        },
        Case {
            kind: "invalid (a control character)",
            path: UPDATE_MY_BACKEND,
            token: Some(user.clone()),
            body: frame(&control, 0),
            code: "3",
            closes: false,
        },
        // Over MAX_REQUEST_BYTES (64 KiB): tonic's decoder answers OUT_OF_RANGE.
        Case {
            kind: "too large (80 KB)",
            path: GET_ME,
            token: Some(user.clone()),
            body: frame(&pb::GetMeRequest {}, 80_000),
            code: "11",
            closes: false,
        },
        // Beyond what the service drains: it answers, says close, and reads the rest first.
        Case {
            kind: "too large (400 KB)",
            path: GET_ME,
            token: Some(user.clone()),
            body: frame(&pb::GetMeRequest {}, 400_000),
            code: "11",
            closes: true,
        },
    ];
    let mut failures = run(&addr, &cases).await;

    // Rate-limited: one authenticated call a minute, spent before the rounds.
    let s = s.restart(&[("rate-limit-api-per-minute", "1")]).await;
    let user = s.login("webby", USER_PASSWORD).await;
    let addr = s.running.as_ref().unwrap().addr.to_string();
    s.users().await.get_me(crate::common::authed(&user, pb::GetMeRequest {})).await.expect("the one allowed call");
    let limited = [Case {
        kind: "rate-limited (GetMe over the per-user limit)",
        path: GET_ME,
        token: Some(user),
        body: frame(&pb::GetMeRequest {}, 40_000),
        code: "8",
        closes: false,
    }];
    failures.extend(run(&addr, &limited).await);
    assert!(failures.is_empty(), "refusals over HTTP/1.1 did not reach the client:\n{}", failures.join("\n"));
    s.stop().await;
}

crate::on_both_backends!(early_refusals_over_http1_reach_the_client);
