//! Runs the real `otel-agent` binary as a child process with a clean OpenTelemetry
//! environment: only the flags and variables a test gives reach it.

use std::{path::Path, process::Command, time::Duration};

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

/// Starts the agent and waits until its probe is attached.
pub fn start(args: &[&str], env: &[(&str, &str)], dir: &Path) -> ChildGuard {
    let mut agent = ChildGuard::spawn(command(args, env), dir, "agent");
    agent.wait_for_output(Duration::from_secs(20), "the probe to attach", |output| {
        output.contains("probe attached")
    });
    agent
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
