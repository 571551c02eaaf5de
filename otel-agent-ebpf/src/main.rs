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
//! Filters set at load time reject sessions as soon as the fact they test is known, before
//! any map insert where it is known at birth. Every outcome is counted per CPU in `COUNTERS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _, Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use common::{
    AF_INET, AF_INET6, COMM_LEN, Filters, IPPROTO_TCP, KernelOffsets, MAX_FILTER_PORTS,
    SessionRecord, SocketState as Socket, counter, flags, offsets_valid, origin, states, tcp_state,
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

#[unsafe(no_mangle)]
static KERNEL_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
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
});

#[unsafe(no_mangle)]
static FILTERS: Global<Filters> = Global::new(Filters {
    pid: 0,
    exclude_pid: 0,
    netns: 0,
    family: 0,
    local_port_count: 0,
    remote_port_count: 0,
    _padding: 0,
    local_ports: [0; MAX_FILTER_PORTS],
    remote_ports: [0; MAX_FILTER_PORTS],
});

#[unsafe(no_mangle)]
static REPORT_UNKNOWN_BIRTH: Global<u32> = Global::new(1);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

#[map]
static SOCKETS: LruHashMap<u64, Socket> = LruHashMap::with_max_entries(1 << 16, 0);

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
    let offsets = KERNEL_OFFSETS.load();
    if !(0..MAX_FD).contains(&fd) || offsets.valid & offsets_valid::ACCEPT == 0 {
        return;
    }
    // SAFETY: the helper takes no arguments; the pointer is only read through probe reads.
    let task = unsafe { bpf_get_current_task() };
    let Some(skaddr) = read::<u64>(task, offsets.task_files)
        .and_then(|files| read::<u64>(files, offsets.files_fdt))
        .and_then(|fdt| read::<u64>(fdt, offsets.fdtable_fd))
        .and_then(|fds| read::<u64>(fds, (fd as u32) * 8))
        .and_then(|file| read::<u64>(file, offsets.file_private_data))
        .and_then(|socket| read::<u64>(socket, offsets.socket_sk))
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

fn on_state_change(args: &InetSockSetState) {
    let skaddr = args.skaddr;
    let newstate = args.newstate;
    let Some(socket) = SOCKETS.get_ptr_mut(skaddr) else {
        if newstate < tcp_state::FIN_WAIT1 {
            on_birth(args);
        } else if newstate == tcp_state::CLOSE
            && args.oldstate != tcp_state::LISTEN
            && args.oldstate != tcp_state::CLOSE
        {
            // A listener closing, or a socket closed before it ever left CLOSE, is not a
            // session; anything else opened before the probe (or was evicted).
            on_close(args, None);
        }
        return;
    };
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
            let copy = *socket;
            let _ = SOCKETS.remove(skaddr);
            count(counter::RELEASED);
            on_close(args, Some(&copy));
        }
        _ => {}
    }
}

fn on_birth(args: &InetSockSetState) {
    let newstate = args.newstate;
    // Only connect() runs SYN_SENT in the owner's context: the pid filter can act now.
    let owner_known = newstate == tcp_state::SYN_SENT;
    let pid = current_pid();
    // The local port of a connecting socket is not bound yet (sport is 0): checked later.
    let rejected = !family_allowed(args)
        || !port_allowed(args.dport, false)
        || (args.sport != 0 && !port_allowed(args.sport, true))
        || (owner_known && !pid_allowed(pid))
        || !netns_allowed(args.skaddr);
    if rejected {
        count(counter::FILTERED_AT_BIRTH);
        return;
    }
    let socket = Socket {
        birth_ns: now_ns(),
        established_ns: 0,
        states: states::bit(newstate),
        pid: if owner_known { pid } else { 0 },
        comm: if owner_known {
            current_comm()
        } else {
            [0; COMM_LEN]
        },
        origin: match newstate {
            tcp_state::SYN_SENT => origin::ACTIVE,
            tcp_state::SYN_RECV => origin::PASSIVE,
            _ => origin::UNKNOWN,
        },
        owner_known: u8::from(owner_known),
        _padding: [0; 6],
    };
    if SOCKETS.insert(args.skaddr, socket, 0).is_ok() {
        count(counter::TRACKED);
    } else {
        count(counter::MAP_UPDATE_FAILED);
    }
}

/// Emits the record of a closed session; `socket` is `None` when its birth was not seen.
fn on_close(args: &InetSockSetState, socket: Option<&Socket>) {
    let owner_known = socket.is_some_and(|s| s.owner_known == 1);
    let pid = match socket {
        Some(s) if owner_known => s.pid,
        _ => current_pid(),
    };
    let tracked = socket.is_some();
    let filtered = !port_allowed(args.sport, true)
        || !pid_allowed(pid)
        || (!tracked && (!family_allowed(args) || !port_allowed(args.dport, false)))
        || (!tracked && !netns_allowed(args.skaddr));
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
        if REPORT_UNKNOWN_BIRTH.load() == 0 {
            count(counter::UNKNOWN_BIRTH_SKIPPED);
            return;
        }
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
    record.close_from_state = args.oldstate as u8;
    record.pid = pid;
    if let Some(socket) = socket {
        record.birth_ns = socket.birth_ns;
        record.established_ns = socket.established_ns;
        record.origin = socket.origin;
        record.states = socket.states | states::bit(tcp_state::CLOSE);
        record.flags |= flags::BIRTH_SEEN;
    } else {
        record.states = states::bit(tcp_state::CLOSE);
    }
    match socket {
        Some(socket) if owner_known => {
            record.comm = socket.comm;
            record.flags |= flags::OWNER_FROM_SYSCALL;
        }
        _ => record.comm = current_comm(),
    }
    if args.family == AF_INET {
        record.local_addr[..4].copy_from_slice(&args.saddr.to_ne_bytes());
        record.remote_addr[..4].copy_from_slice(&args.daddr.to_ne_bytes());
    } else {
        record.local_addr = ipv6_bytes(args.saddr_v6);
        record.remote_addr = ipv6_bytes(args.daddr_v6);
    }
    read_socket_fields(args.skaddr, record);
    entry.submit(0);
    count(counter::EMITTED);
}

/// Reads the `tcp_sock` counters, sequence numbers and network namespace at close, for the
/// groups whose offsets the agent resolved from BTF.
fn read_socket_fields(skaddr: u64, record: &mut SessionRecord) {
    let offsets = KERNEL_OFFSETS.load();
    if offsets.valid & offsets_valid::BYTES != 0
        && let (Some(acked), Some(received)) = (
            read::<u64>(skaddr, offsets.bytes_acked),
            read::<u64>(skaddr, offsets.bytes_received),
        )
    {
        record.bytes_acked = acked;
        record.bytes_received = received;
        record.flags |= flags::BYTES_VALID;
    }
    if offsets.valid & offsets_valid::SEQ != 0
        && let (Some(snd_una), Some(write_seq), Some(rcv_nxt), Some(copied_seq)) = (
            read::<u32>(skaddr, offsets.snd_una),
            read::<u32>(skaddr, offsets.write_seq),
            read::<u32>(skaddr, offsets.rcv_nxt),
            read::<u32>(skaddr, offsets.copied_seq),
        )
    {
        record.snd_una = snd_una;
        record.write_seq = write_seq;
        record.rcv_nxt = rcv_nxt;
        record.copied_seq = copied_seq;
        record.flags |= flags::SEQ_VALID;
    }
    if offsets.valid & offsets_valid::HEALTH != 0
        && let (Some(srtt), Some(retrans), Some(segs_in), Some(segs_out)) = (
            read::<u32>(skaddr, offsets.srtt_us),
            read::<u32>(skaddr, offsets.total_retrans),
            read::<u32>(skaddr, offsets.segs_in),
            read::<u32>(skaddr, offsets.segs_out),
        )
    {
        // The kernel keeps the smoothed RTT scaled by 8 (`tcp_rtt_estimator`).
        record.srtt_us = srtt >> 3;
        record.total_retrans = retrans;
        record.segs_in = segs_in;
        record.segs_out = segs_out;
        record.flags |= flags::HEALTH_VALID;
    }
    if let Some(netns) = netns_of(skaddr) {
        record.netns = netns;
        record.flags |= flags::NETNS_VALID;
    }
}

/// Sets `bits` in the state of a tracked socket.
fn mark(skaddr: u64, bits: u32) {
    if let Some(socket) = SOCKETS.get_ptr_mut(skaddr) {
        // SAFETY: a live map value.
        unsafe { (*socket).states |= bits };
    }
}

/// The inode number of the socket's network namespace.
fn netns_of(skaddr: u64) -> Option<u32> {
    let offsets = KERNEL_OFFSETS.load();
    if offsets.valid & offsets_valid::NETNS == 0 {
        return None;
    }
    let net = read::<u64>(skaddr, offsets.sock_net)?;
    read::<u32>(net, offsets.net_inum)
}

/// Reads a `T` at `base + offset` in kernel memory.
fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

fn family_allowed(args: &InetSockSetState) -> bool {
    let wanted = FILTERS.load().family;
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

fn port_allowed(port: u16, local: bool) -> bool {
    let filters = FILTERS.load();
    let (count, ports) = if local {
        (filters.local_port_count, filters.local_ports)
    } else {
        (filters.remote_port_count, filters.remote_ports)
    };
    if count == 0 {
        return true;
    }
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
    let filters = FILTERS.load();
    (filters.pid == 0 || filters.pid == pid) && filters.exclude_pid != pid
}

fn netns_allowed(skaddr: u64) -> bool {
    let wanted = FILTERS.load().netns;
    wanted == 0 || netns_of(skaddr) == Some(wanted)
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

/// The current task's name.
fn current_comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
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
