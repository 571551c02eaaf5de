//! Least privilege, checked on the real binary: once its probe is attached, every thread of
//! the agent holds no capability and has `no_new_privs` set, and sessions made afterwards are
//! still reported; the documented minimal privileges are enough (root with `CAP_BPF` and
//! `CAP_PERFMON`; a non-root user with those and `CAP_DAC_READ_SEARCH`); and with less, the
//! agent stops at once with exit code 77 and a message naming what is missing. Reduced
//! privileges come from `setpriv` (util-linux).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use otel_agent_tests::{
    agent,
    mountns::{self, ENSURE_TRACEFS, HIDE_TRACEFS},
    process::{ChildGuard, TempDir},
    require_root,
    traffic::{self, Closer, THREAD_NAME},
};

const NO_CAPABILITIES: &str = "0000000000000000";
/// `setpriv` options that run the agent as `nobody` with no capability at all.
const NOBODY: [&str; 5] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
];
/// The exit code for missing privileges (`EX_NOPERM`).
const NO_PERMISSION: i32 = 77;

/// `Name: value` from a `/proc/<pid>/status` file.
fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
}

/// Fails unless every thread of `pid` holds no capability in any set and has `no_new_privs`.
/// Returns how many threads it checked.
fn assert_every_thread_dropped(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list the agent's threads");
    let mut checked = 0;
    for task in tasks {
        let path = task.expect("a thread entry").path().join("status");
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue; // the thread exited meanwhile
        };
        for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            assert_eq!(
                field(&status, set),
                NO_CAPABILITIES,
                "{set} of {} ({})",
                path.display(),
                field(&status, "Name")
            );
        }
        assert_eq!(field(&status, "NoNewPrivs"), "1", "{}", path.display());
        checked += 1;
    }
    // The process-wide view of the main thread, as the issue asks.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(field(&status, set), NO_CAPABILITIES, "{set}");
    }
    assert_eq!(field(&status, "NoNewPrivs"), "1");
    checked
}

/// Makes one loopback session (5,000 bytes up, 70,000 down, client closes first) and checks
/// both of its console lines (`-s`), then stops the agent (exit 0) and checks that nothing
/// was lost. The agent runs with `-p <this test's pid>`, so that other traffic on the host
/// (a benchmark, say) can neither fill its ring buffer nor reuse the ports checked.
fn assert_reports_a_session_then_stops(agent: &mut ChildGuard) {
    let exchange = traffic::exchange(IpAddr::from([127, 0, 0, 1]), 5_000, 70_000, Closer::Client);
    let (client, server) = (exchange.client, exchange.server);
    agent.wait_for_output(Duration::from_secs(10), "both console lines", |output| {
        !agent::csv_lines_for_ports(output, client.port(), server.port()).is_empty()
            && !agent::csv_lines_for_ports(output, server.port(), client.port()).is_empty()
    });
    agent::stop(agent);
    let stdout = agent.stdout_text();
    let expect = |local: SocketAddr, remote: SocketAddr, tx_kib: &str, rx_kib: &str| {
        let lines = agent::csv_lines_for_ports(&stdout, local.port(), remote.port());
        assert_eq!(lines.len(), 1, "{stdout}");
        let line = &lines[0];
        // The kernel's task name is 15 bytes at most.
        let comm = &THREAD_NAME[..THREAD_NAME.len().min(15)];
        let expected = [
            std::process::id().to_string(),
            comm.to_owned(),
            "4".to_owned(),
            local.ip().to_string(),
            local.port().to_string(),
            remote.ip().to_string(),
            remote.port().to_string(),
            tx_kib.to_owned(),
            rx_kib.to_owned(),
        ];
        assert_eq!(line[..9], expected, "{stdout}");
        let ms: f64 = line[9].parse().expect("MS is a number");
        assert!((0.0..1_000.0).contains(&ms), "{ms} ms");
    };
    // Client: 5,000 + SYN + FIN acknowledged (4 KiB), 70,000 + FIN received (68 KiB);
    // server: the other way round.
    expect(client, server, "4", "68");
    expect(server, client, "68", "4");
    let stderr = agent.stderr_text();
    agent::assert_nothing_lost(&stderr);
    assert_eq!(agent::log_lines(&stderr, "WARN"), Vec::<String>::new());
}

/// The one "dropped every capability" log line, with its fields.
fn drop_line(stderr: &str) -> String {
    let lines: Vec<String> = agent::log_lines(stderr, "INFO")
        .into_iter()
        .filter(|line| line.contains("dropped every capability"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].clone()
}

#[test]
fn after_attach_no_thread_holds_a_capability_and_sessions_are_still_reported() {
    require_root();
    let dir = TempDir::new("privileges-drop");
    let own = std::fs::read_to_string("/proc/self/status").expect("own status");
    // Executed by root, the agent starts with the bounding set as effective and permitted
    // set, and keeps the inheritable and ambient sets of this test.
    let (bounding, inheritable, ambient) = (
        field(&own, "CapBnd"),
        field(&own, "CapInh"),
        field(&own, "CapAmb"),
    );
    let pid = std::process::id().to_string();
    let mut agent = agent::start(&["-s", "-p", &pid], &[], dir.path());
    // "probe attached" is logged on the main thread before the runtime exists: wait for its
    // workers, which must be born without capabilities.
    let tasks = format!("/proc/{}/task", agent.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&tasks).map_or(0, Iterator::count) < 3
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }

    let threads = assert_every_thread_dropped(agent.id());
    assert!(
        threads >= 3,
        "the main thread and two runtime workers: {threads}"
    );
    let line = drop_line(&agent.stderr_text());
    assert!(
        line.starts_with(
            "otel_agent::probe::drop_privileges: dropped every capability and set no_new_privs: the attached probe needs none "
        ),
        "{line}"
    );
    let expected_sets = format!(
        "effective={bounding} permitted={bounding} inheritable={inheritable} ambient={ambient} capabilities={}",
        u64::from_str_radix(bounding, 16).unwrap().count_ones()
    );
    assert!(
        line.contains(&expected_sets),
        "{line}\nexpected {expected_sets}"
    );

    // A session made after the drop is still read and printed, and the counters still read
    // at shutdown (`bpf()` on the open map descriptors needs no capability).
    assert_reports_a_session_then_stops(&mut agent);
}

#[test]
fn the_documented_minimal_privileges_are_enough() {
    require_root();
    let tracefs_before = mountns::host_has_tracefs();
    let minimal: [(&str, Vec<&str>, &str); 2] = [
        (
            "root with CAP_BPF and CAP_PERFMON",
            vec![
                "setpriv",
                "--inh-caps=-all",
                "--bounding-set=-all,+bpf,+perfmon",
            ],
            "000000c000000000",
        ),
        (
            "nobody with CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH",
            vec![
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all,+bpf,+perfmon,+dac_read_search",
                "--ambient-caps=-all,+bpf,+perfmon,+dac_read_search",
                "--bounding-set=-all,+bpf,+perfmon,+dac_read_search",
            ],
            "000000c000000004",
        ),
    ];
    let pid = std::process::id().to_string();
    let own_sessions = ["-s", "-p", pid.as_str()];
    for (what, setpriv, effective) in minimal {
        let dir = TempDir::new("privileges-minimal");
        // Neither may mount tracefs: mount it in a private namespace if the host has none.
        let wrapper = mountns::wrapper(ENSURE_TRACEFS, &setpriv);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let mut agent = agent::start_command(
            agent::wrapped_command(&wrapper, &own_sessions, &[]),
            dir.path(),
        );
        assert_every_thread_dropped(agent.id());
        let line = drop_line(&agent.stderr_text());
        assert!(
            line.contains(&format!("effective={effective} permitted={effective} ")),
            "{what}: {line}"
        );
        assert_reports_a_session_then_stops(&mut agent);
    }
    mountns::assert_host_mounts_untouched(tracefs_before);
}

/// Runs the wrapped agent, which must exit with 77 and exactly one error line: `message`.
/// `name` names the test's directory.
fn assert_refused(name: &str, wrapper: &[&str], message: &str) {
    let dir = TempDir::new(name);
    let (code, stderr) =
        agent::run_to_failure(agent::wrapped_command(wrapper, &[], &[]), dir.path());
    assert_eq!(code, Some(NO_PERMISSION), "{stderr}");
    assert_eq!(
        agent::log_lines(&stderr, "ERROR"),
        vec![format!("otel_agent: {message}")]
    );
    assert!(!stderr.contains("probe attached"), "{stderr}");
}

#[test]
fn without_any_capability_the_agent_stops_with_77_naming_cap_bpf_and_cap_perfmon() {
    require_root();
    let mut wrapper = vec!["setpriv"];
    wrapper.extend(NOBODY);
    assert_refused(
        "privileges-none",
        &wrapper,
        "otel-agent needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load its probe, and this process has neither; run it as root (sudo otel-agent) or grant them, with CAP_DAC_READ_SEARCH to read tracefs when not root: setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep otel-agent",
    );
}

#[test]
fn with_only_cap_bpf_the_agent_stops_with_77_naming_the_missing_cap_perfmon() {
    require_root();
    assert_refused(
        "privileges-only-bpf",
        &["setpriv", "--inh-caps=-all", "--bounding-set=-all,+bpf"],
        "otel-agent needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load its probe, and this process has only CAP_BPF; run it as root (sudo otel-agent) or grant them, with CAP_DAC_READ_SEARCH to read tracefs when not root: setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep otel-agent",
    );
}

#[test]
fn a_non_root_user_that_cannot_read_tracefs_is_told_to_add_cap_dac_read_search() {
    require_root();
    let tracefs_before = mountns::host_has_tracefs();
    // tracefs is mode 0700, owned by root: a tmpfs of that mode with an `events` directory
    // stands in for it, so that the host's tracefs is never remounted.
    let setup =
        format!("{HIDE_TRACEFS}\nmkdir /sys/kernel/tracing/events\nchmod 0700 /sys/kernel/tracing");
    let wrapper = mountns::wrapper(
        &setup,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all,+bpf,+perfmon",
            "--ambient-caps=-all,+bpf,+perfmon",
            "--bounding-set=-all,+bpf,+perfmon",
        ],
    );
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    assert_refused(
        "privileges-tracefs-unreadable",
        &wrapper,
        "this process cannot read tracefs at /sys/kernel/tracing (Permission denied (os error 13)): it is readable by root only; run otel-agent as root, or grant CAP_DAC_READ_SEARCH as well: setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep otel-agent",
    );
    mountns::assert_host_mounts_untouched(tracefs_before);
}
