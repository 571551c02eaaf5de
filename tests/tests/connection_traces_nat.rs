//! Connection traces across hosts and NAT (issue 13): two test hosts in network namespaces
//! the test creates ([`otel_agent_tests::nat`]), the client host translating a virtual
//! service address to the server's address and another port and masquerading with fully
//! random source ports, as a Kubernetes Service does; one agent per host (`--netns`), both
//! exporting to one rotel collector.

use std::{io::ErrorKind, net::SocketAddr};

use otel_agent_tests::{
    nat::{CLIENT_ADDR, CLIENT_PORTS, MASQUERADE_PORTS, NatHosts, SERVER_ADDR, VIP},
    require_root,
    traffic::{self, Closer},
};

/// The service's port on the virtual address.
const VIP_PORT: u16 = 80;
/// The port the server listens on, where the DNAT sends the service's connections.
const SERVER_PORT: u16 = 8080;
/// A virtual port DNAT'ed to a port nobody listens on.
const CLOSED_VIP_PORT: u16 = 81;
const CLOSED_SERVER_PORT: u16 = 8081;

/// The harness itself: the client sees only the virtual address, the server sees the client
/// host's address with a port the masquerade picked, never the one the client used; a
/// service whose real port is closed refuses.
#[test]
fn the_nat_rewrites_the_destination_and_the_source_port() {
    require_root();
    let hosts = NatHosts::create("nat-harness");
    let service = hosts.service(VIP_PORT, SERVER_PORT);
    let closed = hosts.service(CLOSED_VIP_PORT, CLOSED_SERVER_PORT);
    let listener = hosts.listen(SERVER_PORT);
    for _ in 0..5 {
        let mut client = hosts.connect(service).expect("connect to the service");
        let (mut server, seen_client) = listener.accept().expect("accept");
        let client_addr = client.local_addr().unwrap();
        assert_eq!(client.peer_addr().unwrap(), service);
        assert_eq!(client_addr.ip(), CLIENT_ADDR);
        assert!(CLIENT_PORTS.contains(&client_addr.port()), "{client_addr}");
        assert_eq!(
            server.local_addr().unwrap(),
            SocketAddr::from((SERVER_ADDR, SERVER_PORT))
        );
        assert_eq!(seen_client.ip(), CLIENT_ADDR);
        assert!(
            MASQUERADE_PORTS.contains(&seen_client.port()),
            "the server sees {seen_client}, the client used {client_addr}"
        );
        traffic::send_both_ways(&mut client, &mut server, 100, 200);
        traffic::close_in_order(client, server, Closer::Client);
    }
    let refused = hosts.connect(closed).expect_err("nobody listens");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
    assert_eq!(closed.ip(), VIP);
}
