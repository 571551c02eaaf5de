//! Bad input from the machine, on the real binary: tracefs not mounted (mounted by the agent
//! when it may, else exit 77 with the command that mounts it), a tracepoint missing or laid
//! out differently (exit 69 naming it), no BTF (runs, one warning naming what is left out),
//! and a hostile task name (control characters never reach the output).
//!
//! tracefs is hidden or faked only inside a private mount namespace created for one agent run
//! (`mountns`): the host's mounts are checked to be unchanged after each test.

use std::{
    ffi::CString,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::Duration,
};

use otel_agent_tests::{
    agent,
    mountns::{self, HIDE_TRACEFS},
    process::TempDir,
    require_root,
};

/// The exit codes for missing privileges (`EX_NOPERM`) and a kernel that lacks a feature
/// (`EX_UNAVAILABLE`).
const NO_PERMISSION: i32 = 77;
const KERNEL_UNSUPPORTED: i32 = 69;

/// The format file of `sock:inet_sock_set_state` on Linux 6.18, with `dport` moved from
/// offset 26 to 28.
const MOVED_FORMAT: &str = "name: inet_sock_set_state
ID: 1558
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:28;\tsize:2;\tsigned:0;
";

/// Runs the agent in a private mount namespace prepared by `setup`, behind `then`; it must
/// exit with `code` and exactly one error line: `message`. `name` names the test's directory.
fn assert_fails_in_namespace(name: &str, setup: &str, then: &[&str], code: i32, message: &str) {
    let tracefs_before = mountns::host_has_tracefs();
    let dir = TempDir::new(name);
    let wrapper = mountns::wrapper(setup, then);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let (found, stderr) =
        agent::run_to_failure(agent::wrapped_command(&wrapper, &[], &[]), dir.path());
    assert_eq!(found, Some(code), "{stderr}");
    assert_eq!(
        agent::log_lines(&stderr, "ERROR"),
        vec![format!("otel_agent: {message}")]
    );
    assert!(!stderr.contains("probe attached"), "{stderr}");
    mountns::assert_host_mounts_untouched(tracefs_before);
}

#[test]
fn tracefs_not_mounted_and_no_cap_sys_admin_to_mount_it_exits_77_with_the_mount_command() {
    require_root();
    assert_fails_in_namespace(
        "bad-input-no-mount",
        HIDE_TRACEFS,
        &["setpriv", "--inh-caps=-all", "--bounding-set=-sys_admin"],
        NO_PERMISSION,
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed (Operation not permitted (os error 1)); run as root: mount -t tracefs tracefs /sys/kernel/tracing",
    );
}

#[test]
fn tracefs_not_mounted_is_mounted_by_the_agent_inside_its_namespace_only() {
    require_root();
    let tracefs_before = mountns::host_has_tracefs();
    let dir = TempDir::new("bad-input-mounts");
    let wrapper = mountns::wrapper(HIDE_TRACEFS, &[]);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut agent = agent::start_command(agent::wrapped_command(&wrapper, &[], &[]), dir.path());
    let mounted: Vec<String> = agent::log_lines(&agent.stderr_text(), "INFO")
        .into_iter()
        .filter(|line| line.contains("tracefs"))
        .collect();
    assert_eq!(
        mounted,
        vec![
            "otel_agent::probe: mounted tracefs, which was not mounted path=/sys/kernel/tracing"
                .to_owned()
        ]
    );
    agent::stop(&mut agent);
    mountns::assert_host_mounts_untouched(tracefs_before);
}

#[test]
fn a_missing_tracepoint_exits_69_naming_it() {
    require_root();
    assert_fails_in_namespace(
        "bad-input-no-tracepoint",
        &format!("{HIDE_TRACEFS}\nmkdir /sys/kernel/tracing/events"),
        &[],
        KERNEL_UNSUPPORTED,
        "this kernel has no tracepoint sock:inet_sock_set_state (/sys/kernel/tracing/events/sock/inet_sock_set_state/format is missing: No such file or directory (os error 2)); otel-agent needs Linux 5.17 or newer with CONFIG_INET",
    );
}

#[test]
fn a_tracepoint_laid_out_differently_exits_69_naming_the_field() {
    require_root();
    let dir = "/sys/kernel/tracing/events/sock/inet_sock_set_state";
    assert_fails_in_namespace(
        "bad-input-layout",
        &format!("{HIDE_TRACEFS}\nmkdir -p {dir}\nprintf '%s' '{MOVED_FORMAT}' > {dir}/format"),
        &[],
        KERNEL_UNSUPPORTED,
        "this kernel lays out sock:inet_sock_set_state differently from what the probe expects (field dport: expected offset 26 size 2, found offset 28 size 2); please report your kernel version",
    );
}

#[test]
fn without_btf_the_agent_runs_and_warns_once_about_what_it_leaves_out() {
    require_root();
    let dir = TempDir::new("bad-input-btf");
    // Only this test's sessions (none): other traffic on the host cannot add log lines.
    let pid = std::process::id().to_string();
    let mut agent = agent::start(&["--btf", "/nonexistent", "-p", &pid], &[], dir.path());
    agent::stop(&mut agent);
    let stderr = agent.stderr_text();
    assert_eq!(
        agent::log_lines(&stderr, "WARN"),
        vec![
            "otel_agent::probe: sessions will have no byte counts, payload, RTT, retransmits, segment counts, network namespace, accepting process or executable: cannot read BTF from /nonexistent: No such file or directory (os error 2)"
                .to_owned()
        ]
    );
    let attached: Vec<String> = agent::log_lines(&stderr, "INFO")
        .into_iter()
        .filter(|line| line.contains("probe attached"))
        .collect();
    assert_eq!(
        attached,
        vec![
            "otel_agent::agent: probe attached to sock:inet_sock_set_state bytes=false payload=false health=false netns=false resets=true accept_owner=false attach=\"tracepoint\""
                .to_owned()
        ]
    );
}

#[test]
fn without_btf_the_raw_tracepoint_falls_back_to_the_tracepoint_and_says_so() {
    require_root();
    let dir = TempDir::new("bad-input-btf-raw");
    let pid = std::process::id().to_string();
    let mut agent = agent::start(
        &[
            "--btf",
            "/nonexistent",
            "--attach",
            "raw-tracepoint",
            "-p",
            &pid,
        ],
        &[],
        dir.path(),
    );
    agent::stop(&mut agent);
    let stderr = agent.stderr_text();
    assert_eq!(
        agent::log_lines(&stderr, "WARN"),
        vec![
            "otel_agent::probe: sessions will have no byte counts, payload, RTT, retransmits, segment counts, network namespace, accepting process or executable: cannot read BTF from /nonexistent: No such file or directory (os error 2)"
                .to_owned(),
            "otel_agent::probe: the raw tracepoint needs the socket's layout from BTF: attaching the classic tracepoint reason=cannot read BTF from /nonexistent: No such file or directory (os error 2)"
                .to_owned(),
        ]
    );
    assert!(
        stderr.contains("attach=\"tracepoint\""),
        "the tracepoint is attached:\n{stderr}"
    );
}

/// A task name with an escape sequence, a newline, a tab and DEL, as `prctl(PR_SET_NAME)`
/// accepts it (15 bytes and the NUL).
const HOSTILE_COMM: &[u8] = b"\x1b[2Jevil\nx\ty\x7fz";
/// What the agent must print for it.
const SANITISED_COMM: &str = "?[2Jevil?x?y?z";

#[test]
fn control_characters_in_a_task_name_never_reach_the_console() {
    require_root();
    let dir = TempDir::new("bad-input-comm");
    let pid = std::process::id().to_string();
    let mut agent = agent::start(&["-s", "-p", &pid], &[], dir.path());
    // One session owned by a thread with the hostile name.
    let ports = thread::spawn(|| {
        let name = CString::new(HOSTILE_COMM).expect("no NUL inside");
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) }, 0);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        client.write_all(b"ping").unwrap();
        let mut buffer = [0u8; 4];
        server.read_exact(&mut buffer).unwrap();
        let ports = (
            client.local_addr().unwrap().port(),
            server.local_addr().unwrap().port(),
        );
        drop(client);
        drop(server);
        ports
    })
    .join()
    .expect("the traffic thread");
    agent.wait_for_output(Duration::from_secs(10), "both console lines", |output| {
        !agent::csv_lines_for_ports(output, ports.0, ports.1).is_empty()
            && !agent::csv_lines_for_ports(output, ports.1, ports.0).is_empty()
    });
    agent::stop(&mut agent);
    let stdout = agent.stdout_text();
    for (local, remote) in [ports, (ports.1, ports.0)] {
        let lines = agent::csv_lines_for_ports(&stdout, local, remote);
        assert_eq!(lines.len(), 1, "{stdout:?}");
        assert_eq!(lines[0][0], std::process::id().to_string());
        assert_eq!(lines[0][1], SANITISED_COMM, "{stdout:?}");
    }
    let control: Vec<char> = stdout
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(
        control.is_empty(),
        "control characters printed: {control:?}"
    );
}
