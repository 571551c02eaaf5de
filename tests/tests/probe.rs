//! The real probe in the real kernel: attaches it, drives known loopback sessions from this
//! process, and checks the records it writes field by field.
//!
//! Timestamps must fall inside the window the test measured around its own system calls;
//! the close may lag the last `close()` by at most [`CLOSE_SLACK_NS`], for softirq work the
//! kernel defers.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use common::{SessionRecord, flags, user::Origin};
use otel_agent::probe::Probe;
use otel_agent_tests::{
    require_root,
    traffic::{self, Closer, Exchange, THREAD_NAME},
};

/// How long after the test's last `close()` the kernel may still report the close.
const CLOSE_SLACK_NS: u64 = 50_000_000;
/// Payload the client writes.
const CLIENT_BYTES: usize = 12_345;
/// Payload the server writes back.
const SERVER_BYTES: usize = 2_048;

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

fn assert_session(
    record: &SessionRecord,
    exchange: &Exchange,
    ip: IpAddr,
    origin: Origin,
    (acked, received): (u64, u64),
) {
    assert_eq!(record.local_ip(), Ok(ip));
    assert_eq!(record.remote_ip(), Ok(ip));
    assert_eq!(record.origin(), Ok(origin));
    assert_eq!(record.pid, std::process::id(), "pid of the owning process");
    assert_eq!(record.comm(), THREAD_NAME, "comm of the owning thread");
    assert_eq!(record.flags, flags::BIRTH_SEEN | flags::BYTES_VALID);
    assert_eq!(
        (record.bytes_acked, record.bytes_received),
        (acked, received),
        "(acked, received)"
    );
    assert!(
        (exchange.before_connect_ns..=exchange.after_connect_ns).contains(&record.birth_ns),
        "birth {} outside [{}, {}]",
        record.birth_ns,
        exchange.before_connect_ns,
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
}

/// Byte counters count sequence space: the client's SYN and FIN are acknowledged on top of
/// its payload (+2), each side receives the other's FIN (+1), and the accepted socket starts
/// after its SYN-ACK was acknowledged (+1 for its FIN only).
fn check(ip: IpAddr, closer: Closer) {
    require_root();
    let mut probe = Probe::attach().expect("attach the probe");
    assert!(
        probe.reads_bytes,
        "this kernel has BTF, so byte counters must be read"
    );
    let mut ring = probe.take_events().expect("ring buffer");

    let exchange = traffic::exchange(ip, CLIENT_BYTES, SERVER_BYTES, closer);
    let (client, server) = records_for(&mut ring, &exchange);

    let (client_bytes, server_bytes) = (CLIENT_BYTES as u64, SERVER_BYTES as u64);
    assert_session(
        &client,
        &exchange,
        ip,
        Origin::Active,
        (client_bytes + 2, server_bytes + 1),
    );
    assert_session(
        &server,
        &exchange,
        ip,
        Origin::Passive,
        (server_bytes + 1, client_bytes + 1),
    );
    assert_eq!(
        probe.counters().expect("counters"),
        Default::default(),
        "no loss"
    );
}

#[test]
fn ipv4_session_closed_by_the_client_is_reported_exactly() {
    check("127.0.0.1".parse().unwrap(), Closer::Client);
}

#[test]
fn ipv6_session_closed_by_the_server_is_reported_exactly() {
    check("::1".parse().unwrap(), Closer::Server);
}
