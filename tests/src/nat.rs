//! Two test hosts joined by a network address translator, as a Kubernetes Service joins a
//! client pod to a server pod: two network namespaces the test creates, joined by a veth
//! pair, with a route for a virtual service address (VIP) on the client host and, in the
//! client host's nftables, a `nat` `output` chain that DNATs `VIP:port` to the server's
//! address and another port (kube-proxy's Service rule) and a `nat` `postrouting` chain that
//! masquerades TCP with fully random source ports. The client's own ephemeral ports
//! ([`CLIENT_PORTS`]) and the ports the masquerade picks ([`MASQUERADE_PORTS`]) are disjoint
//! ranges, so the server always sees another port than the client used.
//!
//! Everything lives inside the two namespaces (named with the test's pid by [`NetNs`]): the
//! veth pair, the route and the nftables table go with them when the value is dropped.

use std::{
    ffi::CStr,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    ops::RangeInclusive,
};

use crate::{capture::Capture, netns::NetNs};

/// The client host's address on the link.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The server host's address on the link.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The link's prefix length (both hosts on one /24).
pub const PREFIX_LEN: u8 = 24;
/// The link's network, where the agents of both hosts run (a `--link-peers` value).
pub const LINK_NETWORK: &str = "198.51.100.0/24";
/// The virtual service address that only the client host's DNAT knows.
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The client host's ephemeral ports (`net.ipv4.ip_local_port_range`, set in its namespace).
pub const CLIENT_PORTS: RangeInclusive<u16> = 40_000..=49_999;
/// The source ports the masquerade picks from, at random.
pub const MASQUERADE_PORTS: RangeInclusive<u16> = 20_000..=29_999;

/// The client's interface name (inside the client namespace).
const CLIENT_LINK: &str = "nat-client";
/// The server's interface name (inside the server namespace).
const SERVER_LINK: &CStr = c"nat-server";
/// The nftables table in the client namespace.
const TABLE: &str = "otel_agent_nat";

/// The two hosts and the translator between them.
pub struct NatHosts {
    pub client: NetNs,
    pub server: NetNs,
}

impl NatHosts {
    /// Creates the namespaces `otel-agent-<tag>-client-<pid>` and `...-server-<pid>`, the
    /// link, the route to [`VIP`] and the masquerade (no service yet: [`NatHosts::service`]).
    pub fn create(tag: &str) -> Self {
        let hosts = Self {
            client: NetNs::create(&format!("{tag}-client")),
            server: NetNs::create(&format!("{tag}-server")),
        };
        hosts.client.ip(&[
            "link",
            "add",
            CLIENT_LINK,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_LINK.to_str().expect("ASCII"),
            "netns",
            &hosts.server.name,
        ]);
        for (netns, link, addr) in [
            (&hosts.client, CLIENT_LINK, CLIENT_ADDR),
            (
                &hosts.server,
                SERVER_LINK.to_str().expect("ASCII"),
                SERVER_ADDR,
            ),
        ] {
            netns.ip(&["addr", "add", &format!("{addr}/{PREFIX_LEN}"), "dev", link]);
            netns.ip(&["link", "set", link, "up"]);
        }
        hosts.client.ip(&[
            "route",
            "add",
            &format!("{VIP}/32"),
            "via",
            &SERVER_ADDR.to_string(),
        ]);
        hosts.client.exec(
            "sysctl",
            &[
                "-qw",
                &format!(
                    "net.ipv4.ip_local_port_range={} {}",
                    CLIENT_PORTS.start(),
                    CLIENT_PORTS.end()
                ),
            ],
            "",
        );
        let (low, high) = (MASQUERADE_PORTS.start(), MASQUERADE_PORTS.end());
        hosts.client.exec(
            "nft",
            &["-f", "-"],
            &format!(
                "table ip {TABLE} {{
    chain output {{
        type nat hook output priority -100; policy accept;
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        oifname \"{CLIENT_LINK}\" ip protocol tcp masquerade to :{low}-{high} fully-random
    }}
}}
"
            ),
        );
        hosts
    }

    /// Maps `VIP:vip_port` to `SERVER_ADDR:server_port` on the client host (a DNAT rule in
    /// its `output` chain) and returns the virtual address to connect to.
    pub fn service(&self, vip_port: u16, server_port: u16) -> SocketAddr {
        self.client.exec(
            "nft",
            &["-f", "-"],
            &format!(
                "add rule ip {TABLE} output ip daddr {VIP} tcp dport {vip_port} \
                 dnat to {SERVER_ADDR}:{server_port}\n"
            ),
        );
        SocketAddr::V4(SocketAddrV4::new(VIP, vip_port))
    }

    /// A listener on `SERVER_ADDR:port` in the server host.
    pub fn listen(&self, port: u16) -> TcpListener {
        self.server
            .run_in(|| TcpListener::bind((SERVER_ADDR, port)))
            .unwrap_or_else(|error| panic!("listen on {SERVER_ADDR}:{port}: {error}"))
    }

    /// Captures the handshakes on the server host's end of the link, as the server sees them
    /// (after the translation, which leaves sequence numbers alone): keyed by (masqueraded
    /// client port, server port).
    pub fn capture_at_server(&self) -> Capture {
        self.server.run_in(|| Capture::on(SERVER_LINK))
    }

    /// Connects from the client host to `addr` (a [`NatHosts::service`] address).
    pub fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.client.run_in(|| TcpStream::connect(addr))
    }
}
