//! Reliability with the real binary and the real collector: the collector goes away and
//! comes back while sessions keep closing; SIGTERM flushes; a second signal exits at once;
//! the shutdown deadline holds. The agent's final accounting lines must reconcile exactly
//! with what rotel received: every session the agent read was exported or counted as lost.

use std::{
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use otel_agent_tests::{
    agent,
    process::TempDir,
    receiver::{Kind, Receiver},
    require_root,
    rotel::{self, Rotel},
    traffic::{self, Closer},
};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn exchanges(count: usize) {
    for _ in 0..count {
        traffic::exchange("127.0.0.1".parse().unwrap(), 200, 200, Closer::Client);
    }
}

/// Queue capacity the outage test gives the agent.
const QUEUE: usize = 200;

#[test]
fn a_collector_outage_keeps_the_agent_running_bounded_and_accounted() {
    require_root();
    let dir = TempDir::new("outage");
    let grpc = rotel::free_port();
    let http = rotel::free_port();
    let first = Rotel::start_on(dir.path(), "rotel-1", grpc, http, &["traces"]);
    let endpoint = format!("http://{grpc}");
    let queue = QUEUE.to_string();
    let mut agent = agent::start_grpc(
        &endpoint,
        &[
            "--bsp-max-queue-size",
            &queue,
            "--bsp-schedule-delay",
            "100ms",
            "--stats-interval",
            "500ms",
        ],
        dir.path(),
    );
    let pid = agent.id();

    exchanges(20);
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = rss_kib(pid);

    // The collector goes away while sessions keep closing: more than the queue holds.
    first.process.signal(libc::SIGTERM);
    drop(first);
    exchanges(150);
    std::thread::sleep(Duration::from_secs(2));
    let rss_during = rss_kib(pid);
    let during = agent::log_counters(&agent.stderr_text(), &["export accounting", "periodic"]);
    assert!(
        agent::counter(&during, "export_errors") >= 1,
        "the agent noticed: {during:?}"
    );
    assert_eq!(
        agent::counter(&during, "queued"),
        QUEUE as u64,
        "the queue is full, not larger"
    );

    // It comes back on the same port: what the queue held is delivered.
    let second = Rotel::start_on(dir.path(), "rotel-2", grpc, http, &["traces"]);
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let now = agent::log_counters(&agent.stderr_text(), &["export accounting", "periodic"]);
        if agent::counter(&now, "queued") == 0 && agent::counter(&now, "exported") > 40 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queue did not drain after the collector came back: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    exchanges(10);
    agent::stop(&mut agent);

    let stderr = agent.stderr_text();
    let sessions = agent::log_counters(&stderr, &["session accounting", "final"]);
    let export = agent::log_counters(&stderr, &["export accounting", "final"]);
    let read = agent::counter(&sessions, "records_read");
    // Every record the probe wrote was read, and exported + dropped = seen: the equation,
    // with no other outcome than these.
    agent::assert_reconciled(&stderr);
    let (exported, queue_full, at_shutdown) = (
        agent::counter(&export, "exported"),
        agent::counter(&export, "lost_queue_full"),
        agent::counter(&export, "lost_at_shutdown"),
    );
    assert_eq!(
        ["lost_rejected", "exported_unconfirmed", "queued"]
            .map(|name| agent::counter(&export, name)),
        [0, 0, 0],
        "{export:?}"
    );
    // This test's own sessions (-p): the exchanges, plus its probes of rotel's ports.
    assert!(read >= 2 * (20 + 150 + 10), "{sessions:?}");
    assert!(
        queue_full >= 1,
        "the outage overflowed the queue: {export:?}"
    );
    assert_eq!(at_shutdown, 0, "the collector was up at shutdown");
    let received = rotel::parse(&dir_text(&dir, "rotel-1")).len() + second.spans().len();
    assert_eq!(
        received as u64, exported,
        "rotel received exactly what the agent exported"
    );
    assert!(
        rss_during < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_during} KiB during the outage"
    );
}

fn dir_text(dir: &TempDir, name: &str) -> String {
    std::fs::read_to_string(dir.path().join(format!("{name}.stdout"))).unwrap_or_default()
}

#[test]
fn sigterm_flushes_queued_spans() {
    require_root();
    let dir = TempDir::new("sigterm");
    let receiver = Receiver::start(Kind::Grpc);
    let url = receiver.url(false);
    // A one-minute schedule delay: only the shutdown flush can deliver in time.
    let mut agent = agent::start_grpc(&url, &["--bsp-schedule-delay", "60s"], dir.path());
    let exchange = traffic::exchange("127.0.0.1".parse().unwrap(), 10, 10, Closer::Client);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        receiver.received().is_empty(),
        "nothing exported before the signal"
    );
    agent.signal(libc::SIGTERM);
    let status = agent.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    let ports: Vec<i64> = receiver
        .received()
        .iter()
        .flat_map(|r| &r.request.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .filter_map(|span| {
            span.attributes
                .iter()
                .find(|kv| kv.key == "network.local.port")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(p) => {
                        Some(*p)
                    }
                    _ => None,
                })
        })
        .collect();
    assert!(
        ports.contains(&i64::from(exchange.client.port())),
        "{ports:?}"
    );
    assert!(
        ports.contains(&i64::from(exchange.server.port())),
        "{ports:?}"
    );
}

/// A loopback address nobody listens on.
fn closed_endpoint() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn a_second_signal_exits_at_once() {
    require_root();
    let dir = TempDir::new("second-signal");
    let endpoint = format!("http://{}", closed_endpoint());
    let mut agent = agent::start_grpc(&endpoint, &["--shutdown-timeout", "60s"], dir.path());
    traffic::exchange("127.0.0.1".parse().unwrap(), 10, 10, Closer::Client);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    agent.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(libc::SIGINT);
    let status = agent.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{}", agent.stderr_text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited after {:?}",
        started.elapsed()
    );
    assert!(
        agent
            .stderr_text()
            .contains("second signal: exiting without waiting for the flush")
    );
}

#[test]
fn the_shutdown_deadline_holds_and_what_is_left_is_counted() {
    require_root();
    let dir = TempDir::new("deadline");
    let endpoint = format!("http://{}", closed_endpoint());
    let mut agent = agent::start_grpc(&endpoint, &["--shutdown-timeout", "2s"], dir.path());
    exchanges(3);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    agent::stop(&mut agent);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let stderr = agent.stderr_text();
    let sessions = agent::log_counters(&stderr, &["session accounting", "final"]);
    let export = agent::log_counters(&stderr, &["export accounting", "final"]);
    assert_eq!(agent::counter(&export, "exported"), 0);
    assert_eq!(
        agent::counter(&export, "lost_at_shutdown") + agent::counter(&export, "lost_queue_full"),
        agent::counter(&sessions, "records_read"),
        "{export:?}"
    );
    assert!(
        agent::counter(&export, "lost_at_shutdown") >= 6,
        "{export:?}"
    );
}

/// Metric names the agent exports about itself (otel-agent/src/telemetry/metrics.rs).
const SELF_METRICS: [&str; 8] = [
    "otel_agent.sessions.closed",
    "otel_agent.sessions.read",
    "otel_agent.sessions.exported",
    "otel_agent.sessions.lost",
    "otel_agent.sessions.filtered",
    "otel_agent.sessions.birth_not_seen",
    "otel_agent.export.errors",
    "otel_agent.export.queue.depth",
];

/// The last value rotel printed for the first data point of `metric`.
fn last_value(rotel_output: &str, metric: &str) -> Option<u64> {
    let name_line = format!("-> Name: {metric}");
    let mut last = None;
    let mut lines = rotel_output.lines();
    while let Some(line) = lines.next() {
        if line.trim() == name_line {
            last = lines
                .by_ref()
                .find_map(|line| line.trim().strip_prefix("Value: "))
                .and_then(|value| value.trim().parse().ok());
        }
    }
    last
}

#[test]
fn self_metrics_reach_the_collector_and_match_the_final_accounting() {
    require_root();
    let dir = TempDir::new("self-metrics");
    let collector = Rotel::start_on(
        dir.path(),
        "rotel",
        rotel::free_port(),
        rotel::free_port(),
        &["metrics"],
    );
    let grpc = collector.grpc;
    let endpoint = format!("http://{grpc}");
    let mut agent = agent::start_grpc(&endpoint, &["--stats-interval", "500ms"], dir.path());
    exchanges(2);
    std::thread::sleep(Duration::from_millis(700));
    agent::stop(&mut agent);
    std::thread::sleep(Duration::from_millis(500));
    let output = collector.process.stdout_text();
    for metric in SELF_METRICS {
        assert!(
            output.contains(&format!("-> Name: {metric}")),
            "{metric} missing"
        );
    }
    let export = agent::log_counters(&agent.stderr_text(), &["export accounting", "final"]);
    assert_eq!(
        last_value(&output, "otel_agent.sessions.exported"),
        Some(agent::counter(&export, "exported")),
        "the last exported value is the final accounting's"
    );
    assert!(agent::counter(&export, "exported") >= 4);
}
