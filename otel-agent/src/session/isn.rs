//! A connection's identity: the pair (client ISN, server ISN), derived at close from the
//! sequence numbers and byte counters the probe reads from `struct tcp_sock`, the same on
//! both ends of the connection (and through NAT, which rewrites addresses and ports but not
//! sequence numbers).
//!
//! The kernel facts (net/ipv4/tcp_output.c, tcp_input.c, tcp_minisocks.c; v6.18):
//! - `bytes_acked` grows only in `tcp_snd_una_update` by `ack - snd_una`, and
//!   `bytes_received` only in `tcp_rcv_nxt_update` by `seq - rcv_nxt`, both from 0: so at any
//!   time `snd_una - bytes_acked` and `rcv_nxt - bytes_received` (mod 2^32) are what
//!   `snd_una` and `rcv_nxt` were when the counting started.
//! - Connecting side: `tcp_connect_init` sets `snd_una = write_seq = ISN`, and the SYN-ACK
//!   moves `snd_una` through `tcp_ack` -> `tcp_snd_una_update`: `bytes_acked` counts the SYN.
//!   `tcp_rcv_synsent_state_process` assigns `rcv_nxt = SYN-ACK seq + 1` directly, without
//!   counting: `bytes_received` starts after the peer's SYN.
//! - Accepting side: `tcp_create_openreq_child` starts the child at
//!   `snd_una = snt_isn + 1` and `rcv_nxt = rcv_isn + 1` with both counters at 0: neither
//!   counts a SYN. (With SYN cookies the child is made by the same function from the
//!   cookie; with TCP Fast Open `tcp_fastopen_add_skb` sets `bytes_received` to the SYN's
//!   payload together with `rcv_nxt` past it, so the formulas hold there too.)
//!
//! Hence, with `local = snd_una - bytes_acked` and `remote = rcv_nxt - bytes_received - 1`
//! (32-bit wrap-around): the connecting side's ISN is `local` and the peer's is `remote`;
//! the accepting side's ISN is `local - 1`. Counters above 4 GiB wrap like sequence numbers,
//! so only their low 32 bits matter. Checked against the SYN and SYN-ACK on the wire in
//! `tests/tests/isn.rs`.

use common::user::Origin;

/// Which end of the connection a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// It sent the SYN (`connect()`).
    Client,
    /// It answered with the SYN-ACK (accepted from a listener).
    Server,
}

impl Side {
    /// The side of a session opened as `origin`: `None` when the probe did not see the
    /// opening (the session began before the agent, or its birth was evicted).
    pub fn from_origin(origin: Origin) -> Option<Self> {
        match origin {
            Origin::Active => Some(Self::Client),
            Origin::Passive => Some(Self::Server),
            Origin::Unknown => None,
        }
    }
}

/// The initial sequence numbers of a connection: the client's SYN and the server's SYN-ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IsnPair {
    pub client: u32,
    pub server: u32,
}

impl IsnPair {
    /// The pair as one end sees it: its own ISN and its peer's, and its side.
    pub fn from_local(side: Side, local_isn: u32, peer_isn: u32) -> Self {
        match side {
            Side::Client => Self {
                client: local_isn,
                server: peer_isn,
            },
            Side::Server => Self {
                client: peer_isn,
                server: local_isn,
            },
        }
    }
}

/// `struct tcp_sock` at close: the sequence numbers and the counters that count from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqCounters {
    /// `snd_una`: first unacknowledged sequence number.
    pub snd_una: u32,
    /// `bytes_acked`: sequence space the peer acknowledged since counting began.
    pub bytes_acked: u64,
    /// `rcv_nxt`: next sequence number expected.
    pub rcv_nxt: u32,
    /// `bytes_received`: sequence space received since counting began.
    pub bytes_received: u64,
}

/// The low 32 bits of a counter: sequence space wraps at 2^32.
fn low32(counter: u64) -> u32 {
    counter as u32
}

/// The pair (client ISN, server ISN) as `side` computes it from its own counters (module
/// docs): both ends of one connection give the same pair.
pub fn derive(side: Side, counters: SeqCounters) -> IsnPair {
    let local = counters.snd_una.wrapping_sub(low32(counters.bytes_acked));
    let remote = counters
        .rcv_nxt
        .wrapping_sub(low32(counters.bytes_received))
        .wrapping_sub(1);
    // The accepting side's counters start after its SYN-ACK.
    let local_isn = match side {
        Side::Client => local,
        Side::Server => local.wrapping_sub(1),
    };
    IsnPair::from_local(side, local_isn, remote)
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// One connection's ends, from its ISNs and the sequence space each way (SYN and FIN
    /// excluded, FIN flags apart), as the kernel leaves them at close.
    fn ends(
        isns: IsnPair,
        client_sent: u64,
        server_sent: u64,
        client_fin: bool,
        server_fin: bool,
    ) -> (SeqCounters, SeqCounters) {
        let client_space = client_sent + u64::from(client_fin);
        let server_space = server_sent + u64::from(server_fin);
        // Everything was acknowledged and received: snd_una on one end is rcv_nxt on the
        // other.
        let client_end = isns
            .client
            .wrapping_add(1)
            .wrapping_add(low32(client_space));
        let server_end = isns
            .server
            .wrapping_add(1)
            .wrapping_add(low32(server_space));
        let client = SeqCounters {
            snd_una: client_end,
            bytes_acked: client_space + 1,
            rcv_nxt: server_end,
            bytes_received: server_space,
        };
        let server = SeqCounters {
            snd_una: server_end,
            bytes_acked: server_space,
            rcv_nxt: client_end,
            bytes_received: client_space,
        };
        (client, server)
    }

    #[test]
    fn the_wire_example_gives_the_same_pair_on_both_ends() {
        // Client ISN 1000 sends 12,345 bytes and FIN; server ISN 5000 sends 2,048 and FIN
        // (the counters of tests/tests/probe.rs).
        let client = SeqCounters {
            snd_una: 1000 + 1 + 12_345 + 1,
            bytes_acked: 12_347,
            rcv_nxt: 5000 + 1 + 2_048 + 1,
            bytes_received: 2_049,
        };
        let server = SeqCounters {
            snd_una: 5000 + 1 + 2_048 + 1,
            bytes_acked: 2_049,
            rcv_nxt: 1000 + 1 + 12_345 + 1,
            bytes_received: 12_346,
        };
        let expected = IsnPair {
            client: 1000,
            server: 5000,
        };
        assert_eq!(derive(Side::Client, client), expected);
        assert_eq!(derive(Side::Server, server), expected);
    }

    #[test]
    fn a_connection_without_data_or_fin() {
        let isns = IsnPair {
            client: 7,
            server: 9,
        };
        let (client, server) = ends(isns, 0, 0, false, false);
        assert_eq!(
            client,
            SeqCounters {
                snd_una: 8,
                bytes_acked: 1,
                rcv_nxt: 10,
                bytes_received: 0
            }
        );
        assert_eq!(
            server,
            SeqCounters {
                snd_una: 10,
                bytes_acked: 0,
                rcv_nxt: 8,
                bytes_received: 0
            }
        );
        assert_eq!(derive(Side::Client, client), isns);
        assert_eq!(derive(Side::Server, server), isns);
    }

    #[test]
    fn sequence_numbers_that_wrap_around() {
        // Both ISNs just below 2^32: snd_una and rcv_nxt wrap past zero.
        let isns = IsnPair {
            client: u32::MAX - 2,
            server: u32::MAX,
        };
        let (client, server) = ends(isns, 100, 10, true, true);
        assert_eq!(client.snd_una, 99, "wrapped: MAX - 2 + 1 + 100 + 1");
        assert_eq!(server.snd_una, 11, "wrapped: MAX + 1 + 10 + 1");
        assert_eq!(derive(Side::Client, client), isns);
        assert_eq!(derive(Side::Server, server), isns);
        // An accepting side whose SYN-ACK was sequence number 2^32 - 1 and that sent nothing:
        // snd_una = 0, and the ISN is 0 - 0 - 1.
        let (_, server) = ends(isns, 0, 0, false, false);
        assert_eq!(server.snd_una, 0);
        assert_eq!(derive(Side::Server, server).server, u32::MAX);
    }

    #[test]
    fn counters_beyond_4_gib_wrap_like_sequence_numbers() {
        let isns = IsnPair {
            client: 123_456_789,
            server: 3_000_000_000,
        };
        let (client, server) = ends(isns, 5 << 32 | 77, (1 << 33) + 3, true, false);
        assert_eq!(client.bytes_acked, (5 << 32) + 77 + 2);
        assert_eq!(derive(Side::Client, client), isns);
        assert_eq!(derive(Side::Server, server), isns);
    }

    /// One connection's two ends at close, from any ISNs and any amounts of sequence space
    /// (SYN excluded, FIN included) each end had acknowledged and received in each
    /// direction: the receiver of a direction may be ahead of its sender's `snd_una` (the
    /// last ACK still in flight), never behind.
    pub(crate) fn any_connection() -> impl Strategy<Value = (IsnPair, SeqCounters, SeqCounters)> {
        (
            any::<u32>(),
            any::<u32>(),
            0..(1_u64 << 40),
            0..(1_u64 << 20),
            0..(1_u64 << 40),
            0..(1_u64 << 20),
        )
            .prop_map(
                |(
                    client_isn,
                    server_isn,
                    client_acked,
                    client_ahead,
                    server_acked,
                    server_ahead,
                )| {
                    let isns = IsnPair {
                        client: client_isn,
                        server: server_isn,
                    };
                    let at = |isn: u32, space: u64| isn.wrapping_add(1).wrapping_add(low32(space));
                    let (client_received, server_received) =
                        (client_acked + client_ahead, server_acked + server_ahead);
                    let client = SeqCounters {
                        snd_una: at(client_isn, client_acked),
                        bytes_acked: client_acked + 1,
                        rcv_nxt: at(server_isn, server_received),
                        bytes_received: server_received,
                    };
                    let server = SeqCounters {
                        snd_una: at(server_isn, server_acked),
                        bytes_acked: server_acked,
                        rcv_nxt: at(client_isn, client_received),
                        bytes_received: client_received,
                    };
                    (isns, client, server)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn both_ends_derive_the_same_pair_for_any_connection(
            (isns, client, server) in any_connection()
        ) {
            prop_assert_eq!(derive(Side::Client, client), isns);
            prop_assert_eq!(derive(Side::Server, server), isns);
        }
    }

    #[test]
    fn the_side_follows_the_origin() {
        assert_eq!(Side::from_origin(Origin::Active), Some(Side::Client));
        assert_eq!(Side::from_origin(Origin::Passive), Some(Side::Server));
        assert_eq!(Side::from_origin(Origin::Unknown), None);
    }
}
