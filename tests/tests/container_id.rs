//! Node mode's `container.id` on a cgroup v1 host: a process that no runtime placed in a
//! cgroup v2 directory reports the v2 root as its cgroup id, and the agent falls back to the
//! owner's `/proc/<pid>/cgroup` (v1 lines included) when the session is reported. The test
//! makes a container as far as the v1 kernel can tell: a cgroup named like Docker's
//! (`/docker/<64 hex>`, cgroup v1 `pids` hierarchy) holding the server process, removed
//! afterwards; the client stays on the host. The server stays alive after its session, as
//! a containerised service does: on v1 a process that has already exited gets none (on
//! cgroup v2 it keeps it: `workload_identity.rs`; see docs/DEPLOY.md).

use std::{path::PathBuf, time::Duration};

use otel_agent_tests::{
    agent, peer,
    process::TempDir,
    receiver::{Kind, Receiver},
    require_root,
};

/// A cgroup the test creates and removes, named as Docker names a container's.
struct FakeContainer {
    dir: PathBuf,
    root_procs: PathBuf,
}

impl FakeContainer {
    fn create(id: &str) -> Self {
        let hierarchy = PathBuf::from("/sys/fs/cgroup/pids");
        let dir = hierarchy.join("docker").join(id);
        std::fs::create_dir_all(&dir)
            .expect("create the cgroup (needs the cgroup v1 pids hierarchy)");
        Self {
            dir,
            root_procs: hierarchy.join("cgroup.procs"),
        }
    }

    fn adopt(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("move the pid");
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        // Move anything left back to the root, then remove the cgroups.
        if let Ok(pids) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = std::fs::write(&self.root_procs, pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[test]
fn on_cgroup_v1_a_live_containerised_owner_gets_its_container_id_from_proc() {
    require_root();
    let id = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xfeed);
    let container = FakeContainer::create(&id);
    let dir = TempDir::new("container-id");
    let receiver = Receiver::start(Kind::Grpc);
    let url = receiver.url(false);
    let mut agent = agent::start(
        &["--otlp-endpoint", &url, "--otlp-protocol", "grpc"],
        &[],
        dir.path(),
    );
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_tcp-peer"));
    let run = peer::run_with(
        (&binary, &binary),
        "127.0.0.1".parse().unwrap(),
        "client-first",
        0,
        None,
        Duration::from_millis(1500),
        |server_pid| container.adopt(server_pid),
    );
    agent::stop(&mut agent);

    let received = receiver.wait_for(Duration::from_secs(10), "both spans", |received| {
        received.iter().map(|r| r.span_count()).sum::<usize>() >= 2
    });
    let mut seen = Vec::new();
    for span in received
        .iter()
        .flat_map(|r| &r.request.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
    {
        let attribute = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let Some(Value::IntValue(local_port)) = attribute("network.local.port") else {
            continue;
        };
        let container_id = match attribute("container.id") {
            Some(Value::StringValue(id)) => Some(id),
            _ => None,
        };
        if local_port == i64::from(run.server_port) {
            seen.push(("server", container_id));
        } else if local_port == i64::from(run.client_port) {
            seen.push(("client", container_id));
        }
    }
    seen.sort();
    assert_eq!(seen, vec![("client", None), ("server", Some(id))]);
}
