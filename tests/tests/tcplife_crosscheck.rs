//! The agent's probe beside the real libbpf-tools `tcplife`, on one loopback workload whose
//! two ends are separate processes (`tcp-peer`): IPv4 and IPv6; client closes first and
//! server closes first; a reset; several MiB each way; a connect refused by a closed port.
//!
//! Asserted:
//! - every session tcplife reports for the workload is reported by the agent with the same
//!   addresses and ports, the same byte counts (as tcplife prints them: KiB with two
//!   decimals) and a lifespan within [`LIFESPAN_TOLERANCE_MS`];
//! - every session the workload made is reported by the agent with the pid and comm of the
//!   process that owns that end, its kind, whether it was established, who closed first,
//!   the reset, and the exact payload each way;
//! - where tcplife names another process than the owner, the test says so and checks that
//!   the agent names the owner;
//! - the probe lost nothing: no ring-buffer or map failures, and every record it emitted was
//!   read.

use std::{
    collections::BTreeMap,
    net::{IpAddr, TcpListener},
    time::{Duration, SystemTime},
};

use common::{SessionRecord, user::Origin};
use otel_agent::{
    clock::WallClock,
    link_policy::LinkPolicy,
    probe::{Probe, ProbeOptions},
    session::{Closer, Payload, ResetByPeer, Session},
};
use otel_agent_tests::{
    peer::{self, CLIENT_COMM, PeerRun, SERVER_COMM},
    process::TempDir,
    require_root,
    tcplife::{self, TcplifeLine},
};

/// Largest difference allowed between tcplife's lifespan and the agent's.
const LIFESPAN_TOLERANCE_MS: f64 = 1.0;

const SCENARIOS: [&str; 5] = ["client-first", "server-first", "reset", "bulk", "refused"];

/// What one end of one exchange must look like.
struct Expected {
    pid: u32,
    comm: &'static str,
    origin: Origin,
    established: bool,
    closer: Closer,
    reset: Option<ResetByPeer>,
    payload: Payload,
}

fn expectations(run: &PeerRun) -> Vec<((u16, u16), Expected)> {
    let (a, b) = peer::payload(run.scenario).expect("known scenario");
    let (a, b) = (a as u64, b as u64);
    let client_key = (run.client_port, run.server_port);
    let server_key = (run.server_port, run.client_port);
    let client = |closer, reset, payload| Expected {
        pid: run.client_pid,
        comm: CLIENT_COMM,
        origin: Origin::Active,
        established: run.scenario != "refused",
        closer,
        reset,
        payload,
    };
    let server = |closer, reset, payload| Expected {
        pid: run.server_pid.expect("a server"),
        comm: SERVER_COMM,
        origin: Origin::Passive,
        established: true,
        closer,
        reset,
        payload,
    };
    let sent = |sent, received| Payload { sent, received };
    match run.scenario {
        "client-first" | "bulk" => vec![
            (client_key, client(Closer::Local, None, sent(a, b))),
            (server_key, server(Closer::Peer, None, sent(b, a))),
        ],
        "server-first" => vec![
            (client_key, client(Closer::Peer, None, sent(a, b))),
            (server_key, server(Closer::Local, None, sent(b, a))),
        ],
        "reset" => vec![
            (client_key, client(Closer::Aborted, None, sent(a, 0))),
            (
                server_key,
                server(Closer::Unknown, Some(ResetByPeer), sent(0, a)),
            ),
        ],
        "refused" => vec![(
            client_key,
            client(Closer::Unknown, Some(ResetByPeer), sent(0, 0)),
        )],
        other => panic!("no expectations for {other}"),
    }
}

fn closed_port(ip: IpAddr) -> u16 {
    // A port that was free a moment ago and that nobody listens on.
    TcpListener::bind((ip, 0))
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port()
}

#[test]
fn the_agent_reports_every_session_tcplife_reports_and_attributes_it_correctly() {
    require_root();
    let dir = TempDir::new("tcplife-crosscheck");
    let tcplife = tcplife::start(dir.path());
    let mut probe = Probe::attach(&ProbeOptions::default()).expect("attach the probe");
    assert!(
        probe.features.accept_owner && probe.features.resets,
        "{:?}",
        probe.features
    );
    let mut ring = probe.take_events().expect("ring buffer");

    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tcp-peer"));
    let mut runs = Vec::new();
    for ip in ["127.0.0.1", "::1"].map(|ip| ip.parse::<IpAddr>().unwrap()) {
        for scenario in SCENARIOS {
            runs.push(peer::run(&binary, ip, scenario, closed_port(ip), None));
        }
    }
    std::thread::sleep(Duration::from_millis(300));

    // Detach, then drain: every record the probe emitted is read.
    probe.detach();
    let clock = WallClock::sample();
    let mut sessions: BTreeMap<(IpAddr, u16, u16), Session> = BTreeMap::new();
    let mut records_read = 0;
    while let Some(item) = ring.next() {
        records_read += 1;
        let record = SessionRecord::decode(&item).expect("every record decodes");
        let session = Session::from_record(&record, clock, SystemTime::now(), &LinkPolicy::All)
            .expect("converts");
        sessions.insert(
            (
                session.local.ip(),
                session.local.port(),
                session.remote.port(),
            ),
            session,
        );
    }
    tcplife.signal(libc::SIGINT);
    let tcplife_lines = tcplife::parse(&tcplife.stdout_text());

    // 1. The agent reports each workload session exactly, with its owner.
    let mut workload_ports = std::collections::BTreeSet::new();
    for run in &runs {
        workload_ports.extend([run.client_port, run.server_port]);
        for ((local_port, remote_port), expected) in expectations(run) {
            let what = format!("{} {} {local_port}->{remote_port}", run.scenario, run.ip);
            let session = sessions
                .get(&(run.ip, local_port, remote_port))
                .unwrap_or_else(|| panic!("the agent did not report {what}"));
            assert_eq!(session.pid, expected.pid, "{what}: pid of the owner");
            assert_eq!(session.comm, expected.comm, "{what}: comm of the owner");
            assert!(
                session.owner_from_syscall,
                "{what}: owner from a system call"
            );
            assert_eq!(session.origin, expected.origin, "{what}: origin");
            assert_eq!(
                session.established, expected.established,
                "{what}: established"
            );
            assert_eq!(session.closer, expected.closer, "{what}: who closed first");
            assert_eq!(session.reset, expected.reset, "{what}: reset");
            assert_eq!(session.payload, Some(expected.payload), "{what}: payload");
            assert!(session.birth_known, "{what}: birth seen");
        }
    }

    // 2. Every tcplife line of the workload matches the agent's session.
    let ours: Vec<&TcplifeLine> = tcplife_lines
        .iter()
        .filter(|line| {
            workload_ports.contains(&line.local_port) && workload_ports.contains(&line.remote_port)
        })
        .collect();
    let expected_sessions: usize = runs.iter().map(|run| expectations(run).len()).sum();
    assert_eq!(
        ours.len(),
        expected_sessions,
        "tcplife reported {} of the {expected_sessions} workload sessions:\n{}",
        ours.len(),
        tcplife.stdout_text()
    );
    let mut tcplife_wrong = Vec::new();
    for line in ours {
        let what = format!("{}:{} -> {}", line.local, line.local_port, line.remote_port);
        let session = sessions
            .get(&(line.local, line.local_port, line.remote_port))
            .unwrap_or_else(|| panic!("tcplife reported {what}, the agent did not"));
        assert_eq!(session.remote.ip(), line.remote, "{what}: remote address");
        let bytes = session.bytes.expect("byte counters");
        assert_eq!(tcplife::kib(bytes.acked), line.tx_kb, "{what}: TX_KB");
        assert_eq!(tcplife::kib(bytes.received), line.rx_kb, "{what}: RX_KB");
        let ms = session.duration().as_secs_f64() * 1000.0;
        assert!(
            (ms - line.ms).abs() <= LIFESPAN_TOLERANCE_MS,
            "{what}: lifespan {ms:.3} ms, tcplife {} ms",
            line.ms
        );
        if line.pid != session.pid {
            tcplife_wrong.push(format!(
                "{what}: tcplife says pid {} ({}), the owner is pid {} ({}), which the agent reports",
                line.pid, line.comm, session.pid, session.comm
            ));
        }
    }
    for note in &tcplife_wrong {
        println!("tcplife is wrong, the agent is right: {note}");
    }

    // 3. Nothing lost.
    let counters = probe.counters().expect("counters");
    assert_eq!(counters.ring_buffer_full, 0, "{counters:?}");
    assert_eq!(counters.map_update_failed, 0, "{counters:?}");
    assert_eq!(
        counters.emitted, records_read,
        "every emitted record was read: {counters:?}"
    );
}
