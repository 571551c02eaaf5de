//! The real third-party collector used by the end-to-end tests: rotel (PyPI package `rotel`,
//! installed by `scripts/setup.sh test`), receiving OTLP on loopback and printing every span
//! it receives with its debug exporter, which this module parses.
//!
//! rotel 0.x prints a span's trace id, span id, parent id and links (trace id, span id,
//! trace state) but not `Span.flags` or `Link.flags`: tests assert those with the
//! in-process receiver (`crate::receiver`).

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::process::ChildGuard;

/// One span as rotel printed it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceivedSpan {
    /// Lowercase hex, as every id below.
    pub trace_id: String,
    pub span_id: String,
    pub name: String,
    /// For example `SPAN_KIND_CLIENT`.
    pub kind: String,
    /// Empty for a root span.
    pub parent_id: String,
    /// The span's W3C tracestate, for example `ot=th:8` (empty without one).
    pub trace_state: String,
    pub status_code: String,
    pub start_ns: u128,
    pub end_ns: u128,
    /// Values as rotel prints them, for example `Str(tcp)` or `Int(8080)`.
    pub attributes: BTreeMap<String, String>,
    /// The attributes of the resource the span arrived under.
    pub resource: BTreeMap<String, String>,
    pub links: Vec<ReceivedLink>,
}

/// One span link as rotel printed it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceivedLink {
    pub trace_id: String,
    pub span_id: String,
    pub trace_state: String,
}

/// A running rotel collector listening on free loopback ports.
pub struct Rotel {
    pub process: ChildGuard,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Rotel {
    /// Starts rotel with the blackhole exporter and detailed trace debug logs, and waits
    /// until both OTLP receivers accept connections.
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, "rotel", free_port(), free_port(), &["traces"])
    }

    /// Starts rotel on free loopback ports, printing spans and metrics.
    pub fn start_with_metrics(dir: &Path) -> Self {
        Self::start_on(
            dir,
            "rotel",
            free_port(),
            free_port(),
            &["traces", "metrics"],
        )
    }

    /// Starts rotel on the given ports, printing the signals in `debug` (`traces`,
    /// `metrics`), its output in `<dir>/<name>.stdout` (a restart on the same ports keeps the
    /// earlier run's output).
    pub fn start_on(
        dir: &Path,
        name: &str,
        grpc: SocketAddr,
        http: SocketAddr,
        debug: &[&str],
    ) -> Self {
        let mut command = Command::new(binary());
        command.args([
            "start",
            "--otlp-grpc-endpoint",
            &grpc.to_string(),
            "--otlp-http-endpoint",
            &http.to_string(),
            "--exporter",
            "blackhole",
            "--debug-log-verbosity",
            "detailed",
            "--pid-file",
            &dir.join(format!("{name}.pid")).display().to_string(),
            "--log-file",
            &dir.join(format!("{name}.log")).display().to_string(),
        ]);
        for signal in debug {
            command.args(["--debug-log", signal]);
        }
        command.env("NO_COLOR", "1");
        let process = ChildGuard::spawn(command, dir, name);
        for addr in [grpc, http] {
            wait_until_listening(addr, &process);
        }
        Self {
            process,
            grpc,
            http,
        }
    }

    /// Every span rotel has printed so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        parse(&self.process.stdout_text())
    }

    /// Waits until `count` spans match `predicate`, failing the test after `timeout`.
    pub fn wait_for_spans(
        &self,
        count: usize,
        timeout: Duration,
        predicate: impl Fn(&ReceivedSpan) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let matching: Vec<_> = self.spans().into_iter().filter(&predicate).collect();
            if matching.len() >= count {
                return matching;
            }
            assert!(
                Instant::now() < deadline,
                "rotel received {} of {count} expected spans within {timeout:?}; its output:\n{}",
                matching.len(),
                self.process.stdout_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The last point of each series of a metric, by its resource's attributes and its own.
pub type FinalPoints = BTreeMap<(BTreeMap<String, String>, BTreeMap<String, String>), MetricPoint>;

impl Rotel {
    /// The last point of every series of the metric `name` (each export of a cumulative
    /// metric repeats its totals), once their values add up to `expected`; fails the test if
    /// they do not within 10 s.
    pub fn final_points(&self, name: &str, expected: f64) -> FinalPoints {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut last = FinalPoints::new();
            for point in metric_points(&self.process.stdout_text(), name) {
                last.insert((point.resource.clone(), point.attributes.clone()), point);
            }
            let total: f64 = last.values().map(|point| point.value).sum();
            if total == expected || Instant::now() >= deadline {
                assert_eq!(total, expected, "{name}: {last:#?}");
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The `rotel-agent` binary: `ROTEL_AGENT` if set, else the one inside the `rotel` Python
/// package.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ROTEL_AGENT") {
        return PathBuf::from(path);
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("run python3 to locate rotel");
    assert!(
        output.status.success(),
        "the rotel collector is not installed; run scripts/setup.sh test ({})",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free loopback port")
}

fn wait_until_listening(addr: SocketAddr, process: &ChildGuard) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(
            Instant::now() < deadline,
            "rotel did not listen on {addr} within 10 s; its output:\n{}{}",
            process.stdout_text(),
            process.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parses rotel's detailed trace debug log: `Resource attributes:` sections followed by
/// `Span #n` blocks with `Trace ID`, `Parent ID`, `ID`, `Name`, `Kind`, `Start time`,
/// `End time`, `Status code`, `Attributes:` lines and `Links:` (`SpanLink #n` blocks).
pub fn parse(output: &str) -> Vec<ReceivedSpan> {
    #[derive(PartialEq)]
    enum Section {
        Resource,
        Span,
        Links,
    }
    let mut spans = Vec::new();
    let mut resource = BTreeMap::new();
    let mut current: Option<ReceivedSpan> = None;
    let mut section = Section::Span;
    for line in output.lines() {
        let trimmed = line.trim();
        if trimmed == "Resource attributes:" {
            spans.extend(current.take());
            resource = BTreeMap::new();
            section = Section::Resource;
        } else if trimmed.starts_with("Span #") {
            spans.extend(current.take());
            section = Section::Span;
            current = Some(ReceivedSpan {
                resource: resource.clone(),
                ..ReceivedSpan::default()
            });
        } else if trimmed == "Links:" && current.is_some() {
            section = Section::Links;
        } else if let Some(span) = &mut current
            && section == Section::Links
        {
            if trimmed.starts_with("SpanLink #") {
                span.links.push(ReceivedLink::default());
            } else if let (Some(link), Some((key, value))) = (
                span.links.last_mut(),
                trimmed
                    .strip_prefix("-> ")
                    .and_then(|kv| kv.split_once(':')),
            ) {
                let value = value.trim().to_owned();
                match key {
                    "Trace ID" => link.trace_id = value,
                    "ID" => link.span_id = value,
                    "TraceState" => link.trace_state = value,
                    _ => {}
                }
            }
        } else if let Some((key, value)) = trimmed
            .strip_prefix("-> ")
            .and_then(|kv| kv.split_once(": "))
        {
            if section == Section::Resource {
                resource.insert(key.to_owned(), value.to_owned());
            } else if let Some(span) = &mut current {
                span.attributes.insert(key.to_owned(), value.to_owned());
            }
        } else if let Some(span) = &mut current
            && let Some((field, value)) = trimmed.split_once(':')
        {
            let value = value.trim().to_owned();
            match field.trim() {
                "Trace ID" => span.trace_id = value,
                "ID" => span.span_id = value,
                "Name" => span.name = value,
                "Kind" => span.kind = value,
                "Parent ID" => span.parent_id = value,
                "TraceState" => span.trace_state = value,
                "Status code" => span.status_code = value,
                "Start time" => span.start_ns = value.parse().unwrap_or_default(),
                "End time" => span.end_ns = value.parse().unwrap_or_default(),
                _ => {}
            }
        }
    }
    spans.extend(current);
    spans
}

/// One metric data point as rotel printed it (`--debug-log metrics`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricPoint {
    /// Values as rotel prints them, for example `Str(SPAN_KIND_CLIENT)`.
    pub attributes: BTreeMap<String, String>,
    /// A histogram point's `Count`, a sum's `Value`.
    pub value: f64,
    /// A histogram point's `Sum`.
    pub sum: f64,
    /// The attributes of the resource the point arrived under.
    pub resource: BTreeMap<String, String>,
}

/// Every data point of the metric `name` in rotel's detailed metrics log, in the order
/// printed (every export of a cumulative metric repeats its points with their totals).
pub fn metric_points(output: &str, name: &str) -> Vec<MetricPoint> {
    let mut points = Vec::new();
    let mut in_metric = false;
    let mut in_attributes = false;
    let mut resource = BTreeMap::new();
    let mut in_resource = false;
    for line in output.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("ResourceMetrics #") {
            resource.clear();
            in_resource = true;
            in_metric = false;
        } else if in_resource {
            // The resource's lines, until its first scope.
            if let Some((key, value)) = trimmed
                .strip_prefix("-> ")
                .and_then(|kv| kv.split_once(": "))
            {
                resource.insert(key.to_owned(), value.to_owned());
            }
            in_resource = !trimmed.starts_with("ScopeMetrics #");
        } else if let Some(found) = trimmed.strip_prefix("-> Name: ") {
            in_metric = found == name;
            in_attributes = false;
        } else if trimmed.starts_with("Metric #") {
            in_metric = false;
        } else if !in_metric {
        } else if trimmed.starts_with("HistogramDataPoints #")
            || trimmed.starts_with("NumberDataPoints #")
        {
            points.push(MetricPoint {
                resource: resource.clone(),
                ..MetricPoint::default()
            });
            in_attributes = false;
        } else if trimmed == "Data point attributes:" {
            in_attributes = true;
        } else if let (Some(point), Some((key, value))) = (
            points.last_mut(),
            trimmed
                .strip_prefix("-> ")
                .and_then(|kv| kv.split_once(": ")),
        ) && in_attributes
        {
            point.attributes.insert(key.to_owned(), value.to_owned());
        } else if let (Some(point), Some((field, value))) =
            (points.last_mut(), trimmed.split_once(": "))
        {
            in_attributes = false;
            let value = value.trim().parse().unwrap_or_default();
            match field {
                "Count" | "Value" => point.value = value,
                "Sum" => point.sum = value,
                _ => {}
            }
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rotel's output for a histogram and a sum (captured from rotel-agent,
    /// `--debug-log metrics --debug-log-verbosity detailed`, abridged).
    #[test]
    fn parses_metric_points() {
        let output = "ResourceMetrics #0
Resource attributes:
     -> service.name: Str(otel-agent)
ScopeMetrics #0
InstrumentationScope otel-agent 
Metric #0
Descriptor:
     -> Name: tcp.session.duration
     -> Unit: s
     -> DataType: Histogram
HistogramDataPoints #0
Data point attributes:
     -> span.kind: Str(SPAN_KIND_SERVER)
     -> span.name: Str(tcp accept :25555)
StartTimestamp: 1796006914848881271
Timestamp: 1796006916966913735
Count: 10
Sum: 0.000414245
Min: 0.000032848
ExplicitBounds #0: 0.005
Buckets #0, Count: 10
Metric #1
Descriptor:
     -> Name: tcp.session.payload
     -> DataType: Sum
NumberDataPoints #0
Data point attributes:
     -> network.io.direction: Str(receive)
     -> otel.metric.overflow: Bool(true)
StartTimestamp: 1796006914848921301
Value: 100
";
        let duration = metric_points(output, "tcp.session.duration");
        assert_eq!(duration.len(), 1);
        assert_eq!(duration[0].value, 10.0);
        assert_eq!(duration[0].sum, 0.000414245);
        assert_eq!(
            duration[0].attributes["span.name"],
            "Str(tcp accept :25555)"
        );
        assert_eq!(duration[0].attributes.len(), 2);
        assert_eq!(
            duration[0].resource,
            BTreeMap::from([("service.name".to_owned(), "Str(otel-agent)".to_owned())])
        );
        let payload = metric_points(output, "tcp.session.payload");
        assert_eq!(payload.len(), 1);
        assert_eq!(payload[0].value, 100.0);
        assert_eq!(payload[0].attributes["otel.metric.overflow"], "Bool(true)");
    }

    #[test]
    fn parses_spans_with_their_resource() {
        let output = "INFO Starting Rotel.
ResourceSpans #0
Resource attributes:
     -> service.name: Str(otel-agent)
ScopeSpans #0
InstrumentationScope otel-agent 
Span #0
    Trace ID       : ca0bd493afe4eb71ca14d0f7d3a13794
    Parent ID      : 
    ID             : 4d362fe931d0d4a4
    Name           : tcp session
    Kind           : SPAN_KIND_CLIENT
Start time: 1795680689021356875
End time: 1795680689022081642
    Status code    : STATUS_CODE_UNSET
    Status message : 
Attributes:
     -> network.local.port: Int(57560)
     -> tcplife.comm: Str(python3)
Span #1
    Name           : tcp session
    Kind           : SPAN_KIND_SERVER
Start time: 5
End time: 6
Attributes:
     -> network.local.port: Int(58753)
";
        let spans = parse(output);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].name, "tcp session");
        assert_eq!(spans[0].kind, "SPAN_KIND_CLIENT");
        assert_eq!(spans[0].parent_id, "");
        assert_eq!(spans[0].status_code, "STATUS_CODE_UNSET");
        assert_eq!(spans[0].start_ns, 1_795_680_689_021_356_875);
        assert_eq!(spans[0].end_ns, 1_795_680_689_022_081_642);
        assert_eq!(spans[0].attributes["network.local.port"], "Int(57560)");
        assert_eq!(spans[0].attributes["tcplife.comm"], "Str(python3)");
        assert_eq!(spans[0].resource["service.name"], "Str(otel-agent)");
        assert_eq!(spans[1].kind, "SPAN_KIND_SERVER");
        assert_eq!(spans[1].resource["service.name"], "Str(otel-agent)");
        assert_eq!(spans[0].trace_id, "ca0bd493afe4eb71ca14d0f7d3a13794");
        assert_eq!(spans[0].span_id, "4d362fe931d0d4a4");
        assert!(spans[0].links.is_empty());
    }

    /// rotel's output for a span with a parent, and one with a link (captured from
    /// rotel-agent, `--debug-log-verbosity detailed`).
    #[test]
    fn parses_ids_parents_and_links() {
        let output = "ResourceSpans #0
Resource SchemaURL: 
Resource attributes:
     -> service.name: Str(x)
ScopeSpans #0
ScopeSpans SchemaURL: 
InstrumentationScope s 
Span #0
    Trace ID       : 88573136ed57febea094d0d8de01bbd7
    Parent ID      : f8b9d5fe014c4dc6
    ID             : a13a608c60e79f28
    Name           : n
    Kind           : SPAN_KIND_SERVER
Start time: 1
End time: 2
Span #1
    Trace ID       : 88573136ed57febea094d0d8de01bbd7
    Parent ID      : 
    ID             : a13a608c60e79f28
    Name           : n
    Kind           : SPAN_KIND_SERVER
Start time: 1
End time: 2
    Status code    : STATUS_CODE_ERROR
    Status message : boom
Attributes:
     -> a: Int(3)
Links:
SpanLink #0
     -> Trace ID: 88573136ed57febea094d0d8de01bbd7
     -> ID: f8b9d5fe014c4dc6
     -> TraceState: 
     -> DroppedAttributesCount: 0
Span #2
    Trace ID       : 00000000000000000000000000000001
    Parent ID      : 
    ID             : 0000000000000002
    Name           : m
    Kind           : SPAN_KIND_CLIENT
Start time: 1
End time: 2
Attributes:
     -> b: Int(3)
";
        let spans = parse(output);
        assert_eq!(spans.len(), 3);
        assert_eq!(
            (
                spans[0].trace_id.as_str(),
                spans[0].span_id.as_str(),
                spans[0].parent_id.as_str()
            ),
            (
                "88573136ed57febea094d0d8de01bbd7",
                "a13a608c60e79f28",
                "f8b9d5fe014c4dc6"
            )
        );
        assert!(spans[0].links.is_empty());
        assert_eq!(spans[1].parent_id, "");
        assert_eq!(
            spans[1].attributes,
            BTreeMap::from([("a".to_owned(), "Int(3)".to_owned())]),
            "link lines are not attributes"
        );
        assert_eq!(
            spans[1].links,
            vec![ReceivedLink {
                trace_id: "88573136ed57febea094d0d8de01bbd7".to_owned(),
                span_id: "f8b9d5fe014c4dc6".to_owned(),
                trace_state: String::new(),
            }]
        );
        assert_eq!(spans[2].span_id, "0000000000000002");
        assert!(spans[2].links.is_empty());
        assert_eq!(spans[2].attributes["b"], "Int(3)");
        assert_eq!(spans[2].resource["service.name"], "Str(x)");
    }
}
