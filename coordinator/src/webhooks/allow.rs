//! Where a webhook may point. A tenant chooses the URL, and the coordinator makes the request
//! from inside the farm's network, so an unchecked URL would let a tenant reach what only the
//! farm should: the cloud metadata endpoint (169.254.169.254), Redis, the Kubernetes API. Only
//! what the farm's `--webhook-allow` list names is reached, and internal addresses (loopback,
//! link-local, private ranges, ...) only when an address or CIDR entry covers them.
//!
//! Names are checked where they are resolved: at submission, and again by the delivering
//! client's own resolver ([`AllowList::resolve`]), whose checked addresses are the ones it
//! connects to, so a name that resolves elsewhere later (DNS rebinding) is refused too.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;
use url::{Host, Url};

/// Longest webhook URL accepted: more is no receiver's address.
pub const MAX_URL_CHARS: usize = 2048;
/// How long a name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One entry of `--webhook-allow`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowEntry {
    /// A host name, matched whole (lower case, no trailing dot).
    Host(String),
    /// `*.example.com`: any name below the domain (held as `.example.com`).
    Below(String),
    /// An address or a CIDR range; the only entries that open internal addresses.
    Net(IpNet),
}

impl FromStr for AllowEntry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(AllowEntry::Net(net));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(AllowEntry::Net(IpNet::from(ip)));
        }
        let (below, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(format!(
                "'{text}' is not a host name (hooks.example.com), a pattern (*.example.com), an \
                 address (203.0.113.7) or a CIDR range (10.0.0.0/8)"
            ));
        }
        Ok(if below {
            AllowEntry::Below(format!(".{name}"))
        } else {
            AllowEntry::Host(name)
        })
    }
}

/// The farm's `--webhook-allow` list.
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    entries: Vec<AllowEntry>,
}

impl AllowList {
    /// The list of `entries`; empty allows every public address and no internal one.
    pub fn new(entries: Vec<AllowEntry>) -> AllowList {
        AllowList { entries }
    }

    /// Whether a name entry names `host`.
    fn names(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.entries.iter().any(|entry| match entry {
            AllowEntry::Host(name) => *name == host,
            AllowEntry::Below(suffix) => host.ends_with(suffix.as_str()),
            AllowEntry::Net(_) => false,
        })
    }

    /// Whether an address or CIDR entry covers `ip`.
    fn covers(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.entries.iter().any(|entry| match entry {
            AllowEntry::Net(net) => net.contains(&ip),
            _ => false,
        })
    }

    /// Whether the list has address or CIDR entries, through which a name may also pass.
    fn has_nets(&self) -> bool {
        self.entries.iter().any(|e| matches!(e, AllowEntry::Net(_)))
    }

    /// Refuses address `ip` of `host` unless the list allows it (see the module's doc).
    pub fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        if self.covers(ip) {
            return Ok(());
        }
        if let Some(kind) = internal(ip) {
            return Err(format!(
                "webhook host {host} is {ip}, a {kind} address: the farm reaches internal \
                 addresses only when --webhook-allow lists them (an address or CIDR)"
            ));
        }
        if self.entries.is_empty() || self.names(host) {
            return Ok(());
        }
        Err(not_listed(host))
    }

    /// Checks a webhook URL's form: http(s), a host, not too long; a host given as an address
    /// is checked against the list too (a name is checked when resolved).
    pub fn check_url(&self, text: &str) -> Result<Url, String> {
        if text.chars().count() > MAX_URL_CHARS {
            return Err(format!(
                "the webhook URL has {} characters; at most {MAX_URL_CHARS}",
                text.chars().count()
            ));
        }
        let url = Url::parse(text).map_err(|e| {
            format!("webhook '{text}' is not a URL ({e}): give http(s)://HOST/PATH")
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "webhook '{text}' is not an http:// or https:// URL (its scheme is '{}')",
                url.scheme()
            ));
        }
        match url.host() {
            None => return Err(format!("webhook '{text}' has no host")),
            Some(Host::Ipv4(ip)) => self.check_address(&ip.to_string(), IpAddr::V4(ip))?,
            Some(Host::Ipv6(ip)) => self.check_address(&ip.to_string(), IpAddr::V6(ip))?,
            Some(Host::Domain(name)) => {
                if !self.entries.is_empty() && !self.names(name) && !self.has_nets() {
                    return Err(not_listed(name));
                }
            }
        }
        Ok(url)
    }

    /// Resolves `host` and checks every address it has: one refused address refuses the host,
    /// since the client could connect to any of them.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let lookup = tokio::net::lookup_host((host, port));
        let addresses: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
            .await
            .map_err(|_| format!("webhook host {host} did not resolve within 5 s"))?
            .map_err(|e| format!("webhook host {host} does not resolve: {e}"))?
            .collect();
        if addresses.is_empty() {
            return Err(format!("webhook host {host} has no address"));
        }
        for address in &addresses {
            self.check_address(host, address.ip())?;
        }
        Ok(addresses)
    }

    /// Checks a webhook URL completely, resolving its host: what a submission must pass.
    pub async fn vet(&self, text: &str) -> Result<Url, String> {
        let url = self.check_url(text)?;
        if let Some(Host::Domain(name)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(80);
            self.resolve(name, port).await?;
        }
        Ok(url)
    }
}

fn not_listed(host: &str) -> String {
    format!("webhook host {host} is not in the farm's --webhook-allow list")
}

/// An IPv4 address carried in IPv6 (mapped, compatible or NAT64) as the IPv4 address it is,
/// so that every check sees through the wrapping.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    let compatible = s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1);
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (mapped || compatible || nat64).then_some(tail)
}

/// What kind of internal address `ip` is, or `None` for a public one.
pub fn internal(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        _ if ip.is_loopback() => "loopback",
        (169, 254) => "link-local (the cloud metadata endpoint's range)",
        _ if ip.is_private() => "private",
        (100, 64..=127) => "shared (carrier-grade NAT)",
        (0, _) => "'this network'",
        (192, 0) if ip.octets()[2] == 0 => "IETF protocol",
        (198, 18..=19) => "benchmarking",
        _ if ip.is_multicast() => "multicast",
        (240..=255, _) => "reserved or broadcast",
        _ => return None,
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(match first {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if first & 0xffc0 == 0xfe80 => "link-local",
        _ if first & 0xfe00 == 0xfc00 => "unique local (private)",
        _ if first & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::new(entries.iter().map(|e| e.parse().unwrap()).collect())
    }

    #[test]
    fn internal_addresses_are_refused_by_default_and_public_ones_allowed() {
        let open = list(&[]);
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:8080/hook",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://255.255.255.255/",
        ] {
            let e = open.check_url(url).unwrap_err();
            assert!(e.contains("--webhook-allow lists them"), "{url}: {e}");
        }
        let e = open.check_url("http://169.254.169.254/").unwrap_err();
        assert!(e.contains("metadata"), "{e}");
        for url in [
            "https://203.0.113.7/hook",
            "http://[2001:db8::1]:81/",
            "https://hooks.example.com/",
        ] {
            open.check_url(url).unwrap();
        }
    }

    #[test]
    fn only_what_the_list_names_is_reached() {
        let allow = list(&["127.0.0.1", "10.0.0.0/8", "hooks.example.com", "*.acme.io"]);
        for url in [
            "http://127.0.0.1:9/",
            "http://10.9.9.9/",
            "https://hooks.example.com/x",
        ] {
            allow.check_url(url).unwrap();
        }
        for url in [
            "http://127.0.0.2/",
            "http://169.254.169.254/",
            "http://192.168.0.1/",
        ] {
            assert!(allow.check_url(url).is_err(), "{url}");
        }
        let e = allow.check_address("203.0.113.7", "203.0.113.7".parse().unwrap());
        assert!(e
            .unwrap_err()
            .contains("not in the farm's --webhook-allow list"));
        assert!(allow
            .check_address("a.b.acme.io", "203.0.113.7".parse().unwrap())
            .is_ok());
        assert!(allow
            .check_address("acme.io", "203.0.113.7".parse().unwrap())
            .is_err());
        // A listed name that resolves to an internal address is refused all the same.
        let e = allow
            .check_address("hooks.example.com", "169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert!(e.contains("link-local"), "{e}");
        let names_only = list(&["hooks.example.com"]);
        assert!(names_only.check_url("https://other.example.com/").is_err());
    }

    #[test]
    fn urls_that_are_not_http_or_not_urls_are_refused_naming_the_problem() {
        let open = list(&[]);
        for (url, expected) in [
            (
                "ftp://example.com/x",
                "not an http:// or https:// URL (its scheme is 'ftp')",
            ),
            ("file:///etc/passwd", "its scheme is 'file'"),
            (
                "gopher://127.0.0.1:6379/_FLUSHALL",
                "its scheme is 'gopher'",
            ),
            ("example.com/hook", "is not a URL"),
            ("http://", "is not a URL"),
        ] {
            let e = open.check_url(url).unwrap_err();
            assert!(e.contains(expected), "{url}: {e}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_CHARS));
        assert!(open.check_url(&long).unwrap_err().contains("at most 2048"));
    }

    #[test]
    fn bad_entries_are_refused_naming_what_an_entry_may_be() {
        for bad in ["", "http://x", "a b", "*.", "10.0.0.0/33"] {
            let e = bad.parse::<AllowEntry>().unwrap_err();
            assert!(e.contains("CIDR"), "{bad}: {e}");
        }
        assert_eq!(
            "*.Example.COM".parse::<AllowEntry>().unwrap(),
            AllowEntry::Below(".example.com".into())
        );
    }

    #[tokio::test]
    async fn a_name_is_checked_by_every_address_it_resolves_to() {
        let e = list(&[]).vet("http://localhost:9/hook").await.unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let allowed = list(&["127.0.0.0/8", "::1"]);
        allowed.vet("http://localhost:9/hook").await.unwrap();
    }
}
