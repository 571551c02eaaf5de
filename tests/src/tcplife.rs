//! The real libbpf-tools `tcplife` (Debian package `libbpf-tools`, installed by
//! `scripts/setup.sh test`), run beside the agent as the reference for what a closed TCP
//! session's record contains, and a parser for its `-w` output.

use std::{net::IpAddr, path::Path, process::Command, time::Duration};

use crate::process::ChildGuard;

/// Where Debian installs tcplife.
pub const TCPLIFE: &str = "/usr/sbin/tcplife";

/// One line of tcplife output.
#[derive(Debug, Clone, PartialEq)]
pub struct TcplifeLine {
    pub pid: u32,
    pub comm: String,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// `TX_KB` exactly as printed (KiB with two decimals).
    pub tx_kb: String,
    /// `RX_KB` exactly as printed.
    pub rx_kb: String,
    /// Lifespan in milliseconds.
    pub ms: f64,
}

/// Starts `tcplife -w` with line-buffered output and waits until it prints its header
/// (it prints it once the probe is attached).
pub fn start(dir: &Path) -> ChildGuard {
    assert!(
        Path::new(TCPLIFE).is_file(),
        "{TCPLIFE} is missing; run scripts/setup.sh test (it installs libbpf-tools)"
    );
    let mut command = Command::new("stdbuf");
    command.args(["-oL", TCPLIFE, "-w"]);
    let mut process = ChildGuard::spawn(command, dir, "tcplife");
    process.wait_for_output(Duration::from_secs(20), "tcplife's header", |output| {
        output.contains("RX_KB")
    });
    process
}

/// Parses tcplife's `-w` lines (`PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS`), reading
/// the fixed columns from the right so that a comm with spaces does not shift them.
pub fn parse(output: &str) -> Vec<TcplifeLine> {
    output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let n = fields.len();
            if n < 9 {
                return None;
            }
            Some(TcplifeLine {
                pid: fields[0].parse().ok()?,
                comm: fields[1..n - 7].join(" "),
                local: fields[n - 7].parse().ok()?,
                local_port: fields[n - 6].parse().ok()?,
                remote: fields[n - 5].parse().ok()?,
                remote_port: fields[n - 4].parse().ok()?,
                tx_kb: fields[n - 3].to_owned(),
                rx_kb: fields[n - 2].to_owned(),
                ms: fields[n - 1].parse().ok()?,
            })
        })
        .collect()
}

/// Formats a byte count the way tcplife prints `TX_KB` / `RX_KB`.
pub fn kib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcplife_wide_output() {
        let output = "PID     COMM             LADDR                      LPORT RADDR                      RPORT TX_KB  RX_KB  MS
30074   python3          127.0.0.1                  42994 127.0.0.1                  38943 12.06  2.00   0.21
30116   tokio runtime    ::1                        50102 ::1                        36021 12.06  2.00   6.29
";
        let lines = parse(output);
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            TcplifeLine {
                pid: 30074,
                comm: "python3".into(),
                local: "127.0.0.1".parse().unwrap(),
                local_port: 42994,
                remote: "127.0.0.1".parse().unwrap(),
                remote_port: 38943,
                tx_kb: "12.06".into(),
                rx_kb: "2.00".into(),
                ms: 0.21,
            }
        );
        assert_eq!(lines[1].comm, "tokio runtime");
        assert_eq!(lines[1].local, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(kib(12_347), "12.06");
        assert_eq!(kib(2_048), "2.00");
    }
}
