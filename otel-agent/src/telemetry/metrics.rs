//! Self-telemetry: the agent's accounting ([`Snapshot`]) exported as OTLP metrics to the
//! same collector as the spans, every stats interval. Every metric name is spelled here.
//!
//! | metric | kind | attributes | meaning |
//! |---|---|---|---|
//! | `otel_agent.sessions.closed` | counter | | records the probe wrote (closed sessions) |
//! | `otel_agent.sessions.read` | counter | | records the agent read from the ring buffer |
//! | `otel_agent.sessions.exported` | counter | `output` | sessions whose spans an output exported |
//! | `otel_agent.sessions.written` | counter | `output` (`console`, `json`) | sessions a local output wrote |
//! | `otel_agent.sessions.unconfirmed` | counter | `output` | sessions of requests answered with a success that was not an OTLP response (may not have arrived) |
//! | `otel_agent.sessions.lost` | counter | `cause` (`ring_buffer_full`, `probe_skipped`, `decode_error`, `channel_full`, `queue_full`, `rejected`, `output_full`, `output_failed`, `spool_full`, `spool_torn`, `at_shutdown`), `output` (the output's causes) | sessions lost, by cause ([`LossCause`]; `probe_skipped`: an upper bound) |
//! | `otel_agent.probe.skipped` | counter | `program` (`inet_sock_set_state`, `tcp_receive_reset`, `sys_exit_accept`) | tracepoint hits the kernel skipped (`recursion_misses`; for `inet_sock_set_state`, those the backup program did not handle) |
//! | `otel_agent.sessions.filtered` | counter | `cause` (`at_birth`, `after_tracking`, `unknown_birth`, `sampled_out`, `drop_port`, `drop_peer`, `drop_process`) | sessions deliberately left out, by cause ([`FilterCause`]; the last four by the sampler and its drop rules, after the session metrics counted them) |
//! | `otel_agent.sessions.kept` | counter | `rule` (`failed`, `long`) | sessions a keep rule kept whatever the sampler said |
//! | `otel_agent.sessions.degraded` | counter | `cause` (`birth_not_seen`, `evicted`, `map_update_failed`, `probe_skipped_reset`, `probe_skipped_accept`, `container_unresolved`, `workload_overflow`) | sessions reported with less than they should carry, by cause ([`Degradation`]; `evicted` once the probe is detached) |
//! | `otel_agent.sessions.birth_not_seen` | counter | | sessions reported with an unknown birth (the same as `degraded` with `cause=birth_not_seen`) |
//! | `otel_agent.export.errors` | counter | `output` | failed export attempts (each retried) |
//! | `otel_agent.export.queue.depth` | gauge | `output` | sessions waiting for export |
//! | `otel_agent.spool.spooled` | counter | `output` | sessions this agent wrote to the disk spool |
//! | `otel_agent.spool.delivered` | counter | `output` | sessions delivered from the spool (part of `exported`) |
//! | `otel_agent.spool.sessions` | gauge | `output` | sessions in the spool |
//! | `otel_agent.spool.bytes` | gauge | `output` | bytes of the spool's files |

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::{AsyncInstrument, Meter, MeterProvider as _},
};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use crate::{
    accounting::{Degradation, FilterCause, LossCause, OutputKind, Stage},
    export::{self, ExportError, config::OtlpTarget, resource::agent_resource},
    sampling::rules::KeepRule,
    stats::{ExportSnapshot, Snapshot},
};

/// The running self-telemetry.
pub struct SelfMetrics {
    provider: SdkMeterProvider,
    latest: Arc<Mutex<Snapshot>>,
}

type Observe = fn(&Snapshot, &dyn AsyncInstrument<u64>);
/// One export output's figure.
type ExportValue = fn(&ExportSnapshot) -> u64;

impl SelfMetrics {
    /// Starts exporting to `target` every `interval`.
    pub fn start(target: &OtlpTarget, interval: Duration) -> Result<Self, ExportError> {
        let reader = PeriodicReader::builder(export::metric_exporter(target, None)?)
            .with_interval(interval)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(agent_resource())
            .build();
        let latest = Arc::new(Mutex::new(Snapshot::default()));
        register(&provider.meter("otel-agent"), &latest);
        Ok(Self { provider, latest })
    }

    /// Makes `snapshot` what the next export reports.
    pub fn update(&self, snapshot: Snapshot) {
        if let Ok(mut latest) = self.latest.lock() {
            *latest = snapshot;
        }
    }

    /// Exports the last snapshot and stops, giving up after `timeout`
    /// ([`export::shutdown_meter_provider`]).
    pub async fn shutdown(self, timeout: Duration) -> Result<(), String> {
        export::shutdown_meter_provider(self.provider, timeout, "self-metrics").await
    }
}

/// A callback observing `value` of each export output of the latest snapshot, with its
/// `output` attribute.
fn per_output(
    latest: &Arc<Mutex<Snapshot>>,
    value: ExportValue,
) -> impl Fn(&dyn AsyncInstrument<u64>) + Send + Sync + 'static {
    let latest = latest.clone();
    move |instrument| {
        if let Ok(snapshot) = latest.lock() {
            for export in &snapshot.exports {
                instrument.observe(value(export), &[KeyValue::new("output", export.output)]);
            }
        }
    }
}

fn register(meter: &Meter, latest: &Arc<Mutex<Snapshot>>) {
    let counter = |name: &'static str, description: &'static str, observe: Observe| {
        let latest = latest.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |instrument| {
                if let Ok(snapshot) = latest.lock() {
                    observe(&snapshot, instrument);
                }
            })
            .build();
    };
    // A counter with a data point per export output.
    let per_export = |name: &'static str, description: &'static str, value: ExportValue| {
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(per_output(latest, value))
            .build();
    };
    counter(
        "otel_agent.sessions.closed",
        "Closed sessions the probe recorded",
        |s, i| {
            i.observe(s.kernel.emitted, &[]);
        },
    );
    counter(
        "otel_agent.sessions.read",
        "Session records read from the ring buffer",
        |s, i| {
            i.observe(s.records_read, &[]);
        },
    );
    per_export(
        "otel_agent.sessions.exported",
        "Sessions exported, by output",
        |export| export.exported,
    );
    per_export(
        "otel_agent.sessions.unconfirmed",
        "Sessions answered with a success that was not an OTLP response, by output",
        |export| export.exported_unconfirmed,
    );
    counter(
        "otel_agent.sessions.lost",
        "Sessions lost, by cause",
        |s, i| {
            let cause = |cause: LossCause| KeyValue::new("cause", cause.name());
            for loss in
                LossCause::of_stage(Stage::Kernel).chain(LossCause::of_stage(Stage::Pipeline))
            {
                i.observe(s.lost(loss), &[cause(loss)]);
            }
            for export in &s.exports {
                let output = KeyValue::new("output", export.output);
                for loss in LossCause::of_output(OutputKind::Export) {
                    i.observe(export.lost(loss), &[cause(loss), output.clone()]);
                }
            }
            for local in &s.locals {
                let output = KeyValue::new("output", local.output);
                for loss in LossCause::of_output(OutputKind::Local) {
                    i.observe(local.lost(loss), &[cause(loss), output.clone()]);
                }
            }
        },
    );
    counter(
        "otel_agent.probe.skipped",
        "Tracepoint hits the kernel skipped because a BPF program was running, by program",
        |s, i| {
            let program = |name: &'static str| [KeyValue::new("program", name)];
            i.observe(
                s.kernel.skipped_state_change,
                &program("inet_sock_set_state"),
            );
            i.observe(
                s.kernel.skipped_receive_reset,
                &program("tcp_receive_reset"),
            );
            i.observe(s.kernel.skipped_accept, &program("sys_exit_accept"));
        },
    );
    counter(
        "otel_agent.sessions.written",
        "Sessions a local output wrote, by output",
        |s, i| {
            for local in &s.locals {
                i.observe(local.written, &[KeyValue::new("output", local.output)]);
            }
        },
    );
    counter(
        "otel_agent.sessions.filtered",
        "Sessions deliberately left out, by cause",
        |s, i| {
            for cause in FilterCause::ALL {
                i.observe(s.filtered(cause), &[KeyValue::new("cause", cause.name())]);
            }
        },
    );
    counter(
        "otel_agent.sessions.kept",
        "Sessions a keep rule kept whatever the sampler said, by rule",
        |s, i| {
            for rule in KeepRule::ALL {
                i.observe(s.sampling.kept(rule), &[KeyValue::new("rule", rule.name())]);
            }
        },
    );
    counter(
        "otel_agent.sessions.degraded",
        "Sessions reported with less than they should carry, by cause",
        |s, i| {
            for cause in Degradation::ALL {
                if let Some(value) = s.degraded(cause) {
                    i.observe(value, &[KeyValue::new("cause", cause.name())]);
                }
            }
        },
    );
    counter(
        "otel_agent.sessions.birth_not_seen",
        "Sessions reported with an unknown birth",
        |s, i| {
            i.observe(s.kernel.birth_not_seen, &[]);
        },
    );
    per_export(
        "otel_agent.export.errors",
        "Failed export attempts, by output",
        |export| export.export_errors,
    );
    per_export(
        "otel_agent.spool.spooled",
        "Sessions written to the disk spool, by output",
        |export| export.spool.spooled,
    );
    per_export(
        "otel_agent.spool.delivered",
        "Sessions delivered from the disk spool, by output",
        |export| export.spool.delivered,
    );
    let gauge = |name: &'static str, description: &'static str, value: ExportValue| {
        meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(per_output(latest, value))
            .build();
    };
    gauge(
        "otel_agent.export.queue.depth",
        "Sessions waiting for export, by output",
        |export| export.queued,
    );
    gauge(
        "otel_agent.spool.sessions",
        "Sessions in the disk spool, by output",
        |export| export.spool.left,
    );
    gauge(
        "otel_agent.spool.bytes",
        "Bytes of the disk spool's files, by output",
        |export| export.spool.bytes,
    );
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::metrics::{
        InMemoryMetricExporter,
        data::{AggregatedMetrics, MetricData},
    };

    use super::*;
    use crate::{
        probe::KernelCounters,
        sampling::SamplingCounts,
        stats::{LocalSnapshot, SpoolSnapshot},
    };

    /// Every data point of the counter `name`: its attributes as `key=value` and its value.
    fn points(exporter: &InMemoryMetricExporter, name: &str) -> Vec<(Vec<String>, u64)> {
        let metrics = exporter.get_finished_metrics().unwrap();
        let metric = metrics
            .iter()
            .flat_map(|resource| resource.scope_metrics())
            .flat_map(|scope| scope.metrics())
            .find(|metric| metric.name() == name)
            .unwrap_or_else(|| panic!("no metric {name}"));
        let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
            panic!("{name} is not a u64 sum");
        };
        let mut points: Vec<_> = sum
            .data_points()
            .map(|point| {
                let mut attributes: Vec<_> = point
                    .attributes()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect();
                attributes.sort();
                (attributes, point.value())
            })
            .collect();
        points.sort();
        points
    }

    /// The self-metrics of `snapshot`, exported once.
    fn observed(snapshot: Snapshot) -> InMemoryMetricExporter {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        register(&provider.meter("test"), &Arc::new(Mutex::new(snapshot)));
        provider.force_flush().unwrap();
        exporter
    }

    /// The value of `name`'s data point whose attribute `key` is `value`.
    fn point(exporter: &InMemoryMetricExporter, name: &str, key: &str, value: &str) -> u64 {
        let wanted = format!("{key}={value}");
        points(exporter, name)
            .into_iter()
            .find(|(attributes, _)| attributes.contains(&wanted))
            .unwrap_or_else(|| panic!("no {wanted} point of {name}"))
            .1
    }

    #[test]
    fn skipped_probe_hits_are_a_loss_cause_and_counted_per_program() {
        let exporter = observed(Snapshot {
            kernel: KernelCounters {
                skipped_state_change: 266,
                skipped_receive_reset: 3,
                skipped_accept: 5,
                ring_buffer_full: 7,
                ..KernelCounters::default()
            },
            ..Snapshot::default()
        });

        let lost = "otel_agent.sessions.lost";
        assert_eq!(point(&exporter, lost, "cause", "probe_skipped"), 266);
        assert_eq!(point(&exporter, lost, "cause", "ring_buffer_full"), 7);
        let skipped = "otel_agent.probe.skipped";
        assert_eq!(
            point(&exporter, skipped, "program", "inet_sock_set_state"),
            266
        );
        assert_eq!(point(&exporter, skipped, "program", "tcp_receive_reset"), 3);
        assert_eq!(point(&exporter, skipped, "program", "sys_exit_accept"), 5);
    }

    #[test]
    fn every_cause_is_a_data_point_under_its_one_name() {
        let exporter = observed(Snapshot {
            kernel: KernelCounters {
                ring_buffer_full: 1,
                skipped_state_change: 10,
                skipped_receive_reset: 24,
                skipped_accept: 25,
                filtered_at_birth: 11,
                filtered_after_tracking: 12,
                unknown_birth_skipped: 13,
                birth_not_seen: 21,
                map_update_failed: 23,
                tracked: 30,
                released: 8,
                open_at_detach: Some(0),
                ..KernelCounters::default()
            },
            lost_decode_error: 2,
            lost_channel_full: 3,
            container_unresolved: 26,
            workload_overflow: 27,
            sampling: SamplingCounts {
                sampled_out: 14,
                drop_port: 15,
                drop_peer: 16,
                drop_process: 17,
                kept_failed: 18,
                kept_long: 19,
            },
            exports: vec![ExportSnapshot {
                output: "otlp",
                lost_queue_full: 4,
                lost_rejected: 5,
                lost_at_shutdown: 6,
                spool: SpoolSnapshot {
                    lost_full: 14,
                    lost_torn: 15,
                    spooled: 16,
                    delivered: 17,
                    left: 18,
                    bytes: 19,
                    ..SpoolSnapshot::default()
                },
                ..ExportSnapshot::default()
            }],
            locals: vec![LocalSnapshot {
                output: "console",
                lost_output_full: 7,
                lost_output_failed: 8,
                lost_at_shutdown: 9,
                ..LocalSnapshot::default()
            }],
            ..Snapshot::default()
        });

        // `name`'s points are exactly `expected` ((attributes, value), in any order).
        let check = |name: &str, expected: &[(&[&str], u64)]| {
            let mut expected: Vec<(Vec<String>, u64)> = expected
                .iter()
                .map(|(attributes, value)| {
                    let attributes = attributes.iter().map(|a| (*a).to_owned()).collect();
                    (attributes, *value)
                })
                .collect();
            expected.sort();
            assert_eq!(points(&exporter, name), expected, "{name}");
        };
        check(
            "otel_agent.sessions.lost",
            &[
                (&["cause=ring_buffer_full"], 1),
                (&["cause=probe_skipped"], 10),
                (&["cause=decode_error"], 2),
                (&["cause=channel_full"], 3),
                (&["cause=queue_full", "output=otlp"], 4),
                (&["cause=rejected", "output=otlp"], 5),
                (&["cause=at_shutdown", "output=otlp"], 6),
                (&["cause=spool_full", "output=otlp"], 14),
                (&["cause=spool_torn", "output=otlp"], 15),
                (&["cause=output_full", "output=console"], 7),
                (&["cause=output_failed", "output=console"], 8),
                (&["cause=at_shutdown", "output=console"], 9),
            ],
        );
        check(
            "otel_agent.sessions.filtered",
            &[
                (&["cause=at_birth"], 11),
                (&["cause=after_tracking"], 12),
                (&["cause=unknown_birth"], 13),
                (&["cause=sampled_out"], 14),
                (&["cause=drop_port"], 15),
                (&["cause=drop_peer"], 16),
                (&["cause=drop_process"], 17),
            ],
        );
        check(
            "otel_agent.sessions.kept",
            &[(&["rule=failed"], 18), (&["rule=long"], 19)],
        );
        check(
            "otel_agent.sessions.degraded",
            &[
                (&["cause=birth_not_seen"], 21),
                (&["cause=evicted"], 22),
                (&["cause=map_update_failed"], 23),
                (&["cause=probe_skipped_reset"], 24),
                (&["cause=probe_skipped_accept"], 25),
                (&["cause=container_unresolved"], 26),
                (&["cause=workload_overflow"], 27),
            ],
        );
        check("otel_agent.spool.spooled", &[(&["output=otlp"], 16)]);
        check("otel_agent.spool.delivered", &[(&["output=otlp"], 17)]);
    }
}
