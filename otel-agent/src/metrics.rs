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
//! | `otel_agent.sessions.lost` | counter | `cause` (`ring_buffer_full`, `probe_skipped`, `decode_error`, `channel_full`, `queue_full`, `shutdown`, `rejected_by_collector`, `output_full`, `output_failed`), `output` | sessions lost, by cause (`probe_skipped`: an upper bound) |
//! | `otel_agent.probe.skipped` | counter | `program` (`inet_sock_set_state`, `tcp_receive_reset`, `sys_exit_accept`) | tracepoint hits the kernel skipped (`recursion_misses`; for `inet_sock_set_state`, those the backup program did not handle) |
//! | `otel_agent.sessions.filtered` | counter | `stage` (`birth`, `after_tracking`) | sessions a filter rejected |
//! | `otel_agent.sessions.birth_not_seen` | counter | | sessions reported with an unknown birth |
//! | `otel_agent.export.errors` | counter | `output` | failed export attempts (each retried) |
//! | `otel_agent.export.queue.depth` | gauge | `output` | sessions waiting for export |

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
    export::{self, ExportError, config::OtlpTarget},
    log_text::Escaped,
    resource::agent_resource,
    stats::Snapshot,
};

/// The running self-telemetry.
pub struct SelfMetrics {
    provider: SdkMeterProvider,
    latest: Arc<Mutex<Snapshot>>,
}

type Observe = fn(&Snapshot, &dyn AsyncInstrument<u64>);

impl SelfMetrics {
    /// Starts exporting to `target` every `interval`.
    pub fn start(target: &OtlpTarget, interval: Duration) -> Result<Self, ExportError> {
        let reader = PeriodicReader::builder(export::metric_exporter(target)?)
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

    /// Exports the last snapshot and stops, giving up after `timeout` (what remains of the
    /// shutdown deadline: the SDK's own shutdown waits up to 5 s whatever it is told). An
    /// export that fails or is cut short is a warning; a panic is an error.
    pub async fn shutdown(self, timeout: Duration) -> Result<(), String> {
        let provider = self.provider;
        let shutdown = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(timeout, shutdown).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => {
                tracing::warn!(
                    error = %Escaped(&error.to_string()),
                    "the last self-metrics were not exported"
                );
                Ok(())
            }
            Ok(Err(error)) => Err(format!(
                "the self-metrics shutdown panicked: {}",
                Escaped(&error.to_string())
            )),
            // The blocking thread is left behind; the process exits without waiting for it.
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "the last self-metrics were not exported: the shutdown deadline passed"
                );
                Ok(())
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
    counter(
        "otel_agent.sessions.exported",
        "Sessions exported, by output",
        |s, i| {
            for export in &s.exports {
                i.observe(export.exported, &[KeyValue::new("output", export.output)]);
            }
        },
    );
    counter(
        "otel_agent.sessions.unconfirmed",
        "Sessions answered with a success that was not an OTLP response, by output",
        |s, i| {
            for export in &s.exports {
                i.observe(
                    export.unconfirmed,
                    &[KeyValue::new("output", export.output)],
                );
            }
        },
    );
    counter(
        "otel_agent.sessions.lost",
        "Sessions lost, by cause",
        |s, i| {
            let cause = |cause: &'static str| [KeyValue::new("cause", cause)];
            i.observe(s.kernel.ring_buffer_full, &cause("ring_buffer_full"));
            i.observe(s.kernel.skipped_state_change, &cause("probe_skipped"));
            i.observe(s.decode_errors, &cause("decode_error"));
            i.observe(s.channel_full, &cause("channel_full"));
            for export in &s.exports {
                let output = KeyValue::new("output", export.output);
                let with = |cause: &'static str| [KeyValue::new("cause", cause), output.clone()];
                i.observe(export.dropped_queue_full, &with("queue_full"));
                i.observe(export.dropped_at_shutdown, &with("shutdown"));
                i.observe(export.rejected, &with("rejected_by_collector"));
            }
            for local in &s.locals {
                let output = KeyValue::new("output", local.output);
                let with = |cause: &'static str| [KeyValue::new("cause", cause), output.clone()];
                i.observe(local.lost_output_full, &with("output_full"));
                i.observe(local.lost_output_failed, &with("output_failed"));
                i.observe(local.lost_at_shutdown, &with("shutdown"));
            }
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
        "otel_agent.sessions.filtered",
        "Sessions rejected by a filter",
        |s, i| {
            i.observe(
                s.kernel.filtered_at_birth,
                &[KeyValue::new("stage", "birth")],
            );
            i.observe(
                s.kernel.filtered_after_tracking,
                &[KeyValue::new("stage", "after_tracking")],
            );
        },
    );
    counter(
        "otel_agent.sessions.birth_not_seen",
        "Sessions reported with an unknown birth",
        |s, i| {
            i.observe(s.kernel.birth_not_seen, &[]);
        },
    );
    counter(
        "otel_agent.export.errors",
        "Failed export attempts, by output",
        |s, i| {
            for export in &s.exports {
                i.observe(
                    export.export_errors,
                    &[KeyValue::new("output", export.output)],
                );
            }
        },
    );
    let latest = latest.clone();
    meter
        .u64_observable_gauge("otel_agent.export.queue.depth")
        .with_description("Sessions waiting for export, by output")
        .with_callback(move |instrument| {
            if let Ok(snapshot) = latest.lock() {
                for export in &snapshot.exports {
                    instrument.observe(
                        export.queue_depth,
                        &[KeyValue::new("output", export.output)],
                    );
                }
            }
        })
        .build();
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::metrics::{
        InMemoryMetricExporter,
        data::{AggregatedMetrics, MetricData},
    };

    use super::*;
    use crate::probe::KernelCounters;

    /// The value of `name`'s data point whose attribute `key` is `value`.
    fn point(exporter: &InMemoryMetricExporter, name: &str, key: &str, value: &str) -> u64 {
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
        sum.data_points()
            .find(|point| {
                point
                    .attributes()
                    .any(|kv| kv.key.as_str() == key && kv.value.as_str() == value)
            })
            .unwrap_or_else(|| panic!("no {key}={value} point of {name}"))
            .value()
    }

    #[test]
    fn skipped_probe_hits_are_a_loss_cause_and_counted_per_program() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let latest = Arc::new(Mutex::new(Snapshot {
            kernel: KernelCounters {
                skipped_state_change: 266,
                skipped_receive_reset: 3,
                skipped_accept: 5,
                ring_buffer_full: 7,
                ..KernelCounters::default()
            },
            ..Snapshot::default()
        }));
        register(&provider.meter("test"), &latest);
        provider.force_flush().unwrap();

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
}
