//! Userspace benchmark (issue 5), `cargo bench -p otel-agent --bench pipeline`:
//!
//! - per session, with criterion: decoding a ring-buffer record, building the `Session`,
//!   formatting its span's text (name, addresses), visiting its attributes, and encoding a
//!   batch of sessions into one OTLP request (per span);
//! - per connection, with criterion (`trace_context`): deriving its trace context from the
//!   ISN pair (`derive`), and the SHA-256 alone on its 37-byte input (`sha256`; the
//!   comparison with BLAKE3 and ring is in `trace_context`'s module doc); a session's whole
//!   span context as the session stage decides it (`span_context_server`: derived, parent
//!   or link under a policy; `span_context_random`: random ids, for sessions without a
//!   pair);
//! - the whole pipeline: synthetic ring-buffer records -> decode -> the agent's pipeline
//!   stage -> the agent's export queue and OTLP/gRPC exporter -> a counting receiver on
//!   loopback. Everything but the receiver runs pinned to one CPU, the receiver on
//!   another, so the rate is what one core sustains. It reports the export queue's counters
//!   and what the receiver counted, which must agree.
//!
//! Environment: `PIPELINE_SESSIONS` (default 200000), `PIPELINE_RUNS` (3),
//! `PIPELINE_WINDOW` (1024: sessions in flight in the paced mode), `PIPELINE_CPU` (0: the
//! core the pipeline is pinned to), `BENCH_PIPELINE=0` to skip the
//! pipeline part; the export configuration comes from the agent's own command line and
//! environment handling, so `OTEL_BSP_*` apply as in the agent (see [`pipeline_modes`]). A criterion filter argument that does not match `pipeline`
//! skips the pipeline part; `pipeline` alone runs it (criterion then matches nothing).
//!
//! Keep this thin: it calls the agent's public stages and nothing else, so that it follows
//! their changes.

use std::{
    hint::black_box,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use clap::Parser as _;
use common::{
    AF_INET, COMM_LEN, EXE_LEN, ExeName, SESSION_RECORD_SIZE, SessionRecord, flags, origin, states,
    tcp_state::{ESTABLISHED, FIN_WAIT1, FIN_WAIT2, SYN_SENT},
};
use criterion::{Criterion, Throughput};
use opentelemetry::trace::TraceId;
use opentelemetry_sdk::metrics::InMemoryMetricExporter;
use otel_agent::{
    cli::Cli,
    clock::WallClock,
    events::PipelineStats,
    export::{
        Destinations, Exporters,
        config::{BatchSettings, ExportConfig},
        encode::RequestEncoder,
        resource::agent_resource,
        session_metrics::{DEFAULT_CARDINALITY_LIMIT, MetricsSettings, SessionMetrics},
        span::{self, SpanText},
        workload::{PerWorkload as _, ResourceMode, ResourceSettings, WorkloadTable},
    },
    isn::{IsnPair, Side},
    link_policy::LinkPolicy,
    pipeline::{self, Routes},
    sampling::{Sampler, SamplingFlags, rules::Rules},
    session::Session,
    span_context::SpanContext,
    stats::ExportSnapshot,
    trace_context::ConnectionIds,
};
use otel_agent_bench::sink::{self, Counts};
use tokio::sync::mpsc;

/// Spans per OTLP request: the batch span processor's default `max_export_batch_size`.
const EXPORT_BATCH: usize = 512;

/// A closed client session as the probe writes it: IPv4 loopback, every optional group
/// valid, a few states, 64 bytes each way. `i` varies the ports and pid.
fn record(i: u64) -> SessionRecord {
    let mut comm = [0u8; COMM_LEN];
    comm[..5].copy_from_slice(b"churn");
    let mut exe = [0u8; EXE_LEN];
    exe[..5].copy_from_slice(b"churn");
    let mut local_addr = [0u8; 16];
    local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let remote_addr = local_addr;
    let birth_ns = 1_000_000_000 + i * 1_000;
    SessionRecord {
        birth_ns,
        close_ns: birth_ns + 150_000,
        established_ns: birth_ns + 20_000,
        bytes_acked: 66,
        bytes_received: 65,
        cgroup_id: 1,
        pid: 4_000 + (i % 64) as u32,
        flags: flags::BIRTH_SEEN
            | flags::BYTES_VALID
            | flags::SEQ_VALID
            | flags::HEALTH_VALID
            | flags::NETNS_VALID
            | flags::OWNER_FROM_SYSCALL,
        states: states::bit(SYN_SENT)
            | states::bit(ESTABLISHED)
            | states::bit(FIN_WAIT1)
            | states::bit(FIN_WAIT2),
        snd_una: 1_066,
        write_seq: 1_066,
        rcv_nxt: 2_065,
        copied_seq: 2_064,
        srtt_us: 25,
        total_retrans: 0,
        segs_in: 4,
        segs_out: 5,
        netns: 4_026_531_840,
        family: AF_INET,
        local_port: 1_024 + (i % 60_000) as u16,
        remote_port: 8_080,
        origin: origin::ACTIVE,
        close_from_state: FIN_WAIT2 as u8,
        local_addr,
        remote_addr,
        comm,
        exe: ExeName(exe),
    }
}

/// The agent's default resources: one per workload (here one: `churn`, on the host).
const WORKLOADS: ResourceSettings = ResourceSettings {
    mode: ResourceMode::Workload,
    max_workloads: otel_agent::export::workload::DEFAULT_MAX_WORKLOADS,
};

/// The record's bytes, as a ring-buffer item holds them.
fn bytes_of(record: &SessionRecord) -> Vec<u8> {
    // SAFETY: `SessionRecord` is `repr(C)` plain data (integers and byte arrays) without
    // padding holes (`common` asserts its size), so all its bytes are initialised.
    unsafe {
        std::slice::from_raw_parts(std::ptr::from_ref(record).cast::<u8>(), SESSION_RECORD_SIZE)
    }
    .to_vec()
}

/// `EXPORT_BATCH` sessions, as the export queue hands them to the encoder.
fn session_batch(clock: WallClock, agent_start: SystemTime) -> Vec<Arc<Session>> {
    (0..EXPORT_BATCH as u64)
        .map(|i| {
            Arc::new(
                Session::from_record(&record(i), clock, agent_start, &LinkPolicy::All)
                    .expect("decodes"),
            )
        })
        .collect()
}

fn per_session(c: &mut Criterion) {
    let clock = WallClock::sample();
    let agent_start = SystemTime::now();
    let record = record(7);
    let bytes = bytes_of(&record);
    let session =
        Session::from_record(&record, clock, agent_start, &LinkPolicy::All).expect("decodes");

    let mut group = c.benchmark_group("per_session");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode", |b| {
        b.iter(|| SessionRecord::decode(black_box(&bytes)));
    });
    group.bench_function("session_from_record", |b| {
        b.iter(|| Session::from_record(black_box(&record), clock, agent_start, &LinkPolicy::All));
    });
    let mut text = SpanText::default();
    group.bench_function("span_text", |b| {
        b.iter(|| text.fill(black_box(&session)));
    });
    group.bench_function("span_attributes", |b| {
        b.iter(|| {
            let mut count = 0_usize;
            span::attributes(black_box(&session), &text, |key, value| {
                black_box((key, value));
                count += 1;
            });
            count
        });
    });
    group.finish();

    let batch = session_batch(clock, agent_start);
    let mut encoder = RequestEncoder::new(&agent_resource(), WORKLOADS);
    let request = encoder.encode(&batch);
    println!(
        "otlp: one request of {EXPORT_BATCH} spans encodes to {} bytes ({} bytes per span)",
        request.len(),
        request.len() / EXPORT_BATCH
    );
    let mut group = c.benchmark_group("otlp_per_span");
    group.throughput(Throughput::Elements(EXPORT_BATCH as u64));
    group.bench_function("encode", |b| {
        b.iter(|| encoder.encode(black_box(&batch)));
    });
    group.finish();
}

/// The per-session cost of volume control: the session metrics (the SDK's histogram and
/// counter, attribute sets cached) on the one resource; the admission of the session's
/// workload into the live set alone, and with the workload's instruments (what every
/// session now costs before the sampler); the sampler's decision (a ratio and a drop rule).
fn volume(c: &mut Criterion) {
    let clock = WallClock::sample();
    let session = Session::from_record(&record(7), clock, SystemTime::now(), &LinkPolicy::All)
        .expect("decodes");
    let settings = MetricsSettings::resolve(DEFAULT_CARDINALITY_LIMIT, |_| None).expect("settings");
    let (_metrics, mut recorder) = SessionMetrics::start(
        InMemoryMetricExporter::default(),
        settings,
        (agent_resource(), agent_resource()),
        WORKLOADS.max_workloads,
    )
    .expect("export thread");
    let mut table = WorkloadTable::new(WORKLOADS.mode, WORKLOADS.max_workloads);
    let mut bare = WorkloadTable::new(WORKLOADS.mode, WORKLOADS.max_workloads);
    let mut one = [session.clone()];
    let now = Instant::now();
    let flags = SamplingFlags {
        sampler: Some("traceidratio".to_owned()),
        sampler_arg: Some("0.1".to_owned()),
        rules: Rules {
            drop_peer_ports: vec![53, 10250],
            ..Rules::default()
        },
    };
    let sampler = Sampler::resolve(&flags, |_| None).expect("sampler");
    let trace_id = TraceId::from_bytes([0x5a; 16]);
    let mut group = c.benchmark_group("volume");
    group.throughput(Throughput::Elements(1));
    group.bench_function("session_metrics", |b| {
        b.iter(|| recorder.session(black_box(&session), None));
    });
    group.bench_function("workload_admission", |b| {
        b.iter(|| bare.admit(black_box(&mut one), now, &mut ()));
    });
    group.bench_function("session_metrics_workload", |b| {
        b.iter(|| table.admit(black_box(&mut one), now, &mut recorder));
    });
    group.bench_function("sample", |b| {
        b.iter(|| sampler.decide(black_box(&session), black_box(trace_id)));
    });
    group.finish();
}

/// The cost of a connection's trace context, and of its hash alone.
fn trace_context(c: &mut Criterion) {
    use sha2::Digest as _;
    let pair = IsnPair {
        client: 0x1234_5678,
        server: 0x9abc_def0,
    };
    let input = pair.hash_input(0);
    let mut group = c.benchmark_group("trace_context");
    group.throughput(Throughput::Elements(1));
    group.bench_function("derive", |b| {
        b.iter(|| ConnectionIds::derive(black_box(pair)));
    });
    group.bench_function("sha256", |b| {
        b.iter(|| sha2::Sha256::digest(black_box(&input)));
    });
    // A session's whole context, as `Session::from_record` decides it: a server span under
    // a default-sized policy (loopback and four host addresses), and random ids.
    let policy = LinkPolicy::loopback_and(
        ["10.0.2.15", "172.17.0.1", "fd00::2", "fe80::1"].map(|ip| ip.parse().expect("an address")),
    );
    let peer = "127.0.0.1".parse().expect("an address");
    group.bench_function("span_context_server", |b| {
        b.iter(|| SpanContext::decide(Some(Side::Server), Some(black_box(pair)), peer, &policy));
    });
    group.bench_function("span_context_random", |b| {
        b.iter(SpanContext::random);
    });
    group.finish();
}

/// One measured run of the whole pipeline.
struct PipelineRun {
    sessions: u64,
    /// The export queue's counters.
    export: ExportSnapshot,
    received: u64,
    elapsed: Duration,
    /// CPU time of everything but the receiver thread.
    cpu: Duration,
    /// CPU time of the receiver thread.
    receiver_cpu: Duration,
}

impl PipelineRun {
    fn received_per_s(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64()
    }

    fn sessions_per_cpu_s(&self) -> f64 {
        self.received as f64 / self.cpu.as_secs_f64()
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(clock, &raw mut time) };
    assert_eq!(rc, 0, "clock_gettime({clock})");
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// Pins the calling thread (and the threads it starts afterwards) to `cpu`.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t; CPU_ZERO/CPU_SET only write to it, and
    // sched_setaffinity reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The counting receiver, on its own thread (and core) with its own runtime.
struct Receiver {
    addr: SocketAddr,
    counts: Arc<Counts>,
    /// The receiver thread's CPU-time clock.
    clock: libc::clockid_t,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(cpu: Option<usize>) -> Self {
        let counts = Arc::new(Counts::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, bound) = std::sync::mpsc::channel();
        let thread_counts = counts.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".to_owned())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu).expect("pin the receiver");
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("receiver runtime");
                runtime.block_on(async move {
                    let (listener, addr) = sink::bind("127.0.0.1:0".parse().expect("address"))
                        .await
                        .expect("bind the receiver");
                    ready.send(addr).expect("report the address");
                    sink::serve(listener, thread_counts, async move {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serve OTLP");
                });
            })
            .expect("start the receiver thread");
        let addr = bound.recv().expect("receiver address");
        let mut clock: libc::clockid_t = 0;
        // SAFETY: the thread is alive (it serves until told to stop) and `clock` is writable.
        let rc = unsafe {
            libc::pthread_getcpuclockid(
                std::os::unix::thread::JoinHandleExt::as_pthread_t(&thread),
                &raw mut clock,
            )
        };
        assert_eq!(rc, 0, "pthread_getcpuclockid");
        Self {
            addr,
            counts,
            clock,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn cpu(&self) -> Duration {
        cpu_time(self.clock)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Feeds `sessions` synthetic records through the agent's pipeline and exporter to the
/// receiver, and measures until the exporter has flushed.
/// With a `window`, the producer never lets more than that many sessions be on their way
/// (sent but not yet received), so the batch processor's queue cannot overflow if it is
/// larger than the window.
async fn pipeline_run(
    receiver: &Receiver,
    sessions: u64,
    records: &[Vec<u8>],
    window: Option<u64>,
) -> PipelineRun {
    let received_before = receiver.counts.spans();
    let receiver_cpu_before = receiver.cpu();
    let process_cpu_before = cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID);
    let start = Instant::now();

    // The agent's own flag and environment handling decides the export configuration.
    let endpoint = format!("http://{}", receiver.addr);
    let cli = Cli::try_parse_from([
        "otel-agent",
        "--otlp-endpoint",
        endpoint.as_str(),
        "--otlp-protocol",
        "grpc",
    ])
    .expect("agent command line");
    let config = ExportConfig::resolve(&cli.export.flags(), |name| std::env::var(name).ok())
        .expect("config");
    let destinations = Destinations::new(&config, None).expect("exporter");
    let exporters = Exporters::start(destinations, WORKLOADS);
    let outputs = exporters.handles();
    let routes = Routes {
        exporters: outputs.clone(),
        sinks: Vec::new(),
        agent_start: SystemTime::now(),
        links: LinkPolicy::All,
        // No cgroup walk: every record's owner is in the cgroup v2 root.
        containers: None,
        workloads: Some(WorkloadTable::new(WORKLOADS.mode, WORKLOADS.max_workloads)),
        sampler: Sampler::resolve(&cli.sampling.flags(), |name| std::env::var(name).ok())
            .expect("sampler"),
        sampling: Arc::default(),
        metrics: None,
    };
    let stats = Arc::new(PipelineStats::default());
    // The agent's channel capacity; the reader here waits instead of dropping, so that the
    // pipeline stage (not this producer) sets the pace.
    let (tx, rx) = mpsc::channel(64 * 1024);
    let stage = tokio::spawn(pipeline::run(rx, routes, stats.clone()));
    for i in 0..sessions {
        if let Some(window) = window {
            receiver
                .counts
                .wait_for_spans((received_before + i).saturating_sub(window))
                .await;
        }
        let bytes = &records[(i as usize) % records.len()];
        let record = SessionRecord::decode(bytes).expect("decodes");
        PipelineStats::add(&stats.records_read);
        tx.send(record).await.expect("pipeline alive");
    }
    drop(tx);
    stage.await.expect("pipeline task");
    exporters
        .shutdown(std::time::Instant::now() + Duration::from_secs(30))
        .await;
    let elapsed = start.elapsed();
    let receiver_cpu = receiver.cpu() - receiver_cpu_before;
    let cpu = (cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - process_cpu_before)
        .saturating_sub(receiver_cpu);

    PipelineRun {
        sessions,
        export: ExportSnapshot::of(&outputs[0]),
        received: receiver.counts.spans() - received_before,
        elapsed,
        cpu,
        receiver_cpu,
    }
}

/// Runs the pipeline part in this process (a child started by [`pipeline_modes`]).
fn pipeline_throughput(mode: &str, window: Option<u64>) {
    let sessions: u64 = env_or("PIPELINE_SESSIONS", 200_000);
    let runs: usize = env_or("PIPELINE_RUNS", 3);
    let cpu: usize = env_or("PIPELINE_CPU", 0);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let receiver_cpu = (cpus > 1).then_some((cpu + 1) % cpus);
    let receiver = Receiver::start(receiver_cpu);
    pin_to(cpu).expect("pin the pipeline");
    println!(
        "pipeline mode={mode}: {sessions} sessions per run, {runs} runs, in flight at most {}, OTEL_BSP_MAX_QUEUE_SIZE={}; producer, pipeline and export worker on CPU {cpu}, receiver on {}",
        window.map_or_else(|| "unlimited".to_owned(), |w| w.to_string()),
        std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
            .unwrap_or_else(|_| format!("unset ({})", BatchSettings::default().max_queue_size)),
        receiver_cpu.map_or_else(
            || "the same CPU (one CPU only)".to_owned(),
            |c| format!("CPU {c}")
        )
    );
    // The agent's runtime: multi-thread with two workers (the gRPC exporter needs it).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let records: Vec<Vec<u8>> = (0..4_096).map(|i| bytes_of(&record(i))).collect();
    let mut results = Vec::with_capacity(runs);
    for run in 1..=runs {
        let result = runtime.block_on(pipeline_run(&receiver, sessions, &records, window));
        println!(
            "pipeline mode={mode} run={run} sessions={} enqueued={} exported={} received={} lost_queue_full={} lost_at_shutdown={} lost_rejected={} elapsed_s={:.3} received_per_s={:.0} cpu_s={:.3} received_per_cpu_s={:.0} receiver_cpu_s={:.3}",
            result.sessions,
            result.export.enqueued,
            result.export.exported,
            result.received,
            result.export.lost_queue_full,
            result.export.lost_at_shutdown,
            result.export.lost_rejected,
            result.elapsed.as_secs_f64(),
            result.received_per_s(),
            result.cpu.as_secs_f64(),
            result.sessions_per_cpu_s(),
            result.receiver_cpu.as_secs_f64(),
        );
        results.push(result);
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let lost: u64 = results.iter().map(|r| r.export.lost_total()).sum();
    let uncounted: u64 = results
        .iter()
        .map(|r| r.sessions - r.received - r.export.lost_total())
        .sum();
    println!(
        "pipeline mode={mode} median received_per_s={:.0} received_per_cpu_s={:.0} lost_counted_total={lost} lost_uncounted_total={uncounted}",
        median(results.iter().map(PipelineRun::received_per_s).collect()),
        median(
            results
                .iter()
                .map(PipelineRun::sessions_per_cpu_s)
                .collect()
        ),
    );
}

/// Runs the pipeline part twice, each in a child process of this binary (so that CPU time
/// covers only the pipeline), both with the export queue as the agent configures it
/// (unless `OTEL_BSP_*` is set):
/// - `unpaced`: records arrive as fast as the pipeline takes them, like a burst from the
///   ring buffer. The export queue fills (sooner than the receiver drains it) and drops,
///   counting the drops (`lost_queue_full`).
/// - `paced`: at most `PIPELINE_WINDOW` (default 1024) sessions between the producer and
///   the receiver, so nothing is dropped: `received_per_s` is the rate the whole pipeline
///   sustains without loss, and `received_per_cpu_s` what one core would sustain if the
///   pipeline had it to itself.
fn pipeline_modes(quick: bool) {
    let exe = std::env::current_exe().expect("own path");
    for mode in ["unpaced", "paced"] {
        let mut child = std::process::Command::new(&exe);
        child.env("PIPELINE_CHILD", mode);
        if quick {
            child
                .env("PIPELINE_SESSIONS", "2000")
                .env("PIPELINE_RUNS", "1");
        }
        let status = child.status().expect("start the pipeline child");
        assert!(status.success(), "pipeline mode {mode} failed: {status}");
    }
}

/// Whether the command line (criterion's filter, if any) asks for the pipeline part.
fn pipeline_selected() -> bool {
    if std::env::var("BENCH_PIPELINE").is_ok_and(|value| value == "0") {
        return false;
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|filter| "pipeline".contains(filter.as_str()))
}

fn main() {
    if let Ok(mode) = std::env::var("PIPELINE_CHILD") {
        let window = (mode == "paced").then(|| env_or("PIPELINE_WINDOW", 1_024));
        pipeline_throughput(&mode, window);
        return;
    }
    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    per_session(&mut criterion);
    trace_context(&mut criterion);
    volume(&mut criterion);
    criterion.final_summary();
    if pipeline_selected() {
        // Without `--bench` (`cargo test --benches`), criterion runs each function once;
        // the pipeline part then only checks that it works, on a few sessions.
        let quick = !std::env::args().any(|arg| arg == "--bench");
        pipeline_modes(quick);
    }
}
