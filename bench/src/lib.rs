//! The performance harness's building blocks (issue 5): a bounded loopback TCP churn
//! workload ([`churn`]), sysctl changes that undo themselves ([`sysctl`]), a counting OTLP
//! gRPC receiver ([`sink`]) and signal handling that lets RAII guards run on Ctrl-C
//! ([`signals`]). `scripts/bench.sh` drives the binaries built from them.

pub mod churn;
pub mod signals;
pub mod sink;
pub mod sysctl;
