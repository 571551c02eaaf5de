//! The probe. Its main program on `sock:inet_sock_set_state` follows tcplife's rules: it
//! records a TCP socket's birth (first state below `TCP_FIN_WAIT1`), remembers every state
//! the socket enters and the process that owns it, and at `TCP_CLOSE` writes one
//! [`SessionRecord`] into the ring buffer and forgets the socket, on every path.
//!
//! Small programs add what tcplife lacks: `tcp:tcp_receive_reset` marks resets from the
//! peer (it fires before the socket reaches `TCP_CLOSE`; `tcp:tcp_send_reset` fires after,
//! so resets this side sends are inferred in userspace from the states), and `syscalls:sys_exit_accept{,4}` record the process that accepted a
//! connection (the owner of a server-side session), found through the new file descriptor.
//!
//! The state-change program comes in two attach types, chosen at load time: the classic
//! tracepoint (reads the event record; needs tracefs) and a raw tracepoint
//! (`inet_sock_set_state_raw`: gets the tracepoint's arguments and reads family, ports and
//! addresses from the socket, at offsets from BTF). A classic tracepoint program is skipped
//! while any BPF tracing program runs on the CPU (the global `bpf_prog_active`); a raw
//! tracepoint only while the same program runs (its own `prog->active`).
//!
//! Filters set at load time reject sessions as soon as the fact they test is known, before
//! any map insert where it is known at birth. Every outcome is counted per CPU in `COUNTERS`.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use common::{
    AF_INET, AF_INET6, COMM_LEN, Filters, IPPROTO_TCP, KernelOffsets, MAX_FILTER_PORTS,
    SOCK_HEAD_BYTES, SOCK_INET_BYTES, SessionRecord, SocketState as Socket, TCP_WINDOW_MAX,
    counter, flags, offsets_valid, origin, states, tcp_state,
};

/// `sock:inet_sock_set_state`, as laid out in
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

/// The first fields of `tcp:tcp_receive_reset`
/// (`/sys/kernel/tracing/events/tcp/tcp_receive_reset/format`): skaddr@8.
#[repr(C)]
struct TcpReceiveReset {
    _common: u64,
    skaddr: u64,
}

/// `syscalls:sys_exit_accept` and `syscalls:sys_exit_accept4`
/// (`/sys/kernel/tracing/events/syscalls/sys_exit_accept4/format`): __syscall_nr@8, ret@16.
#[repr(C)]
struct SysExit {
    _common: u64,
    _syscall_nr: u64,
    ret: i64,
}

/// Highest file descriptor the accept programs look up (bounds the fd table read).
const MAX_FD: i64 = 1 << 20;

// The loader rewrites these globals (`.rodata`) before the program is loaded, so they are read
// only through `global!`. Frozen read-only data is known to the verifier, which removes the
// branches that the load-time settings make dead (an unset filter costs nothing).
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
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
};

#[unsafe(no_mangle)]
static FILTERS: Filters = Filters {
    pid: 0,
    exclude_pid: 0,
    netns: 0,
    family: 0,
    local_port_count: 0,
    remote_port_count: 0,
    _padding: 0,
    local_ports: [0; MAX_FILTER_PORTS],
    remote_ports: [0; MAX_FILTER_PORTS],
};

#[unsafe(no_mangle)]
static REPORT_UNKNOWN_BIRTH: u32 = 1;

#[unsafe(no_mangle)]
static RING_WAKEUP_BYTES: u64 = 0;

/// Reads one field of a global set at load time. Volatile, or the compiler would fold in the
/// value compiled in; one field, because a volatile read of a whole struct copies all of it
/// on every use.
macro_rules! global {
    ($($place:tt)+) => {
        // SAFETY: a field of an initialised static, read in place.
        unsafe { core::ptr::read_volatile(&raw const $($place)+) }
    };
}

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

#[map]
static SOCKETS: LruHashMap<u64, Socket> = LruHashMap::with_max_entries(1 << 16, 0);

/// Where `KernelFields::read` copies `KERNEL_OFFSETS.tcp_window`, as words so that the
/// (aligned) members are read with one load each.
#[map]
static TCP_WINDOW: PerCpuArray<[u64; TCP_WINDOW_MAX / 8]> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Per-CPU buffers come in two slots: the backup program runs nested inside the primary one
/// (see [`inet_sock_set_state_backup`]) and must not overwrite the primary's copy.
const SLOTS: u32 = 2;
/// The slot of the tracepoint program and of the primary raw tracepoint program.
const PRIMARY_SLOT: u32 = 0;
/// The slot of the backup raw tracepoint program.
const BACKUP_SLOT: u32 = 1;

/// Where the raw tracepoint program copies the head of a `struct sock` (see [`SockHead`]).
#[map]
static SOCK_HEAD: PerCpuArray<[u64; SOCK_BUFFER_BYTES / 8]> =
    PerCpuArray::with_max_entries(SLOTS, 0);

/// 1 while the primary raw tracepoint program runs on this CPU, for the backup program.
#[map]
static PRIMARY_RUNNING: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY: a tracepoint program's context points at the event record described by the
    // format file, which `InetSockSetState` mirrors; the verifier bounds every read.
    let args = unsafe { &*ctx.as_ptr().cast::<InetSockSetState>() };
    if args.protocol == IPPROTO_TCP {
        on_state_change(args);
    }
    0
}

/// The same tracepoint, attached raw: its arguments are `TP_PROTO(const struct sock *sk,
/// const int oldstate, const int newstate)` (include/trace/events/sock.h).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> u32 {
    if global!(KERNEL_OFFSETS.valid) & offsets_valid::SOCK == 0 {
        return 0;
    }
    let change = RawStateChange {
        sk: ctx.arg(0),
        oldstate: ctx.arg::<u64>(1) as i32,
        newstate: ctx.arg::<u64>(2) as i32,
        slot: PRIMARY_SLOT,
    };
    let Some(running) = PRIMARY_RUNNING.get_ptr_mut(0) else {
        on_state_change(&change);
        return 0;
    };
    // SAFETY: this CPU's flag; this program does not nest in itself, and the backup program
    // only reads it.
    unsafe { *running = 1 };
    on_state_change(&change);
    // SAFETY: as above.
    unsafe { *running = 0 };
    0
}

/// The same raw tracepoint, attached after [`inet_sock_set_state_raw`], with its own
/// recursion guard: it handles the hits that arrive (in a softirq) while the primary runs
/// on this CPU, which the kernel skips for the primary, and ignores the rest (the primary
/// handled them). The kernel skips this program only while it runs itself, and then the
/// primary handles the hit. A hit skipped for the primary in the few instructions around
/// its flag (the kernel marks it running before it starts and after it ends) is handled by
/// neither, and counted: the primary's misses less the hits recovered here.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_backup(ctx: RawTracePointContext) -> u32 {
    if global!(KERNEL_OFFSETS.valid) & offsets_valid::SOCK == 0 {
        return 0;
    }
    let change = RawStateChange {
        sk: ctx.arg(0),
        oldstate: ctx.arg::<u64>(1) as i32,
        newstate: ctx.arg::<u64>(2) as i32,
        slot: BACKUP_SLOT,
    };
    // Not nested inside the primary: it handled this hit.
    if PRIMARY_RUNNING.get(0).is_none_or(|running| *running == 0) {
        return 0;
    }
    count(counter::SKIPPED_RECOVERED);
    on_state_change(&change);
    0
}

/// One `inet_sock_set_state` hit, whichever way the program is attached.
trait StateChange {
    /// Which per-CPU buffers to use.
    fn slot(&self) -> u32;
    /// Whether the socket is a TCP one (the tracepoint also fires for SCTP and MPTCP):
    /// asked only where the answer is needed, at a birth or a close.
    fn is_tcp(&self) -> bool;
    fn skaddr(&self) -> u64;
    fn oldstate(&self) -> i32;
    fn newstate(&self) -> i32;
    /// Family, ports and addresses, as the tracepoint records them.
    fn ends(&self) -> Ends;
}

/// A socket's family, ports (host byte order) and addresses (read as words, in network
/// byte order in memory; the IPv6 ones only meaningful for `AF_INET6`).
struct Ends {
    family: u16,
    sport: u16,
    dport: u16,
    saddr: u32,
    daddr: u32,
    saddr_v6: [u64; 2],
    daddr_v6: [u64; 2],
}

impl StateChange for InetSockSetState {
    fn slot(&self) -> u32 {
        PRIMARY_SLOT
    }

    fn is_tcp(&self) -> bool {
        // Checked at entry: a field of the record costs nothing.
        true
    }

    fn skaddr(&self) -> u64 {
        self.skaddr
    }

    fn oldstate(&self) -> i32 {
        self.oldstate
    }

    fn newstate(&self) -> i32 {
        self.newstate
    }

    fn ends(&self) -> Ends {
        // The verifier only allows loads at constant offsets from the context: the arrays are
        // read word by word (a copy would go through a moved pointer).
        // SAFETY: words of the context record, read in place.
        let word = |place: &u64| unsafe { core::ptr::read_volatile(place) };
        Ends {
            family: self.family,
            sport: self.sport,
            dport: self.dport,
            saddr: self.saddr,
            daddr: self.daddr,
            saddr_v6: [word(&self.saddr_v6[0]), word(&self.saddr_v6[1])],
            daddr_v6: [word(&self.daddr_v6[0]), word(&self.daddr_v6[1])],
        }
    }
}

/// The raw tracepoint's arguments; the rest is read from the socket as the tracepoint's
/// `TP_fast_assign` does: family and ports from `sk_family`, `inet_sport`, `inet_dport`,
/// IPv4 addresses from `inet_saddr`, `inet_daddr`, IPv6 ones from `sk_v6_rcv_saddr`,
/// `sk_v6_daddr`. A failed read leaves zero.
struct RawStateChange {
    sk: u64,
    oldstate: i32,
    newstate: i32,
    /// Which per-CPU buffers to use.
    slot: u32,
}

impl StateChange for RawStateChange {
    fn slot(&self) -> u32 {
        self.slot
    }

    fn is_tcp(&self) -> bool {
        read::<u16>(self.sk, global!(KERNEL_OFFSETS.sk_protocol)) == Some(IPPROTO_TCP)
    }

    fn skaddr(&self) -> u64 {
        self.sk
    }

    fn oldstate(&self) -> i32 {
        self.oldstate
    }

    fn newstate(&self) -> i32 {
        self.newstate
    }

    fn ends(&self) -> Ends {
        let mut ends = Ends {
            family: 0,
            sport: 0,
            dport: 0,
            saddr: 0,
            daddr: 0,
            saddr_v6: [0; 2],
            daddr_v6: [0; 2],
        };
        // Two reads (the helper call is what costs): `struct sock_common`, and the
        // `inet_saddr`..`inet_sport` window of `struct inet_sock`.
        let Some(head) = SockHead::read(self.sk, self.slot) else {
            return ends;
        };
        let saddr = global!(KERNEL_OFFSETS.inet_saddr);
        let inet = |offset: u32| SOCK_HEAD_BYTES as u32 + offset - saddr;
        ends.family = head.at(global!(KERNEL_OFFSETS.skc_family)).unwrap_or(0);
        ends.sport = u16::from_be(
            head.at(inet(global!(KERNEL_OFFSETS.inet_sport)))
                .unwrap_or(0),
        );
        ends.dport = u16::from_be(head.at(global!(KERNEL_OFFSETS.skc_dport)).unwrap_or(0));
        if ends.family == AF_INET6 {
            ends.saddr_v6 = head
                .at(global!(KERNEL_OFFSETS.skc_v6_rcv_saddr))
                .unwrap_or([0; 2]);
            ends.daddr_v6 = head
                .at(global!(KERNEL_OFFSETS.skc_v6_daddr))
                .unwrap_or([0; 2]);
        } else {
            ends.saddr = head.at(inet(saddr)).unwrap_or(0);
            ends.daddr = head.at(global!(KERNEL_OFFSETS.skc_daddr)).unwrap_or(0);
        }
        ends
    }
}

/// Bytes of the buffer holding a copy of the first [`SOCK_HEAD_BYTES`] of a `struct sock`
/// (its `struct sock_common`), then [`SOCK_INET_BYTES`] from `inet_sock.inet_saddr`.
const SOCK_BUFFER_BYTES: usize = SOCK_HEAD_BYTES + SOCK_INET_BYTES;

/// The copy of the socket's head and `inet_sock` window.
struct SockHead(&'static [u8; SOCK_BUFFER_BYTES]);

impl SockHead {
    /// Copies the head and window of the socket at `sk` into this CPU's buffer `slot`.
    fn read(sk: u64, slot: u32) -> Option<Self> {
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
    fn at<T: Copy>(&self, offset: u32) -> Option<T> {
        let offset = offset as usize;
        if offset + size_of::<T>() > SOCK_BUFFER_BYTES {
            return None;
        }
        // SAFETY: in bounds (checked above); any bit pattern is a valid integer or array of
        // integers, and the read is unaligned-safe.
        Some(unsafe { core::ptr::read_unaligned(self.0.as_ptr().add(offset).cast::<T>()) })
    }
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    // SAFETY: as above, for `TcpReceiveReset`.
    let args = unsafe { &*ctx.as_ptr().cast::<TcpReceiveReset>() };
    mark(args.skaddr, states::RESET_RECEIVED);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept(&ctx);
    0
}

/// Runs as `accept()` returns, in the accepting process, which owns the new socket: finds
/// the socket through the returned descriptor (task -> files -> fdt -> fd[ret] -> file ->
/// socket -> sk) and caches the owner.
fn on_accept(ctx: &TracePointContext) {
    // SAFETY: as for `inet_sock_set_state`, for `SysExit`.
    let args = unsafe { &*ctx.as_ptr().cast::<SysExit>() };
    let fd = args.ret;
    if !(0..MAX_FD).contains(&fd) || global!(KERNEL_OFFSETS.valid) & offsets_valid::ACCEPT == 0 {
        return;
    }
    // SAFETY: the helper takes no arguments; the pointer is only read through probe reads.
    let task = unsafe { bpf_get_current_task() };
    let Some(skaddr) = read::<u64>(task, global!(KERNEL_OFFSETS.task_files))
        .and_then(|files| read::<u64>(files, global!(KERNEL_OFFSETS.files_fdt)))
        .and_then(|fdt| read::<u64>(fdt, global!(KERNEL_OFFSETS.fdtable_fd)))
        .and_then(|fds| read::<u64>(fds, (fd as u32) * 8))
        .and_then(|file| read::<u64>(file, global!(KERNEL_OFFSETS.file_private_data)))
        .and_then(|socket| read::<u64>(socket, global!(KERNEL_OFFSETS.socket_sk)))
    else {
        return;
    };
    let Some(socket) = SOCKETS.get_ptr_mut(skaddr) else {
        return;
    };
    let pid = current_pid();
    if !pid_allowed(pid) {
        let _ = SOCKETS.remove(skaddr);
        count(counter::RELEASED);
        count(counter::FILTERED_AFTER_TRACKING);
        return;
    }
    // SAFETY: a live map value; the socket lock serialises changes to one socket.
    let socket = unsafe { &mut *socket };
    socket.pid = pid;
    socket.comm = current_comm();
    socket.owner_known = 1;
}

fn on_state_change(change: &impl StateChange) {
    let skaddr = change.skaddr();
    let oldstate = change.oldstate();
    let newstate = change.newstate();
    let Some(socket) = SOCKETS.get_ptr_mut(skaddr) else {
        if newstate < tcp_state::FIN_WAIT1 {
            if change.is_tcp() {
                on_birth(skaddr, newstate, &change.ends());
            }
        } else if newstate == tcp_state::CLOSE
            && oldstate != tcp_state::LISTEN
            && oldstate != tcp_state::CLOSE
            && change.is_tcp()
        {
            // A listener closing, or a socket closed before it ever left CLOSE, is not a
            // session; anything else opened before the probe (or was evicted).
            on_close(skaddr, oldstate, &change.ends(), None, change.slot());
        }
        return;
    };
    // Only TCP sockets are tracked (their birth was checked), so a change of a tracked
    // socket needs no check until its close.
    // SAFETY: a live map value; the socket lock serialises changes to one socket.
    let socket = unsafe { &mut *socket };
    socket.states |= states::bit(newstate);
    match newstate {
        tcp_state::ESTABLISHED if socket.established_ns == 0 => socket.established_ns = now_ns(),
        // These changes run in the system call (connect, close, shutdown) of the process
        // that owns the socket, so the current task is the owner.
        tcp_state::SYN_SENT | tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK => {
            socket.pid = current_pid();
            socket.comm = current_comm();
            socket.owner_known = 1;
        }
        tcp_state::CLOSE => {
            // Copied out first: the removed entry may be reused at once by another CPU.
            let copy = *socket;
            let _ = SOCKETS.remove(skaddr);
            count(counter::RELEASED);
            // Checked again: a close missed by the probe may leave an entry that another
            // protocol's socket at the same address later meets.
            if change.is_tcp() {
                on_close(skaddr, oldstate, &change.ends(), Some(&copy), change.slot());
            }
        }
        _ => {}
    }
}

fn on_birth(skaddr: u64, newstate: i32, args: &Ends) {
    // Only connect() runs SYN_SENT in the owner's context: the pid filter can act now.
    let owner_known = newstate == tcp_state::SYN_SENT;
    let pid = if owner_known { current_pid() } else { 0 };
    // The local port of a connecting socket is not bound yet (sport is 0): checked later.
    let rejected = !family_allowed(args)
        || !port_allowed(args.dport, false)
        || (args.sport != 0 && !port_allowed(args.sport, true))
        || (owner_known && !pid_allowed(pid))
        || !netns_allowed(skaddr);
    if rejected {
        count(counter::FILTERED_AT_BIRTH);
        return;
    }
    let socket = Socket {
        birth_ns: now_ns(),
        established_ns: 0,
        states: states::bit(newstate),
        pid,
        comm: if owner_known {
            current_comm()
        } else {
            zero_comm()
        },
        origin: match newstate {
            tcp_state::SYN_SENT => origin::ACTIVE,
            tcp_state::SYN_RECV => origin::PASSIVE,
            _ => origin::UNKNOWN,
        },
        owner_known: u8::from(owner_known),
        _padding: 0,
        _padding_tail: 0,
    };
    if SOCKETS.insert(skaddr, socket, 0).is_ok() {
        count(counter::TRACKED);
    } else {
        count(counter::MAP_UPDATE_FAILED);
    }
}

/// Emits the record of a closed session; `socket` is `None` when its birth was not seen.
fn on_close(skaddr: u64, oldstate: i32, args: &Ends, socket: Option<&Socket>, slot: u32) {
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
    // padding), instead of zeroing 144 bytes first.
    entry.write(SessionRecord {
        birth_ns: socket.map_or(0, |s| s.birth_ns),
        close_ns: now_ns(),
        established_ns: socket.map_or(0, |s| s.established_ns),
        bytes_acked: kernel.bytes[0],
        bytes_received: kernel.bytes[1],
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
    });
    entry.submit(wakeup_flag());
    count(counter::EMITTED);
}

/// The `tcp_sock` counters, sequence numbers and network namespace read at close, for the
/// groups whose offsets the agent resolved from BTF: a group not read is zero, its flag
/// clear.
#[derive(Default)]
struct KernelFields {
    /// `bytes_acked`, `bytes_received`.
    bytes: [u64; 2],
    /// `snd_una`, `write_seq`, `rcv_nxt`, `copied_seq`.
    seq: [u32; 4],
    /// `srtt_us`, `total_retrans`, `segs_in`, `segs_out`.
    health: [u32; 4],
    netns: u32,
    /// Bits from [`flags`]: the groups read.
    flags: u32,
}

impl KernelFields {
    /// One `bpf_probe_read_kernel` of the `tcp_sock` window instead of one per member (ten):
    /// the helper call, not the copy, is what costs.
    fn read(skaddr: u64, slot: u32) -> Self {
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

/// Sets `bits` in the state of a tracked socket.
fn mark(skaddr: u64, bits: u32) {
    if let Some(socket) = SOCKETS.get_ptr_mut(skaddr) {
        // SAFETY: a live map value.
        unsafe { (*socket).states |= bits };
    }
}

/// The inode number of the socket's network namespace.
fn netns_of(skaddr: u64) -> Option<u32> {
    if global!(KERNEL_OFFSETS.valid) & offsets_valid::NETNS == 0 {
        return None;
    }
    let net = read::<u64>(skaddr, global!(KERNEL_OFFSETS.sock_net))?;
    read::<u32>(net, global!(KERNEL_OFFSETS.net_inum))
}

/// Reads a `T` at `base + offset` in kernel memory.
fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

fn family_allowed(args: &Ends) -> bool {
    let wanted = global!(FILTERS.family);
    if wanted == 0 {
        return true;
    }
    let effective = if args.family == AF_INET6 && is_ipv4_mapped(args.saddr_v6) {
        AF_INET
    } else {
        args.family
    };
    effective == wanted
}

/// `::ffff:a.b.c.d`: ten zero bytes, then two 0xff bytes.
fn is_ipv4_mapped(words: [u64; 2]) -> bool {
    let bytes = ipv6_bytes(words);
    bytes[..10].iter().all(|&b| b == 0) && bytes[10] == 0xff && bytes[11] == 0xff
}

#[inline(always)]
fn port_allowed(port: u16, local: bool) -> bool {
    let count = if local {
        global!(FILTERS.local_port_count)
    } else {
        global!(FILTERS.remote_port_count)
    };
    if count == 0 {
        return true;
    }
    let ports = if local {
        global!(FILTERS.local_ports)
    } else {
        global!(FILTERS.remote_ports)
    };
    let mut index = 0;
    while index < MAX_FILTER_PORTS {
        if index < usize::from(count) && ports[index] == port {
            return true;
        }
        index += 1;
    }
    false
}

fn pid_allowed(pid: u32) -> bool {
    let wanted = global!(FILTERS.pid);
    (wanted == 0 || wanted == pid) && global!(FILTERS.exclude_pid) != pid
}

fn netns_allowed(skaddr: u64) -> bool {
    let wanted = global!(FILTERS.netns);
    wanted == 0 || netns_of(skaddr) == Some(wanted)
}

/// An IPv4 address read as a word, back in memory (network) byte order, in the first 4 of
/// 16 bytes.
fn ipv4_bytes(word: u32) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..4].copy_from_slice(&word.to_ne_bytes());
    bytes
}

/// An IPv6 address read as two words, back in memory (network) byte order.
fn ipv6_bytes(words: [u64; 2]) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&words[0].to_ne_bytes());
    bytes[8..].copy_from_slice(&words[1].to_ne_bytes());
    bytes
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

/// A task name in an 8-byte aligned buffer: the BPF backend copies an aligned 16-byte array
/// with two 8-byte loads and stores, a byte array byte by byte.
#[repr(C, align(8))]
struct Comm([u8; COMM_LEN]);

/// The current task's name, NUL-padded (all zeros if the kernel cannot read it).
fn current_comm() -> [u8; COMM_LEN] {
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
fn zero_comm() -> [u8; COMM_LEN] {
    // SAFETY: any 16 bytes are a valid [u8; 16].
    unsafe { core::mem::transmute::<[u64; 2], [u8; COMM_LEN]>([0, 0]) }
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
