//! Transport faults and misbehaving collectors, end to end, over gRPC and HTTP/protobuf,
//! plaintext and TLS. A TCP front ([`otel_agent_tests::fault`]) between the agent and the
//! in-process receiver closes a connection mid-request, resets it, never answers, or hands
//! it to a receiver of the other kind (TLS for a plaintext agent, plaintext for a TLS one);
//! a port refuses connections until a receiver opens it. Each fault must be retried (the
//! OTLP specification's transport errors are retryable), logged as what happened (no
//! answer, not "the collector answered"), and the spans must arrive once it clears, with the
//! export accounting exact. The receiver also throttles (`Retry-After`, `RetryInfo`),
//! answers HTTP 200 with HTML, and answers with text holding escape sequences and line
//! breaks, which must never reach the log raw.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use otel_agent_tests::{
    agent,
    fault::{Fault, Front},
    process::TempDir,
    receiver::{self, Kind, Pki, Received, Receiver, spans_of},
    require_root,
    traffic::{self, Closer, Exchange},
};

fn exchange() -> Exchange {
    traffic::exchange("127.0.0.1".parse().unwrap(), 1_000, 2_000, Closer::Client)
}

fn protocol(kind: Kind) -> &'static str {
    match kind {
        Kind::Grpc => "grpc",
        Kind::Http => "http/protobuf",
    }
}

/// Starts the agent exporting to `url` over `kind`, one request at a time (so that each
/// faulty connection fails exactly one), a 100 ms schedule delay and a 1 s timeout.
fn start_agent(
    kind: Kind,
    url: &str,
    ca: Option<&str>,
    dir: &TempDir,
) -> otel_agent_tests::process::ChildGuard {
    let pid = std::process::id().to_string();
    let mut args = vec![
        "-p",
        &pid,
        "--otlp-endpoint",
        url,
        "--otlp-protocol",
        protocol(kind),
        "--bsp-schedule-delay",
        "100ms",
        "--bsp-max-concurrent-exports",
        "1",
        "--otlp-timeout",
        "1s",
    ];
    if let Some(ca) = ca {
        args.extend(["--otlp-certificate", ca]);
    }
    agent::start(&args, &[], dir.path())
}

/// What one run left: the final export accounting, what the receiver got, the logs.
struct Outcome {
    export: BTreeMap<String, u64>,
    received: Vec<Received>,
    logs: String,
}

impl Outcome {
    fn spans(&self) -> u64 {
        self.received.iter().map(|r| r.span_count() as u64).sum()
    }

    /// Every span the receiver got was counted exported, nothing lost, nothing left, and
    /// `errors` requests failed.
    fn assert_delivered(&self, errors: u64, what: &str) {
        let counter = |name| agent::counter(&self.export, name);
        assert_eq!(
            (
                counter("lost_rejected"),
                counter("lost_queue_full"),
                counter("lost_at_shutdown"),
                counter("exported_unconfirmed"),
                counter("queued"),
            ),
            (0, 0, 0, 0, 0),
            "{what}: {:?}\n{}",
            self.export,
            self.logs
        );
        assert_eq!(
            counter("exported"),
            self.spans(),
            "{what}: exported = what the receiver got"
        );
        assert_eq!(counter("enqueued"), counter("exported"), "{what}");
        assert_eq!(
            counter("export_errors"),
            errors,
            "{what}: {:?}\n{}",
            self.export,
            self.logs
        );
        assert!(
            !self.logs.contains("refused a request for good")
                && !self.logs.contains("the collector answered"),
            "{what}: a failure without an answer is not the collector's answer:\n{}",
            self.logs
        );
    }
}

/// Runs one exchange through `front` to `receiver`, waits for its spans, stops the agent.
fn deliver(
    kind: Kind,
    url: &str,
    ca: Option<&str>,
    receiver: &Receiver,
    name: &str,
    before_spans: impl FnOnce(&mut otel_agent_tests::process::ChildGuard),
) -> Outcome {
    require_root();
    let dir = TempDir::new(name);
    let mut agent = start_agent(kind, url, ca, &dir);
    let exchange = exchange();
    before_spans(&mut agent);
    let deadline = Instant::now() + Duration::from_secs(20);
    while spans_of(&receiver.received(), &exchange) != 2 {
        assert!(
            Instant::now() < deadline,
            "{name}: the exchange's spans did not arrive after the fault:\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent::stop(&mut agent);
    let logs = agent.stderr_text();
    Outcome {
        export: agent::export_accounting(&logs),
        received: receiver.received(),
        logs,
    }
}

/// The warning the agent logs at the first failure of an episode.
fn first_failure(logs: &str) -> &str {
    logs.lines()
        .find(|line| line.contains("exporting spans failed"))
        .unwrap_or_else(|| panic!("no export failure logged:\n{logs}"))
}

/// Each fault once, on one protocol, plaintext or TLS: retried, named, delivered after.
fn every_fault(kind: Kind, tls: bool) {
    let tag = format!(
        "{}-{}",
        protocol(kind).replace('/', "-"),
        if tls { "tls" } else { "plain" }
    );
    let pki_dir = TempDir::new(&format!("faults-pki-{tag}"));
    let pki = Pki::create(pki_dir.path());
    let ca = pki.ca_file.display().to_string();
    let ca = tls.then_some(ca.as_str());
    let mismatch = if tls {
        "TLS handshake failed, the answer is not TLS: TLS/plaintext mismatch?"
    } else {
        "TLS/plaintext mismatch? the collector may serve TLS on this port"
    };
    let cases: [(&str, Option<Fault>, &str); 4] = [
        (
            "close",
            Some(Fault::Close),
            if tls {
                // The front reads the TLS client hello and closes.
                "the connection closed during the TLS handshake"
            } else {
                "the connection closed before any answer"
            },
        ),
        (
            "reset",
            Some(Fault::Reset),
            if tls {
                // The TLS handshake reads the reset first.
                "reset"
            } else {
                "the connection was reset before any answer"
            },
        ),
        (
            "silent",
            Some(Fault::Silent),
            "no answer within the export timeout of 1s",
        ),
        ("mismatch", None, mismatch),
    ];
    for (name, fault, message) in cases {
        let receiver = if tls {
            Receiver::start_with(kind, Some((&pki, false)))
        } else {
            Receiver::start(kind)
        };
        // The other kind of server on the mismatch's connection.
        let other = if tls {
            Receiver::start(kind)
        } else {
            Receiver::start_with(kind, Some((&pki, false)))
        };
        let fault = fault.unwrap_or(Fault::ForwardTo(other.addr));
        let front = Front::start(&[fault], receiver.addr);
        let what = format!(
            "{} {} {name}",
            protocol(kind),
            if tls { "tls" } else { "plain" }
        );
        let outcome = deliver(
            kind,
            &front.url(tls),
            ca,
            &receiver,
            &format!("{name}-{tag}"),
            |_| {},
        );
        outcome.assert_delivered(1, &what);
        let line = first_failure(&outcome.logs);
        assert!(
            line.contains("no answer from the collector") && line.contains(message),
            "{what}: expected `{message}` in:\n{line}"
        );
        assert!(other.received().is_empty(), "{what}");
    }
}

#[test]
fn grpc_transport_faults_are_retried_named_and_delivered_after() {
    every_fault(Kind::Grpc, false);
}

#[test]
fn grpc_tls_transport_faults_are_retried_named_and_delivered_after() {
    every_fault(Kind::Grpc, true);
}

#[test]
fn http_transport_faults_are_retried_named_and_delivered_after() {
    every_fault(Kind::Http, false);
}

#[test]
fn http_tls_transport_faults_are_retried_named_and_delivered_after() {
    every_fault(Kind::Http, true);
}

/// A loopback port nobody listens on (for now).
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn a_refused_connection_is_retried_until_the_collector_listens() {
    for kind in [Kind::Grpc, Kind::Http] {
        let receiver = Receiver::start(kind);
        let port = closed_port();
        let url = format!("http://localhost:{}", port.port());
        let mut front = None;
        let outcome = deliver(
            kind,
            &url,
            None,
            &receiver,
            &format!("refused-{}", protocol(kind).replace('/', "-")),
            |agent| {
                // Opens the port right after the first refusal, within the first backoff.
                agent.wait_for_output(Duration::from_secs(10), "the first refusal", |output| {
                    output.contains("exporting spans failed")
                });
                front = Some(Front::start_on(port, &[], receiver.addr));
            },
        );
        let what = format!("{} refused", protocol(kind));
        outcome.assert_delivered(1, &what);
        let line = first_failure(&outcome.logs);
        assert!(
            line.contains("no answer from the collector: connection refused"),
            "{what}: {line}"
        );
    }
}

#[test]
fn a_wait_the_collector_asks_for_is_honoured() {
    for kind in [Kind::Grpc, Kind::Http] {
        let receiver = Receiver::start(kind);
        // Four times the first backoff (0.5 s).
        receiver.throttle(1, Duration::from_secs(2));
        let what = format!("{} throttled", protocol(kind));
        let outcome = deliver(
            kind,
            &receiver.url(false),
            None,
            &receiver,
            "throttle",
            |_| {},
        );
        let arrivals = receiver.arrivals();
        assert!(arrivals.len() >= 2, "{what}: {arrivals:?}");
        let waited = arrivals[1] - arrivals[0];
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_millis(2_600),
            "{what}: the retry came {waited:?} after the throttled request"
        );
        let counter = |name| agent::counter(&outcome.export, name);
        assert_eq!(
            (counter("export_errors"), counter("lost_rejected")),
            (1, 0),
            "{what}: {:?}",
            outcome.export
        );
        assert_eq!(counter("exported"), outcome.spans(), "{what}");
        let line = first_failure(&outcome.logs);
        assert!(line.contains("retry_after=Some(2s)"), "{what}: {line}");
    }
}

#[test]
fn an_html_page_answered_with_http_200_is_counted_unconfirmed_and_warned_once() {
    require_root();
    let dir = TempDir::new("html");
    let receiver = Receiver::start(Kind::Http);
    receiver.answer_html();
    let mut agent = start_agent(Kind::Http, &receiver.url(false), None, &dir);
    let exchanges: Vec<Exchange> = (0..3).map(|_| exchange()).collect();
    receiver.wait_for(
        Duration::from_secs(10),
        "the exchanges' spans",
        |received| exchanges.iter().all(|e| spans_of(received, e) == 2),
    );
    agent::stop(&mut agent);
    let logs = agent.stderr_text();
    let export = agent::export_accounting(&logs);
    let spans = receiver.spans_received();
    let counter = |name| agent::counter(&export, name);
    assert_eq!(
        (
            counter("exported_unconfirmed"),
            counter("exported"),
            counter("export_errors"),
            counter("lost_rejected"),
            counter("queued")
        ),
        (spans, 0, 0, 0, 0),
        "{export:?}"
    );
    assert_eq!(counter("enqueued"), spans);
    let warnings: Vec<_> = logs
        .lines()
        .filter(|line| line.contains("not with an OTLP response"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per episode:\n{logs}");
    assert!(
        warnings[0].contains(receiver::HTML) && warnings[0].contains("content-type text/html"),
        "{}",
        warnings[0]
    );
}

/// A collector's text that tries to colour the terminal and forge a log line.
const HOSTILE: &str = "bad\x1b[31m request\nFORGED line\r\n2026-01-01T00:00:00Z ERROR fake";
/// How it must appear in the log.
const HOSTILE_ESCAPED: &str =
    "bad\\u{1b}[31m request\\nFORGED line\\r\\n2026-01-01T00:00:00Z ERROR fake";

fn assert_escaped(logs: &str, what: &str) {
    assert!(
        !logs.contains('\x1b'),
        "{what}: an ESC byte reached the log:\n{logs}"
    );
    assert!(
        !logs
            .lines()
            .any(|line| line.starts_with("FORGED") || line.starts_with("2026-01-01")),
        "{what}: a forged line:\n{logs}"
    );
    assert!(
        logs.contains(HOSTILE_ESCAPED),
        "{what}: the escaped text is logged:\n{logs}"
    );
}

#[test]
fn a_collectors_text_never_reaches_the_log_raw() {
    for kind in [Kind::Grpc, Kind::Http] {
        // A refusal (gRPC status message, HTTP body).
        let receiver = Receiver::start(kind);
        receiver.refuse_every_request();
        receiver.answer_with_message(HOSTILE);
        require_root();
        let dir = TempDir::new("hostile-refusal");
        let mut agent = start_agent(kind, &receiver.url(false), None, &dir);
        let refused = exchange();
        receiver.wait_for(Duration::from_secs(10), "the refused spans", |received| {
            spans_of(received, &refused) == 2
        });
        agent::stop(&mut agent);
        assert_escaped(&agent.stderr_text(), &format!("{} refusal", protocol(kind)));

        // A partial success's message.
        let receiver = Receiver::start(kind);
        receiver.reject_in_each_request(1);
        receiver.answer_with_message(HOSTILE);
        let dir = TempDir::new("hostile-partial");
        let mut agent = start_agent(kind, &receiver.url(false), None, &dir);
        let partial = exchange();
        receiver.wait_for(Duration::from_secs(10), "the spans", |received| {
            spans_of(received, &partial) == 2
        });
        agent::stop(&mut agent);
        assert_escaped(
            &agent.stderr_text(),
            &format!("{} partial success", protocol(kind)),
        );
    }
}

/// Arguments and environment of one agent run.
type Invocation<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);

#[test]
fn paths_and_values_from_flags_and_variables_never_reach_the_log_raw() {
    let hostile_path = format!("/nonexistent/{HOSTILE}");
    let cases: [Invocation; 3] = [
        (
            vec![
                "--otlp-endpoint",
                "https://localhost:4317",
                "--otlp-certificate",
                &hostile_path,
            ],
            vec![],
        ),
        (
            vec![],
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", HOSTILE),
            ],
        ),
        (vec!["--log", HOSTILE], vec![]),
    ];
    for (args, env) in cases {
        let output = agent::command(&args, &env)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the agent");
        assert_eq!(output.status.code(), Some(78), "{args:?} {env:?}");
        assert_escaped(
            &String::from_utf8_lossy(&output.stderr),
            &format!("{args:?} {env:?}"),
        );
    }
}

#[test]
fn a_grpc_ok_whose_message_is_not_an_otlp_response_is_counted_unconfirmed() {
    require_root();
    let dir = TempDir::new("grpc-garbage");
    let receiver = Receiver::start_grpc_answering_garbage();
    let mut agent = start_agent(Kind::Grpc, &receiver.url(false), None, &dir);
    let exchange = exchange();
    receiver.wait_for(
        Duration::from_secs(10),
        "the exchange's spans",
        |received| spans_of(received, &exchange) == 2,
    );
    agent::stop(&mut agent);
    let logs = agent.stderr_text();
    let export = agent::export_accounting(&logs);
    let spans = receiver.spans_received();
    let counter = |name| agent::counter(&export, name);
    assert_eq!(
        (
            counter("exported_unconfirmed"),
            counter("exported"),
            counter("export_errors"),
            counter("lost_rejected"),
        ),
        (spans, 0, 0, 0),
        "{export:?}\n{logs}"
    );
    assert!(
        logs.contains("gRPC status OK with a message that is not an OTLP response"),
        "{logs}"
    );
}
