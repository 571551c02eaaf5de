//! Least privilege after attach: once the probe is attached, its ring buffer and maps are open
//! descriptors and the agent needs no capability, so [`drop_all`] clears the effective,
//! permitted, inheritable and ambient sets and sets `PR_SET_NO_NEW_PRIVS` (no `execve` can
//! give them back, not even a set-uid or file-capability binary, nor uid 0's implicit ones).
//!
//! Linux keeps credentials per thread (`capset(2)`: "a thread can only change its own
//! capabilities"), and the runtime's and exporter's threads exist before the probe is
//! attached. So the calling thread drops its own, then every other thread of the process
//! drops its own in a signal handler ([`signal`]) that makes only raw system calls, the way
//! glibc broadcasts `setuid`; `/proc/self/task/*/status` is then read back to verify every
//! thread. Threads created afterwards inherit the empty sets.
//!
//! One exception, decided by [`kept_after_attach`]: before Linux 6.5, while
//! `kernel.unprivileged_bpf_disabled` is set (the default on most distributions), the kernel
//! refuses every `bpf()` command without `CAP_BPF`, even on open map descriptors, and the
//! agent reads the probe's counters that way at shutdown; there it keeps `CAP_BPF` alone.
//! Linux 6.5 moved that check to map creation and program loading (commit "bpf: move
//! unprivileged checks into map_create() and bpf_prog_load()").

use std::{
    io,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// `_LINUX_CAPABILITY_VERSION_3` from `include/uapi/linux/capability.h`: two 32-bit words
/// per set.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// Rounds of signalling the threads that still hold something (a thread may start another
/// one before its own handler runs).
const ROUNDS: usize = 3;
/// How long one round waits for the signalled threads to run their handler.
const ROUND_TIMEOUT: Duration = Duration::from_secs(1);

/// The real-time signal whose handler drops the receiving thread's capabilities (unused by
/// the agent otherwise; the handler stays installed, so a late delivery is harmless).
pub fn signal() -> libc::c_int {
    libc::SIGRTMAX()
}

/// `CAP_BPF` from `include/uapi/linux/capability.h`.
pub const CAP_BPF: u32 = 39;

/// Handlers that have run, in any thread.
static HANDLED: AtomicUsize = AtomicUsize::new(0);
/// The capabilities the handler keeps in the effective and permitted sets.
static KEEP: AtomicU64 = AtomicU64::new(0);

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// One thread's capability sets and `no_new_privs` flag, as `/proc/<pid>/status` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

impl CapSets {
    /// Reads the `CapInh`, `CapPrm`, `CapEff`, `CapAmb` and `NoNewPrivs` lines of a status
    /// file; `None` if one is missing or malformed.
    pub fn from_status(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let mask = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
        Some(Self {
            effective: mask("CapEff")?,
            permitted: mask("CapPrm")?,
            inheritable: mask("CapInh")?,
            ambient: mask("CapAmb")?,
            no_new_privs: field("NoNewPrivs")? == "1",
        })
    }

    /// No capability in any set, and `no_new_privs` set.
    pub fn is_dropped(&self) -> bool {
        self.is_dropped_except(0)
    }

    /// No capability but those of `keep` in the effective and permitted sets, none in the
    /// others, and `no_new_privs` set.
    pub fn is_dropped_except(&self, keep: u64) -> bool {
        (self.effective | self.permitted) & !keep == 0
            && (self.inheritable | self.ambient) == 0
            && self.no_new_privs
    }
}

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
    #[error("cannot {what}: {source}")]
    Syscall {
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Proc { path: String, source: io::Error },
    #[error("{path} shows no capability sets")]
    Status { path: String },
    #[error("threads still holding capabilities after the drop: {0}")]
    ThreadsKept(String),
}

/// Clears every capability set and sets `PR_SET_NO_NEW_PRIVS` in every thread of the process,
/// then verifies it.
pub fn drop_all() -> Result<Dropped, DropError> {
    drop_all_except(0)
}

/// Like [`drop_all`], keeping the capabilities of `keep` (a mask) in the effective and
/// permitted sets (if held).
pub fn drop_all_except(keep: u64) -> Result<Dropped, DropError> {
    let before = read_sets("/proc/thread-self/status")?;
    let keep = keep & before.permitted;
    KEEP.store(keep, Ordering::SeqCst);
    drop_this_thread(keep).map_err(|(what, source)| DropError::Syscall { what, source })?;
    install_handler().map_err(|source| DropError::Syscall {
        what: "install the signal handler that drops the other threads' capabilities",
        source,
    })?;
    // SAFETY: getpid and gettid have no preconditions.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    for _ in 0..ROUNDS {
        let holding: Vec<Thread> = threads()?
            .into_iter()
            .filter(|thread| !thread.sets.is_dropped_except(keep))
            .collect();
        if holding.is_empty() {
            break;
        }
        if holding.iter().any(|thread| thread.tid == me) {
            return Err(DropError::ThreadsKept(describe(&holding)));
        }
        let target = HANDLED.load(Ordering::SeqCst);
        let mut sent = 0;
        for thread in &holding {
            // SAFETY: tgkill only delivers a signal whose handler is installed above to a
            // thread of this process; a thread that has exited yields ESRCH.
            if unsafe { libc::tgkill(pid, thread.tid, signal()) } == 0 {
                sent += 1;
            }
        }
        let deadline = Instant::now() + ROUND_TIMEOUT;
        while HANDLED.load(Ordering::SeqCst) < target + sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let threads = threads()?;
    let holding: Vec<Thread> = threads
        .iter()
        .filter(|thread| !thread.sets.is_dropped_except(keep))
        .cloned()
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
/// fatal (the agent then runs with the privileges it was started with).
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
            error = %crate::log_text::Escaped(&crate::error::with_causes(&error)),
            "could not drop the capabilities the agent no longer needs; it keeps running with them"
        ),
    }
}

/// A thread of this process and its sets.
#[derive(Debug, Clone)]
struct Thread {
    tid: libc::pid_t,
    name: String,
    sets: CapSets,
}

fn describe(threads: &[Thread]) -> String {
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
    let entries = std::fs::read_dir(dir).map_err(|source| DropError::Proc {
        path: dir.to_owned(),
        source,
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
        let name = status
            .lines()
            .find_map(|line| line.strip_prefix("Name:"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        threads.push(Thread { tid, name, sets });
    }
    Ok(threads)
}

fn read_sets(path: &str) -> Result<CapSets, DropError> {
    let status = std::fs::read_to_string(path).map_err(|source| DropError::Proc {
        path: path.to_owned(),
        source,
    })?;
    CapSets::from_status(&status).ok_or_else(|| DropError::Status {
        path: path.to_owned(),
    })
}

/// Sets `no_new_privs` and clears the ambient, effective, permitted and inheritable sets of
/// the calling thread. Only raw system calls: also run inside the signal handler.
fn drop_this_thread(keep: u64) -> Result<(), (&'static str, io::Error)> {
    let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
    // SAFETY: prctl with integer arguments only changes this thread's flags.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) } != 0 {
        return Err(("set PR_SET_NO_NEW_PRIVS", io::Error::last_os_error()));
    }
    let clear_all = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
    // SAFETY: as above. EINVAL means a kernel without ambient capabilities (before 4.3).
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, clear_all, zero, zero, zero) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINVAL) {
            return Err(("clear the ambient capabilities", error));
        }
    }
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // Version 3 splits each 64-bit set into two 32-bit words, low word first.
    let word = |shift: u32| CapData {
        effective: (keep >> shift) as u32,
        permitted: (keep >> shift) as u32,
        inheritable: 0,
    };
    let data = [word(0), word(32)];
    // SAFETY: capset reads one header and, for version 3, two data structs, all valid here;
    // pid 0 is the calling thread, and lowering capabilities needs no privilege.
    if unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) } != 0 {
        return Err((
            "clear the effective, permitted and inheritable capabilities",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The handler of [`signal`]: drops the receiving thread's capabilities. Async-signal-safe:
/// raw system calls and an atomic counter, with `errno` saved for the interrupted code.
extern "C" fn drop_in_signalled_thread(_: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno slot, valid for its lifetime.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    // A failure shows when the caller reads this thread's status back.
    let _ = drop_this_thread(KEEP.load(Ordering::SeqCst));
    HANDLED.fetch_add(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *errno = saved };
}

fn install_handler() -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction =
        drop_in_signalled_thread as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: sa_mask is a valid sigset_t to initialise; the handler is async-signal-safe
    // (see above) and the action struct outlives the call.
    let result = unsafe {
        libc::sigemptyset(&raw mut action.sa_mask);
        libc::sigaction(signal(), &raw const action, std::ptr::null_mut())
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "Name:\totel-agent\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n";

    #[test]
    fn reads_the_sets_from_a_status_file() {
        assert_eq!(
            CapSets::from_status(ROOT),
            Some(CapSets {
                effective: 0x1ff_ffff_ffff,
                permitted: 0x1ff_ffff_ffff,
                inheritable: 0,
                ambient: 0,
                no_new_privs: false,
            })
        );
        assert_eq!(CapSets::from_status("CapEff:\t0\n"), None);
        assert_eq!(
            CapSets::from_status(&ROOT.replace("CapAmb:\t0000000000000000", "CapAmb:\tzz")),
            None
        );
    }

    #[test]
    fn dropped_means_empty_sets_and_no_new_privs() {
        let dropped = CapSets {
            effective: 0,
            permitted: 0,
            inheritable: 0,
            ambient: 0,
            no_new_privs: true,
        };
        assert!(dropped.is_dropped());
        assert!(!CapSets::from_status(ROOT).unwrap().is_dropped());
        assert!(
            !CapSets {
                no_new_privs: false,
                ..dropped
            }
            .is_dropped()
        );
        assert!(
            !CapSets {
                ambient: 1 << 39,
                ..dropped
            }
            .is_dropped()
        );
        let only_bpf = CapSets {
            effective: 1 << CAP_BPF,
            permitted: 1 << CAP_BPF,
            ..dropped
        };
        assert!(!only_bpf.is_dropped());
        assert!(only_bpf.is_dropped_except(1 << CAP_BPF));
        assert!(
            !CapSets {
                inheritable: 1 << CAP_BPF,
                ..only_bpf
            }
            .is_dropped_except(1 << CAP_BPF)
        );
    }

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
