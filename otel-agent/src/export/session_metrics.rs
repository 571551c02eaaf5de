//! The session metrics: every closed session counted over OTLP next to the spans, before
//! the sampler and its rules decide, so that counts, durations and bytes stay exact
//! whatever the sampler keeps, on the resource of the session's span: its workload's in
//! `--resource-mode workload` or `process`, the overflow resource for the sessions over
//! `--max-workloads`, the agent's one resource in `single` (or with a named service). A
//! dashboard grouped by `service.name` then sees the same services in the metrics as in
//! the traces.
//!
//! | metric | kind | unit | attributes |
//! |---|---|---|---|
//! | `tcp.session.duration` | histogram | `s` | `span.name`, `span.kind`, `status.code` |
//! | `tcp.session.payload` | counter | `By` | the same, and `network.io.direction` (`transmit`, `receive`) |
//!
//! The attributes are the spanmetrics connector's dimensions, with its values
//! (`SPAN_KIND_CLIENT`, `STATUS_CODE_ERROR`, ...), computed from the span each session
//! becomes ([`crate::export::span`]). The histogram's count is the number of closed
//! sessions; the payload is the sessions' payload ([`crate::session::Payload`]), counted
//! for the sessions whose payload is known (its birth and counters were seen).
//!
//! Mechanism: one SDK meter provider per resource, each with a manual reader, all collected
//! by one export thread every interval. An SDK provider has one resource, so a resource per
//! workload takes a provider per workload; the SDK keeps doing the aggregation, the
//! temporality, the cardinality limit and the overflow series, as it did for the agent's one
//! resource. Each workload's provider is its state in the live set
//! ([`crate::export::workload::WorkloadTable`], [`PerWorkload`]): made when the workload is
//! admitted, and when the workload leaves the live set (idle), handed to the export thread,
//! which collects it one last time, exports it and drops it. So at most `--max-workloads`
//! providers are live, plus the shared one (the overflow or the single resource), plus those
//! leaving, which are exported early when they reach `--max-workloads`. The SDK's OTLP
//! exporter takes one resource per request: an interval sends one request per resource
//! that has data points (a delta interval without sessions sends none for it). The
//! alternative, our own aggregation encoded as one `ExportMetricsServiceRequest` for all
//! workloads, would need histograms, temporalities, the overflow and a metrics transport of
//! our own; at a few hundred workloads a minute, the requests cost less than that code.
//!
//! Settings, validated at start-up: `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds, default
//! 60000), `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` (`cumulative`, the default,
//! `delta` or `lowmemory`), and a cardinality limit per metric and per resource: beyond it,
//! new attribute sets of that resource are aggregated into one series whose only attribute
//! is `otel.metric.overflow=true`, as the SDK specification says (the SDK's `ValueMap` does
//! this: `limit` distinct sets, then the overflow series; with cumulative temporality the
//! sets seen before stay). The payload counter's limit is twice the histogram's (two
//! directions). A workload that leaves and comes back starts new cumulative series (a new
//! start time). At shutdown, the export thread exports every provider one last time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::user::Origin;
use opentelemetry::{
    KeyValue,
    metrics::{BoundCounter, BoundHistogram, Counter, Histogram, MeterProvider as _},
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as ProtoSpanKind;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        Instrument, InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Stream, Temporality,
        data::ResourceMetrics, exporter::PushMetricExporter, reader::MetricReader,
    },
};

use super::{
    config::{ConfigError, parse_millis},
    resource::workload_resource,
    span::{self, SpanText},
    workload::{PerWorkload, WorkloadKey},
};
use crate::{log_text::Escaped, session::Session};

/// The histogram of session durations.
pub const DURATION: &str = "tcp.session.duration";
/// The counter of payload bytes.
pub const PAYLOAD: &str = "tcp.session.payload";

/// The duration histogram's bucket boundaries, in seconds: HTTP's request-duration buckets
/// (5 ms to 10 s), then the minutes and hours of long-lived connections.
const BOUNDARIES: [f64; 20] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
    300.0, 900.0, 1800.0, 3600.0,
];

/// The default cardinality limit: the SDK specification's default.
pub const DEFAULT_CARDINALITY_LIMIT: usize = 2000;

/// The session metrics' settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSettings {
    pub interval: Duration,
    pub temporality: Temporality,
    /// Attribute sets of the duration histogram at most (the payload counter: twice).
    pub cardinality_limit: usize,
}

impl MetricsSettings {
    /// The settings: `cardinality_limit` from the command line, the interval and the
    /// temporality from their standard variables (read through `env`).
    pub fn resolve(
        cardinality_limit: usize,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        let interval = match env("OTEL_METRIC_EXPORT_INTERVAL") {
            Some(value) => match parse_millis("OTEL_METRIC_EXPORT_INTERVAL", &value)? {
                Duration::ZERO => {
                    return Err(ConfigError {
                        source_name: "OTEL_METRIC_EXPORT_INTERVAL".to_owned(),
                        value,
                        expected: "a positive integer number of milliseconds".to_owned(),
                    });
                }
                interval => interval,
            },
            None => Duration::from_secs(60),
        };
        let name = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
        let temporality = match env(name) {
            Some(value) => match value.trim().to_ascii_lowercase().as_str() {
                "cumulative" => Temporality::Cumulative,
                "delta" => Temporality::Delta,
                "lowmemory" => Temporality::LowMemory,
                _ => {
                    return Err(ConfigError {
                        source_name: name.to_owned(),
                        value,
                        expected: "cumulative, delta or lowmemory".to_owned(),
                    });
                }
            },
            None => Temporality::Cumulative,
        };
        Ok(Self {
            interval,
            temporality,
            cardinality_limit,
        })
    }
}

/// The running session metrics: the export thread.
pub struct SessionMetrics {
    wake: mpsc::Sender<Wake>,
    thread: JoinHandle<()>,
}

/// What wakes the export thread before its interval.
enum Wake {
    /// The providers leaving reached the bound: export them now.
    Leaving,
    /// The last export, then the thread ends.
    Stop,
    /// Export everything now and say when done.
    #[cfg(test)]
    Now(mpsc::Sender<()>),
}

/// The providers, shared by the pipeline (which adds and retires them) and the export
/// thread (which collects them).
struct Registry {
    sources: Mutex<Sources>,
    settings: MetricsSettings,
    /// Providers leaving at most before they are exported early.
    max_leaving: usize,
    wake: mpsc::Sender<Wake>,
}

#[derive(Default)]
struct Sources {
    live: HashMap<u64, Arc<Source>>,
    leaving: Vec<Arc<Source>>,
    next: u64,
}

/// One resource's provider and its reader.
struct Source {
    provider: SdkMeterProvider,
    reader: Arc<ManualReader>,
}

/// The manual reader, shared between its provider (which owns its readers) and the export
/// thread (which collects it).
#[derive(Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, metrics: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(metrics)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// Records sessions into the metrics (the pipeline's half): each workload's
/// [`WorkloadMetrics`] lives in the workload table ([`PerWorkload`]); the sessions of no
/// workload go to the shared resource's.
pub struct SessionRecorder {
    registry: Arc<Registry>,
    /// The agent's resource, which each workload's is built from.
    base: Resource,
    /// The sessions of no workload: the overflow resource, or the agent's one resource.
    shared: WorkloadMetrics,
}

/// One resource's instruments.
///
/// Each attribute set is bound once (the SDK's bound instruments: a measurement then goes
/// straight to its aggregator, without hashing the attributes again), at most the
/// cardinality limit of them; sessions beyond share one binding, which the SDK resolves to
/// the overflow series. Dropped (its workload left the live set): its provider goes to the
/// export thread for the last export.
pub struct WorkloadMetrics {
    registry: Arc<Registry>,
    id: u64,
    duration: Histogram<f64>,
    payload: Counter<u64>,
    bound: HashMap<AttributeKey, Bound>,
    /// The binding of every attribute set beyond the limit: the overflow series.
    overflow: Option<Bound>,
    limit: usize,
}

/// What a session's attributes depend on: its span's name (origin and server port), kind
/// (origin) and status (error or not).
type AttributeKey = (u8, u16, bool);

/// One attribute set's instruments, bound; the payload counters at the first session whose
/// payload is known (a bound series is exported even when nothing was added to it).
struct Bound {
    duration: BoundHistogram<f64>,
    /// Transmit and receive.
    payload: Option<(BoundCounter<u64>, BoundCounter<u64>)>,
    /// Whether it is the overflow series.
    overflow: bool,
}

impl SessionMetrics {
    /// Starts the metrics, exported by `exporter` every `settings.interval`: the sessions of
    /// a workload under the workload's resource (built from `base`), the others under
    /// `shared` (the overflow resource, or the agent's one resource); at most
    /// `max_workloads` providers leave between two exports.
    pub fn start(
        exporter: impl PushMetricExporter,
        settings: MetricsSettings,
        (base, shared): (Resource, Resource),
        max_workloads: usize,
    ) -> std::io::Result<(Self, SessionRecorder)> {
        let (wake, woken) = mpsc::channel();
        let registry = Arc::new(Registry {
            sources: Mutex::new(Sources::default()),
            settings,
            max_leaving: max_workloads.max(1),
            wake: wake.clone(),
        });
        let thread = std::thread::Builder::new()
            .name("session-metrics".to_owned())
            .spawn({
                let registry = registry.clone();
                move || export_loop(&registry, &exporter, &woken)
            })?;
        let shared = registry.start(shared);
        let recorder = SessionRecorder {
            registry,
            base,
            shared,
        };
        Ok((Self { wake, thread }, recorder))
    }

    /// Exports one last time (the providers still live, and those left) and stops, giving
    /// up after `timeout`. The pipeline has ended: its workloads' metrics are dropped, so
    /// every provider is the export thread's. An export that fails is a warning; a panic is
    /// an error.
    pub async fn shutdown(self, timeout: Duration) -> Result<(), String> {
        // A thread that ended already (it panicked) no longer listens; its join says so.
        let _ = self.wake.send(Wake::Stop);
        let thread = self.thread;
        let join = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout(timeout, join).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(_)) | Err(_)) => {
                Err("the session metrics' export thread panicked".to_owned())
            }
            // The thread is left behind; the process exits without waiting for it.
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "the last session metrics were not exported: the shutdown deadline passed"
                );
                Ok(())
            }
        }
    }

    /// Exports every provider now, and returns when done.
    #[cfg(test)]
    fn export_now(&self) {
        let (done, wait) = mpsc::channel();
        self.wake.send(Wake::Now(done)).unwrap();
        wait.recv().unwrap();
    }
}

/// The export thread: every interval, or when woken.
fn export_loop(
    registry: &Registry,
    exporter: &impl PushMetricExporter,
    woken: &mpsc::Receiver<Wake>,
) {
    let interval = registry.settings.interval;
    let mut next = Instant::now() + interval;
    loop {
        match woken.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(Wake::Leaving) => export(exporter, registry, false),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                export(exporter, registry, true);
                next += interval;
                let now = Instant::now();
                if next < now {
                    next = now + interval;
                }
            }
            #[cfg(test)]
            Ok(Wake::Now(done)) => {
                export(exporter, registry, true);
                let _ = done.send(());
            }
            Ok(Wake::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                export(exporter, registry, true);
                if let Err(error) = exporter.shutdown() {
                    tracing::debug!(
                        error = %Escaped(&error.to_string()),
                        "the session metrics' exporter did not shut down cleanly"
                    );
                }
                return;
            }
        }
    }
}

/// Collects the providers leaving (then shuts them down) and, with `live`, the live ones,
/// and exports what has data points, one request per resource.
fn export(exporter: &impl PushMetricExporter, registry: &Registry, live: bool) {
    let (leaving, live) = registry.take(live);
    let mut failed = 0_usize;
    let mut last_error = String::new();
    for source in leaving.iter().chain(&live) {
        let mut metrics = ResourceMetrics::default();
        if let Err(error) = source.reader.collect(&mut metrics) {
            failed += 1;
            last_error = error.to_string();
            continue;
        }
        if metrics
            .scope_metrics()
            .all(|scope| scope.metrics().next().is_none())
        {
            continue;
        }
        if let Err(error) = futures_executor::block_on(exporter.export(&metrics)) {
            failed += 1;
            last_error = error.to_string();
        }
    }
    if failed > 0 {
        tracing::warn!(
            resources = failed,
            error = %Escaped(&last_error),
            "session metrics not exported"
        );
    }
    for source in leaving {
        // Its readers only: nothing is exported, nothing can fail that matters.
        let _ = source.provider.shutdown();
    }
}

impl Registry {
    /// A provider for `resource`, registered for export, and its instruments.
    fn start(self: &Arc<Self>, resource: Resource) -> WorkloadMetrics {
        let reader = Arc::new(
            ManualReader::builder()
                .with_temporality(self.settings.temporality)
                .build(),
        );
        let limit = self.settings.cardinality_limit;
        let provider = SdkMeterProvider::builder()
            .with_reader(SharedReader(reader.clone()))
            .with_resource(resource)
            .with_view(move |instrument: &Instrument| {
                let limit = match instrument.name() {
                    DURATION => limit,
                    PAYLOAD => limit.saturating_mul(2),
                    _ => return None,
                };
                Stream::builder().with_cardinality_limit(limit).build().ok()
            })
            .build();
        let meter = provider.meter(span::SCOPE_NAME);
        let duration = meter
            .f64_histogram(DURATION)
            .with_unit("s")
            .with_description("Closed TCP sessions: from birth to close")
            .with_boundaries(BOUNDARIES.to_vec())
            .build();
        let payload = meter
            .u64_counter(PAYLOAD)
            .with_unit("By")
            .with_description("Payload bytes of closed TCP sessions, by direction")
            .build();
        let id = {
            let mut sources = self.lock();
            let id = sources.next;
            sources.next += 1;
            sources
                .live
                .insert(id, Arc::new(Source { provider, reader }));
            id
        };
        WorkloadMetrics {
            registry: self.clone(),
            id,
            duration,
            payload,
            bound: HashMap::new(),
            overflow: None,
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sources to export: those leaving (taken: exported for the last time) and, with
    /// `live`, the live ones.
    fn take(&self, live: bool) -> (Vec<Arc<Source>>, Vec<Arc<Source>>) {
        let mut sources = self.lock();
        let leaving = std::mem::take(&mut sources.leaving);
        let live = if live {
            sources.live.values().cloned().collect()
        } else {
            Vec::new()
        };
        (leaving, live)
    }

    /// Moves a provider whose workload left to the leaving ones; wakes the export thread
    /// when they reach the bound.
    fn retire(&self, id: u64) {
        let full = {
            let mut sources = self.lock();
            let Some(source) = sources.live.remove(&id) else {
                return;
            };
            sources.leaving.push(source);
            sources.leaving.len() == self.max_leaving
        };
        if full {
            // The thread ended only at shutdown, after the pipeline: nothing is lost.
            let _ = self.wake.send(Wake::Leaving);
        }
    }
}

impl Drop for WorkloadMetrics {
    fn drop(&mut self) {
        self.registry.retire(self.id);
    }
}

impl PerWorkload for SessionRecorder {
    type State = WorkloadMetrics;

    fn admitted(&mut self, key: &WorkloadKey) -> WorkloadMetrics {
        self.registry.start(workload_resource(&self.base, key))
    }

    fn session(&mut self, session: &Session, state: Option<&mut WorkloadMetrics>) {
        state.unwrap_or(&mut self.shared).record(session);
    }
}

impl WorkloadMetrics {
    /// Counts one closed session.
    fn record(&mut self, session: &Session) {
        let key = (
            session.origin as u8,
            server_port(session),
            span::error_message(session).is_some(),
        );
        let (duration, counter) = (&self.duration, &self.payload);
        let bound = if self.bound.contains_key(&key) || self.bound.len() < self.limit {
            self.bound
                .entry(key)
                .or_insert_with(|| Bound::new(duration, Some(session)))
        } else {
            self.overflow
                .get_or_insert_with(|| Bound::new(duration, None))
        };
        bound.duration.record(session.duration().as_secs_f64());
        if let Some(payload) = session.payload {
            let overflowed = bound.overflow;
            let (transmit, receive) = bound.payload.get_or_insert_with(|| {
                if overflowed {
                    (counter.bind(&overflow()), counter.bind(&overflow()))
                } else {
                    let Attributes { transmit, receive } = attributes(session);
                    (counter.bind(&transmit), counter.bind(&receive))
                }
            });
            transmit.add(payload.sent);
            receive.add(payload.received);
        }
    }
}

impl Bound {
    /// The duration of `session`'s attribute set bound, or of the overflow series for
    /// `None`.
    fn new(duration: &Histogram<f64>, session: Option<&Session>) -> Self {
        let duration = match session {
            Some(session) => duration.bind(&attributes(session).transmit[..3]),
            None => duration.bind(&overflow()),
        };
        Self {
            duration,
            payload: None,
            overflow: session.is_none(),
        }
    }
}

/// The overflow series' attributes (the SDK puts there what is beyond the limit; binding it
/// by name keeps every session beyond the recorder's limit there, in both directions, even
/// while the payload counter's own limit is not reached).
fn overflow() -> [KeyValue; 1] {
    [KeyValue::new("otel.metric.overflow", true)]
}

/// One attribute set in both directions; the duration uses the first three.
struct Attributes {
    transmit: [KeyValue; 4],
    receive: [KeyValue; 4],
}

/// The port of the side that accepted: the span name's port.
fn server_port(session: &Session) -> u16 {
    match session.origin {
        Origin::Active => session.remote.port(),
        Origin::Passive => session.local.port(),
        Origin::Unknown => 0,
    }
}

/// The spanmetrics dimensions of `session`'s span, and each direction.
fn attributes(session: &Session) -> Attributes {
    let mut text = SpanText::default();
    text.fill(session);
    let kind = ProtoSpanKind::from(span::kind(session.origin)).as_str_name();
    let status = if span::error_message(session).is_some() {
        "STATUS_CODE_ERROR"
    } else {
        "STATUS_CODE_UNSET"
    };
    let dimensions = [
        KeyValue::new("span.name", text.name().to_owned()),
        KeyValue::new("span.kind", kind),
        KeyValue::new("status.code", status),
    ];
    let direction = |value: &'static str| {
        let [name, kind, status] = dimensions.clone();
        [
            name,
            kind,
            status,
            KeyValue::new("network.io.direction", value),
        ]
    };
    Attributes {
        transmit: direction("transmit"),
        receive: direction("receive"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry_sdk::metrics::{
        InMemoryMetricExporter, InMemoryMetricExporterBuilder,
        data::{AggregatedMetrics, MetricData, ResourceMetrics},
    };

    use super::*;
    use crate::{
        export::workload::{IDLE_AFTER, ResourceMode, WorkloadTable, overflow_resource},
        session::{Payload, tests::client_session},
    };

    fn settings(limit: usize, temporality: Temporality) -> MetricsSettings {
        MetricsSettings {
            interval: Duration::from_secs(3600),
            temporality,
            cardinality_limit: limit,
        }
    }

    fn started(
        settings: MetricsSettings,
    ) -> (InMemoryMetricExporter, SessionMetrics, SessionRecorder) {
        let exporter = InMemoryMetricExporterBuilder::new()
            .with_temporality(settings.temporality)
            .build();
        let (metrics, recorder) = SessionMetrics::start(
            exporter.clone(),
            settings,
            (base(), overflow_resource(&base())),
            4,
        )
        .unwrap();
        (exporter, metrics, recorder)
    }

    fn base() -> Resource {
        Resource::builder_empty()
            .with_attributes([KeyValue::new("host.name", "node-1")])
            .build()
    }

    /// The points of the last export: for the histogram, its attributes (sorted
    /// `key=value`) -> (count, sum); for the counter, attributes -> value.
    fn histogram(metrics: &[ResourceMetrics]) -> HashMap<Vec<String>, (u64, f64)> {
        let Some(AggregatedMetrics::F64(MetricData::Histogram(histogram))) =
            find(metrics, DURATION)
        else {
            panic!("no histogram {DURATION}");
        };
        histogram
            .data_points()
            .map(|point| (sorted(point.attributes()), (point.count(), point.sum())))
            .collect()
    }

    fn counter(metrics: &[ResourceMetrics]) -> HashMap<Vec<String>, u64> {
        let Some(AggregatedMetrics::U64(MetricData::Sum(sum))) = find(metrics, PAYLOAD) else {
            panic!("no counter {PAYLOAD}");
        };
        sum.data_points()
            .map(|point| (sorted(point.attributes()), point.value()))
            .collect()
    }

    fn find<'a>(metrics: &'a [ResourceMetrics], name: &str) -> Option<&'a AggregatedMetrics> {
        metrics
            .last()?
            .scope_metrics()
            .flat_map(|scope| scope.metrics())
            .find(|metric| metric.name() == name)
            .map(|metric| metric.data())
    }

    fn sorted<'a>(attributes: impl Iterator<Item = &'a KeyValue>) -> Vec<String> {
        let mut list: Vec<_> = attributes
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        list.sort();
        list
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A client session to `port`, `millis` long, that sent and received these payloads.
    fn session(port: u16, millis: u64, payload: Option<(u64, u64)>, established: bool) -> Session {
        let mut session = client_session();
        session.remote.set_port(port);
        session.end = session.start + Duration::from_millis(millis);
        session.payload = payload.map(|(sent, received)| Payload { sent, received });
        session.established = established;
        session
    }

    #[test]
    fn every_session_is_counted_with_the_spanmetrics_dimensions() {
        let (exporter, metrics, mut recorder) =
            started(settings(DEFAULT_CARDINALITY_LIMIT, Temporality::Cumulative));
        recorder.session(&session(8080, 1500, Some((100, 20)), true), None);
        recorder.session(&session(8080, 500, Some((1, 2)), true), None);
        recorder.session(&session(9, 0, None, false), None);
        let mut server = session(8080, 250, Some((7, 3)), true);
        server.origin = Origin::Passive;
        server.local.set_port(8080);
        recorder.session(&server, None);
        metrics.export_now();
        let exported = exporter.get_finished_metrics().unwrap();

        let connect = [
            "span.kind=SPAN_KIND_CLIENT",
            "span.name=tcp connect :8080",
            "status.code=STATUS_CODE_UNSET",
        ];
        let accept = [
            "span.kind=SPAN_KIND_SERVER",
            "span.name=tcp accept :8080",
            "status.code=STATUS_CODE_UNSET",
        ];
        let refused = [
            "span.kind=SPAN_KIND_CLIENT",
            "span.name=tcp connect :9",
            "status.code=STATUS_CODE_ERROR",
        ];
        assert_eq!(
            histogram(&exported),
            HashMap::from([
                (strings(&connect), (2, 2.0)),
                (strings(&accept), (1, 0.25)),
                (strings(&refused), (1, 0.0)),
            ])
        );
        let with = |dimensions: &[&str], direction: &str| {
            let mut list = strings(dimensions);
            list.push(format!("network.io.direction={direction}"));
            list.sort();
            list
        };
        assert_eq!(
            counter(&exported),
            HashMap::from([
                (with(&connect, "transmit"), 101),
                (with(&connect, "receive"), 22),
                (with(&accept, "transmit"), 7),
                (with(&accept, "receive"), 3),
            ])
        );
    }

    #[test]
    fn beyond_the_cardinality_limit_sessions_land_in_the_overflow_series() {
        let (exporter, metrics, mut recorder) = started(settings(3, Temporality::Cumulative));
        // A port scan: 10 ports, one session each, then one more to a port seen first.
        for port in 1..=10 {
            recorder.session(&session(port, 1000, Some((1, 1)), true), None);
        }
        recorder.session(&session(1, 1000, Some((1, 1)), true), None);
        metrics.export_now();
        let points = histogram(&exporter.get_finished_metrics().unwrap());
        assert_eq!(points.len(), 4, "{points:?}");
        assert_eq!(points[&strings(&["otel.metric.overflow=true"])], (7, 7.0));
        let first = strings(&[
            "span.kind=SPAN_KIND_CLIENT",
            "span.name=tcp connect :1",
            "status.code=STATUS_CODE_UNSET",
        ]);
        assert_eq!(points[&first], (2, 2.0));
        // Every session is still counted once.
        assert_eq!(points.values().map(|(count, _)| count).sum::<u64>(), 11);
        // The payload of the sessions beyond the limit, both directions, in the overflow
        // series (the counter's own limit, 6, is not reached).
        let payload = counter(&exporter.get_finished_metrics().unwrap());
        assert_eq!(payload.len(), 7, "{payload:?}");
        assert_eq!(payload[&strings(&["otel.metric.overflow=true"])], 14);
        // The recorder binds no more than the limit, and one overflow binding.
        assert_eq!(recorder.shared.bound.len(), 3);
        assert!(recorder.shared.overflow.is_some());
    }

    #[test]
    fn delta_temporality_reports_each_interval_alone() {
        let (exporter, metrics, mut recorder) = started(settings(10, Temporality::Delta));
        recorder.session(&session(80, 10, None, true), None);
        metrics.export_now();
        recorder.session(&session(80, 10, None, true), None);
        recorder.session(&session(80, 10, None, true), None);
        metrics.export_now();
        let exported = exporter.get_finished_metrics().unwrap();
        let count = |metrics: &[ResourceMetrics]| {
            histogram(metrics)
                .values()
                .map(|(count, _)| count)
                .sum::<u64>()
        };
        assert_eq!(count(&exported[..1]), 1);
        assert_eq!(count(&exported), 2);
    }

    /// Each export's resources: `service.name` (or `overflow` for the overflow resource)
    /// -> the duration histogram's count.
    fn counts_by_resource(exports: &[ResourceMetrics]) -> Vec<(String, u64)> {
        let mut list: Vec<(String, u64)> = exports
            .iter()
            .map(|metrics| {
                let resource = metrics.resource();
                let name = if resource
                    .get(&opentelemetry::Key::from_static_str(
                        crate::export::workload::OVERFLOW_ATTRIBUTE,
                    ))
                    .is_some()
                {
                    "overflow".to_owned()
                } else {
                    resource
                        .get(&opentelemetry::Key::from_static_str("service.name"))
                        .map(|value| value.as_str().into_owned())
                        .unwrap_or_default()
                };
                let count = histogram(std::slice::from_ref(metrics))
                    .values()
                    .map(|(count, _)| count)
                    .sum();
                (name, count)
            })
            .collect();
        list.sort();
        list
    }

    fn exe_session(exe: &str) -> Session {
        Session {
            exe: Some(exe.into()),
            comm: exe.to_owned(),
            ..session(8080, 10, Some((1, 1)), true)
        }
    }

    #[test]
    fn each_workload_has_its_resource_and_the_overflow_its_own() {
        let (exporter, metrics, mut recorder) =
            started(settings(DEFAULT_CARDINALITY_LIMIT, Temporality::Cumulative));
        let mut table = WorkloadTable::new(ResourceMode::Workload, 2);
        let start = Instant::now();
        let mut sessions: Vec<Session> = ["a", "b", "a", "c", "a", "c"]
            .into_iter()
            .map(exe_session)
            .collect();
        assert_eq!(table.admit(&mut sessions, start, &mut recorder), 2);
        metrics.export_now();
        let first = exporter.get_finished_metrics().unwrap();
        assert_eq!(
            counts_by_resource(&first),
            [("a".into(), 3), ("b".into(), 1), ("overflow".into(), 2)]
        );
        // The workload's resource is the span's: the agent's attributes, its own name.
        let a = first
            .iter()
            .find(|m| {
                m.resource()
                    .get(&opentelemetry::Key::from_static_str("service.name"))
                    .is_some_and(|name| name.as_str() == "a")
            })
            .unwrap();
        let key = WorkloadKey::of(ResourceMode::Workload, &sessions[0]).unwrap();
        assert_eq!(a.resource(), &workload_resource(&base(), &key));

        // a and b leave (idle), d takes a place: a and b are exported one last time with
        // what they had (cumulative), then never again.
        exporter.reset();
        let mut later = vec![exe_session("d")];
        assert_eq!(
            table.admit(&mut later, start + IDLE_AFTER, &mut recorder),
            0
        );
        metrics.export_now();
        assert_eq!(
            counts_by_resource(&exporter.get_finished_metrics().unwrap()),
            [
                ("a".into(), 3),
                ("b".into(), 1),
                ("d".into(), 1),
                ("overflow".into(), 2)
            ]
        );
        exporter.reset();
        metrics.export_now();
        assert_eq!(
            counts_by_resource(&exporter.get_finished_metrics().unwrap()),
            [("d".into(), 1), ("overflow".into(), 2)]
        );
    }

    #[test]
    fn the_shutdown_exports_every_resource_one_last_time() {
        let (exporter, metrics, mut recorder) =
            started(settings(DEFAULT_CARDINALITY_LIMIT, Temporality::Delta));
        let mut table = WorkloadTable::new(ResourceMode::Workload, 8);
        let mut sessions = vec![exe_session("a"), exe_session("b"), exe_session("a")];
        table.admit(&mut sessions, Instant::now(), &mut recorder);
        // The pipeline ends first: its table and recorder are dropped.
        drop((table, recorder));
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(metrics.shutdown(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(
            counts_by_resource(&exporter.get_finished_metrics().unwrap()),
            [("a".into(), 2), ("b".into(), 1)]
        );
    }

    #[test]
    fn settings_come_from_the_standard_variables_and_bad_ones_are_named() {
        let resolve = |vars: &[(&str, &str)]| {
            let vars: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            MetricsSettings::resolve(5, |name| vars.get(name).cloned())
        };
        assert_eq!(
            resolve(&[]),
            Ok(MetricsSettings {
                interval: Duration::from_secs(60),
                temporality: Temporality::Cumulative,
                cardinality_limit: 5,
            })
        );
        let set = resolve(&[
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
        ])
        .unwrap();
        assert_eq!(set.interval, Duration::from_millis(1500));
        assert_eq!(set.temporality, Temporality::Delta);
        assert_eq!(
            resolve(&[("OTEL_METRIC_EXPORT_INTERVAL", "0")])
                .unwrap_err()
                .to_string(),
            "OTEL_METRIC_EXPORT_INTERVAL=`0` is invalid: a positive integer number of milliseconds"
        );
        assert!(
            resolve(&[("OTEL_METRIC_EXPORT_INTERVAL", "5s")])
                .unwrap_err()
                .to_string()
                .contains("an integer number of milliseconds")
        );
        assert_eq!(
            resolve(&[("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "gauge")])
                .unwrap_err()
                .to_string(),
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=`gauge` is invalid: cumulative, \
             delta or lowmemory"
        );
    }
}
