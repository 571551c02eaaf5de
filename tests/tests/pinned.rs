//! The pinned probe (`--bpf-pin-dir`), on a BPF filesystem each test mounts at a directory
//! of its own (unmounted, with every pin, by a guard): a graceful restart under traffic
//! loses and repeats nothing through the real collector and keeps the birth of a session
//! open across it; an incompatible pinned layout is refused; `detach` removes every pin and
//! the programs leave the kernel.
//!
//! The agents filter on the test's listening port (`-L`), so the probe emits the test's own
//! server-side sessions only: one span per connection, whose peer port is the client's.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::{
    maps::{Array, Map, MapData},
    programs::{links::PinnedLink, loaded_programs},
};
use common::{CONTROL_MAP, PIN_LAYOUT_VERSION, control};
use otel_agent_tests::{
    agent, mountns,
    process::{ChildGuard, TempDir},
    require_root,
    rotel::Rotel,
};

/// A BPF filesystem mounted for one test; the agent pins under `<mount>/agent`.
struct BpfFs {
    mount: PathBuf,
}

impl BpfFs {
    fn mount(tag: &str) -> Self {
        let mount =
            std::env::temp_dir().join(format!("otel-agent-bpffs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&mount).expect("create the mount point");
        let target = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: NUL-terminated strings; no data argument.
        let result = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            result,
            0,
            "mount bpffs: {}",
            std::io::Error::last_os_error()
        );
        Self { mount }
    }

    fn pin_dir(&self) -> PathBuf {
        self.mount.join("agent")
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        // Unmounting the only mount of this BPF filesystem releases every pin in it.
        let _ = agent::command(
            &[
                "detach",
                "--bpf-pin-dir",
                &self.pin_dir().display().to_string(),
            ],
            &[],
        )
        .output();
        let target = std::ffi::CString::new(self.mount.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// A listener on a loopback port of the test's, answering every connection: reads to EOF,
/// then closes.
struct Server {
    addr: SocketAddr,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                thread::spawn(move || {
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest);
                });
            }
        });
        Self { addr }
    }

    /// One short connection: 100 bytes, then both ends close; the client's port.
    fn exchange(&self) -> u16 {
        let mut client = TcpStream::connect(self.addr).expect("connect");
        let port = client.local_addr().unwrap().port();
        client.write_all(&[b'x'; 100]).expect("write");
        client.shutdown(Shutdown::Write).expect("shut down");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).expect("read to EOF");
        port
    }
}

/// Short connections, `pause` apart (at most `max`), until stopped; their client ports.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<u16>>,
}

impl Traffic {
    fn start(server: &Server, pause: Duration, max: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = server.addr;
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let server = Server { addr };
            let mut ports = Vec::new();
            while !flag.load(Ordering::Relaxed) && ports.len() < max {
                ports.push(server.exchange());
                thread::sleep(pause);
            }
            ports
        });
        Self { stop, thread }
    }

    fn stop(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the traffic thread")
    }
}

/// Starts an agent on the pin directory `pins` with `args`, and waits until it attached.
fn pinned_agent(pins: &Path, args: &[&str], dir: &Path, name: &str) -> ChildGuard {
    let pins = pins.display().to_string();
    let mut all = vec!["--bpf-pin-dir", pins.as_str()];
    all.extend_from_slice(args);
    let mut agent = ChildGuard::spawn(agent::command(&all, &[]), dir, name);
    agent.wait_for_output(Duration::from_secs(30), "the probe to attach", |output| {
        output.contains("probe attached")
    });
    agent
}

/// The flags of an agent that exports the sessions on `server`'s port to `rotel`.
fn export_args(rotel: &Rotel, server: &Server) -> Vec<String> {
    [
        "-L".to_owned(),
        server.addr.port().to_string(),
        "--otlp-endpoint".to_owned(),
        format!("http://{}", rotel.grpc),
        "--otlp-protocol".to_owned(),
        "grpc".to_owned(),
        "--bsp-schedule-delay".to_owned(),
        "100ms".to_owned(),
    ]
    .into()
}

fn stop(agent: &mut ChildGuard) -> String {
    agent.signal(libc::SIGTERM);
    let status = agent.wait(Duration::from_secs(15));
    let stderr = agent.stderr_text();
    assert_eq!(status.code(), Some(0), "agent stderr:\n{stderr}");
    stderr
}

fn wall_ns(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

#[test]
fn a_graceful_restart_under_traffic_delivers_every_session_once_with_its_birth() {
    require_root();
    let dir = TempDir::new("pinned-restart");
    let bpffs = BpfFs::mount("restart");
    let rotel = Rotel::start(dir.path());
    let server = Server::start();

    let args = export_args(&rotel, &server);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = pinned_agent(&bpffs.pin_dir(), &args, dir.path(), "first");
    let traffic = Traffic::start(&server, Duration::from_millis(5), 2_000);
    thread::sleep(Duration::from_millis(300));
    // Open before the restart, closed after it.
    let before_connect = SystemTime::now();
    let mut long_lived = TcpStream::connect(server.addr).expect("connect");
    let long_lived_port = long_lived.local_addr().unwrap().port();
    thread::sleep(Duration::from_millis(300));
    let first_stderr = stop(&mut first);
    // No agent runs: the probe goes on, into the pinned ring buffer.
    thread::sleep(Duration::from_millis(300));
    let mut second = pinned_agent(&bpffs.pin_dir(), &args, dir.path(), "second");
    thread::sleep(Duration::from_millis(300));
    long_lived.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    long_lived.read_to_end(&mut rest).unwrap();
    drop(long_lived);
    let mut ports = traffic.stop();
    ports.push(long_lived_port);

    let local_port = format!("Int({})", server.addr.port());
    let ours = |span: &otel_agent_tests::rotel::ReceivedSpan| {
        span.attributes.get("network.local.port") == Some(&local_port)
    };
    rotel.wait_for_spans(ports.len(), Duration::from_secs(30), ours);
    let second_stderr = stop(&mut second);
    thread::sleep(Duration::from_millis(500));

    let spans: Vec<_> = rotel.spans().into_iter().filter(ours).collect();
    let mut received: Vec<u16> = spans
        .iter()
        .map(|span| {
            let port = &span.attributes["network.peer.port"];
            port.trim_start_matches("Int(")
                .trim_end_matches(')')
                .parse()
                .unwrap()
        })
        .collect();
    received.sort_unstable();
    let mut expected = ports.clone();
    expected.sort_unstable();
    assert_eq!(
        received.len(),
        expected.len(),
        "every session exactly once: {} spans for {} sessions",
        received.len(),
        expected.len()
    );
    assert_eq!(received, expected, "every session exactly once");
    assert_eq!(
        received.iter().collect::<BTreeSet<_>>().len(),
        received.len(),
        "no duplicate"
    );

    let long_lived_span = spans
        .iter()
        .find(|span| span.attributes["network.peer.port"] == format!("Int({long_lived_port})"))
        .unwrap();
    assert_eq!(
        long_lived_span.attributes["tcplife.birth_seen"],
        "Bool(true)"
    );
    let connect = wall_ns(before_connect);
    assert!(
        long_lived_span.start_ns >= connect && long_lived_span.start_ns - connect < 1_000_000,
        "the birth is the connect: start {} vs connect {connect}",
        long_lived_span.start_ns
    );

    // The two agents read every record once between them, and their lines balance.
    let first_figures = agent::accounting(&first_stderr);
    let second_figures = agent::accounting(&second_stderr);
    agent::assert_nothing_lost(&first_stderr);
    agent::assert_nothing_lost(&second_stderr);
    assert_eq!(
        agent::counter(&first_figures, "records_read")
            + agent::counter(&second_figures, "records_read"),
        ports.len() as u64,
        "{first_figures:?} {second_figures:?}"
    );
    assert_eq!(agent::counter(&first_figures, "pins_adopted_records"), 0);
    assert_eq!(agent::counter(&second_figures, "pins_left_records"), 0);
    let adopted = agent::counter(&second_figures, "pins_adopted_records");
    assert!(
        adopted > agent::counter(&first_figures, "pins_left_records"),
        "the sessions closed in the gap wait for the second agent: {first_figures:?} {second_figures:?}"
    );
    // Its first line says what it adopted.
    let took_over = agent::log_counters(&second_stderr, &["took over the pinned probe"]);
    assert_eq!(agent::counter(&took_over, "adopted_records"), adopted);
}

/// The client ports of the sessions an agent printed (`-s`: CSV) on the server's port.
fn printed_peer_ports(stdout: &str, server: &Server) -> Vec<u16> {
    let local = server.addr.port().to_string();
    stdout
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            // PID,COMM,IP,LADDR,LPORT,RADDR,RPORT,TX_KB,RX_KB,MS
            (fields.get(4) == Some(&local.as_str()))
                .then(|| fields.get(6)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// A test directory, a BPF filesystem and a server, for agents that print the sessions on
/// the server's port (its number is the last element) as CSV.
fn console_rig(tag: &str) -> (TempDir, BpfFs, Server, String) {
    let server = Server::start();
    let port = server.addr.port().to_string();
    (
        TempDir::new(&format!("pinned-{tag}")),
        BpfFs::mount(tag),
        server,
        port,
    )
}

#[test]
fn handovers_under_churn_report_every_session_once() {
    require_root();
    let (dir, bpffs, server, port) = console_rig("churn");
    let args = ["-L", port.as_str(), "-s"];
    let mut agents = vec![pinned_agent(&bpffs.pin_dir(), &args, dir.path(), "agent0")];
    // As fast as one client goes, through three handovers.
    let traffic = Traffic::start(&server, Duration::ZERO, 20_000);
    let mut outputs = Vec::new();
    for round in 1..=3 {
        thread::sleep(Duration::from_millis(300));
        let mut previous = agents.pop().unwrap();
        let stderr = stop(&mut previous);
        outputs.push((previous.stdout_text(), stderr));
        agents.push(pinned_agent(
            &bpffs.pin_dir(),
            &args,
            dir.path(),
            &format!("agent{round}"),
        ));
    }
    thread::sleep(Duration::from_millis(300));
    let ports = traffic.stop();
    // The last agent reads what is left before it stops (a stopping agent leaves the ring
    // buffer to the next one).
    let mut last = agents.pop().unwrap();
    let printed_before: usize = outputs
        .iter()
        .map(|(stdout, _)| printed_peer_ports(stdout, &server).len())
        .sum();
    last.wait_for_output(Duration::from_secs(20), "every session printed", |output| {
        printed_before + printed_peer_ports(output, &server).len() >= ports.len()
    });
    let stderr = stop(&mut last);
    outputs.push((last.stdout_text(), stderr));

    let mut printed: Vec<u16> = outputs
        .iter()
        .flat_map(|(stdout, _)| printed_peer_ports(stdout, &server))
        .collect();
    printed.sort_unstable();
    let mut expected = ports.clone();
    expected.sort_unstable();
    assert!(
        ports.len() > 1_000,
        "a busy churn: {} connections",
        ports.len()
    );
    assert_eq!(printed.len(), expected.len(), "each session printed once");
    assert_eq!(printed, expected, "each session printed once");
    let mut read = 0;
    for (_, stderr) in &outputs {
        agent::assert_reconciled(stderr);
        let figures = agent::accounting(stderr);
        // `lost_probe_skipped` is an upper bound that counts skipped births and states too,
        // and other probes on this machine make the kernel skip hits: every session was
        // printed once above, which is the exact check.
        let lost: Vec<_> = figures
            .iter()
            .filter(|(name, value)| {
                name.starts_with("lost_") && *name != "lost_probe_skipped" && **value != 0
            })
            .collect();
        assert!(lost.is_empty(), "lost sessions: {lost:?}");
        read += agent::counter(&figures, "records_read");
    }
    assert_eq!(read, ports.len() as u64);
    assert_eq!(
        agent::counter(&agent::accounting(&outputs[3].1), "pins_left_records"),
        0
    );
}

/// Runs an agent on the pin directory `pins`, which must refuse it: its exit code and
/// stderr.
fn refused(pins: &str, dir: &Path) -> (Option<i32>, String) {
    agent::run_to_failure(agent::command(&["--bpf-pin-dir", pins], &[]), dir)
}

/// A BPF filesystem where an agent ran and stopped, leaving its probe pinned (and its test
/// directory).
fn left_pinned(tag: &str) -> (TempDir, BpfFs) {
    let dir = TempDir::new(&format!("pinned-{tag}"));
    let bpffs = BpfFs::mount(tag);
    let pins = bpffs.pin_dir().display().to_string();
    let mut first = agent::start(&["--bpf-pin-dir", &pins], &[], dir.path());
    stop(&mut first);
    (dir, bpffs)
}

#[test]
fn an_incompatible_pinned_layout_is_refused() {
    require_root();
    let (dir, bpffs) = left_pinned("layout");
    let pins = bpffs.pin_dir();
    let pins_text = pins.display().to_string();

    // What an agent with another record layout would have left.
    let data = MapData::from_pin(pins.join(CONTROL_MAP)).expect("open the pinned CONTROL");
    let mut control_map: Array<_, u64> = Array::try_from(Map::Array(data)).unwrap();
    control_map
        .set(control::LAYOUT, PIN_LAYOUT_VERSION + 1, 0)
        .unwrap();

    let (code, stderr) = refused(&pins_text, dir.path());
    assert_eq!(code, Some(65), "{stderr}");
    let expected = format!(
        "--bpf-pin-dir {pins_text} holds a probe this agent cannot take over: its record layout is version {}, this agent's is {PIN_LAYOUT_VERSION}; remove it with `otel-agent detach --bpf-pin-dir {pins_text}` (which discards the records it holds) and start again",
        PIN_LAYOUT_VERSION + 1
    );
    assert!(stderr.contains(&expected), "{stderr}");
    // Refused without touching the running probe.
    assert!(pins.join("link-1-inet_sock_set_state").exists());

    // The right version, but a map of another shape where HANDOFF should be (what the
    // kernel says about it, not what the probe object declares).
    control_map
        .set(control::LAYOUT, PIN_LAYOUT_VERSION, 0)
        .unwrap();
    std::fs::remove_file(pins.join("HANDOFF")).unwrap();
    MapData::from_pin(pins.join("COUNTERS"))
        .unwrap()
        .pin(pins.join("HANDOFF"))
        .unwrap();
    let (code, stderr) = refused(&pins_text, dir.path());
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--bpf-pin-dir {pins_text} holds a probe this agent cannot take over: the map HANDOFF is PerCpuArray (keys 4 bytes, values 8 bytes, {} entries), this agent's is PerCpuArray (keys 4 bytes, values 32 bytes, 1 entries); remove it with",
            common::counter::COUNT
        )),
        "{stderr}"
    );
}

#[test]
fn detach_removes_every_pin_and_the_programs_leave_the_kernel() {
    require_root();
    let (_dir, bpffs) = left_pinned("detach");
    let pins = bpffs.pin_dir();
    let pins_text = pins.display().to_string();

    let mut program_ids = BTreeSet::new();
    for entry in std::fs::read_dir(&pins).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("link-") {
            let link: aya::programs::links::FdLink =
                PinnedLink::from_pin(pins.join(&name)).unwrap().into();
            program_ids.insert(link.info().unwrap().program_id());
        }
    }
    assert_eq!(
        program_ids.len(),
        4,
        "four programs attached: {program_ids:?}"
    );
    let loaded = || -> BTreeSet<u32> {
        loaded_programs()
            .filter_map(Result::ok)
            .map(|program| program.id())
            .filter(|id| program_ids.contains(id))
            .collect()
    };
    assert_eq!(
        loaded(),
        program_ids,
        "the stopped agent left its programs attached"
    );

    let detach = || {
        let output = agent::command(&["detach", "--bpf-pin-dir", &pins_text], &[])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = detach();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("detached the pinned probe and removed its pins")
            && stderr.contains("links=4 maps=5"),
        "{stderr}"
    );
    assert!(!pins.exists(), "the pin directory is removed");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !loaded().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "programs still loaded after detach: {:?}",
            loaded()
        );
        thread::sleep(Duration::from_millis(50));
    }

    let (code, stderr) = detach();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("nothing to detach"), "{stderr}");
}

#[test]
fn a_missing_bpffs_is_mounted_under_sys_fs_bpf_and_refused_elsewhere() {
    require_root();
    let dir = TempDir::new("pinned-mount");
    // Elsewhere: refused before anything is loaded, with the command that fixes it.
    let elsewhere = dir.path().join("pins");
    let elsewhere_text = elsewhere.display().to_string();
    let (code, stderr) = refused(&elsewhere_text, dir.path());
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--bpf-pin-dir {elsewhere_text}: {} is not on a BPF filesystem; mount one there (`mount -t bpf bpf {elsewhere_text}`)",
            dir.path().display()
        )),
        "{stderr}"
    );
    assert!(!elsewhere.exists());

    // Under /sys/fs/bpf with nothing mounted there (in a private mount namespace, where
    // the agent's mount and its pins end with it).
    let host_bpffs = mounted_bpffs_at_sys_fs_bpf();
    let setup = format!(
        "{}\nif grep -q ' /sys/fs/bpf bpf ' /proc/self/mounts; then umount /sys/fs/bpf; fi",
        mountns::ENSURE_TRACEFS
    );
    let wrapper = mountns::wrapper(&setup, &[]);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let pins = format!("/sys/fs/bpf/otel-agent-test-{}", std::process::id());
    let mut inside = agent::start_command(
        agent::wrapped_command(&wrapper, &["--bpf-pin-dir", &pins, "-L", "1"], &[]),
        dir.path(),
    );
    let stderr = stop(&mut inside);
    assert!(
        stderr.contains("mounted a BPF filesystem, which was not mounted"),
        "{stderr}"
    );
    assert_eq!(
        mounted_bpffs_at_sys_fs_bpf(),
        host_bpffs,
        "the host's mounts are untouched"
    );
}

/// Whether a BPF filesystem is mounted at /sys/fs/bpf in this process's mount namespace.
fn mounted_bpffs_at_sys_fs_bpf() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|line| line.contains(" /sys/fs/bpf bpf "))
}

#[test]
fn a_pinned_probe_keeps_its_attach_type_and_map_sizes() {
    require_root();
    let dir = TempDir::new("pinned-kept");
    let bpffs = BpfFs::mount("kept");
    let first_args = [
        "--attach",
        "raw-tracepoint",
        "--ring-buffer-bytes",
        "65536",
        "-L",
        "1",
    ];
    let mut first = pinned_agent(&bpffs.pin_dir(), &first_args, dir.path(), "first");
    stop(&mut first);
    // Asked for the classic tracepoint and the default sizes: the raw tracepoint program
    // of the pinned probe must run before the new one in every hit, and the maps stay.
    let mut second = pinned_agent(&bpffs.pin_dir(), &["-L", "1"], dir.path(), "second");
    let stderr = stop(&mut second);
    assert!(
        stderr.contains(
            "keeping the map sizes and the attach type of the pinned probe; to change them, run `otel-agent detach --bpf-pin-dir DIR` first max_tracked_sockets=65536 ring_buffer_bytes=65536 attach=\"raw-tracepoint\""
        ),
        "{stderr}"
    );
    assert!(stderr.contains("attach=\"raw-tracepoint\""), "{stderr}");
    assert!(
        bpffs
            .pin_dir()
            .join("link-2-inet_sock_set_state_raw")
            .exists()
    );
    assert!(
        bpffs
            .pin_dir()
            .join("link-2-inet_sock_set_state_backup")
            .exists()
    );
}

#[test]
fn a_killed_agent_leaves_the_probe_running_for_the_next() {
    require_root();
    let (dir, bpffs, server, port) = console_rig("kill");
    let args = ["-L", port.as_str(), "-s"];
    let mut first = pinned_agent(&bpffs.pin_dir(), &args, dir.path(), "first");
    let before: Vec<u16> = (0..20).map(|_| server.exchange()).collect();
    thread::sleep(Duration::from_millis(200));
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(10));
    // No agent, no shutdown: the probe goes on.
    let after: Vec<u16> = (0..20).map(|_| server.exchange()).collect();
    let mut second = pinned_agent(&bpffs.pin_dir(), &args, dir.path(), "second");
    second.wait_for_output(
        Duration::from_secs(20),
        "the sessions of the gap",
        |output| printed_peer_ports(output, &server).len() >= after.len(),
    );
    let stderr = stop(&mut second);
    let mut printed = printed_peer_ports(&second.stdout_text(), &server);
    printed.sort_unstable();
    let mut expected = after.clone();
    expected.sort_unstable();
    assert_eq!(
        printed, expected,
        "the gap's sessions, once each, none of before {before:?}"
    );
    let figures = agent::accounting(&stderr);
    agent::assert_nothing_lost(&stderr);
    assert_eq!(
        agent::counter(&figures, "pins_adopted_records"),
        after.len() as u64
    );
}
