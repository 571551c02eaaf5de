//! Runs the real `otel-agent` binary as a child process with a clean OpenTelemetry
//! environment: only the flags and variables a test gives reach it.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use crate::process::{ChildGuard, agent_binary};

/// A command for the agent binary with every `OTEL_*` variable of the test's own
/// environment removed.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(agent_binary());
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(env.iter().copied());
    command
}

/// Like [`command`], with the agent run through `wrapper` (a program and its arguments that
/// end by executing the rest of its command line, such as `setpriv ...` or `unshare ...`):
/// `wrapper... <agent binary> args...`. The wrapper must `exec` the agent, so that the child's
/// pid is the agent's.
pub fn wrapped_command(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Command {
    let (program, wrapper_args) = wrapper.split_first().expect("a wrapper program");
    let mut command = Command::new(program);
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command
        .args(wrapper_args)
        .arg(agent_binary())
        .args(args)
        .envs(env.iter().copied());
    command
}

/// Starts the agent and waits until its probe is attached.
pub fn start(args: &[&str], env: &[(&str, &str)], dir: &Path) -> ChildGuard {
    start_command(command(args, env), dir)
}

/// Starts the agent with its stdout on `stdout` and waits until its probe is attached.
pub fn start_with_stdout(args: &[&str], dir: &Path, stdout: Stdio) -> ChildGuard {
    let mut agent = ChildGuard::spawn_with_stdout(command(args, &[]), dir, "agent", stdout);
    wait_for_attach(&mut agent);
    agent
}

/// Starts `command` (the agent, possibly wrapped) and waits until its probe is attached.
pub fn start_command(command: Command, dir: &Path) -> ChildGuard {
    let mut agent = ChildGuard::spawn(command, dir, "agent");
    wait_for_attach(&mut agent);
    agent
}

fn wait_for_attach(agent: &mut ChildGuard) {
    agent.wait_for_output(Duration::from_secs(20), "the probe to attach", |output| {
        output.contains("probe attached")
    });
}

/// Runs `command` (the agent, possibly wrapped), which must fail at start-up, and returns
/// its exit code and stderr.
pub fn run_to_failure(command: Command, dir: &Path) -> (Option<i32>, String) {
    let mut agent = ChildGuard::spawn(command, dir, "agent");
    let status = agent.wait(Duration::from_secs(20));
    (status.code(), agent.stderr_text())
}

/// Stops the agent with SIGINT and checks that it flushed and exited 0.
pub fn stop(agent: &mut ChildGuard) {
    agent.signal(libc::SIGINT);
    let status = agent.wait(Duration::from_secs(15));
    assert_eq!(
        status.code(),
        Some(0),
        "agent stderr:\n{}",
        agent.stderr_text()
    );
}

/// The agent's log lines at `level` (`ERROR`, `WARN`, `INFO`) as `target: message`, without
/// the timestamp and level.
pub fn log_lines(stderr: &str, level: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|line| {
            let (_timestamp, rest) = line.split_once(' ')?;
            let (found, rest) = rest.trim_start().split_once(' ')?;
            (found == level).then(|| rest.to_owned())
        })
        .collect()
}

/// The numeric `key=value` fields, by name, of the last line of `stderr` that contains every
/// one of `markers` (an accounting line, for example).
pub fn log_counters(stderr: &str, markers: &[&str]) -> BTreeMap<String, u64> {
    let line = stderr
        .lines()
        .rev()
        .find(|line| markers.iter().all(|marker| line.contains(marker)))
        .unwrap_or_else(|| panic!("no log line with {markers:?} in:\n{stderr}"));
    line.split_whitespace()
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The counter `name` of `counters`, failing the test (and showing them all) without it.
pub fn counter(counters: &BTreeMap<String, u64>, name: &str) -> u64 {
    *counters
        .get(name)
        .unwrap_or_else(|| panic!("no counter {name} in {counters:?}"))
}

/// The counters of the agent's final `session accounting` line (logged at shutdown).
pub fn accounting(stderr: &str) -> BTreeMap<String, u64> {
    log_counters(stderr, &["session accounting", "when=\"final\""])
}

/// The counters of the agent's final `export accounting` line (of its only output).
pub fn export_accounting(stderr: &str) -> BTreeMap<String, u64> {
    log_counters(stderr, &["export accounting", "when=\"final\""])
}

/// The counters of the agent's final `output accounting` line of the local output `output`
/// (`console`, `json`).
pub fn output_accounting(stderr: &str, output: &str) -> BTreeMap<String, u64> {
    let output = format!("output=\"{output}\"");
    log_counters(stderr, &["output accounting", "when=\"final\"", &output])
}

/// Fails the test unless the accounting reconciles: every record the kernel emitted was
/// read, no `lost_*` counter is above zero, and every local output (console, JSON lines)
/// wrote every session read.
pub fn assert_nothing_lost(stderr: &str) {
    let counters = accounting(stderr);
    assert_eq!(
        counters.get("kernel_emitted"),
        counters.get("records_read"),
        "{counters:?}"
    );
    assert!(counters.contains_key("kernel_emitted"), "{counters:?}");
    let lost: Vec<_> = counters
        .iter()
        .filter(|(name, value)| name.starts_with("lost_") && **value != 0)
        .collect();
    assert!(lost.is_empty(), "lost sessions: {lost:?}");
    for output in ["console", "json"] {
        if stderr.contains(&format!(
            "output accounting when=\"final\" output=\"{output}\""
        )) {
            let local = output_accounting(stderr, output);
            assert_eq!(
                counter(&local, "written"),
                counter(&counters, "records_read"),
                "{output}: {local:?}"
            );
        }
    }
}

/// Fails the test unless the final accounting of the local output `output` balances:
/// `written + lost_output_full + lost_output_failed + lost_at_shutdown + queued =
/// records_read - lost_channel_full - lost_decode_error`. Returns its counters.
pub fn assert_output_balances(stderr: &str, output: &str) -> BTreeMap<String, u64> {
    let session = accounting(stderr);
    let local = output_accounting(stderr, output);
    let accounted: u64 = [
        "written",
        "lost_output_full",
        "lost_output_failed",
        "lost_at_shutdown",
        "queued",
    ]
    .iter()
    .map(|name| counter(&local, name))
    .sum();
    assert_eq!(
        accounted,
        counter(&session, "records_read")
            - counter(&session, "lost_channel_full")
            - counter(&session, "lost_decode_error"),
        "{output}: {local:?}, {session:?}"
    );
    assert_eq!(counter(&local, "queued"), 0, "{local:?}");
    local
}

/// The fields of the `-s` (CSV) console lines of the sessions from local port `local` to
/// remote port `remote` (both: another session may reuse one of the two ports):
/// `PID,COMM,IP,LADDR,LPORT,RADDR,RPORT,TX_KB,RX_KB,MS`.
pub fn csv_lines_for_ports(stdout: &str, local: u16, remote: u16) -> Vec<Vec<String>> {
    stdout
        .lines()
        .map(|line| line.split(',').map(str::to_owned).collect::<Vec<_>>())
        .filter(|fields| {
            fields.len() == 10 && fields[4] == local.to_string() && fields[6] == remote.to_string()
        })
        .collect()
}

/// Arguments that keep the agent to the sessions of this test process (`-p <pid>`), so that
/// other traffic on a busy host cannot fill its queues or ring buffer during a test.
pub fn only_this_process() -> [String; 2] {
    ["-p".to_owned(), std::process::id().to_string()]
}

/// Starts the agent exporting over gRPC to `endpoint`, kept to this test process's sessions,
/// with `extra` flags.
pub fn start_grpc(endpoint: &str, extra: &[&str], dir: &Path) -> ChildGuard {
    let pid = std::process::id().to_string();
    let mut args = vec![
        "-p",
        &pid,
        "--otlp-endpoint",
        endpoint,
        "--otlp-protocol",
        "grpc",
    ];
    args.extend_from_slice(extra);
    start(&args, &[], dir)
}
