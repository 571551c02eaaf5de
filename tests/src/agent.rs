//! Runs the real `otel-agent` binary as a child process with a clean OpenTelemetry
//! environment: only the flags and variables a test gives reach it.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use otel_agent::accounting::{Accounting, Figures, OutputKind};

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

/// The agent's final figures, from its `final accounting` line (logged at shutdown).
pub fn final_accounting(stderr: &str) -> Accounting {
    let json = Accounting::final_json(stderr)
        .unwrap_or_else(|| panic!("no final accounting line in:\n{stderr}"));
    Accounting::from_json(&json).unwrap_or_else(|| panic!("a malformed final accounting: {json}"))
}

fn by_name(figures: &Figures) -> BTreeMap<String, u64> {
    figures.0.iter().cloned().collect()
}

/// The final session figures (kernel and pipeline; those of the `session accounting` line).
pub fn accounting(stderr: &str) -> BTreeMap<String, u64> {
    by_name(&final_accounting(stderr).session)
}

/// The final figures of the agent's only export output (those of its `export accounting`
/// line).
pub fn export_accounting(stderr: &str) -> BTreeMap<String, u64> {
    let accounting = final_accounting(stderr);
    let export = accounting
        .outputs
        .iter()
        .find(|output| output.kind == OutputKind::Export)
        .unwrap_or_else(|| panic!("no export output in {accounting:?}"));
    by_name(&export.figures)
}

/// The final figures of the local output `output` (`console`, `json`; those of its `output
/// accounting` line).
pub fn output_accounting(stderr: &str, output: &str) -> BTreeMap<String, u64> {
    local_output(&final_accounting(stderr), output)
        .unwrap_or_else(|| panic!("no local output {output} in:\n{stderr}"))
}

fn local_output(accounting: &Accounting, output: &str) -> Option<BTreeMap<String, u64>> {
    accounting
        .outputs
        .iter()
        .find(|found| found.kind == OutputKind::Local && found.output == output)
        .map(|found| by_name(&found.figures))
}

/// Fails the test unless the agent's final figures reconcile ([`Accounting::reconcile`], the
/// one check of the equation, which the agent itself ran: its verdict must agree); returns
/// them.
pub fn assert_reconciled(stderr: &str) -> Accounting {
    let accounting = final_accounting(stderr);
    let verdict = accounting.reconcile();
    assert_eq!(verdict, Ok(()), "{accounting:?}");
    let json = Accounting::final_json(stderr).expect("the final accounting line");
    assert_eq!(json["reconciled"], true, "the agent's own verdict: {json}");
    accounting
}

/// Fails the test unless the accounting reconciles ([`assert_reconciled`]: every record the
/// kernel emitted was read, ...), no session `lost_*` figure is above zero, and every local
/// output (console, JSON lines) wrote every session read.
pub fn assert_nothing_lost(stderr: &str) {
    let accounting = assert_reconciled(stderr);
    let counters = by_name(&accounting.session);
    let lost: Vec<_> = counters
        .iter()
        .filter(|(name, value)| name.starts_with("lost_") && **value != 0)
        .collect();
    assert!(lost.is_empty(), "lost sessions: {lost:?}");
    for output in ["console", "json"] {
        if let Some(local) = local_output(&accounting, output) {
            assert_eq!(
                counter(&local, "written"),
                counter(&counters, "records_read"),
                "{output}: {local:?}"
            );
        }
    }
}

/// Fails the test unless the final accounting reconciles ([`assert_reconciled`], which for
/// the local output `output` is `written + lost_output_full + lost_output_failed +
/// lost_at_shutdown + queued = records_read - lost_channel_full - lost_decode_error`) with
/// nothing left queued in `output`. Returns its figures.
pub fn assert_output_balances(stderr: &str, output: &str) -> BTreeMap<String, u64> {
    let accounting = assert_reconciled(stderr);
    let local = local_output(&accounting, output)
        .unwrap_or_else(|| panic!("no local output {output} in {accounting:?}"));
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
    start_grpc_with_env(endpoint, extra, &[], dir)
}

/// [`start_grpc`] with the variables `env` set for the agent.
pub fn start_grpc_with_env(
    endpoint: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> ChildGuard {
    let pid = std::process::id().to_string();
    start_grpc_scoped(&["-p", &pid], endpoint, extra, env, dir)
}

/// Starts the agent exporting over gRPC to `endpoint`, kept to the sessions of the network
/// namespace whose inode is `netns`, with `extra` flags and the variables `env`.
pub fn start_grpc_in_netns(
    netns: u32,
    endpoint: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> ChildGuard {
    let netns = netns.to_string();
    start_grpc_scoped(&["--netns", &netns], endpoint, extra, env, dir)
}

fn start_grpc_scoped(
    scope: &[&str],
    endpoint: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> ChildGuard {
    let mut args = scope.to_vec();
    args.extend(["--otlp-endpoint", endpoint, "--otlp-protocol", "grpc"]);
    args.extend_from_slice(extra);
    start(&args, env, dir)
}
