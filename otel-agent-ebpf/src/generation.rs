//! Which of the probes attached to the same tracepoint handles a hit, when the probe is
//! pinned (`--bpf-pin-dir`): a new agent attaches its programs next to the running ones and
//! hands over by setting `CONTROL[ACTIVE]` to its generation. Unpinned (`GENERATION` 0), the
//! program always handles, and the verifier removes the check (frozen read-only data).
//!
//! A hit runs every attached program in attach order, the retiring one first, and the flip
//! can fall between two of them. Every hit but a close is idempotent when handled twice (a
//! birth found tracked is a state change, and a state change or owner set twice is set
//! once), so only closes need more: while `CONTROL[RETIRING]` names the retiring generation,
//! it records each close it handles in this CPU's `HANDOFF` slots, and the newer program,
//! running next on the same CPU in the same hit, takes the record out and skips that close.
//! A socket's state changes are serialised by its lock, so a slot holding this socket's
//! address was written in this hit. Only a newer generation takes records out: links an
//! older agent left (a crash in the middle of a handover) never do. The agent waits a grace
//! period after each step of the handover, so that no hit sees two of them (see the agent's
//! `probe::pins`).

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use common::{HANDOFF_SLOTS, control};

#[unsafe(no_mangle)]
static GENERATION: u64 = 0;

#[map]
static CONTROL: Array<u64> = Array::with_max_entries(control::COUNT, 0);

#[map]
static HANDOFF: PerCpuArray<[u64; HANDOFF_SLOTS]> = PerCpuArray::with_max_entries(1, 0);

/// Whether this program handles the hit (`close`: whether it is a change to `TCP_CLOSE` of
/// the socket at `skaddr`).
#[inline(always)]
pub(crate) fn handles(close: bool, skaddr: u64) -> bool {
    let mine = global!(GENERATION);
    if mine == 0 {
        return true;
    }
    let active = CONTROL
        .get(control::ACTIVE)
        .is_some_and(|active| *active == mine);
    if !close {
        return active;
    }
    let retiring = CONTROL
        .get(control::RETIRING)
        .map_or(0, |retiring| *retiring);
    if retiring != 0
        && let Some(slots) = HANDOFF.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slots; a program nested on this CPU (an interrupt) uses another
        // slot, and its hit ends before this one resumes.
        let slots = unsafe { &mut *slots };
        if retiring == mine {
            if active {
                put(slots, skaddr);
            }
        } else if mine > retiring && take(slots, skaddr) {
            return false;
        }
    }
    active
}

/// Whether this program handles a hit that is not a state change (idempotent).
#[inline(always)]
pub(crate) fn active() -> bool {
    let mine = global!(GENERATION);
    mine == 0
        || CONTROL
            .get(control::ACTIVE)
            .is_some_and(|active| *active == mine)
}

/// Records `skaddr` in the first free slot.
fn put(slots: &mut [u64; HANDOFF_SLOTS], skaddr: u64) {
    let mut index = 0;
    while index < HANDOFF_SLOTS {
        if slots[index] == 0 {
            slots[index] = skaddr;
            return;
        }
        index += 1;
    }
}

/// Whether `skaddr` was recorded, freeing its slot.
fn take(slots: &mut [u64; HANDOFF_SLOTS], skaddr: u64) -> bool {
    let mut index = 0;
    while index < HANDOFF_SLOTS {
        if slots[index] == skaddr {
            slots[index] = 0;
            return true;
        }
        index += 1;
    }
    false
}
