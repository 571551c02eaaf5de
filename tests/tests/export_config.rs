//! Export configuration, end to end: the `otel-agent` binary exports to an in-process OTLP
//! receiver, and each test checks that a flag or a standard variable took effect where it
//! can be seen: headers and compression on the wire, the resource, batch sizes and delay,
//! TLS and mutual TLS, the resource modes, JSON lines, `OTEL_SDK_DISABLED`. Invalid
//! values stop the agent with exit code 78 and a message naming the flag or variable.

use std::{process::Stdio, time::Duration};

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};
use otel_agent_tests::{
    agent,
    cgroup::own_executable_name,
    process::TempDir,
    receiver::{Kind, Pki, Received, Receiver},
    require_root,
    traffic::{self, Closer, Exchange, THREAD_NAME},
};

/// Runs one loopback exchange from this process.
fn exchange() -> Exchange {
    traffic::exchange("127.0.0.1".parse().unwrap(), 1_000, 2_000, Closer::Client)
}

fn value(attributes: &[KeyValue], key: &str) -> Option<Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|AnyValue { value }| value)
}

fn string(attributes: &[KeyValue], key: &str) -> Option<String> {
    match value(attributes, key) {
        Some(Value::StringValue(text)) => Some(text),
        _ => None,
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match value(attributes, key) {
        Some(Value::IntValue(number)) => Some(number),
        _ => None,
    }
}

/// The spans of `exchange` in what was received, with their resource attributes.
fn spans_of<'a>(received: &'a [Received], exchange: &Exchange) -> Vec<(&'a [KeyValue], &'a Span)> {
    let ports = [
        i64::from(exchange.client.port()),
        i64::from(exchange.server.port()),
    ];
    received
        .iter()
        .flat_map(|r| &r.request.resource_spans)
        .flat_map(|rs| {
            let resource = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
            rs.scope_spans
                .iter()
                .flat_map(move |ss| ss.spans.iter().map(move |s| (resource, s)))
        })
        .filter(|(_, span)| {
            let local = int(&span.attributes, "network.local.port");
            let peer = int(&span.attributes, "network.peer.port");
            matches!((local, peer), (Some(l), Some(p)) if ports.contains(&l) && ports.contains(&p))
        })
        .collect()
}

/// Waits until both spans of `exchange` arrived.
fn wait_for_exchange(receiver: &Receiver, exchange: &Exchange) -> Vec<Received> {
    receiver.wait_for(
        Duration::from_secs(10),
        "both spans of the exchange",
        |received| spans_of(received, exchange).len() == 2,
    )
}

/// What one agent run against a receiver produced.
struct Run {
    received: Vec<Received>,
    exchange: Exchange,
    /// The agent's stderr and stdout.
    logs: String,
}

/// Runs the agent with `args` and `env` (`{url}` stands for the receiver's URL), makes one
/// exchange, stops the agent, and waits for the exchange's two spans at `receiver`.
fn run_against(
    receiver: &Receiver,
    tls: bool,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Run {
    require_root();
    let dir = TempDir::new(name);
    let url = receiver.url(tls);
    let mut args: Vec<String> = args.iter().map(|arg| arg.replace("{url}", &url)).collect();
    args.extend(agent::only_this_process());
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.replace("{url}", &url)))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut agent = agent::start(&args, &env, dir.path());
    let exchange = exchange();
    agent::stop(&mut agent);
    let received = wait_for_exchange(receiver, &exchange);
    Run {
        received,
        exchange,
        logs: agent.stderr_text() + &agent.stdout_text(),
    }
}

#[test]
fn grpc_headers_and_gzip_from_flags_reach_the_collector_and_are_never_logged() {
    let receiver = Receiver::start(Kind::Grpc);
    let run = run_against(
        &receiver,
        false,
        "grpc-headers",
        &[
            "--otlp-endpoint",
            "{url}",
            "--otlp-protocol",
            "grpc",
            "--otlp-headers",
            "authorization=Bearer%20s3cr3t-t0ken,x-tenant=acme",
            "--otlp-compression",
            "gzip",
        ],
        &[],
    );
    for request in &run.received {
        let header = |name: &str| request.headers.get(name).map(String::as_str);
        assert_eq!(header("authorization"), Some("Bearer s3cr3t-t0ken"));
        assert_eq!(header("x-tenant"), Some("acme"));
        assert!(request.gzip, "grpc-encoding: gzip");
        assert!(
            header("user-agent").is_some_and(|agent| agent.starts_with("otel-agent/0.")),
            "the agent introduces itself (tonic adds its own name): {:?}",
            header("user-agent")
        );
    }
    assert!(
        !run.logs.contains("s3cr3t"),
        "the token must never be logged:\n{}",
        run.logs
    );
}

#[test]
fn http_headers_gzip_and_service_name_from_variables_take_effect() {
    let receiver = Receiver::start(Kind::Http);
    let run = run_against(
        &receiver,
        false,
        "http-env",
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "{url}"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=k3y"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_SERVICE_NAME", "checkout-node"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test,host.name=override",
            ),
        ],
    );
    let request = &run.received[0];
    assert_eq!(
        request.headers.get("x-api-key").map(String::as_str),
        Some("k3y")
    );
    assert!(request.gzip, "content-encoding: gzip");
    assert_eq!(
        request.headers.get("user-agent").map(String::as_str),
        Some(concat!("otel-agent/", env!("CARGO_PKG_VERSION")))
    );
    let (resource, _) = spans_of(&run.received, &run.exchange)[0];
    assert_eq!(
        string(resource, "service.name").as_deref(),
        Some("checkout-node")
    );
    assert_eq!(
        string(resource, "deployment.environment.name").as_deref(),
        Some("test")
    );
    assert_eq!(
        string(resource, "host.name").as_deref(),
        Some("override"),
        "the user's value wins"
    );
    assert_eq!(
        string(resource, "service.version"),
        None,
        "only for the default service"
    );
    assert_eq!(string(resource, "os.type").as_deref(), Some("linux"));
}

#[test]
fn batch_size_and_schedule_delay_take_effect() {
    require_root();
    let dir = TempDir::new("batching");
    let receiver = Receiver::start(Kind::Grpc);
    let url = receiver.url(false);
    let mut agent = agent::start(
        &[
            "-p",
            &std::process::id().to_string(),
            "--otlp-endpoint",
            &url,
            "--otlp-protocol",
            "grpc",
            "--bsp-max-export-batch-size",
            "1",
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
        dir.path(),
    );
    let exchanges: Vec<Exchange> = (0..3).map(|_| exchange()).collect();
    // With a 100 ms delay the spans arrive while the agent runs (the default is 5 s).
    let received = receiver.wait_for(
        Duration::from_secs(3),
        "six spans before shutdown",
        |received| exchanges.iter().all(|e| spans_of(received, e).len() == 2),
    );
    agent::stop(&mut agent);
    assert!(
        received.iter().all(|r| r.span_count() == 1),
        "one span per request"
    );
}

fn tls_roundtrip(kind: Kind, mutual: bool, name: &str) {
    require_root();
    let pki_dir = TempDir::new(&format!("{name}-pki"));
    let pki = Pki::create(pki_dir.path());
    let receiver = Receiver::start_with(kind, Some((&pki, mutual)));
    let protocol = match kind {
        Kind::Grpc => "grpc",
        Kind::Http => "http/protobuf",
    };
    let ca = pki.ca_file.display().to_string();
    let cert = pki.client_cert_file.display().to_string();
    let key = pki.client_key_file.display().to_string();
    let mut args = vec![
        "--otlp-endpoint",
        "{url}",
        "--otlp-protocol",
        protocol,
        "--otlp-certificate",
        &ca,
    ];
    if mutual {
        args.extend([
            "--otlp-client-certificate",
            &cert,
            "--otlp-client-key",
            &key,
        ]);
    }
    let run = run_against(&receiver, true, name, &args, &[]);
    assert_eq!(spans_of(&run.received, &run.exchange).len(), 2);
}

#[test]
fn grpc_over_mutual_tls_with_a_custom_ca() {
    tls_roundtrip(Kind::Grpc, true, "grpc-mtls");
}

#[test]
fn http_over_mutual_tls_with_a_custom_ca() {
    tls_roundtrip(Kind::Http, true, "http-mtls");
}

#[test]
fn grpc_over_tls_without_client_certificate() {
    tls_roundtrip(Kind::Grpc, false, "grpc-tls");
}

#[test]
fn resource_mode_process_makes_each_process_a_service() {
    let receiver = Receiver::start(Kind::Grpc);
    let run = run_against(
        &receiver,
        false,
        "per-process",
        &[
            "--otlp-endpoint",
            "{url}",
            "--otlp-protocol",
            "grpc",
            "--resource-mode",
            "process",
        ],
        &[],
    );
    let pid = i64::from(std::process::id());
    let exe = own_executable_name();
    for (resource, span) in spans_of(&run.received, &run.exchange) {
        assert_eq!(string(resource, "service.name"), Some(exe.clone()));
        assert_eq!(
            string(resource, "process.executable.name"),
            Some(exe.clone())
        );
        assert_eq!(int(resource, "process.pid"), Some(pid));
        assert_eq!(string(resource, "service.version"), None);
        assert_eq!(int(&span.attributes, "process.pid"), Some(pid));
        assert_eq!(
            string(&span.attributes, "tcplife.comm").as_deref(),
            Some(THREAD_NAME)
        );
        assert_eq!(
            string(resource, "telemetry.distro.name").as_deref(),
            Some("otel-agent")
        );
    }
}

#[test]
fn resource_mode_single_is_the_agents_one_resource() {
    let receiver = Receiver::start(Kind::Grpc);
    let run = run_against(
        &receiver,
        false,
        "single",
        &["--otlp-endpoint", "{url}", "--otlp-protocol", "grpc"],
        &[("OTEL_AGENT_RESOURCE_MODE", "single")],
    );
    for (resource, _) in spans_of(&run.received, &run.exchange) {
        assert_eq!(
            string(resource, "service.name").as_deref(),
            Some("otel-agent")
        );
        assert_eq!(
            string(resource, "service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(string(resource, "process.executable.name"), None);
    }
}

#[test]
fn json_lines_carry_the_same_spans_in_otlp_json() {
    require_root();
    let dir = TempDir::new("json-lines");
    let path = dir.path().join("spans.jsonl");
    let path_text = path.display().to_string();
    let mut agent = agent::start(
        &[
            "-p",
            &std::process::id().to_string(),
            "--json-output",
            &path_text,
        ],
        &[],
        dir.path(),
    );
    let exchange = exchange();
    agent::stop(&mut agent);
    let text = std::fs::read_to_string(&path).expect("the JSON lines file");
    let client_port = exchange.client.port().to_string();
    let server_port = exchange.server.port();
    let mut names = Vec::new();
    for line in text.lines() {
        let request: serde_json::Value =
            serde_json::from_str(line).expect("one JSON object per line");
        for span in request["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .unwrap()
        {
            let attributes = span["attributes"].as_array().unwrap();
            let has_client_port = attributes.iter().any(|kv| {
                kv["value"]["intValue"].as_str() == Some(client_port.as_str())
                    && kv["key"].as_str().unwrap().starts_with("network.")
            });
            if has_client_port {
                names.push(span["name"].as_str().unwrap().to_owned());
            }
        }
    }
    names.sort();
    assert_eq!(
        names,
        vec![
            format!("tcp accept :{server_port}"),
            format!("tcp connect :{server_port}")
        ]
    );
    // Without an endpoint, the console still prints on stdout.
    assert!(
        agent.stdout_text().starts_with("PID   COMM"),
        "{}",
        agent.stdout_text()
    );
}

#[test]
fn sdk_disabled_exports_nothing_and_prints_sessions() {
    require_root();
    let dir = TempDir::new("sdk-disabled");
    let receiver = Receiver::start(Kind::Grpc);
    let url = receiver.url(false);
    let mut agent = agent::start(
        &[
            "-p",
            &std::process::id().to_string(),
            "--otlp-endpoint",
            &url,
            "--otlp-protocol",
            "grpc",
        ],
        &[("OTEL_SDK_DISABLED", "true")],
        dir.path(),
    );
    let exchange = exchange();
    agent::stop(&mut agent);
    assert!(receiver.received().is_empty(), "nothing exported");
    let line = format!("{:<5}", exchange.client.port());
    assert!(
        agent.stdout_text().contains(&line),
        "{}",
        agent.stdout_text()
    );
    assert!(
        agent
            .stderr_text()
            .contains("OTEL_SDK_DISABLED=true: not exporting spans")
    );
}

/// Command-line arguments, environment, and the message the agent must print.
type BadInput<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

/// Runs the agent with bad input and returns (exit code, stderr).
fn rejected(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = agent::command(args, env)
        .stdin(Stdio::null())
        .output()
        .expect("run the agent");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn invalid_values_stop_the_agent_with_code_78_naming_the_source() {
    let cases: [BadInput; 8] = [
        (
            &["--otlp-endpoint", "localhost:4317"],
            &[],
            "--otlp-endpoint=`localhost:4317` is invalid: a URL with http:// or https://",
        ),
        (
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL=`thrift` is invalid: grpc or http/protobuf",
        ),
        (
            &[
                "--otlp-endpoint",
                "http://x",
                "--otlp-compression",
                "brotli",
            ],
            &[],
            "--otlp-compression=`brotli` is invalid: gzip or none",
        ),
        (
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ],
            "OTEL_EXPORTER_OTLP_TIMEOUT=`soon` is invalid: an integer number of milliseconds",
        ),
        (
            &[],
            &[("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "-1")],
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=`-1` is invalid: a positive integer",
        ),
        (
            &[],
            &[("OTEL_SDK_DISABLED", "maybe")],
            "OTEL_SDK_DISABLED=`maybe` is invalid: true or false",
        ),
        (
            &[
                "--otlp-endpoint",
                "https://x",
                "--otlp-certificate",
                "/nonexistent/ca.pem",
            ],
            &[],
            "cannot read the CA certificate /nonexistent/ca.pem",
        ),
        (
            &["--resource-mode", "workload"],
            &[("OTEL_RESOURCE_ATTRIBUTES", "service.name=shop")],
            "--resource-mode (OTEL_AGENT_RESOURCE_MODE)=`workload` is invalid: `single` or nothing while OTEL_SERVICE_NAME",
        ),
    ];
    for (args, env, message) in cases {
        let (code, stderr) = rejected(args, env);
        assert_eq!(code, Some(78), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{args:?} {env:?}: expected `{message}` in:\n{stderr}"
        );
    }
}

#[test]
fn invalid_flag_values_exit_78_and_malformed_command_lines_2() {
    for (args, message, expected) in [
        (
            &["--otlp-protocol", "http/json"][..],
            "[possible values: grpc, http/protobuf]",
            78,
        ),
        (&["-L", "80,http"][..], "`http` is not a port (1-65535)", 78),
        (
            &["--bsp-max-queue-size", "0"][..],
            "`0` is not a positive integer",
            78,
        ),
        (&["-4", "-6"][..], "cannot be used with", 2),
    ] {
        let (code, stderr) = rejected(args, &[]);
        assert_eq!(code, Some(expected), "{args:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{args:?}: expected `{message}` in:\n{stderr}"
        );
    }
}

#[test]
fn spans_the_collector_rejects_are_counted_and_logged_over_grpc_and_http() {
    for (kind, protocol) in [(Kind::Grpc, "grpc"), (Kind::Http, "http/protobuf")] {
        let receiver = Receiver::start(kind);
        receiver.reject_in_each_request(1);
        let run = run_against(
            &receiver,
            false,
            "rejects",
            &["--otlp-endpoint", "{url}", "--otlp-protocol", protocol],
            &[],
        );
        let requests = run
            .received
            .iter()
            .filter(|request| request.span_count() > 0)
            .count() as u64;
        let spans: u64 = run.received.iter().map(|r| r.span_count() as u64).sum();
        let export = agent::export_accounting(&run.logs);
        let rejected = agent::counter(&export, "lost_rejected");
        assert_eq!(rejected, requests, "{protocol}: one span of each request");
        assert_eq!(
            agent::counter(&export, "exported") + rejected,
            spans,
            "{protocol}: exported + rejected = what the collector got"
        );
        assert_eq!(agent::counter(&export, "enqueued"), spans);
        assert!(
            run.logs
                .contains("the collector rejected spans (partial success)")
                && run.logs.contains("rejected by the test receiver"),
            "{protocol}: the rejection and the collector's message are logged:\n{}",
            run.logs
        );
    }
}

#[test]
fn requests_the_collector_refuses_for_good_are_dropped_counted_and_logged() {
    for (kind, protocol) in [(Kind::Grpc, "grpc"), (Kind::Http, "http/protobuf")] {
        let receiver = Receiver::start(kind);
        receiver.refuse_every_request();
        let run = run_against(
            &receiver,
            false,
            "refusals",
            &["--otlp-endpoint", "{url}", "--otlp-protocol", protocol],
            &[],
        );
        let spans: u64 = run.received.iter().map(|r| r.span_count() as u64).sum();
        let export = agent::export_accounting(&run.logs);
        assert_eq!(
            agent::counter(&export, "lost_rejected"),
            spans,
            "{protocol}: every refused span is counted"
        );
        assert_eq!(agent::counter(&export, "exported"), 0);
        assert_eq!(
            agent::counter(&export, "export_errors"),
            run.received.len() as u64,
            "{protocol}: each refused request was sent once, not retried"
        );
        assert!(
            run.logs.contains("refused a request for good")
                && run.logs.contains(otel_agent_tests::receiver::REFUSAL),
            "{protocol}: the refusal and the collector's answer are logged:\n{}",
            run.logs
        );
    }
}
