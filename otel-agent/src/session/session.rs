//! A closed TCP session in userspace terms, made from a decoded [`SessionRecord`]: socket
//! addresses, wall-clock times, and the facts derived from the states the session went
//! through (established or not, handshake time, who closed first, reset, payload without
//! SYN and FIN, the connection's initial sequence numbers). This is what every sink (span,
//! console) consumes.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use common::{
    SessionRecord, flags, states,
    tcp_state::{
        CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, SYN_RECV, TIME_WAIT,
    },
    user::{DecodeError, Origin},
};

use crate::{
    clock::WallClock,
    isn::{self, IsnPair, SeqCounters, Side},
    link_policy::LinkPolicy,
    span_context::SpanContext,
    threshold::Threshold,
};

/// Byte counters from `struct tcp_sock` at close, as tcplife reports them (sequence space:
/// SYN and FIN included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteCounts {
    /// `bytes_acked`: sequence space the peer acknowledged.
    pub acked: u64,
    /// `bytes_received`: sequence space received.
    pub received: u64,
}

/// Application payload in each direction: the byte counters without SYN and FIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Payload bytes the peer acknowledged.
    pub sent: u64,
    /// Payload bytes received.
    pub received: u64,
}

/// TCP health at close, from `struct tcp_sock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHealth {
    /// Smoothed round-trip time, microseconds.
    pub srtt_us: u32,
    /// Segments retransmitted over the session.
    pub total_retrans: u32,
    pub segs_in: u32,
    pub segs_out: u32,
}

/// Which side sent the first FIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// This side closed first (the socket entered `FIN_WAIT1`).
    Local,
    /// The peer closed first (the socket entered `CLOSE_WAIT`).
    Peer,
    /// Both sent FIN before receiving the other's (the socket entered `CLOSING`).
    Simultaneous,
    /// This side ended an established session without a FIN and without receiving a
    /// reset: an abortive close (it sent a reset: `SO_LINGER` 0, close with unread data) or
    /// a timeout. The kernel reports a sent reset only after the socket is closed, so the
    /// two cannot be told apart.
    Aborted,
    /// No FIN was exchanged and the session was never established, or the peer reset it.
    Unknown,
}

/// A reset received from the peer (`tcp:tcp_receive_reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetByPeer;

/// One closed TCP session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session's birth (first state below `TCP_FIN_WAIT1`), wall clock; when the birth
    /// was not seen, the time the agent started.
    pub start: SystemTime,
    /// The change to `TCP_CLOSE`, wall clock.
    pub end: SystemTime,
    /// Whether the probe saw the birth (false: opened before the agent, or evicted).
    pub birth_known: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Whether this side connected or accepted.
    pub origin: Origin,
    /// Process (thread group) id of the owner.
    pub pid: u32,
    /// The owner's task name.
    pub comm: String,
    /// The owner's executable file name (`mm->exe_file`, not truncated to 15 bytes and not
    /// changed by thread names like `comm`; cut at 47 bytes); `None` when the probe could
    /// not read it (a kernel thread, or no BTF offsets).
    pub exe: Option<Arc<str>>,
    /// The owner's cgroup id on the cgroup v2 hierarchy (1, the root, when no runtime
    /// placed it in a v2 cgroup); `container_id` is resolved from it.
    pub cgroup_id: u64,
    /// Whether pid, comm, cgroup and executable come from a system call of the owner (else:
    /// the task current at close, best effort).
    pub owner_from_syscall: bool,
    /// Whether the session ever reached `ESTABLISHED`.
    pub established: bool,
    /// From birth to `ESTABLISHED`, when both were seen.
    pub handshake: Option<Duration>,
    pub closer: Closer,
    pub reset: Option<ResetByPeer>,
    /// `None` when the kernel's BTF did not give the counters' offsets.
    pub bytes: Option<ByteCounts>,
    /// `None` when the counters or sequence numbers are unknown, or the birth was not seen.
    pub payload: Option<Payload>,
    /// The consistent-sampling threshold its span carries in its tracestate (`ot=th:...`),
    /// set by the pipeline's sampler; `None`: no tracestate.
    pub threshold: Option<Threshold>,
    pub health: Option<TcpHealth>,
    /// Inode number of the socket's network namespace.
    pub netns: Option<u32>,
    /// The connection's (client ISN, server ISN), the same on both ends ([`isn`]); `None`
    /// when the session never reached `ESTABLISHED`, the counters or sequence numbers were
    /// not read, the side is unknown (birth not seen), or both ends connected (simultaneous
    /// open: neither is the server).
    pub isns: Option<IsnPair>,
    /// The span's trace id, span id, parent or link and flags: derived from `isns` when
    /// there is a pair, random otherwise ([`SpanContext::decide`]).
    pub context: SpanContext,
    /// The owner's container (`container.id`), filled in by the pipeline from the cgroup
    /// id (`crate::container`).
    pub container_id: Option<Arc<str>>,
    /// Set by the pipeline when the session's workload is new and the live workloads are at
    /// their bound: its span goes under the overflow resource (`export::workload`).
    pub workload_overflow: bool,
}

/// Why a record does not become a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct SessionError(#[from] DecodeError);

impl Session {
    /// Builds a session from a decoded record, converting its timestamps with `clock`;
    /// `agent_start` stands in for a birth the probe did not see; `links` decides a server
    /// span's parent or link.
    pub fn from_record(
        record: &SessionRecord,
        clock: WallClock,
        agent_start: SystemTime,
        links: &LinkPolicy,
    ) -> Result<Self, SessionError> {
        let birth_known = record.has(flags::BIRTH_SEEN);
        // The state the socket closed from counts as entered, even when its birth (and so
        // the states before) was not seen.
        let entered = record.states | states::bit(i32::from(record.close_from_state));
        let saw = |state: i32| entered & states::bit(state) != 0;
        let origin = record.origin()?;
        let established = saw(ESTABLISHED)
            || [
                FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING,
            ]
            .into_iter()
            .any(saw);
        let reset = (record.states & states::RESET_RECEIVED != 0).then_some(ResetByPeer);
        let closer = if saw(CLOSING) {
            Closer::Simultaneous
        } else if saw(CLOSE_WAIT) || saw(LAST_ACK) {
            Closer::Peer
        } else if saw(FIN_WAIT1) || saw(FIN_WAIT2) || saw(TIME_WAIT) {
            Closer::Local
        } else if established && reset.is_none() {
            Closer::Aborted
        } else {
            Closer::Unknown
        };
        let bytes = record.has(flags::BYTES_VALID).then_some(ByteCounts {
            acked: record.bytes_acked,
            received: record.bytes_received,
        });
        let payload = match bytes {
            Some(bytes) if birth_known && record.has(flags::SEQ_VALID) => Some(payload(
                record,
                bytes,
                origin,
                established,
                &saw,
                reset.is_some(),
            )),
            _ => None,
        };
        let side = Side::from_origin(origin);
        let isns = side
            .filter(|&side| {
                established
                    && record.has(flags::BYTES_VALID | flags::SEQ_VALID)
                    && !(side == Side::Client && saw(SYN_RECV))
            })
            .map(|side| {
                isn::derive(
                    side,
                    SeqCounters {
                        snd_una: record.snd_una,
                        bytes_acked: record.bytes_acked,
                        rcv_nxt: record.rcv_nxt,
                        bytes_received: record.bytes_received,
                    },
                )
            });
        let remote = SocketAddr::new(record.remote_ip()?, record.remote_port);
        let context = SpanContext::decide(side, isns, remote.ip(), links);
        let handshake = (birth_known && record.established_ns != 0)
            .then(|| Duration::from_nanos(record.established_ns.saturating_sub(record.birth_ns)));
        Ok(Self {
            start: if birth_known {
                clock.to_system_time(record.birth_ns)
            } else {
                agent_start
            },
            end: clock.to_system_time(record.close_ns),
            birth_known,
            local: SocketAddr::new(record.local_ip()?, record.local_port),
            remote,
            origin,
            pid: record.pid,
            comm: record.comm().into_owned(),
            exe: Some(record.exe())
                .filter(|exe| !exe.is_empty())
                .map(|exe| Arc::from(exe.as_ref())),
            cgroup_id: record.cgroup_id,
            owner_from_syscall: record.has(flags::OWNER_FROM_SYSCALL),
            established,
            handshake,
            closer,
            reset,
            bytes,
            payload,
            threshold: None,
            health: record.has(flags::HEALTH_VALID).then_some(TcpHealth {
                srtt_us: record.srtt_us,
                total_retrans: record.total_retrans,
                segs_in: record.segs_in,
                segs_out: record.segs_out,
            }),
            netns: record.has(flags::NETNS_VALID).then_some(record.netns),
            isns,
            context,
            container_id: None,
            workload_overflow: false,
        })
    }

    /// Lifespan: from start to end.
    pub fn duration(&self) -> Duration {
        self.end.duration_since(self.start).unwrap_or_default()
    }
}

/// Removes SYN and FIN from the byte counters (README, "Payload"):
/// - `bytes_acked` includes this side's SYN when it connected and the connection was
///   established (an accepted socket starts after its SYN-ACK was acknowledged), and its FIN
///   when it sent one (entered `FIN_WAIT1` or `LAST_ACK`) and everything it queued, FIN
///   included, was acknowledged (`snd_una == write_seq`);
/// - `bytes_received` includes the peer's FIN when the socket entered `CLOSE_WAIT` or
///   `CLOSING`, or, having closed first, ended with something it received but that was not
///   read (`rcv_nxt != copied_seq`): after this side's close only a FIN can arrive without
///   a reset. With a reset, only the first rule applies (best effort).
fn payload(
    record: &SessionRecord,
    bytes: ByteCounts,
    origin: Origin,
    established: bool,
    saw: &dyn Fn(i32) -> bool,
    reset: bool,
) -> Payload {
    let syn_acked = origin == Origin::Active && established;
    let fin_sent = saw(FIN_WAIT1) || saw(LAST_ACK);
    let fin_acked = fin_sent && record.snd_una == record.write_seq;
    let fin_received = saw(CLOSE_WAIT)
        || saw(CLOSING)
        || (!reset && saw(FIN_WAIT1) && record.rcv_nxt != record.copied_seq);
    Payload {
        sent: bytes
            .acked
            .saturating_sub(u64::from(syn_acked) + u64::from(fin_acked)),
        received: bytes.received.saturating_sub(u64::from(fin_received)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use common::{AF_INET, origin, tcp_state};

    use super::*;
    use crate::{span_context::SpanLink, trace_context::ConnectionIds};

    pub(crate) const AGENT_START_NS: u64 = 1_000_000_000_000_000_000 - 5_000_000_000;

    pub(crate) fn agent_start() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(AGENT_START_NS)
    }

    pub(crate) fn clock() -> WallClock {
        WallClock::with_offset_ns(1_000_000_000_000_000_000)
    }

    fn bits(states: &[i32]) -> u32 {
        states.iter().map(|&s| states::bit(s)).fold(0, |a, b| a | b)
    }

    /// A client that wrote 12,345 bytes, read 2,048 and closed first:
    /// 127.0.0.1:40000 -> 127.0.0.1:8080, 1.5 ms long, 100 us handshake.
    pub(crate) fn client_record() -> SessionRecord {
        let mut record = SessionRecord {
            birth_ns: 10_000_000,
            established_ns: 10_100_000,
            close_ns: 11_500_000,
            bytes_acked: 12_347,
            bytes_received: 2_049,
            pid: 777,
            flags: flags::BIRTH_SEEN
                | flags::BYTES_VALID
                | flags::SEQ_VALID
                | flags::HEALTH_VALID
                | flags::NETNS_VALID
                | flags::OWNER_FROM_SYSCALL,
            states: bits(&[
                tcp_state::SYN_SENT,
                tcp_state::ESTABLISHED,
                tcp_state::FIN_WAIT1,
                tcp_state::FIN_WAIT2,
                tcp_state::CLOSE,
            ]),
            snd_una: 5_000,
            write_seq: 5_000,
            rcv_nxt: 9_001,
            copied_seq: 9_000,
            srtt_us: 42,
            total_retrans: 1,
            segs_in: 7,
            segs_out: 9,
            netns: 4_026_531_840,
            cgroup_id: 5_123,
            family: AF_INET,
            local_port: 40_000,
            remote_port: 8080,
            origin: origin::ACTIVE,
            close_from_state: tcp_state::FIN_WAIT2 as u8,
            ..SessionRecord::default()
        };
        record.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        record.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        record.comm[..4].copy_from_slice(b"curl");
        record.exe.0[..11].copy_from_slice(b"curl-8.14.1");
        record
    }

    /// The session of `record`, every peer linked.
    pub(crate) fn session_of(record: &SessionRecord) -> Session {
        Session::from_record(record, clock(), agent_start(), &LinkPolicy::All).unwrap()
    }

    pub(crate) fn client_session() -> Session {
        session_of(&client_record())
    }

    #[test]
    fn converts_a_record_field_by_field() {
        let ids = ConnectionIds::derive(IsnPair {
            client: 5_000_u32.wrapping_sub(12_347),
            server: 6_951,
        });
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(
            client_session(),
            Session {
                start: epoch + Duration::from_nanos(1_000_000_000_010_000_000),
                end: epoch + Duration::from_nanos(1_000_000_000_011_500_000),
                birth_known: true,
                local: "127.0.0.1:40000".parse().unwrap(),
                remote: "127.0.0.1:8080".parse().unwrap(),
                origin: Origin::Active,
                pid: 777,
                comm: "curl".to_owned(),
                exe: Some("curl-8.14.1".into()),
                cgroup_id: 5_123,
                owner_from_syscall: true,
                established: true,
                handshake: Some(Duration::from_micros(100)),
                closer: Closer::Local,
                reset: None,
                bytes: Some(ByteCounts {
                    acked: 12_347,
                    received: 2_049
                }),
                payload: Some(Payload {
                    sent: 12_345,
                    received: 2_048
                }),
                threshold: None,
                health: Some(TcpHealth {
                    srtt_us: 42,
                    total_retrans: 1,
                    segs_in: 7,
                    segs_out: 9
                }),
                netns: Some(4_026_531_840),
                isns: Some(IsnPair {
                    client: 5_000_u32.wrapping_sub(12_347),
                    server: 9_001 - 2_049 - 1
                }),
                context: SpanContext {
                    trace_id: ids.trace_id,
                    span_id: ids.client_span_id,
                    parent_span_id: None,
                    link: None,
                    flags: 0x103,
                },
                container_id: None,
                workload_overflow: false,
            }
        );
        assert_eq!(client_session().duration(), Duration::from_micros(1_500));
    }

    /// The accepted end of a connection like [`client_record`]'s, which closed second.
    fn server_record() -> SessionRecord {
        let mut record = client_record();
        record.origin = origin::PASSIVE;
        record.states = bits(&[
            tcp_state::SYN_RECV,
            tcp_state::ESTABLISHED,
            tcp_state::CLOSE_WAIT,
            tcp_state::LAST_ACK,
            tcp_state::CLOSE,
        ]);
        record.close_from_state = tcp_state::LAST_ACK as u8;
        record
    }

    #[test]
    fn a_server_that_closed_second_counts_the_clients_fin_and_its_own() {
        let mut record = server_record();
        record.bytes_acked = 2_049;
        record.bytes_received = 12_346;
        record.rcv_nxt = record.copied_seq;
        let session = session_of(&record);
        assert_eq!(session.closer, Closer::Peer);
        assert_eq!(
            session.payload,
            Some(Payload {
                sent: 2_048,
                received: 12_345
            })
        );
    }

    #[test]
    fn a_closer_whose_peer_never_sent_fin_keeps_every_received_byte() {
        let mut record = client_record();
        record.bytes_received = 2_048;
        record.rcv_nxt = record.copied_seq;
        let session = session_of(&record);
        assert_eq!(session.payload.unwrap().received, 2_048);
    }

    #[test]
    fn an_unacknowledged_fin_is_not_removed() {
        let mut record = client_record();
        record.bytes_acked = 12_346;
        record.write_seq = record.snd_una + 1;
        let session = session_of(&record);
        assert_eq!(session.payload.unwrap().sent, 12_345);
    }

    #[test]
    fn a_failed_connect_never_established_and_has_no_payload() {
        let mut record = client_record();
        record.states = bits(&[tcp_state::SYN_SENT, tcp_state::CLOSE]) | states::RESET_RECEIVED;
        record.close_from_state = tcp_state::SYN_SENT as u8;
        record.established_ns = 0;
        record.bytes_acked = 0;
        record.bytes_received = 0;
        record.rcv_nxt = record.copied_seq;
        let session = session_of(&record);
        assert!(!session.established);
        assert_eq!(session.handshake, None);
        assert_eq!(session.closer, Closer::Unknown);
        assert_eq!(session.reset, Some(ResetByPeer));
        assert_eq!(
            session.payload,
            Some(Payload {
                sent: 0,
                received: 0
            })
        );
    }

    #[test]
    fn an_established_session_closed_without_fin_or_reset_was_aborted() {
        let mut record = client_record();
        record.states = bits(&[
            tcp_state::SYN_SENT,
            tcp_state::ESTABLISHED,
            tcp_state::CLOSE,
        ]);
        record.close_from_state = tcp_state::ESTABLISHED as u8;
        let session = session_of(&record);
        assert_eq!(session.closer, Closer::Aborted);
        assert_eq!(session.reset, None);
        record.states |= states::RESET_RECEIVED;
        let session = session_of(&record);
        assert_eq!(session.closer, Closer::Unknown);
        assert_eq!(session.reset, Some(ResetByPeer));
    }

    #[test]
    fn a_simultaneous_close_is_named() {
        let mut record = client_record();
        record.states |= bits(&[tcp_state::CLOSING]);
        let session = session_of(&record);
        assert_eq!(session.closer, Closer::Simultaneous);
    }

    #[test]
    fn an_unseen_birth_starts_at_the_agent_start_and_is_derived_from_the_last_state() {
        let mut record = client_record();
        record.flags &= !flags::BIRTH_SEEN;
        record.origin = origin::UNKNOWN;
        record.states = states::bit(tcp_state::CLOSE);
        record.close_from_state = tcp_state::LAST_ACK as u8;
        record.birth_ns = 0;
        record.established_ns = 0;
        let session = session_of(&record);
        assert!(!session.birth_known);
        assert_eq!(session.start, agent_start());
        assert!(session.established);
        assert_eq!(session.closer, Closer::Peer);
        assert_eq!(session.handshake, None);
        assert_eq!(
            session.payload, None,
            "without the birth, the SYN is unknown"
        );
        assert!(session.bytes.is_some());
    }

    #[test]
    fn the_server_end_of_the_client_records_connection_gives_the_same_isns() {
        // The peer of client_record(): client ISN 5,000 - 12,347 sent 12,345 bytes and FIN,
        // server ISN 6,951 sent 2,048 bytes and FIN; the accepted socket's counters start
        // after the SYNs.
        let mut record = server_record();
        (record.snd_una, record.bytes_acked) = (9_001, 2_049);
        (record.rcv_nxt, record.bytes_received) = (5_000, 12_346);
        let server = session_of(&record);
        assert_eq!(server.isns, client_session().isns);
        assert_eq!(
            server.isns,
            Some(IsnPair {
                client: 5_000_u32.wrapping_sub(12_347),
                server: 6_951
            })
        );
        // Both ends in one trace: the server span's parent is the client span, or, for a
        // peer outside the linked networks, its link.
        let client = client_session().context;
        assert_eq!(server.context.trace_id, client.trace_id);
        assert_eq!(server.context.parent_span_id, Some(client.span_id));
        assert_eq!(server.context.flags, 0x303);
        let unlinked =
            Session::from_record(&record, clock(), agent_start(), &LinkPolicy::Nothing).unwrap();
        assert_eq!(unlinked.context.span_id, server.context.span_id);
        assert_eq!(unlinked.context.parent_span_id, None);
        assert_eq!(
            unlinked
                .context
                .link
                .map(|link| (link.trace_id, link.span_id)),
            Some((client.trace_id, client.span_id))
        );
    }

    proptest::proptest! {
        /// Both ends of any connection, each from its own record (its own local and remote
        /// counters, the SYN offsets of its side), put their spans in the trace of the
        /// connection's pair: the client span a root, the server span its child or, for a
        /// peer outside the linked networks, a root linked to it.
        #[test]
        fn both_ends_of_any_connection_meet_in_one_trace(
            (isns, client, server) in crate::isn::tests::any_connection(),
            linked in proptest::bool::ANY,
        ) {
            let with = |mut record: SessionRecord, counters: SeqCounters| {
                (record.snd_una, record.bytes_acked) = (counters.snd_una, counters.bytes_acked);
                (record.rcv_nxt, record.bytes_received) =
                    (counters.rcv_nxt, counters.bytes_received);
                record
            };
            let policy = if linked { LinkPolicy::All } else { LinkPolicy::Nothing };
            let session = |record: SessionRecord| {
                Session::from_record(&record, clock(), agent_start(), &policy).unwrap()
            };
            let client = session(with(client_record(), client));
            let server = session(with(server_record(), server));
            let ids = ConnectionIds::derive(isns);
            proptest::prop_assert_eq!((client.isns, server.isns), (Some(isns), Some(isns)));
            proptest::prop_assert_eq!(
                client.context,
                SpanContext {
                    trace_id: ids.trace_id,
                    span_id: ids.client_span_id,
                    parent_span_id: None,
                    link: None,
                    flags: 0x103,
                }
            );
            proptest::prop_assert_eq!(server.context.trace_id, client.context.trace_id);
            proptest::prop_assert_eq!(server.context.span_id, ids.server_span_id);
            proptest::prop_assert_ne!(server.context.span_id, client.context.span_id);
            let link = SpanLink {
                trace_id: ids.trace_id,
                span_id: ids.client_span_id,
                flags: 0x303,
            };
            let expected = if linked {
                (Some(ids.client_span_id), None, 0x303)
            } else {
                (None, Some(link), 0x103)
            };
            proptest::prop_assert_eq!(
                (server.context.parent_span_id, server.context.link, server.context.flags),
                expected
            );
        }
    }

    #[test]
    fn isns_need_an_established_session_of_a_known_side_with_its_counters() {
        let isns = |record: &SessionRecord| session_of(record).isns;
        let mut record = client_record();
        record.states = bits(&[tcp_state::SYN_SENT, tcp_state::CLOSE]);
        record.close_from_state = tcp_state::SYN_SENT as u8;
        assert_eq!(isns(&record), None, "a connect that never established");

        let mut record = client_record();
        record.flags &= !flags::BIRTH_SEEN;
        record.origin = origin::UNKNOWN;
        assert_eq!(isns(&record), None, "the side is unknown");

        for flag in [flags::SEQ_VALID, flags::BYTES_VALID] {
            let mut record = client_record();
            record.flags &= !flag;
            assert_eq!(isns(&record), None, "without flag {flag}");
        }

        let mut record = client_record();
        record.states |= states::bit(tcp_state::SYN_RECV);
        assert_eq!(
            isns(&record),
            None,
            "simultaneous open: both ends connected"
        );

        let mut record = client_record();
        record.states |= states::RESET_RECEIVED;
        assert!(
            isns(&record).is_some(),
            "a reset session keeps its identity"
        );
    }

    #[test]
    fn fields_without_btf_offsets_are_absent() {
        let mut record = client_record();
        record.flags = flags::BIRTH_SEEN;
        let session = session_of(&record);
        assert_eq!(session.bytes, None);
        assert_eq!(session.payload, None);
        assert_eq!(session.health, None);
        assert_eq!(session.netns, None);
        assert!(!session.owner_from_syscall);
    }
}
