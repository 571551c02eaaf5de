//! The owner's container from the cgroup id the probe captured at the owner's own system
//! call (`bpf_get_current_cgroup_id`), so that a session keeps its container when the owner
//! exited before the close.
//!
//! On cgroup v2 a cgroup's id is the inode number of its directory in the cgroup2
//! hierarchy (kernfs node ids; `stat -c %i`). The agent finds the hierarchy in
//! `/proc/self/mountinfo` and, when a batch of sessions names ids it has not seen, walks it
//! once (directory entries only, no `stat`: kernfs reports each directory's id as its
//! `d_ino`), naming every directory after the container its path names
//! ([`container_id_from_segment`]: the innermost runtime scope, so that
//! `libpod-<id>.scope/container` is that container). Ids are 64-bit and never reused, so an
//! answer never goes stale; the cache is bounded all the same ([`DEFAULT_CAPACITY`]
//! directories, the oldest forgotten first), a walk visits at most [`MAX_WALK_DIRS`]
//! directories and runs at most every [`MIN_WALK_INTERVAL`]. An id still not found after a
//! walk (its cgroup was removed before the agent looked: a container that ended between two
//! walks) is remembered as unresolved and counted (`degraded_container_unresolved`).
//!
//! Where the owner is in the v2 root (id 1) the process was not placed in a v2 cgroup by
//! anyone: a cgroup v1-only host, or a hybrid host whose runtime uses only the v1
//! controllers (this test machine: every process but those the tests move reports 1).
//! There the cgroup id says nothing, and the agent falls back to the owner's
//! `/proc/<pid>/cgroup` at report time ([`ContainerIdCache`], v1 paths included), which
//! works only while the owner is alive.

use std::{
    collections::{HashMap, VecDeque},
    os::unix::fs::DirEntryExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    container::{ContainerIdCache, container_id_from_segment},
    session::Session,
};

/// The id of the cgroup v2 root (`kernfs` allocates ids from 1, the root first).
pub const ROOT_CGROUP_ID: u64 = 1;
/// Directories whose answer [`CgroupTree::new`] keeps: a node with a few hundred
/// containers has a few thousand cgroups.
pub const DEFAULT_CAPACITY: usize = 16_384;
/// Directories one walk visits at most.
pub const MAX_WALK_DIRS: usize = 65_536;
/// The shortest time between two walks: a storm of containers started and ended costs at
/// most a few walks a second.
pub const MIN_WALK_INTERVAL: Duration = Duration::from_millis(100);
/// How deep a walk descends (`cgroup.max.depth` is unlimited, real trees are 5 to 8 deep).
const MAX_DEPTH: usize = 32;

/// What the agent knows about one cgroup id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// The cgroup names this container.
    Container(Arc<str>),
    /// The cgroup names no container (a host service, a slice).
    Host,
    /// A walk did not find it: removed before the agent looked.
    Unresolved,
}

/// The cgroup2 mount point in the text of `/proc/self/mountinfo` (`proc(5)`: the fifth
/// field is the mount point, octal-escaped; the file system type follows the ` - `
/// separator).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split(' ').next()? != "cgroup2" {
            return None;
        }
        let point = mount.split(' ').nth(4)?;
        Some(PathBuf::from(unescape_octal(point)))
    })
}

/// Undoes mountinfo's escaping of space, tab, newline and backslash (`\040` and so on).
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        match digits {
            Some(d) if bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) => {
                out.push(d.iter().fold(0u8, |n, b| n.wrapping_mul(8) + (b - b'0')));
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Container ids by cgroup id, from the directory names of the cgroup2 hierarchy.
#[derive(Debug)]
pub struct CgroupTree {
    root: PathBuf,
    capacity: usize,
    answers: HashMap<u64, Answer>,
    /// Ids in the order they were learnt, oldest first; each id of `answers` once.
    order: VecDeque<u64>,
    last_walk: Option<Instant>,
    /// Walks done (for the tests and the debug log).
    walks: u64,
}

impl CgroupTree {
    /// A tree over the cgroup2 hierarchy mounted at `root`, keeping at most `capacity`
    /// answers (at least one).
    pub fn new(root: impl Into<PathBuf>, capacity: usize) -> Self {
        Self {
            root: root.into(),
            capacity: capacity.max(1),
            answers: HashMap::new(),
            order: VecDeque::new(),
            last_walk: None,
            walks: 0,
        }
    }

    /// The tree of this host's cgroup2 mount, if `/proc/self/mountinfo` shows one.
    pub fn of_host() -> Option<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        Some(Self::new(cgroup2_mount(&mountinfo)?, DEFAULT_CAPACITY))
    }

    /// Learns every id of `ids` not known yet, with one walk (unless one ran less than
    /// [`MIN_WALK_INTERVAL`] ago: those ids stay unknown until a later call).
    pub fn learn(&mut self, ids: impl IntoIterator<Item = u64>) {
        let mut missing: Vec<u64> = ids
            .into_iter()
            .filter(|id| *id != ROOT_CGROUP_ID && !self.answers.contains_key(id))
            .collect();
        if missing.is_empty()
            || self
                .last_walk
                .is_some_and(|at| at.elapsed() < MIN_WALK_INTERVAL)
        {
            return;
        }
        missing.sort_unstable();
        missing.dedup();
        self.last_walk = Some(Instant::now());
        self.walks += 1;
        // The ids asked for go in last, so that the bound never evicts them first.
        let mut wanted = Vec::new();
        for (id, answer) in walk(&self.root) {
            if missing.binary_search(&id).is_ok() {
                wanted.push((id, answer));
            } else if !self.answers.contains_key(&id) {
                self.insert(id, answer);
            }
        }
        for id in missing {
            let answer = wanted
                .iter()
                .find(|(found, _)| *found == id)
                .map_or(Answer::Unresolved, |(_, answer)| answer.clone());
            self.insert(id, answer);
        }
    }

    /// The container of cgroup `id`: `Ok(None)` for a host cgroup, [`Unresolved`] when it
    /// is not known (not learnt yet, or removed before a walk found it).
    pub fn container_id(&self, id: u64) -> Result<Option<Arc<str>>, Unresolved> {
        match self.answers.get(&id) {
            Some(Answer::Container(container)) => Ok(Some(container.clone())),
            Some(Answer::Host) => Ok(None),
            Some(Answer::Unresolved) | None => Err(Unresolved),
        }
    }

    fn insert(&mut self, id: u64, answer: Answer) {
        self.answers.insert(id, answer);
        self.order.push_back(id);
        while self.answers.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.answers.remove(&oldest);
        }
    }
}

/// A cgroup id the agent could not map to a directory of the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unresolved;

/// Every directory under `root` (at most [`MAX_WALK_DIRS`], [`MAX_DEPTH`] deep) with the
/// container its path names, the root's own id included (a host cgroup). Unreadable
/// directories are skipped (they may vanish during the walk).
fn walk(root: &Path) -> Vec<(u64, Answer)> {
    use std::os::unix::fs::MetadataExt as _;

    let mut found = Vec::new();
    if let Ok(metadata) = std::fs::metadata(root) {
        found.push((metadata.ino(), Answer::Host));
    }
    let mut pending: Vec<(PathBuf, Option<Arc<str>>, usize)> = vec![(root.to_owned(), None, 0)];
    while let Some((dir, container, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if found.len() >= MAX_WALK_DIRS {
                return found;
            }
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let own = name
                .to_str()
                .and_then(container_id_from_segment)
                .map(Arc::<str>::from);
            let container = own.or_else(|| container.clone());
            found.push((
                entry.ino(),
                container.clone().map_or(Answer::Host, Answer::Container),
            ));
            if depth + 1 < MAX_DEPTH {
                pending.push((entry.path(), container, depth + 1));
            }
        }
    }
    found
}

/// The container of each session's owner: from its cgroup id on the cgroup2 hierarchy,
/// or, for an owner in the v2 root, from `/proc/<pid>/cgroup` while it lives.
#[derive(Debug, Default)]
pub struct Containers {
    /// The cgroup2 hierarchy, when mounted.
    pub tree: Option<CgroupTree>,
    /// The v1 fallback, when `/proc` shows the host's pids.
    pub procs: Option<ContainerIdCache>,
}

impl Containers {
    /// Fills `container_id` in every session; returns how many were left unresolved (a
    /// cgroup id that no walk found).
    pub fn fill(&mut self, sessions: &mut [Session]) -> u64 {
        if let Some(tree) = &mut self.tree {
            tree.learn(sessions.iter().map(|session| session.cgroup_id));
        }
        let mut unresolved = 0;
        for session in sessions {
            session.container_id = if session.cgroup_id == ROOT_CGROUP_ID {
                self.procs
                    .as_mut()
                    .and_then(|procs| procs.container_id(session.pid))
            } else if let Some(tree) = &self.tree {
                tree.container_id(session.cgroup_id)
                    .unwrap_or_else(|Unresolved| {
                        unresolved += 1;
                        None
                    })
            } else {
                None
            };
        }
        unresolved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b1c2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";

    #[test]
    fn finds_the_cgroup2_mount_among_others() {
        let mountinfo = "\
25 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
34 25 0:29 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
35 34 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
36 34 0:31 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure_v2 = "30 1 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(pure_v2),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "30 1 0:26 / /host\\040root/cgroup rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount(escaped),
            Some(PathBuf::from("/host root/cgroup"))
        );
        let v1_only = "36 34 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_mount(v1_only), None);
    }

    /// A directory tree shaped like a cgroup hierarchy, in a fresh temporary directory
    /// (the walk reads directory entries only, so any file system will do).
    struct FakeTree(PathBuf);

    impl FakeTree {
        fn new(name: &str, dirs: &[&str]) -> Self {
            let root = std::env::temp_dir()
                .join(format!("otel-agent-cgroup-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for dir in dirs {
                std::fs::create_dir_all(root.join(dir)).unwrap();
            }
            Self(root)
        }

        fn id(&self, dir: &str) -> u64 {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(self.0.join(dir)).unwrap().ino()
        }
    }

    impl Drop for FakeTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn session(cgroup_id: u64) -> Session {
        Session {
            cgroup_id,
            ..crate::session::tests::client_session()
        }
    }

    #[test]
    fn maps_ids_to_containers_with_one_walk_per_batch() {
        let pod = "kubepods.slice/kubepods-burstable.slice/\
                   kubepods-burstable-pod8a4e6b0c_7d1f_4c2a_9b3e_5f6a7b8c9d0e.slice";
        let scope = format!("{pod}/cri-containerd-{ID}.scope");
        let podman = format!("machine.slice/libpod-{ID}.scope/container");
        let tree = FakeTree::new("walk", &[&scope, &podman, "system.slice/sshd.service"]);
        let mut containers = Containers {
            tree: Some(CgroupTree::new(&tree.0, DEFAULT_CAPACITY)),
            procs: None,
        };
        let mut sessions = [
            session(tree.id(&scope)),
            session(tree.id(&podman)),
            session(tree.id("system.slice/sshd.service")),
            session(tree.id(pod)),
        ];
        assert_eq!(containers.fill(&mut sessions), 0);
        let ids: Vec<_> = sessions.iter().map(|s| s.container_id.as_deref()).collect();
        assert_eq!(ids, [Some(ID), Some(ID), None, None]);
        let walked = containers.tree.as_ref().unwrap();
        assert_eq!(walked.walks, 1);
        // Every directory was learnt by that walk: no second one for known ids.
        let mut again = [session(tree.id("system.slice"))];
        assert_eq!(containers.fill(&mut again), 0);
        assert_eq!(containers.tree.as_ref().unwrap().walks, 1);
    }

    #[test]
    fn an_id_no_walk_finds_is_counted_unresolved_once_per_session() {
        let tree = FakeTree::new("gone", &["system.slice"]);
        let mut containers = Containers {
            tree: Some(CgroupTree::new(&tree.0, DEFAULT_CAPACITY)),
            procs: None,
        };
        let gone = u64::MAX - 7;
        let mut sessions = [session(gone), session(gone)];
        assert_eq!(containers.fill(&mut sessions), 2);
        assert_eq!(sessions[0].container_id, None);
        // Remembered as unresolved: counted again, not walked again.
        std::thread::sleep(MIN_WALK_INTERVAL);
        assert_eq!(containers.fill(&mut [session(gone)]), 1);
        assert_eq!(containers.tree.as_ref().unwrap().walks, 1);
    }

    #[test]
    fn the_root_cgroup_falls_back_to_proc_and_is_never_walked() {
        let mut containers = Containers {
            tree: Some(CgroupTree::new("/nonexistent", DEFAULT_CAPACITY)),
            procs: None,
        };
        let mut sessions = [session(ROOT_CGROUP_ID)];
        assert_eq!(containers.fill(&mut sessions), 0);
        assert_eq!(sessions[0].container_id, None);
        assert_eq!(containers.tree.as_ref().unwrap().walks, 0);
    }

    #[test]
    fn the_cache_is_bounded() {
        let dirs: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        let refs: Vec<&str> = dirs.iter().map(String::as_str).collect();
        let tree = FakeTree::new("bounded", &refs);
        let mut cgroups = CgroupTree::new(&tree.0, 4);
        cgroups.learn([tree.id("d0")]);
        assert_eq!(cgroups.answers.len(), 4);
        assert_eq!(cgroups.order.len(), 4);
        // The id asked for is kept, whatever the walk's order.
        assert_eq!(cgroups.container_id(tree.id("d0")), Ok(None));
    }
}
