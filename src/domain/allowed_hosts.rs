//! BACKEND_ALLOWED_HOSTS: which backends users may point their `api_base_url` at, and which
//! addresses the backend proxy may connect to. Users choose their own URL, so without this list
//! the proxy would fetch `http://127.0.0.1:9464/metrics` or a cloud metadata address for anyone
//! who asked (SSRF).
//!
//! Entries are host patterns with an optional port, or CIDRs:
//! - `api.example.com` (ports 80 and 443), `api.example.com:8443`, `api.example.com:*`;
//! - `*.example.com:443`: any subdomain (not `example.com` itself);
//! - `127.0.0.1:9000`, `[::1]:9000`: that one address and port;
//! - `10.0.0.0/8`, `fd00::/8`: any address in the network, any port.
//!
//! A URL is allowed when its host matches a pattern (with the port), or is an IP address inside
//! a listed network. The address actually connected to is checked again after resolution (DNS
//! rebinding): an address named by a pattern or inside a listed network is allowed; any other
//! must be a public one, so a listed name that resolves to loopback, a private network or a
//! link-local address (cloud metadata) is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use url::{Host, Url};

/// The parsed allow-list. Empty allows nothing.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    patterns: Vec<Pattern>,
    nets: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    host: HostMatch,
    ports: Ports,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// A name, lowercase, without a trailing dot.
    Name(String),
    /// `*.example.com`: stored as `.example.com`.
    Subdomains(String),
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ports {
    /// No port given: the web's defaults, 80 and 443.
    Default,
    One(u16),
    Any,
}

impl Ports {
    fn admits(self, port: u16) -> bool {
        match self {
            Self::Default => port == 80 || port == 443,
            Self::One(p) => p == port,
            Self::Any => true,
        }
    }
}

impl AllowedHosts {
    /// Parses the comma-separated entries (blank ones ignored); the error names the bad entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut list = Self::default();
        for entry in entries.iter().flat_map(|e| e.as_ref().split(',')).map(str::trim).filter(|e| !e.is_empty()) {
            if entry.contains('/') {
                let net: IpNet = entry.parse().map_err(|_| format!("{entry:?} is not a CIDR such as 10.0.0.0/8"))?;
                list.nets.push(net.trunc());
            } else {
                list.patterns.push(parse_pattern(entry)?);
            }
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && self.nets.is_empty()
    }

    /// Whether a user may store `url` as their backend.
    pub fn permits_url(&self, url: &Url) -> bool {
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else { return false };
        match host {
            Host::Domain(name) => {
                let name = normalize(name);
                self.patterns.iter().any(|p| p.ports.admits(port) && p.host.matches_name(&name))
            }
            Host::Ipv4(ip) => self.permits_ip(IpAddr::V4(ip), port),
            Host::Ipv6(ip) => self.permits_ip(IpAddr::V6(ip), port),
        }
    }

    /// Whether the proxy may connect to `addr`, one of the addresses `url`'s host resolved to
    /// (`url` itself already permitted).
    pub fn permits_address(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.permits_ip(ip, addr.port()) || is_public(ip)
    }

    fn permits_ip(&self, ip: IpAddr, port: u16) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
            || self.patterns.iter().any(|p| p.host == HostMatch::Ip(ip) && p.ports.admits(port))
    }
}

impl HostMatch {
    fn matches_name(&self, name: &str) -> bool {
        match self {
            Self::Name(n) => n == name,
            Self::Subdomains(suffix) => name.len() > suffix.len() && name.ends_with(suffix.as_str()),
            Self::Ip(_) => false,
        }
    }
}

fn parse_pattern(entry: &str) -> Result<Pattern, String> {
    let bad = || format!("{entry:?} is not a host pattern such as api.example.com:443, *.example.com or 10.0.0.5:8080");
    // Split off the port: the last `:` outside brackets.
    let (host, port) = match entry.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => (h, Some(p)),
        _ => (entry, None),
    };
    let ports = match port {
        None => Ports::Default,
        Some("*") => Ports::Any,
        Some(p) => Ports::One(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Pattern { host: HostMatch::Ip(canonical(ip)), ports });
    }
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let name = normalize(name);
    let valid_label =
        |l: &str| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(bad());
    }
    let host = if wildcard { HostMatch::Subdomains(format!(".{name}")) } else { HostMatch::Name(name) };
    Ok(Pattern { host, ports })
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Globally routable unicast: not loopback, private, shared (CGNAT), link-local (cloud
/// metadata), documentation, benchmarking, multicast or reserved. (`IpAddr::is_global` is not
/// stable yet.)
fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    // Global unicast is 2000::/3, less documentation (2001:db8::/32).
    (segments[0] & 0xe000) == 0x2000 && !(segments[0] == 0x2001 && segments[1] == 0x0db8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &str) -> AllowedHosts {
        AllowedHosts::parse(&[entries]).unwrap()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn urls_need_a_matching_host_and_port() {
        let l =
            list("api.example.com, *.backends.example:8443, other.example:*, 127.0.0.1:9000, 10.0.0.0/8, [::1]:7000");
        assert!(l.permits_url(&url("https://api.example.com/v1")));
        assert!(l.permits_url(&url("http://API.Example.com./")), "case and a trailing dot do not matter");
        assert!(!l.permits_url(&url("https://api.example.com:8443/")), "no port given: 80 and 443 only");
        assert!(l.permits_url(&url("https://a.backends.example:8443/")));
        assert!(!l.permits_url(&url("https://backends.example:8443/")), "the wildcard needs a subdomain");
        assert!(!l.permits_url(&url("https://a.backends.example/")));
        assert!(!l.permits_url(&url("https://evilbackends.example:8443/")));
        assert!(l.permits_url(&url("http://other.example:1234/")));
        assert!(l.permits_url(&url("http://127.0.0.1:9000/")));
        assert!(!l.permits_url(&url("http://127.0.0.1:9464/metrics")), "another port of an allowed address");
        assert!(!l.permits_url(&url("http://localhost:9000/")), "a name is not its address");
        assert!(l.permits_url(&url("http://10.1.2.3:5/")));
        assert!(l.permits_url(&url("http://[::1]:7000/")));
        assert!(l.permits_url(&url("http://[::ffff:10.0.0.1]:80/")), "IPv4-mapped is the IPv4 address");
        assert!(!l.permits_url(&url("http://169.254.169.254/latest/meta-data")));
        assert!(!AllowedHosts::default().permits_url(&url("https://api.example.com/")));
    }

    #[test]
    fn resolved_addresses_must_be_listed_or_public() {
        let l = list("api.example.com, 127.0.0.1:9000, 10.0.0.0/8");
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(l.permits_address(addr("93.184.216.34:443")));
        assert!(l.permits_address(addr("[2606:2800:220:1::1]:443")));
        assert!(l.permits_address(addr("10.9.9.9:443")));
        assert!(l.permits_address(addr("127.0.0.1:9000")));
        for forbidden in [
            "127.0.0.1:443",
            "127.0.0.1:9464",
            "169.254.169.254:80",
            "192.168.1.1:443",
            "172.16.0.1:443",
            "100.64.0.1:443",
            "0.0.0.0:443",
            "[::1]:443",
            "[fd00::1]:443",
            "[fe80::1]:443",
            "[::ffff:127.0.0.1]:443",
            "[64:ff9b::a9fe:a9fe]:80",
            "[2001:db8::1]:443",
        ] {
            assert!(!l.permits_address(addr(forbidden)), "{forbidden}");
        }
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["10.0.0.0/33", "api.example.com:0", "api.example.com:http", "exa mple.com", "*.", "a..b", "x:1:2"] {
            let error = AllowedHosts::parse(&[bad]).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        assert!(AllowedHosts::parse(&["", " , "]).unwrap().is_empty());
    }
}
