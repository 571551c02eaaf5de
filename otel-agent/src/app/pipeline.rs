//! The stage between the reader and the outputs: takes decoded records in batches, turns
//! each into a [`Session`] with wall-clock times and its span context (and the owner's
//! container, for spans), counts it in the session metrics, asks the [`Sampler`] whether
//! the outputs get it, and offers it to the outputs ([`Routes`]): the exporters' queues and
//! the sinks (the
//! tcplife console, JSON lines), none of which it ever waits for. Ends when the reader closes the
//! channel and every record received has been handled.

use std::{sync::Arc, time::SystemTime};

use common::SessionRecord;
use tokio::sync::mpsc;

use crate::{
    clock::WallClock,
    container::ContainerIdCache,
    events::PipelineStats,
    export::{self, ExporterHandle, session_metrics::SessionRecorder},
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
    /// Whether any output carries spans (OTLP or JSON lines): only they need container.id.
    pub spans: bool,
    /// When the agent started: the start of sessions whose birth the probe did not see.
    pub agent_start: SystemTime,
    /// Which server spans name their client span as parent.
    pub links: LinkPolicy,
    /// Container ids by pid, when `/proc` shows the host's pids (the probe reports those).
    pub containers: Option<ContainerIdCache>,
    /// Which sessions the outputs get.
    pub sampler: Sampler,
    /// What the sampler decided, counted.
    pub sampling: Arc<SamplingStats>,
    /// The session metrics, when exported: every session, before the sampler.
    pub metrics: Option<SessionRecorder>,
}

/// Handles records until the channel closes.
pub async fn run(
    mut rx: mpsc::Receiver<SessionRecord>,
    mut routes: Routes,
    stats: Arc<PipelineStats>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut sessions = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let clock = WallClock::sample();
        sessions.extend(
            batch
                .drain(..)
                .filter_map(|record| handle(&record, clock, &mut routes, &stats))
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
fn handle(
    record: &SessionRecord,
    clock: WallClock,
    routes: &mut Routes,
    stats: &PipelineStats,
) -> Option<Session> {
    let mut session = match Session::from_record(record, clock, routes.agent_start, &routes.links) {
        Ok(session) => session,
        Err(error) => {
            PipelineStats::add(&stats.lost_decode_error);
            tracing::warn!(
                error = %crate::log_text::Escaped(&error.to_string()),
                "dropped a session record that does not decode"
            );
            return None;
        }
    };
    if let Some(metrics) = &mut routes.metrics {
        metrics.record(&session);
    }
    if !routes.sampler.keeps_all() {
        // Both ends of a connection share its trace id: they decide alike.
        let decision = routes.sampler.decide(&session, session.context.trace_id);
        routes.sampling.count(decision);
        match decision {
            Decision::Keep { threshold, .. } => session.threshold = threshold,
            Decision::Drop(_) => return None,
        }
    }
    if routes.spans
        && let Some(containers) = &mut routes.containers
    {
        session.container_id = containers.container_id(session.pid);
    }
    Some(session)
}
