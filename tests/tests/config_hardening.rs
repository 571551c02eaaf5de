//! Configuration and lifecycle hardening, on the real binary: values that used to be
//! accepted and then fail (a zero period that panicked a task, a port out of range, a
//! non-UTF-8 variable read as unset, an invalid `OTEL_RESOURCE_ATTRIBUTES`, a map size the
//! kernel refuses) stop the agent at start-up with exit 78 and a message naming the flag or
//! variable; a password in the endpoint never reaches the log; the whole shutdown fits in
//! `--shutdown-timeout` when the collector never answers; SIGHUP shuts down like SIGTERM;
//! `--log-format json` writes one JSON object per line, the final accounting among them.

use std::{
    ffi::OsStr,
    io::Read as _,
    net::{TcpListener, TcpStream},
    os::unix::ffi::OsStrExt as _,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use otel_agent_tests::{
    agent,
    process::TempDir,
    require_root,
    traffic::{self, Closer, Exchange},
};

/// `EX_CONFIG`.
const CONFIG: i32 = 78;

/// Runs `command`, which must stop at start-up within 20 s, and returns (exit code, stderr).
fn run(command: Command) -> (Option<i32>, String) {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let dir = TempDir::new(&format!(
        "hardening-refused-{}",
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    agent::run_to_failure(command, dir.path())
}

/// Command-line arguments, environment, and a part of the message the agent must print.
type BadInput<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

fn assert_refused(command: Command, what: &str, message: &str) {
    let (code, text) = run(command);
    assert_eq!(code, Some(CONFIG), "{what}: {text}");
    assert!(
        text.contains(message),
        "{what}: expected `{message}` in:\n{text}"
    );
    assert!(
        !text.contains("probe attached"),
        "{what}: refused before attaching: {text}"
    );
    assert!(!text.contains("panicked"), "{what}: {text}");
}

#[test]
fn zero_and_out_of_range_values_are_refused_at_start_up_with_78_naming_the_source() {
    let cases: &[BadInput] = &[
        (
            &["--stats-interval", "0s"],
            &[],
            "invalid value '0s' for '--stats-interval <STATS_INTERVAL>': `0s` is zero; use a positive duration, like 5s",
        ),
        (
            &[],
            &[("OTEL_AGENT_STATS_INTERVAL", "0s")],
            "the value comes from the environment variable OTEL_AGENT_STATS_INTERVAL",
        ),
        (
            &["--shutdown-timeout", "0ms"],
            &[],
            "for '--shutdown-timeout <SHUTDOWN_TIMEOUT>': `0ms` is zero",
        ),
        (
            &["--bsp-schedule-delay", "0s"],
            &[],
            "for '--bsp-schedule-delay <DURATION>': `0s` is zero",
        ),
        (
            &[],
            &[("OTEL_BSP_SCHEDULE_DELAY", "0")],
            "OTEL_BSP_SCHEDULE_DELAY=`0` is invalid: a positive integer number of milliseconds",
        ),
        (
            &["--stats-interval", "99999999999999999m"],
            &[],
            "is too long: at most 2147483647ms",
        ),
        (
            &["--max-tracked-sockets", "4294967295"],
            &[],
            "invalid value '4294967295' for '--max-tracked-sockets <MAX_TRACKED_SOCKETS>': 4294967295 is not in 64..=4194304",
        ),
        (
            &["--otlp-endpoint", "http://127.0.0.1:0"],
            &[],
            "--otlp-endpoint=`http://127.0.0.1:0` is invalid: a port from 1 to 65535",
        ),
        (
            &[],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:99999")],
            "OTEL_EXPORTER_OTLP_ENDPOINT=`http://127.0.0.1:99999/v1/traces` is invalid: a port from 1 to 65535",
        ),
        (
            &[],
            &[("OTEL_RESOURCE_ATTRIBUTES", "=orphan,team=net")],
            "OTEL_RESOURCE_ATTRIBUTES=`=orphan,team=net` is invalid: keys of letters, digits",
        ),
        (
            &[],
            &[("OTEL_RESOURCE_ATTRIBUTES", "team=a%2")],
            "the value of `team` is not",
        ),
        (
            &["-p", "0"],
            &[],
            "invalid value '0' for '--pid <PID>': 0 is not in 1..=4294967295",
        ),
        (
            &["--bsp-max-queue-size", "0"],
            &[],
            "`0` is not a positive integer",
        ),
        (
            &["--link-peers", "10.0.0.1/8"],
            &[],
            "invalid value '10.0.0.1/8' for '--link-peers <CIDR,...|all|none>': `10.0.0.1/8` has bits set after its prefix; did you mean 10.0.0.0/8?; use a comma-separated list of networks in CIDR notation",
        ),
        (
            &[],
            &[("OTEL_AGENT_LINK_PEERS", "pods")],
            "the value comes from the environment variable OTEL_AGENT_LINK_PEERS",
        ),
    ];
    for (args, env, message) in cases {
        assert_refused(
            agent::command(args, env),
            &format!("{args:?} {env:?}"),
            message,
        );
    }
}

#[test]
fn non_utf8_variables_are_refused_by_name_never_read_as_unset() {
    for name in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SDK_DISABLED",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_AGENT_STATS_INTERVAL",
    ] {
        let mut command = agent::command(&["--otlp-endpoint", "http://127.0.0.1:4318"], &[]);
        command.env(name, OsStr::from_bytes(b"authorization=Bearer \xff\xfe"));
        assert_refused(
            command,
            name,
            &format!(
                "otel-agent: {name}=`<redacted>` is invalid: text in UTF-8, and this value is not"
            ),
        );
    }
}

#[test]
fn malformed_command_lines_stay_usage_errors_with_code_2() {
    for (args, message) in [
        (&["-4", "-6"][..], "cannot be used with"),
        (
            &["--no-such-flag"][..],
            "unexpected argument '--no-such-flag'",
        ),
    ] {
        let (code, text) = run(agent::command(args, &[]));
        assert_eq!(code, Some(2), "{args:?}: {text}");
        assert!(text.contains(message), "{args:?}: {text}");
    }
}

/// A collector that accepts connections and never answers (nor closes them), until dropped.
struct SilentCollector {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl SilentCollector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((stream, _)) = listener.accept() {
                    held.push(stream);
                }
                // Read (and discard) what arrives so that the agent's writes never block.
                for stream in &mut held {
                    stream.set_nonblocking(true).ok();
                    let _ = stream.read(&mut [0u8; 65_536]);
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        Self { port, stop }
    }
}

impl Drop for SilentCollector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn exchange() -> Exchange {
    traffic::exchange("127.0.0.1".parse().unwrap(), 1_000, 2_000, Closer::Client)
}

#[test]
fn the_whole_shutdown_fits_in_the_timeout_when_the_collector_never_answers() {
    require_root();
    let collector = SilentCollector::start();
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let pid = std::process::id().to_string();
    let mut measured = Vec::new();
    for protocol in ["grpc", "http/protobuf"] {
        for timeout in [1, 3] {
            let dir = TempDir::new("hardening-shutdown");
            let timeout_flag = format!("{timeout}s");
            let mut agent = agent::start(
                &[
                    "-p",
                    &pid,
                    "--otlp-endpoint",
                    &endpoint,
                    "--otlp-protocol",
                    protocol,
                    "--shutdown-timeout",
                    &timeout_flag,
                    "--bsp-schedule-delay",
                    "100ms",
                    "--stats-interval",
                    "1s",
                ],
                &[],
                dir.path(),
            );
            exchange();
            // Let a request and a self-metrics export reach the silent collector.
            thread::sleep(Duration::from_millis(1_500));
            let start = Instant::now();
            agent.signal(libc::SIGTERM);
            let status = agent.wait(Duration::from_secs(20));
            let elapsed = start.elapsed();
            let stderr = agent.stderr_text();
            assert_eq!(status.code(), Some(0), "{stderr}");
            measured.push((protocol, timeout, elapsed));
            let limit = Duration::from_secs(timeout) + Duration::from_millis(500);
            assert!(
                elapsed <= limit,
                "{protocol} with --shutdown-timeout {timeout}s took {elapsed:?} (limit {limit:?}):\n{stderr}"
            );
            assert!(
                elapsed >= Duration::from_secs(timeout) - Duration::from_millis(100),
                "{elapsed:?}"
            );
            let export = agent::export_accounting(&stderr);
            assert_eq!(agent::counter(&export, "exported"), 0, "{export:?}");
            assert_eq!(agent::counter(&export, "queued"), 0, "{export:?}");
            assert!(
                agent::counter(&export, "lost_at_shutdown") >= 2,
                "{export:?}"
            );
            // Every session read went to exactly one outcome.
            agent::assert_reconciled(&stderr);
        }
    }
    eprintln!("shutdown times against a silent collector: {measured:?}");
}

#[test]
fn a_password_in_the_endpoint_never_reaches_the_log() {
    require_root();
    // A port nobody listens on: every export fails and is logged.
    let unused = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let pid = std::process::id().to_string();
    for protocol in ["grpc", "http/protobuf"] {
        let dir = TempDir::new("hardening-password");
        let endpoint = format!("http://alice:secret@127.0.0.1:{port}");
        let mut agent = agent::start(
            &[
                "-p",
                &pid,
                "--otlp-endpoint",
                &endpoint,
                "--otlp-protocol",
                protocol,
                "--bsp-schedule-delay",
                "100ms",
                "--stats-interval",
                "1s",
                "--shutdown-timeout",
                "1s",
                "--console",
                "--log",
                "debug",
            ],
            &[],
            dir.path(),
        );
        exchange();
        agent.wait_for_output(Duration::from_secs(10), "a failed export", |output| {
            output.contains("exporting spans failed")
        });
        agent::stop(&mut agent);
        let stderr = agent.stderr_text();
        let stdout = agent.stdout_text();
        assert!(
            stderr.contains(&format!("endpoint=http://<redacted>@127.0.0.1:{port}")),
            "{stderr}"
        );
        for (stream, text) in [("stderr", &stderr), ("stdout", &stdout)] {
            let leaks: Vec<&str> = text
                .lines()
                .filter(|line| line.contains("secret") || line.contains("alice"))
                .collect();
            assert!(
                leaks.is_empty(),
                "{protocol} {stream} leaks the password: {leaks:#?}"
            );
        }
    }
    // The message of an invalid endpoint does not show it either.
    let (code, text) = run(agent::command(
        &["--otlp-endpoint", "http://alice:secret@127.0.0.1:99999"],
        &[],
    ));
    assert_eq!(code, Some(CONFIG), "{text}");
    assert!(
        text.contains("--otlp-endpoint=`http://<redacted>@127.0.0.1:99999`"),
        "{text}"
    );
    assert!(
        !text.contains("secret") && !text.contains("alice"),
        "{text}"
    );
}

#[test]
fn sighup_flushes_and_logs_the_final_accounting_like_sigterm() {
    require_root();
    let dir = TempDir::new("hardening-sighup");
    let pid = std::process::id().to_string();
    let mut agent = agent::start(&["-p", &pid, "-s"], &[], dir.path());
    let exchange = exchange();
    let port = exchange.client.port().to_string();
    agent.wait_for_output(Duration::from_secs(10), "the exchange's line", |output| {
        output.contains(&format!(",{port},"))
    });
    agent.signal(libc::SIGHUP);
    let status = agent.wait(Duration::from_secs(10));
    let stderr = agent.stderr_text();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("stopped cleanly signal=\"SIGHUP\""),
        "{stderr}"
    );
    let session = agent::accounting(&stderr);
    assert_eq!(
        agent::counter(&session, "kernel_emitted"),
        agent::counter(&session, "records_read"),
        "{session:?}"
    );
    let console = agent::output_accounting(&stderr, "console");
    assert!(agent::counter(&console, "written") >= 2, "{console:?}");
    agent::assert_output_balances(&stderr, "console");
}

#[test]
fn a_zero_otlp_timeout_means_no_limit_and_spans_are_exported() {
    use otel_agent_tests::receiver::{Kind, Receiver};
    require_root();
    for (kind, protocol) in [(Kind::Grpc, "grpc"), (Kind::Http, "http/protobuf")] {
        let receiver = Receiver::start(kind);
        let dir = TempDir::new("hardening-timeout-zero");
        let pid = std::process::id().to_string();
        let url = receiver.url(false);
        let mut agent = agent::start(
            &["-p", &pid, "--bsp-schedule-delay", "100ms"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
            ],
            dir.path(),
        );
        let exchange = exchange();
        receiver.wait_for(
            Duration::from_secs(10),
            "the exchange's spans",
            |received| otel_agent_tests::receiver::spans_of(received, &exchange) == 2,
        );
        agent::stop(&mut agent);
        let stderr = agent.stderr_text();
        // Requests did not time out at once, as a zero timeout used to make them.
        assert!(
            !stderr.contains("exporting spans failed"),
            "{protocol}: {stderr}"
        );
        let export = agent::export_accounting(&stderr);
        assert_eq!(
            agent::counter(&export, "export_errors"),
            0,
            "{protocol}: {export:?}"
        );
        // Every session read went to exactly one outcome.
        agent::assert_reconciled(&stderr);
    }
}

#[test]
fn json_logs_are_one_object_per_line_and_carry_the_final_accounting() {
    require_root();
    let dir = TempDir::new("hardening-log-json");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (pid, port) = (std::process::id().to_string(), address.port().to_string());
    let mut agent = agent::start(
        &["-p", &pid, "-L", &port, "-s", "--log-format", "json"],
        &[],
        dir.path(),
    );
    for _ in 0..3 {
        let client = TcpStream::connect(address).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(client);
        drop(server);
    }
    let csv = format!(",{port},");
    agent.wait_for_output(Duration::from_secs(10), "three console lines", |output| {
        let console = output.lines().filter(|line| !line.starts_with('{'));
        console.filter(|line| line.contains(&csv)).count() == 3
    });
    agent::stop(&mut agent);
    let stderr = agent.stderr_text();
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect();
    for event in &events {
        assert!(
            event["level"].is_string() && event["message"].is_string(),
            "{event}"
        );
    }
    let messages: Vec<&str> = events
        .iter()
        .filter_map(|event| event["message"].as_str())
        .collect();
    assert!(
        messages
            .iter()
            .any(|message| message.starts_with("session accounting when=\"final\" ")),
        "{messages:?}"
    );
    assert!(messages.contains(&"stopped cleanly"), "{messages:?}");
    // The final accounting line reads the same as in text, and reconciles.
    agent::assert_nothing_lost(&stderr);
    let session = agent::accounting(&stderr);
    assert_eq!(agent::counter(&session, "records_read"), 3, "{session:?}");
    let console = agent::output_accounting(&stderr, "console");
    assert_eq!(agent::counter(&console, "written"), 3, "{console:?}");
}
