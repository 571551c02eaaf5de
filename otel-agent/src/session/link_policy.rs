//! The linking policy (`--link-peers`): the peer networks where agents run, which decide
//! whether a server-side span names the client-side span as its parent or only links to it
//! (README, "Connection traces"). A server span whose client has no agent would otherwise
//! show "missing parent" in Jaeger and Tempo; outside the networks it is a root with a span
//! link, so both halves still meet in one trace.
//!
//! The default, when the flag is not given, is what is always safe: loopback (127.0.0.0/8,
//! ::1) and this host's own addresses ([`host_addresses`], read once at start in the
//! agent's network namespace), since a client at one of them is watched by the same agent.
//! Peers are compared in their canonical form, so an IPv4-mapped IPv6 peer
//! (`::ffff:10.1.2.3`) matches the IPv4 network that contains it.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// The forms `--link-peers` accepts, for its error messages.
pub const ACCEPTED_FORMS: &str = "a comma-separated list of networks in CIDR notation or \
     addresses (like 10.0.0.0/8,fd00::/8,192.168.1.5), `all` or `none`";

/// One network: the addresses whose first `prefix` bits are those of `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// A network; `address` is canonical (IPv4-mapped IPv6 written as IPv4) and has no bits
    /// set beyond `prefix`.
    fn new(address: IpAddr, prefix: u8) -> Self {
        Self { address, prefix }
    }

    /// The network of one address.
    pub fn host(address: IpAddr) -> Self {
        let address = address.to_canonical();
        Self::new(address, max_prefix(address))
    }

    /// Whether `peer` (in its canonical form) is in the network.
    pub fn contains(&self, peer: IpAddr) -> bool {
        match (self.address, peer.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(peer)) => {
                masked(u32::from(peer).into(), 32, self.prefix) == u32::from(net).into()
            }
            (IpAddr::V6(net), IpAddr::V6(peer)) => {
                masked(u128::from(peer), 128, self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address; an IPv4-mapped IPv6 network
    /// (`::ffff:10.0.0.0/104`) becomes the IPv4 network it maps.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or network"))?;
        let max = max_prefix(address);
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&prefix| prefix <= max)
                .ok_or_else(|| format!("`{text}` has a prefix length that is not 0 to {max}"))?,
        };
        let (address, prefix) = match address {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                (address.to_canonical(), prefix - 96)
            }
            _ => (address, prefix),
        };
        let bits = match address {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let network = masked(bits, max_prefix(address), prefix);
        if network != bits {
            let network = match address {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(network as u32)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(network)),
            };
            return Err(format!(
                "`{text}` has bits set after its prefix; did you mean {network}/{prefix}?"
            ));
        }
        Ok(Self::new(address, prefix))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// 32 for IPv4, 128 for IPv6.
fn max_prefix(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The first `prefix` of the low `width` bits of `bits`.
fn masked(bits: u128, width: u8, prefix: u8) -> u128 {
    let host_bits = u32::from(width - prefix);
    bits.checked_shr(host_bits)
        .and_then(|kept| kept.checked_shl(host_bits))
        .unwrap_or(0)
}

/// Which server-side spans name their client span as parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkPolicy {
    /// Every peer runs an agent: always the parent.
    All,
    /// No peer is known to run an agent: always a link.
    Nothing,
    /// The parent for peers in these networks, a link for the others.
    Networks(Vec<Network>),
}

impl LinkPolicy {
    /// Parses the value of `--link-peers` / `OTEL_AGENT_LINK_PEERS`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "all" => return Ok(Self::All),
            "none" => return Ok(Self::Nothing),
            "" => return Err(format!("the list is empty; use {ACCEPTED_FORMS}")),
            _ => {}
        }
        text.split(',')
            .map(|item| match item.trim() {
                "all" | "none" => Err(format!(
                    "`{}` stands alone, not in a list; use {ACCEPTED_FORMS}",
                    item.trim()
                )),
                item => {
                    Network::parse(item).map_err(|error| format!("{error}; use {ACCEPTED_FORMS}"))
                }
            })
            .collect::<Result<_, _>>()
            .map(Self::Networks)
    }

    /// The default: loopback and `host` (this host's addresses).
    pub fn loopback_and(host: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut networks = vec![
            Network::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
            Network::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        for address in host {
            let network = Network::host(address);
            if !networks.iter().any(|known| known.contains(address)) {
                networks.push(network);
            }
        }
        Self::Networks(networks)
    }

    /// Whether a server span whose client is at `peer` names the client span as parent.
    pub fn links(&self, peer: IpAddr) -> bool {
        match self {
            Self::All => true,
            Self::Nothing => false,
            Self::Networks(networks) => networks.iter().any(|network| network.contains(peer)),
        }
    }
}

impl fmt::Display for LinkPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Nothing => f.write_str("none"),
            Self::Networks(networks) => {
                for (i, network) in networks.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{network}")?;
                }
                Ok(())
            }
        }
    }
}

/// This host's addresses: every IPv4 and IPv6 address of every interface in the calling
/// thread's network namespace (`getifaddrs(3)`).
pub fn host_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `getifaddrs` writes a pointer to a list it allocated into `list`, or fails
    // and leaves it unset; the list is freed below, once.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a non-null node of the list `getifaddrs` returned, alive until
        // `freeifaddrs`.
        let ifaddr = unsafe { &*entry };
        if let Some(address) = address_of(ifaddr.ifa_addr) {
            addresses.push(address);
        }
        entry = ifaddr.ifa_next;
    }
    // SAFETY: `list` came from a successful `getifaddrs` and is freed once; nothing that
    // points into it is used afterwards.
    unsafe { libc::freeifaddrs(list) };
    Ok(addresses)
}

/// The IP address in a `struct sockaddr`, if it is one.
fn address_of(sockaddr: *const libc::sockaddr) -> Option<IpAddr> {
    if sockaddr.is_null() {
        return None;
    }
    // SAFETY: a non-null `ifa_addr` points to a socket address whose `sa_family` says which
    // structure it is; it is read as that structure only (unaligned reads, as the list
    // gives no alignment promise beyond `sockaddr`'s).
    unsafe {
        match i32::from((*sockaddr).sa_family) {
            libc::AF_INET => {
                let v4 = std::ptr::read_unaligned(sockaddr.cast::<libc::sockaddr_in>());
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let v6 = std::ptr::read_unaligned(sockaddr.cast::<libc::sockaddr_in6>());
                Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_and_mapped_ipv6_peers() {
        let policy = LinkPolicy::parse("10.0.0.0/8, fd00::/8,192.168.1.5").unwrap();
        for (peer, linked) in [
            ("10.0.0.0", true),
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("9.255.255.255", false),
            ("::ffff:10.1.2.3", true),
            ("::ffff:11.1.2.3", false),
            ("fd12::1", true),
            ("fe00::1", false),
            ("192.168.1.5", true),
            ("192.168.1.6", false),
            ("::ffff:192.168.1.5", true),
            ("127.0.0.1", false),
        ] {
            assert_eq!(policy.links(ip(peer)), linked, "{peer}");
        }
    }

    #[test]
    fn all_none_and_the_default() {
        for peer in ["10.0.0.1", "::1", "::ffff:127.0.0.1", "8.8.8.8"] {
            assert!(LinkPolicy::parse("all").unwrap().links(ip(peer)));
            assert!(!LinkPolicy::parse("none").unwrap().links(ip(peer)));
        }
        let default =
            LinkPolicy::loopback_and([ip("192.0.2.7"), ip("2001:db8::7"), ip("127.0.0.1")]);
        assert_eq!(
            default.to_string(),
            "127.0.0.0/8,::1/128,192.0.2.7/32,2001:db8::7/128"
        );
        for (peer, linked) in [
            ("127.0.0.1", true),
            ("127.3.2.1", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("192.0.2.7", true),
            ("::ffff:192.0.2.7", true),
            ("2001:db8::7", true),
            ("192.0.2.8", false),
            ("2001:db8::8", false),
            ("::2", false),
        ] {
            assert_eq!(default.links(ip(peer)), linked, "{peer}");
        }
    }

    #[test]
    fn edge_prefixes() {
        let everything = LinkPolicy::parse("0.0.0.0/0,::/0").unwrap();
        assert!(everything.links(ip("203.0.113.1")));
        assert!(everything.links(ip("2001:db8::1")));
        let mapped = LinkPolicy::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.links(ip("10.9.9.9")));
        assert_eq!(LinkPolicy::parse("::1").unwrap().to_string(), "::1/128");
    }

    #[test]
    fn bad_values_say_what_is_accepted() {
        for (text, message) in [
            ("", "the list is empty"),
            (
                "10.0.0.0/33",
                "`10.0.0.0/33` has a prefix length that is not 0 to 32",
            ),
            ("fd00::/129", "not 0 to 128"),
            (
                "10.0.0.1/8",
                "`10.0.0.1/8` has bits set after its prefix; did you mean 10.0.0.0/8?",
            ),
            ("10.0.0.0/x", "prefix length"),
            ("localhost", "`localhost` is not an IP address or network"),
            ("10.0.0.0/8,", "`` is not an IP address"),
            ("all,10.0.0.0/8", "`all` stands alone"),
            ("10.0.0.0/8,none", "`none` stands alone"),
        ] {
            let error = LinkPolicy::parse(text).unwrap_err();
            assert!(error.contains(message), "{text}: {error}");
            assert!(error.contains(ACCEPTED_FORMS), "{text}: {error}");
        }
    }

    #[test]
    fn host_addresses_include_loopback() {
        let addresses = host_addresses().unwrap();
        assert!(addresses.contains(&ip("127.0.0.1")), "{addresses:?}");
    }
}
