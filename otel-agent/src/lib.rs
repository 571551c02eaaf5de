//! otel-agent: watches every TCP session on a Linux host with an eBPF probe and turns each
//! closed session into an OpenTelemetry span.
//!
//! Data flows one way: [`probe`] (kernel capture) -> [`events`] (ring buffer, decode) ->
//! [`pipeline`] ([`session`] with [`clock`] conversion) -> [`span`] -> [`export`] (under
//! the [`resource`]), and the [`local`] outputs ([`console`], JSON lines). [`agent`] wires the stages and shuts them down,
//! [`outputs`] decides where sessions go; [`cli`] holds the flags.

pub mod accounting;
pub mod agent;
pub mod cli;
pub mod clock;
pub mod console;
pub mod container;
pub mod error;
pub mod events;
pub mod export;
pub mod local;
pub mod log_text;
pub mod metrics;
pub mod outputs;
pub mod pipeline;
pub mod probe;
pub mod resource;
pub mod session;
pub mod shutdown;
pub mod span;
pub mod stats;
