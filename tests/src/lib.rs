//! Helpers for the tests that need the real kernel and real peers: privilege checks, real
//! loopback traffic from this process ([`traffic`]) or between two peer processes
//! ([`peer`]), the SYN and SYN-ACK sequence numbers on the wire ([`capture`]), a private mount namespace that hides tracefs ([`mountns`]), child processes
//! that are always reaped ([`process`]), the real rotel collector ([`rotel`]), an
//! in-process OTLP receiver for exact assertions on headers, compression, batching and TLS
//! ([`receiver`]), a TCP front in front of it that injects transport faults ([`fault`]), the
//! real libbpf-tools tcplife ([`tcplife`]), and network namespaces the test creates
//! ([`netns`]), two of them joined by a NAT as a Kubernetes Service joins two pods ([`nat`]).

pub mod agent;
pub mod capture;
pub mod fault;
pub mod mountns;
pub mod nat;
pub mod netns;
pub mod peer;
pub mod process;
pub mod receiver;
pub mod rotel;
pub mod tcplife;
pub mod traffic;

/// Fails the test, with the command to run instead, unless it runs as root: these tests load
/// eBPF programs and must never skip silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads the eBPF probe and needs root; run it as root (scripts/test.sh does)"
    );
}
