//! The contract between the eBPF probe and the agent: the session record the probe writes
//! into the ring buffer at `TCP_CLOSE`, the names of the maps and globals the loader sets,
//! the indices of the kernel-side loss counters, and the layouts of the tracepoint records
//! the probe reads ([`tracepoint`]).
//!
//! Everything here is `#![no_std]` and made of fixed-width integers and byte arrays so that
//! both sides agree on the layout. Decoding (length checks, enums, addresses) lives behind
//! the `user` feature in [`user`].
#![no_std]

#[cfg(feature = "user")]
extern crate std;

pub mod tracepoint;
#[cfg(feature = "user")]
pub mod user;

/// Length of a kernel task name (`TASK_COMM_LEN` in `include/linux/sched.h`).
pub const COMM_LEN: usize = 16;

/// `AF_INET` from `include/linux/socket.h`.
pub const AF_INET: u16 = 2;
/// `AF_INET6` from `include/linux/socket.h`.
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP` from `include/uapi/linux/in.h`.
pub const IPPROTO_TCP: u16 = 6;

/// TCP states, from `include/net/tcp_states.h`.
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
    pub const CLOSING: i32 = 11;
}

/// How the session was opened, as far as the probe saw it (`SessionRecord::origin`).
pub mod origin {
    /// The birth was not seen, or not as `SYN_SENT` or `SYN_RECV`.
    pub const UNKNOWN: u8 = 0;
    /// The socket entered `SYN_SENT`: this side called `connect()`.
    pub const ACTIVE: u8 = 1;
    /// The socket was born in `SYN_RECV` from a listener: this side accepted.
    pub const PASSIVE: u8 = 2;
}

/// Bits of `SessionRecord::flags`.
pub mod flags {
    /// The probe saw the session's birth; `birth_ns` and `origin` are meaningful.
    pub const BIRTH_SEEN: u32 = 1 << 0;
    /// `bytes_acked` and `bytes_received` were read from `struct tcp_sock`.
    pub const BYTES_VALID: u32 = 1 << 1;
    /// `snd_una`, `write_seq`, `rcv_nxt` and `copied_seq` were read.
    pub const SEQ_VALID: u32 = 1 << 2;
    /// `srtt_us`, `total_retrans`, `segs_in` and `segs_out` were read.
    pub const HEALTH_VALID: u32 = 1 << 3;
    /// `netns` was read.
    pub const NETNS_VALID: u32 = 1 << 4;
    /// The owner was cached in a system call of the owning process (connect, accept,
    /// close, shutdown); without it, pid and comm are the task current at close.
    pub const OWNER_FROM_SYSCALL: u32 = 1 << 5;
}

/// Bits of `SessionRecord::states`: `1 << state` for every TCP state the socket entered
/// while the probe watched it, plus the reset events below.
pub mod states {
    /// `tcp:tcp_receive_reset` fired for the socket: the peer reset it.
    pub const RESET_RECEIVED: u32 = 1 << 24;

    /// The bit for TCP state `state` (from [`crate::tcp_state`]).
    pub const fn bit(state: i32) -> u32 {
        1 << (state as u32 & 0x1f)
    }
}

/// One closed TCP session, written by the probe into [`EVENTS_MAP`] at `TCP_CLOSE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionRecord {
    /// Birth: time since boot in ns (`bpf_ktime_get_ns`, `CLOCK_MONOTONIC`) of the first
    /// state change below `TCP_FIN_WAIT1`. Valid only with [`flags::BIRTH_SEEN`].
    pub birth_ns: u64,
    /// Close: time since boot in ns (`bpf_ktime_get_ns`, `CLOCK_MONOTONIC`) of the change to
    /// `TCP_CLOSE`.
    pub close_ns: u64,
    /// Time since boot in ns of the first change to `TCP_ESTABLISHED`; 0 if the session
    /// never reached it (or its birth was not seen).
    pub established_ns: u64,
    /// `tcp_sock.bytes_acked` at close: bytes of sequence space the peer acknowledged,
    /// SYN and FIN included. Valid only with [`flags::BYTES_VALID`].
    pub bytes_acked: u64,
    /// `tcp_sock.bytes_received` at close: bytes of sequence space received, FIN included.
    /// Valid only with [`flags::BYTES_VALID`].
    pub bytes_received: u64,
    /// Process (thread group) id of the owner: see the README for how it is chosen.
    pub pid: u32,
    /// Bits from [`flags`].
    pub flags: u32,
    /// Bits from [`states`]: the states entered and the resets seen.
    pub states: u32,
    /// `tcp_sock.snd_una` at close (first unacknowledged sequence number).
    pub snd_una: u32,
    /// `tcp_sock.write_seq` at close (end of what was queued, FIN included).
    pub write_seq: u32,
    /// `tcp_sock.rcv_nxt` at close (next sequence number expected).
    pub rcv_nxt: u32,
    /// `tcp_sock.copied_seq` at close (end of what the application read).
    pub copied_seq: u32,
    /// Smoothed round-trip time at close, in microseconds (`tcp_sock.srtt_us >> 3`).
    pub srtt_us: u32,
    /// `tcp_sock.total_retrans`: segments retransmitted over the session.
    pub total_retrans: u32,
    /// `tcp_sock.segs_in`: segments received.
    pub segs_in: u32,
    /// `tcp_sock.segs_out`: segments sent.
    pub segs_out: u32,
    /// Inode number of the socket's network namespace. Valid only with
    /// [`flags::NETNS_VALID`].
    pub netns: u32,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// One of [`origin`].
    pub origin: u8,
    /// The state the socket left for `TCP_CLOSE`.
    pub close_from_state: u8,
    /// Local address in network byte order: the first 4 bytes for IPv4, all 16 for IPv6.
    pub local_addr: [u8; 16],
    /// Remote address in network byte order: the first 4 bytes for IPv4, all 16 for IPv6.
    pub remote_addr: [u8; 16],
    /// The owner's task name (`comm`), NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// The record's size in bytes; the decoder refuses anything shorter.
pub const SESSION_RECORD_SIZE: usize = core::mem::size_of::<SessionRecord>();
const _: () = assert!(SESSION_RECORD_SIZE == 144);

/// What the probe keeps about a socket it tracks, in [`SOCKETS_MAP`] (keyed by the socket's
/// kernel address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketState {
    /// `bpf_ktime_get_ns` at the first state below `TCP_FIN_WAIT1`.
    pub birth_ns: u64,
    /// `bpf_ktime_get_ns` at the first `TCP_ESTABLISHED`, or 0.
    pub established_ns: u64,
    /// Bits from [`states`].
    pub states: u32,
    /// The cached owner; meaningful when `owner_known` is 1.
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
    /// One of [`origin`].
    pub origin: u8,
    /// 1 once the owner was cached in one of its own system calls.
    pub owner_known: u8,
    /// Keep the layout explicit; always zero. Two integers rather than a byte array, which
    /// the probe would have to zero with a byte-by-byte `memset` call at every birth.
    pub _padding: u16,
    pub _padding_tail: u32,
}

const _: () = assert!(core::mem::size_of::<SocketState>() == 48);

/// Offsets of kernel struct members the probe reads, resolved by the agent from the running
/// kernel's BTF and set as the global [`KERNEL_OFFSETS`] at load time. A group whose bit in
/// `valid` is clear is not read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Bits from [`offsets_valid`].
    pub valid: u32,
    /// `struct tcp_sock` members (offsets from the start of `struct sock`).
    pub bytes_acked: u32,
    pub bytes_received: u32,
    pub snd_una: u32,
    pub write_seq: u32,
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    pub srtt_us: u32,
    pub total_retrans: u32,
    pub segs_in: u32,
    pub segs_out: u32,
    /// `sock.__sk_common.skc_net.net`: pointer to the socket's `struct net`.
    pub sock_net: u32,
    /// `net.ns.inum`: the namespace's inode number.
    pub net_inum: u32,
    /// From the current task to the socket behind a file descriptor:
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.fd`, `file.private_data`,
    /// `socket.sk`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// The range of `struct tcp_sock` (from the start of `struct sock`) that holds every
    /// member of the `BYTES`, `SEQ` and `HEALTH` groups resolved: 8-byte aligned, at most
    /// [`TCP_WINDOW_MAX`] bytes, read at close with one `bpf_probe_read_kernel`.
    pub tcp_window: u32,
    pub tcp_window_len: u32,
    /// What `sock:inet_sock_set_state` records, read from the socket itself by the raw
    /// tracepoint program (the `SOCK` group; offsets from the start of `struct sock`):
    /// `sock.sk_protocol` (2 bytes), `sock.__sk_common.skc_family` (2),
    /// `.skc_dport` (2, network order), `.skc_daddr` (4), `.skc_v6_daddr` (16),
    /// `.skc_v6_rcv_saddr` (16), `inet_sock.inet_sport` (2, network order) and
    /// `inet_sock.inet_saddr` (4), as the tracepoint's `TP_fast_assign` reads them
    /// (include/trace/events/sock.h).
    pub sk_protocol: u32,
    pub skc_family: u32,
    pub skc_dport: u32,
    pub skc_daddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub inet_sport: u32,
    pub inet_saddr: u32,
}

/// The largest `KernelOffsets::tcp_window_len`: the probe's per-CPU buffer for the window
/// (`struct tcp_sock` is about 2,300 bytes on Linux 6.x).
pub const TCP_WINDOW_MAX: usize = 4096;

/// The bytes of `struct sock` (from its start) that the raw tracepoint program copies at
/// once: `struct sock_common`'s family, destination port and addresses must lie inside
/// (88 bytes on Linux 6.x), or the `SOCK` group is not used.
pub const SOCK_HEAD_BYTES: usize = 128;

/// The bytes of `struct inet_sock` from `inet_saddr` that the raw tracepoint program copies
/// at once: `inet_sport` must lie inside (6 bytes after `inet_saddr` on Linux 6.x), or the
/// `SOCK` group is not used.
pub const SOCK_INET_BYTES: usize = 16;

/// Bits of `KernelOffsets::valid`, one per group of members read together.
pub mod offsets_valid {
    pub const BYTES: u32 = 1 << 0;
    pub const SEQ: u32 = 1 << 1;
    pub const HEALTH: u32 = 1 << 2;
    pub const NETNS: u32 = 1 << 3;
    pub const ACCEPT: u32 = 1 << 4;
    /// The socket's protocol, family, ports and addresses, for the raw tracepoint program.
    pub const SOCK: u32 = 1 << 5;
}

/// Most ports one port filter holds (tcplife's `-L` / `-D` lists).
pub const MAX_FILTER_PORTS: usize = 16;

/// Kernel-side filters set as the global [`FILTERS`] at load time. Zero means "any".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Only sessions owned by this process (thread group) id.
    pub pid: u32,
    /// Never sessions owned by this process id (the agent's own, by default).
    pub exclude_pid: u32,
    /// Only sessions in the network namespace with this inode number.
    pub netns: u32,
    /// Only this family ([`AF_INET`], IPv4-mapped IPv6 included, or [`AF_INET6`]).
    pub family: u16,
    /// How many entries of `local_ports` are used.
    pub local_port_count: u16,
    /// How many entries of `remote_ports` are used.
    pub remote_port_count: u16,
    /// Keeps the layout explicit; always zero.
    pub _padding: u16,
    pub local_ports: [u16; MAX_FILTER_PORTS],
    pub remote_ports: [u16; MAX_FILTER_PORTS],
}

/// Ring buffer carrying [`SessionRecord`]s to userspace.
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-CPU array of `u64` counters, indexed by [`counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// LRU hash: socket address to what the probe knows about the socket.
pub const SOCKETS_MAP: &str = "SOCKETS";

/// Array of `u64`, indexed by [`control`]: what agents sharing a pinned probe agree on
/// (`--bpf-pin-dir`). Unused when the probe is not pinned.
pub const CONTROL_MAP: &str = "CONTROL";
/// Per-CPU array of one `[u64; HANDOFF_SLOTS]`: the closes a retiring program handled,
/// during a handover between two generations of the probe (see [`control::RETIRING`]).
pub const HANDOFF_MAP: &str = "HANDOFF";
/// Closes a CPU can be inside at once (task, softirq, hardirq, NMI).
pub const HANDOFF_SLOTS: usize = 4;

/// Version of everything a pinned probe hands to the next agent: [`SessionRecord`] (read
/// from the pinned ring buffer), [`SocketState`] (the pinned socket map), the [`counter`]
/// indices, [`control`] and the handover protocol. An agent refuses pins of another
/// version; bump it with any change to one of them.
pub const PIN_LAYOUT_VERSION: u64 = 1;

/// Indices into [`CONTROL_MAP`].
pub mod control {
    /// The [`PIN_LAYOUT_VERSION`](crate::PIN_LAYOUT_VERSION) of the pinned maps.
    pub const LAYOUT: u32 = 0;
    /// The generation whose programs handle state changes; the others return at once.
    pub const ACTIVE: u32 = 1;
    /// During a handover, the generation being retired: at each close it handles, it
    /// records the socket in [`HANDOFF_MAP`](crate::HANDOFF_MAP), and the newer program
    /// that runs after it in the same hit skips that close. 0 otherwise.
    pub const RETIRING: u32 = 2;
    /// Records the agents read from the ring buffer, over every agent: the kernel's
    /// `EMITTED` counter less this is what waits in the ring buffer.
    pub const CONSUMED: u32 = 3;
    /// Number of entries.
    pub const COUNT: u32 = 4;
}

/// Global ([`KernelOffsets`]) with the kernel struct offsets.
pub const KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";
/// Global ([`Filters`]) with the kernel-side filters.
pub const FILTERS: &str = "FILTERS";
/// Global (`u64`): this program's generation when pinned (1, 2, ...: see
/// [`control::ACTIVE`]); 0 when not pinned, and then the program always handles.
pub const GENERATION: &str = "GENERATION";
/// Global (`u32`): 1 to report sessions whose birth was not seen, 0 to skip them.
pub const REPORT_UNKNOWN_BIRTH: &str = "REPORT_UNKNOWN_BIRTH";
/// Global (`u64`): unread bytes in [`EVENTS_MAP`] from which a new record wakes the agent at
/// once; below it, records wait for the agent's periodic read.
pub const RING_WAKEUP_BYTES: &str = "RING_WAKEUP_BYTES";

/// Indices into [`COUNTERS_MAP`]: what the probe tracked, emitted, filtered and lost.
pub mod counter {
    /// Sockets whose birth was stored in `SOCKETS`.
    pub const TRACKED: u32 = 0;
    /// Records written to the ring buffer.
    pub const EMITTED: u32 = 1;
    /// The ring buffer had no room for a closed session's record (lost).
    pub const RING_BUFFER_FULL: u32 = 2;
    /// A birth could not be stored in `SOCKETS` (map update failed; the session will be
    /// reported with an unknown birth).
    pub const MAP_UPDATE_FAILED: u32 = 3;
    /// Sessions rejected by a kernel-side filter before tracking.
    pub const FILTERED_AT_BIRTH: u32 = 4;
    /// Tracked sessions rejected by a filter later (local port or owner known only then).
    pub const FILTERED_AFTER_TRACKING: u32 = 5;
    /// Closed sessions whose birth was not seen (opened before the probe, or evicted from
    /// the LRU map).
    pub const BIRTH_NOT_SEEN: u32 = 6;
    /// Closed sessions whose birth was not seen and that were skipped on request.
    pub const UNKNOWN_BIRTH_SKIPPED: u32 = 7;
    /// Tracked entries the probe removed itself (at close, or when a filter rejected the
    /// session later). `TRACKED - RELEASED - entries still open` is what the LRU map
    /// evicted.
    pub const RELEASED: u32 = 8;
    /// State changes the kernel skipped for the primary raw tracepoint program (it was
    /// running on that CPU) that the backup program handled instead.
    pub const SKIPPED_RECOVERED: u32 = 9;
    /// Number of counters.
    pub const COUNT: u32 = 10;
}
