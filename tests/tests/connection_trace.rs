//! Connection traces (issue 13), with one agent that sees both ends on loopback: the client
//! span is a root and the server span its child, in one trace whose ids are exactly those of
//! the documented derivation (README, "Connection traces"), recomputed here with `sha2` from
//! the SYN and SYN-ACK sequence numbers the test captures on `lo`. IPv4, IPv6 and
//! IPv4-mapped IPv6, to the in-process receiver (every id and flag); through rotel (ids,
//! parent and link: rotel prints no flags). The linking policy: a loopback peer outside
//! `--link-peers 10.0.0.0/8`, or any peer with `none`, gives a parentless server span in the
//! same trace with a span link to the client span; `all` gives the child; the default holds
//! the addresses of the agent's own network namespace. A refused connect is a lone root
//! with random ids.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use opentelemetry_proto::tonic::{
    common::v1::any_value::Value,
    trace::v1::{
        Span,
        span::{Link, SpanKind},
    },
};
use otel_agent_tests::{
    agent,
    capture::Capture,
    netns::NetNs,
    process::TempDir,
    receiver::{Kind, Received, Receiver, int_attribute, spans_for, spans_of, spans_where},
    require_root,
    rotel::{ReceivedLink, ReceivedSpan, Rotel},
    traffic::{self, Closer, Exchange},
};
use sha2::{Digest as _, Sha256};

/// OTLP `Span.flags` of a root: sampled and random (0x03), the parent's remoteness known
/// (0x100).
const ROOT: u32 = 0x103;
/// OTLP `Span.flags` of a span with a remote parent, and `Link.flags` of a link to one: 0x03,
/// remoteness known (0x100) and remote (0x200).
const REMOTE: u32 = 0x303;

/// A connection's ids, as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ids {
    trace: Vec<u8>,
    client: Vec<u8>,
    server: Vec<u8>,
}

impl Ids {
    /// Version 1 of the derivation, written from the README's layout and not from the
    /// agent's code: SHA-256 of `otel-agent/connection-trace`, the version byte 0x01, the
    /// attempt 0x00, then the client's and the server's ISN, big-endian; trace id = bytes
    /// 0-15, client span id = 16-23, server span id = 24-31. (Attempt 0 is invalid with a
    /// probability below 2^-61; this test would then fail on the ids.)
    fn derived(client_isn: u32, server_isn: u32) -> Self {
        let mut input = b"otel-agent/connection-trace".to_vec();
        input.extend([0x01, 0x00]);
        input.extend(client_isn.to_be_bytes());
        input.extend(server_isn.to_be_bytes());
        assert_eq!(input.len(), 37);
        let digest = Sha256::digest(&input);
        Self {
            trace: digest[..16].to_vec(),
            client: digest[16..24].to_vec(),
            server: digest[24..].to_vec(),
        }
    }

    /// The ids of the connection `exchange` made, from its handshake on the wire.
    fn of(capture: &Capture, exchange: &Exchange) -> Self {
        let wire = capture.pair(exchange.client.port(), exchange.server.port());
        Self::derived(wire.client, wire.server)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// What the policy makes of the server span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// The client span's child.
    Child,
    /// A root with a span link to the client span.
    Linked,
}

/// One agent run with `args`: a connection on `ip` carrying data both ways, captured on the
/// wire; returns its (client span, server span), its ids and the agent's stderr.
fn run(name: &str, ip: IpAddr, args: &[&str]) -> (Span, Span, Ids, String) {
    require_root();
    let dir = TempDir::new(name);
    let receiver = Receiver::start(Kind::Grpc);
    let mut agent = agent::start_grpc(&receiver.url(false), args, dir.path());
    let capture = Capture::start();
    let exchange = traffic::exchange(ip, 3_000, 20_000, Closer::Client);
    assert_eq!(
        exchange.client.ip(),
        ip,
        "the client socket's family and address"
    );
    let ids = Ids::of(&capture, &exchange);
    agent::stop(&mut agent);
    let received = receiver.wait_for(Duration::from_secs(10), "both spans", |received| {
        spans_of(received, &exchange) >= 2
    });
    let spans = spans_for(&received, &exchange);
    let [first, second] = spans.as_slice() else {
        panic!("exactly one span per end: {spans:#?}");
    };
    let (client, server) = if first.kind == SpanKind::Client as i32 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(
        (client.kind, server.kind),
        (SpanKind::Client as i32, SpanKind::Server as i32)
    );
    assert_eq!(
        int_attribute(client, "network.local.port"),
        Some(i64::from(exchange.client.port()))
    );
    agent::assert_reconciled(&agent.stderr_text());
    (client.clone(), server.clone(), ids, agent.stderr_text())
}

/// The exact ids, parent, links and flags of both spans.
fn assert_connection(client: &Span, server: &Span, ids: &Ids, expected: Server) {
    assert_eq!(
        (&client.trace_id, &client.span_id),
        (&ids.trace, &ids.client),
        "the client span: trace {} span {}",
        Ids::hex(&client.trace_id),
        Ids::hex(&client.span_id)
    );
    assert!(
        client.parent_span_id.is_empty(),
        "the client span is a root"
    );
    assert!(client.links.is_empty());
    assert_eq!(client.flags, ROOT);
    assert_eq!(
        (&server.trace_id, &server.span_id),
        (&ids.trace, &ids.server),
        "the server span, in the same trace"
    );
    match expected {
        Server::Child => {
            assert_eq!(server.parent_span_id, ids.client, "the client span's child");
            assert!(server.links.is_empty());
            assert_eq!(server.flags, REMOTE);
        }
        Server::Linked => {
            assert!(server.parent_span_id.is_empty(), "no parent");
            assert_eq!(
                server.links,
                vec![Link {
                    trace_id: ids.trace.clone(),
                    span_id: ids.client.clone(),
                    trace_state: String::new(),
                    attributes: Vec::new(),
                    dropped_attributes_count: 0,
                    flags: REMOTE,
                }],
                "one link to the client span"
            );
            assert_eq!(server.flags, ROOT);
        }
    }
}

/// The agent's log line of the effective policy: `link_peers=<policy> source=<source>`.
fn assert_policy_logged(stderr: &str, policy: &str, source: &str) {
    let lines: Vec<_> = stderr
        .lines()
        .filter(|line| line.contains("connection traces:"))
        .collect();
    assert_eq!(lines.len(), 1, "logged once: {stderr}");
    assert!(
        lines[0].contains(&format!("link_peers={policy} source=\"{source}\"")),
        "{}",
        lines[0]
    );
}

#[test]
fn ipv4_loopback_connection_is_one_trace_with_the_ids_of_its_handshake() {
    let (client, server, ids, stderr) = run("trace-ipv4", IpAddr::V4(Ipv4Addr::LOCALHOST), &[]);
    assert_connection(&client, &server, &ids, Server::Child);
    // The default: loopback and this host's addresses, which start with them.
    assert!(
        stderr.contains("link_peers=127.0.0.0/8,::1/128"),
        "{stderr}"
    );
    assert_policy_logged(
        &stderr,
        stderr
            .split("link_peers=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the policy"),
        "default",
    );
}

#[test]
fn ipv6_loopback_connection_is_one_trace_with_the_ids_of_its_handshake() {
    let (client, server, ids, _) = run("trace-ipv6", IpAddr::V6(Ipv6Addr::LOCALHOST), &[]);
    assert_connection(&client, &server, &ids, Server::Child);
}

/// IPv6 sockets talking to an IPv4-mapped address (`::ffff:127.0.0.1`): IPv4 on the wire,
/// reported as IPv4 (README, `network.type`), linked by the default policy's 127.0.0.0/8.
#[test]
fn ipv4_mapped_ipv6_connection_is_one_trace_with_the_ids_of_its_handshake() {
    let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
    let (client, server, ids, _) = run("trace-mapped", mapped, &[]);
    let network_type = client
        .attributes
        .iter()
        .find(|kv| kv.key == "network.type")
        .and_then(|kv| kv.value.as_ref()?.value.clone());
    assert_eq!(
        network_type,
        Some(Value::StringValue("ipv4".to_owned())),
        "a mapped address is reported as IPv4"
    );
    assert_connection(&client, &server, &ids, Server::Child);
}

#[test]
fn a_peer_outside_link_peers_gives_a_parentless_server_span_linked_to_the_client_span() {
    let args = ["--link-peers", "10.0.0.0/8"];
    let (client, server, ids, stderr) =
        run("trace-outside", IpAddr::V4(Ipv4Addr::LOCALHOST), &args);
    assert_connection(&client, &server, &ids, Server::Linked);
    assert_policy_logged(&stderr, "10.0.0.0/8", "--link-peers");
}

#[test]
fn link_peers_none_links_every_server_span_and_all_parents_every_one() {
    for (policy, ip, expected) in [
        ("none", IpAddr::V6(Ipv6Addr::LOCALHOST), Server::Linked),
        ("all", IpAddr::V4(Ipv4Addr::LOCALHOST), Server::Child),
    ] {
        let name = format!("trace-{policy}");
        let (client, server, ids, stderr) = run(&name, ip, &["--link-peers", policy]);
        assert_connection(&client, &server, &ids, expected);
        assert_policy_logged(&stderr, policy, "--link-peers");
    }
}

/// The default policy holds the addresses of the agent's own network namespace: run inside
/// a namespace with `--netns self`, that namespace's (192.0.2.1 on its loopback, beside
/// 127.0.0.1 and ::1); run from the host with `--netns` naming that namespace, whose
/// addresses it cannot read, loopback alone, and it says so.
#[test]
fn the_default_policy_holds_the_addresses_of_the_agents_own_namespace() {
    require_root();
    let netns = NetNs::create("trace-policy");
    let status = Command::new("ip")
        .args([
            "-n",
            &netns.name,
            "address",
            "add",
            "192.0.2.1/32",
            "dev",
            "lo",
        ])
        .status()
        .expect("run ip");
    assert!(status.success(), "ip address add");
    let pid = std::process::id().to_string();
    let inside = TempDir::new("trace-policy-inside");
    let command = agent::wrapped_command(
        &["ip", "netns", "exec", &netns.name],
        &["--netns", "self", "-p", &pid],
        &[],
    );
    let mut agent = agent::start_command(command, inside.path());
    agent::stop(&mut agent);
    assert_policy_logged(
        &agent.stderr_text(),
        "127.0.0.0/8,::1/128,192.0.2.1/32",
        "default",
    );
    let outside = TempDir::new("trace-policy-outside");
    let inode = netns.inode().to_string();
    let mut agent = agent::start(&["--netns", &inode, "-p", &pid], &[], outside.path());
    agent::stop(&mut agent);
    let stderr = agent.stderr_text();
    assert_policy_logged(&stderr, "127.0.0.0/8,::1/128", "default");
    assert!(
        stderr.contains("--netns names another network namespace"),
        "{stderr}"
    );
}

/// A connect that got no SYN-ACK has no server ISN: a root of its own trace, random ids.
#[test]
fn a_refused_connect_is_a_lone_root_with_random_ids() {
    require_root();
    let dir = TempDir::new("trace-refused");
    let receiver = Receiver::start(Kind::Grpc);
    let mut agent = agent::start_grpc(&receiver.url(false), &[], dir.path());
    let closed = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        listener.local_addr().expect("address")
    };
    for _ in 0..2 {
        TcpStream::connect_timeout(&closed, Duration::from_secs(2))
            .expect_err("nothing listens on the port");
    }
    agent::stop(&mut agent);
    let to_closed = |received: &[Received]| {
        spans_where(received, |span| {
            int_attribute(span, "network.peer.port") == Some(i64::from(closed.port()))
        })
    };
    let received = receiver.wait_for(Duration::from_secs(10), "two refused connects", |r| {
        to_closed(r).len() >= 2
    });
    let spans = to_closed(&received);
    let [first, second] = spans.as_slice() else {
        panic!("one span per connect: {spans:#?}");
    };
    for span in [first, second] {
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(2), "an error");
        assert_eq!((span.trace_id.len(), span.span_id.len()), (16, 8));
        assert!(span.trace_id.iter().any(|&b| b != 0));
        assert!(span.parent_span_id.is_empty() && span.links.is_empty());
        assert_eq!(span.flags, ROOT);
    }
    assert_ne!(first.trace_id, second.trace_id, "a trace of its own each");
    assert_ne!(first.span_id, second.span_id);
}

/// The same through rotel: one connection with the default policy (the child), one with
/// `--link-peers none` (the link), each with the ids of its handshake.
#[test]
fn through_rotel_both_ends_meet_in_the_trace_of_their_handshake() {
    require_root();
    let dir = TempDir::new("trace-rotel");
    let rotel = Rotel::start(dir.path());
    let endpoint = format!("http://{}", rotel.grpc);
    let capture = Capture::start();
    let mut connections = Vec::new();
    for (policy, ip) in [
        (None, IpAddr::V4(Ipv4Addr::LOCALHOST)),
        (Some("none"), IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ] {
        let mut args = vec![];
        if let Some(policy) = policy {
            args.extend(["--link-peers", policy]);
        }
        let mut agent = agent::start_grpc(&endpoint, &args, dir.path());
        let exchange = traffic::exchange(ip, 1_000, 1_000, Closer::Server);
        agent::stop(&mut agent);
        connections.push((exchange, Ids::of(&capture, &exchange), policy.is_none()));
    }
    for (exchange, ids, child) in connections {
        let port = |span: &ReceivedSpan, key: &str| span.attributes.get(key).cloned();
        let end = |local: SocketAddr, peer: SocketAddr| {
            move |span: &ReceivedSpan| {
                port(span, "network.local.port") == Some(format!("Int({})", local.port()))
                    && port(span, "network.peer.port") == Some(format!("Int({})", peer.port()))
            }
        };
        let client = rotel.wait_for_spans(
            1,
            Duration::from_secs(10),
            end(exchange.client, exchange.server),
        );
        let server = rotel.wait_for_spans(
            1,
            Duration::from_secs(10),
            end(exchange.server, exchange.client),
        );
        let ([client], [server]) = (client.as_slice(), server.as_slice()) else {
            panic!("one span per end: {client:#?} {server:#?}");
        };
        let hex = |bytes: &[u8]| Ids::hex(bytes);
        assert_eq!(client.kind, "SPAN_KIND_CLIENT");
        assert_eq!(
            (
                client.trace_id.as_str(),
                client.span_id.as_str(),
                client.parent_id.as_str()
            ),
            (hex(&ids.trace).as_str(), hex(&ids.client).as_str(), "")
        );
        assert!(client.links.is_empty());
        assert_eq!(
            (server.trace_id.as_str(), server.span_id.as_str()),
            (hex(&ids.trace).as_str(), hex(&ids.server).as_str())
        );
        if child {
            assert_eq!(server.parent_id, hex(&ids.client));
            assert!(server.links.is_empty());
        } else {
            assert_eq!(server.parent_id, "");
            assert_eq!(
                server.links,
                vec![ReceivedLink {
                    trace_id: hex(&ids.trace),
                    span_id: hex(&ids.client),
                    trace_state: String::new(),
                }]
            );
        }
    }
}
