//! Reads of kernel memory at the offsets the agent resolved from BTF and set in the global
//! `KERNEL_OFFSETS`: the socket's head (for the raw tracepoint), its `tcp_sock` window (the
//! counters and sequence numbers read at close), its network namespace, and single values.
//! Each read goes through `bpf_probe_read_kernel`, which fails instead of faulting; a group
//! whose offsets were not resolved is not read.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated},
    macros::map,
    maps::PerCpuArray,
};
use common::{
    KernelOffsets, SOCK_HEAD_BYTES, SOCK_INET_BYTES, TCP_WINDOW_MAX, flags, offsets_valid,
};

#[unsafe(no_mangle)]
pub(crate) static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    valid: 0,
    bytes_acked: 0,
    bytes_received: 0,
    snd_una: 0,
    write_seq: 0,
    rcv_nxt: 0,
    copied_seq: 0,
    srtt_us: 0,
    total_retrans: 0,
    segs_in: 0,
    segs_out: 0,
    sock_net: 0,
    net_inum: 0,
    task_files: 0,
    files_fdt: 0,
    fdtable_fd: 0,
    file_private_data: 0,
    socket_sk: 0,
    tcp_window: 0,
    tcp_window_len: 0,
    sk_protocol: 0,
    skc_family: 0,
    skc_dport: 0,
    skc_daddr: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    inet_sport: 0,
    inet_saddr: 0,
    task_mm: 0,
    mm_exe_file: 0,
    file_dentry: 0,
    dentry_name: 0,
};

/// Per-CPU buffers come in two slots: the backup program runs nested inside the primary one
/// (see [`inet_sock_set_state_backup`](crate::programs::inet_sock_set_state_backup)) and
/// must not overwrite the primary's copy.
const SLOTS: u32 = 2;
/// The slot of the tracepoint program and of the primary raw tracepoint program.
pub(crate) const PRIMARY_SLOT: u32 = 0;
/// The slot of the backup raw tracepoint program.
pub(crate) const BACKUP_SLOT: u32 = 1;

/// Where `KernelFields::read` copies `KERNEL_OFFSETS.tcp_window`, as words so that the
/// (aligned) members are read with one load each.
#[map]
static TCP_WINDOW: PerCpuArray<[u64; TCP_WINDOW_MAX / 8]> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Where the raw tracepoint program copies the head of a `struct sock` (see [`SockHead`]).
#[map]
static SOCK_HEAD: PerCpuArray<[u64; SOCK_BUFFER_BYTES / 8]> =
    PerCpuArray::with_max_entries(SLOTS, 0);

/// Reads a `T` at `base + offset` in kernel memory.
pub(crate) fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The inode number of the socket's network namespace.
pub(crate) fn netns_of(skaddr: u64) -> Option<u32> {
    if global!(KERNEL_OFFSETS.valid) & offsets_valid::NETNS == 0 {
        return None;
    }
    let net = read::<u64>(skaddr, global!(KERNEL_OFFSETS.sock_net))?;
    read::<u32>(net, global!(KERNEL_OFFSETS.net_inum))
}

/// Bytes of the buffer holding a copy of the first [`SOCK_HEAD_BYTES`] of a `struct sock`
/// (its `struct sock_common`), then [`SOCK_INET_BYTES`] from `inet_sock.inet_saddr`.
const SOCK_BUFFER_BYTES: usize = SOCK_HEAD_BYTES + SOCK_INET_BYTES;

/// The copy of the socket's head and `inet_sock` window.
pub(crate) struct SockHead(&'static [u8; SOCK_BUFFER_BYTES]);

impl SockHead {
    /// Copies the head and window of the socket at `sk` into this CPU's buffer `slot`.
    pub(crate) fn read(sk: u64, slot: u32) -> Option<Self> {
        let buffer = SOCK_HEAD
            .get_ptr_mut(slot)?
            .cast::<[u8; SOCK_BUFFER_BYTES]>();
        let inet = sk + u64::from(global!(KERNEL_OFFSETS.inet_saddr));
        // SAFETY: the two reads fill the two parts of this CPU's buffer, which nothing else
        // uses while the program runs (preemption is disabled, and the program does not nest
        // in itself); the helper checks the source address and fails instead of faulting.
        let copied = unsafe {
            generated::bpf_probe_read_kernel(
                buffer.cast(),
                SOCK_HEAD_BYTES as u32,
                sk as *const core::ffi::c_void,
            ) | generated::bpf_probe_read_kernel(
                buffer.cast::<u8>().add(SOCK_HEAD_BYTES).cast(),
                SOCK_INET_BYTES as u32,
                inet as *const core::ffi::c_void,
            )
        };
        // SAFETY: as above; the buffer lives as long as the map.
        (copied == 0).then(|| Self(unsafe { &*buffer }))
    }

    /// The `T` at `offset` in the buffer, if it holds it.
    pub(crate) fn at<T: Copy>(&self, offset: u32) -> Option<T> {
        let offset = offset as usize;
        if offset + size_of::<T>() > SOCK_BUFFER_BYTES {
            return None;
        }
        // SAFETY: in bounds (checked above); any bit pattern is a valid integer or array of
        // integers, and the read is unaligned-safe.
        Some(unsafe { core::ptr::read_unaligned(self.0.as_ptr().add(offset).cast::<T>()) })
    }
}

/// The `tcp_sock` counters, sequence numbers and network namespace read at close, for the
/// groups whose offsets the agent resolved from BTF: a group not read is zero, its flag
/// clear.
#[derive(Default)]
pub(crate) struct KernelFields {
    /// `bytes_acked`, `bytes_received`.
    pub(crate) bytes: [u64; 2],
    /// `snd_una`, `write_seq`, `rcv_nxt`, `copied_seq`.
    pub(crate) seq: [u32; 4],
    /// `srtt_us`, `total_retrans`, `segs_in`, `segs_out`.
    pub(crate) health: [u32; 4],
    pub(crate) netns: u32,
    /// Bits from [`flags`]: the groups read.
    pub(crate) flags: u32,
}

impl KernelFields {
    /// One `bpf_probe_read_kernel` of the `tcp_sock` window instead of one per member (ten):
    /// the helper call, not the copy, is what costs.
    pub(crate) fn read(skaddr: u64, slot: u32) -> Self {
        let valid = global!(KERNEL_OFFSETS.valid);
        let mut fields = Self::default();
        if let Some(window) = read_tcp_window(skaddr, slot) {
            if valid & offsets_valid::BYTES != 0
                && let (Some(acked), Some(received)) = (
                    window.u64_at(global!(KERNEL_OFFSETS.bytes_acked)),
                    window.u64_at(global!(KERNEL_OFFSETS.bytes_received)),
                )
            {
                fields.bytes = [acked, received];
                fields.flags |= flags::BYTES_VALID;
            }
            if valid & offsets_valid::SEQ != 0
                && let (Some(snd_una), Some(write_seq), Some(rcv_nxt), Some(copied_seq)) = (
                    window.u32_at(global!(KERNEL_OFFSETS.snd_una)),
                    window.u32_at(global!(KERNEL_OFFSETS.write_seq)),
                    window.u32_at(global!(KERNEL_OFFSETS.rcv_nxt)),
                    window.u32_at(global!(KERNEL_OFFSETS.copied_seq)),
                )
            {
                fields.seq = [snd_una, write_seq, rcv_nxt, copied_seq];
                fields.flags |= flags::SEQ_VALID;
            }
            if valid & offsets_valid::HEALTH != 0
                && let (Some(srtt), Some(retrans), Some(segs_in), Some(segs_out)) = (
                    window.u32_at(global!(KERNEL_OFFSETS.srtt_us)),
                    window.u32_at(global!(KERNEL_OFFSETS.total_retrans)),
                    window.u32_at(global!(KERNEL_OFFSETS.segs_in)),
                    window.u32_at(global!(KERNEL_OFFSETS.segs_out)),
                )
            {
                fields.health = [srtt, retrans, segs_in, segs_out];
                fields.flags |= flags::HEALTH_VALID;
            }
        }
        if let Some(netns) = netns_of(skaddr) {
            fields.netns = netns;
            fields.flags |= flags::NETNS_VALID;
        }
        fields
    }
}

/// A copy of the socket's `tcp_sock` window (`KERNEL_OFFSETS.tcp_window`).
struct TcpWindow(&'static [u64; TCP_WINDOW_MAX / 8]);

impl TcpWindow {
    /// The aligned `u64` member at `offset` in `struct sock`, if the window holds it.
    fn u64_at(&self, offset: u32) -> Option<u64> {
        let index = offset.checked_sub(global!(KERNEL_OFFSETS.tcp_window))?;
        if index % 8 != 0 {
            return None;
        }
        self.0.get(index as usize / 8).copied()
    }

    /// The aligned `u32` member at `offset` in `struct sock`, if the window holds it.
    fn u32_at(&self, offset: u32) -> Option<u32> {
        let index = offset.checked_sub(global!(KERNEL_OFFSETS.tcp_window))?;
        if index % 4 != 0 {
            return None;
        }
        let word = *self.0.get(index as usize / 8)?;
        // Which half of the word holds the bytes at `index` (shifts, not byte indexing: the
        // verifier refuses what the compiler makes of the latter).
        let half = index % 8;
        let shift = if cfg!(target_endian = "little") {
            half * 8
        } else {
            (4 - half) * 8
        };
        Some((word >> shift) as u32)
    }
}

/// Copies the socket's `tcp_sock` window into this CPU's buffer; `None` when no group of
/// the window was resolved or the read failed.
fn read_tcp_window(skaddr: u64, slot: u32) -> Option<TcpWindow> {
    let len = global!(KERNEL_OFFSETS.tcp_window_len);
    if len == 0 || len as usize > TCP_WINDOW_MAX {
        return None;
    }
    let buffer = TCP_WINDOW.get_ptr_mut(slot)?;
    let source = skaddr + u64::from(global!(KERNEL_OFFSETS.tcp_window));
    // SAFETY: at most TCP_WINDOW_MAX bytes into this CPU's buffer, which nothing else uses
    // while the program runs (preemption is disabled); the helper checks the source
    // address and fails instead of faulting.
    let copied = unsafe {
        generated::bpf_probe_read_kernel(buffer.cast(), len, source as *const core::ffi::c_void)
    };
    // SAFETY: as above; the buffer lives as long as the map.
    (copied == 0).then(|| TcpWindow(unsafe { &*buffer }))
}
