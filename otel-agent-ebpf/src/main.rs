//! The probe: one tracepoint program on `sock:inet_sock_set_state` that follows tcplife's
//! rules. It records a TCP socket's birth (first state below `TCP_FIN_WAIT1`), caches the
//! owning process where the state change runs in that process's system call, and at
//! `TCP_CLOSE` writes one [`SessionRecord`] into the ring buffer and forgets the socket.
//!
//! Everything that can lose a session increments a per-CPU counter in `COUNTERS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _, Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use common::{AF_INET, COMM_LEN, IPPROTO_TCP, SessionRecord, counter, flags, origin, tcp_state};

/// The tracepoint's record, as laid out in
/// `/sys/kernel/tracing/events/sock/inet_sock_set_state/format` (stable since Linux 4.16):
/// skaddr@8, oldstate@16, newstate@20, sport@24, dport@26, family@28, protocol@30,
/// saddr@32, daddr@36, saddr_v6@40, daddr_v6@56. Ports are in host byte order, addresses
/// in network byte order. The agent checks these offsets against the running kernel's
/// format file before it attaches.
#[repr(C)]
struct InetSockSetState {
    _common: u64,
    skaddr: u64,
    oldstate: i32,
    newstate: i32,
    sport: u16,
    dport: u16,
    family: u16,
    protocol: u16,
    // The addresses are read as aligned words (the verifier only allows loads at constant
    // offsets from the context) and turned back into bytes in memory order.
    saddr: u32,
    daddr: u32,
    saddr_v6: [u64; 2],
    daddr_v6: [u64; 2],
}

/// What the probe remembers from a socket's birth.
#[repr(C)]
#[derive(Clone, Copy)]
struct Birth {
    /// `bpf_ktime_get_ns` at the first state below `TCP_FIN_WAIT1`.
    ns: u64,
    /// One of [`origin`].
    origin: u8,
}

/// The process cached as the socket's owner.
#[repr(C)]
#[derive(Clone, Copy)]
struct Owner {
    pid: u32,
    comm: [u8; COMM_LEN],
}

/// Offset of `bytes_received` in `struct tcp_sock`, resolved from BTF by the agent; 0 when
/// unknown.
#[unsafe(no_mangle)]
static TCP_SOCK_BYTES_RECEIVED_OFFSET: Global<u32> = Global::new(0);

/// Offset of `bytes_acked` in `struct tcp_sock`, resolved from BTF by the agent; 0 when
/// unknown.
#[unsafe(no_mangle)]
static TCP_SOCK_BYTES_ACKED_OFFSET: Global<u32> = Global::new(0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
static BIRTHS: LruHashMap<u64, Birth> = LruHashMap::with_max_entries(1 << 16, 0);

#[map]
static OWNERS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(1 << 16, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// `BPF_NOEXIST` from `include/uapi/linux/bpf.h`: keep the first birth.
const BPF_NOEXIST: u64 = 1;
/// `EEXIST` from `include/uapi/asm-generic/errno-base.h`, negated as helpers return it.
const NEG_EEXIST: i32 = -17;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY: a tracepoint program's context points at the event record described by the
    // format file, which `InetSockSetState` mirrors; the verifier bounds every read.
    let args = unsafe { &*ctx.as_ptr().cast::<InetSockSetState>() };
    if args.protocol != IPPROTO_TCP {
        return 0;
    }
    let newstate = args.newstate;
    if newstate < tcp_state::FIN_WAIT1 {
        on_birth(args.skaddr, newstate);
    }
    if newstate == tcp_state::SYN_SENT
        || newstate == tcp_state::FIN_WAIT1
        || newstate == tcp_state::LAST_ACK
    {
        // These changes run in the system call (connect, close, shutdown) of the process
        // that owns the socket, so the current task is the owner.
        remember_owner(args.skaddr);
    }
    if newstate == tcp_state::CLOSE {
        on_close(args);
    }
    0
}

fn on_birth(skaddr: u64, newstate: i32) {
    let origin = match newstate {
        tcp_state::SYN_SENT => origin::ACTIVE,
        tcp_state::SYN_RECV => origin::PASSIVE,
        _ => origin::UNKNOWN,
    };
    let birth = Birth {
        ns: now_ns(),
        origin,
    };
    // -EEXIST is the expected outcome for every early state after the first.
    if let Err(error) = BIRTHS.insert(skaddr, birth, BPF_NOEXIST)
        && error != NEG_EEXIST
    {
        count(counter::BIRTH_MAP_UPDATE_FAILED);
    }
}

fn remember_owner(skaddr: u64) {
    let owner = Owner {
        pid: current_pid(),
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    if OWNERS.insert(skaddr, owner, 0).is_err() {
        count(counter::OWNER_MAP_UPDATE_FAILED);
    }
}

fn on_close(args: &InetSockSetState) {
    let skaddr = args.skaddr;
    // SAFETY: the value is copied out at once; the map entry may be deleted below.
    let birth = unsafe { BIRTHS.get(skaddr) }.copied();
    // SAFETY: as above.
    let owner = unsafe { OWNERS.get(skaddr) }.copied();
    let _ = BIRTHS.remove(skaddr);
    let _ = OWNERS.remove(skaddr);

    // A listener closing, or a socket closed before it ever left CLOSE, is not a session.
    if birth.is_none() && (args.oldstate == tcp_state::LISTEN || args.oldstate == tcp_state::CLOSE)
    {
        return;
    }

    let Some(mut entry) = EVENTS.reserve::<SessionRecord>(0) else {
        count(counter::RING_BUFFER_FULL);
        return;
    };
    // Filled in place: the record is too large to build on the 512-byte BPF stack and copy.
    let record = entry.write(SessionRecord::default());
    record.close_ns = now_ns();
    record.family = args.family;
    record.local_port = args.sport;
    record.remote_port = args.dport;
    if let Some(birth) = birth {
        record.birth_ns = birth.ns;
        record.origin = birth.origin;
        record.flags |= flags::BIRTH_SEEN;
    }
    match owner {
        Some(owner) => {
            record.pid = owner.pid;
            record.comm = owner.comm;
        }
        None => {
            record.pid = current_pid();
            record.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        }
    }
    if args.family == AF_INET {
        record.local_addr[..4].copy_from_slice(&args.saddr.to_ne_bytes());
        record.remote_addr[..4].copy_from_slice(&args.daddr.to_ne_bytes());
    } else {
        record.local_addr = ipv6_bytes(args.saddr_v6);
        record.remote_addr = ipv6_bytes(args.daddr_v6);
    }
    if let Some((acked, received)) = read_byte_counters(skaddr) {
        record.bytes_acked = acked;
        record.bytes_received = received;
        record.flags |= flags::BYTES_VALID;
    }
    entry.submit(0);
}

/// An IPv6 address read as two words, back in memory (network) byte order.
fn ipv6_bytes(words: [u64; 2]) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&words[0].to_ne_bytes());
    bytes[8..].copy_from_slice(&words[1].to_ne_bytes());
    bytes
}

/// Reads `tcp_sock.bytes_acked` and `tcp_sock.bytes_received` at the offsets the agent
/// resolved from BTF (`struct tcp_sock` starts with `struct sock`, so `skaddr` points at
/// both).
fn read_byte_counters(skaddr: u64) -> Option<(u64, u64)> {
    let acked_offset = TCP_SOCK_BYTES_ACKED_OFFSET.load();
    let received_offset = TCP_SOCK_BYTES_RECEIVED_OFFSET.load();
    if acked_offset == 0 || received_offset == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    let acked = unsafe { bpf_probe_read_kernel((skaddr + u64::from(acked_offset)) as *const u64) };
    // SAFETY: as above.
    let received =
        unsafe { bpf_probe_read_kernel((skaddr + u64::from(received_offset)) as *const u64) };
    Some((acked.ok()?, received.ok()?))
}

/// `CLOCK_MONOTONIC` in ns.
fn now_ns() -> u64 {
    // SAFETY: the helper takes no arguments and cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

/// The current task's process (thread group) id.
fn current_pid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and the program runs with preemption disabled.
        unsafe { *slot += 1 };
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
