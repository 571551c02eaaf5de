//! Connection traces across hosts and NAT (issue 13): two test hosts in network namespaces
//! the test creates ([`otel_agent_tests::nat`]), the client host translating a virtual
//! service address to the server's address and another port and masquerading with fully
//! random source ports, as a Kubernetes Service does. One agent per host, each scoped to its
//! host's namespace (`--netns`; both run in the test's own namespace, only their probe
//! filters differ), both exporting to one rotel collector on loopback.
//!
//! Every established connection must be exactly one trace, with the client span a root and
//! the server span its child (or, for a client outside the server agent's `--link-peers`, a
//! root with a span link to the client span); distinct connections never share a trace id;
//! a refused connect is a lone root with a trace id of its own; a reset connection is still
//! linked. Span times must fall in the wall-clock window the test measured around each
//! connection, widened by [`WALL_TOLERANCE_NS`], and the two ends of one connection must
//! start within [`START_SKEW_NS`] of each other (the SYN crosses one veth pair).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use otel_agent::{isn::IsnPair, trace_context::ConnectionIds};
use otel_agent_tests::{
    agent,
    nat::{CLIENT_ADDR, CLIENT_PORTS, LINK_NETWORK, MASQUERADE_PORTS, NatHosts, SERVER_ADDR, VIP},
    process::{ChildGuard, TempDir},
    require_root,
    rotel::{ReceivedLink, ReceivedSpan, Rotel},
    traffic::{self, Closer},
};

/// The service's port on the virtual address.
const VIP_PORT: u16 = 80;
/// The port the server listens on, where the DNAT sends the service's connections.
const SERVER_PORT: u16 = 8080;
/// A virtual port DNAT'ed to a port nobody listens on.
const CLOSED_VIP_PORT: u16 = 81;
const CLOSED_SERVER_PORT: u16 = 8081;
/// Established connections in the linked run; the last one ends with a reset.
const CONNECTIONS: usize = 20;
/// Payload of the reset connection, client to server.
const RESET_BYTES: usize = 5_000;
/// Slack around the window the test measured, for the conversion of each agent's monotonic
/// timestamps to wall-clock time (as in `e2e_rotel`).
const WALL_TOLERANCE_NS: u128 = 50_000_000;
/// Most the two ends' start times may differ: the client's SYN_SENT and the server's
/// SYN_RECV are one veth crossing apart (microseconds), plus both conversions' error.
const START_SKEW_NS: u128 = 20_000_000;

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

/// How a connection of the test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Shut down and closed in order, `Closer` first.
    Closed(Closer),
    /// The client aborted with `SO_LINGER` 0 once its data was acknowledged.
    Reset,
}

/// One established connection, as the test made it.
#[derive(Debug, Clone, Copy)]
struct Connection {
    /// The client's own port (what its socket, and so its agent, sees).
    client_port: u16,
    /// The client's port as the server saw it, after the masquerade.
    masqueraded_port: u16,
    /// Payload bytes client to server and server to client.
    bytes: (usize, usize),
    /// The SYN's and the SYN-ACK's sequence numbers, captured at the server.
    wire: IsnPair,
    end: End,
    before_connect: SystemTime,
    after_close: SystemTime,
}

/// Both hosts, the collector and one agent per host.
struct Run {
    hosts: NatHosts,
    rotel: Rotel,
    client_agent: ChildGuard,
    server_agent: ChildGuard,
    _dirs: [TempDir; 3],
}

impl Run {
    /// Starts rotel and the two agents; `server_link_peers` is the server agent's
    /// `--link-peers` (`None`: its default).
    fn start(tag: &str, server_link_peers: Option<&str>) -> Self {
        require_root();
        let hosts = NatHosts::create(tag);
        let dirs = [
            TempDir::new(&format!("{tag}-rotel")),
            TempDir::new(&format!("{tag}-client-agent")),
            TempDir::new(&format!("{tag}-server-agent")),
        ];
        let rotel = Rotel::start(dirs[0].path());
        let endpoint = format!("http://{}", rotel.grpc);
        // The link between the hosts is where agents run: the client agent's policy only
        // matters for server spans in its namespace (there are none), so it names the same
        // network, as one configuration for every node would.
        let start = |netns: u32, peers: Option<&str>, dir: &TempDir| {
            let extra = peers.map(|peers| ["--link-peers", peers]);
            agent::start_grpc_in_netns(
                netns,
                &endpoint,
                extra.as_ref().map_or(&[][..], |extra| &extra[..]),
                &[],
                dir.path(),
            )
        };
        let client_agent = start(hosts.client.inode(), Some(LINK_NETWORK), &dirs[1]);
        let server_agent = start(hosts.server.inode(), server_link_peers, &dirs[2]);
        Self {
            hosts,
            rotel,
            client_agent,
            server_agent,
            _dirs: dirs,
        }
    }

    /// Makes one connection per entry of `plan` (payload each way, how it ends) through the
    /// service, then one refused connect (to the service whose real port is closed).
    fn traffic(&self, plan: &[((usize, usize), End)]) -> Vec<Connection> {
        let service = self.hosts.service(VIP_PORT, SERVER_PORT);
        let closed = self.hosts.service(CLOSED_VIP_PORT, CLOSED_SERVER_PORT);
        let listener = self.hosts.listen(SERVER_PORT);
        let capture = self.hosts.capture_at_server();
        let mut made = Vec::new();
        for &(bytes, end) in plan {
            let before_connect = SystemTime::now();
            let mut client = self.hosts.connect(service).expect("connect to the service");
            let (mut server, seen) = listener.accept().expect("accept");
            let client_port = client.local_addr().unwrap().port();
            assert_eq!(seen.ip(), CLIENT_ADDR);
            assert!(
                MASQUERADE_PORTS.contains(&seen.port()),
                "the server sees {seen}, the client used port {client_port}"
            );
            match end {
                End::Closed(closer) => {
                    traffic::send_both_ways(&mut client, &mut server, bytes.0, bytes.1);
                    traffic::close_in_order(client, server, closer);
                }
                End::Reset => traffic::reset(client, server, bytes.0),
            }
            let after_close = SystemTime::now();
            made.push(Connection {
                client_port,
                masqueraded_port: seen.port(),
                bytes,
                wire: capture.pair(seen.port(), SERVER_PORT),
                end,
                before_connect,
                after_close,
            });
        }
        let error = self.hosts.connect(closed).expect_err("nobody listens");
        assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
        made
    }

    /// Stops both agents (which flushes their spans), checks that each one's accounting
    /// balances with nothing lost and that it exported exactly `exported` spans (client
    /// agent, server agent), and returns every span rotel received, `exported` in all.
    fn finish(&mut self, exported: (u64, u64)) -> Vec<ReceivedSpan> {
        for (agent, count) in [
            (&mut self.client_agent, exported.0),
            (&mut self.server_agent, exported.1),
        ] {
            agent::stop(agent);
            let stderr = agent.stderr_text();
            agent::assert_nothing_lost(&stderr);
            let export = agent::export_accounting(&stderr);
            assert_eq!(agent::counter(&export, "exported"), count, "{export:?}");
        }
        let total = usize::try_from(exported.0 + exported.1).unwrap();
        self.rotel
            .wait_for_spans(total, Duration::from_secs(20), |_| true);
        // Both agents have exited, so nothing more is on its way: exactly these.
        std::thread::sleep(Duration::from_millis(300));
        let spans = self.rotel.spans();
        assert_eq!(spans.len(), total, "{spans:#?}");
        spans
    }
}

fn int(port: impl std::fmt::Display) -> String {
    format!("Int({port})")
}

fn string(text: impl std::fmt::Display) -> String {
    format!("Str({text})")
}

/// The span whose `network.local.port` and `network.peer.port` are these, failing the test
/// unless there is exactly one.
fn span_with_ports(spans: &[ReceivedSpan], local: u16, peer: u16) -> &ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|span| {
            span.attributes.get("network.local.port") == Some(&int(local))
                && span.attributes.get("network.peer.port") == Some(&int(peer))
        })
        .collect();
    assert_eq!(found.len(), 1, "one span {local} -> {peer}: {found:#?}");
    found[0]
}

fn nanos(time: SystemTime) -> u128 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_nanos()
}

/// The two spans of `connection`, checked against what the test did, whatever their
/// relation: (client span, server span).
fn check_ends<'a>(
    spans: &'a [ReceivedSpan],
    hosts: &NatHosts,
    connection: &Connection,
) -> (&'a ReceivedSpan, &'a ReceivedSpan) {
    let client = span_with_ports(spans, connection.client_port, VIP_PORT);
    let server = span_with_ports(spans, SERVER_PORT, connection.masqueraded_port);
    let what = format!("{connection:?}");
    let expected_client = [
        ("network.local.address", string(CLIENT_ADDR)),
        ("network.peer.address", string(VIP)),
        ("server.address", string(VIP)),
        ("server.port", int(VIP_PORT)),
        ("client.port", int(connection.client_port)),
        ("tcplife.netns", int(hosts.client.inode())),
        ("tcplife.payload.sent", int(connection.bytes.0)),
        ("tcplife.payload.received", int(connection.bytes.1)),
    ];
    let expected_server = [
        ("network.local.address", string(SERVER_ADDR)),
        ("network.peer.address", string(CLIENT_ADDR)),
        ("server.address", string(SERVER_ADDR)),
        ("server.port", int(SERVER_PORT)),
        ("client.port", int(connection.masqueraded_port)),
        ("tcplife.netns", int(hosts.server.inode())),
        ("tcplife.payload.sent", int(connection.bytes.1)),
        ("tcplife.payload.received", int(connection.bytes.0)),
    ];
    for (span, kind, name, expected) in [
        (
            client,
            "SPAN_KIND_CLIENT",
            format!("tcp connect :{VIP_PORT}"),
            expected_client,
        ),
        (
            server,
            "SPAN_KIND_SERVER",
            format!("tcp accept :{SERVER_PORT}"),
            expected_server,
        ),
    ] {
        assert_eq!(span.kind, kind, "{what}");
        assert_eq!(span.name, name, "{what}");
        for (key, value) in expected {
            assert_eq!(
                span.attributes.get(key),
                Some(&value),
                "{kind} {key} of {what}"
            );
        }
        let status = match connection.end {
            End::Closed(_) => "STATUS_CODE_UNSET",
            End::Reset => "STATUS_CODE_ERROR",
        };
        assert_eq!(span.status_code, status, "{kind} of {what}");
        let window = nanos(connection.before_connect) - WALL_TOLERANCE_NS
            ..=nanos(connection.after_close) + WALL_TOLERANCE_NS;
        for time in [span.start_ns, span.end_ns] {
            assert!(
                window.contains(&time),
                "{kind} {time} outside {window:?}: {what}"
            );
        }
    }
    assert!(
        client.start_ns.abs_diff(server.start_ns) <= START_SKEW_NS,
        "the ends started {} ns apart: {what}",
        client.start_ns.abs_diff(server.start_ns)
    );
    // One trace: both agents derived the ids of the pair on the wire.
    let ids = ConnectionIds::derive(connection.wire);
    assert_eq!(client.trace_id, ids.trace_id.to_string(), "{what}");
    assert_eq!(server.trace_id, ids.trace_id.to_string(), "{what}");
    assert_eq!(client.span_id, ids.client_span_id.to_string(), "{what}");
    assert_eq!(server.span_id, ids.server_span_id.to_string(), "{what}");
    // The client span is always a root.
    assert_eq!(client.parent_id, "", "{what}");
    assert!(client.links.is_empty(), "{what}: {client:?}");
    (client, server)
}

/// The refused connect: one client span to the closed service port, a root with a trace
/// id no other span has.
fn check_refused(spans: &[ReceivedSpan]) {
    let refused: Vec<_> = spans
        .iter()
        .filter(|span| span.attributes.get("network.peer.port") == Some(&int(CLOSED_VIP_PORT)))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    let refused = refused[0];
    assert_eq!(refused.kind, "SPAN_KIND_CLIENT");
    assert_eq!(refused.status_code, "STATUS_CODE_ERROR");
    assert_eq!(refused.parent_id, "");
    assert!(refused.links.is_empty(), "{refused:?}");
    assert_eq!(refused.trace_id.len(), 32, "{refused:?}");
    let sharing: Vec<_> = spans
        .iter()
        .filter(|span| span.trace_id == refused.trace_id)
        .collect();
    assert_eq!(sharing.len(), 1, "a lone root: {sharing:#?}");
}

/// Payloads and ends of the linked run: no data, one way, both ways; each closer; the last
/// connection reset.
fn plan() -> Vec<((usize, usize), End)> {
    (0..CONNECTIONS)
        .map(|i| {
            if i == CONNECTIONS - 1 {
                return ((RESET_BYTES, 0), End::Reset);
            }
            let bytes = match i % 3 {
                0 => (0, 0),
                1 => (1_000 + i, 0),
                _ => (100 * i + 1, 3_000 + 7 * i),
            };
            let closer = if i % 2 == 0 {
                Closer::Client
            } else {
                Closer::Server
            };
            (bytes, End::Closed(closer))
        })
        .collect()
}

/// Both hosts' agents link their peers on the link between them: every established
/// connection is one trace of two spans, the server span the client span's child.
#[test]
fn every_connection_through_the_nat_is_one_trace_with_the_server_span_a_child() {
    let mut run = Run::start("nat-linked", Some(LINK_NETWORK));
    let made = run.traffic(&plan());
    let spans = run.finish((CONNECTIONS as u64 + 1, CONNECTIONS as u64));
    let mut traces = BTreeSet::new();
    let mut widest_skew = 0;
    for connection in &made {
        let (client, server) = check_ends(&spans, &run.hosts, connection);
        widest_skew = widest_skew.max(client.start_ns.abs_diff(server.start_ns));
        assert_eq!(server.parent_id, client.span_id, "{connection:?}");
        assert!(server.links.is_empty(), "{server:?}");
        let in_trace = spans
            .iter()
            .filter(|span| span.trace_id == client.trace_id)
            .count();
        assert_eq!(
            in_trace, 2,
            "exactly the two ends in the trace: {connection:?}"
        );
        traces.insert(client.trace_id.clone());
    }
    assert_eq!(
        traces.len(),
        CONNECTIONS,
        "distinct connections, distinct traces"
    );
    check_refused(&spans);
    let by_trace: BTreeMap<_, usize> = spans.iter().fold(BTreeMap::new(), |mut map, span| {
        *map.entry(span.trace_id.clone()).or_default() += 1;
        map
    });
    assert_eq!(by_trace.len(), CONNECTIONS + 1, "{by_trace:?}");
    eprintln!("widest start skew between the two ends of a connection: {widest_skew} ns");
}

/// The server agent keeps its default policy (loopback and the host's own addresses), which
/// does not include the client host: its spans are roots in the connection's trace, with a
/// span link to the client span.
#[test]
fn a_client_outside_the_link_peers_gives_a_parentless_server_span_with_a_link() {
    let mut run = Run::start("nat-unlinked", None);
    let plan = [
        ((1_234, 4_321), End::Closed(Closer::Client)),
        ((0, 0), End::Closed(Closer::Server)),
        ((RESET_BYTES, 0), End::Reset),
    ];
    let made = run.traffic(&plan);
    let spans = run.finish((plan.len() as u64 + 1, plan.len() as u64));
    let mut traces = BTreeSet::new();
    for connection in &made {
        let (client, server) = check_ends(&spans, &run.hosts, connection);
        assert_eq!(server.parent_id, "", "{connection:?}");
        assert_eq!(
            server.links,
            vec![ReceivedLink {
                trace_id: client.trace_id.clone(),
                span_id: client.span_id.clone(),
                trace_state: String::new(),
            }],
            "{connection:?}"
        );
        traces.insert(client.trace_id.clone());
    }
    assert_eq!(traces.len(), plan.len());
    check_refused(&spans);
}
