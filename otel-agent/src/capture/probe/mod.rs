//! Loads the eBPF probe into the running kernel and attaches it: checks privileges, makes
//! sure tracefs is there and that the tracepoints have the expected layout, resolves kernel
//! struct offsets from BTF, sets the filters and map sizes chosen at load time, and attaches
//! the state-change program plus the optional reset and accept programs, degrading (with a
//! log line) where the kernel lacks one. [`Probe::detach`] (or dropping the [`Probe`])
//! detaches the programs; the counters stay readable after detaching, so that a final
//! reading reconciles exactly with what was read from the ring buffer.
//!
//! With a pin directory ([`pins`]), the probe's maps and links are pinned and a running
//! probe is taken over; [`Probe::detach`] then leaves it attached for the next agent, the
//! reader records what it read ([`Probe::take_consumption`]), and [`Probe::leave`] what the
//! agent leaves (the counters are read relative to what was adopted).

pub mod btf;
pub mod drop_privileges;
pub mod info;
pub mod offsets;
pub mod pins;
pub mod privileges;
pub mod tracefs;

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{ProgramFd, RawTracePoint, TracePoint, links::FdLink},
};
use common::{
    COUNTERS_MAP, EVENTS_MAP, FILTERS, Filters, GENERATION, KERNEL_OFFSETS, REPORT_UNKNOWN_BIRTH,
    RING_WAKEUP_BYTES, SOCKETS_MAP, SocketState, counter, offsets_valid,
};

use self::pins::{PinDir, PinError};

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
    #[error(transparent)]
    Pins(#[from] PinError),
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

    fn attach(program: &'static str, error: &dyn std::error::Error) -> Self {
        Self::Attach {
            program,
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

    /// Whether the pin directory holds a probe of another layout.
    pub fn is_incompatible_pins(&self) -> bool {
        matches!(self, Self::Pins(PinError::Incompatible { .. }))
    }

    /// Whether the pin directory is not usable as configured (not on a BPF filesystem, or
    /// held by another agent).
    pub fn is_unusable_pin_dir(&self) -> bool {
        matches!(
            self,
            Self::Pins(PinError::NotBpffs { .. } | PinError::Busy { .. })
        )
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
    /// Where the probe is pinned, to outlive the agent (`--bpf-pin-dir`).
    pub pin_dir: Option<PathBuf>,
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
            pin_dir: None,
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
    /// With a pin directory: what was adopted from the previous agent and left for the next.
    pub pins: Option<PinFigures>,
}

/// What a pinned probe handed from one agent to the next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PinFigures {
    /// The generation this agent took over from (0: the directory held no probe).
    pub previous_generation: u64,
    /// Records waiting in the pinned ring buffer when this agent took over.
    pub adopted_records: u64,
    /// Sessions open in the pinned socket map when this agent took over.
    pub adopted_open: u64,
    /// Records left in the ring buffer for the next agent (known once the agent has stopped
    /// reading).
    pub left_records: Option<u64>,
    /// Sessions open in the socket map when the agent stopped (the probe keeps running:
    /// a reading at that moment).
    pub left_open: Option<u64>,
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

/// The probe pinned in a directory, taken over from the previous agent.
struct Pinned {
    /// Locked while this agent runs.
    _dir: PinDir,
    /// The counters when this agent took over: its figures are relative to them.
    baseline: [u64; counter::COUNT as usize],
    /// Records the agents before this one had read from the ring buffer.
    consumed_before: u64,
    /// Where the reader records what it read, for the next agent (until taken).
    consumption: Option<pins::Consumption>,
    /// The counters when the agent stopped reading (see [`Probe::leave`]).
    left: Option<[u64; counter::COUNT as usize]>,
    figures: PinFigures,
}

/// The attached probe.
pub struct Probe {
    /// The programs and maps; `None` once detached.
    ebpf: Option<Ebpf>,
    programs: Vec<AttachedProgram>,
    counters: PerCpuArray<MapData, u64>,
    pinned: Option<Pinned>,
    /// Entries left in the socket map at detach.
    open_at_detach: Option<u64>,
    pub features: Features,
    /// How the state-change program is attached.
    pub state_probe: StateProbe,
}

impl Probe {
    /// Loads and attaches the probe; with a pin directory, takes over the probe pinned
    /// there, if any.
    pub fn attach(options: &ProbeOptions) -> Result<Self, ProbeError> {
        privileges::check()?;
        let pin_dir = options.pin_dir.as_deref().map(PinDir::open).transpose()?;
        let previous = pin_dir
            .as_ref()
            .map(PinDir::previous)
            .transpose()?
            .flatten();
        let options = match (&pin_dir, &previous) {
            (Some(dir), Some(previous)) => keep_pinned_choices(options, dir, previous),
            _ => options.clone(),
        };
        // The next generation; links a failed start left under that name are inert (their
        // generation never became active).
        let generation = previous.map_or(0, |previous| previous.active) + 1;
        if let Some(dir) = &pin_dir {
            dir.unpin_generation(generation);
        }
        let result = Self::load_and_attach(&options, pin_dir.as_ref().map(|dir| (dir, generation)));
        let Some(dir) = pin_dir else {
            return result;
        };
        let mut probe = match result {
            Ok(probe) => probe,
            Err(error) => {
                dir.unpin_generation(generation);
                return Err(error);
            }
        };
        if let Err(error) = dir.take_over(generation, previous.as_ref()) {
            dir.unpin_generation(generation);
            return Err(error.into());
        }
        let baseline = probe.raw_counters()?;
        let consumption = dir.consumption()?;
        let consumed_before = consumption.before();
        let figures = PinFigures {
            previous_generation: previous.map_or(0, |previous| previous.active),
            adopted_records: baseline[counter::EMITTED as usize].saturating_sub(consumed_before),
            adopted_open: probe.open_sockets().unwrap_or(0),
            left_records: None,
            left_open: None,
        };
        probe.pinned = Some(Pinned {
            _dir: dir,
            baseline,
            consumed_before,
            consumption: Some(consumption),
            left: None,
            figures,
        });
        Ok(probe)
    }

    fn load_and_attach(
        options: &ProbeOptions,
        pin: Option<(&PinDir, u64)>,
    ) -> Result<Self, ProbeError> {
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
        let mut loader = EbpfLoader::new();
        loader
            .override_global(KERNEL_OFFSETS, &kernel_offsets, true)
            .override_global(FILTERS, &options.filters, true)
            .override_global(REPORT_UNKNOWN_BIRTH, &report_unknown_birth, true)
            .override_global(RING_WAKEUP_BYTES, &ring_wakeup_bytes, true)
            .map_max_entries(SOCKETS_MAP, options.max_tracked_sockets)
            .map_max_entries(EVENTS_MAP, options.ring_buffer_bytes);
        if let Some((dir, generation)) = &pin {
            loader.override_global(GENERATION, generation, true);
            dir.share_maps(&mut loader);
        }
        let mut ebpf = loader
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
            StateProbe::Tracepoint => attach_tracepoint(
                &mut ebpf,
                &INET_SOCK_SET_STATE,
                ProgramRole::StateChange,
                pin,
            )?,
            StateProbe::RawTracepoint => attach_raw_tracepoint(
                &mut ebpf,
                INET_SOCK_SET_STATE_RAW,
                ProgramRole::StateChange,
                pin,
            )?,
        }];
        if state_probe == StateProbe::RawTracepoint {
            // After the primary: the kernel runs a tracepoint's programs in attach order.
            programs.push(attach_raw_tracepoint(
                &mut ebpf,
                INET_SOCK_SET_STATE_BACKUP,
                ProgramRole::StateChangeBackup,
                pin,
            )?);
        }
        let resets = attach_optional(
            &mut ebpf,
            &tracefs_path,
            &[TCP_RECEIVE_RESET],
            ProgramRole::ReceiveReset,
            "sessions will not say whether the peer reset them",
            &mut programs,
            pin,
        );
        let accept_owner = kernel_offsets.valid & offsets_valid::ACCEPT != 0
            && attach_optional(
                &mut ebpf,
                &tracefs_path,
                &[SYS_EXIT_ACCEPT, SYS_EXIT_ACCEPT4],
                ProgramRole::Accept,
                "server sessions reset before close will carry the task current at close as owner",
                &mut programs,
                pin,
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
            pinned: None,
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
    /// map's entries first, for [`KernelCounters::evicted`]. A pinned probe stays attached
    /// (its links are pinned): only this agent's handles are closed.
    pub fn detach(&mut self) {
        if self.pinned.is_some() {
            return;
        }
        if let Some(mut ebpf) = self.ebpf.take() {
            // Dropping the links first freezes the map before it is counted.
            let map = ebpf.take_map(SOCKETS_MAP);
            drop(ebpf);
            self.open_at_detach = map
                .and_then(|map| aya::maps::HashMap::<_, u64, SocketState>::try_from(map).ok())
                .map(|sockets| sockets.keys().filter(Result::is_ok).count() as u64);
        }
    }

    /// Each counter summed over the CPUs, as the kernel holds it now.
    fn raw_counters(&self) -> Result<[u64; counter::COUNT as usize], ProbeError> {
        let mut sums = [0; counter::COUNT as usize];
        for (index, sum) in (0..).zip(&mut sums) {
            let values = self
                .counters
                .get(&index, 0)
                .map_err(|error| ProbeError::map(COUNTERS_MAP, &error))?;
            *sum = values.iter().sum();
        }
        Ok(sums)
    }

    /// Entries of the socket map now (sessions open).
    fn open_sockets(&self) -> Option<u64> {
        let map = self.ebpf.as_ref()?.map(SOCKETS_MAP)?;
        let sockets = aya::maps::HashMap::<_, u64, SocketState>::try_from(map).ok()?;
        Some(sockets.keys().filter(Result::is_ok).count() as u64)
    }

    /// A pinned probe: where the reader records what it read (once; `None` unpinned).
    pub fn take_consumption(&mut self) -> Option<pins::Consumption> {
        self.pinned.as_mut()?.consumption.take()
    }

    /// A pinned probe, after the agent's last read of `records_read` records: freezes the
    /// figures of what it leaves (the probe runs on).
    pub fn leave(&mut self, records_read: u64) -> Result<(), ProbeError> {
        if self.pinned.is_none() {
            return Ok(());
        }
        let left_open = self.open_sockets();
        let raw = self.raw_counters()?;
        if let Some(pinned) = &mut self.pinned {
            let consumed = pinned.consumed_before + records_read;
            pinned.left = Some(raw);
            pinned.figures.left_records =
                Some(raw[counter::EMITTED as usize].saturating_sub(consumed));
            pinned.figures.left_open = left_open;
        }
        Ok(())
    }

    /// Reads the probe's counters (with a pin directory, since this agent took over, and
    /// frozen once it has left).
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let raw = match self.pinned.as_ref().and_then(|pinned| pinned.left) {
            Some(left) => left,
            None => self.raw_counters()?,
        };
        let sum = |index: u32| -> Result<u64, ProbeError> {
            let since = self
                .pinned
                .as_ref()
                .map_or(0, |pinned| pinned.baseline[index as usize]);
            Ok(raw[index as usize].saturating_sub(since))
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
            pins: self.pinned.as_ref().map(|pinned| pinned.figures),
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

/// `options` with what a pinned probe decided kept: the sizes of its maps, and how its
/// state-change program is attached (the kernel runs a classic and a raw tracepoint's
/// programs in no defined order, and the handover needs the old program to run first).
fn keep_pinned_choices(
    options: &ProbeOptions,
    dir: &PinDir,
    previous: &pins::Previous,
) -> ProbeOptions {
    let mut kept = options.clone();
    kept.max_tracked_sockets = previous.max_tracked_sockets;
    kept.ring_buffer_bytes = previous.ring_buffer_bytes;
    if dir.has_link(previous.active, INET_SOCK_SET_STATE_RAW) {
        kept.state_probe = StateProbe::RawTracepoint;
    } else if dir.has_link(previous.active, INET_SOCK_SET_STATE.name) {
        kept.state_probe = StateProbe::Tracepoint;
    }
    if (
        kept.max_tracked_sockets,
        kept.ring_buffer_bytes,
        kept.state_probe,
    ) != (
        options.max_tracked_sockets,
        options.ring_buffer_bytes,
        options.state_probe,
    ) {
        tracing::warn!(
            max_tracked_sockets = kept.max_tracked_sockets,
            ring_buffer_bytes = kept.ring_buffer_bytes,
            attach = kept.state_probe.name(),
            "keeping the map sizes and the attach type of the pinned probe; to change them, run `otel-agent detach --bpf-pin-dir DIR` first"
        );
    }
    kept
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    tracepoint: &Tracepoint,
    role: ProgramRole,
    pin: Option<(&PinDir, u64)>,
) -> Result<AttachedProgram, ProbeError> {
    let program: &mut TracePoint = ebpf
        .program_mut(tracepoint.name)
        .ok_or(ProbeError::MissingObject(tracepoint.name))?
        .try_into()
        .map_err(|error| ProbeError::load_program(tracepoint.name, &error))?;
    program
        .load()
        .map_err(|error| ProbeError::load_program(tracepoint.name, &error))?;
    let link = program
        .attach(tracepoint.category, tracepoint.name)
        .map_err(|error| ProbeError::attach(tracepoint.name, &error))?;
    if let Some((dir, generation)) = pin {
        let link = program
            .take_link(link)
            .map_err(|error| ProbeError::attach(tracepoint.name, &error))?;
        let link =
            FdLink::try_from(link).map_err(|error| ProbeError::attach(tracepoint.name, &error))?;
        dir.pin_link(generation, tracepoint.name, link)?;
    }
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
    pin: Option<(&PinDir, u64)>,
) -> Result<AttachedProgram, ProbeError> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingObject(name))?
        .try_into()
        .map_err(|error| ProbeError::load_program(name, &error))?;
    program
        .load()
        .map_err(|error| ProbeError::load_program(name, &error))?;
    let link = program
        .attach(INET_SOCK_SET_STATE.name)
        .map_err(|error| ProbeError::attach(name, &error))?;
    if let Some((dir, generation)) = pin {
        let link = program
            .take_link(link)
            .map_err(|error| ProbeError::attach(name, &error))?;
        dir.pin_link(generation, name, FdLink::from(link))?;
    }
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
    pin: Option<(&PinDir, u64)>,
) -> bool {
    tracepoints.iter().all(|tracepoint| {
        tracefs::check_layout(tracefs_path, tracepoint)
            .map_err(ProbeError::from)
            .and_then(|()| attach_tracepoint(ebpf, tracepoint, role, pin))
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
