//! The disk spool (`--spool-dir`) with the real binary, the real probe and the real
//! collector (rotel): an outage ten times longer than the in-memory queue holds loses
//! nothing and delivers every session exactly once; SIGKILL during an outage keeps
//! everything already spooled for the next agent, and loses only what was read and not yet
//! spooled (measured); a torn file is skipped and counted; a full spool drops its oldest
//! requests, counted exactly. Each test asserts about its own sessions only (its ports),
//! with the agent kept to this test process (`-p`).

use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use otel_agent::export::spool::header;
use otel_agent_tests::{
    agent,
    process::{ChildGuard, TempDir},
    require_root,
    rotel::{self, ReceivedSpan, Rotel},
    traffic::{self, Closer, Exchange},
};
use prost::Message as _;

/// The in-memory queue the tests give the agent (sessions); the spool takes what it cannot
/// hold.
const QUEUE: usize = 500;
/// The batch size the tests give the agent: during an outage, less than this stays in
/// memory.
const BATCH: usize = 50;

/// One test at a time: each agent follows this test process (`-p`), so it would count
/// another test's sessions as its own.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Root, and the other tests of this file done.
fn exclusive() -> MutexGuard<'static, ()> {
    require_root();
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `n` loopback exchanges: two sessions each, a client's and a server's.
fn exchanges(n: usize) -> Vec<Exchange> {
    paced_exchanges(n, Duration::ZERO)
}

/// `n` exchanges, `pause` after each.
fn paced_exchanges(n: usize, pause: Duration) -> Vec<Exchange> {
    (0..n)
        .map(|_| {
            let exchange =
                traffic::exchange("127.0.0.1".parse().unwrap(), 100, 100, Closer::Client);
            std::thread::sleep(pause);
            exchange
        })
        .collect()
}

/// A loopback address nobody listens on (yet).
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The agent exporting to `collector` over `protocol` (`grpc`, or `http/protobuf` with
/// gzip: a spool written by one is delivered by the other), kept to this test process,
/// with a small queue and the spool in `spool`, its output in `dir`.
fn start_agent(
    (collector, protocol): (SocketAddr, &str),
    spool: &Path,
    extra: &[&str],
    dir: &Path,
) -> ChildGuard {
    fs::create_dir_all(dir).unwrap();
    let (queue, batch) = (QUEUE.to_string(), BATCH.to_string());
    let endpoint = format!("http://{collector}");
    let spool = spool.display().to_string();
    let [pid_flag, pid] = agent::only_this_process();
    let mut args = vec![
        &pid_flag,
        &pid,
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        protocol,
        "--bsp-max-queue-size",
        &queue,
        "--bsp-max-export-batch-size",
        &batch,
        "--bsp-schedule-delay",
        "100ms",
        "--stats-interval",
        "250ms",
        "--spool-dir",
        &spool,
    ];
    if protocol != "grpc" {
        args.extend(["--otlp-compression", "gzip"]);
    }
    args.extend_from_slice(extra);
    agent::start(&args, &[], dir)
}

/// An agent with no collector (nothing listens on its port) and the spool in
/// `<dir>/spool`, once it has read the sessions of `n` exchanges (each spooled or queued),
/// with `extra` flags; its output in `<dir>/first`.
fn agent_in_an_outage(
    dir: &TempDir,
    n: usize,
    extra: &[&str],
) -> (SocketAddr, PathBuf, ChildGuard, Vec<Exchange>) {
    let spool = dir.path().join("spool");
    let collector = closed_port();
    let agent = start_agent(
        (collector, "grpc"),
        &spool,
        extra,
        &dir.path().join("first"),
    );
    let sent = exchanges(n);
    wait_for_figures(&agent, Duration::from_secs(20), "every session read", |f| {
        agent::counter(f, "spooled") + agent::counter(f, "queued") == 2 * n as u64
    });
    (collector, spool, agent, sent)
}

/// The collector back on `collector`, then a next agent on the same `spool` (its output in
/// `<dir>/second`, `extra` flags), run until the spool is empty: the collector, the agent,
/// and what the agent's first lines said it found. The next agent sends over HTTP/protobuf
/// with gzip what the first spooled for gRPC.
fn next_agent(
    dir: &TempDir,
    collector: SocketAddr,
    spool: &Path,
    extra: &[&str],
) -> (Rotel, ChildGuard, BTreeMap<String, u64>) {
    let http = rotel::free_port();
    let rotel = Rotel::start_on(dir.path(), "rotel", collector, http, &["traces"]);
    let agent = start_agent(
        (http, "http/protobuf"),
        spool,
        extra,
        &dir.path().join("second"),
    );
    let found = agent::log_counters(&agent.stderr_text(), &["spool found"]);
    wait_for_figures(&agent, Duration::from_secs(30), "the spool drained", |f| {
        agent::counter(f, "spool_left") == 0
    });
    (rotel, agent, found)
}

/// The sessions in the spool's complete files (`.req`, `.sending`), from their names.
fn spooled_sessions(spool: &Path) -> u64 {
    spool_files(spool)
        .iter()
        .filter(|(_, state)| state != "tmp")
        .map(|(sessions, _)| sessions)
        .sum()
}

/// Each spool file's sessions and state, oldest first.
fn spool_files(spool: &Path) -> Vec<(u64, String)> {
    let mut names: Vec<_> = fs::read_dir(spool)
        .unwrap()
        .map(|item| item.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "lock")
        .collect();
    names.sort();
    names
        .iter()
        .map(|name| {
            let (stem, state) = name.split_once('.').unwrap();
            let sessions = stem.split_once('-').unwrap().1.parse().unwrap();
            (sessions, state.to_owned())
        })
        .collect()
}

/// The agent's last periodic `export accounting` figures.
fn periodic(agent: &ChildGuard) -> BTreeMap<String, u64> {
    agent::log_counters(&agent.stderr_text(), &["export accounting", "periodic"])
}

/// Waits until the agent's periodic figures satisfy `done`, failing after `timeout`.
fn wait_for_figures(
    agent: &ChildGuard,
    timeout: Duration,
    what: &str,
    done: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + timeout;
    loop {
        if agent
            .stderr_text()
            .contains("export accounting when=\"periodic\"")
        {
            let figures = periodic(agent);
            if done(&figures) {
                return figures;
            }
            assert!(Instant::now() < deadline, "{what}: {figures:?}");
        }
        assert!(Instant::now() < deadline, "{what}: no periodic line");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many spans of each (local port, peer port) pair `spans` hold.
fn by_ports(spans: &[ReceivedSpan]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for span in spans {
        let port = |key: &str| span.attributes.get(key).cloned().unwrap_or_default();
        *counts
            .entry((port("network.local.port"), port("network.peer.port")))
            .or_default() += 1;
    }
    counts
}

/// How many times the collector received each of the two sessions of each exchange.
fn deliveries(exchanges: &[Exchange], spans: &[ReceivedSpan]) -> Vec<usize> {
    let counts = by_ports(spans);
    let int = |addr: SocketAddr| format!("Int({})", addr.port());
    exchanges
        .iter()
        .flat_map(|exchange| {
            [
                (int(exchange.client), int(exchange.server)),
                (int(exchange.server), int(exchange.client)),
            ]
        })
        .map(|key| counts.get(&key).copied().unwrap_or(0))
        .collect()
}

/// Every span a rotel run in `dir` printed (`<name>.stdout`), the run still going or not.
fn printed(dir: &Path, name: &str) -> Vec<ReceivedSpan> {
    rotel::parse(&fs::read_to_string(dir.join(format!("{name}.stdout"))).unwrap_or_default())
}

/// Stops the agent (SIGINT, exit 0) and returns its final export figures, checked to
/// reconcile.
fn stop(agent: &mut ChildGuard) -> BTreeMap<String, u64> {
    agent::stop(agent);
    let stderr = agent.stderr_text();
    agent::assert_reconciled(&stderr);
    agent::export_accounting(&stderr)
}

#[test]
fn an_outage_ten_times_the_queue_loses_nothing_and_delivers_each_session_once() {
    let _one = exclusive();
    let dir = TempDir::new("spool-outage");
    let spool = dir.path().join("spool");
    let (grpc, http) = (rotel::free_port(), rotel::free_port());
    let first = Rotel::start_on(dir.path(), "rotel-1", grpc, http, &["traces"]);
    let mut agent = start_agent((grpc, "grpc"), &spool, &[], dir.path());

    // Healthy: delivered, and nothing written to disk.
    let mut all = exchanges(20);
    first.wait_for_spans(40, Duration::from_secs(20), |span| {
        deliveries(&all, std::slice::from_ref(span)).contains(&1)
    });
    let healthy = wait_for_figures(&agent, Duration::from_secs(5), "exported", |f| {
        agent::counter(f, "exported") >= 40
    });
    assert_eq!(agent::counter(&healthy, "spooled"), 0, "{healthy:?}");
    assert_eq!(spool_files(&spool), []);

    // The collector goes away; ten queues' worth of sessions close, at a steady rate (the
    // spool takes them as fast as it syncs files, a batch each: see PERFORMANCE.md).
    first.process.signal(libc::SIGTERM);
    drop(first);
    let started = Instant::now();
    let during = paced_exchanges(5 * QUEUE, Duration::from_millis(1));
    let closing = started.elapsed();
    let sessions = 2 * during.len();
    assert!(sessions >= 10 * QUEUE);
    eprintln!(
        "outage: {sessions} sessions in {closing:?} ({:.0}/s): the queue holds {:?} of them",
        sessions as f64 / closing.as_secs_f64(),
        closing * QUEUE as u32 / sessions as u32
    );
    let outage = wait_for_figures(&agent, Duration::from_secs(20), "spooled", |f| {
        agent::counter(f, "spooled") + agent::counter(f, "queued") + 40 >= sessions as u64 + 40
    });
    let (spooled, bytes) = (
        agent::counter(&outage, "spooled"),
        agent::counter(&outage, "spool_bytes"),
    );
    eprintln!(
        "spool write rate: {spooled} sessions, {bytes} bytes in {} files within {closing:?}: \
         {:.2} MB/s",
        spool_files(&spool).len(),
        bytes as f64 / closing.as_secs_f64() / 1e6
    );
    assert_eq!(agent::counter(&outage, "lost_queue_full"), 0, "{outage:?}");
    assert!(
        agent::counter(&outage, "queued") < QUEUE as u64,
        "{outage:?}"
    );
    all.extend(during);

    // It comes back on the same port: the spool goes out, then the rest.
    let second = Rotel::start_on(dir.path(), "rotel-2", grpc, http, &["traces"]);
    all.extend(exchanges(10));
    wait_for_figures(&agent, Duration::from_secs(60), "the spool drained", |f| {
        agent::counter(f, "spool_left") == 0
            && agent::counter(f, "queued") == 0
            && agent::counter(f, "delivered_from_spool") == agent::counter(f, "spooled")
    });
    let export = stop(&mut agent);
    let lost: Vec<_> = export
        .iter()
        .filter(|(name, value)| name.starts_with("lost_") && **value != 0)
        .collect();
    assert!(lost.is_empty(), "{lost:?}");
    assert!(agent::counter(&export, "spooled") >= (sessions - QUEUE) as u64);
    assert_eq!(
        agent::counter(&export, "delivered_from_spool"),
        agent::counter(&export, "spooled")
    );
    assert_eq!(agent::counter(&export, "spool_maybe_duplicated"), 0);
    assert_eq!(agent::counter(&export, "spool_left"), 0);

    let mut spans = printed(dir.path(), "rotel-1");
    spans.extend(second.spans());
    let counts = deliveries(&all, &spans);
    assert!(
        counts.iter().all(|&count| count == 1),
        "every session exactly once: {} missing, {} duplicated",
        counts.iter().filter(|&&count| count == 0).count(),
        counts.iter().filter(|&&count| count > 1).count()
    );
    assert_eq!(spool_files(&spool), []);
}

#[test]
fn sigkill_during_an_outage_keeps_what_was_spooled_for_the_next_agent() {
    let _one = exclusive();
    let dir = TempDir::new("spool-sigkill");
    // Not a whole number of batches: a partial one stays in memory.
    let (collector, spool, mut first, during) = agent_in_an_outage(&dir, 301, &[]);
    let settled = periodic(&first);
    let read = agent::counter(
        &agent::log_counters(&first.stderr_text(), &["session accounting", "periodic"]),
        "records_read",
    );
    assert_eq!(read, 602, "{settled:?}");
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(10));
    let on_disk = spooled_sessions(&spool);
    let lost = read - on_disk;
    eprintln!("SIGKILL: {read} read, {on_disk} spooled, {lost} lost (in memory)");
    // Lost: only what the queue held in memory, less than a batch during an outage.
    assert!(lost < BATCH as u64, "{lost} lost");

    let (rotel, mut second, found) = next_agent(&dir, collector, &spool, &[]);
    assert_eq!(agent::counter(&found, "sessions"), on_disk, "{found:?}");
    let export = stop(&mut second);
    assert_eq!(agent::counter(&export, "spool_found"), on_disk);
    assert_eq!(agent::counter(&export, "delivered_from_spool"), on_disk);
    assert_eq!(agent::counter(&export, "lost_spool_torn"), 0);

    let counts = deliveries(&during, &rotel.spans());
    assert!(counts.iter().all(|&count| count <= 1), "none twice");
    assert_eq!(
        counts.iter().filter(|&&count| count == 1).count() as u64,
        on_disk,
        "what was spooled arrived, and only that"
    );
}

#[test]
fn a_torn_spool_file_is_skipped_and_counted_and_the_rest_delivered() {
    let _one = exclusive();
    let dir = TempDir::new("spool-torn");
    let (collector, spool, mut first, sent) = agent_in_an_outage(&dir, 100, &[]);
    // Stopping while the collector is down: everything goes to the spool at once.
    let export = stop(&mut first);
    assert_eq!(
        (
            agent::counter(&export, "spooled"),
            agent::counter(&export, "lost_at_shutdown"),
            agent::counter(&export, "spool_left")
        ),
        (200, 0, 200),
        "{export:?}"
    );
    assert!(
        first
            .stderr_text()
            .contains("spool left for the next agent"),
        "the last line says what stays"
    );
    // A crash while writing the oldest file: cut in the middle.
    let (torn, state) = spool_files(&spool).remove(0);
    let oldest = fs::read_dir(&spool)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext.to_str() == Some(&state))
        })
        .min()
        .unwrap();
    let length = fs::metadata(&oldest).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&oldest)
        .unwrap()
        .set_len(length / 2)
        .unwrap();

    let (rotel, mut second, found) = next_agent(&dir, collector, &spool, &[]);
    assert_eq!(
        ["sessions", "torn_files", "lost_spool_torn"].map(|name| agent::counter(&found, name)),
        [200 - torn, 1, torn],
        "{found:?}"
    );
    let export = stop(&mut second);
    assert_eq!(
        ["spool_found", "lost_spool_torn", "delivered_from_spool"]
            .map(|name| agent::counter(&export, name)),
        [200, torn, 200 - torn]
    );
    let counts = deliveries(&sent, &rotel.spans());
    assert!(counts.iter().all(|&count| count <= 1));
    assert_eq!(
        counts.iter().filter(|&&count| count == 1).count() as u64,
        200 - torn
    );
}

/// A valid request of `spans` spans named `<name>-<i>`, padded to `bytes` with a field
/// the collector skips (an unknown field number, as protobuf allows).
fn crafted_request(name: &str, spans: u8, bytes: usize) -> Vec<u8> {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: vec![i + 1; 16],
                        span_id: vec![i + 1; 8],
                        name: format!("{name}-{i}"),
                        start_time_unix_nano: 1,
                        end_time_unix_nano: 2,
                        ..Span::default()
                    })
                    .collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    let mut body = request.encode_to_vec();
    // Field 1000, length-delimited: tag varint (1000 << 3 | 2), length varint, bytes.
    let padding = bytes - body.len() - 6;
    prost::encoding::encode_varint((1000 << 3) | 2, &mut body);
    prost::encoding::encode_varint(padding as u64, &mut body);
    body.resize(body.len() + padding, 0);
    body
}

fn write_spool_file(spool: &Path, seq: u64, sessions: u64, body: &[u8]) -> PathBuf {
    fs::create_dir_all(spool).unwrap();
    let path = spool.join(format!("{seq:020}-{sessions}.req"));
    let mut content = header(body).to_vec();
    content.extend_from_slice(body);
    fs::write(&path, content).unwrap();
    path
}

#[test]
fn a_full_spool_drops_its_oldest_requests_and_counts_them_exactly() {
    let _one = exclusive();
    let dir = TempDir::new("spool-full");
    // Two requests an earlier agent left, 480 KB each: the 1 MiB spool is nearly full.
    for (seq, name) in [(0, "crafted-old"), (1, "crafted-new")] {
        let body = crafted_request(name, 5, 480_000);
        write_spool_file(&dir.path().join("spool"), seq, 5, &body);
    }
    let (collector, spool, mut first, sent) =
        agent_in_an_outage(&dir, 150, &["--spool-max-bytes", "1MiB"]);
    let export = stop(&mut first);
    // This agent's 300 sessions (under 88 KB more would have fit, over 568 KB would drop
    // both) made room by dropping the oldest request: its 5 sessions, no more.
    assert_eq!(
        ["spool_found", "spooled", "lost_spool_full", "spool_left"]
            .map(|name| agent::counter(&export, name)),
        [10, 300, 5, 305],
        "{export:?}"
    );
    assert!(agent::counter(&export, "spool_bytes") <= 1 << 20);

    let (rotel, mut second, _) =
        next_agent(&dir, collector, &spool, &["--spool-max-bytes", "1MiB"]);
    let export = stop(&mut second);
    assert_eq!(agent::counter(&export, "delivered_from_spool"), 305);
    let spans = rotel.spans();
    let named = |prefix: &str| {
        spans
            .iter()
            .filter(|span| span.name.starts_with(prefix))
            .count()
    };
    assert_eq!((named("crafted-old-"), named("crafted-new-")), (0, 5));
    assert!(deliveries(&sent, &spans).iter().all(|&count| count == 1));
}

/// Runs the agent with `args` and `env`, which must stop it before the probe is attached;
/// returns its exit code and stderr.
fn refused(args: &[&str], env: &[(&str, &str)], dir: &Path) -> (Option<i32>, String) {
    fs::create_dir_all(dir).unwrap();
    let (code, stderr) = agent::run_to_failure(agent::command(args, env), dir);
    assert!(!stderr.contains("probe attached"), "{stderr}");
    (code, stderr)
}

#[test]
fn a_bad_size_or_an_unusable_directory_stops_the_agent_with_its_code() {
    let _one = exclusive();
    let dir = TempDir::new("spool-refused");
    let endpoint = format!("http://{}", closed_port());
    let spool = dir.path().join("spool");
    let spool_arg = spool.display().to_string();
    let with_endpoint = |extra: &[&'static str]| {
        let mut args = vec!["--otlp-endpoint", &endpoint, "--spool-dir", &spool_arg];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let args = with_endpoint(&["--spool-max-bytes", "5MB"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = refused(&args, &[], &dir.path().join("size"));
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("`5MB` is not a size; use bytes or KiB, MiB, GiB, like 512MiB"),
        "{stderr}"
    );

    let args = with_endpoint(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = refused(
        &args,
        &[("OTEL_AGENT_SPOOL_MAX_BYTES", "1KiB")],
        &dir.path().join("variable"),
    );
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("`1KiB` is too small: at least 1MiB"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the value comes from the environment variable OTEL_AGENT_SPOOL_MAX_BYTES"),
        "{stderr}"
    );

    let (code, stderr) = refused(
        &["--spool-dir", &spool_arg],
        &[],
        &dir.path().join("no-endpoint"),
    );
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("--spool-dir/OTEL_AGENT_SPOOL_DIR"),
        "{stderr}"
    );

    // A file where the directory should be: exit 74, the path and what to do.
    fs::write(&spool, b"not a directory").unwrap();
    let (code, stderr) = refused(&args, &[], &dir.path().join("file"));
    assert_eq!(code, Some(74), "{stderr}");
    assert_eq!(
        agent::log_lines(&stderr, "ERROR"),
        [format!(
            "otel_agent: cannot use the spool directory {spool_arg} (--spool-dir / \
             OTEL_AGENT_SPOOL_DIR): cannot create it: File exists (os error 17); check the \
             path and that the agent may create it"
        )]
    );
    fs::remove_file(&spool).unwrap();

    // A second agent on the directory the first one uses.
    let mut first = start_agent(
        (closed_port(), "grpc"),
        &spool,
        &[],
        &dir.path().join("first"),
    );
    let (code, stderr) = refused(&args, &[], &dir.path().join("second"));
    assert_eq!(code, Some(74), "{stderr}");
    assert!(
        stderr.contains("it is locked: Resource temporarily unavailable (os error 11); another otel-agent uses it"),
        "{stderr}"
    );
    stop(&mut first);
}
