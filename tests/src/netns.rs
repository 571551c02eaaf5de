//! A network namespace the test creates (`ip netns add`) with loopback up, removed when
//! dropped: test traffic inside it stays inside it.

use std::{os::unix::fs::MetadataExt as _, process::Command};

/// A named network namespace owned by the test.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `otel-agent-<tag>-<pid>` and brings its loopback up.
    pub fn create(tag: &str) -> Self {
        let name = format!("otel-agent-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run(&["netns", "add", &name]);
        let netns = Self { name };
        run(&[
            "netns",
            "exec",
            &netns.name,
            "ip",
            "link",
            "set",
            "lo",
            "up",
        ]);
        netns
    }

    /// The namespace's inode number, as the probe reports it.
    pub fn inode(&self) -> u32 {
        let metadata = std::fs::metadata(format!("/run/netns/{}", self.name))
            .expect("the namespace's bind mount");
        u32::try_from(metadata.ino()).expect("inode fits")
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
