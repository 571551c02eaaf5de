//! The close of a session: the filters that could only act at close (the local port of a
//! connecting socket, the owner), the unknown-birth policy, then the session record written
//! into the ring buffer `EVENTS` (every field once), and whether its submission wakes the
//! agent.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::RingBuf,
};
use common::{
    AF_INET, SessionRecord, SocketState as Socket, counter, flags, origin, states, tcp_state,
};

use crate::{
    counters::count,
    filters::{family_allowed, netns_allowed, pid_allowed, port_allowed},
    kernel::KernelFields,
    state_change::Ends,
    task::{current_cgroup_id, current_comm, current_exe, current_pid, now_ns},
};

#[unsafe(no_mangle)]
static REPORT_UNKNOWN_BIRTH: u32 = 1;

#[unsafe(no_mangle)]
static RING_WAKEUP_BYTES: u64 = 0;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Emits the record of a closed session; `socket` is `None` when its birth was not seen.
/// The filters that could not act at birth (local port, owner) act here first. Filters and
/// record stay one function: split in two (even `#[inline(always)]`), the compiler
/// allocates registers differently and the program grows by 4 instructions.
pub(crate) fn on_close(
    skaddr: u64,
    oldstate: i32,
    args: &Ends,
    socket: Option<&Socket>,
    slot: u32,
) {
    let owner = socket.filter(|s| s.owner_known == 1);
    let pid = owner.map_or_else(current_pid, |s| s.pid);
    let tracked = socket.is_some();
    let filtered = !port_allowed(args.sport, true)
        || !pid_allowed(pid)
        || (!tracked && (!family_allowed(args) || !port_allowed(args.dport, false)))
        || (!tracked && !netns_allowed(skaddr));
    if filtered {
        count(if tracked {
            counter::FILTERED_AFTER_TRACKING
        } else {
            counter::FILTERED_AT_BIRTH
        });
        return;
    }
    if !tracked {
        count(counter::BIRTH_NOT_SEEN);
        if global!(REPORT_UNKNOWN_BIRTH) == 0 {
            count(counter::UNKNOWN_BIRTH_SKIPPED);
            return;
        }
    }
    let Some(mut entry) = EVENTS.reserve::<SessionRecord>(0) else {
        count(counter::RING_BUFFER_FULL);
        return;
    };
    let kernel = KernelFields::read(skaddr, slot);
    let (local_addr, remote_addr) = if args.family == AF_INET {
        (ipv4_bytes(args.saddr), ipv4_bytes(args.daddr))
    } else {
        (ipv6_bytes(args.saddr_v6), ipv6_bytes(args.daddr_v6))
    };
    let mut record_flags = kernel.flags;
    if tracked {
        record_flags |= flags::BIRTH_SEEN;
    }
    if owner.is_some() {
        record_flags |= flags::OWNER_FROM_SYSCALL;
    }
    // Every field written exactly once, straight into the ring buffer (the record has no
    // padding), instead of zeroing 200 bytes first.
    entry.write(SessionRecord {
        birth_ns: socket.map_or(0, |s| s.birth_ns),
        close_ns: now_ns(),
        established_ns: socket.map_or(0, |s| s.established_ns),
        bytes_acked: kernel.bytes[0],
        bytes_received: kernel.bytes[1],
        cgroup_id: owner.map_or_else(current_cgroup_id, |s| s.cgroup_id),
        pid,
        flags: record_flags,
        states: socket.map_or(0, |s| s.states) | states::bit(tcp_state::CLOSE),
        snd_una: kernel.seq[0],
        write_seq: kernel.seq[1],
        rcv_nxt: kernel.seq[2],
        copied_seq: kernel.seq[3],
        // The kernel keeps the smoothed RTT scaled by 8 (`tcp_rtt_estimator`).
        srtt_us: kernel.health[0] >> 3,
        total_retrans: kernel.health[1],
        segs_in: kernel.health[2],
        segs_out: kernel.health[3],
        netns: kernel.netns,
        family: args.family,
        local_port: args.sport,
        remote_port: args.dport,
        origin: socket.map_or(origin::UNKNOWN, |s| s.origin),
        close_from_state: oldstate as u8,
        local_addr,
        remote_addr,
        comm: owner.map_or_else(current_comm, |s| s.comm),
        exe: owner.map_or_else(|| current_exe(slot), |s| s.exe),
    });
    entry.submit(wakeup_flag());
    count(counter::EMITTED);
}

/// Whether submitting a record wakes the agent. A wakeup is an `irq_work`, which raises an
/// inter-processor interrupt (a VM exit in a guest): by far the largest cost of a record
/// when the agent keeps up and would be woken for every one. So the agent reads the ring
/// buffer periodically, and is woken at once only when this record takes the unread bytes
/// past a multiple of `RING_WAKEUP_BYTES` (a burst that could fill the ring before the next
/// read): a few wakeups per burst, not one per record once past the first multiple.
///
/// A wakeup's self-interrupt is taken while this program still runs, and softirqs run on
/// its exit, inside the program: their state changes are skipped by the kernel
/// (`recursion_misses`). One wakeup per record past a quarter full, as before, added about
/// 300 ns to each run in a burst (PERFORMANCE.md, "Skipped tracepoint hits").
fn wakeup_flag() -> u64 {
    let step = global!(RING_WAKEUP_BYTES);
    let unread = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    // The unread bytes include this record (reserved, not yet submitted) and its header.
    let before = unread.saturating_sub(RECORD_RING_BYTES);
    if step == 0 || unread / step != before / step {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// What one record takes in the ring buffer: the record and the ring buffer's 8-byte header
/// (`BPF_RINGBUF_HDR_SZ`), rounded up to 8 bytes.
const RECORD_RING_BYTES: u64 = (core::mem::size_of::<SessionRecord>() as u64 + 8).div_ceil(8) * 8;

/// An IPv4 address read as a word, back in memory (network) byte order, in the first 4 of
/// 16 bytes.
fn ipv4_bytes(word: u32) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..4].copy_from_slice(&word.to_ne_bytes());
    bytes
}

/// An IPv6 address read as two words, back in memory (network) byte order.
pub(crate) fn ipv6_bytes(words: [u64; 2]) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&words[0].to_ne_bytes());
    bytes[8..].copy_from_slice(&words[1].to_ne_bytes());
    bytes
}
