//! Loss accounting with the real probe: when more sockets are open than the socket map
//! holds, the LRU map evicts the oldest; every session is still reported (the evicted ones
//! with an unknown birth), the eviction count covers them, and emitted = records read.

use std::{
    collections::BTreeSet,
    net::{TcpListener, TcpStream},
};

use common::{SessionRecord, flags};
use otel_agent::probe::{Probe, ProbeOptions};
use otel_agent_tests::require_root;

/// Connections held open at once: 2 sockets each, far more than the map holds.
const CONNECTIONS: usize = 100;
/// The smallest map the agent accepts (`--max-tracked-sockets`).
const MAP_ENTRIES: u32 = 64;

#[test]
fn evictions_are_counted_and_evicted_sessions_are_still_reported() {
    require_root();
    let options = ProbeOptions {
        max_tracked_sockets: MAP_ENTRIES,
        ..ProbeOptions::default()
    };
    let mut probe = Probe::attach(&options).expect("attach the probe");
    let mut ring = probe.take_events().expect("ring buffer");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = listener.local_addr().unwrap().port();
    let mut open = Vec::new();
    let mut ends = BTreeSet::new();
    for _ in 0..CONNECTIONS {
        let client = TcpStream::connect(("127.0.0.1", server_port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let client_port = client.local_addr().unwrap().port();
        ends.insert((client_port, server_port));
        ends.insert((server_port, client_port));
        open.push((client, server));
    }
    drop(open);
    drop(listener);
    std::thread::sleep(std::time::Duration::from_millis(200));

    probe.detach();
    let mut records_read = 0;
    let mut ours = BTreeSet::new();
    let mut ours_without_birth = 0;
    while let Some(item) = ring.next() {
        records_read += 1;
        let record = SessionRecord::decode(&item).expect("decodes");
        if ends.contains(&(record.local_port, record.remote_port)) {
            ours.insert((record.local_port, record.remote_port));
            if record.flags & flags::BIRTH_SEEN == 0 {
                ours_without_birth += 1;
            }
        }
    }
    let counters = probe.counters().expect("counters");
    let evicted = counters.evicted().expect("known after detach");

    assert_eq!(ours, ends, "every session reported, evicted or not");
    assert!(evicted > 0, "the map must have evicted: {counters:?}");
    assert!(
        ours_without_birth > 0,
        "evicted sessions are reported with an unknown birth"
    );
    // Each of our sessions without a birth was evicted (other traffic may add more).
    assert!(
        evicted >= ours_without_birth,
        "evicted {evicted} < {ours_without_birth} of ours reported without birth: {counters:?}"
    );
    assert!(
        counters.tracked >= counters.released + counters.open_at_detach.unwrap(),
        "{counters:?}"
    );
    assert_eq!(counters.emitted, records_read, "{counters:?}");
    assert_eq!(
        (counters.ring_buffer_full, counters.map_update_failed),
        (0, 0)
    );
}
