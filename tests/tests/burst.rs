//! Many sockets closed at once, with the real probe: the kernel may skip a hit of the
//! state-change program (its `recursion_misses`) when another BPF program is running on
//! that CPU, and a skipped `TCP_CLOSE` loses that session. Whether it happens depends on
//! interrupts; what must always hold is the reconciliation: every session the test made is
//! reported or covered by the counted misses, the counter is the kernel's own
//! `recursion_misses` (what `bpftool prog show` prints), and emitted = records read.
//!
//! Run with `--nocapture` to see the figures (PERFORMANCE.md, "Skipped tracepoint hits").
//!
//! The tests that CI runs check the counting exactly (the agent's counters are the kernel's
//! `recursion_misses`, every record emitted is read, each session at most once). The full
//! reconciliation against the sessions the test made is `#[ignore]`d while an open defect
//! stands: in some bursts (about 1 in 10 to 1 in 20 here) a few sessions are lost with no
//! program run and no miss counted: the state changes that run in a softirq on top of a
//! thread of the test machine's sandbox agent, for which this kernel runs no BPF program
//! (ftrace sees them; README, "Failure behaviour"). Run it with
//! `cargo test -p otel-agent-tests --features privileged --test burst -- --ignored`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{TcpListener, TcpStream},
    sync::{Barrier, Mutex},
    time::{Duration, Instant},
};

use common::SessionRecord;
use otel_agent::probe::{Probe, ProbeOptions, StateProbe};
use otel_agent_tests::{
    agent::{self, counter},
    process::TempDir,
    require_root,
};

/// Connections held open, then closed together: 2 sockets (2 sessions) each.
const CONNECTIONS: usize = 5_000;

/// One burst at a time: two at once would each see the other's and share its misses.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Raises the soft limit of open files to what the test needs (within the hard limit).
fn raise_nofile(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(status, 0, "getrlimit");
    assert!(
        limit.rlim_max >= needed,
        "RLIMIT_NOFILE hard limit {} < {needed}",
        limit.rlim_max
    );
    if limit.rlim_cur < needed {
        limit.rlim_cur = needed;
        // SAFETY: as above; only the soft limit changes, up to the hard limit.
        let status = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
        assert_eq!(status, 0, "setrlimit");
    }
}

/// The test's full sockets still in the kernel (to or from `port`, not in TIME_WAIT), counted
/// by TCP state, from /proc/net/tcp.
fn open_sockets(port: u16) -> BTreeMap<String, usize> {
    let port = format!(":{port:04X}");
    let mut open = BTreeMap::new();
    for line in std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
    {
        let fields: Vec<_> = line.split_whitespace().collect();
        let (local, remote, state) = (fields[1], fields[2], fields[3]);
        // 06 is TIME_WAIT (a mini socket), 0A LISTEN.
        if (local.ends_with(&port) || remote.ends_with(&port)) && state != "06" && state != "0A" {
            *open.entry(state.to_owned()).or_default() += 1;
        }
    }
    open
}

/// Opens [`CONNECTIONS`] loopback connections, then closes the client ends from one thread
/// and the server ends from another at the same moment, and returns once every one of their
/// sockets has closed: the (local, remote) ports of the sessions made.
fn close_burst() -> BTreeSet<(u16, u16)> {
    raise_nofile(2 * CONNECTIONS as u64 + 256);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = listener.local_addr().unwrap().port();
    let acceptor = std::thread::spawn(move || {
        (0..CONNECTIONS)
            .map(|_| listener.accept().unwrap().0)
            .collect::<Vec<_>>()
    });
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(("127.0.0.1", server_port)).unwrap())
        .collect();
    let servers = acceptor.join().unwrap();
    let mut ends = BTreeSet::new();
    for client in &clients {
        let client_port = client.local_addr().unwrap().port();
        ends.insert((client_port, server_port));
        ends.insert((server_port, client_port));
    }
    assert_eq!(ends.len(), 2 * CONNECTIONS);

    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            barrier.wait();
            drop(clients);
        });
        scope.spawn(|| {
            barrier.wait();
            drop(servers);
        });
    });
    // Every socket reaches TCP_CLOSE once both ends have closed; TIME_WAIT is a separate
    // mini socket, after the full one closed. Waits until none of the test's full sockets is
    // left, so that every close happened (reported, or skipped and counted) before returning.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = open_sockets(server_port);
        if open.is_empty() {
            return ends;
        }
        assert!(
            Instant::now() < deadline,
            "sockets of the test still open after 20 s (state, count): {open:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `recursion_misses` of every BPF program process `pid` holds, by program id, as the
/// kernel prints them in /proc/<pid>/fdinfo (what `bpftool prog show` reports).
fn program_misses(pid: u32) -> BTreeMap<u32, u64> {
    let mut misses = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(info) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(count)) = (field("prog_id:"), field("recursion_misses:")) {
            misses.insert(id as u32, count);
        }
    }
    misses
}

/// What one burst measured.
struct Burst {
    made: u64,
    reported: u64,
    skipped: u64,
    recovered: u64,
    records_read: u64,
    run_ns_per_hit: Option<u64>,
    hits: u64,
}

/// A [`close_burst`] with the probe attached as `state_probe`.
fn burst(state_probe: StateProbe) -> Burst {
    // Run statistics (run_time_ns, run_cnt) while this descriptor is open; no sysctl to
    // restore.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let options = ProbeOptions {
        state_probe,
        ..ProbeOptions::default()
    };
    let mut probe = Probe::attach(&options).expect("attach the probe");
    assert_eq!(probe.state_probe, state_probe, "attached as asked");
    let mut ring = probe.take_events().expect("ring buffer");
    let before = probe.counters().expect("counters");
    assert_eq!(before.skipped_state_change, 0, "fresh programs");

    let ends = close_burst();
    let mut reported = 0;
    let mut records_read = 0;
    let mut ours = BTreeSet::new();
    probe.detach();
    while let Some(item) = ring.next() {
        records_read += 1;
        let record = SessionRecord::decode(&item).expect("decodes");
        if ends.contains(&(record.local_port, record.remote_port)) {
            ours.insert((record.local_port, record.remote_port));
            reported += 1;
        }
    }
    assert_eq!(reported, ours.len() as u64, "each session reported once");

    let counters = probe.counters().expect("counters");
    let stats = probe.program_stats().expect("program stats");
    // The primary program (the backup comes after it, with the raw tracepoint).
    let (_, state_change) = stats
        .iter()
        .find(|(name, _)| name.starts_with("inet_sock_set_state"))
        .expect("the state-change program");
    let skipped_by_kernel = counters.skipped_state_change + counters.recovered_state_change;
    assert_eq!(
        skipped_by_kernel, state_change.recursion_misses,
        "the counters split the kernel's recursion_misses of the program (attached fresh)"
    );
    if state_probe == StateProbe::Tracepoint {
        assert_eq!(counters.recovered_state_change, 0, "no backup program");
    }
    let from_proc = program_misses(std::process::id());
    assert_eq!(
        from_proc.get(&state_change.id),
        Some(&skipped_by_kernel),
        "the kernel's own account (/proc/self/fdinfo) agrees"
    );
    assert_eq!(counters.emitted, records_read, "{counters:?}");
    assert_eq!(counters.ring_buffer_full, 0, "{counters:?}");
    let missing: Vec<_> = ends.difference(&ours).copied().collect();
    if !missing.is_empty() {
        eprintln!(
            "{} sessions not reported, the first {:?}; {counters:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    Burst {
        made: ends.len() as u64,
        reported,
        skipped: counters.skipped_state_change,
        recovered: counters.recovered_state_change,
        records_read,
        // Every state-change program's time (the backup's too) per hit of the primary.
        run_ns_per_hit: (state_change.run_cnt > 0).then(|| {
            stats
                .iter()
                .filter(|(name, _)| name.starts_with("inet_sock_set_state"))
                .map(|(_, stats)| stats.run_time_ns)
                .sum::<u64>()
                / state_change.run_cnt
        }),
        hits: state_change.run_cnt,
    }
}

/// Runs a burst with `state_probe`, checks the counting (in [`burst`]) and prints the figures.
fn counted_burst(state_probe: StateProbe) -> Burst {
    require_root();
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let burst = burst(state_probe);
    eprintln!(
        "{state_probe:?}: made {} reported {} skipped {} recovered {} (records read {}, ns per hit {:?}, hits {})",
        burst.made,
        burst.reported,
        burst.skipped,
        burst.recovered,
        burst.records_read,
        burst.run_ns_per_hit,
        burst.hits
    );
    assert!(
        burst.reported <= burst.made,
        "only the test's sessions, once each"
    );
    burst
}

fn assert_reconciles(state_probe: StateProbe) {
    let burst = counted_burst(state_probe);
    assert!(
        burst.reported + burst.skipped >= burst.made,
        "{} sessions unaccounted for: made {}, reported {}, skipped hits {}",
        burst.made - burst.reported - burst.skipped,
        burst.made,
        burst.reported,
        burst.skipped
    );
    if burst.skipped == 0 {
        assert_eq!(burst.reported, burst.made, "nothing skipped, nothing lost");
    }
}

#[test]
fn a_burst_of_closes_is_counted_as_the_kernel_counts_it_with_the_tracepoint() {
    counted_burst(StateProbe::Tracepoint);
}

#[test]
fn a_burst_of_closes_is_counted_as_the_kernel_counts_it_with_the_raw_tracepoint() {
    counted_burst(StateProbe::RawTracepoint);
}

#[test]
#[ignore = "open defect: hits in softirqs on the sandbox agent's threads run no BPF program and count no miss (README, Failure behaviour)"]
fn a_burst_of_closes_reconciles_with_the_tracepoint() {
    assert_reconciles(StateProbe::Tracepoint);
}

#[test]
#[ignore = "open defect: hits in softirqs on the sandbox agent's threads run no BPF program and count no miss (README, Failure behaviour)"]
fn a_burst_of_closes_reconciles_with_the_raw_tracepoint() {
    assert_reconciles(StateProbe::RawTracepoint);
}

/// The agent's final `session accounting` line carries, per program, what the kernel says it
/// skipped, and every record it emitted was read.
#[test]
fn the_agent_logs_the_hits_the_kernel_skipped() {
    agent_burst();
}

/// As above, and its sessions reconcile: the agent (with `-p`, only this test's sessions)
/// emitted them all, or the skipped hits cover the difference.
#[test]
#[ignore = "open defect: hits in softirqs on the sandbox agent's threads run no BPF program and count no miss (README, Failure behaviour)"]
fn the_agent_logs_the_hits_the_kernel_skipped_and_reconciles() {
    let (made, emitted, skipped, counters) = agent_burst();
    assert!(
        emitted + skipped >= made,
        "made {made}, emitted {emitted}, skipped {skipped}: {counters:?}"
    );
    if skipped == 0 {
        assert_eq!(emitted, made, "{counters:?}");
    }
}

/// A burst under the agent binary (`-p`: this test's sessions): checks its final counters
/// against the kernel's, and returns (sessions made, emitted, skipped, the counters).
fn agent_burst() -> (u64, u64, u64, BTreeMap<String, u64>) {
    require_root();
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let dir = TempDir::new("burst");
    let pid = std::process::id().to_string();
    let mut agent = agent::start(&["-p", &pid], &[], dir.path());
    let made = close_burst().len() as u64;
    // The agent's programs by name (truncated by the kernel to 15 bytes), their misses
    // read from its fdinfo, as late as possible before it detaches.
    let names: BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|info| (info.id(), info.name_as_str().unwrap_or_default().to_owned()))
        .collect();
    let mut by_name = BTreeMap::<String, u64>::new();
    for (id, misses) in program_misses(agent.id()) {
        *by_name.entry(names[&id].clone()).or_default() += misses;
    }
    agent::stop(&mut agent);
    let stderr = agent.stderr_text();
    let counters = agent::accounting(&stderr);
    let skipped = counter(&counters, "lost_probe_skipped");
    eprintln!("agent: made {made}, kernel programs {by_name:?}, accounting {counters:?}");
    assert_eq!(skipped, by_name["inet_sock_set_s"], "{counters:?}");
    assert_eq!(
        counter(&counters, "degraded_probe_skipped_reset"),
        by_name["tcp_receive_res"]
    );
    assert_eq!(
        counter(&counters, "degraded_probe_skipped_accept"),
        by_name["sys_exit_accept"]
    );
    let emitted = counter(&counters, "kernel_emitted");
    assert_eq!(emitted, counter(&counters, "records_read"));
    assert!(emitted <= made, "only the test's sessions: {counters:?}");
    (made, emitted, skipped, counters)
}
