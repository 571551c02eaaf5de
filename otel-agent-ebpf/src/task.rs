//! The current task (its process id, name, cgroup and executable) and the clock.

use core::mem::MaybeUninit;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated};
use common::{COMM_LEN, EXE_LEN, offsets_valid};

use crate::kernel::KERNEL_OFFSETS;

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

/// The current task's cgroup on the cgroup v2 hierarchy (the inode number of its
/// directory there; 1, the root, for a task that no one placed in a v2 cgroup).
pub(crate) fn current_cgroup_id() -> u64 {
    // SAFETY: the helper takes no arguments and cannot fail.
    unsafe { generated::bpf_get_current_cgroup_id() }
}

/// An executable name in an 8-byte aligned buffer (see [`Comm`]).
#[repr(C, align(8))]
struct Exe([u8; EXE_LEN]);

/// The current task's executable file name, `task->mm->exe_file->f_path.dentry->d_name`,
/// NUL-padded and cut at `EXE_LEN - 1` bytes. The task comes from
/// `bpf_get_current_task_btf`, so the verifier knows its type and turns the four pointer
/// loads along the chain into direct loads that fault safely (`BPF_PROBE_MEM`: a bad
/// address reads as 0), far cheaper than a `bpf_probe_read_kernel` call each; only the name
/// is copied by a helper. All zeros for a kernel thread (its `mm` is NULL), for a task past
/// `exit_mm`, or when the `EXE` offsets were not resolved.
pub(crate) fn current_exe() -> [u8; EXE_LEN] {
    let mut exe = Exe(zero_exe());
    if global!(KERNEL_OFFSETS.valid) & offsets_valid::EXE == 0 {
        return exe.0;
    }
    // SAFETY: the helper takes no arguments and returns the current task.
    let task = unsafe { generated::bpf_get_current_task_btf() } as u64;
    let name = [
        global!(KERNEL_OFFSETS.task_mm),
        global!(KERNEL_OFFSETS.mm_exe_file),
        global!(KERNEL_OFFSETS.file_dentry),
        global!(KERNEL_OFFSETS.dentry_name),
    ]
    .into_iter()
    .try_fold(task, |base, offset| {
        // SAFETY: `base` is a kernel pointer of the type the verifier tracks from the
        // task, and `offset` (frozen read-only data, known to the verifier) names a pointer
        // member of it; the verifier checks this against the kernel's BTF and makes the
        // load fault-safe.
        let next = unsafe { core::ptr::read_volatile((base + u64::from(offset)) as *const u64) };
        (next != 0).then_some(next)
    });
    if let Some(name) = name {
        // SAFETY: the helper writes at most EXE_LEN bytes into the buffer, NUL included,
        // and zeroes it on failure; it checks the source address and fails instead of
        // faulting.
        unsafe {
            generated::bpf_probe_read_kernel_str(
                exe.0.as_mut_ptr().cast(),
                EXE_LEN as u32,
                name as *const core::ffi::c_void,
            );
        }
    }
    exe.0
}

/// An empty executable name, built from words (see [`zero_comm`]).
pub(crate) fn zero_exe() -> [u8; EXE_LEN] {
    // SAFETY: any EXE_LEN bytes are a valid [u8; EXE_LEN].
    unsafe { core::mem::transmute::<[u64; EXE_LEN / 8], [u8; EXE_LEN]>([0; EXE_LEN / 8]) }
}
