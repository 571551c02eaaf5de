//! Kernel-side filters and sessions born before the probe, with the real probe and real
//! loopback sessions: each filter keeps exactly the sessions it names, and what it rejects
//! is counted, not silently dropped.

use std::{
    collections::BTreeSet,
    net::{IpAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use common::{AF_INET6, Filters, SessionRecord, flags};
use otel_agent::probe::{KernelCounters, Probe, ProbeOptions};
use otel_agent_tests::{
    netns::NetNs,
    peer, require_root,
    traffic::{self, Closer, Exchange},
};

/// Records whose (local port, remote port) is one of `wanted`, read for half a second.
fn records_matching(ring: &mut RingBuf<MapData>, wanted: &[(u16, u16)]) -> Vec<SessionRecord> {
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut found = Vec::new();
    while Instant::now() < deadline {
        while let Some(item) = ring.next() {
            let record = SessionRecord::decode(&item).expect("decodes");
            if wanted.contains(&(record.local_port, record.remote_port)) {
                found.push(record);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    found
}

fn ends(exchange: &Exchange) -> [(u16, u16); 2] {
    [
        (exchange.client.port(), exchange.server.port()),
        (exchange.server.port(), exchange.client.port()),
    ]
}

/// Attaches a probe with `filters`, runs one exchange on `ip` through `listener`'s port and
/// returns the (local, remote) ports of the workload sessions the probe reported, and its
/// counters.
fn observe(filters: Filters, ip: &str) -> (Exchange, BTreeSet<(u16, u16)>, KernelCounters) {
    require_root();
    let options = ProbeOptions {
        filters,
        ..ProbeOptions::default()
    };
    let mut probe = Probe::attach(&options).expect("attach the probe");
    let mut ring = probe.take_events().expect("ring buffer");
    let exchange = traffic::exchange(ip.parse().unwrap(), 100, 100, Closer::Client);
    let seen = records_matching(&mut ring, &ends(&exchange))
        .into_iter()
        .map(|record| (record.local_port, record.remote_port))
        .collect();
    (exchange, seen, probe.counters().expect("counters"))
}

fn filtered(counters: &KernelCounters) -> u64 {
    counters.filtered_at_birth + counters.filtered_after_tracking
}

#[test]
fn pid_filter_keeps_only_that_process() {
    let own = Filters {
        pid: std::process::id(),
        ..Filters::default()
    };
    let (exchange, seen, _) = observe(own, "127.0.0.1");
    assert_eq!(seen, ends(&exchange).into_iter().collect());

    let other = Filters {
        pid: 1,
        ..Filters::default()
    };
    let (_, seen, counters) = observe(other, "127.0.0.1");
    assert!(seen.is_empty(), "{seen:?}");
    assert!(filtered(&counters) >= 2, "{counters:?}");
}

#[test]
fn own_sessions_are_excluded_by_pid() {
    let filters = Filters {
        exclude_pid: std::process::id(),
        ..Filters::default()
    };
    let (_, seen, counters) = observe(filters, "127.0.0.1");
    assert!(seen.is_empty(), "{seen:?}");
    assert!(filtered(&counters) >= 2, "{counters:?}");
}

#[test]
fn local_and_remote_port_filters_pick_one_end() {
    require_root();
    // The server's port is known before the exchange: reserve one and filter on it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    for (local, expect_server_end) in [(true, true), (false, false)] {
        let mut filters = Filters::default();
        if local {
            filters.local_ports[0] = port;
            filters.local_port_count = 1;
        } else {
            filters.remote_ports[0] = port;
            filters.remote_port_count = 1;
        }
        let options = ProbeOptions {
            filters,
            ..ProbeOptions::default()
        };
        let mut probe = Probe::attach(&options).expect("attach the probe");
        let mut ring = probe.take_events().expect("ring buffer");
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let client_port = client.local_addr().unwrap().port();
        drop(client);
        drop(server);
        let seen: Vec<(u16, u16)> =
            records_matching(&mut ring, &[(client_port, port), (port, client_port)])
                .iter()
                .map(|record| (record.local_port, record.remote_port))
                .collect();
        let expected = if expect_server_end {
            (port, client_port)
        } else {
            (client_port, port)
        };
        assert_eq!(seen, vec![expected], "local filter: {local}");
        assert!(filtered(&probe.counters().unwrap()) >= 1);
    }
}

#[test]
fn family_filter_keeps_ipv6_only() {
    let v6 = Filters {
        family: AF_INET6,
        ..Filters::default()
    };
    let (exchange, seen, _) = observe(v6, "::1");
    assert_eq!(seen, ends(&exchange).into_iter().collect());
    let (_, seen, counters) = observe(v6, "127.0.0.1");
    assert!(seen.is_empty(), "{seen:?}");
    assert!(filtered(&counters) >= 2, "{counters:?}");
}

#[test]
fn netns_filter_keeps_only_the_namespace_sessions() {
    require_root();
    let netns = NetNs::create("filter");
    let filters = Filters {
        netns: netns.inode(),
        ..Filters::default()
    };
    let options = ProbeOptions {
        filters,
        ..ProbeOptions::default()
    };
    let mut probe = Probe::attach(&options).expect("attach the probe");
    let mut ring = probe.take_events().expect("ring buffer");
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tcp-peer"));
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let inside = peer::run(&binary, ip, "client-first", 0, Some(&netns.name));
    let outside = traffic::exchange(ip, 100, 100, Closer::Client);
    let inside_ends = [
        (inside.client_port, inside.server_port),
        (inside.server_port, inside.client_port),
    ];
    let mut wanted = inside_ends.to_vec();
    wanted.extend(ends(&outside));
    let seen = records_matching(&mut ring, &wanted);
    let seen_ends: BTreeSet<_> = seen.iter().map(|r| (r.local_port, r.remote_port)).collect();
    assert_eq!(
        seen_ends,
        inside_ends.into_iter().collect(),
        "only the namespace's sessions"
    );
    for record in &seen {
        assert_eq!(record.netns, netns.inode());
    }
    assert!(filtered(&probe.counters().unwrap()) >= 2);
}

#[test]
fn without_btf_sessions_are_still_reported_without_the_fields_that_need_offsets() {
    require_root();
    let options = ProbeOptions {
        btf: "/nonexistent/vmlinux".into(),
        ..ProbeOptions::default()
    };
    let mut probe = Probe::attach(&options).expect("the probe attaches without BTF");
    let features = probe.features;
    assert!(
        !features.bytes && !features.payload && !features.health && !features.netns,
        "{features:?}"
    );
    assert!(!features.accept_owner, "accept owners need BTF offsets");
    let mut ring = probe.take_events().expect("ring buffer");
    let exchange = traffic::exchange("127.0.0.1".parse().unwrap(), 100, 100, Closer::Client);
    let seen = records_matching(&mut ring, &ends(&exchange));
    assert_eq!(seen.len(), 2);
    for record in &seen {
        assert_eq!(
            record.flags,
            flags::BIRTH_SEEN | flags::OWNER_FROM_SYSCALL,
            "no byte, sequence, health or netns fields"
        );
        assert_eq!((record.bytes_acked, record.bytes_received), (0, 0));
        assert_eq!(record.pid, std::process::id());
    }
}

#[test]
fn sessions_open_before_the_probe_are_reported_with_an_unknown_birth_or_skipped() {
    require_root();
    for report in [true, false] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let ports = (
            client.local_addr().unwrap().port(),
            server.local_addr().unwrap().port(),
        );
        let options = ProbeOptions {
            report_unknown_birth: report,
            ..ProbeOptions::default()
        };
        let mut probe = Probe::attach(&options).expect("attach the probe");
        let mut ring = probe.take_events().expect("ring buffer");
        drop(client);
        drop(server);
        let seen = records_matching(&mut ring, &[ports, (ports.1, ports.0)]);
        let counters = probe.counters().unwrap();
        assert!(counters.birth_not_seen >= 2, "{counters:?}");
        if report {
            assert_eq!(seen.len(), 2, "both ends reported");
            for record in &seen {
                assert_eq!(record.flags & flags::BIRTH_SEEN, 0, "birth marked unknown");
                assert_eq!(record.pid, std::process::id(), "owner from close()");
            }
        } else {
            assert!(seen.is_empty(), "{seen:?}");
            assert!(counters.unknown_birth_skipped >= 2, "{counters:?}");
        }
    }
}
