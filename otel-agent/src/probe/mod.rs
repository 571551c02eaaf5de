//! Loads the eBPF probe into the running kernel and attaches it to
//! `sock:inet_sock_set_state`: checks privileges, makes sure tracefs is there, resolves
//! `struct tcp_sock` offsets from the kernel's BTF and sets them as globals. Dropping the
//! [`Probe`] detaches it.

pub mod btf;
pub mod privileges;
pub mod tracefs;

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use common::{
    COUNTERS_MAP, EVENTS_MAP, TCP_SOCK_BYTES_ACKED_OFFSET, TCP_SOCK_BYTES_RECEIVED_OFFSET, counter,
};

use self::btf::{Btf, BtfError};

/// The probe object built by `build.rs`.
static PROBE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/otel-agent"));

const PROGRAM: &str = "inet_sock_set_state";

/// Why the probe could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Privileges(#[from] privileges::MissingPrivileges),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("the kernel refused the probe: {0}")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot attach the probe to sock:inet_sock_set_state: {0}")]
    Attach(#[source] aya::programs::ProgramError),
    #[error("the probe object has no `{0}`; rebuild otel-agent")]
    MissingObject(&'static str),
}

impl ProbeError {
    /// Whether the cause is the kernel lacking a feature (rather than privileges or a bug).
    pub fn is_missing_kernel_feature(&self) -> bool {
        matches!(
            self,
            Self::Tracefs(
                tracefs::TracefsError::TracepointMissing { .. }
                    | tracefs::TracefsError::Layout { .. }
            )
        )
    }
}

/// Offsets in `struct tcp_sock` the probe reads at close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSockOffsets {
    pub bytes_acked: u32,
    pub bytes_received: u32,
}

impl TcpSockOffsets {
    /// Resolves the offsets from a BTF file (normally [`btf::VMLINUX_BTF`]).
    pub fn from_btf(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file(path)?;
        let offset = |member: &str| -> Result<u32, BtfError> {
            let found = btf.member("tcp_sock", member)?;
            if found.size != 8 {
                return Err(BtfError::Malformed(
                    "tcp_sock byte counter is not 64 bits wide",
                ));
            }
            Ok(found.offset)
        };
        Ok(Self {
            bytes_acked: offset("bytes_acked")?,
            bytes_received: offset("bytes_received")?,
        })
    }
}

/// Loss counters kept by the probe, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ring_buffer_full: u64,
    pub birth_map_update_failed: u64,
    pub owner_map_update_failed: u64,
}

/// The attached probe.
pub struct Probe {
    ebpf: Ebpf,
    /// Whether the probe reads `tcp_sock` byte counters.
    pub reads_bytes: bool,
}

impl Probe {
    /// Loads and attaches the probe.
    pub fn attach() -> Result<Self, ProbeError> {
        privileges::check()?;
        let (tracefs_path, mounted) = tracefs::ensure_mounted()?;
        if mounted {
            tracing::info!(path = %tracefs_path.display(), "mounted tracefs, which was not mounted");
        }
        tracefs::check_layout(&tracefs_path)?;

        let offsets = match TcpSockOffsets::from_btf(Path::new(btf::VMLINUX_BTF)) {
            Ok(offsets) => Some(offsets),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "sessions will have no byte counts: the kernel's BTF does not give struct tcp_sock's layout"
                );
                None
            }
        };
        let (acked, received) = offsets.map_or((0, 0), |o| (o.bytes_acked, o.bytes_received));
        let mut ebpf = EbpfLoader::new()
            .override_global(TCP_SOCK_BYTES_ACKED_OFFSET, &acked, true)
            .override_global(TCP_SOCK_BYTES_RECEIVED_OFFSET, &received, true)
            .load(PROBE_OBJECT)
            .map_err(|error| ProbeError::Load(Box::new(error)))?;
        let program: &mut TracePoint = ebpf
            .program_mut(PROGRAM)
            .ok_or(ProbeError::MissingObject(PROGRAM))?
            .try_into()
            .map_err(|error| ProbeError::Load(Box::new(error)))?;
        program
            .load()
            .map_err(|error| ProbeError::Load(Box::new(error)))?;
        program
            .attach("sock", "inet_sock_set_state")
            .map_err(ProbeError::Attach)?;
        Ok(Self {
            ebpf,
            reads_bytes: offsets.is_some(),
        })
    }

    /// Takes the ring buffer of session records (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or(ProbeError::MissingObject(EVENTS_MAP))?;
        RingBuf::try_from(map).map_err(|error| ProbeError::Load(Box::new(error)))
    }

    /// Reads the probe's loss counters.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let map = self
            .ebpf
            .map(COUNTERS_MAP)
            .ok_or(ProbeError::MissingObject(COUNTERS_MAP))?;
        let counters = PerCpuArray::<_, u64>::try_from(map)
            .map_err(|error| ProbeError::Load(Box::new(error)))?;
        let sum = |index: u32| -> u64 {
            counters
                .get(&index, 0)
                .map_or(0, |values| values.iter().sum())
        };
        Ok(KernelCounters {
            ring_buffer_full: sum(counter::RING_BUFFER_FULL),
            birth_map_update_failed: sum(counter::BIRTH_MAP_UPDATE_FAILED),
            owner_map_update_failed: sum(counter::OWNER_MAP_UPDATE_FAILED),
        })
    }
}
