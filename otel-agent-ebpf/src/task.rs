//! The current task (its process id, name, cgroup and executable) and the clock.

use core::mem::MaybeUninit;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    macros::map,
    maps::PerCpuArray,
};
use common::{COMM_LEN, EXE_LEN, ExeName, offsets_valid};

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

/// The last executable read on this CPU, per slot: `current_exe` reads the chain and the
/// name only for a process (pid, memory map and executable file) other than the last one.
#[repr(C)]
struct LastExe {
    /// The process id, `task->mm` and `mm->exe_file` of the process the name belongs to
    /// (`mm` 0: none yet).
    pid: u64,
    mm: u64,
    file: u64,
    name: ExeName,
}

/// The slot of the accept program in [`LAST_EXE`] (the state-change programs use theirs,
/// [`PRIMARY_SLOT`](crate::kernel::PRIMARY_SLOT) and
/// [`BACKUP_SLOT`](crate::kernel::BACKUP_SLOT)): a state change in a softirq may run in the
/// middle of an accept on the same CPU, and must not overwrite its entry.
pub(crate) const ACCEPT_SLOT: u32 = 2;

#[map]
static LAST_EXE: PerCpuArray<LastExe> = PerCpuArray::with_max_entries(ACCEPT_SLOT + 1, 0);

/// The current task's executable file name, `task->mm->exe_file->f_path.dentry->d_name`,
/// NUL-padded and cut at `EXE_LEN - 1` bytes. The task comes from
/// `bpf_get_current_task_btf`, so the verifier knows its type and turns the pointer loads
/// along the chain into direct loads that fault safely (`BPF_PROBE_MEM`: a bad address
/// reads as 0), far cheaper than a `bpf_probe_read_kernel` call each. The name itself is
/// copied by a helper, only when the process (its pid, and its `mm` and `exe_file`, both
/// replaced by an `execve`) is not the last one seen in `slot` on this CPU: a server
/// accepting, a client connecting again and again pay two loads and a compare. The pid is
/// part of the key because the kernel reuses freed memory: a process started right after
/// another one exited often gets its `mm` and `exe_file` at the very same addresses (the
/// workload test met it), and without the pid it would be given the last one's name. All
/// zeros for a kernel thread
/// (its `mm` is NULL), for a task past `exit_mm`, or when the `EXE` offsets were not
/// resolved.
pub(crate) fn current_exe(slot: u32) -> ExeName {
    if global!(KERNEL_OFFSETS.valid) & offsets_valid::EXE == 0 {
        return zero_exe();
    }
    // SAFETY: the helper takes no arguments and returns the current task.
    let task = unsafe { generated::bpf_get_current_task_btf() } as u64;
    let Some(mm) = btf_load(task, global!(KERNEL_OFFSETS.task_mm)) else {
        return zero_exe();
    };
    let Some(file) = btf_load(mm, global!(KERNEL_OFFSETS.mm_exe_file)) else {
        return zero_exe();
    };
    let Some(last) = LAST_EXE.get_ptr_mut(slot) else {
        return zero_exe();
    };
    // SAFETY: this CPU's entry for `slot`, which nothing else uses while the program runs
    // (preemption is disabled, and a program that may nest uses another slot).
    let last = unsafe { &mut *last };
    let pid = u64::from(current_pid());
    if last.pid == pid && last.mm == mm && last.file == file {
        return last.name;
    }
    let Some(name) = btf_load(file, global!(KERNEL_OFFSETS.file_dentry))
        .and_then(|dentry| btf_load(dentry, global!(KERNEL_OFFSETS.dentry_name)))
    else {
        return zero_exe();
    };
    // SAFETY: the helper writes at most EXE_LEN bytes into the entry's buffer, NUL
    // included, and zeroes it on failure; it checks the source address and fails instead
    // of faulting.
    let copied = unsafe {
        generated::bpf_probe_read_kernel_str(
            last.name.0.as_mut_ptr().cast(),
            EXE_LEN as u32,
            name as *const core::ffi::c_void,
        )
    };
    if copied <= 0 {
        last.mm = 0;
        return zero_exe();
    }
    last.pid = pid;
    last.mm = mm;
    last.file = file;
    last.name
}

/// The pointer member at `offset` of the kernel object at `base`, 0 read as `None`.
fn btf_load(base: u64, offset: u32) -> Option<u64> {
    // SAFETY: `base` is a kernel pointer of the type the verifier tracks from the task, and
    // `offset` (frozen read-only data, known to the verifier) names a pointer member of it;
    // the verifier checks this against the kernel's BTF and makes the load fault-safe.
    let next = unsafe { core::ptr::read_volatile((base + u64::from(offset)) as *const u64) };
    (next != 0).then_some(next)
}

/// Zero words, read as values the compiler cannot see (see [`zero_exe`]).
static ZERO_WORDS: [u64; EXE_LEN / 8] = [0; EXE_LEN / 8];

/// An empty executable name. Built from words read from [`ZERO_WORDS`] with volatile loads:
/// LLVM turns zeros it can see (a literal, an array repeat, zero stores) of this size into a
/// call to `memset`, which the BPF backend runs byte by byte (see [`zero_comm`]).
pub(crate) fn zero_exe() -> ExeName {
    let words = ZERO_WORDS.each_ref().map(|word| {
        // SAFETY: a word of an initialised static, read in place.
        unsafe { core::ptr::read_volatile(word) }
    });
    // SAFETY: any EXE_LEN bytes, 8-byte aligned, are a valid ExeName.
    unsafe { core::mem::transmute::<[u64; EXE_LEN / 8], ExeName>(words) }
}
