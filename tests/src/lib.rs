//! Helpers for the tests that need the real kernel and real peers: privilege checks, real
//! loopback traffic ([`traffic`]), child processes that are always reaped ([`process`]), and
//! the real rotel collector ([`rotel`]).

pub mod process;
pub mod rotel;
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
