//! Workload identity (issue 14): each span's resource names the workload that owned the
//! session, from what the probe captured at the owner's own system call, so that it
//! survives the owner.
//!
//! Through rotel: a client runs as an executable whose name is longer than the 15 bytes of
//! a `comm`, renames its thread, moves itself into a containerd-style Kubernetes cgroup the
//! test created on the cgroup v2 hierarchy, connects to this test and exits without closing
//! its socket; the test closes its end only once the client process is reaped, so the
//! client's session closes after its owner is gone. Its span's resource must still carry
//! the container id, the full executable name as `service.name`, and differ from the
//! server's (this test's) resource. Then `OTEL_SERVICE_NAME`: every workload under the one
//! resource the user named.

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use otel_agent_tests::{
    agent,
    cgroup::{PodContainer, own_executable_name},
    peer::EXIT_WITHOUT_CLOSE_BYTES,
    process::{ChildGuard, TempDir},
    receiver::{Kind, Received, Receiver},
    require_root,
    rotel::{ReceivedSpan, Rotel},
};

/// The client's executable: longer than a `comm` (15 bytes), so only `mm->exe_file` has it
/// whole.
const LONG_NAME: &str = "workload-identity-peer";
/// The client's thread name, set with `prctl(PR_SET_NAME)` (tcp-peer's `peer-client`).
const CLIENT_COMM: &str = "peer-client";
/// Tolerance of the wall-clock conversion of kernel times (as in e2e_rotel).
const WALL_TOLERANCE_NS: u128 = 50_000_000;

/// One session between this test (the server) and a client process that exited before its
/// session closed.
struct Orphaned {
    server: SocketAddr,
    client: SocketAddr,
    client_pid: u32,
    /// Wall clock once the client process was reaped.
    reaped: SystemTime,
}

/// What each test sets up: a container's cgroup, a directory, and in it `tcp-peer` copied
/// under [`LONG_NAME`].
fn set_up(name: &str) -> (PodContainer, TempDir, std::path::PathBuf) {
    require_root();
    let container = PodContainer::create();
    let dir = TempDir::new(name);
    let client_binary = dir.path().join(LONG_NAME);
    std::fs::copy(env!("CARGO_BIN_EXE_tcp-peer"), &client_binary).expect("copy tcp-peer");
    (container, dir, client_binary)
}

/// Runs `tcp-peer exit-without-close` under `client_binary`, moved into `cgroup`.
fn orphaned_session(client_binary: &Path, cgroup: &Path, dir: &Path) -> Orphaned {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let server = listener.local_addr().expect("listening address");
    let mut command = Command::new(client_binary);
    command.args([
        "exit-without-close",
        "127.0.0.1",
        &server.port().to_string(),
        &cgroup.display().to_string(),
    ]);
    let mut client = ChildGuard::spawn(command, dir, "client");
    let client_pid = client.id();
    let (mut stream, client_addr): (TcpStream, _) = listener.accept().expect("accept");
    let mut sent = vec![0; EXIT_WITHOUT_CLOSE_BYTES];
    stream.read_exact(&mut sent).expect("the client's bytes");
    let status = client.wait(Duration::from_secs(10));
    assert!(
        status.success(),
        "the client failed: {}",
        client.stderr_text()
    );
    let reaped = SystemTime::now();
    assert!(
        !Path::new(&format!("/proc/{client_pid}")).exists(),
        "the client process is gone before its session closes"
    );
    // The client's FIN (sent by the kernel at its exit), then this end's close, which
    // closes the client's orphaned socket.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read until the FIN");
    assert!(rest.is_empty());
    drop(stream);
    Orphaned {
        server,
        client: client_addr,
        client_pid,
        reaped,
    }
}

fn local_port(span: &ReceivedSpan) -> Option<&str> {
    span.attributes
        .get("network.local.port")
        .map(String::as_str)
}

fn nanos(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

#[test]
fn a_client_that_exits_before_its_close_keeps_its_container_and_executable() {
    let (container, dir, client_binary) = set_up("workload-identity");
    let rotel = Rotel::start(dir.path());
    let endpoint = format!("http://{}", rotel.grpc);
    let mut agent = agent::start(
        &["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc"],
        &[],
        dir.path(),
    );

    let run = orphaned_session(&client_binary, container.dir(), dir.path());
    agent::stop(&mut agent);
    agent::assert_reconciled(&agent.stderr_text());

    let client_port = format!("Int({})", run.client.port());
    let server_port = format!("Int({})", run.server.port());
    let spans = rotel.wait_for_spans(2, Duration::from_secs(10), |span| {
        let peer = span.attributes.get("network.peer.port").map(String::as_str);
        (local_port(span), peer) == (Some(&client_port), Some(&server_port))
            || (local_port(span), peer) == (Some(&server_port), Some(&client_port))
    });
    assert_eq!(spans.len(), 2, "one span per end: {spans:#?}");
    let client = spans
        .iter()
        .find(|span| local_port(span) == Some(&client_port))
        .expect("the client's span");
    let server = spans
        .iter()
        .find(|span| local_port(span) == Some(&server_port))
        .expect("the server's span");

    // The client's resource: its workload, captured while it lived.
    let text = |value: &str| format!("Str({value})");
    assert_eq!(client.resource.get("service.name"), Some(&text(LONG_NAME)));
    assert_eq!(
        client.resource.get("process.executable.name"),
        Some(&text(LONG_NAME))
    );
    assert_eq!(
        client.resource.get("container.id"),
        Some(&text(&container.id))
    );
    assert_eq!(client.resource.get("service.version"), None);
    // The span keeps the process and its thread name.
    assert_eq!(
        client.attributes.get("process.pid"),
        Some(&format!("Int({})", run.client_pid))
    );
    assert_eq!(
        client.attributes.get("tcplife.comm"),
        Some(&text(CLIENT_COMM))
    );
    assert_eq!(
        client.attributes.get("tcplife.owner_source"),
        Some(&text("syscall"))
    );
    assert!(
        client.end_ns + WALL_TOLERANCE_NS >= nanos(run.reaped),
        "the client's session closed after its process was reaped ({} < {})",
        client.end_ns,
        nanos(run.reaped)
    );

    // The server (this test): its own workload, not the container.
    let own = own_executable_name();
    assert_eq!(server.resource.get("service.name"), Some(&text(&own)));
    assert_eq!(
        server.resource.get("process.executable.name"),
        Some(&text(&own))
    );
    assert_ne!(
        server.resource.get("container.id"),
        Some(&text(&container.id))
    );
    assert_ne!(client.resource, server.resource);
    // Host attributes on both.
    for span in [client, server] {
        assert_eq!(span.resource.get("os.type"), Some(&text("linux")));
        assert_eq!(
            span.resource.get("telemetry.distro.name"),
            Some(&text("otel-agent"))
        );
    }
}

/// The resource attributes of the received spans whose local port is one of `ports`.
fn resources_of(received: &[Received], ports: [u16; 2]) -> Vec<BTreeMap<String, String>> {
    let mut resources = Vec::new();
    for resource_spans in received.iter().flat_map(|r| &r.request.resource_spans) {
        let resource: BTreeMap<String, String> = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .map(|kv| (kv.key.clone(), text_of(kv)))
            .collect();
        for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
            let port = span
                .attributes
                .iter()
                .find(|kv| kv.key == "network.local.port")
                .map(text_of);
            if ports.iter().any(|p| Some(p.to_string()) == port) {
                resources.push(resource.clone());
            }
        }
    }
    resources
}

fn text_of(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_named_service_puts_every_workload_under_its_one_resource() {
    let (container, dir, client_binary) = set_up("workload-named");
    let receiver = Receiver::start(Kind::Grpc);
    let url = receiver.url(false);
    let mut agent = agent::start(
        &["--otlp-endpoint", &url, "--otlp-protocol", "grpc"],
        &[("OTEL_SERVICE_NAME", "checkout")],
        dir.path(),
    );
    let run = orphaned_session(&client_binary, container.dir(), dir.path());
    agent::stop(&mut agent);
    let ports = [run.client.port(), run.server.port()];
    let received = receiver.wait_for(Duration::from_secs(10), "both spans", |received| {
        resources_of(received, ports).len() >= 2
    });
    let resources = resources_of(&received, ports);
    assert_eq!(resources.len(), 2, "{resources:#?}");
    assert_eq!(
        resources[0], resources[1],
        "one resource for both workloads"
    );
    let resource = &resources[0];
    assert_eq!(
        resource.get("service.name").map(String::as_str),
        Some("checkout")
    );
    assert_eq!(resource.get("process.executable.name"), None);
    assert_eq!(resource.get("container.id"), None);
}
