//! A private mount namespace for one agent run, in which tracefs can be hidden or broken:
//! `unshare --mount --propagation private` (nothing mounted inside reaches the host, and
//! everything mounted inside disappears with the namespace when the agent exits), a setup
//! script, then `exec` of the rest of the command line (so the child's pid is the agent's).

/// The source name of every tmpfs mounted by [`HIDE_TRACEFS`], to recognise it in a mount
/// table.
pub const TMPFS_SOURCE: &str = "otel-agent-test";

/// Setup that hides tracefs: an empty tmpfs over `/sys/kernel/tracing` and over
/// `/sys/kernel/debug` (where `/sys/kernel/debug/tracing` would be).
pub const HIDE_TRACEFS: &str = "mount -t tmpfs -o mode=0755 otel-agent-test /sys/kernel/tracing
if [ -d /sys/kernel/debug ]; then mount -t tmpfs otel-agent-test /sys/kernel/debug; fi";

/// Setup that makes sure tracefs is mounted at `/sys/kernel/tracing` (inside the namespace
/// only), for agents run without the privilege to mount it.
pub const ENSURE_TRACEFS: &str =
    "[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing";

/// The command-line prefix that runs what follows it in a fresh private mount namespace,
/// after `setup` (a shell script run inside as root). `then` goes before the agent (for
/// example `setpriv ...`, which must exec it too).
pub fn wrapper(setup: &str, then: &[&str]) -> Vec<String> {
    let script = format!("{setup}\nexec \"$@\"");
    let mut wrapper: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-euc",
        &script,
        "sh",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    wrapper.extend(then.iter().map(|s| (*s).to_owned()));
    wrapper
}

/// Fails the test if the host's mount table (this process's) holds a tmpfs of
/// [`HIDE_TRACEFS`], or lost the tracefs it had: every change must stay in the namespace.
/// (A tracefs that appears is not checked: an agent run on the host by a test running in
/// parallel mounts it there when it is missing, as it is meant to.)
pub fn assert_host_mounts_untouched(tracefs_before: bool) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("read the mount table");
    let leaked: Vec<&str> = table
        .lines()
        .filter(|line| line.contains(&format!(" - tmpfs {TMPFS_SOURCE} ")))
        .collect();
    assert!(
        leaked.is_empty(),
        "test mounts leaked to the host: {leaked:?}"
    );
    if tracefs_before {
        assert!(host_has_tracefs(), "the host's tracefs was unmounted");
    }
}

/// Whether tracefs is mounted at `/sys/kernel/tracing` in this process's mount namespace.
pub fn host_has_tracefs() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read the mount table")
        .lines()
        .any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            fields.get(4) == Some(&"/sys/kernel/tracing") && line.contains(" - tracefs ")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hiding_tmpfs_carries_the_name_the_leak_check_looks_for() {
        assert_eq!(
            HIDE_TRACEFS
                .matches(&format!(" {TMPFS_SOURCE} /sys/kernel/"))
                .count(),
            2
        );
    }

    #[test]
    fn the_wrapper_runs_setup_then_execs_the_rest() {
        assert_eq!(
            wrapper("true", &["setpriv", "--inh-caps=-all"]),
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-euc",
                "true\nexec \"$@\"",
                "sh",
                "setpriv",
                "--inh-caps=-all"
            ]
        );
    }
}
