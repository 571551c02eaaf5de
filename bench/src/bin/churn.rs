//! `churn`: the loopback TCP churn workload of the benchmark (issue 5). It makes TIME_WAIT
//! cheap and ports plentiful for the run (`net.ipv4.tcp_max_tw_buckets` low,
//! `net.ipv4.ip_local_port_range` wide), runs client and server threads for a bounded time
//! and count, restores both sysctls (also on Ctrl-C and panic), and prints one summary line
//! on stdout:
//!
//! `churn connections=N sessions=2N client_errors=E server_errors=E elapsed_s=S rate_per_s=R stopped_by=WHY`

use std::{net::IpAddr, process::ExitCode, sync::atomic::AtomicBool, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use otel_agent_bench::{
    churn::{self, Config},
    signals,
    sysctl::SysctlGuard,
};

const TW_BUCKETS: &str = "net.ipv4.tcp_max_tw_buckets";
const PORT_RANGE: &str = "net.ipv4.ip_local_port_range";

/// Opens and closes loopback TCP connections as fast as it can (connect, request,
/// response, close), for a bounded time and count, and prints the connection rate.
#[derive(Debug, Parser)]
#[command(name = "churn")]
struct Cli {
    /// Loopback address to listen on and connect to (127.0.0.1 or ::1).
    #[arg(long, env = "CHURN_ADDRESS", default_value = "127.0.0.1", value_parser = parse_loopback)]
    address: IpAddr,

    /// Client threads (and as many server threads), one connection at a time each.
    #[arg(long, env = "CHURN_THREADS", default_value_t = 8)]
    threads: usize,

    /// How long to run, e.g. `10s` or `500ms`.
    #[arg(long, env = "CHURN_DURATION", default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// Stop after starting this many connections (if the duration has not ended first).
    #[arg(long, env = "CHURN_MAX_CONNECTIONS", default_value_t = 2_000_000)]
    max_connections: u64,

    /// Request size, client to server, bytes.
    #[arg(long, env = "CHURN_REQUEST_BYTES", default_value_t = 64)]
    request_bytes: usize,

    /// Response size, server to client, bytes.
    #[arg(long, env = "CHURN_RESPONSE_BYTES", default_value_t = 64)]
    response_bytes: usize,

    /// Connect, read and write timeout of every socket (bounds how long a stop can take).
    #[arg(long, env = "CHURN_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,

    /// Value of net.ipv4.tcp_max_tw_buckets during the run (restored afterwards): a low
    /// value closes TIME_WAIT sockets at once, so that loopback ports do not run out.
    #[arg(long, env = "CHURN_TW_BUCKETS", default_value = "1024")]
    tw_buckets: String,

    /// Value of net.ipv4.ip_local_port_range during the run (restored afterwards).
    #[arg(long, env = "CHURN_PORT_RANGE", default_value = "1024 65535")]
    port_range: String,

    /// Leave both sysctls unchanged (no root needed; the rate may then be limited by ports).
    #[arg(long, env = "CHURN_KEEP_SYSCTLS")]
    keep_sysctls: bool,
}

fn main() -> ExitCode {
    // First, before any thread exists: a signal then stops the run and the guards restore
    // the sysctls.
    let stop = match signals::install() {
        Ok(stop) => stop,
        Err(error) => {
            eprintln!("churn: cannot set up signal handling: {error}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    match run(&cli, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("churn: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, stop: &AtomicBool) -> anyhow::Result<()> {
    anyhow::ensure!(cli.threads > 0, "--threads must be at least 1");
    anyhow::ensure!(
        cli.request_bytes > 0 && cli.response_bytes > 0,
        "--request-bytes and --response-bytes must be at least 1 (the exchange paces the clients)"
    );
    // Declared before the run so that they are dropped (restored) after it, on every path.
    let mut guards = Vec::new();
    if !cli.keep_sysctls {
        for (name, value) in [(TW_BUCKETS, &cli.tw_buckets), (PORT_RANGE, &cli.port_range)] {
            let guard = SysctlGuard::set(name, value)?;
            eprintln!(
                "churn: set {name}={value} for the run (was {:?}; restored at exit)",
                guard.original()
            );
            guards.push(guard);
        }
    }
    let config = Config {
        address: cli.address,
        clients: cli.threads,
        servers: cli.threads,
        duration: cli.duration,
        max_connections: cli.max_connections,
        request_bytes: cli.request_bytes,
        response_bytes: cli.response_bytes,
        timeout: cli.timeout,
    };
    let report = churn::run(&config, stop).context("running the churn workload")?;
    drop(guards);
    if let Some(error) = &report.first_error {
        eprintln!(
            "churn: {} client and {} server errors; first: {error}",
            report.client_errors, report.server_errors
        );
    }
    println!("{}", report.line());
    Ok(())
}

fn parse_loopback(value: &str) -> Result<IpAddr, String> {
    let address: IpAddr = value
        .parse()
        .map_err(|error| format!("`{value}` is not an IP address: {error}"))?;
    if address.is_loopback() {
        Ok(address)
    } else {
        Err(format!(
            "`{value}` is not a loopback address; the workload only runs on loopback (127.0.0.1 or ::1)"
        ))
    }
}

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| c.is_ascii_alphabetic()) {
        Some(index) => value.split_at(index),
        None => (value, "s"),
    };
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a duration; use for example 10s or 500ms"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("`{value}`: unknown unit `{unit}`; use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("`{value}`: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_ms_s_m_and_plain_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("ten").is_err());
    }

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert!(parse_loopback("127.0.0.1").is_ok());
        assert!(parse_loopback("::1").is_ok());
        assert!(
            parse_loopback("10.0.0.1")
                .unwrap_err()
                .contains("not a loopback")
        );
    }
}
