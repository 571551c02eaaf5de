//! The agent's own accounting: every session the pipeline receives, every place one can be
//! lost, and every span handed to the exporter. Names are spelled here once; the shutdown
//! summary logs them together with the probe's kernel counters.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::probe::KernelCounters;

/// Userspace counters, shared between the reader and the pipeline.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Records read from the ring buffer.
    pub records_read: AtomicU64,
    /// Records that failed to decode (lost).
    pub decode_errors: AtomicU64,
    /// Records dropped because the pipeline's channel was full (lost).
    pub channel_full: AtomicU64,
    /// Sessions handed to the span exporter.
    pub spans_recorded: AtomicU64,
    /// Sessions printed to the console.
    pub lines_printed: AtomicU64,
}

impl PipelineStats {
    /// Adds one to `counter`.
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Logs every counter, userspace and kernel, in one line.
    pub fn log_summary(&self, kernel: Option<KernelCounters>) {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let kernel = kernel.unwrap_or_default();
        tracing::info!(
            kernel_tracked = kernel.tracked,
            kernel_emitted = kernel.emitted,
            records_read = get(&self.records_read),
            spans_recorded = get(&self.spans_recorded),
            lines_printed = get(&self.lines_printed),
            birth_not_seen = kernel.birth_not_seen,
            kernel_evicted = kernel.evicted(),
            skipped_unknown_birth = kernel.unknown_birth_skipped,
            filtered_at_birth = kernel.filtered_at_birth,
            filtered_after_tracking = kernel.filtered_after_tracking,
            lost_ring_buffer_full = kernel.ring_buffer_full,
            lost_decode_error = get(&self.decode_errors),
            lost_channel_full = get(&self.channel_full),
            kernel_map_update_failed = kernel.map_update_failed,
            "session accounting"
        );
    }
}
