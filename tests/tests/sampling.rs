//! Volume control (issue 15) through the real probe and rotel, one agent seeing both ends of
//! loopback connections: consistent sampling at `traceidratio` 0.5 (both ends of every
//! connection exported or neither, the kept fraction within binomial bounds, the threshold
//! in each span's tracestate); `always_off` (no span, exact session metrics); the keep rule
//! for failed sessions and the drop rules, each counted by cause and reconciled; the
//! cardinality bound's overflow series. Every agent is kept to this test process (`-p`),
//! but those of the workload tests, kept to a network namespace they create (`--netns`),
//! where `tcp-peer` copies of different names are the workloads: each workload's metrics
//! on its spans' resource, the overflow resource's for those over `--max-workloads`, the
//! named service's one resource.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use otel_agent_tests::{
    agent,
    netns::NetNs,
    peer,
    process::{ChildGuard, TempDir},
    require_root,
    rotel::{self, FinalPoints, ReceivedSpan, Rotel},
    traffic::{self, Closer, Exchange, THREAD_NAME},
};

/// One test at a time: every agent here is kept to this process (`-p`), so two tests at once
/// would each see the other's sessions.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Bytes the client sends in every exchange, and the server.
const CLIENT_BYTES: usize = 1_000;
const SERVER_BYTES: usize = 2_000;

/// rotel printing spans and metrics, and the agent's gRPC endpoint for it.
fn collector(dir: &TempDir) -> (Rotel, String) {
    let rotel = Rotel::start_with_metrics(dir.path());
    let endpoint = format!("http://{}", rotel.grpc);
    (rotel, endpoint)
}

/// Starts the agent for this test process with `args` and the sampler variables `env`,
/// exporting to `endpoint` with a short batch delay.
fn start(endpoint: &str, args: &[&str], env: &[(&str, &str)], dir: &TempDir) -> ChildGuard {
    let mut all = vec!["--bsp-schedule-delay", "200ms"];
    all.extend_from_slice(args);
    agent::start_grpc_with_env(endpoint, &all, env, dir.path())
}

/// `count` IPv4 loopback exchanges.
fn exchanges(count: usize) -> Vec<Exchange> {
    (0..count)
        .map(|_| {
            traffic::exchange(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                CLIENT_BYTES,
                SERVER_BYTES,
                Closer::Server,
            )
        })
        .collect()
}

/// The spans rotel received for the end `local` -> `peer`.
fn spans_of_end(spans: &[ReceivedSpan], local: SocketAddr, peer: SocketAddr) -> Vec<ReceivedSpan> {
    let is = |span: &ReceivedSpan, key: &str, port: u16| {
        span.attributes.get(key).map(String::as_str) == Some(&format!("Int({port})"))
    };
    spans
        .iter()
        .filter(|span| {
            is(span, "network.local.port", local.port())
                && is(span, "network.peer.port", peer.port())
        })
        .cloned()
        .collect()
}

/// The total of the series of `points` whose attributes include every one of `with`.
fn total(points: &FinalPoints, with: &[(&str, &str)]) -> f64 {
    points
        .values()
        .filter(|point| {
            with.iter()
                .all(|(key, value)| point.attributes.get(*key).map(String::as_str) == Some(value))
        })
        .map(|point| point.value)
        .sum()
}

/// A connect refused on loopback: a port that was free a moment ago.
fn refused_connect() -> SocketAddr {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || {
            TcpStream::connect(port).expect_err("nothing listens there");
        })
        .expect("spawn")
        .join()
        .expect("the connect thread");
    port
}

/// At `traceidratio` 0.5, 100 loopback connections seen at both ends by one agent: for
/// every connection both spans or neither (they share the trace id derived from the
/// handshake, and the sampler decides on it), each kept span with `ot=th:8` and a trace id
/// whose randomness (last 7 bytes) is at least the threshold 2^55; the kept count within
/// [25, 75] (Binomial(100, 0.5): outside with probability 5.6 * 10^-7); the final
/// `tcp.session.duration` count equal to the 200 sessions the agent read, and the
/// accounting: exported + filtered_sampled_out = 200, reconciled.
#[test]
fn ratio_half_keeps_both_ends_or_neither_and_the_metrics_count_every_session() {
    require_root();
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = TempDir::new("sampling-ratio");
    let (rotel, endpoint) = collector(&dir);
    let mut agent = start(
        &endpoint,
        &[],
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
        &dir,
    );
    let exchanges = exchanges(100);
    agent::stop(&mut agent);
    let stderr = agent.stderr_text();
    let accounting = agent::assert_reconciled(&stderr);
    let session = agent::accounting(&stderr);
    let export = agent::export_accounting(&stderr);
    assert_eq!(
        agent::counter(&session, "records_read"),
        200,
        "{accounting:?}"
    );

    // The histogram's final count: every session read, kept or not.
    let duration = rotel.final_points("tcp.session.duration", 200.0);
    assert_eq!(
        total(&duration, &[("span.kind", "Str(SPAN_KIND_CLIENT)")]),
        100.0
    );
    let kept_sessions = agent::counter(&export, "exported");
    assert_eq!(
        kept_sessions + agent::counter(&session, "filtered_sampled_out"),
        200
    );
    let spans = rotel.wait_for_spans(kept_sessions as usize, Duration::from_secs(10), |span| {
        span.attributes.get("tcplife.comm").map(String::as_str) == Some("Str(tcp-test-io)")
    });
    assert_eq!(spans.len() as u64, kept_sessions);

    let mut kept = 0;
    for exchange in &exchanges {
        let client = spans_of_end(&spans, exchange.client, exchange.server);
        let server = spans_of_end(&spans, exchange.server, exchange.client);
        assert_eq!(
            client.len(),
            server.len(),
            "both ends or neither of {exchange:?}: {client:#?} {server:#?}"
        );
        assert!(client.len() <= 1);
        if let ([client], [server]) = (client.as_slice(), server.as_slice()) {
            kept += 1;
            assert_eq!(client.trace_id, server.trace_id);
            for span in [client, server] {
                assert_eq!(span.trace_state, "ot=th:8", "{span:#?}");
                let randomness = u64::from_str_radix(&span.trace_id[18..], 16).unwrap();
                assert!(randomness >= 1 << 55, "{span:#?}");
            }
        }
    }
    assert_eq!(kept * 2, kept_sessions);
    assert!((25..=75).contains(&kept), "kept {kept} of 100 connections");
}

/// `always_off`: no span of this test's sessions, and still exact metrics: the 20 sessions
/// of 10 exchanges in `tcp.session.duration` (exported every `OTEL_METRIC_EXPORT_INTERVAL`
/// = 300 ms while the agent runs, and at shutdown), and their payload by kind and direction
/// (the client transmits 1,000 bytes and receives 2,000 each time).
#[test]
fn always_off_exports_no_spans_and_still_exact_metrics() {
    require_root();
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = TempDir::new("sampling-off");
    let (rotel, endpoint) = collector(&dir);
    let mut agent = start(
        &endpoint,
        &["--traces-sampler", "always_off"],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "300")],
        &dir,
    );
    exchanges(10);
    // A periodic export (every 300 ms) already holds the 20 sessions, before the last one at
    // shutdown.
    rotel.final_points("tcp.session.duration", 20.0);
    agent::stop(&mut agent);
    let stderr = agent.stderr_text();
    agent::assert_reconciled(&stderr);
    let session = agent::accounting(&stderr);
    assert_eq!(agent::counter(&session, "records_read"), 20);
    assert_eq!(agent::counter(&session, "filtered_sampled_out"), 20);
    assert_eq!(
        agent::counter(&agent::export_accounting(&stderr), "exported"),
        0
    );

    // One series per span name (the server's port): 20, unless two listeners drew the same
    // port; the counts are exact either way.
    let duration = rotel.final_points("tcp.session.duration", 20.0);
    assert_eq!(
        total(&duration, &[("span.kind", "Str(SPAN_KIND_SERVER)")]),
        10.0
    );
    for point in duration.values() {
        assert_eq!(point.attributes["status.code"], "Str(STATUS_CODE_UNSET)");
    }
    let payload = rotel.final_points(
        "tcp.session.payload",
        (20 * (CLIENT_BYTES + SERVER_BYTES)) as f64,
    );
    let bytes = |kind: &str, direction: &str| {
        total(
            &payload,
            &[("span.kind", kind), ("network.io.direction", direction)],
        )
    };
    let (client, server) = ("Str(SPAN_KIND_CLIENT)", "Str(SPAN_KIND_SERVER)");
    assert_eq!(bytes(client, "Str(transmit)"), (10 * CLIENT_BYTES) as f64);
    assert_eq!(bytes(client, "Str(receive)"), (10 * SERVER_BYTES) as f64);
    assert_eq!(bytes(server, "Str(transmit)"), (10 * SERVER_BYTES) as f64);
    assert_eq!(bytes(server, "Str(receive)"), (10 * CLIENT_BYTES) as f64);
    let ours: Vec<_> = rotel
        .spans()
        .into_iter()
        .filter(|span| {
            span.attributes.get("tcplife.comm").map(String::as_str) == Some("Str(tcp-test-io)")
        })
        .collect();
    assert!(ours.is_empty(), "{ours:#?}");
    // The self-metrics' last export says the same: 20 sessions sampled out.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sampled_out =
            rotel::metric_points(&rotel.process.stdout_text(), "otel_agent.sessions.filtered")
                .into_iter()
                .rfind(|point| {
                    point.attributes.get("cause").map(String::as_str) == Some("Str(sampled_out)")
                })
                .map(|point| point.value);
        if sampled_out == Some(20.0) || Instant::now() >= deadline {
            assert_eq!(sampled_out, Some(20.0));
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The rules under `always_off`: a refused connect is kept (failed, `ot=th:0`: adjusted count
/// 1); a refused connect to a dropped peer port is left out (the drop rule wins); an IPv6
/// exchange to a dropped peer network loses both ends; an IPv4 exchange is sampled out.
/// Then `always_on` with a process rule drops both ends of an exchange. Each cause counted,
/// the accounting reconciled, and the metrics count all of them; with a cardinality limit of
/// 2, the rest of the series in the overflow series.
#[test]
fn keep_and_drop_rules_are_counted_by_cause_and_the_metrics_overflow_past_their_limit() {
    require_root();
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = TempDir::new("sampling-rules");
    let (rotel, endpoint) = collector(&dir);
    let dropped_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let mut agent = start(
        &endpoint,
        &[
            "--traces-sampler",
            "always_off",
            "--sample-drop-peer-ports",
            &dropped_port,
            "--sample-drop-peer-networks",
            "::1/128",
            "--session-metrics-cardinality-limit",
            "2",
        ],
        &[],
        &dir,
    );
    let refused = refused_connect();
    let dropped = TcpStream::connect(format!("127.0.0.1:{dropped_port}"));
    assert!(dropped.is_err(), "nothing listens on the dropped port");
    traffic::exchange(IpAddr::V6(Ipv6Addr::LOCALHOST), 10, 10, Closer::Client);
    traffic::exchange(IpAddr::V4(Ipv4Addr::LOCALHOST), 10, 10, Closer::Client);
    agent::stop(&mut agent);
    let stderr = agent.stderr_text();
    agent::assert_reconciled(&stderr);
    let session = agent::accounting(&stderr);
    let figures: BTreeMap<&str, u64> = [
        "records_read",
        "kept_failed",
        "filtered_drop_port",
        "filtered_drop_peer",
        "filtered_sampled_out",
        "filtered_drop_process",
    ]
    .into_iter()
    .map(|name| (name, agent::counter(&session, name)))
    .collect();
    assert_eq!(
        figures,
        BTreeMap::from([
            ("records_read", 6),
            ("kept_failed", 1),
            ("filtered_drop_port", 1),
            ("filtered_drop_peer", 2),
            ("filtered_sampled_out", 2),
            ("filtered_drop_process", 0),
        ])
    );
    assert_eq!(
        agent::counter(&agent::export_accounting(&stderr), "exported"),
        1
    );
    let [kept] = rotel
        .wait_for_spans(1, Duration::from_secs(10), |span| {
            span.name == format!("tcp connect :{}", refused.port())
        })
        .try_into()
        .expect("one span of the refused connect");
    assert_eq!(kept.status_code, "STATUS_CODE_ERROR");
    assert_eq!(kept.trace_state, "ot=th:0");
    // Six sessions, six span names: two series of their own and the overflow series.
    let duration = rotel.final_points("tcp.session.duration", 6.0);
    assert_eq!(duration.len(), 3, "{duration:#?}");
    assert_eq!(
        total(&duration, &[("otel.metric.overflow", "Bool(true)")]),
        4.0
    );

    // The process rule: both ends of an exchange owned by the test's I/O thread.
    let mut agent = start(
        &endpoint,
        &["--sample-drop-processes", THREAD_NAME],
        &[],
        &dir,
    );
    let exchange = traffic::exchange(IpAddr::V4(Ipv4Addr::LOCALHOST), 10, 10, Closer::Client);
    agent::stop(&mut agent);
    let stderr = agent.stderr_text();
    agent::assert_reconciled(&stderr);
    let session = agent::accounting(&stderr);
    assert_eq!(agent::counter(&session, "filtered_drop_process"), 2);
    assert_eq!(
        agent::counter(&agent::export_accounting(&stderr), "exported"),
        0
    );
    let ports: HashSet<u16> = [exchange.client.port(), exchange.server.port()].into();
    let ours: Vec<_> = rotel
        .spans()
        .into_iter()
        .filter(|span| {
            ["network.local.port", "network.peer.port"]
                .iter()
                .all(|key| {
                    span.attributes
                        .get(*key)
                        .and_then(|value| {
                            value.strip_prefix("Int(")?.strip_suffix(')')?.parse().ok()
                        })
                        .is_some_and(|port: u16| ports.contains(&port))
                })
        })
        .collect();
    assert!(ours.is_empty(), "{ours:#?}");
}

/// The long-session rule under `always_off`: a connection held 400 ms is kept at both ends
/// (`ot=th:0`, counted `kept_long`), a quick one is sampled out at both.
#[test]
fn sessions_longer_than_the_rule_are_kept_at_both_ends() {
    require_root();
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = TempDir::new("sampling-long");
    let (rotel, endpoint) = collector(&dir);
    let mut agent = start(
        &endpoint,
        &[
            "--traces-sampler",
            "always_off",
            "--sample-keep-longer-than",
            "300ms",
        ],
        &[],
        &dir,
    );
    exchanges(1);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let (client_port, server_port) = (
        client.local_addr().unwrap().port(),
        server.local_addr().unwrap().port(),
    );
    thread::sleep(Duration::from_millis(400));
    drop((client, server, listener));
    agent::stop(&mut agent);
    let stderr = agent.stderr_text();
    agent::assert_reconciled(&stderr);
    let session = agent::accounting(&stderr);
    assert_eq!(agent::counter(&session, "records_read"), 4, "{session:?}");
    assert_eq!(agent::counter(&session, "kept_long"), 2);
    assert_eq!(agent::counter(&session, "filtered_sampled_out"), 2);
    let spans = rotel.wait_for_spans(2, Duration::from_secs(10), |span| {
        span.trace_state == "ot=th:0"
    });
    let mut ports: Vec<_> = spans
        .iter()
        .map(|span| span.attributes["network.local.port"].clone())
        .collect();
    ports.sort();
    let mut expected = vec![format!("Int({client_port})"), format!("Int({server_port})")];
    expected.sort();
    assert_eq!(ports, expected);
    assert_eq!(spans[0].trace_id, spans[1].trace_id);
    rotel.final_points("tcp.session.duration", 4.0);
}

/// `tcp-peer`'s `client-first` exchanges in `netns`: the server run from `tcp-peer`, the
/// client from `client`; the client's ports, in order.
fn peer_exchanges(netns: &NetNs, client: &std::path::Path, count: usize) -> Vec<u16> {
    (0..count)
        .map(|_| {
            peer::run_with(
                (std::path::Path::new(env!("CARGO_BIN_EXE_tcp-peer")), client),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                "client-first",
                0,
                Some(netns.name.as_str()),
                Duration::ZERO,
                |_| {},
            )
            .client_port
        })
        .collect()
}

/// Starts the agent for the sessions of `netns` alone (`--netns`, not `-p`: the workloads
/// are other processes), exporting to `endpoint` with `args` and `env`.
fn start_in(
    netns: &NetNs,
    endpoint: &str,
    (args, env): (&[&str], &[(&str, &str)]),
    dir: &TempDir,
) -> ChildGuard {
    let mut all = vec!["--bsp-schedule-delay", "200ms"];
    all.extend_from_slice(args);
    agent::start_grpc_in_netns(netns.inode(), endpoint, &all, env, dir.path())
}

/// A copy of `tcp-peer` named `name` in `dir`: another executable, so another workload.
fn peer_copy(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::copy(env!("CARGO_BIN_EXE_tcp-peer"), &path).expect("copy tcp-peer");
    path
}

/// `service.name` of a resource as rotel prints it, or `overflow` for the overflow
/// resource.
fn service(resource: &BTreeMap<String, String>) -> String {
    if resource
        .get("otel_agent.workload.overflow")
        .map(String::as_str)
        == Some("Bool(true)")
    {
        return "overflow".to_owned();
    }
    resource.get("service.name").cloned().unwrap_or_default()
}

/// Per resource (its `service`), the total of `points`.
fn by_service(points: &FinalPoints, with: &[(&str, &str)]) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    for ((resource, attributes), point) in points {
        if with
            .iter()
            .all(|(key, value)| attributes.get(*key).map(String::as_str) == Some(value))
        {
            *totals.entry(service(resource)).or_default() += point.value;
        }
    }
    totals
}

/// Workload mode with `--max-workloads 2`, in a network namespace of its own: 3 exchanges
/// between `tcp-peer` (server) and `metrics-client`, then 2 with `metrics-other-client` and 1
/// with `metrics-dropped-client`, which find the live set full (their client sessions go to
/// the overflow resource; the last one's span is dropped by its executable's name, a name
/// its comm, `peer-client`, does not have). The metrics count every session on its span's
/// resource: `tcp-peer` 6 accepts, `metrics-client` 3 connects, the overflow 3 connects,
/// with their exact payload; each span's resource is the resource of its series.
#[test]
fn each_workloads_metrics_carry_its_spans_resource_and_the_overflow_its_own() {
    require_root();
    // Not kept to this process, but this process's own connections (to rotel, to see it
    // listen) would reach the other tests' agents.
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = TempDir::new("sampling-workloads");
    let netns = NetNs::create("smw");
    let (rotel, endpoint) = collector(&dir);
    let client = peer_copy(&dir, "metrics-client");
    let other = peer_copy(&dir, "metrics-other-client");
    let dropped = peer_copy(&dir, "metrics-dropped-client");
    let args = [
        "--max-workloads",
        "2",
        "--sample-drop-processes",
        "metrics-dropped-client",
    ];
    let mut agent = start_in(&netns, &endpoint, (&args, &[]), &dir);
    peer_exchanges(&netns, &client, 3);
    peer_exchanges(&netns, &other, 2);
    let [dropped_port] = peer_exchanges(&netns, &dropped, 1)
        .try_into()
        .expect("one exchange");
    agent::stop(&mut agent);
    let stderr = agent.stderr_text();
    agent::assert_reconciled(&stderr);
    let session = agent::accounting(&stderr);
    assert_eq!(agent::counter(&session, "records_read"), 12, "{session:?}");
    assert_eq!(agent::counter(&session, "filtered_drop_process"), 1);
    assert_eq!(agent::counter(&session, "degraded_workload_overflow"), 3);

    let duration = rotel.final_points("tcp.session.duration", 12.0);
    let counts = |kind: &str| by_service(&duration, &[("span.kind", kind)]);
    assert_eq!(
        counts("Str(SPAN_KIND_SERVER)"),
        BTreeMap::from([("Str(tcp-peer)".to_owned(), 6.0)])
    );
    assert_eq!(
        counts("Str(SPAN_KIND_CLIENT)"),
        BTreeMap::from([
            ("Str(metrics-client)".to_owned(), 3.0),
            ("overflow".to_owned(), 3.0)
        ])
    );
    let (sent, received) = peer::payload("client-first").expect("a scenario");
    let payload = rotel.final_points("tcp.session.payload", (12 * (sent + received)) as f64);
    assert_eq!(
        by_service(&payload, &[("network.io.direction", "Str(transmit)")]),
        BTreeMap::from([
            ("Str(tcp-peer)".to_owned(), (6 * received) as f64),
            ("Str(metrics-client)".to_owned(), (3 * sent) as f64),
            ("overflow".to_owned(), (3 * sent) as f64),
        ])
    );

    // 11 spans (the dropped client's is not exported), each under the resource of the
    // metric series of its name and kind.
    let spans = rotel.wait_for_spans(11, Duration::from_secs(10), |span| {
        span.resource.contains_key("service.name")
    });
    assert_eq!(spans.len(), 11);
    assert!(
        spans.iter().all(|span| {
            span.attributes
                .get("network.local.port")
                .map(String::as_str)
                != Some(&format!("Int({dropped_port})"))
        }),
        "the dropped client's span"
    );
    let mut services = BTreeMap::<String, usize>::new();
    for span in &spans {
        *services.entry(service(&span.resource)).or_default() += 1;
        let name = format!("Str({})", span.name);
        let kind = format!("Str({})", span.kind);
        let series: Vec<_> = duration
            .keys()
            .filter(|(_, attributes)| {
                attributes.get("span.name") == Some(&name)
                    && attributes.get("span.kind") == Some(&kind)
            })
            .map(|(resource, _)| resource)
            .collect();
        assert!(
            series.contains(&&span.resource),
            "{span:#?} has no series under its resource: {series:#?}"
        );
    }
    assert_eq!(
        services,
        BTreeMap::from([
            ("Str(tcp-peer)".to_owned(), 6),
            ("Str(metrics-client)".to_owned(), 3),
            ("overflow".to_owned(), 2),
        ])
    );
}

/// A named service (`OTEL_SERVICE_NAME`, so `--resource-mode single`): the metrics of two
/// workloads' 4 sessions on the one resource, the spans'.
#[test]
fn a_named_service_counts_every_workload_on_its_one_resource() {
    require_root();
    // Not kept to this process, but this process's own connections (to rotel, to see it
    // listen) would reach the other tests' agents.
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = TempDir::new("sampling-named");
    let netns = NetNs::create("smn");
    let (rotel, endpoint) = collector(&dir);
    let client = peer_copy(&dir, "metrics-client");
    let mut agent = start_in(
        &netns,
        &endpoint,
        (&[], &[("OTEL_SERVICE_NAME", "checkout")]),
        &dir,
    );
    peer_exchanges(&netns, &client, 2);
    agent::stop(&mut agent);
    agent::assert_reconciled(&agent.stderr_text());
    let duration = rotel.final_points("tcp.session.duration", 4.0);
    assert_eq!(
        by_service(&duration, &[]),
        BTreeMap::from([("Str(checkout)".to_owned(), 4.0)])
    );
    let spans = rotel.wait_for_spans(4, Duration::from_secs(10), |_| true);
    assert_eq!(spans.len(), 4);
    for span in &spans {
        assert!(
            duration
                .keys()
                .any(|(resource, _)| *resource == span.resource),
            "{span:#?}"
        );
    }
}

/// Command-line arguments, environment, and a part of the message the agent must print.
type BadInput<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

/// Bad sampler and metrics settings stop the agent at start-up, before the probe is loaded,
/// with exit 78 and a message naming the variable or flag and what it accepts.
#[test]
fn bad_sampling_and_metrics_settings_exit_78_naming_the_source() {
    let cases: [BadInput; 6] = [
        (
            &[],
            &[("OTEL_TRACES_SAMPLER", "ratio")],
            "OTEL_TRACES_SAMPLER=`ratio` is invalid: one of always_on, always_off, \
             traceidratio, parentbased_always_on, parentbased_always_off, \
             parentbased_traceidratio",
        ),
        (
            &[],
            &[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ],
            "OTEL_TRACES_SAMPLER_ARG=`1.5` is invalid: a sampling ratio from 0 to 1",
        ),
        (
            &[
                "--traces-sampler",
                "always_on",
                "--traces-sampler-arg",
                "0.5",
            ],
            &[],
            "--traces-sampler-arg=`0.5` is invalid: no argument",
        ),
        (
            &[],
            &[("OTEL_METRIC_EXPORT_INTERVAL", "0")],
            "OTEL_METRIC_EXPORT_INTERVAL=`0` is invalid: a positive integer number of \
             milliseconds",
        ),
        (
            &[],
            &[("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "gauge")],
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=`gauge` is invalid: \
             cumulative, delta or lowmemory",
        ),
        (
            &[],
            &[("OTEL_AGENT_SAMPLE_DROP_PEER_NETWORKS", "10.0.0.0/33")],
            "`10.0.0.0/33` is not a network",
        ),
    ];
    let dir = TempDir::new("sampling-refused");
    for (args, env, message) in cases {
        let (code, stderr) = agent::run_to_failure(agent::command(args, env), dir.path());
        assert_eq!(code, Some(78), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "expected `{message}` in:\n{stderr}"
        );
        assert!(!stderr.contains("probe attached"), "{stderr}");
    }
}
