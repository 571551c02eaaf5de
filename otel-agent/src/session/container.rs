//! Container ids (`container.id` in the OpenTelemetry semantic conventions) in cgroup
//! paths: in one directory name ([`container_id_from_segment`], what `crate::cgroup` names
//! each directory of the cgroup2 hierarchy after), and in the text of `/proc/<pid>/cgroup`,
//! cached per pid in a bounded cache: the fallback for owners in the cgroup v2 root (a
//! cgroup v1-only or hybrid host), read at report time, so only while the owner lives. A
//! process outside any container (a host process) has none.
//!
//! The file has one line per cgroup hierarchy, `hierarchy-ID:controller-list:cgroup-path`
//! (`proc(7)`, "/proc/pid/cgroup"); cgroup v2 has the single line `0::/path`. Container
//! runtimes name the cgroup of a container after its 64-hex-digit id:
//!
//! | runtime | cgroup path ends with |
//! |---|---|
//! | Docker, systemd driver | `docker-<id>.scope` |
//! | Docker, cgroupfs driver (v1) | `/docker/<id>` |
//! | containerd CRI (Kubernetes), systemd driver | `cri-containerd-<id>.scope` |
//! | containerd CRI, systemd cgroup paths without the systemd driver | `<pod slice>:cri-containerd:<id>` |
//! | CRI-O, systemd driver | `crio-<id>.scope` |
//! | Kubernetes, cgroupfs driver | `/kubepods/<qos>/pod<uid>/<id>` |
//! | Podman | `libpod-<id>.scope` (optionally followed by `/container`) |
//!
//! Paths are relative to the cgroup namespace of the process that reads the file, so inside
//! a container with its own cgroup namespace they start with `/..` segments; the id is
//! found all the same. The monitors that runtimes run next to a container
//! (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`) are host processes and get none.
//!
//! The pids the probe reports are thread-group ids in the initial pid namespace, so the
//! cache is only meaningful where `/proc` shows that namespace (on the host, or in a
//! container run with `hostPID`/`pid: host`): see [`proc_shows_host_pids`].

use std::{
    collections::{HashMap, VecDeque},
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

/// Length of a container id: 32 bytes written as lowercase hex.
const CONTAINER_ID_LEN: usize = 64;

/// Prefixes that runtimes put before the id in a systemd scope name (`<prefix><id>.scope`)
/// or in a cgroupfs directory name (`crio-<id>`).
const RUNTIME_PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "crio-", "libpod-"];

/// Suffix the kernel appends to the path of a cgroup that was removed while the process
/// was still in it (`proc_cgroup_show` in `kernel/cgroup/cgroup.c`), as happens to a
/// session that closes while its container is being torn down.
const DELETED_SUFFIX: &str = " (deleted)";

/// Inode number of the initial pid namespace (`PROC_PID_INIT_INO` in
/// `include/linux/proc_ns.h`), the namespace whose pids the probe reports.
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// The container id in the text of a `/proc/<pid>/cgroup` file, or `None` when the process
/// runs on the host (no line names a container).
///
/// Lines are tried in order and each path from its last segment to its first, so a nested
/// container (Docker in Docker) yields the innermost id.
pub fn container_id_from_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_hierarchy, _controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.strip_suffix(DELETED_SUFFIX).unwrap_or(path);
        path.rsplit('/').find_map(container_id_from_segment)
    })
}

/// The id named by one segment of a cgroup path (a directory name), if it names a
/// container.
pub fn container_id_from_segment(segment: &str) -> Option<&str> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    // `slice:runtime:id`, the form systemd-style paths take under the cgroupfs driver.
    let name = name.rsplit(':').next().unwrap_or(name);
    let id = RUNTIME_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    is_container_id(id).then_some(id)
}

/// Whether `text` is 64 lowercase hex digits, the form every runtime above uses.
fn is_container_id(text: &str) -> bool {
    text.len() == CONTAINER_ID_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether the `/proc` under `proc_root` shows the initial pid namespace, the namespace of
/// the pids the probe reports. When it does not (a container without `hostPID`), a pid from
/// the probe names an unrelated process or none there, so the cache must not be used.
pub fn proc_shows_host_pids(proc_root: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;

    // `/proc/self` resolves in the pid namespace of the procfs mount, and its `ns/pid`
    // link's inode is the namespace's inode number.
    let namespace = std::fs::metadata(proc_root.join("self/ns/pid"))?;
    Ok(namespace.ino() == PROC_PID_INIT_INO)
}

/// One cached answer: the id (or `None` for a host process) and when it was read.
#[derive(Debug, Clone)]
struct Entry {
    id: Option<Arc<str>>,
    read_at: Instant,
}

/// Container ids per pid, read from `<proc_root>/<pid>/cgroup` on first use.
///
/// Bounded: it holds at most `capacity` pids and forgets the oldest first, so it never grows
/// with the number of processes a host runs over time. An entry older than `max_age` is read
/// again, which bounds how long a reused pid can carry the container of its previous owner.
/// A pid whose file cannot be read (the process has exited) is not cached.
#[derive(Debug)]
pub struct ContainerIdCache {
    proc_root: PathBuf,
    capacity: usize,
    max_age: Duration,
    entries: HashMap<u32, Entry>,
    /// Pids in the order they were inserted, oldest first; each pid in `entries` appears
    /// exactly once.
    order: VecDeque<u32>,
}

impl ContainerIdCache {
    /// Pids cached by [`ContainerIdCache::new`].
    pub const DEFAULT_CAPACITY: usize = 4096;
    /// Age after which [`ContainerIdCache::new`] reads a pid's cgroup again.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);

    /// A cache over the host's `/proc` with the default bounds.
    pub fn new() -> Self {
        Self::with_proc_root("/proc", Self::DEFAULT_CAPACITY, Self::DEFAULT_MAX_AGE)
    }

    /// A cache over the procfs mounted at `proc_root`, holding at most `capacity` pids (at
    /// least one) for at most `max_age` each.
    pub fn with_proc_root(
        proc_root: impl Into<PathBuf>,
        capacity: usize,
        max_age: Duration,
    ) -> Self {
        let capacity = capacity.max(1);
        Self {
            proc_root: proc_root.into(),
            capacity,
            max_age,
            entries: HashMap::with_capacity(capacity.min(Self::DEFAULT_CAPACITY)),
            order: VecDeque::with_capacity(capacity.min(Self::DEFAULT_CAPACITY)),
        }
    }

    /// The container id of `pid`, or `None` for a host process or a process that is gone.
    pub fn container_id(&mut self, pid: u32) -> Option<Arc<str>> {
        if let Some(entry) = self.entries.get(&pid)
            && entry.read_at.elapsed() < self.max_age
        {
            return entry.id.clone();
        }
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let Ok(text) = std::fs::read_to_string(&path) else {
            self.forget(pid);
            return None;
        };
        let id = container_id_from_cgroup(&text).map(Arc::from);
        self.insert(pid, id.clone());
        id
    }

    /// How many pids the cache holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds no pid.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, pid: u32, id: Option<Arc<str>>) {
        let entry = Entry {
            id,
            read_at: Instant::now(),
        };
        if self.entries.insert(pid, entry).is_some() {
            // A refreshed pid keeps its place in `order`.
            return;
        }
        self.order.push_back(pid);
        while self.entries.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    fn forget(&mut self, pid: u32) {
        if self.entries.remove(&pid).is_some() {
            self.order.retain(|&cached| cached != pid);
        }
    }
}

impl Default for ContainerIdCache {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b1c2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
    const OTHER_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_systemd_driver_cgroup_v2() {
        let text = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id_from_cgroup(&text), Some(ID));
    }

    #[test]
    fn docker_cgroupfs_driver_cgroup_v1() {
        let text = format!(
            "12:pids:/docker/{ID}\n\
             11:memory:/docker/{ID}\n\
             1:name=systemd:/docker/{ID}\n\
             0::/system.slice/containerd.service\n"
        );
        assert_eq!(container_id_from_cgroup(&text), Some(ID));
    }

    #[test]
    fn containerd_cri_in_kubernetes_systemd_driver() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod8a4e6b0c_7d1f_4c2a_9b3e_5f6a7b8c9d0e.slice/\
             cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_id_from_cgroup(&text), Some(ID));
    }

    #[test]
    fn crio_in_kubernetes_systemd_driver() {
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod0b1c2d3e_4f5a_6b7c_8d9e_0f1a2b3c4d5e.slice/crio-{ID}.scope\n"
        );
        assert_eq!(container_id_from_cgroup(&text), Some(ID));
    }

    #[test]
    fn containerd_systemd_paths_without_the_systemd_driver() {
        let text = format!(
            "0::/kubepods-besteffort-pod0b1c2d3e_4f5a_6b7c_8d9e_0f1a2b3c4d5e.slice:cri-containerd:{ID}\n"
        );
        assert_eq!(container_id_from_cgroup(&text), Some(ID));
    }

    #[test]
    fn docker_under_kubernetes_with_cri_dockerd() {
        let text = format!(
            "0::/kubepods.slice/kubepods-pod0b1c2d3e_4f5a_6b7c_8d9e_0f1a2b3c4d5e.slice/docker-{ID}.scope\n"
        );
        assert_eq!(container_id_from_cgroup(&text), Some(ID));
    }

    #[test]
    fn kubepods_cgroupfs_driver_cgroup_v1() {
        let text = format!(
            "11:cpu,cpuacct:/kubepods/burstable/pod8a4e6b0c-7d1f-4c2a-9b3e-5f6a7b8c9d0e/{ID}\n"
        );
        assert_eq!(container_id_from_cgroup(&text), Some(ID));
    }

    #[test]
    fn crio_cgroupfs_driver() {
        let text =
            format!("0::/kubepods/besteffort/pod0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e/crio-{ID}\n");
        assert_eq!(container_id_from_cgroup(&text), Some(ID));
    }

    #[test]
    fn podman_scope_and_its_container_subgroup() {
        let scope = format!("0::/machine.slice/libpod-{ID}.scope\n");
        assert_eq!(container_id_from_cgroup(&scope), Some(ID));
        let nested = format!("0::/machine.slice/libpod-{ID}.scope/container\n");
        assert_eq!(container_id_from_cgroup(&nested), Some(ID));
    }

    #[test]
    fn path_relative_to_a_private_cgroup_namespace() {
        // What an agent in its own cgroup namespace reads for a container beside it.
        let text = format!("0::/../../kubepods-besteffort-pod1.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(container_id_from_cgroup(&text), Some(ID));
    }

    #[test]
    fn nested_container_yields_the_innermost_id() {
        let text = format!("0::/docker/{OTHER_ID}/docker/{ID}\n");
        assert_eq!(container_id_from_cgroup(&text), Some(ID));
    }

    #[test]
    fn removed_cgroup_still_names_its_container() {
        let text = format!("0::/system.slice/docker-{ID}.scope (deleted)\n");
        assert_eq!(container_id_from_cgroup(&text), Some(ID));
    }

    #[test]
    fn host_processes_have_none() {
        for text in [
            "0::/init.scope\n",
            "0::/system.slice/sshd.service\n",
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome.scope\n",
            "0::/\n",
            // cgroup v1 host process, as on this project's own machines.
            "9:name=systemd:/\n4:memory:/process_api/f4bdf924be1c46d9ff2f606a6053d770\n0::/\n",
            "",
        ] {
            assert_eq!(container_id_from_cgroup(text), None, "{text:?}");
        }
    }

    #[test]
    fn runtime_monitors_are_host_processes() {
        for text in [
            format!("0::/kubepods.slice/crio-conmon-{ID}.scope\n"),
            format!("0::/machine.slice/libpod-conmon-{ID}.scope\n"),
        ] {
            assert_eq!(container_id_from_cgroup(&text), None, "{text:?}");
        }
    }

    #[test]
    fn near_misses_are_not_ids() {
        let upper = ID.to_uppercase();
        let short = &ID[..63];
        for text in [
            format!("0::/system.slice/docker-{upper}.scope\n"),
            format!("0::/system.slice/docker-{short}.scope\n"),
            format!("0::/system.slice/docker-{ID}0.scope\n"),
            format!("0::/system.slice/unknown-{ID}.scope\n"),
            // Not a `hierarchy:controllers:path` line.
            format!("/docker/{ID}\n"),
        ] {
            assert_eq!(container_id_from_cgroup(&text), None, "{text:?}");
        }
    }

    #[test]
    fn host_pid_namespace_is_recognised_by_its_inode() {
        // The link reads `pid:[<inode>]`; the initial namespace is `pid:[4026531836]`.
        let link = std::fs::read_link("/proc/self/ns/pid").unwrap();
        let initial = link.as_os_str() == "pid:[4026531836]";
        assert_eq!(proc_shows_host_pids(Path::new("/proc")).unwrap(), initial);
    }

    #[test]
    fn host_pid_check_fails_without_procfs() {
        let proc = FakeProc::new("nsless");
        assert_eq!(
            proc_shows_host_pids(&proc.0).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn cache_reads_the_real_procfs() {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let expected = container_id_from_cgroup(&own).map(Arc::<str>::from);
        let mut cache = ContainerIdCache::new();
        assert_eq!(cache.container_id(std::process::id()), expected);
        assert_eq!(cache.len(), 1);
    }

    /// A fake procfs in a fresh directory, removed on drop.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(name: &str) -> Self {
            let root = std::env::temp_dir().join(format!(
                "otel-agent-container-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            Self(root)
        }

        fn write(&self, pid: u32, cgroup: &str) {
            let dir = self.0.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        }

        fn remove(&self, pid: u32) {
            std::fs::remove_dir_all(self.0.join(pid.to_string())).unwrap();
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn cache_reads_once_within_max_age() {
        let proc = FakeProc::new("once");
        proc.write(10, &format!("0::/system.slice/docker-{ID}.scope\n"));
        proc.write(11, "0::/system.slice/sshd.service\n");
        let mut cache = ContainerIdCache::with_proc_root(&proc.0, 8, Duration::from_secs(3600));

        assert_eq!(cache.container_id(10).as_deref(), Some(ID));
        assert_eq!(cache.container_id(11), None);
        // Changed on disk, but both answers (the id and "host") come from the cache.
        proc.write(10, &format!("0::/system.slice/docker-{OTHER_ID}.scope\n"));
        proc.write(11, &format!("0::/system.slice/docker-{OTHER_ID}.scope\n"));
        assert_eq!(cache.container_id(10).as_deref(), Some(ID));
        assert_eq!(cache.container_id(11), None);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn cache_rereads_after_max_age() {
        let proc = FakeProc::new("stale");
        proc.write(20, &format!("0::/system.slice/docker-{ID}.scope\n"));
        let mut cache = ContainerIdCache::with_proc_root(&proc.0, 8, Duration::ZERO);

        assert_eq!(cache.container_id(20).as_deref(), Some(ID));
        // The pid was reused by a process in another container.
        proc.write(20, &format!("0::/system.slice/docker-{OTHER_ID}.scope\n"));
        assert_eq!(cache.container_id(20).as_deref(), Some(OTHER_ID));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn cache_forgets_processes_that_are_gone() {
        let proc = FakeProc::new("gone");
        proc.write(30, &format!("0::/system.slice/docker-{ID}.scope\n"));
        let mut cache = ContainerIdCache::with_proc_root(&proc.0, 8, Duration::ZERO);

        assert_eq!(cache.container_id(30).as_deref(), Some(ID));
        proc.remove(30);
        assert_eq!(cache.container_id(30), None);
        assert!(cache.is_empty());
        assert_eq!(cache.container_id(31), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn cache_is_bounded_and_evicts_the_oldest() {
        let proc = FakeProc::new("bounded");
        for pid in 1..=10 {
            proc.write(pid, &format!("0::/docker/{ID}\n"));
        }
        let mut cache = ContainerIdCache::with_proc_root(&proc.0, 3, Duration::from_secs(3600));

        for pid in 1..=10 {
            assert_eq!(cache.container_id(pid).as_deref(), Some(ID));
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.order, [8, 9, 10]);
        // Pid 1 was evicted, so a change on disk is seen.
        proc.write(1, &format!("0::/docker/{OTHER_ID}\n"));
        assert_eq!(cache.container_id(1).as_deref(), Some(OTHER_ID));
        assert_eq!(cache.order, [9, 10, 1]);
    }

    #[test]
    fn zero_capacity_still_holds_one() {
        let proc = FakeProc::new("zero");
        proc.write(40, &format!("0::/docker/{ID}\n"));
        let mut cache = ContainerIdCache::with_proc_root(&proc.0, 0, Duration::from_secs(3600));
        assert_eq!(cache.container_id(40).as_deref(), Some(ID));
        assert_eq!(cache.len(), 1);
    }
}
