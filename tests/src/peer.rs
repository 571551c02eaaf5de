//! Runs the `tcp-peer` binary (`src/bin/tcp-peer.rs`): one TCP session whose two ends are
//! two separate processes, named `peer-server` and `peer-client`, so that tests know which
//! process owns each end.

use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// `comm` of the server process.
pub const SERVER_COMM: &str = "peer-server";
/// `comm` of the client process.
pub const CLIENT_COMM: &str = "peer-client";

/// Bytes `tcp-peer exit-without-close` sends before it exits.
pub const EXIT_WITHOUT_CLOSE_BYTES: usize = 100;

/// Payload sizes per scenario: (client to server, server to client).
pub fn payload(scenario: &str) -> Option<(usize, usize)> {
    match scenario {
        "client-first" | "server-first" => Some((12_345, 2_048)),
        "bulk" => Some((4 << 20, 3 << 20)),
        "reset" => Some((10_000, 0)),
        "refused" => Some((0, 0)),
        _ => None,
    }
}

/// One finished exchange: who owned which end.
#[derive(Debug, Clone)]
pub struct PeerRun {
    pub scenario: &'static str,
    pub ip: IpAddr,
    pub server_port: u16,
    pub client_port: u16,
    /// `None` for `refused`, which has no server.
    pub server_pid: Option<u32>,
    pub client_pid: u32,
}

/// Runs `scenario` between two `tcp-peer` processes on `ip` and waits for both to succeed.
/// For `refused`, `closed_port` is the port nobody listens on. With `netns`, both run inside
/// that named network namespace (`ip netns exec`, which keeps the pid).
pub fn run(
    binary: &Path,
    ip: IpAddr,
    scenario: &'static str,
    closed_port: u16,
    netns: Option<&str>,
) -> PeerRun {
    run_with(
        (binary, binary),
        ip,
        scenario,
        closed_port,
        netns,
        Duration::ZERO,
        |_| {},
    )
}

/// As [`run`], the server run from one copy of `tcp-peer` and the client from another
/// (server, client: the same one, or two so that the ends are two workloads), calling
/// `server_ready` with the server's pid once it listens and before the client starts, and
/// keeping the server process alive for `server_linger` after its session, as a
/// long-running service would be.
pub fn run_with(
    (binary, client_binary): (&Path, &Path),
    ip: IpAddr,
    scenario: &'static str,
    closed_port: u16,
    netns: Option<&str>,
    server_linger: Duration,
    server_ready: impl FnOnce(u32),
) -> PeerRun {
    let ip_text = ip.to_string();
    let linger_text = server_linger.as_millis().to_string();
    let (mut server, server_port) = if scenario == "refused" {
        (None, closed_port)
    } else {
        let mut server = spawn(binary, netns, &["server", &ip_text, scenario, &linger_text]);
        let port = read_tagged(&mut server, "PORT");
        server_ready(server.id());
        (Some(server), port)
    };
    let port_text = server_port.to_string();
    let mut client = spawn(
        client_binary,
        netns,
        &["client", &ip_text, &port_text, scenario],
    );
    let client_port = read_tagged(&mut client, "LOCAL");
    if let Some(server) = server.as_mut().filter(|_| scenario == "reset") {
        // The client aborts only once the server has read its data (see tcp-peer).
        assert_eq!(
            read_line(server).trim(),
            "READ",
            "tcp-peer server {scenario}"
        );
        let stdin = client.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"go\n").expect("tell the client to abort");
    }
    let client_pid = client.id();
    let server_pid = server.as_ref().map(Child::id);
    for (name, child) in [("client", Some(client)), ("server", server)] {
        if let Some(child) = child {
            let output = wait_with_timeout(child, Duration::from_secs(20));
            assert!(
                output.status.success(),
                "tcp-peer {name} {scenario} on {ip} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    PeerRun {
        scenario,
        ip,
        server_port,
        client_port,
        server_pid,
        client_pid,
    }
}

fn spawn(binary: &Path, netns: Option<&str>, args: &[&str]) -> Child {
    let mut command = match netns {
        Some(name) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", name]).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()))
}

/// Reads the first stdout line, `<tag> <port>`.
fn read_tagged(child: &mut Child, tag: &str) -> u16 {
    let line = read_line(child);
    line.trim()
        .strip_prefix(tag)
        .and_then(|port| port.trim().parse().ok())
        .unwrap_or_else(|| panic!("expected `{tag} <port>` from tcp-peer, got {line:?}"))
}

/// Reads one stdout line (the peer prints each line in one write and waits afterwards, so
/// nothing is read past it).
fn read_line(child: &mut Child) -> String {
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read a line from the peer");
    line
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> std::process::Output {
    let deadline = std::time::Instant::now() + timeout;
    while child.try_wait().expect("poll tcp-peer").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tcp-peer did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("collect tcp-peer output")
}
