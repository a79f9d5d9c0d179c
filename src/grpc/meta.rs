//! What a request's metadata tells us: the bearer token, the client's address (trusting
//! `x-forwarded-for` only from configured proxies) and user agent.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use tonic::metadata::MetadataMap;

use crate::domain::types::ClientInfo;
use crate::error::{Error, Result};

/// The token from `authorization: Bearer <jwt>`.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str> {
    bearer_from_headers(metadata.as_ref())
}

/// The same, from the HTTP headers (the access layer runs before tonic has metadata).
pub fn bearer_from_headers(headers: &http::HeaderMap) -> Result<&str> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(Error::Unauthenticated("Not authenticated"))?
        .to_str()
        .map_err(|_| Error::Unauthenticated("Invalid authorization header"))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(Error::Unauthenticated("Invalid authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Error::Unauthenticated("Invalid authorization header"));
    }
    Ok(token.trim())
}

/// Decides which address is the client's.
#[derive(Debug, Clone, Default)]
pub struct ClientIpPolicy {
    trusted_proxies: Vec<IpNet>,
}

impl ClientIpPolicy {
    pub fn new(trusted_proxies: Vec<IpNet>) -> Self {
        Self { trusted_proxies }
    }

    /// The peer's address, unless the peer is a trusted proxy: then the last address in
    /// `x-forwarded-for`, the one that proxy appended for its own peer. Entries further left
    /// were written by the client and prove nothing.
    pub fn client_ip(&self, peer: Option<SocketAddr>, metadata: &MetadataMap) -> Option<IpAddr> {
        let peer_ip = peer.map(|p| canonical(p.ip()))?;
        if !self.trusted_proxies.iter().any(|net| net.contains(&peer_ip)) {
            return Some(peer_ip);
        }
        Some(last_forwarded(metadata).unwrap_or(peer_ip))
    }

    pub fn client_info<T>(&self, request: &tonic::Request<T>) -> ClientInfo {
        self.client_info_parts(request.extensions(), request.metadata())
    }

    /// The same, from the HTTP request (the access layer runs before tonic has metadata; the
    /// transport has already put the connection's info in the extensions).
    pub fn client_info_http(&self, headers: &http::HeaderMap, extensions: &http::Extensions) -> ClientInfo {
        let metadata = MetadataMap::from_headers(headers.clone());
        self.client_info_parts(extensions, &metadata)
    }

    /// Whether the connection is the Envoy sidecar's: its Unix socket, or a TCP peer in
    /// TRUSTED_PROXIES.
    pub fn is_sidecar(&self, extensions: &http::Extensions) -> bool {
        if extensions.get::<tonic::transport::server::UdsConnectInfo>().is_some() {
            return true;
        }
        let peer = extensions.get::<tonic::transport::server::TcpConnectInfo>().and_then(|info| info.remote_addr());
        peer.is_some_and(|p| {
            let ip = canonical(p.ip());
            self.trusted_proxies.iter().any(|net| net.contains(&ip))
        })
    }

    fn client_info_parts(&self, extensions: &http::Extensions, metadata: &MetadataMap) -> ClientInfo {
        let user_agent = metadata.get("user-agent").and_then(|v| v.to_str().ok()).map(str::to_owned);
        // Over the sidecar's Unix socket (PROXY_SOCKET), which only the proxy can open, the
        // proxy is the peer, and the address it appended is the client's.
        let ip = if extensions.get::<tonic::transport::server::UdsConnectInfo>().is_some() {
            last_forwarded(metadata)
        } else {
            let peer = extensions.get::<tonic::transport::server::TcpConnectInfo>().and_then(|info| info.remote_addr());
            self.client_ip(peer, metadata)
        };
        ClientInfo { ip, user_agent }
    }
}

/// The last address in `x-forwarded-for`: the one the nearest proxy appended.
fn last_forwarded(metadata: &MetadataMap) -> Option<IpAddr> {
    metadata
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .next_back()
        .map(canonical)
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(xff: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("x-forwarded-for", xff.parse().unwrap());
        m
    }

    #[test]
    fn xff_trusted_only_from_proxies() {
        let policy = ClientIpPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]);
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let direct: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        // Through the proxy: the address it appended (rightmost), not what the client claimed.
        assert_eq!(policy.client_ip(Some(proxy), &md("6.6.6.6, 10.1.1.1")), Some("10.1.1.1".parse().unwrap()));
        // A direct client cannot choose its address.
        assert_eq!(policy.client_ip(Some(direct), &md("6.6.6.6")), Some("10.0.0.9".parse().unwrap()));
        // Proxy without the header: the proxy's own address.
        assert_eq!(policy.client_ip(Some(proxy), &MetadataMap::new()), Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bearer_parsing() {
        let mut m = MetadataMap::new();
        assert!(bearer_token(&m).is_err());
        m.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer_token(&m).unwrap(), "abc.def.ghi");
        m.insert("authorization", "Basic abc".parse().unwrap());
        assert!(bearer_token(&m).is_err());
    }
}
