//! Wiring and lifecycle, in two steps. [`prepare`], on the main thread before any other
//! thread exists: resolves and checks the configuration, opens the outputs' targets,
//! attaches the probe and drops the privileges (so that every thread started afterwards
//! inherits the dropped sets, [`crate::probe::drop_privileges`]). [`run`], in the async
//! runtime: starts the outputs, the reader and the pipeline, and on SIGINT/SIGTERM/SIGHUP (or when a local output cannot be written)
//! shuts down in stages (detach the probe, drain the ring buffer, let the pipeline finish,
//! flush the exporters and the local outputs, export the last self-metrics), all within one
//! deadline (`--shutdown-timeout`), then logs the session accounting. Any task that panics or
//! ends on its own (the reader, the pipeline, an export worker, the self-metrics) makes the
//! exit an error, after the same shutdown.

use std::{os::unix::fs::MetadataExt as _, path::Path, sync::Arc, time::SystemTime};

use aya::maps::{MapData, RingBuf};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    cgroup::{CgroupTree, Containers, DEFAULT_CAPACITY},
    cli::Cli,
    container::{ContainerIdCache, proc_shows_host_pids},
    error::AgentError,
    events::{self, PipelineStats},
    export::{
        config::{ExportConfig, Redacted},
        resource::{agent_resource, user_names_service},
        session_metrics::{MetricsSettings, SessionMetrics},
        workload::{ResourceMode, ResourceSettings, WorkloadTable, overflow_resource},
    },
    link_policy::{LinkPolicy, host_addresses},
    log_text::{Escaped, with_causes},
    metrics::SelfMetrics,
    pipeline::{self, Routes},
    probe::{Probe, pins::Consumption},
    routing::{self, Outputs},
    sampling::{Sampler, SamplingStats},
    shutdown::Signals,
    stats::Snapshot,
};

/// Records the reader may queue for the pipeline before it starts counting drops.
const CHANNEL_CAPACITY: usize = 64 * 1024;

/// The agent configured and its probe attached, privileges dropped: nothing started yet.
pub struct Prepared {
    cli: Cli,
    config: ExportConfig,
    resources: ResourceSettings,
    outputs: routing::Prepared,
    probe: Probe,
    ring: RingBuf<MapData>,
    /// A pinned probe: where the reader records what it read.
    consumption: Option<Consumption>,
    agent_start: SystemTime,
    sampler: Sampler,
    metrics: MetricsSettings,
    links: LinkPolicy,
}

/// Resolves and checks the configuration (a bad value stops the agent before the probe is
/// loaded), opens the outputs' targets, attaches the probe and drops the capabilities.
/// Synchronous: runs on the main thread before the async runtime, or any other thread,
/// starts.
pub fn prepare(cli: Cli) -> Result<Prepared, AgentError> {
    let config = ExportConfig::resolve(&cli.export.flags(), |name| std::env::var(name).ok())?;
    crate::export::resource::check_environment()?;
    let resources = cli.export.resources(user_names_service())?;
    let sampler = Sampler::resolve(&cli.sampling.flags(), |name| std::env::var(name).ok())?;
    let metrics =
        MetricsSettings::resolve(cli.sampling.session_metrics_cardinality_limit, |name| {
            std::env::var(name).ok()
        })?;
    tracing::info!(
        sampler = sampler.name().name(),
        ratio = sampler.ratio(),
        "sampling sessions"
    );
    let outputs = routing::prepare(&cli, &config)?;
    match &config.otlp {
        Some(target) => tracing::info!(
            endpoint = %Redacted(&target.endpoint),
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

    let links = link_policy(&cli);
    let agent_start = SystemTime::now();
    let mut probe = Probe::attach(&cli.probe.options())?;
    let ring = probe.take_events()?;
    let consumption = probe.take_consumption();
    let features = probe.features;
    crate::probe::drop_privileges::drop_after_attach();
    if let Some(pins) = probe.counters().ok().and_then(|counters| counters.pins) {
        let dir = cli.probe.bpf_pin_dir.as_deref().unwrap_or(Path::new(""));
        let dir = Escaped(&dir.display().to_string()).to_string();
        if pins.previous_generation == 0 {
            tracing::info!(%dir, "pinned the probe: there was none to take over");
        } else {
            tracing::info!(
                %dir,
                from_generation = pins.previous_generation,
                adopted_records = pins.adopted_records,
                adopted_open_sessions = pins.adopted_open,
                "took over the pinned probe: these records wait in its ring buffer, these sessions were open"
            );
        }
    }
    tracing::info!(
        bytes = features.bytes,
        payload = features.payload,
        health = features.health,
        netns = features.netns,
        resets = features.resets,
        accept_owner = features.accept_owner,
        attach = probe.state_probe.name(),
        "probe attached to sock:inet_sock_set_state"
    );
    Ok(Prepared {
        cli,
        config,
        resources,
        outputs,
        probe,
        ring,
        consumption,
        agent_start,
        sampler,
        metrics,
        links,
    })
}

/// Runs the prepared agent until one of `signals` asks it to stop. Must run inside the
/// multi-thread tokio runtime.
pub async fn run(prepared: Prepared, signals: Signals) -> Result<(), AgentError> {
    let Prepared {
        cli,
        config,
        resources,
        outputs,
        mut probe,
        ring,
        consumption,
        agent_start,
        sampler,
        metrics,
        links,
    } = prepared;
    let Outputs { exporters, sinks } = outputs.start(&cli, &config, resources)?;
    let spans = config.otlp.is_some() || cli.output.json_output.is_some();
    let sampling = Arc::new(SamplingStats::default());
    let (session_metrics, recorder) = match &config.otlp {
        Some(target) if cli.sampling.session_metrics => {
            let exporter = crate::export::metric_exporter(target, Some(metrics.temporality))?;
            // The spans' resources: the sessions of no workload go under the agent's one
            // resource in `single`, under the overflow resource otherwise.
            let base = agent_resource();
            let shared = match resources.mode {
                ResourceMode::Single => base.clone(),
                ResourceMode::Workload | ResourceMode::Process => overflow_resource(&base),
            };
            let (session_metrics, recorder) =
                SessionMetrics::start(exporter, metrics, (base, shared), resources.max_workloads)
                    .map_err(|error| {
                    AgentError::Internal(format!(
                        "cannot start the session metrics' export thread: {error}"
                    ))
                })?;
            (Some(session_metrics), Some(recorder))
        }
        _ => (None, None),
    };

    let routes = Routes {
        exporters: exporters.handles(),
        sinks: sinks.handles(),
        agent_start,
        links,
        containers: spans.then(|| containers(cli.export.cgroup_root.as_deref())),
        workloads: (spans && resources.mode != ResourceMode::Single)
            .then(|| WorkloadTable::new(resources.mode, resources.max_workloads)),
        sampler,
        sampling: sampling.clone(),
        metrics: recorder,
    };
    let stats = Arc::new(PipelineStats::default());
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let stop = CancellationToken::new();
    let mut reader = tokio::spawn(events::read(
        ring,
        tx,
        stats.clone(),
        stop.clone(),
        consumption,
    ));
    let mut pipeline = tokio::spawn(pipeline::run(rx, routes, stats.clone()));

    let outputs = exporters.handles();
    let sink_handles = sinks.handles();
    let self_metrics = match &config.otlp {
        Some(target) => Some(SelfMetrics::start(target, cli.stats_interval)?),
        None => None,
    };
    let snapshot = |probe: &Probe| {
        let kernel = probe.counters().unwrap_or_else(|error| {
            tracing::warn!(
                error = %Escaped(&error.to_string()),
                "cannot read the probe's counters"
            );
            Default::default()
        });
        Snapshot::take(kernel, &stats, &sampling, &outputs, &sink_handles)
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
            () = exporters.worker_ended() => break First::WorkerEnded,
            () = sinks.failed() => break First::OutputFailed,
            _ = ticker.tick() => {
                let now = snapshot(&probe);
                now.log("periodic");
                if let Some(metrics) = &self_metrics {
                    metrics.update(now);
                }
            }
        }
    };
    // One deadline for the whole shutdown.
    let deadline = Instant::now() + cli.shutdown_timeout;
    match &first {
        First::Signal(name) => tracing::info!(
            signal = name,
            "shutting down: draining and flushing queued sessions"
        ),
        First::OutputFailed => tracing::info!(
            "shutting down: a local output cannot be written (the error follows); draining \
             and flushing the other outputs"
        ),
        First::ReaderEnded(_) | First::PipelineEnded(_) | First::WorkerEnded => {}
    }
    // Detach first so that nothing more is written, then drain the ring buffer, and let the
    // pipeline handle every record: the counters then reconcile exactly.
    probe.detach();
    stop.cancel();
    let mut failures = Vec::new();
    let (signal, reader_result, pipeline_result) = match first {
        First::Signal(signal) => (
            Some(signal),
            finish(reader, deadline).await,
            finish(pipeline, deadline).await,
        ),
        First::ReaderEnded(result) => (None, Some(result), finish(pipeline, deadline).await),
        First::PipelineEnded(result) => (None, finish(reader, deadline).await, Some(result)),
        First::WorkerEnded => {
            failures.push("an export worker stopped on its own".to_owned());
            (
                None,
                finish(reader, deadline).await,
                finish(pipeline, deadline).await,
            )
        }
        First::OutputFailed => (
            None,
            finish(reader, deadline).await,
            finish(pipeline, deadline).await,
        ),
    };
    // The exporters and the local outputs flush together, within the same deadline.
    let (panicked, local_result) = tokio::join!(
        exporters.shutdown(deadline.into_std()),
        sinks.shutdown(deadline)
    );
    for output in panicked {
        failures.push(format!("the {output} export worker panicked"));
    }
    let read = stats
        .records_read
        .load(std::sync::atomic::Ordering::Relaxed);
    if let Err(error) = probe.leave(read) {
        tracing::warn!(
            error = %Escaped(&error.to_string()),
            "cannot read what this agent leaves in the pin directory"
        );
    }
    let last = snapshot(&probe);
    last.log("final");
    // The last export of each: the self-metrics and the session metrics, together.
    let remaining = deadline.saturating_duration_since(Instant::now());
    let (self_result, session_result) = tokio::join!(
        async {
            match self_metrics {
                Some(metrics) => {
                    metrics.update(last);
                    metrics.shutdown(remaining).await
                }
                None => Ok(()),
            }
        },
        async {
            match session_metrics {
                Some(metrics) => metrics.shutdown(remaining).await,
                None => Ok(()),
            }
        }
    );
    failures.extend(self_result.err());
    failures.extend(session_result.err());

    let pipeline_result = pipeline_result.map(|result| result.map(Ok));
    for (task, result) in [("reader", reader_result), ("pipeline", pipeline_result)] {
        match result {
            Some(Ok(Ok(()))) if signal.is_some() => {}
            Some(result) => failures.push(format!("the {task} {}", describe(result))),
            None => failures.push(format!(
                "the {task} had not finished at the shutdown deadline ({:?})",
                cli.shutdown_timeout
            )),
        }
    }
    // A local output that could not be written is the reason to stop: its error wins.
    local_result?;
    match (signal, failures.is_empty()) {
        (Some(name), true) => {
            tracing::info!(signal = name, "stopped cleanly");
            Ok(())
        }
        _ => Err(AgentError::Internal(format!(
            "a task failed: {}",
            failures.join("; ")
        ))),
    }
}

/// The task's result, or `None` (and the task aborted) if it is still running at `deadline`.
async fn finish<T>(
    mut task: JoinHandle<T>,
    deadline: Instant,
) -> Option<Result<T, tokio::task::JoinError>> {
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(result) => Some(result),
        Err(_) => {
            task.abort();
            None
        }
    }
}

/// The linking policy: `--link-peers`, or by default loopback and this host's addresses,
/// read now in the agent's network namespace. When `--netns` names another namespace, whose
/// addresses the agent cannot read from its own, the default is loopback alone. Logged once.
fn link_policy(cli: &Cli) -> LinkPolicy {
    let (policy, source) = if let Some(policy) = &cli.link_peers {
        (policy.clone(), "--link-peers")
    } else {
        let own_netns = std::fs::metadata("/proc/self/ns/net").map(|meta| meta.ino());
        let addresses = match (cli.probe.netns, own_netns) {
            (Some(watched), Ok(own)) if u64::from(watched) != own => {
                tracing::info!(
                    netns = watched,
                    "--netns names another network namespace: its own addresses are not read; \
                     list its networks in --link-peers to link their clients"
                );
                Vec::new()
            }
            _ => host_addresses().unwrap_or_else(|error| {
                tracing::warn!(
                    error = %Escaped(&error.to_string()),
                    "cannot read this host's addresses (getifaddrs): linking loopback peers only"
                );
                Vec::new()
            }),
        };
        (LinkPolicy::loopback_and(addresses), "default")
    };
    tracing::info!(
        link_peers = %policy,
        source,
        "connection traces: a server span's parent is its client span for peers in these \
         networks, a span link to it for other peers"
    );
    policy
}

/// Where containers come from: the cgroup2 hierarchy (`--cgroup-root`, or the one mounted)
/// for the cgroup ids the probe captured, and `/proc/<pid>/cgroup` for owners in the v2
/// root, when this agent sees the host's pids (on the host, or in a container with the
/// host's pid namespace).
fn containers(cgroup_root: Option<&Path>) -> Containers {
    let tree = match cgroup_root {
        Some(root) => Some(CgroupTree::new(root, DEFAULT_CAPACITY)),
        None => CgroupTree::of_host(),
    };
    if tree.is_none() {
        tracing::info!(
            "no cgroup2 hierarchy mounted (a cgroup v1-only host): container.id only for owners alive at report time, from /proc/<pid>/cgroup"
        );
    }
    let procs = match proc_shows_host_pids(Path::new("/proc")) {
        Ok(true) => Some(ContainerIdCache::new()),
        Ok(false) => {
            tracing::info!(
                "no container.id for owners outside cgroup v2: this agent does not see the host's pids (run it with the host's pid namespace)"
            );
            None
        }
        Err(error) => {
            tracing::warn!(
                error = %Escaped(&error.to_string()),
                "no container.id for owners outside cgroup v2: cannot read /proc"
            );
            None
        }
    };
    Containers { tree, procs }
}

/// What stopped the agent's main wait.
enum First {
    Signal(&'static str),
    ReaderEnded(TaskResult),
    PipelineEnded(Result<(), tokio::task::JoinError>),
    /// An export worker ended before the shutdown.
    WorkerEnded,
    /// A local output failed (its error comes from its shutdown).
    OutputFailed,
}

type TaskResult = Result<std::io::Result<()>, tokio::task::JoinError>;

fn describe(result: TaskResult) -> String {
    match result {
        Ok(Ok(())) => "stopped on its own".to_owned(),
        Ok(Err(error)) => format!("failed: {}", with_causes(&error)),
        Err(error) => format!("panicked: {error}"),
    }
}
