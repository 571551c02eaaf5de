//! What the kernel knows about each attached program and aya 0.14 does not expose: its
//! `recursion_misses` (Linux 5.12+), the hits the kernel skipped because a BPF program was
//! already running on that CPU, and its run statistics (`run_time_ns`, `run_cnt`, counted
//! while `kernel.bpf_stats_enabled` is 1). Read with `BPF_OBJ_GET_INFO_BY_FD`.

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _},
};

/// `BPF_OBJ_GET_INFO_BY_FD` from `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The head of `struct bpf_prog_info` (include/uapi/linux/bpf.h) up to `recursion_misses`.
/// The kernel copies `min(info_len, its own size)` bytes, so an older kernel leaves the
/// members it lacks at zero (`recursion_misses` appeared in 5.12, `run_time_ns` in 5.1).
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    _prog_type: u32,
    id: u32,
    /// `tag` to `prog_tags` (tag, lengths, pointers, name, netns, BTF and line info).
    _before_run_time: [u64; 23],
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
}

// Offsets of `struct bpf_prog_info` on every 64-bit architecture (pahole).
const _: () = assert!(std::mem::offset_of!(ProgInfoHead, run_time_ns) == 192);
const _: () = assert!(std::mem::offset_of!(ProgInfoHead, recursion_misses) == 208);
const _: () = assert!(std::mem::size_of::<ProgInfoHead>() == 216);

/// `attr.info` of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// One program's kernel-side statistics at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// The kernel's program id (as `bpftool prog show` lists it).
    pub id: u32,
    /// Hits the kernel skipped without running the program (`recursion_misses`).
    pub recursion_misses: u64,
    /// Time spent in the program, in ns (only while `kernel.bpf_stats_enabled` is 1).
    pub run_time_ns: u64,
    /// Runs of the program (only while `kernel.bpf_stats_enabled` is 1).
    pub run_cnt: u64,
}

/// Reads the statistics of the program behind `fd`.
pub fn program_stats(fd: impl AsFd) -> io::Result<ProgramStats> {
    let mut info = ProgInfoHead::default();
    let mut attr = InfoByFd {
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        info_len: size_of::<ProgInfoHead>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: `attr` is the `info` member of `union bpf_attr` for this command, and the size
    // passed is its size (the kernel zero-extends a shorter `bpf_attr`); `attr.info` points at
    // `info`, writable for `info_len` bytes, which the kernel fills (at most that many) before
    // the call returns. Both live on this stack frame across the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<InfoByFd>() as libc::c_uint,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ProgramStats {
        id: info.id,
        recursion_misses: info.recursion_misses,
        run_time_ns: info.run_time_ns,
        run_cnt: info.run_cnt,
    })
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    #[test]
    fn a_descriptor_that_is_not_a_bpf_program_is_an_error() {
        let file = File::open("/dev/null").unwrap();
        let error = program_stats(&file).unwrap_err();
        // EINVAL (not a BPF object), or EPERM without CAP_BPF before Linux 6.5.
        assert!(
            matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EPERM)),
            "{error}"
        );
    }
}
