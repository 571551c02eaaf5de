//! Reads session records from the probe's ring buffer every [`READ_INTERVAL`], and at once
//! when the probe wakes its fd (`AsyncFd`) because the ring buffer is filling up; drains it
//! until empty, decodes each item (never holding one across an await) and hands the records
//! to the pipeline through a bounded channel, counting what a full channel or a bad record
//! costs ([`PipelineStats`]).

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use common::SessionRecord;
use tokio::{
    io::unix::AsyncFd,
    sync::mpsc,
    time::{self, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;

use crate::probe::pins::Consumption;

/// Userspace counters, shared between the reader and the pipeline.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Records read from the ring buffer.
    pub records_read: AtomicU64,
    /// Records that failed to decode (lost).
    pub lost_decode_error: AtomicU64,
    /// Records dropped because the pipeline's channel was full (lost).
    pub lost_channel_full: AtomicU64,
}

impl PipelineStats {
    /// Adds one to `counter`.
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How long a record may wait in the ring buffer: the probe wakes the reader only when the
/// ring buffer passes a quarter full (a wakeup per record is the probe's largest cost).
pub const READ_INTERVAL: Duration = Duration::from_millis(10);

/// Reads until `stop` is cancelled, then drains what is left and returns, closing `tx`.
/// A pinned probe (`pinned`: where to record what was read, for the next agent) keeps
/// writing: nothing is drained at stop, what it writes waits for the next agent.
pub async fn read(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<SessionRecord>,
    stats: Arc<PipelineStats>,
    stop: CancellationToken,
    mut pinned: Option<Consumption>,
) -> io::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
    // `AsyncFd` (which owns the ring buffer) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|error| error.into_parts().1)?;
    let mut tick = time::interval(READ_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => drain(ring.get_mut(), &tx, &stats),
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &tx, &stats);
                guard.clear_ready();
            }
        }
        record_consumption(pinned.as_mut(), &stats);
    }
    if pinned.is_none() {
        drain(ring.get_mut(), &tx, &stats);
    }
    record_consumption(pinned.as_mut(), &stats);
    Ok(())
}

/// A pinned probe: records what this agent has read so far in the pin directory (a failure
/// is logged: the next agent would count those records as waiting).
fn record_consumption(pinned: Option<&mut Consumption>, stats: &PipelineStats) {
    let Some(consumption) = pinned else {
        return;
    };
    let read = stats.records_read.load(Ordering::Relaxed);
    if let Err(error) = consumption.record(read) {
        tracing::warn!(%error, "cannot record in the pin directory the records this agent read");
    }
}

/// Moves every record currently in the ring buffer to `tx`.
fn drain(ring: &mut RingBuf<MapData>, tx: &mpsc::Sender<SessionRecord>, stats: &PipelineStats) {
    while let Some(item) = ring.next() {
        PipelineStats::add(&stats.records_read);
        let decoded = SessionRecord::decode(&item);
        drop(item);
        match decoded {
            Ok(record) => {
                if tx.try_send(record).is_err() {
                    PipelineStats::add(&stats.lost_channel_full);
                }
            }
            Err(error) => {
                PipelineStats::add(&stats.lost_decode_error);
                tracing::warn!(%error, "dropped a ring-buffer record that is not a session");
            }
        }
    }
}
