//! Wiring and lifecycle: resolves the configuration, attaches the probe, runs the reader and
//! the pipeline, and on SIGINT/SIGTERM shuts down in stages (stop reading and drain the ring
//! buffer, let the pipeline finish, flush the exporter within its deadline, detach the probe),
//! then logs the session accounting.

use std::{path::Path, sync::Arc, time::SystemTime};

use opentelemetry::trace::TracerProvider as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    cli::Cli,
    container::{ContainerIdCache, proc_shows_host_pids},
    error::{AgentError, with_causes},
    events,
    export::{self, SCOPE_NAME, config::ExportConfig},
    outputs::{self, Outputs},
    pipeline::{self, Sinks},
    probe::Probe,
    shutdown::Signals,
    stats::PipelineStats,
};

/// Records the reader may queue for the pipeline before it starts counting drops.
const CHANNEL_CAPACITY: usize = 64 * 1024;

/// Runs the agent until a signal asks it to stop.
pub async fn run(cli: Cli) -> Result<(), AgentError> {
    let signals = Signals::install()
        .map_err(|error| AgentError::Internal(format!("cannot listen for signals: {error}")))?;
    let config = ExportConfig::resolve(&cli.export, |name| std::env::var(name).ok())?;
    let Outputs { provider, console } = outputs::open(&cli, &config)?;
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
    tracing::info!(
        bytes = features.bytes,
        payload = features.payload,
        health = features.health,
        netns = features.netns,
        resets = features.resets,
        accept_owner = features.accept_owner,
        "probe attached to sock:inet_sock_set_state"
    );

    let sinks = Sinks {
        tracer: provider
            .as_ref()
            .map(|provider| provider.tracer(SCOPE_NAME)),
        console,
        agent_start,
        containers: container_ids(),
    };
    let stats = Arc::new(PipelineStats::default());
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let stop = CancellationToken::new();
    let mut reader = tokio::spawn(events::read(ring, tx, stats.clone(), stop.clone()));
    let mut pipeline = tokio::spawn(pipeline::run(rx, sinks, stats.clone()));

    let first = tokio::select! {
        signal = signals.wait() => First::Signal(signal),
        result = &mut reader => First::ReaderEnded(result),
        result = &mut pipeline => First::PipelineEnded(result),
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
    if let Some(provider) = provider {
        export::shutdown(provider, cli.shutdown_timeout).await;
    }
    match probe.counters() {
        Ok(kernel) => stats.log_summary(Some(kernel)),
        Err(error) => {
            tracing::warn!(%error, "cannot read the probe's counters");
            stats.log_summary(None);
        }
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
