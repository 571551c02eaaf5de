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
    /// The directories of its path, outermost first (the outer two shared with other tests).
    dirs: Vec<PathBuf>,
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
        // The two outer levels are shared with any other test creating a pod at the same
        // time: one that exists already is used, and one that another test's drop removes
        // between two steps is created again.
        let mut dirs = Vec::new();
        let mut dir = root.clone();
        for level in levels {
            dir.push(level);
            dirs.push(dir.clone());
        }
        'attempts: for attempt in 1..=10 {
            for dir in &dirs {
                match std::fs::create_dir(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 10 => {
                        continue 'attempts;
                    }
                    Err(e) => panic!("create the cgroup {}: {e}", dir.display()),
                }
            }
            break;
        }
        Self {
            id,
            root,
            scope: dir,
            dirs,
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
        // first (a directory another test still uses stays, and the last one removes it).
        if let Ok(pids) = std::fs::read_to_string(self.dir().join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        for dir in self.dirs.iter().rev() {
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
