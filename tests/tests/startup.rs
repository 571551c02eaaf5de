//! Start-up, checked on the real binary: the agent attaches its probe and drops its
//! privileges on its main thread before its async runtime starts; a SIGTERM sent meanwhile
//! neither kills it (the shutdown signals are blocked from the first line of `main`) nor is
//! lost: once running, the agent stops at once, cleanly, with its final accounting. The
//! capabilities are dropped while the main thread is the only thread.

use std::time::{Duration, Instant};

use otel_agent_tests::{
    agent,
    process::{ChildGuard, TempDir},
    require_root,
};

/// SIGHUP, SIGINT and SIGTERM in a `/proc/<pid>/status` signal mask (bit `signal - 1`).
const SHUTDOWN_SIGNALS: u64 =
    1 << (libc::SIGHUP - 1) | 1 << (libc::SIGINT - 1) | 1 << (libc::SIGTERM - 1);

/// The main thread's blocked signals (`SigBlk`), or 0 if its status cannot be read.
fn blocked_signals(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("SigBlk:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_sigterm_during_attach_stops_the_agent_cleanly_with_the_final_accounting() {
    require_root();
    let dir = TempDir::new("startup-sigterm");
    let pid = std::process::id().to_string();
    let mut agent = ChildGuard::spawn(
        agent::command(&["-s", "-p", &pid], &[]),
        dir.path(),
        "agent",
    );
    // Not "probe attached": the signal is sent as soon as the main thread blocks the
    // shutdown signals, which it does before anything else.
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocked_signals(agent.id()) & SHUTDOWN_SIGNALS != SHUTDOWN_SIGNALS {
        assert!(
            Instant::now() < deadline && agent.try_wait().is_none(),
            "the agent never blocked SIGHUP, SIGINT and SIGTERM: {}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let before_signal = agent.stderr_text();
    agent.signal(libc::SIGTERM);
    let status = agent.wait(Duration::from_secs(20));
    let stderr = agent.stderr_text();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        !before_signal.contains("probe attached"),
        "the signal was sent during start-up, before the attach ended: {before_signal}"
    );
    // Attached, then the pending signal handled: a clean stop with the final accounting.
    let attached = stderr.find("probe attached").expect("the probe attached");
    let shutting_down = stderr
        .find("shutting down: draining and flushing queued sessions signal=\"SIGTERM\"")
        .unwrap_or_else(|| panic!("no shutdown on SIGTERM: {stderr}"));
    assert!(attached < shutting_down, "{stderr}");
    assert!(
        stderr.contains("stopped cleanly signal=\"SIGTERM\""),
        "{stderr}"
    );
    agent::assert_nothing_lost(&stderr);
    assert_eq!(agent::log_lines(&stderr, "WARN"), Vec::<String>::new());
    assert_eq!(agent::log_lines(&stderr, "ERROR"), Vec::<String>::new());
}
