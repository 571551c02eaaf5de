//! The session metrics: every closed session counted over OTLP next to the spans, before
//! the sampler and its rules decide, so that counts, durations and bytes stay exact
//! whatever the sampler keeps. Recorded through the OpenTelemetry SDK (its aggregation,
//! temporality, cardinality limit and periodic reader), on the agent's resource.
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
//! Settings, validated at start-up: `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds, default
//! 60000), `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` (`cumulative`, the default,
//! `delta` or `lowmemory`), and a cardinality limit per metric: beyond it, new attribute sets
//! are aggregated into one series whose only attribute is `otel.metric.overflow=true`, as the
//! SDK specification says (the SDK's `ValueMap` does this: `limit` distinct sets, then the
//! overflow series; with cumulative temporality the sets seen before stay). The payload
//! counter's limit is twice the histogram's (two directions). The provider's shutdown
//! exports one last time.

use std::{collections::HashMap, time::Duration};

use common::user::Origin;
use opentelemetry::{
    KeyValue,
    metrics::{BoundCounter, BoundHistogram, Counter, Histogram, MeterProvider as _},
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as ProtoSpanKind;
use opentelemetry_sdk::{
    Resource,
    metrics::{
        Instrument, PeriodicReader, SdkMeterProvider, Stream, Temporality,
        exporter::PushMetricExporter,
    },
};

use super::{
    config::{ConfigError, parse_millis},
    span::{self, SpanText},
};
use crate::session::Session;

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

/// The running session metrics: the provider, kept for the last export at shutdown.
pub struct SessionMetrics {
    provider: SdkMeterProvider,
}

/// Records sessions into the metrics (the pipeline's half).
///
/// Each attribute set is bound once (the SDK's bound instruments: a measurement then goes
/// straight to its aggregator, without hashing the attributes again), at most the
/// cardinality limit of them; sessions beyond share one binding, which the SDK resolves to
/// the overflow series.
pub struct SessionRecorder {
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
    /// Starts the metrics, exported by `exporter` every `settings.interval`, under
    /// `resource`.
    pub fn start(
        exporter: impl PushMetricExporter,
        settings: MetricsSettings,
        resource: Resource,
    ) -> (Self, SessionRecorder) {
        let reader = PeriodicReader::builder(exporter)
            .with_interval(settings.interval)
            .build();
        let limit = settings.cardinality_limit;
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
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
        let recorder = SessionRecorder {
            duration,
            payload,
            bound: HashMap::new(),
            overflow: None,
            limit,
        };
        (Self { provider }, recorder)
    }

    /// Exports one last time and stops (see [`super::shutdown_meter_provider`]).
    pub async fn shutdown(self, timeout: Duration) -> Result<(), String> {
        super::shutdown_meter_provider(self.provider, timeout, "session metrics").await
    }
}

impl SessionRecorder {
    /// Counts one closed session.
    pub fn record(&mut self, session: &Session) {
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
    use crate::session::{Payload, tests::client_session};

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
            Resource::builder_empty().build(),
        );
        (exporter, metrics, recorder)
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
        recorder.record(&session(8080, 1500, Some((100, 20)), true));
        recorder.record(&session(8080, 500, Some((1, 2)), true));
        recorder.record(&session(9, 0, None, false));
        let mut server = session(8080, 250, Some((7, 3)), true);
        server.origin = Origin::Passive;
        server.local.set_port(8080);
        recorder.record(&server);
        metrics.provider.force_flush().unwrap();
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
            recorder.record(&session(port, 1000, Some((1, 1)), true));
        }
        recorder.record(&session(1, 1000, Some((1, 1)), true));
        metrics.provider.force_flush().unwrap();
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
        assert_eq!(recorder.bound.len(), 3);
        assert!(recorder.overflow.is_some());
    }

    #[test]
    fn delta_temporality_reports_each_interval_alone() {
        let (exporter, metrics, mut recorder) = started(settings(10, Temporality::Delta));
        recorder.record(&session(80, 10, None, true));
        metrics.provider.force_flush().unwrap();
        recorder.record(&session(80, 10, None, true));
        recorder.record(&session(80, 10, None, true));
        metrics.provider.force_flush().unwrap();
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
