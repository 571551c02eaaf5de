//! The stage between the reader and the outputs: takes decoded records in batches, turns
//! each into a [`Session`] with wall-clock times (and the owner's container), and hands it
//! to the sinks (span export and/or the tcplife console). Ends when the reader closes the
//! channel and every record received has been handled.

use std::{
    io::{self, Stdout},
    sync::Arc,
    time::SystemTime,
};

use common::SessionRecord;
use tokio::sync::mpsc;

use crate::{
    clock::WallClock,
    console::Console,
    container::ContainerIdCache,
    export::{self, OutputHandle},
    session::Session,
    stats::PipelineStats,
};

/// Records taken from the channel at once; the wall clock is sampled once per batch.
const BATCH: usize = 1024;

/// Where sessions go.
pub struct Sinks {
    /// The export outputs (OTLP, JSON lines); empty when nothing is exported.
    pub outputs: Vec<OutputHandle>,
    pub console: Option<Console<Stdout>>,
    /// When the agent started: the start of sessions whose birth the probe did not see.
    pub agent_start: SystemTime,
    /// Container ids by pid, when `/proc` shows the host's pids (the probe reports those).
    pub containers: Option<ContainerIdCache>,
}

/// Handles records until the channel closes. Fails only when the console cannot be written.
pub async fn run(
    mut rx: mpsc::Receiver<SessionRecord>,
    mut sinks: Sinks,
    stats: Arc<PipelineStats>,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(BATCH);
    let mut to_export = Vec::with_capacity(if sinks.outputs.is_empty() { 0 } else { BATCH });
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let clock = WallClock::sample();
        for record in batch.drain(..) {
            if let Some(session) = handle(&record, clock, &mut sinks, &stats)? {
                to_export.push(Arc::new(session));
            }
        }
        if let Some(console) = &mut sinks.console {
            console.flush()?;
        }
        if !to_export.is_empty() {
            export::push_all(&sinks.outputs, &to_export);
            to_export.clear();
        }
    }
    Ok(())
}

/// Converts one record and prints it; returns the session when it is to be exported.
fn handle(
    record: &SessionRecord,
    clock: WallClock,
    sinks: &mut Sinks,
    stats: &PipelineStats,
) -> io::Result<Option<Session>> {
    let mut session = match Session::from_record(record, clock, sinks.agent_start) {
        Ok(session) => session,
        Err(error) => {
            PipelineStats::add(&stats.decode_errors);
            tracing::warn!(
                error = %crate::log_text::Escaped(&error.to_string()),
                "dropped a session record that does not decode"
            );
            return Ok(None);
        }
    };
    if let Some(console) = &mut sinks.console {
        console.write(&session)?;
        PipelineStats::add(&stats.lines_printed);
    }
    if sinks.outputs.is_empty() {
        return Ok(None);
    }
    // Only spans carry container.id: the console needs no /proc lookup.
    if let Some(containers) = &mut sinks.containers {
        session.container_id = containers.container_id(session.pid);
    }
    Ok(Some(session))
}
