//! The agent's own accounting: every session the pipeline receives, every place one can be
//! lost (in the kernel, in the pipeline, in each export queue and local output), and every
//! span exported and line written.
//! A [`Snapshot`] reads them all at once and names them through the contract of
//! [`crate::accounting`], for the periodic and final log lines and the self-metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{
    accounting::{
        Accounting, Degradation, Figures, FilterCause, LossCause, OutputFigures, OutputKind, Stage,
    },
    events::PipelineStats,
    export::ExporterHandle,
    export::spool::SpoolStats,
    local::SinkHandle,
    probe::KernelCounters,
    sampling::{SamplingCounts, SamplingStats, rules::KeepRule},
};

/// One export output's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSnapshot {
    /// `otlp`.
    pub output: &'static str,
    pub enqueued: u64,
    pub exported: u64,
    /// Answered with a success that was not an OTLP response: neither exported nor lost.
    pub exported_unconfirmed: u64,
    pub lost_rejected: u64,
    pub lost_queue_full: u64,
    pub lost_at_shutdown: u64,
    pub export_errors: u64,
    /// Sessions waiting, in flight or awaiting a retry.
    pub queued: u64,
    /// The disk spool (all 0 without one), in sessions.
    pub spool: SpoolSnapshot,
}

/// One export output's disk spool at one moment, in sessions (bytes where named so).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolSnapshot {
    /// In the spool at start (left by an earlier agent).
    pub found: u64,
    /// Written by this agent.
    pub spooled: u64,
    /// Delivered from it (part of `exported`).
    pub delivered: u64,
    /// Delivered from files an earlier attempt may already have delivered.
    pub maybe_duplicated: u64,
    pub lost_full: u64,
    pub lost_torn: u64,
    /// In it now.
    pub left: u64,
    pub bytes: u64,
    /// Bytes this agent wrote to it.
    pub written_bytes: u64,
}

impl SpoolSnapshot {
    fn of(stats: &SpoolStats) -> Self {
        let get = SpoolStats::get;
        Self {
            found: get(&stats.found),
            spooled: get(&stats.spooled),
            delivered: get(&stats.delivered),
            maybe_duplicated: get(&stats.maybe_duplicated),
            lost_full: get(&stats.lost_full),
            lost_torn: get(&stats.lost_torn),
            left: get(&stats.sessions),
            bytes: get(&stats.bytes),
            written_bytes: get(&stats.written_bytes),
        }
    }
}

/// One local output's counters (the console, JSON lines) at one moment, in sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalSnapshot {
    /// `console` or `json`.
    pub output: &'static str,
    pub written: u64,
    pub lost_output_full: u64,
    pub lost_output_failed: u64,
    pub lost_at_shutdown: u64,
    /// Offered, and neither written nor lost yet.
    pub queued: u64,
}

impl LocalSnapshot {
    /// Reads the counters of `output` now.
    pub fn of(output: &SinkHandle) -> Self {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Self {
            output: output.name,
            queued: output.queued(),
            written: get(&output.stats.written),
            lost_output_full: get(&output.stats.lost_output_full),
            lost_output_failed: get(&output.stats.lost_output_failed),
            lost_at_shutdown: get(&output.stats.lost_at_shutdown),
        }
    }

    /// Sessions lost to `cause` (0 for a cause a local output does not count).
    pub fn lost(&self, cause: LossCause) -> u64 {
        match cause {
            LossCause::OutputFull => self.lost_output_full,
            LossCause::OutputFailed => self.lost_output_failed,
            LossCause::AtShutdown => self.lost_at_shutdown,
            _ => 0,
        }
    }

    fn figures(&self) -> OutputFigures {
        let mut figures = Figures::default();
        figures.push("written", self.written);
        figures.push("queued", self.queued);
        for cause in LossCause::of_output(OutputKind::Local) {
            figures.push(cause.key(), self.lost(cause));
        }
        OutputFigures {
            kind: OutputKind::Local,
            output: self.output.to_owned(),
            figures,
        }
    }
}

/// Every counter at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub kernel: KernelCounters,
    pub records_read: u64,
    pub lost_decode_error: u64,
    pub lost_channel_full: u64,
    pub container_unresolved: u64,
    pub workload_overflow: u64,
    /// The sampler's and the rules' decisions.
    pub sampling: SamplingCounts,
    pub exports: Vec<ExportSnapshot>,
    pub locals: Vec<LocalSnapshot>,
}

impl ExportSnapshot {
    /// Reads the counters of `output` now.
    pub fn of(output: &ExporterHandle) -> Self {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Self {
            output: output.name,
            enqueued: get(&output.stats.enqueued),
            exported: get(&output.stats.exported),
            exported_unconfirmed: get(&output.stats.exported_unconfirmed),
            lost_rejected: get(&output.stats.lost_rejected),
            lost_queue_full: get(&output.stats.lost_queue_full),
            lost_at_shutdown: get(&output.stats.lost_at_shutdown),
            export_errors: get(&output.stats.export_errors),
            queued: output.queue.depth() as u64,
            spool: SpoolSnapshot::of(&output.stats.spool),
        }
    }

    /// Sessions lost to `cause` (0 for a cause an export output does not count).
    pub fn lost(&self, cause: LossCause) -> u64 {
        match cause {
            LossCause::QueueFull => self.lost_queue_full,
            LossCause::Rejected => self.lost_rejected,
            LossCause::SpoolFull => self.spool.lost_full,
            LossCause::SpoolTorn => self.spool.lost_torn,
            LossCause::AtShutdown => self.lost_at_shutdown,
            _ => 0,
        }
    }

    /// Sessions this output lost, every cause counted.
    pub fn lost_total(&self) -> u64 {
        LossCause::of_output(OutputKind::Export)
            .map(|cause| self.lost(cause))
            .sum()
    }

    fn figures(&self) -> OutputFigures {
        let mut figures = Figures::default();
        figures.push("enqueued", self.enqueued);
        figures.push("exported", self.exported);
        figures.push("exported_unconfirmed", self.exported_unconfirmed);
        figures.push("queued", self.queued);
        for cause in LossCause::of_output(OutputKind::Export) {
            figures.push(cause.key(), self.lost(cause));
        }
        figures.push("export_errors", self.export_errors);
        let spool = &self.spool;
        figures.push("spool_found", spool.found);
        figures.push("spooled", spool.spooled);
        figures.push("delivered_from_spool", spool.delivered);
        figures.push("spool_maybe_duplicated", spool.maybe_duplicated);
        figures.push("spool_left", spool.left);
        figures.push("spool_bytes", spool.bytes);
        OutputFigures {
            kind: OutputKind::Export,
            output: self.output.to_owned(),
            figures,
        }
    }
}

impl Snapshot {
    /// Reads every counter now.
    pub fn take(
        kernel: KernelCounters,
        pipeline: &PipelineStats,
        sampling: &SamplingStats,
        outputs: &[ExporterHandle],
        locals: &[SinkHandle],
    ) -> Self {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Self {
            kernel,
            records_read: get(&pipeline.records_read),
            lost_decode_error: get(&pipeline.lost_decode_error),
            lost_channel_full: get(&pipeline.lost_channel_full),
            container_unresolved: get(&pipeline.degraded_container_unresolved),
            workload_overflow: get(&pipeline.degraded_workload_overflow),
            sampling: sampling.counts(),
            exports: outputs.iter().map(ExportSnapshot::of).collect(),
            locals: locals.iter().map(LocalSnapshot::of).collect(),
        }
    }

    /// Sessions lost to `cause` in the kernel or the pipeline (0 for an output's cause: see
    /// [`ExportSnapshot::lost`] and [`LocalSnapshot::lost`]).
    pub fn lost(&self, cause: LossCause) -> u64 {
        match cause {
            LossCause::RingBufferFull => self.kernel.ring_buffer_full,
            LossCause::ProbeSkipped => self.kernel.skipped_state_change,
            LossCause::DecodeError => self.lost_decode_error,
            LossCause::ChannelFull => self.lost_channel_full,
            _ => 0,
        }
    }

    /// Sessions a filter left out, by cause.
    pub fn filtered(&self, cause: FilterCause) -> u64 {
        match cause {
            FilterCause::AtBirth => self.kernel.filtered_at_birth,
            FilterCause::AfterTracking => self.kernel.filtered_after_tracking,
            FilterCause::UnknownBirth => self.kernel.unknown_birth_skipped,
            FilterCause::SampledOut => self.sampling.sampled_out,
            FilterCause::DropPort => self.sampling.drop_port,
            FilterCause::DropPeer => self.sampling.drop_peer,
            FilterCause::DropProcess => self.sampling.drop_process,
        }
    }

    /// Sessions reported degraded, by cause (`None` for evictions before the probe is
    /// detached).
    pub fn degraded(&self, cause: Degradation) -> Option<u64> {
        match cause {
            Degradation::BirthNotSeen => Some(self.kernel.birth_not_seen),
            Degradation::Evicted => self.kernel.evicted(),
            Degradation::MapUpdateFailed => Some(self.kernel.map_update_failed),
            Degradation::ProbeSkippedReset => Some(self.kernel.skipped_receive_reset),
            Degradation::ProbeSkippedAccept => Some(self.kernel.skipped_accept),
            Degradation::ContainerUnresolved => Some(self.container_unresolved),
            Degradation::WorkloadOverflow => Some(self.workload_overflow),
        }
    }

    /// Every figure by its name.
    pub fn accounting(&self) -> Accounting {
        let kernel = &self.kernel;
        let mut session = Figures::default();
        session.push("kernel_tracked", kernel.tracked);
        session.push("kernel_emitted", kernel.emitted);
        session.push("records_read", self.records_read);
        if let Some(pins) = kernel.pins {
            session.push("pins_adopted_records", pins.adopted_records);
            session.push("pins_adopted_open_sessions", pins.adopted_open);
            if let Some(left) = pins.left_records {
                session.push("pins_left_records", left);
            }
            if let Some(open) = pins.left_open {
                session.push("pins_left_open_sessions", open);
            }
        }
        for cause in FilterCause::ALL {
            session.push(cause.key(), self.filtered(cause));
        }
        for cause in LossCause::of_stage(Stage::Kernel).chain(LossCause::of_stage(Stage::Pipeline))
        {
            session.push(cause.key(), self.lost(cause));
        }
        // Kept by a rule whatever the sampler said: nothing left out.
        for rule in KeepRule::ALL {
            session.push(format!("kept_{}", rule.name()), self.sampling.kept(rule));
        }
        // Skipped hits a backup program handled: nothing lost, nothing degraded.
        session.push("recovered_probe_skipped", kernel.recovered_state_change);
        for cause in Degradation::ALL {
            if let Some(value) = self.degraded(cause) {
                session.push(cause.key(), value);
            }
        }
        let outputs = self
            .exports
            .iter()
            .map(ExportSnapshot::figures)
            .chain(self.locals.iter().map(LocalSnapshot::figures))
            .collect();
        Accounting { session, outputs }
    }

    /// Logs every counter: one `session accounting` line, one `export accounting` line per
    /// export output and one `output accounting` line per local output. `when` says which
    /// (`periodic` or `final`); the final figures are also logged as one JSON line, with
    /// the verdict of [`Accounting::reconcile`].
    pub fn log(&self, when: &'static str) {
        let accounting = self.accounting();
        accounting.log(when);
        if when == "final" {
            accounting.log_final();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A consistent final snapshot: 10 records, 1 lost to a full channel; the OTLP output
    /// exported 7, 1 rejected, 1 at a full queue; the console wrote 8 and lost 1 at shutdown.
    fn snapshot() -> Snapshot {
        Snapshot {
            kernel: KernelCounters {
                tracked: 12,
                emitted: 10,
                ring_buffer_full: 2,
                map_update_failed: 1,
                filtered_at_birth: 3,
                filtered_after_tracking: 4,
                birth_not_seen: 5,
                unknown_birth_skipped: 6,
                released: 11,
                open_at_detach: Some(0),
                skipped_state_change: 7,
                recovered_state_change: 8,
                skipped_receive_reset: 9,
                skipped_accept: 10,
                pins: None,
            },
            records_read: 10,
            lost_decode_error: 0,
            lost_channel_full: 1,
            container_unresolved: 11,
            workload_overflow: 12,
            sampling: SamplingCounts::default(),
            exports: vec![ExportSnapshot {
                output: "otlp",
                enqueued: 8,
                exported: 7,
                lost_rejected: 1,
                lost_queue_full: 1,
                export_errors: 2,
                ..ExportSnapshot::default()
            }],
            locals: vec![LocalSnapshot {
                output: "console",
                written: 8,
                lost_at_shutdown: 1,
                ..LocalSnapshot::default()
            }],
        }
    }

    /// Collects what the `fmt` subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The log lines `log` writes, without timestamps, level and target.
    fn logged(log: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| line.trim_start().split_once(' ').unwrap().1.to_owned())
            .collect()
    }

    #[test]
    fn the_accounting_lines_name_every_figure_once_and_the_final_json_reconciles() {
        let lines = logged(|| snapshot().log("final"));
        assert_eq!(
            lines,
            [
                "session accounting when=\"final\" kernel_tracked=12 kernel_emitted=10 \
                 records_read=10 filtered_at_birth=3 filtered_after_tracking=4 \
                 filtered_unknown_birth=6 filtered_sampled_out=0 filtered_drop_port=0 \
                 filtered_drop_peer=0 filtered_drop_process=0 lost_ring_buffer_full=2 lost_probe_skipped=7 \
                 lost_decode_error=0 lost_channel_full=1 kept_failed=0 kept_long=0 \
                 recovered_probe_skipped=8 \
                 degraded_birth_not_seen=5 degraded_evicted=1 degraded_map_update_failed=1 \
                 degraded_probe_skipped_reset=9 degraded_probe_skipped_accept=10 \
                 degraded_container_unresolved=11 degraded_workload_overflow=12",
                "export accounting when=\"final\" output=\"otlp\" enqueued=8 exported=7 \
                 exported_unconfirmed=0 queued=0 lost_queue_full=1 lost_rejected=1 \
                 lost_spool_full=0 lost_spool_torn=0 lost_at_shutdown=0 export_errors=2 \
                 spool_found=0 spooled=0 delivered_from_spool=0 spool_maybe_duplicated=0 \
                 spool_left=0 spool_bytes=0",
                "output accounting when=\"final\" output=\"console\" written=8 queued=0 \
                 lost_output_full=0 lost_output_failed=0 lost_at_shutdown=1",
                &format!(
                    "final accounting json={}",
                    snapshot().accounting().to_json(&Ok(()))
                ),
            ]
        );
        let json = Accounting::final_json(&lines.join("\n")).unwrap();
        assert_eq!(json["reconciled"], true, "{json}");
        assert_eq!(json["outputs"][1]["lost_at_shutdown"], 1, "{json}");
        assert_eq!(Accounting::from_json(&json).unwrap().reconcile(), Ok(()));
    }

    #[test]
    fn a_final_accounting_that_does_not_reconcile_says_so() {
        let mut broken = snapshot();
        broken.locals[0].written = 9;
        let lines = logged(|| broken.log("final"));
        assert_eq!(
            lines[3],
            "the final accounting does not reconcile imbalance=console: written + unconfirmed \
             + lost + queued = 10, but records_read - the pipeline's losses and filters = 9"
        );
        let json = Accounting::final_json(&lines.join("\n")).unwrap();
        assert_eq!(json["reconciled"], false, "{json}");
        // Periodic lines carry no verdict.
        assert_eq!(logged(|| broken.log("periodic")).len(), 3);
    }
}
