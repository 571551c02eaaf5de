//! The pin directory of `--bpf-pin-dir`: the probe's shared maps (open sockets, ring
//! buffer, counters, the handover's `CONTROL` and `HANDOFF`) and the links of its programs,
//! pinned on a BPF filesystem so that the probe keeps running between two agents.
//!
//! Every start is a handover, to the same version or a new one: the agent checks that the
//! pinned maps have the layout it expects ([`PIN_LAYOUT_VERSION`] and each map's type and
//! sizes, as the kernel reports them: aya reuses a pin without checking it), loads its own
//! programs on the pinned maps with the next generation, attaches and pins them, then takes
//! over: `RETIRING` = the running generation, `ACTIVE` = its own, unpins the old links,
//! `RETIRING` = 0, each step followed by a grace period (the eBPF side, `generation.rs`,
//! says why no close is handled twice or missed). One agent at a time: the directory is
//! locked (`flock`) while an agent or `detach` uses it.

use std::{
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::DirBuilderExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    EbpfLoader,
    maps::{Array, MapData, MapType, PerCpuArray, PerCpuValues},
    programs::links::FdLink,
};
use common::{
    CONTROL_MAP, COUNTERS_MAP, EVENTS_MAP, HANDOFF_MAP, HANDOFF_SLOTS, PIN_LAYOUT_VERSION,
    SOCKETS_MAP, SocketState, control, counter,
};

use crate::log_text::{Escaped, with_causes};

/// Where the agent mounts a BPF filesystem when the pin directory is under it and none is
/// mounted (as Cilium does).
const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// How long a new agent waits for the one still holding the directory to stop.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// The prefix of a link pin: `link-<generation>-<program>` (bpffs refuses names with a dot,
/// `bpf_lookup` in kernel/bpf/inode.c).
const LINK_PREFIX: &str = "link-";

/// Why the pin directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "--bpf-pin-dir {path}: {reason}; mount one there (`mount -t bpf bpf {path}`), or choose a directory under a BPF filesystem such as /sys/fs/bpf"
    )]
    NotBpffs { path: String, reason: String },
    #[error("--bpf-pin-dir {path}: cannot {what}: {reason}")]
    Io {
        path: String,
        what: &'static str,
        reason: String,
    },
    #[error(
        "--bpf-pin-dir {path} is still used by another agent (or `otel-agent detach`) after {LOCK_WAIT:?}; stop it first, or give this agent another directory"
    )]
    Busy { path: String },
    #[error(
        "--bpf-pin-dir {path} holds a probe this agent cannot take over: {reason}; remove it with `otel-agent detach --bpf-pin-dir {path}` (which discards the records it holds) and start again"
    )]
    Incompatible { path: String, reason: String },
}

impl PinError {
    fn io(path: &Path, what: &'static str, error: &dyn std::error::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            what,
            reason: with_causes(error),
        }
    }

    fn incompatible(path: &Path, reason: String) -> Self {
        Self::Incompatible {
            path: path.display().to_string(),
            reason,
        }
    }
}

/// A map shared through a pin, as the kernel must report it.
struct Shared {
    name: &'static str,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    /// `None` when the size is chosen at load time (the first agent's choice holds).
    max_entries: Option<u32>,
}

/// The pinned maps, in the order they are checked.
const SHARED: [Shared; 5] = [
    Shared {
        name: CONTROL_MAP,
        map_type: MapType::Array,
        key_size: 4,
        value_size: 8,
        max_entries: Some(control::COUNT),
    },
    Shared {
        name: COUNTERS_MAP,
        map_type: MapType::PerCpuArray,
        key_size: 4,
        value_size: 8,
        max_entries: Some(counter::COUNT),
    },
    Shared {
        name: SOCKETS_MAP,
        map_type: MapType::LruHash,
        key_size: 8,
        value_size: size_of::<SocketState>() as u32,
        max_entries: None,
    },
    Shared {
        name: EVENTS_MAP,
        map_type: MapType::RingBuf,
        key_size: 0,
        value_size: 0,
        max_entries: None,
    },
    Shared {
        name: HANDOFF_MAP,
        map_type: MapType::PerCpuArray,
        key_size: 4,
        value_size: (HANDOFF_SLOTS * 8) as u32,
        max_entries: Some(1),
    },
];

/// What a previous agent left in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Previous {
    /// The generation handling hits now (0: none attached).
    pub active: u64,
    /// Entries of the socket map and bytes of the ring buffer, which this agent keeps.
    pub max_tracked_sockets: u32,
    pub ring_buffer_bytes: u32,
}

/// The pin directory, locked for this process.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    /// Holds the `flock` until dropped.
    _lock: fs::File,
}

impl PinDir {
    /// Makes sure `path` is a directory on a BPF filesystem (mounting one at /sys/fs/bpf
    /// when `path` is under it and nothing is mounted there), creates it (mode 0700) and
    /// locks it, waiting up to [`LOCK_WAIT`] for another agent to stop.
    pub fn open(path: &Path) -> Result<Self, PinError> {
        let path = std::path::absolute(path)
            .map_err(|error| PinError::io(path, "resolve the path", &error))?;
        mount_if_missing(&path)?;
        // The directory itself (it may be where a BPF filesystem is mounted), or where it
        // will be created.
        let checked = if path.is_dir() {
            &path
        } else {
            path.parent().unwrap_or(&path)
        };
        if !is_bpffs(checked)? {
            return Err(PinError::NotBpffs {
                path: path.display().to_string(),
                reason: format!("{} is not on a BPF filesystem", checked.display()),
            });
        }
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(PinError::io(&path, "create the directory", &error)),
        }
        let lock = lock(&path)?;
        Ok(Self { path, _lock: lock })
    }

    /// Opens `path` for `detach`: `None` when there is nothing to detach (no directory).
    pub fn open_existing(path: &Path) -> Result<Option<Self>, PinError> {
        if !path.is_dir() {
            return Ok(None);
        }
        if !is_bpffs(path)? {
            return Err(PinError::NotBpffs {
                path: path.display().to_string(),
                reason: "it is not on a BPF filesystem, so nothing is pinned there".to_owned(),
            });
        }
        Ok(Some(Self {
            path: path.to_owned(),
            _lock: lock(path)?,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn pin_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// What a previous agent left, checked against this agent's layout; `None` for an empty
    /// directory.
    pub fn previous(&self) -> Result<Option<Previous>, PinError> {
        if !SHARED.iter().any(|map| self.pin_path(map.name).exists()) {
            return Ok(None);
        }
        // The version first (`CONTROL` comes first in `SHARED`): a new layout may also
        // change a map, and the version says more.
        self.check(&SHARED[0])?;
        let control = self.control()?;
        let get = |index| {
            control
                .get(&index, 0)
                .map_err(|error| PinError::io(&self.path, "read the pinned CONTROL map", &error))
        };
        let layout = get(control::LAYOUT)?;
        let active = get(control::ACTIVE)?;
        // Layout 0 and no generation active: the maps of a first start that failed before
        // it took over; nothing was written into them.
        let aborted_first_start = layout == 0 && active == 0;
        if layout != PIN_LAYOUT_VERSION && !aborted_first_start {
            return Err(PinError::incompatible(
                &self.path,
                format!(
                    "its record layout is version {layout}, this agent's is {PIN_LAYOUT_VERSION}"
                ),
            ));
        }
        let mut previous = Previous {
            active,
            max_tracked_sockets: 0,
            ring_buffer_bytes: 0,
        };
        for map in &SHARED[1..] {
            let entries = self.check(map)?;
            match map.name {
                SOCKETS_MAP => previous.max_tracked_sockets = entries,
                EVENTS_MAP => previous.ring_buffer_bytes = entries,
                _ => {}
            }
        }
        Ok(Some(previous))
    }

    /// The pinned map's `max_entries`, after checking its type and sizes.
    fn check(&self, map: &Shared) -> Result<u32, PinError> {
        let path = self.pin_path(map.name);
        let data = MapData::from_pin(&path).map_err(|error| {
            PinError::incompatible(
                &self.path,
                format!(
                    "the map {} cannot be opened: {}",
                    map.name,
                    with_causes(&error)
                ),
            )
        })?;
        let info = data
            .info()
            .map_err(|error| PinError::io(&path, "read the map's kernel information", &error))?;
        let found = (
            info.map_type().ok(),
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        let expected = (
            Some(map.map_type),
            map.key_size,
            map.value_size,
            map.max_entries.unwrap_or(found.3),
        );
        if found != expected {
            let describe = |(map_type, key, value, entries): (Option<MapType>, u32, u32, u32)| {
                let map_type =
                    map_type.map_or_else(|| "of an unknown type".to_owned(), |t| format!("{t:?}"));
                format!("{map_type} (keys {key} bytes, values {value} bytes, {entries} entries)")
            };
            return Err(PinError::incompatible(
                &self.path,
                format!(
                    "the map {} is {}, this agent's is {}",
                    map.name,
                    describe(found),
                    describe(expected)
                ),
            ));
        }
        Ok(found.3)
    }

    fn control(&self) -> Result<Array<MapData, u64>, PinError> {
        let path = self.pin_path(CONTROL_MAP);
        let data = MapData::from_pin(&path)
            .map_err(|error| PinError::io(&path, "open the pinned CONTROL map", &error))?;
        Array::try_from(aya::maps::Map::Array(data))
            .map_err(|error| PinError::io(&path, "open the pinned CONTROL map", &error))
    }

    /// Has the loader reuse (or create and pin) every shared map.
    pub fn share_maps(&self, loader: &mut EbpfLoader<'_>) {
        for map in &SHARED {
            loader.map_pin_path(map.name, self.pin_path(map.name));
        }
    }

    /// Pins `link`, of this agent's program `program` in generation `generation`.
    pub fn pin_link(&self, generation: u64, program: &str, link: FdLink) -> Result<(), PinError> {
        let path = self.link_path(generation, program);
        link.pin(&path)
            .map(drop)
            .map_err(|error| PinError::io(&path, "pin a link", &error))
    }

    fn link_path(&self, generation: u64, program: &str) -> PathBuf {
        self.pin_path(&format!("{LINK_PREFIX}{generation}-{program}"))
    }

    /// Whether generation `generation` pinned a link of its program `program`.
    pub fn has_link(&self, generation: u64, program: &str) -> bool {
        self.link_path(generation, program).exists()
    }

    /// The link pins of every generation but `keep` (a crashed agent may have left more than
    /// one).
    fn links_except(&self, keep: Option<u64>) -> Result<Vec<PathBuf>, PinError> {
        let keep = keep.map(|generation| format!("{LINK_PREFIX}{generation}-"));
        let entries = fs::read_dir(&self.path)
            .map_err(|error| PinError::io(&self.path, "list the directory", &error))?;
        Ok(entries
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(LINK_PREFIX))
            .filter(|name| keep.as_ref().is_none_or(|keep| !name.starts_with(keep)))
            .map(|name| self.pin_path(&name))
            .collect())
    }

    /// Removes the link pins of generation `generation` (an attach that failed half-way).
    pub fn unpin_generation(&self, generation: u64) {
        let prefix = format!("{LINK_PREFIX}{generation}-");
        if let Ok(entries) = fs::read_dir(&self.path) {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Hands the probe over from `previous` (if any) to `generation`, whose programs are
    /// attached and pinned, and detaches every older link.
    pub fn take_over(&self, generation: u64, previous: Option<&Previous>) -> Result<(), PinError> {
        let mut control = self.control()?;
        let mut set = |index: u32, value: u64| {
            control
                .set(index, value, 0)
                .map_err(|error| PinError::io(&self.path, "update the pinned CONTROL map", &error))
        };
        set(control::LAYOUT, PIN_LAYOUT_VERSION)?;
        let retiring = previous.map_or(0, |previous| previous.active);
        if retiring != 0 {
            self.clear_handoff()?;
            set(control::RETIRING, retiring)?;
            grace_period();
        }
        set(control::ACTIVE, generation)?;
        grace_period();
        for link in self.links_except(Some(generation))? {
            fs::remove_file(&link).map_err(|error| PinError::io(&link, "unpin a link", &error))?;
        }
        if retiring != 0 {
            grace_period();
            set(control::RETIRING, 0)?;
            grace_period();
            self.clear_handoff()?;
        }
        Ok(())
    }

    /// Empties every CPU's handover slots.
    fn clear_handoff(&self) -> Result<(), PinError> {
        let path = self.pin_path(HANDOFF_MAP);
        let fail =
            |error: &dyn std::error::Error| PinError::io(&path, "clear the HANDOFF map", error);
        let data = MapData::from_pin(&path).map_err(|error| fail(&error))?;
        let mut map: PerCpuArray<MapData, [u64; HANDOFF_SLOTS]> =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
                .map_err(|error| fail(&error))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| fail(&error))?;
        let zeros =
            PerCpuValues::try_from(vec![[0; HANDOFF_SLOTS]; cpus]).map_err(|error| fail(&error))?;
        map.set(0, zeros, 0).map_err(|error| fail(&error))
    }

    /// The count of records read, through the pinned `CONTROL` map kept open (reopening it
    /// needs privileges the agent drops once attached).
    pub fn consumption(&self) -> Result<Consumption, PinError> {
        let control = self.control()?;
        let before = control
            .get(&control::CONSUMED, 0)
            .map_err(|error| PinError::io(&self.path, "read the pinned CONTROL map", &error))?;
        Ok(Consumption {
            control,
            path: self.path.clone(),
            before,
            recorded: 0,
        })
    }

    /// Removes every pin this agent knows (which detaches the programs: nothing else holds
    /// their links once the agent has stopped), then the directory if nothing else is in it.
    pub fn detach(self) -> Result<Detached, PinError> {
        let pending = self.pending().ok();
        let links = self.links_except(None)?;
        for link in &links {
            fs::remove_file(link).map_err(|error| PinError::io(link, "unpin a link", &error))?;
        }
        let mut maps = 0;
        for map in &SHARED {
            let path = self.pin_path(map.name);
            match fs::remove_file(&path) {
                Ok(()) => maps += 1,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(PinError::io(&path, "unpin a map", &error)),
            }
        }
        let left: Vec<String> = fs::read_dir(&self.path)
            .map_err(|error| PinError::io(&self.path, "list the directory", &error))?
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        if left.is_empty() {
            fs::remove_dir(&self.path)
                .map_err(|error| PinError::io(&self.path, "remove the directory", &error))?;
        }
        Ok(Detached {
            links: links.len(),
            maps,
            pending,
            left,
        })
    }

    /// Records waiting in the pinned ring buffer: emitted by the probe, not yet read.
    fn pending(&self) -> Result<u64, PinError> {
        let path = self.pin_path(COUNTERS_MAP);
        let fail = |error: &dyn std::error::Error| PinError::io(&path, "read the counters", error);
        let data = MapData::from_pin(&path).map_err(|error| fail(&error))?;
        let counters: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
                .map_err(|error| fail(&error))?;
        let emitted: u64 = counters
            .get(&counter::EMITTED, 0)
            .map_err(|error| fail(&error))?
            .iter()
            .sum();
        Ok(emitted.saturating_sub(self.consumption()?.before))
    }
}

/// The count of records the agents have read from the pinned ring buffer, over every agent
/// (`CONTROL[CONSUMED]`): the kernel's `EMITTED` counter less it is what waits there. The
/// reader updates it after each read, so that even an agent killed without a shutdown
/// leaves it behind by one read at most.
pub struct Consumption {
    control: Array<MapData, u64>,
    path: PathBuf,
    /// What the agents before this one had read.
    before: u64,
    /// What this agent last recorded.
    recorded: u64,
}

impl Consumption {
    /// What the agents before this one had read.
    pub fn before(&self) -> u64 {
        self.before
    }

    /// Records that this agent has read `read` records (a map update only when it read
    /// more since the last).
    pub fn record(&mut self, read: u64) -> Result<(), PinError> {
        if read == self.recorded {
            return Ok(());
        }
        self.control
            .set(control::CONSUMED, self.before + read, 0)
            .map_err(|error| PinError::io(&self.path, "update the pinned CONTROL map", &error))?;
        self.recorded = read;
        Ok(())
    }
}

/// `otel-agent detach`: detaches the probe pinned in `path` and removes every pin, saying
/// what it removed; nothing pinned there is not an error.
pub fn detach(path: &Path) -> Result<(), PinError> {
    let shown = path.display().to_string();
    let Some(dir) = PinDir::open_existing(path)? else {
        tracing::info!(dir = %Escaped(&shown), "nothing to detach: the directory does not exist");
        return Ok(());
    };
    let detached = dir.detach()?;
    if detached.links == 0 && detached.maps == 0 {
        tracing::info!(dir = %Escaped(&shown), "nothing to detach: nothing of the agent's is pinned there");
    } else {
        tracing::info!(
            dir = %Escaped(&shown),
            links = detached.links,
            maps = detached.maps,
            discarded_records = detached.pending,
            "detached the pinned probe and removed its pins"
        );
    }
    if !detached.left.is_empty() {
        tracing::warn!(
            dir = %Escaped(&shown),
            entries = %Escaped(&detached.left.join(", ")),
            "left in place what the agent did not pin there, and the directory with it"
        );
    }
    Ok(())
}

/// What `detach` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    pub links: usize,
    pub maps: usize,
    /// Records that were waiting in the ring buffer (discarded), when known.
    pub pending: Option<u64>,
    /// Entries of the directory that are not the agent's, left in place.
    pub left: Vec<String>,
}

/// Waits until every BPF program running when it was called has returned: the programs
/// run with preemption disabled, an RCU read-side section, and `membarrier`'s
/// `MEMBARRIER_CMD_GLOBAL` returns after `synchronize_rcu()` (kernel/sched/membarrier.c).
/// Where it is refused (`nohz_full`), a pause far longer than any program runs.
fn grace_period() {
    /// `MEMBARRIER_CMD_GLOBAL` (include/uapi/linux/membarrier.h).
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier takes two integers (command, flags) and a cpu id, reads no memory.
    let result = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if result != 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `path` is on a BPF filesystem (`statfs` magic `BPF_FS_MAGIC`).
fn is_bpffs(path: &Path) -> Result<bool, PinError> {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return Err(PinError::NotBpffs {
            path: path.display().to_string(),
            reason: "the path holds a NUL byte".to_owned(),
        });
    };
    // SAFETY: an all-zero statfs is valid (integers only).
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs the call fills.
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) } != 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::NotFound {
            return Ok(false);
        }
        return Err(PinError::io(path, "check its filesystem", &error));
    }
    Ok(stat.f_type == libc::BPF_FS_MAGIC)
}

/// Mounts a BPF filesystem at /sys/fs/bpf when `path` is under it and none is mounted
/// there; leaves any other path alone.
fn mount_if_missing(path: &Path) -> Result<(), PinError> {
    let root = Path::new(BPFFS_ROOT);
    if !path.starts_with(root) || is_bpffs(root)? {
        return Ok(());
    }
    // SAFETY: NUL-terminated strings; no data argument.
    let result = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        let error = io::Error::last_os_error();
        return Err(PinError::NotBpffs {
            path: path.display().to_string(),
            reason: format!(
                "{BPFFS_ROOT} is not a BPF filesystem and mounting one failed: {error}"
            ),
        });
    }
    tracing::info!(
        path = BPFFS_ROOT,
        "mounted a BPF filesystem, which was not mounted (in a container, it lasts only as long as the container unless /sys/fs/bpf is a host path with bidirectional mount propagation: docs/DEPLOY.md)"
    );
    Ok(())
}

/// Takes the directory's `flock`, waiting up to [`LOCK_WAIT`] for its holder to stop.
fn lock(path: &Path) -> Result<fs::File, PinError> {
    let dir =
        fs::File::open(path).map_err(|error| PinError::io(path, "open the directory", &error))?;
    let started = Instant::now();
    let mut logged = false;
    loop {
        // SAFETY: a descriptor this function owns.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(dir);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(PinError::io(path, "lock the directory", &error));
        }
        if started.elapsed() >= LOCK_WAIT {
            return Err(PinError::Busy {
                path: path.display().to_string(),
            });
        }
        if !logged {
            tracing::info!(
                dir = %Escaped(&path.display().to_string()),
                "waiting for the agent that uses the pin directory to stop"
            );
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_version_moves_with_the_pinned_layouts() {
        // A change to what a pinned probe hands over must bump PIN_LAYOUT_VERSION; the sizes
        // here are the layouts of version 2 (issue 14 added the cgroup id and the
        // executable's name to both).
        assert_eq!(
            (
                PIN_LAYOUT_VERSION,
                size_of::<common::SessionRecord>(),
                size_of::<common::SocketState>()
            ),
            (2, 200, 104),
            "the pinned layouts changed: bump PIN_LAYOUT_VERSION and update this test"
        );
    }

    #[test]
    fn each_refusal_names_the_directory_and_what_to_do() {
        let dir = Path::new("/sys/fs/bpf/otel-agent");
        assert_eq!(
            PinError::incompatible(
                dir,
                "its record layout is version 2, this agent's is 1".into()
            )
            .to_string(),
            "--bpf-pin-dir /sys/fs/bpf/otel-agent holds a probe this agent cannot take over: its record layout is version 2, this agent's is 1; remove it with `otel-agent detach --bpf-pin-dir /sys/fs/bpf/otel-agent` (which discards the records it holds) and start again"
        );
        assert_eq!(
            PinError::Busy {
                path: dir.display().to_string()
            }
            .to_string(),
            "--bpf-pin-dir /sys/fs/bpf/otel-agent is still used by another agent (or `otel-agent detach`) after 30s; stop it first, or give this agent another directory"
        );
    }

    #[test]
    fn a_directory_elsewhere_than_on_bpffs_is_refused_before_it_is_created() {
        let dir = std::env::temp_dir().join(format!("otel-agent-pins-{}", std::process::id()));
        let error = PinDir::open(&dir.join("pins")).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "--bpf-pin-dir {pins}: {parent} is not on a BPF filesystem; mount one there (`mount -t bpf bpf {pins}`), or choose a directory under a BPF filesystem such as /sys/fs/bpf",
                pins = dir.join("pins").display(),
                parent = dir.display(),
            )
        );
        assert!(!dir.join("pins").exists());
        // Nothing to detach where no directory is.
        assert!(PinDir::open_existing(&dir.join("pins")).unwrap().is_none());
    }
}
