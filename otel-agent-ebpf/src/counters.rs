//! The per-CPU outcome counters (`COUNTERS`, indexed by [`common::counter`]), which the
//! agent sums over the CPUs.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use common::counter;

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Adds one to this CPU's counter `index` (one of [`counter`]).
pub(crate) fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and the program runs with preemption disabled.
        unsafe { *slot += 1 };
    }
}
