//! The current task (its process id and name) and the clock.

use core::mem::MaybeUninit;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated};
use common::COMM_LEN;

/// `CLOCK_MONOTONIC` in ns.
pub(crate) fn now_ns() -> u64 {
    // SAFETY: the helper takes no arguments and cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

/// The current task's process (thread group) id.
pub(crate) fn current_pid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// A task name in an 8-byte aligned buffer: the BPF backend copies an aligned 16-byte array
/// with two 8-byte loads and stores, a byte array byte by byte.
#[repr(C, align(8))]
struct Comm([u8; COMM_LEN]);

/// The current task's name, NUL-padded (all zeros if the kernel cannot read it).
pub(crate) fn current_comm() -> [u8; COMM_LEN] {
    let mut comm = MaybeUninit::<Comm>::uninit();
    // SAFETY: the helper writes all COMM_LEN bytes: the name and NUL padding, or zeros when
    // it fails (`bpf_get_current_comm` in kernel/bpf/helpers.c), so `comm` is initialised.
    // (aya's wrapper zeroes the buffer first, with a byte-by-byte `memset` call.)
    unsafe {
        generated::bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32);
        comm.assume_init().0
    }
}

/// An empty task name. Built from two words: the BPF backend turns `[0; COMM_LEN]` into a
/// byte-by-byte `memset` call.
pub(crate) fn zero_comm() -> [u8; COMM_LEN] {
    // SAFETY: any 16 bytes are a valid [u8; 16].
    unsafe { core::mem::transmute::<[u64; 2], [u8; COMM_LEN]>([0, 0]) }
}
