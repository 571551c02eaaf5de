//! Least privilege after attach: once the probe is attached, its ring buffer and maps are open
//! descriptors and the agent needs no capability, so [`drop_all`] clears the effective,
//! permitted, inheritable and ambient sets and sets `PR_SET_NO_NEW_PRIVS` (no `execve` can
//! give them back, not even a set-uid or file-capability binary, nor uid 0's implicit ones).
//!
//! Linux keeps credentials per thread (`capset(2)`: "a thread can only change its own
//! capabilities"), and a new thread starts with its creator's. So the agent attaches the
//! probe and drops its capabilities on the main thread before any other thread exists (the
//! async runtime, the exporters, the local outputs and the self-metrics all start after,
//! see `main.rs`): they inherit the empty sets. `/proc/self/task/*/status` is then read back
//! to verify every thread; a thread that still holds something fails the drop.
//!
//! One exception, decided by [`kept_after_attach`]: before Linux 6.5, while
//! `kernel.unprivileged_bpf_disabled` is set (the default on most distributions), the kernel
//! refuses every `bpf()` command without `CAP_BPF`, even on open map descriptors, and the
//! agent reads the probe's counters that way at shutdown; there it keeps `CAP_BPF` alone.
//! Linux 6.5 moved that check to map creation and program loading (commit "bpf: move
//! unprivileged checks into map_create() and bpf_prog_load()").

use std::io;

use capctl::{Cap, CapSet, CapState};

use super::privileges::{CAP_BPF, CapSets, field};

/// What [`drop_all`] dropped.
#[derive(Debug, Clone, Copy)]
pub struct Dropped {
    /// The calling thread's sets before the drop.
    pub before: CapSets,
    /// The capabilities kept (a mask; 0 for none).
    pub kept: u64,
    /// Threads of the process verified to hold nothing else afterwards.
    pub threads: usize,
}

/// Why the capabilities could not all be dropped.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("cannot {what}: {error}")]
    Syscall {
        what: &'static str,
        error: io::Error,
    },
    #[error("cannot read {path}: {error}")]
    Proc { path: String, error: io::Error },
    #[error("{path} shows no capability sets")]
    Status { path: String },
    #[error("threads still holding capabilities after the drop: {0}")]
    ThreadsKept(String),
}

/// Clears every capability set and sets `PR_SET_NO_NEW_PRIVS` in the calling thread, then
/// verifies every thread of the process (call it before starting any other thread).
pub fn drop_all() -> Result<Dropped, DropError> {
    drop_all_except(0)
}

/// Like [`drop_all`], keeping the capabilities of `keep` (a mask) in the effective and
/// permitted sets (if held).
pub fn drop_all_except(keep: u64) -> Result<Dropped, DropError> {
    let before = read_sets("/proc/thread-self/status")?;
    let keep = keep & before.permitted;
    drop_this_thread(keep)?;
    let threads = threads()?;
    let holding: Vec<&Thread> = threads
        .iter()
        .filter(|thread| !thread.sets.is_dropped_except(keep))
        .collect();
    if !holding.is_empty() {
        return Err(DropError::ThreadsKept(describe(&holding)));
    }
    Ok(Dropped {
        before,
        kept: keep,
        threads: threads.len(),
    })
}

/// The capabilities to keep after attach on this kernel: `CAP_BPF` before Linux 6.5 when
/// `kernel.unprivileged_bpf_disabled` is set (see the module's documentation), else none.
/// What cannot be read counts as set, so that the shutdown accounting keeps working.
pub fn kept_after_attach(release: &str, unprivileged_bpf_disabled: Option<&str>) -> u64 {
    let mut parts = release.split(['.', '-']);
    let version = parts
        .next()
        .and_then(|major| major.parse::<u32>().ok())
        .zip(parts.next().and_then(|minor| minor.parse::<u32>().ok()));
    let checks_every_command = version.is_none_or(|version| version < (6, 5));
    let disabled = unprivileged_bpf_disabled.is_none_or(|value| value.trim() != "0");
    if checks_every_command && disabled {
        1 << CAP_BPF
    } else {
        0
    }
}

/// Drops every capability once the probe is attached (but `CAP_BPF` where
/// [`kept_after_attach`] says so) and logs what was dropped; a failure is a warning, not
/// fatal (the agent then runs with the privileges it was started with). Runs on the main
/// thread, before any other thread starts.
pub fn drop_after_attach() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").ok();
    let keep = kept_after_attach(release.trim(), disabled.as_deref());
    match drop_all_except(keep) {
        Ok(Dropped { kept, threads, .. }) if kept != 0 => tracing::info!(
            kernel = release.trim(),
            threads,
            "dropped every capability but CAP_BPF and set no_new_privs: before Linux 6.5, with kernel.unprivileged_bpf_disabled set, reading the probe's counters at shutdown needs CAP_BPF"
        ),
        Ok(Dropped {
            before, threads, ..
        }) => tracing::info!(
            effective = %format_args!("{:016x}", before.effective),
            permitted = %format_args!("{:016x}", before.permitted),
            inheritable = %format_args!("{:016x}", before.inheritable),
            ambient = %format_args!("{:016x}", before.ambient),
            capabilities = (before.effective | before.permitted | before.inheritable | before.ambient)
                .count_ones(),
            threads,
            "dropped every capability and set no_new_privs: the attached probe needs none"
        ),
        Err(error) => tracing::warn!(
            error = %crate::log_text::Escaped(&crate::log_text::with_causes(&error)),
            "could not drop the capabilities the agent no longer needs; it keeps running with them"
        ),
    }
}

/// A thread of this process and its sets.
#[derive(Debug)]
struct Thread {
    tid: u32,
    name: String,
    sets: CapSets,
}

fn describe(threads: &[&Thread]) -> String {
    threads
        .iter()
        .map(|thread| {
            format!(
                "{} ({}: effective {:016x}, permitted {:016x}, no_new_privs {})",
                thread.tid,
                thread.name,
                thread.sets.effective,
                thread.sets.permitted,
                thread.sets.no_new_privs
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every live thread of this process (one that exits while being read is left out).
fn threads() -> Result<Vec<Thread>, DropError> {
    let dir = "/proc/self/task";
    let entries = std::fs::read_dir(dir).map_err(|error| DropError::Proc {
        path: dir.to_owned(),
        error,
    })?;
    let mut threads = Vec::new();
    for entry in entries.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let sets = CapSets::from_status(&status).ok_or_else(|| DropError::Status {
            path: entry.path().join("status").display().to_string(),
        })?;
        let name = field(&status, "Name").unwrap_or_default().to_owned();
        threads.push(Thread { tid, name, sets });
    }
    Ok(threads)
}

fn read_sets(path: &str) -> Result<CapSets, DropError> {
    let status = std::fs::read_to_string(path).map_err(|error| DropError::Proc {
        path: path.to_owned(),
        error,
    })?;
    CapSets::from_status(&status).ok_or_else(|| DropError::Status {
        path: path.to_owned(),
    })
}

/// Sets `no_new_privs` and clears the ambient, effective, permitted and inheritable sets of
/// the calling thread, keeping `keep` in the effective and permitted sets.
fn drop_this_thread(keep: u64) -> Result<(), DropError> {
    let failed = |what: &'static str| {
        move |error: capctl::Error| DropError::Syscall {
            what,
            error: error.into(),
        }
    };
    capctl::prctl::set_no_new_privs().map_err(failed("set PR_SET_NO_NEW_PRIVS"))?;
    match capctl::ambient::clear() {
        // A kernel without ambient capabilities (before 4.3) has none to clear.
        Err(error) if error.code() == libc::EINVAL => {}
        result => result.map_err(failed("clear the ambient capabilities"))?,
    }
    let kept: CapSet = Cap::iter()
        .filter(|&cap| keep & (1 << cap as u32) != 0)
        .collect();
    CapState {
        effective: kept,
        permitted: kept,
        inheritable: CapSet::empty(),
    }
    .set_current()
    .map_err(failed(
        "clear the effective, permitted and inheritable capabilities",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_bpf_is_kept_only_where_the_kernel_checks_every_bpf_command() {
        let bpf = 1 << CAP_BPF;
        assert_eq!(kept_after_attach("6.18.0-1-amd64", Some("2\n")), 0);
        assert_eq!(kept_after_attach("6.5.0", Some("1")), 0);
        assert_eq!(kept_after_attach("6.4.16-generic", Some("2")), bpf);
        assert_eq!(kept_after_attach("5.15.0-91-generic", Some("1")), bpf);
        assert_eq!(kept_after_attach("5.15.0-91-generic", Some("0\n")), 0);
        assert_eq!(
            kept_after_attach("5.10.0", None),
            bpf,
            "unknown sysctl: keep"
        );
        assert_eq!(
            kept_after_attach("garbage", Some("2")),
            bpf,
            "unknown release: keep"
        );
        assert_eq!(kept_after_attach("6", Some("2")), bpf);
    }
}
