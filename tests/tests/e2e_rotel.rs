//! End to end through the real collector: the `otel-agent` binary, run as a separate
//! process, exports over OTLP to rotel (gRPC configured by flags, HTTP/protobuf configured by
//! the standard environment variables); the test makes one known loopback connection and
//! checks what rotel printed for both of its sessions: name, kind, parent, status, start and
//! end times, every attribute and the resource.
//!
//! Span times must fall inside the wall-clock window the test measured around its own
//! system calls, widened by [`WALL_TOLERANCE_NS`] on each side for the error of converting
//! monotonic to wall-clock time and the kernel's deferred close processing.

use std::{collections::BTreeMap, process::Command, time::Duration};

use otel_agent_tests::{
    process::{ChildGuard, TempDir, agent_binary},
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
    let mut command = Command::new(agent_binary());
    for name in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
    ] {
        command.env_remove(name);
    }
    match transport {
        Transport::GrpcByFlags => {
            command.args([
                "--otlp-endpoint",
                &format!("http://{}", rotel.grpc),
                "--otlp-protocol",
                "grpc",
            ]);
        }
        Transport::HttpByEnvironment => {
            command
                .env(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://{}", rotel.http),
                )
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
        }
    }
    let agent = ChildGuard::spawn(command, dir.path(), "agent");
    agent.wait_for_output(Duration::from_secs(20), "the probe to attach", |output| {
        output.contains("probe attached")
    });
    agent
}

fn expected_attributes(
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    (acked, received): (usize, usize),
) -> BTreeMap<String, String> {
    [
        ("network.transport", "Str(tcp)".to_owned()),
        ("network.type", "Str(ipv4)".to_owned()),
        ("network.local.address", format!("Str({})", local.ip())),
        ("network.local.port", format!("Int({})", local.port())),
        ("network.peer.address", format!("Str({})", peer.ip())),
        ("network.peer.port", format!("Int({})", peer.port())),
        ("process.pid", format!("Int({})", std::process::id())),
        ("tcplife.comm", format!("Str({THREAD_NAME})")),
        ("tcplife.bytes_acked", format!("Int({acked})")),
        ("tcplife.bytes_received", format!("Int({received})")),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

fn nanos(time: std::time::SystemTime) -> u128 {
    time.duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_nanos()
}

fn assert_span(
    span: &ReceivedSpan,
    kind: &str,
    exchange: &Exchange,
    attributes: BTreeMap<String, String>,
) {
    assert_eq!(span.name, "tcp session");
    assert_eq!(span.kind, kind);
    assert_eq!(span.parent_id, "", "every session is a root span");
    assert_eq!(span.status_code, "STATUS_CODE_UNSET");
    assert_eq!(span.attributes, attributes);
    assert_eq!(
        span.resource.get("service.name").map(String::as_str),
        Some("Str(otel-agent)")
    );
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
    agent.signal(libc::SIGINT);
    let status = agent.wait(Duration::from_secs(15));
    assert_eq!(
        status.code(),
        Some(0),
        "agent stderr:\n{}",
        agent.stderr_text()
    );

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

    assert_span(
        client,
        "SPAN_KIND_CLIENT",
        &exchange,
        expected_attributes(
            exchange.client,
            exchange.server,
            (CLIENT_BYTES + 2, SERVER_BYTES + 1),
        ),
    );
    assert_span(
        server,
        "SPAN_KIND_SERVER",
        &exchange,
        expected_attributes(
            exchange.server,
            exchange.client,
            (SERVER_BYTES + 1, CLIENT_BYTES + 1),
        ),
    );
}

#[test]
fn grpc_export_configured_by_flags_reaches_rotel_exactly() {
    check(Transport::GrpcByFlags, "e2e-grpc");
}

#[test]
fn http_export_configured_by_environment_reaches_rotel_exactly() {
    check(Transport::HttpByEnvironment, "e2e-http");
}
