//! A network namespace the test creates (`ip netns add`) with loopback up, removed when
//! dropped: test traffic inside it stays inside it.

use std::{
    io::Write as _,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    process::{Command, Stdio},
};

/// A named network namespace owned by the test.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `otel-agent-<tag>-<pid>` and brings its loopback up.
    pub fn create(tag: &str) -> Self {
        let name = format!("otel-agent-{tag}-{}", std::process::id());
        // A namespace left by an earlier run of this pid (there is normally none).
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(&["netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The namespace's inode number, as the probe reports it.
    pub fn inode(&self) -> u32 {
        let metadata = std::fs::metadata(self.path()).expect("the namespace's bind mount");
        u32::try_from(metadata.ino()).expect("inode fits")
    }

    /// Runs `ip -n <name> args...` (inside the namespace), failing the test if it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Runs `program args...` inside the namespace (`ip netns exec`) with `stdin` as its
    /// input, failing the test (with its stderr) if it fails.
    pub fn exec(&self, program: &str, args: &[&str], stdin: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {program} in {}: {error}", self.name));
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin.as_bytes())
            .expect("write the input");
        let output = child.wait_with_output().expect("wait for the command");
        assert!(
            output.status.success(),
            "{program} {args:?} in {} failed: {}\ninput:\n{stdin}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs `f` on a thread of its own that has entered the namespace (`setns`, which changes
    /// only that thread) and returns what it returned. Sockets it creates belong to the
    /// namespace for their whole life, whichever thread uses them afterwards.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(self.path()).expect("the namespace's bind mount");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: `file` is an open namespace file; setns changes only this thread.
                    let status = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(status, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("the thread in the namespace")
        })
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|error| panic!("cannot run ip {args:?}: {error}"));
    assert!(status.success(), "ip {args:?} failed");
}
