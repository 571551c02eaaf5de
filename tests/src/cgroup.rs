//! A Kubernetes-style container cgroup on the cgroup v2 hierarchy, created by a test and
//! removed when dropped, and the name the probe reports for this test's executable.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// The cgroup2 mount point (`/sys/fs/cgroup` on a v2 host, `/sys/fs/cgroup/unified` on a
/// hybrid one), from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let point = mount.split(' ').nth(4)?;
            (fs.split(' ').next()? == "cgroup2").then(|| PathBuf::from(point))
        })
        .expect("a cgroup2 hierarchy mounted (this test needs cgroup v2 or hybrid cgroups)")
}

/// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/
/// cri-containerd-<id>.scope` under the cgroup2 root, as the kubelet's systemd driver and
/// containerd name a container's cgroup; the pod uid and container id are made from this
/// test process's pid and a count, so that tests (in parallel, in one process or several)
/// never share them.
pub struct PodContainer {
    /// The 64-hex container id.
    pub id: String,
    root: PathBuf,
    scope: PathBuf,
    /// The directories created, outermost first.
    created: Vec<PathBuf>,
}

impl PodContainer {
    pub fn create() -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let root = cgroup2_root();
        let pid = std::process::id();
        let count = COUNT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:048x}{count:08x}{pid:08x}", 0x0c0f_fee0_u64);
        let pod = format!("0b1c2d3e_4f5a_6b7c_{count:04x}_{pid:012x}");
        let levels = [
            "kubepods.slice".to_owned(),
            "kubepods-besteffort.slice".to_owned(),
            format!("kubepods-besteffort-pod{pod}.slice"),
            format!("cri-containerd-{id}.scope"),
        ];
        let mut created = Vec::new();
        let mut dir = root.clone();
        for level in levels {
            dir.push(level);
            if !dir.is_dir() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("create the cgroup {}: {e}", dir.display()));
                created.push(dir.clone());
            }
        }
        Self {
            id,
            root,
            scope: dir,
            created,
        }
    }

    /// The container's cgroup directory (the scope).
    pub fn dir(&self) -> &Path {
        &self.scope
    }
}

impl Drop for PodContainer {
    fn drop(&mut self) {
        // Anything still inside goes back to the root; then the directories, innermost
        // first (a directory another test still uses stays).
        if let Ok(pids) = std::fs::read_to_string(self.dir().join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The file name of this test's executable as the probe reports it (`mm->exe_file`'s
/// name, at most 47 bytes).
pub fn own_executable_name() -> String {
    let exe = std::env::current_exe().expect("own executable");
    let name = exe.file_name().expect("a file name").to_string_lossy();
    name.chars().take(47).collect()
}
