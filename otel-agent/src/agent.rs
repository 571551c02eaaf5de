//! Wiring and lifecycle: resolves the configuration, attaches the probe, runs the reader and
//! the pipeline, and on SIGINT/SIGTERM shuts down in stages (stop reading and drain the ring
//! buffer, let the pipeline finish, flush the exporter within its deadline, detach the probe),
//! then logs the session accounting.

use std::{path::Path, sync::Arc, time::SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    cli::Cli,
    container::{ContainerIdCache, proc_shows_host_pids},
    error::{AgentError, with_causes},
    events,
    export::config::ExportConfig,
    metrics::SelfMetrics,
    outputs::{self, Outputs},
    pipeline::{self, Sinks},
    probe::Probe,
    shutdown::Signals,
    stats::{PipelineStats, Snapshot},
};

/// Records the reader may queue for the pipeline before it starts counting drops.
const CHANNEL_CAPACITY: usize = 64 * 1024;

/// Runs the agent until a signal asks it to stop.
pub async fn run(cli: Cli) -> Result<(), AgentError> {
    let signals = Signals::install()
        .map_err(|error| AgentError::Internal(format!("cannot listen for signals: {error}")))?;
    let config = ExportConfig::resolve(&cli.export, |name| std::env::var(name).ok())?;
    let Outputs { exporters, console } = outputs::open(&cli, &config)?;
    match &config.otlp {
        Some(target) => tracing::info!(
            endpoint = %target.endpoint,
            protocol = target.protocol.name(),
            compression = ?target.compression,
            headers = target.headers.len(),
            "exporting one span per closed TCP session"
        ),
        None if config.sdk_disabled => {
            tracing::info!("OTEL_SDK_DISABLED=true: not exporting spans");
        }
        None => tracing::info!(
            "no OTLP endpoint configured: printing sessions to stdout; to export spans, pass \
             --otlp-endpoint http://HOST:4317 --otlp-protocol grpc or set OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
    }

    let agent_start = SystemTime::now();
    let mut probe = Probe::attach(&cli.probe.options())?;
    let ring = probe.take_events()?;
    let features = probe.features;
    crate::probe::drop_privileges::drop_after_attach();
    tracing::info!(
        bytes = features.bytes,
        payload = features.payload,
        health = features.health,
        netns = features.netns,
        resets = features.resets,
        accept_owner = features.accept_owner,
        attach = ?probe.state_probe,
        "probe attached to sock:inet_sock_set_state"
    );

    let sinks = Sinks {
        outputs: exporters.handles(),
        console,
        agent_start,
        containers: container_ids(),
    };
    let stats = Arc::new(PipelineStats::default());
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let stop = CancellationToken::new();
    let mut reader = tokio::spawn(events::read(ring, tx, stats.clone(), stop.clone()));
    let mut pipeline = tokio::spawn(pipeline::run(rx, sinks, stats.clone()));

    let outputs = exporters.handles();
    let self_metrics = match &config.otlp {
        Some(target) => Some(SelfMetrics::start(target, cli.stats_interval)?),
        None => None,
    };
    let snapshot = |probe: &Probe| {
        let kernel = probe.counters().unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the probe's counters");
            Default::default()
        });
        Snapshot::take(kernel, &stats, &outputs)
    };
    let mut ticker = tokio::time::interval(cli.stats_interval);
    ticker.tick().await;
    let wait_for_signal = signals.wait();
    tokio::pin!(wait_for_signal);
    let first = loop {
        tokio::select! {
            signal = &mut wait_for_signal => break First::Signal(signal),
            result = &mut reader => break First::ReaderEnded(result),
            result = &mut pipeline => break First::PipelineEnded(result),
            _ = ticker.tick() => {
                let now = snapshot(&probe);
                now.log("periodic");
                if let Some(metrics) = &self_metrics {
                    metrics.update(now);
                }
            }
        }
    };
    if let First::Signal(name) = &first {
        tracing::info!(
            signal = name,
            "shutting down: draining and flushing queued sessions"
        );
    }
    // Detach first so that nothing more is written, then drain the ring buffer, and let the
    // pipeline handle every record: the counters then reconcile exactly.
    probe.detach();
    stop.cancel();
    let (signal, reader_result, pipeline_result) = match first {
        First::Signal(signal) => (Some(signal), reader.await, pipeline.await),
        First::ReaderEnded(result) => (None, result, pipeline.await),
        First::PipelineEnded(result) => (None, reader.await, result),
    };
    exporters.shutdown().await;
    let last = snapshot(&probe);
    last.log("final");
    if let Some(metrics) = self_metrics {
        metrics.update(last);
        metrics.shutdown().await;
    }

    match (signal, pipeline_result, reader_result) {
        (_, Ok(Err(error)), _) => Err(AgentError::Output(error)),
        (Some(name), Ok(Ok(())), Ok(Ok(()))) => {
            tracing::info!(signal = name, "stopped cleanly");
            Ok(())
        }
        (_, pipeline, reader) => Err(AgentError::Internal(format!(
            "a task ended unexpectedly: reader {}, pipeline {}",
            describe(reader),
            describe(pipeline)
        ))),
    }
}

/// A container id cache, when this agent sees the host's pids (on the host, or in a
/// container with the host's pid namespace); otherwise spans go without `container.id`.
fn container_ids() -> Option<ContainerIdCache> {
    match proc_shows_host_pids(Path::new("/proc")) {
        Ok(true) => Some(ContainerIdCache::new()),
        Ok(false) => {
            tracing::info!(
                "spans will carry no container.id: this agent does not see the host's pids (run it with the host's pid namespace)"
            );
            None
        }
        Err(error) => {
            tracing::warn!(%error, "spans will carry no container.id: cannot read /proc");
            None
        }
    }
}

/// What stopped the agent's main wait.
enum First {
    Signal(&'static str),
    ReaderEnded(TaskResult),
    PipelineEnded(TaskResult),
}

type TaskResult = Result<std::io::Result<()>, tokio::task::JoinError>;

fn describe(result: TaskResult) -> String {
    match result {
        Ok(Ok(())) => "stopped".to_owned(),
        Ok(Err(error)) => format!("failed: {}", with_causes(&error)),
        Err(error) => format!("panicked: {error}"),
    }
}
