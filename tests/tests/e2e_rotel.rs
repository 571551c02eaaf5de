//! End to end through the real collector: the `otel-agent` binary, run as a separate
//! process, exports over OTLP to rotel (gRPC configured by flags, HTTP/protobuf configured by
//! the standard environment variables); the test makes one known loopback connection and
//! checks what rotel printed for both of its sessions: name, kind, parent (one trace, the
//! server span the client span's child), status, start and end times, every attribute and
//! the resource.
//!
//! Span times must fall inside the wall-clock window the test measured around its own
//! system calls, widened by [`WALL_TOLERANCE_NS`] on each side for the error of converting
//! monotonic to wall-clock time and the kernel's deferred close processing.

use std::{collections::BTreeMap, time::Duration};

use otel_agent_tests::{
    agent,
    process::{ChildGuard, TempDir},
    require_root,
    rotel::{ReceivedSpan, Rotel},
    traffic::{self, Closer, Exchange, THREAD_NAME},
};

const WALL_TOLERANCE_NS: u128 = 50_000_000;
const CLIENT_BYTES: usize = 5_000;
const SERVER_BYTES: usize = 70_000;

enum Transport {
    /// `--otlp-endpoint` and `--otlp-protocol grpc`.
    GrpcByFlags,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`.
    HttpByEnvironment,
}

fn start_agent(rotel: &Rotel, transport: Transport, dir: &TempDir) -> ChildGuard {
    match transport {
        Transport::GrpcByFlags => {
            let endpoint = format!("http://{}", rotel.grpc);
            agent::start(
                &[
                    "-p",
                    &std::process::id().to_string(),
                    "--otlp-endpoint",
                    &endpoint,
                    "--otlp-protocol",
                    "grpc",
                ],
                &[],
                dir.path(),
            )
        }
        Transport::HttpByEnvironment => {
            let endpoint = format!("http://{}", rotel.http);
            agent::start(
                &["-p", &std::process::id().to_string()],
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ],
                dir.path(),
            )
        }
    }
}

/// The attributes whose values the test knows exactly.
struct Side {
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    server: std::net::SocketAddr,
    client: std::net::SocketAddr,
    closed_by: &'static str,
    raw: (usize, usize),
    payload: (usize, usize),
}

fn expected_attributes(side: &Side) -> BTreeMap<String, String> {
    let netns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("own network namespace");
    [
        ("network.transport", "Str(tcp)".to_owned()),
        ("network.type", "Str(ipv4)".to_owned()),
        ("network.local.address", format!("Str({})", side.local.ip())),
        ("network.local.port", format!("Int({})", side.local.port())),
        ("network.peer.address", format!("Str({})", side.peer.ip())),
        ("network.peer.port", format!("Int({})", side.peer.port())),
        ("server.address", format!("Str({})", side.server.ip())),
        ("server.port", format!("Int({})", side.server.port())),
        ("client.address", format!("Str({})", side.client.ip())),
        ("client.port", format!("Int({})", side.client.port())),
        ("process.pid", format!("Int({})", std::process::id())),
        ("tcplife.comm", format!("Str({THREAD_NAME})")),
        ("tcplife.owner_source", "Str(syscall)".to_owned()),
        ("tcplife.birth_seen", "Bool(true)".to_owned()),
        ("tcplife.established", "Bool(true)".to_owned()),
        ("tcplife.closed_by", format!("Str({})", side.closed_by)),
        ("tcplife.bytes_acked", format!("Int({})", side.raw.0)),
        ("tcplife.bytes_received", format!("Int({})", side.raw.1)),
        ("tcplife.payload.sent", format!("Int({})", side.payload.0)),
        (
            "tcplife.payload.received",
            format!("Int({})", side.payload.1),
        ),
        ("tcplife.retransmits", "Int(0)".to_owned()),
        ("tcplife.netns", format!("Int({netns})")),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// Takes an integer attribute out of `attributes`, failing the test if it is missing.
fn take_int(attributes: &mut BTreeMap<String, String>, key: &str) -> u128 {
    let value = attributes
        .remove(key)
        .unwrap_or_else(|| panic!("attribute {key} is missing"));
    value
        .strip_prefix("Int(")
        .and_then(|v| v.strip_suffix(')'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("attribute {key} is not an integer: {value}"))
}

fn nanos(time: std::time::SystemTime) -> u128 {
    time.duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_nanos()
}

fn assert_span(
    span: &ReceivedSpan,
    (name, kind): (&str, &str),
    exchange: &Exchange,
    attributes: BTreeMap<String, String>,
) {
    assert_eq!(span.name, name);
    assert_eq!(span.kind, kind);
    assert_eq!(span.status_code, "STATUS_CODE_UNSET");
    // Timing-dependent attributes: within the window the test measured.
    let mut received = span.attributes.clone();
    let connect_window_us =
        u128::from(exchange.after_connect_ns - exchange.before_connect_ns) / 1_000;
    let handshake_us = take_int(&mut received, "tcplife.handshake_us");
    assert!(
        handshake_us <= connect_window_us,
        "handshake {handshake_us} us"
    );
    let session_us = u128::from(exchange.after_close_ns - exchange.before_connect_ns) / 1_000;
    let rtt_us = take_int(&mut received, "tcplife.rtt_us");
    assert!(rtt_us > 0 && rtt_us <= session_us, "rtt {rtt_us} us");
    for key in ["tcplife.segments_in", "tcplife.segments_out"] {
        let segments = take_int(&mut received, key);
        assert!((3..=200).contains(&segments), "{key} = {segments}");
    }
    assert_eq!(received, attributes);
    assert_eq!(span.resource, expected_resource());
    let window = nanos(exchange.before_connect_wall) - WALL_TOLERANCE_NS
        ..=nanos(exchange.after_close_wall) + WALL_TOLERANCE_NS;
    assert!(
        window.contains(&span.start_ns),
        "start {} outside {window:?}",
        span.start_ns
    );
    assert!(
        window.contains(&span.end_ns),
        "end {} outside {window:?}",
        span.end_ns
    );
    assert!(
        span.start_ns < span.end_ns,
        "a session ends after it starts"
    );
    let lifespan = span.end_ns - span.start_ns;
    let measured_max = u128::from(exchange.after_close_ns - exchange.before_connect_ns);
    assert!(
        lifespan <= measured_max + WALL_TOLERANCE_NS,
        "lifespan {lifespan} ns longer than the {measured_max} ns the test measured"
    );
}

fn check(transport: Transport, name: &str) {
    require_root();
    let dir = TempDir::new(name);
    let rotel = Rotel::start(dir.path());
    let mut agent = start_agent(&rotel, transport, &dir);

    let exchange = traffic::exchange(
        "127.0.0.1".parse().unwrap(),
        CLIENT_BYTES,
        SERVER_BYTES,
        Closer::Client,
    );
    // Ctrl-C must flush what is queued (the batch delay is 5 s, longer than this test waits).
    agent::stop(&mut agent);

    let ports = |span: &ReceivedSpan| {
        (
            span.attributes
                .get("network.local.port")
                .cloned()
                .unwrap_or_default(),
            span.attributes
                .get("network.peer.port")
                .cloned()
                .unwrap_or_default(),
        )
    };
    let client_ports = (
        format!("Int({})", exchange.client.port()),
        format!("Int({})", exchange.server.port()),
    );
    let server_ports = (client_ports.1.clone(), client_ports.0.clone());
    let spans = rotel.wait_for_spans(2, Duration::from_secs(10), |span| {
        ports(span) == client_ports || ports(span) == server_ports
    });
    assert_eq!(spans.len(), 2, "exactly one span per session: {spans:#?}");
    let client = spans
        .iter()
        .find(|span| ports(span) == client_ports)
        .expect("client span");
    let server = spans
        .iter()
        .find(|span| ports(span) == server_ports)
        .expect("server span");

    let client_side = Side {
        local: exchange.client,
        peer: exchange.server,
        server: exchange.server,
        client: exchange.client,
        closed_by: "local",
        raw: (CLIENT_BYTES + 2, SERVER_BYTES + 1),
        payload: (CLIENT_BYTES, SERVER_BYTES),
    };
    let server_side = Side {
        local: exchange.server,
        peer: exchange.client,
        server: exchange.server,
        client: exchange.client,
        closed_by: "peer",
        raw: (SERVER_BYTES + 1, CLIENT_BYTES + 1),
        payload: (SERVER_BYTES, CLIENT_BYTES),
    };
    let server_port = exchange.server.port();
    assert_span(
        client,
        (&format!("tcp connect :{server_port}"), "SPAN_KIND_CLIENT"),
        &exchange,
        expected_attributes(&client_side),
    );
    assert_span(
        server,
        (&format!("tcp accept :{server_port}"), "SPAN_KIND_SERVER"),
        &exchange,
        expected_attributes(&server_side),
    );
    // One trace (a loopback peer is linked by default): the client span a root, the server
    // span its child; the exact ids are checked in tests/tests/connection_trace.rs.
    assert_eq!(client.parent_id, "", "the client span is a root");
    assert_eq!(client.trace_id.len(), 32);
    assert_eq!(server.trace_id, client.trace_id, "one trace");
    assert_eq!(server.parent_id, client.span_id, "the server span's parent");
    assert_ne!(server.span_id, client.span_id);
    assert!(client.links.is_empty() && server.links.is_empty());
}

/// The resource rotel must receive: the agent's, with this host and kernel.
fn expected_resource() -> BTreeMap<String, String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let version = env!("CARGO_PKG_VERSION");
    [
        ("service.name", "Str(otel-agent)".to_owned()),
        ("service.version", format!("Str({version})")),
        ("host.name", format!("Str({})", host.trim())),
        ("os.type", "Str(linux)".to_owned()),
        ("os.version", format!("Str({})", release.trim())),
        ("telemetry.distro.name", "Str(otel-agent)".to_owned()),
        ("telemetry.distro.version", format!("Str({version})")),
        ("telemetry.sdk.name", "Str(opentelemetry)".to_owned()),
        ("telemetry.sdk.language", "Str(rust)".to_owned()),
        ("telemetry.sdk.version", "Str(0.33.1)".to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

#[test]
fn grpc_export_configured_by_flags_reaches_rotel_exactly() {
    check(Transport::GrpcByFlags, "e2e-grpc");
}

#[test]
fn http_export_configured_by_environment_reaches_rotel_exactly() {
    check(Transport::HttpByEnvironment, "e2e-http");
}
