//! The agent's own accounting: every session the pipeline receives, every place one can be
//! lost (in the kernel, in the pipeline, in each export queue and local output), and every
//! span exported and line written.
//! Names are spelled here once; a [`Snapshot`] feeds the periodic and final log lines and
//! the self-metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{export::OutputHandle, local::LocalHandle, probe::KernelCounters};

/// Userspace counters, shared between the reader and the pipeline.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Records read from the ring buffer.
    pub records_read: AtomicU64,
    /// Records that failed to decode (lost).
    pub decode_errors: AtomicU64,
    /// Records dropped because the pipeline's channel was full (lost).
    pub channel_full: AtomicU64,
}

impl PipelineStats {
    /// Adds one to `counter`.
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One export output's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSnapshot {
    /// `otlp` or `json`.
    pub output: &'static str,
    pub enqueued: u64,
    pub exported: u64,
    /// Answered with a success that was not an OTLP response: neither exported nor lost.
    pub unconfirmed: u64,
    pub rejected: u64,
    pub dropped_queue_full: u64,
    pub dropped_at_shutdown: u64,
    pub export_errors: u64,
    pub queue_depth: u64,
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
    pub fn of(output: &LocalHandle) -> Self {
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
}

/// Every counter at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub kernel: KernelCounters,
    pub records_read: u64,
    pub decode_errors: u64,
    pub channel_full: u64,
    pub exports: Vec<ExportSnapshot>,
    pub locals: Vec<LocalSnapshot>,
}

impl ExportSnapshot {
    /// Reads the counters of `output` now.
    pub fn of(output: &OutputHandle) -> Self {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Self {
            output: output.name,
            enqueued: get(&output.stats.enqueued),
            exported: get(&output.stats.exported),
            unconfirmed: get(&output.stats.unconfirmed),
            rejected: get(&output.stats.rejected),
            dropped_queue_full: get(&output.stats.dropped_queue_full),
            dropped_at_shutdown: get(&output.stats.dropped_at_shutdown),
            export_errors: get(&output.stats.export_errors),
            queue_depth: output.queue.depth() as u64,
        }
    }

    /// Sessions this output lost, every cause counted.
    pub fn lost(&self) -> u64 {
        self.dropped_queue_full + self.dropped_at_shutdown + self.rejected
    }
}

impl Snapshot {
    /// Reads every counter now.
    pub fn take(
        kernel: KernelCounters,
        pipeline: &PipelineStats,
        outputs: &[OutputHandle],
        locals: &[LocalHandle],
    ) -> Self {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Self {
            kernel,
            records_read: get(&pipeline.records_read),
            decode_errors: get(&pipeline.decode_errors),
            channel_full: get(&pipeline.channel_full),
            exports: outputs.iter().map(ExportSnapshot::of).collect(),
            locals: locals.iter().map(LocalSnapshot::of).collect(),
        }
    }

    /// Logs every counter: one `session accounting` line, one `export accounting` line per
    /// export output and one `output accounting` line per local output. `when` says which (`periodic` or `final`).
    pub fn log(&self, when: &'static str) {
        let kernel = &self.kernel;
        tracing::info!(
            when,
            kernel_tracked = kernel.tracked,
            kernel_emitted = kernel.emitted,
            records_read = self.records_read,
            birth_not_seen = kernel.birth_not_seen,
            kernel_evicted = kernel.evicted(),
            skipped_unknown_birth = kernel.unknown_birth_skipped,
            filtered_at_birth = kernel.filtered_at_birth,
            filtered_after_tracking = kernel.filtered_after_tracking,
            lost_ring_buffer_full = kernel.ring_buffer_full,
            lost_probe_skipped = kernel.skipped_state_change,
            recovered_probe_skipped = kernel.recovered_state_change,
            degraded_probe_skipped_reset = kernel.skipped_receive_reset,
            degraded_probe_skipped_accept = kernel.skipped_accept,
            lost_decode_error = self.decode_errors,
            lost_channel_full = self.channel_full,
            kernel_map_update_failed = kernel.map_update_failed,
            "session accounting"
        );
        for export in &self.exports {
            tracing::info!(
                when,
                output = export.output,
                enqueued = export.enqueued,
                exported = export.exported,
                exported_unconfirmed = export.unconfirmed,
                queued = export.queue_depth,
                lost_rejected = export.rejected,
                lost_queue_full = export.dropped_queue_full,
                lost_at_shutdown = export.dropped_at_shutdown,
                export_errors = export.export_errors,
                "export accounting"
            );
        }
        for local in &self.locals {
            tracing::info!(
                when,
                output = local.output,
                written = local.written,
                queued = local.queued,
                lost_output_full = local.lost_output_full,
                lost_output_failed = local.lost_output_failed,
                lost_at_shutdown = local.lost_at_shutdown,
                "output accounting"
            );
        }
    }
}
