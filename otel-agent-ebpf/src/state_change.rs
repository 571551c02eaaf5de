//! One `sock:inet_sock_set_state` hit, whichever way the program is attached: from the
//! classic tracepoint's record ([`InetSockSetState`], laid out once in
//! `common::tracepoint`), or from the raw tracepoint's arguments and the socket itself
//! ([`RawStateChange`]).

use common::{AF_INET6, IPPROTO_TCP, SOCK_HEAD_BYTES, tracepoint::InetSockSetState};

use crate::kernel::{KERNEL_OFFSETS, PRIMARY_SLOT, SockHead, read};

/// One `inet_sock_set_state` hit, whichever way the program is attached.
pub(crate) trait StateChange {
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
pub(crate) struct Ends {
    pub(crate) family: u16,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) saddr: u32,
    pub(crate) daddr: u32,
    pub(crate) saddr_v6: [u64; 2],
    pub(crate) daddr_v6: [u64; 2],
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
pub(crate) struct RawStateChange {
    pub(crate) sk: u64,
    pub(crate) oldstate: i32,
    pub(crate) newstate: i32,
    /// Which per-CPU buffers to use.
    pub(crate) slot: u32,
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
