//! Loads the eBPF probe into the running kernel and attaches it: checks privileges, makes
//! sure tracefs is there and that the tracepoints have the expected layout, resolves kernel
//! struct offsets from BTF, sets the filters and map sizes chosen at load time, and attaches
//! the state-change program plus the optional reset and accept programs, degrading (with a
//! log line) where the kernel lacks one. [`Probe::detach`] (or dropping the [`Probe`])
//! detaches the programs; the counters stay readable after detaching, so that a final
//! reading reconciles exactly with what was read from the ring buffer.

pub mod btf;
pub mod drop_privileges;
pub mod info;
pub mod offsets;
pub mod privileges;
pub mod tracefs;

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{ProgramFd, RawTracePoint, TracePoint},
};
use common::{
    COUNTERS_MAP, EVENTS_MAP, FILTERS, Filters, KERNEL_OFFSETS, REPORT_UNKNOWN_BIRTH,
    RING_WAKEUP_BYTES, SOCKETS_MAP, SocketState, counter, offsets_valid,
};

use self::tracefs::{
    INET_SOCK_SET_STATE, SYS_EXIT_ACCEPT, SYS_EXIT_ACCEPT4, TCP_RECEIVE_RESET, Tracepoint,
};
use crate::log_text::{Escaped, with_causes};

/// The probe object built by `build.rs`.
static PROBE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/otel-agent"));

/// Why the probe could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Privileges(#[from] privileges::MissingPrivileges),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error(
        "the network namespace filter needs the kernel's BTF to locate a socket's namespace, and it does not: {0}"
    )]
    NetnsFilterUnsupported(String),
    /// The probe object could not be loaded: `what` names the step (parsing it, setting a
    /// global, creating a map, reading or relocating against BTF).
    #[error("the kernel refused the probe while {what}: {reason}")]
    LoadObject { what: &'static str, reason: String },
    #[error("the kernel refused the program {program}: {reason}")]
    LoadProgram {
        program: &'static str,
        reason: String,
    },
    #[error("cannot attach the probe to {program}: {reason}")]
    Attach {
        program: &'static str,
        reason: String,
    },
    #[error("cannot use the probe's map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("cannot read the kernel's statistics of the program {program}: {reason}")]
    ProgramStats {
        program: &'static str,
        reason: String,
    },
    #[error("the probe object has no `{0}`; rebuild otel-agent")]
    MissingObject(&'static str),
}

impl ProbeError {
    /// Why `EbpfLoader::load` failed, named by the step that failed.
    fn load_object(error: &aya::EbpfError) -> Self {
        use aya::EbpfError;
        let what = match error {
            // A global set at load time (filters, offsets, switches) that the object lacks
            // is a parse error too.
            EbpfError::ParseError(_) | EbpfError::FileError { .. } => {
                "parsing the object and setting its globals"
            }
            EbpfError::MapError(_) | EbpfError::UnexpectedPinningType { .. } => "creating a map",
            EbpfError::BtfError(_) | EbpfError::NoBTF => "reading BTF",
            EbpfError::RelocationError(_) | EbpfError::BtfRelocationError(_) => {
                "relocating the programs"
            }
            _ => "loading the object",
        };
        Self::LoadObject {
            what,
            reason: with_causes(error),
        }
    }

    fn load_program(program: &'static str, error: &dyn std::error::Error) -> Self {
        Self::LoadProgram {
            program,
            reason: with_causes(error),
        }
    }

    fn map(map: &'static str, error: &aya::maps::MapError) -> Self {
        Self::Map {
            map,
            reason: with_causes(error),
        }
    }

    fn program_stats(program: &'static str, error: &dyn std::error::Error) -> Self {
        Self::ProgramStats {
            program,
            reason: with_causes(error),
        }
    }
}

impl ProbeError {
    /// Whether more privileges would fix it (capabilities, or access to tracefs).
    pub fn is_missing_privilege(&self) -> bool {
        match self {
            Self::Privileges(_) => true,
            Self::Tracefs(error) => error.is_missing_privilege(),
            _ => false,
        }
    }

    /// Whether the cause is the kernel lacking a feature (rather than privileges or a bug):
    /// no tracefs, a missing tracepoint, an unexpected layout, no BTF for a filter.
    pub fn is_missing_kernel_feature(&self) -> bool {
        match self {
            Self::NetnsFilterUnsupported(_) => true,
            Self::Tracefs(error) => !error.is_missing_privilege(),
            _ => false,
        }
    }
}

/// How the state-change program attaches to `sock:inet_sock_set_state`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StateProbe {
    /// A classic (perf event) tracepoint: reads the event record. Skipped while any BPF
    /// tracing program runs on the CPU (the kernel's global `bpf_prog_active`).
    #[default]
    Tracepoint,
    /// A raw tracepoint: reads the socket itself, at offsets from BTF (without them, the
    /// classic tracepoint is attached instead). Skipped only while the same program runs
    /// on the CPU (its own `prog->active`), and then a second program attached after it
    /// (with a guard of its own) handles the hit.
    RawTracepoint,
}

impl StateProbe {
    /// The name used by `--attach` and in the logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
            Self::RawTracepoint => "raw-tracepoint",
        }
    }
}

/// The name of the raw tracepoint program in the probe object.
const INET_SOCK_SET_STATE_RAW: &str = "inet_sock_set_state_raw";
/// The name of its backup, attached after it: handles the hits the kernel skips for it.
const INET_SOCK_SET_STATE_BACKUP: &str = "inet_sock_set_state_backup";

/// Choices made at load time.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The kernel's BTF, for struct offsets.
    pub btf: PathBuf,
    pub filters: Filters,
    /// Report sessions whose birth was not seen (opened before the agent).
    pub report_unknown_birth: bool,
    /// Entries of the LRU map of open sockets.
    pub max_tracked_sockets: u32,
    /// Size of the ring buffer in bytes (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// How the state-change program attaches.
    pub state_probe: StateProbe,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            btf: PathBuf::from(btf::VMLINUX_BTF),
            filters: Filters::default(),
            report_unknown_birth: true,
            max_tracked_sockets: 1 << 16,
            ring_buffer_bytes: 1 << 22,
            state_probe: StateProbe::default(),
        }
    }
}

/// What the attached probe can report on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Byte counters (`tcp_sock.bytes_acked` / `bytes_received`).
    pub bytes: bool,
    /// Sequence numbers, for payload without SYN/FIN.
    pub payload: bool,
    /// RTT, retransmits, segment counts.
    pub health: bool,
    /// The socket's network namespace.
    pub netns: bool,
    /// Resets from the peer, from `tcp:tcp_receive_reset`.
    pub resets: bool,
    /// The accepting process as owner of server-side sessions (`syscalls:sys_exit_accept*`).
    pub accept_owner: bool,
}

/// Counters kept by the probe, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub tracked: u64,
    pub emitted: u64,
    pub ring_buffer_full: u64,
    pub map_update_failed: u64,
    pub filtered_at_birth: u64,
    pub filtered_after_tracking: u64,
    pub birth_not_seen: u64,
    pub unknown_birth_skipped: u64,
    pub released: u64,
    /// Entries still in the socket map when the probe was detached (`None` before).
    pub open_at_detach: Option<u64>,
    /// Hits of the state-change program (`inet_sock_set_state`) that the kernel skipped
    /// since attach because a BPF program was already running on that CPU (its
    /// `recursion_misses`), less those the backup program handled instead. A skipped
    /// `TCP_CLOSE` loses a session; a skipped birth or intermediate state only degrades one
    /// (unknown birth, a state missing): an upper bound on the sessions lost.
    pub skipped_state_change: u64,
    /// Hits the kernel skipped for the primary raw tracepoint program that its backup
    /// handled (nothing lost).
    pub recovered_state_change: u64,
    /// Hits of `tcp:tcp_receive_reset` the kernel skipped: a session may lack its
    /// reset-by-peer mark (degraded, not lost).
    pub skipped_receive_reset: u64,
    /// Hits of `syscalls:sys_exit_accept{,4}` the kernel skipped: a server session may carry
    /// the task current at close as its owner (degraded, not lost).
    pub skipped_accept: u64,
}

impl KernelCounters {
    /// Entries the LRU socket map evicted (their sessions are reported with an unknown
    /// birth): known once the probe is detached and the map can no longer change.
    pub fn evicted(&self) -> Option<u64> {
        let open = self.open_at_detach?;
        Some(self.tracked.saturating_sub(self.released + open))
    }
}

/// What a hit the kernel skips costs, by program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramRole {
    /// `inet_sock_set_state`: a session may be lost.
    StateChange,
    /// The backup raw tracepoint program: its skipped hits were handled by the primary.
    StateChangeBackup,
    /// `tcp_receive_reset`: a reset-by-peer mark may be missing.
    ReceiveReset,
    /// `sys_exit_accept{,4}`: a server session's owner may be the task current at close.
    Accept,
}

/// An attached program, through a descriptor of its own: the program outlives its links, so
/// that its statistics are still readable after [`Probe::detach`].
struct AttachedProgram {
    name: &'static str,
    role: ProgramRole,
    fd: ProgramFd,
    /// `recursion_misses` when it was attached.
    misses_at_attach: u64,
}

impl AttachedProgram {
    fn new(name: &'static str, role: ProgramRole, fd: &ProgramFd) -> Result<Self, ProbeError> {
        let fd = fd
            .try_clone()
            .map_err(|error| ProbeError::program_stats(name, &error))?;
        let stats =
            info::program_stats(&fd).map_err(|error| ProbeError::program_stats(name, &error))?;
        Ok(Self {
            name,
            role,
            fd,
            misses_at_attach: stats.recursion_misses,
        })
    }
}

/// The attached probe.
pub struct Probe {
    /// The programs and maps; `None` once detached.
    ebpf: Option<Ebpf>,
    programs: Vec<AttachedProgram>,
    counters: PerCpuArray<MapData, u64>,
    /// Entries left in the socket map at detach.
    open_at_detach: Option<u64>,
    pub features: Features,
    /// How the state-change program is attached.
    pub state_probe: StateProbe,
}

impl Probe {
    /// Loads and attaches the probe.
    pub fn attach(options: &ProbeOptions) -> Result<Self, ProbeError> {
        privileges::check()?;
        let (tracefs_path, mounted) = tracefs::ensure_mounted()?;
        if mounted {
            tracing::info!(
                path = %Escaped(&tracefs_path.display().to_string()),
                "mounted tracefs, which was not mounted"
            );
        }
        tracefs::check_layout(&tracefs_path, &INET_SOCK_SET_STATE)?;

        let resolved = offsets::resolve(&options.btf);
        for missing in &resolved.missing {
            tracing::warn!("sessions will have {}", Escaped(missing));
        }
        let kernel_offsets = resolved.offsets;
        if options.filters.netns != 0 && kernel_offsets.valid & offsets_valid::NETNS == 0 {
            return Err(ProbeError::NetnsFilterUnsupported(
                resolved.missing.join("; "),
            ));
        }
        let report_unknown_birth = u32::from(options.report_unknown_birth);
        // A quarter full: the reader, woken then, has three quarters of the ring buffer to
        // drain before anything is lost.
        let ring_wakeup_bytes = u64::from(options.ring_buffer_bytes / 4);
        let mut ebpf = EbpfLoader::new()
            .override_global(KERNEL_OFFSETS, &kernel_offsets, true)
            .override_global(FILTERS, &options.filters, true)
            .override_global(REPORT_UNKNOWN_BIRTH, &report_unknown_birth, true)
            .override_global(RING_WAKEUP_BYTES, &ring_wakeup_bytes, true)
            .map_max_entries(SOCKETS_MAP, options.max_tracked_sockets)
            .map_max_entries(EVENTS_MAP, options.ring_buffer_bytes)
            .load(PROBE_OBJECT)
            .map_err(|error| ProbeError::load_object(&error))?;

        let state_probe = match (options.state_probe, &resolved.sock_missing) {
            (StateProbe::RawTracepoint, Some(reason)) => {
                tracing::warn!(
                    reason = %reason,
                    "the raw tracepoint needs the socket's layout from BTF: attaching the classic tracepoint"
                );
                StateProbe::Tracepoint
            }
            (chosen, _) => chosen,
        };
        let mut programs = vec![match state_probe {
            StateProbe::Tracepoint => {
                attach_tracepoint(&mut ebpf, &INET_SOCK_SET_STATE, ProgramRole::StateChange)?
            }
            StateProbe::RawTracepoint => {
                attach_raw_tracepoint(&mut ebpf, INET_SOCK_SET_STATE_RAW, ProgramRole::StateChange)?
            }
        }];
        if state_probe == StateProbe::RawTracepoint {
            // After the primary: the kernel runs a tracepoint's programs in attach order.
            programs.push(attach_raw_tracepoint(
                &mut ebpf,
                INET_SOCK_SET_STATE_BACKUP,
                ProgramRole::StateChangeBackup,
            )?);
        }
        let resets = attach_optional(
            &mut ebpf,
            &tracefs_path,
            &[TCP_RECEIVE_RESET],
            ProgramRole::ReceiveReset,
            "sessions will not say whether the peer reset them",
            &mut programs,
        );
        let accept_owner = kernel_offsets.valid & offsets_valid::ACCEPT != 0
            && attach_optional(
                &mut ebpf,
                &tracefs_path,
                &[SYS_EXIT_ACCEPT, SYS_EXIT_ACCEPT4],
                ProgramRole::Accept,
                "server sessions reset before close will carry the task current at close as owner",
                &mut programs,
            );
        let counters = ebpf
            .take_map(COUNTERS_MAP)
            .ok_or(ProbeError::MissingObject(COUNTERS_MAP))?;
        let counters = PerCpuArray::try_from(counters)
            .map_err(|error| ProbeError::map(COUNTERS_MAP, &error))?;
        let valid = |bit| kernel_offsets.valid & bit != 0;
        Ok(Self {
            ebpf: Some(ebpf),
            programs,
            counters,
            open_at_detach: None,
            features: Features {
                bytes: valid(offsets_valid::BYTES),
                payload: valid(offsets_valid::SEQ),
                health: valid(offsets_valid::HEALTH),
                netns: valid(offsets_valid::NETNS),
                resets,
                accept_owner,
            },
            state_probe,
        })
    }

    /// Takes the ring buffer of session records (once, before detaching).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .as_mut()
            .and_then(|ebpf| ebpf.take_map(EVENTS_MAP))
            .ok_or(ProbeError::MissingObject(EVENTS_MAP))?;
        RingBuf::try_from(map).map_err(|error| ProbeError::map(EVENTS_MAP, &error))
    }

    /// Detaches every program: no record is written after this returns. Counts the socket
    /// map's entries first, for [`KernelCounters::evicted`].
    pub fn detach(&mut self) {
        if let Some(mut ebpf) = self.ebpf.take() {
            // Dropping the links first freezes the map before it is counted.
            let map = ebpf.take_map(SOCKETS_MAP);
            drop(ebpf);
            self.open_at_detach = map
                .and_then(|map| aya::maps::HashMap::<_, u64, SocketState>::try_from(map).ok())
                .map(|sockets| sockets.keys().filter(Result::is_ok).count() as u64);
        }
    }

    /// Reads the probe's counters.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let sum = |index: u32| -> Result<u64, ProbeError> {
            let values = self
                .counters
                .get(&index, 0)
                .map_err(|error| ProbeError::map(COUNTERS_MAP, &error))?;
            Ok(values.iter().sum())
        };
        Ok(KernelCounters {
            tracked: sum(counter::TRACKED)?,
            emitted: sum(counter::EMITTED)?,
            ring_buffer_full: sum(counter::RING_BUFFER_FULL)?,
            map_update_failed: sum(counter::MAP_UPDATE_FAILED)?,
            filtered_at_birth: sum(counter::FILTERED_AT_BIRTH)?,
            filtered_after_tracking: sum(counter::FILTERED_AFTER_TRACKING)?,
            birth_not_seen: sum(counter::BIRTH_NOT_SEEN)?,
            unknown_birth_skipped: sum(counter::UNKNOWN_BIRTH_SKIPPED)?,
            released: sum(counter::RELEASED)?,
            open_at_detach: self.open_at_detach,
            skipped_state_change: self
                .skipped(ProgramRole::StateChange)?
                .saturating_sub(sum(counter::SKIPPED_RECOVERED)?),
            recovered_state_change: sum(counter::SKIPPED_RECOVERED)?,
            skipped_receive_reset: self.skipped(ProgramRole::ReceiveReset)?,
            skipped_accept: self.skipped(ProgramRole::Accept)?,
        })
    }

    /// Hits the kernel skipped since attach, over the programs of `role`.
    fn skipped(&self, role: ProgramRole) -> Result<u64, ProbeError> {
        let mut skipped = 0;
        for program in self.programs.iter().filter(|p| p.role == role) {
            let stats = info::program_stats(&program.fd)
                .map_err(|error| ProbeError::program_stats(program.name, &error))?;
            skipped += stats
                .recursion_misses
                .saturating_sub(program.misses_at_attach);
        }
        Ok(skipped)
    }

    /// Each attached program's name and kernel-side statistics now (readable after
    /// [`Probe::detach`] too).
    pub fn program_stats(&self) -> Result<Vec<(&'static str, info::ProgramStats)>, ProbeError> {
        self.programs
            .iter()
            .map(|program| {
                info::program_stats(&program.fd)
                    .map(|stats| (program.name, stats))
                    .map_err(|error| ProbeError::program_stats(program.name, &error))
            })
            .collect()
    }
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    tracepoint: &Tracepoint,
    role: ProgramRole,
) -> Result<AttachedProgram, ProbeError> {
    let program: &mut TracePoint = ebpf
        .program_mut(tracepoint.name)
        .ok_or(ProbeError::MissingObject(tracepoint.name))?
        .try_into()
        .map_err(|error| ProbeError::load_program(tracepoint.name, &error))?;
    program
        .load()
        .map_err(|error| ProbeError::load_program(tracepoint.name, &error))?;
    program
        .attach(tracepoint.category, tracepoint.name)
        .map_err(|error| ProbeError::Attach {
            program: tracepoint.name,
            reason: with_causes(&error),
        })?;
    let fd = program
        .fd()
        .map_err(|error| ProbeError::load_program(tracepoint.name, &error))?;
    AttachedProgram::new(tracepoint.name, role, fd)
}

/// Attaches the raw tracepoint program `name` to `inet_sock_set_state`.
fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    role: ProgramRole,
) -> Result<AttachedProgram, ProbeError> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingObject(name))?
        .try_into()
        .map_err(|error| ProbeError::load_program(name, &error))?;
    program
        .load()
        .map_err(|error| ProbeError::load_program(name, &error))?;
    program
        .attach(INET_SOCK_SET_STATE.name)
        .map_err(|error| ProbeError::Attach {
            program: name,
            reason: with_causes(&error),
        })?;
    let fd = program
        .fd()
        .map_err(|error| ProbeError::load_program(name, &error))?;
    AttachedProgram::new(name, role, fd)
}

/// Attaches every tracepoint of an optional feature (adding them to `programs`), or warns
/// with `consequence` and returns false.
fn attach_optional(
    ebpf: &mut Ebpf,
    tracefs_path: &Path,
    tracepoints: &[Tracepoint],
    role: ProgramRole,
    consequence: &str,
    programs: &mut Vec<AttachedProgram>,
) -> bool {
    tracepoints.iter().all(|tracepoint| {
        tracefs::check_layout(tracefs_path, tracepoint)
            .map_err(ProbeError::from)
            .and_then(|()| attach_tracepoint(ebpf, tracepoint, role))
            .map(|program| programs.push(program))
            .inspect_err(|error| {
                tracing::warn!(
                    error = %Escaped(&with_causes(error)),
                    "{consequence}"
                );
            })
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use aya::maps::MapError;

    use super::*;

    #[test]
    fn each_refusal_says_what_failed() {
        assert_eq!(
            ProbeError::load_object(&aya::EbpfError::NoBTF).to_string(),
            "the kernel refused the probe while reading BTF: no BTF parsed for object"
        );
        assert_eq!(
            ProbeError::map(COUNTERS_MAP, &MapError::KeyNotFound).to_string(),
            format!("cannot use the probe's map {COUNTERS_MAP}: key not found")
        );
        let denied = std::io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(
            ProbeError::load_program("inet_sock_set_state", &denied).to_string(),
            "the kernel refused the program inet_sock_set_state: Operation not permitted (os error 1)"
        );
        assert_eq!(
            ProbeError::program_stats("inet_sock_set_state", &denied).to_string(),
            "cannot read the kernel's statistics of the program inet_sock_set_state: Operation not permitted (os error 1)"
        );
    }
}
