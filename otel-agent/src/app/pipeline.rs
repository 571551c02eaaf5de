//! The stage between the reader and the outputs: takes decoded records in batches, turns
//! each into a [`Session`] with wall-clock times and its span context, names the owners'
//! containers and admits their workloads (once per batch), counts every session in the
//! session metrics on its workload's resource, asks the [`Sampler`] whether the outputs get
//! it, and offers the kept ones to the outputs ([`Routes`]): the exporters' queues and the
//! sinks (the tcplife console, JSON lines), none of which it ever waits for. Ends when the
//! reader closes the channel and every record received has been handled.

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use common::SessionRecord;
use tokio::sync::mpsc;

use crate::{
    cgroup::Containers,
    clock::WallClock,
    events::PipelineStats,
    export::{
        self, ExporterHandle,
        session_metrics::{SessionRecorder, WorkloadMetrics},
        workload::{PerWorkload as _, WorkloadTable},
    },
    link_policy::LinkPolicy,
    local::SinkHandle,
    sampling::{Decision, Sampler, SamplingStats},
    session::Session,
};

/// Records taken from the channel at once; the wall clock is sampled once per batch.
const BATCH: usize = 1024;

/// Where sessions go.
pub struct Routes {
    /// The exporters (OTLP); empty when nothing is exported.
    pub exporters: Vec<ExporterHandle>,
    /// The sinks: the console and/or JSON lines.
    pub sinks: Vec<SinkHandle>,
    /// When the agent started: the start of sessions whose birth the probe did not see.
    pub agent_start: SystemTime,
    /// Which server spans name their client span as parent.
    pub links: LinkPolicy,
    /// Where container ids come from; `None` when no output carries spans (OTLP or JSON
    /// lines): only they need container.id.
    pub containers: Option<Containers>,
    /// The live workloads, each with its session metrics (when exported); `None` when no
    /// output carries spans or every span goes under the agent's one resource.
    pub workloads: Option<WorkloadTable<Option<WorkloadMetrics>>>,
    /// Which sessions the outputs get.
    pub sampler: Sampler,
    /// What the sampler decided, counted.
    pub sampling: Arc<SamplingStats>,
    /// The session metrics, when exported: every session, before the sampler, on its
    /// workload's resource (each workload's instruments live in `workloads`).
    pub metrics: Option<SessionRecorder>,
}

/// Handles records until the channel closes.
pub async fn run(
    mut rx: mpsc::Receiver<SessionRecord>,
    mut routes: Routes,
    stats: Arc<PipelineStats>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut decoded = Vec::with_capacity(BATCH);
    let mut sessions = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let clock = WallClock::sample();
        decoded.extend(batch.drain(..).filter_map(|record| {
            decode(&record, clock, routes.agent_start, &routes.links, &stats)
        }));
        identify(&mut decoded, &mut routes, &stats);
        sessions.extend(
            decoded
                .drain(..)
                .filter_map(|session| select(session, &routes))
                .map(Arc::new),
        );
        for local in &routes.sinks {
            local.offer(&sessions);
        }
        export::push_all(&routes.exporters, &sessions);
        sessions.clear();
    }
}

/// Converts one record.
fn decode(
    record: &SessionRecord,
    clock: WallClock,
    agent_start: SystemTime,
    links: &LinkPolicy,
    stats: &PipelineStats,
) -> Option<Session> {
    match Session::from_record(record, clock, agent_start, links) {
        Ok(session) => Some(session),
        Err(error) => {
            PipelineStats::add(&stats.lost_decode_error);
            tracing::warn!(
                error = %crate::log_text::Escaped(&error.to_string()),
                "dropped a session record that does not decode"
            );
            None
        }
    }
}

/// Asks the sampler whether the outputs get `session` (and with which threshold).
fn select(mut session: Session, routes: &Routes) -> Option<Session> {
    if !routes.sampler.keeps_all() {
        // Both ends of a connection share its trace id: they decide alike.
        let decision = routes.sampler.decide(&session, session.context.trace_id);
        routes.sampling.count(decision);
        match decision {
            Decision::Keep { threshold, .. } => session.threshold = threshold,
            Decision::Drop(_) => return None,
        }
    }
    Some(session)
}

/// Names the owners' containers and admits their workloads, once per batch, and counts
/// every session in the session metrics of its workload (or of the overflow or single
/// resource); counts what stays unresolved and what overflows.
fn identify(sessions: &mut [Session], routes: &mut Routes, stats: &PipelineStats) {
    use std::sync::atomic::Ordering::Relaxed;

    if let Some(containers) = &mut routes.containers {
        let unresolved = containers.fill(sessions);
        stats
            .degraded_container_unresolved
            .fetch_add(unresolved, Relaxed);
    }
    if let Some(workloads) = &mut routes.workloads {
        let overflowed = workloads.admit(sessions, Instant::now(), &mut routes.metrics);
        stats
            .degraded_workload_overflow
            .fetch_add(overflowed, Relaxed);
    } else if let Some(metrics) = &mut routes.metrics {
        for session in sessions.iter() {
            metrics.session(session, None);
        }
    }
}
