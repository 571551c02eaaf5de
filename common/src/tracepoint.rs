//! The records of the classic tracepoints the probe attaches to, defined once: the probe
//! reads its context through these `#[repr(C)]` structs, and the agent checks the running
//! kernel's `format` files (under tracefs) against the [`Field`]s derived from them with
//! `offset_of!` and `size_of`, so that the two cannot drift.
//!
//! Each struct mirrors the format file it cites, from its start: the 8-byte common header
//! (`common_type`, `common_flags`, `common_preempt_count`, `common_pid`), then the fields.

use core::mem::{offset_of, size_of};

/// `sock:inet_sock_set_state`, as laid out in
/// `/sys/kernel/tracing/events/sock/inet_sock_set_state/format` (stable since Linux 4.16):
/// skaddr@8, oldstate@16, newstate@20, sport@24, dport@26, family@28, protocol@30,
/// saddr@32, daddr@36, saddr_v6@40, daddr_v6@56. Ports are in host byte order, addresses
/// in network byte order. The agent checks these offsets against the running kernel's
/// format file before it attaches ([`INET_SOCK_SET_STATE`]).
#[repr(C)]
pub struct InetSockSetState {
    _common: u64,
    /// `const void * skaddr`: the socket's kernel address.
    pub skaddr: u64,
    /// `int oldstate`: the TCP state left.
    pub oldstate: i32,
    /// `int newstate`: the TCP state entered.
    pub newstate: i32,
    /// `__u16 sport`: local port, host byte order.
    pub sport: u16,
    /// `__u16 dport`: remote port, host byte order.
    pub dport: u16,
    /// `__u16 family`.
    pub family: u16,
    /// `__u16 protocol`.
    pub protocol: u16,
    // The addresses are read as aligned words (the verifier only allows loads at constant
    // offsets from the context) and turned back into bytes in memory order.
    /// `__u8 saddr[4]`: local IPv4 address, as a word in memory (network) byte order.
    pub saddr: u32,
    /// `__u8 daddr[4]`: remote IPv4 address, as a word in memory (network) byte order.
    pub daddr: u32,
    /// `__u8 saddr_v6[16]`: local IPv6 address, as two words in memory order.
    pub saddr_v6: [u64; 2],
    /// `__u8 daddr_v6[16]`: remote IPv6 address, as two words in memory order.
    pub daddr_v6: [u64; 2],
}

const _: () = assert!(size_of::<InetSockSetState>() == 72);

/// The first fields of `tcp:tcp_receive_reset`
/// (`/sys/kernel/tracing/events/tcp/tcp_receive_reset/format`): skaddr@8.
#[repr(C)]
pub struct TcpReceiveReset {
    _common: u64,
    /// `const void * skaddr`: the socket's kernel address.
    pub skaddr: u64,
}

/// `syscalls:sys_exit_accept` and `syscalls:sys_exit_accept4`
/// (`/sys/kernel/tracing/events/syscalls/sys_exit_accept4/format`): __syscall_nr@8, ret@16.
#[repr(C)]
pub struct SysExit {
    _common: u64,
    _syscall_nr: u64,
    /// `long ret`: the system call's return value (the new descriptor, or `-errno`).
    pub ret: i64,
}

/// One field of a tracepoint record the probe reads: its name in the format file and where
/// the probe's struct has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    /// Bytes from the start of the record.
    pub offset: u32,
    /// Bytes.
    pub size: u32,
}

/// A tracepoint the probe attaches to, with the fields it reads, in record order.
#[derive(Debug)]
pub struct Tracepoint {
    pub category: &'static str,
    pub name: &'static str,
    pub fields: &'static [Field],
}

/// The size of the field that `_field` borrows (only its type is used).
const fn field_size<R, F>(_field: fn(&R) -> &F) -> u32 {
    size_of::<F>() as u32
}

/// The [`Field`]s of `$record` named, as the compiler lays them out.
macro_rules! fields {
    ($record:ty: $($field:ident),+ $(,)?) => {
        &[$(Field {
            name: stringify!($field),
            offset: offset_of!($record, $field) as u32,
            size: field_size(|record: &$record| &record.$field),
        }),+]
    };
}

/// `sock:inet_sock_set_state`: every TCP state change.
pub const INET_SOCK_SET_STATE: Tracepoint = Tracepoint {
    category: "sock",
    name: "inet_sock_set_state",
    fields: fields!(InetSockSetState: skaddr, oldstate, newstate, sport, dport, family,
        protocol, saddr, daddr, saddr_v6, daddr_v6),
};

/// `tcp:tcp_receive_reset`: the peer reset a socket.
pub const TCP_RECEIVE_RESET: Tracepoint = Tracepoint {
    category: "tcp",
    name: "tcp_receive_reset",
    fields: fields!(TcpReceiveReset: skaddr),
};

/// `syscalls:sys_exit_accept`: `accept()` returned (ret = the new descriptor).
pub const SYS_EXIT_ACCEPT: Tracepoint = Tracepoint {
    category: "syscalls",
    name: "sys_exit_accept",
    fields: fields!(SysExit: ret),
};

/// `syscalls:sys_exit_accept4`: `accept4()` returned (ret = the new descriptor).
pub const SYS_EXIT_ACCEPT4: Tracepoint = Tracepoint {
    category: "syscalls",
    name: "sys_exit_accept4",
    fields: fields!(SysExit: ret),
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The derived table holds the offsets and sizes of the format file of Linux 6.18
    /// (`/sys/kernel/tracing/events/sock/inet_sock_set_state/format`).
    /// `(name, offset, size)` as [`Field`]s.
    fn fields<const N: usize>(table: [(&'static str, u32, u32); N]) -> [Field; N] {
        table.map(|(name, offset, size)| Field { name, offset, size })
    }

    /// The derived tables hold the offsets and sizes of the format files of Linux 6.18
    /// (`/sys/kernel/tracing/events/<category>/<name>/format`).
    #[test]
    fn the_derived_fields_are_those_of_the_format_files() {
        assert_eq!(
            INET_SOCK_SET_STATE.fields,
            fields([
                ("skaddr", 8, 8),
                ("oldstate", 16, 4),
                ("newstate", 20, 4),
                ("sport", 24, 2),
                ("dport", 26, 2),
                ("family", 28, 2),
                ("protocol", 30, 2),
                ("saddr", 32, 4),
                ("daddr", 36, 4),
                ("saddr_v6", 40, 16),
                ("daddr_v6", 56, 16),
            ])
        );
        assert_eq!(TCP_RECEIVE_RESET.fields, fields([("skaddr", 8, 8)]));
        assert_eq!(SYS_EXIT_ACCEPT.fields, fields([("ret", 16, 8)]));
        assert_eq!(SYS_EXIT_ACCEPT4.fields, fields([("ret", 16, 8)]));
    }
}
