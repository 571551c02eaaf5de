//! The real probe in the real kernel: attaches it, drives known loopback sessions from this
//! process, and checks the records it writes field by field, and the sessions the agent
//! derives from them.
//!
//! Timestamps must fall inside the window the test measured around its own system calls;
//! the close may lag the last `close()` by at most [`CLOSE_SLACK_NS`], for softirq work the
//! kernel defers.

use std::{
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use common::{SessionRecord, flags, user::Origin};
use otel_agent::{
    clock::WallClock,
    link_policy::LinkPolicy,
    probe::{Probe, ProbeOptions, StateProbe},
    session::{Closer, Payload, Session},
};
use otel_agent_tests::{
    require_root,
    traffic::{self, Closer as CloseOrder, Exchange, THREAD_NAME},
};

/// How long after the test's last `close()` the kernel may still report the close.
const CLOSE_SLACK_NS: u64 = 50_000_000;
/// Payload the client writes.
const CLIENT_BYTES: u64 = 12_345;
/// Payload the server writes back.
const SERVER_BYTES: u64 = 2_048;

/// What one end of the exchange must look like.
struct Expected {
    origin: Origin,
    closer: Closer,
    /// Raw counters: (bytes_acked, bytes_received).
    raw: (u64, u64),
    payload: Payload,
}

/// Reads records until both ends of `exchange` are seen, or two seconds pass.
fn records_for(ring: &mut RingBuf<MapData>, exchange: &Exchange) -> (SessionRecord, SessionRecord) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let (mut client, mut server) = (None, None);
    while Instant::now() < deadline && (client.is_none() || server.is_none()) {
        while let Some(item) = ring.next() {
            let record = SessionRecord::decode(&item).expect("every record decodes");
            let ports = (record.local_port, record.remote_port);
            if ports == (exchange.client.port(), exchange.server.port()) {
                client = Some(record);
            } else if ports == (exchange.server.port(), exchange.client.port()) {
                server = Some(record);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (
        client.expect("the probe reported the client session"),
        server.expect("the probe reported the server session"),
    )
}

fn assert_session(record: &SessionRecord, exchange: &Exchange, ip: IpAddr, expected: &Expected) {
    assert_eq!(record.local_ip(), Ok(ip));
    assert_eq!(record.remote_ip(), Ok(ip));
    assert_eq!(record.origin(), Ok(expected.origin));
    assert_eq!(record.pid, std::process::id(), "pid of the owning process");
    assert_eq!(record.comm(), THREAD_NAME, "comm of the owning thread");
    let every_field = flags::BIRTH_SEEN
        | flags::BYTES_VALID
        | flags::SEQ_VALID
        | flags::HEALTH_VALID
        | flags::NETNS_VALID
        | flags::OWNER_FROM_SYSCALL;
    assert_eq!(
        record.flags, every_field,
        "every field read, owner from a system call"
    );
    assert_eq!(
        (record.bytes_acked, record.bytes_received),
        expected.raw,
        "(bytes_acked, bytes_received)"
    );
    assert!(
        (exchange.before_connect_ns..=exchange.after_connect_ns).contains(&record.birth_ns),
        "birth {} outside [{}, {}]",
        record.birth_ns,
        exchange.before_connect_ns,
        exchange.after_connect_ns
    );
    assert!(
        (record.birth_ns..=exchange.after_connect_ns).contains(&record.established_ns),
        "established {} outside [birth, after connect {}]",
        record.established_ns,
        exchange.after_connect_ns
    );
    assert!(
        (exchange.before_close_ns..=exchange.after_close_ns + CLOSE_SLACK_NS)
            .contains(&record.close_ns),
        "close {} outside [{}, {} + slack]",
        record.close_ns,
        exchange.before_close_ns,
        exchange.after_close_ns
    );

    let session = Session::from_record(
        record,
        WallClock::sample(),
        SystemTime::now(),
        &LinkPolicy::All,
    )
    .expect("the record converts");
    assert!(session.established);
    assert_eq!(session.closer, expected.closer);
    assert_eq!(session.reset, None);
    assert_eq!(
        session.payload,
        Some(expected.payload),
        "payload without SYN and FIN"
    );
    let own_netns = std::fs::metadata("/proc/self/ns/net")
        .expect("own netns")
        .ino();
    assert_eq!(
        session.netns.map(u64::from),
        Some(own_netns),
        "the test's network namespace"
    );
    let health = session.health.expect("TCP health");
    assert_eq!(health.total_retrans, 0, "no retransmits on loopback");
    assert!(health.segs_in >= 3 && health.segs_out >= 3, "{health:?}");
}

/// Byte counters count sequence space: the client's SYN and FIN are acknowledged on top of
/// its payload (+2), each side receives the other's FIN (+1), and the accepted socket starts
/// after its SYN-ACK was acknowledged (+1 for its FIN only).
fn check(ip: IpAddr, order: CloseOrder) {
    check_with(ip, order, StateProbe::Tracepoint);
}

/// [`check`], with the state-change program attached as `state_probe`.
fn check_with(ip: IpAddr, order: CloseOrder, state_probe: StateProbe) {
    require_root();
    let options = ProbeOptions {
        state_probe,
        ..ProbeOptions::default()
    };
    let mut probe = Probe::attach(&options).expect("attach the probe");
    assert_eq!(probe.state_probe, state_probe);
    let features = probe.features;
    assert!(
        features.bytes && features.payload && features.health && features.netns,
        "this kernel has BTF, so every field must be read: {features:?}"
    );
    let mut ring = probe.take_events().expect("ring buffer");

    let exchange = traffic::exchange(ip, CLIENT_BYTES as usize, SERVER_BYTES as usize, order);
    let (client, server) = records_for(&mut ring, &exchange);

    let (client_closer, server_closer) = match order {
        CloseOrder::Client => (Closer::Local, Closer::Peer),
        CloseOrder::Server => (Closer::Peer, Closer::Local),
    };
    let client_expected = Expected {
        origin: Origin::Active,
        closer: client_closer,
        raw: (CLIENT_BYTES + 2, SERVER_BYTES + 1),
        payload: Payload {
            sent: CLIENT_BYTES,
            received: SERVER_BYTES,
        },
    };
    let server_expected = Expected {
        origin: Origin::Passive,
        closer: server_closer,
        raw: (SERVER_BYTES + 1, CLIENT_BYTES + 1),
        payload: Payload {
            sent: SERVER_BYTES,
            received: CLIENT_BYTES,
        },
    };
    assert_session(&client, &exchange, ip, &client_expected);
    assert_session(&server, &exchange, ip, &server_expected);
    let counters = probe.counters().expect("counters");
    assert_eq!(
        (counters.ring_buffer_full, counters.map_update_failed),
        (0, 0),
        "no loss: {counters:?}"
    );
}

#[test]
fn ipv4_session_closed_by_the_client_is_reported_exactly() {
    check("127.0.0.1".parse().unwrap(), CloseOrder::Client);
}

#[test]
fn ipv6_session_closed_by_the_server_is_reported_exactly() {
    check("::1".parse().unwrap(), CloseOrder::Server);
}

/// The raw tracepoint reads family, ports and addresses from the socket itself: the same
/// records, field for field.
#[test]
fn ipv4_session_is_reported_exactly_through_the_raw_tracepoint() {
    check_with(
        "127.0.0.1".parse().unwrap(),
        CloseOrder::Client,
        StateProbe::RawTracepoint,
    );
}

#[test]
fn ipv6_session_is_reported_exactly_through_the_raw_tracepoint() {
    check_with(
        "::1".parse().unwrap(),
        CloseOrder::Server,
        StateProbe::RawTracepoint,
    );
}
