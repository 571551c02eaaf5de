//! The contract between the eBPF probe and the agent: the session record the probe writes
//! into the ring buffer at `TCP_CLOSE`, the names of the maps and globals the loader sets,
//! and the indices of the kernel-side loss counters.
//!
//! Everything here is `#![no_std]` and made of fixed-width integers and byte arrays so that
//! both sides agree on the layout. Decoding (length checks, enums, addresses) lives behind
//! the `user` feature in [`user`].
#![no_std]

#[cfg(feature = "user")]
extern crate std;

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
    pub const CLOSE: i32 = 7;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
}

/// How the session was opened, as far as the probe saw it (`SessionRecord::origin`).
pub mod origin {
    /// The birth was seen but not as `SYN_SENT` or `SYN_RECV`.
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
    /// The `tcp_sock` byte counters were read; `bytes_acked` and `bytes_received` are
    /// meaningful. Unset when the running kernel's BTF did not give their offsets.
    pub const BYTES_VALID: u32 = 1 << 1;
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
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// One of [`origin`].
    pub origin: u8,
    /// Keeps the layout explicit; always zero.
    pub _padding: u8,
    /// Local address in network byte order: the first 4 bytes for IPv4, all 16 for IPv6.
    pub local_addr: [u8; 16],
    /// Remote address in network byte order: the first 4 bytes for IPv4, all 16 for IPv6.
    pub remote_addr: [u8; 16],
    /// The owner's task name (`comm`), NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// The record's size in bytes; the decoder refuses anything shorter.
pub const SESSION_RECORD_SIZE: usize = core::mem::size_of::<SessionRecord>();
const _: () = assert!(SESSION_RECORD_SIZE == 96);

/// Ring buffer carrying [`SessionRecord`]s to userspace.
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-CPU array of `u64` loss counters, indexed by [`counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// LRU hash: socket address to birth time and origin.
pub const BIRTHS_MAP: &str = "BIRTHS";
/// LRU hash: socket address to the cached owner (pid and comm).
pub const OWNERS_MAP: &str = "OWNERS";

/// Global (`u32`) set at load time: offset of `bytes_received` in `struct tcp_sock`, 0 when
/// unknown.
pub const TCP_SOCK_BYTES_RECEIVED_OFFSET: &str = "TCP_SOCK_BYTES_RECEIVED_OFFSET";
/// Global (`u32`) set at load time: offset of `bytes_acked` in `struct tcp_sock`, 0 when
/// unknown.
pub const TCP_SOCK_BYTES_ACKED_OFFSET: &str = "TCP_SOCK_BYTES_ACKED_OFFSET";

/// Indices into [`COUNTERS_MAP`]: every place in the probe that can lose a session.
pub mod counter {
    /// The ring buffer had no room for a closed session's record.
    pub const RING_BUFFER_FULL: u32 = 0;
    /// A birth could not be stored in `BIRTHS` (map update failed).
    pub const BIRTH_MAP_UPDATE_FAILED: u32 = 1;
    /// An owner could not be stored in `OWNERS` (map update failed).
    pub const OWNER_MAP_UPDATE_FAILED: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}
