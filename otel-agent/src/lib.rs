//! otel-agent: watches every TCP session on a Linux host with an eBPF probe and turns each
//! closed session into an OpenTelemetry span.
//!
//! Data flows one way, and the folders follow it (`docs/ARCHITECTURE.md` draws the flow):
//! `capture/` ([`probe`] loads the kernel probe, [`events`] reads its ring buffer) ->
//! `session/` (a record decoded into a [`session`], with [`clock`], `cgroup` and `container`;
//! [`trace_context`] derives a connection's ids, [`span_context`] decides each span's under
//! the [`link_policy`]) ->
//! `export/` ([`export`]: the OTLP exporters, the span mapping [`export::span`] and the
//! [`export::resource`]) and `sinks/` (the local outputs, `local`: the `console` and
//! `json_lines`). `telemetry/` counts every session ([`accounting`], [`stats`], `metrics`);
//! `app/` wires the stages ([`agent`]; [`pipeline`] carries each session from the reader to
//! the outputs that `routing` chose; [`cli`], [`shutdown`], [`error`]). [`log_text`] is a
//! leaf that every stage may use.
//!
//! Module paths stay flat (`otel_agent::probe`, not `otel_agent::capture::probe`): they are
//! also the targets of the agent's log lines, which users filter on (`OTEL_AGENT_LOG`), so
//! the folders group the files without renaming the modules.

// Capture: the probe in the kernel and the reader of its ring buffer.
#[path = "capture/events.rs"]
pub mod events;
#[path = "capture/probe/mod.rs"]
pub mod probe;

// Session: kernel records decoded into sessions.
#[path = "session/cgroup.rs"]
pub(crate) mod cgroup;
#[path = "session/clock.rs"]
pub mod clock;
#[path = "session/container.rs"]
pub(crate) mod container;
#[path = "session/isn.rs"]
pub mod isn;
#[path = "session/link_policy.rs"]
pub mod link_policy;
#[path = "app/pipeline.rs"]
pub mod pipeline;
#[path = "session/session.rs"]
pub mod session;
#[path = "session/span_context.rs"]
pub mod span_context;
#[path = "session/threshold.rs"]
pub mod threshold;
#[path = "session/trace_context.rs"]
pub mod trace_context;

// Sampling: which sessions the outputs get (the sampler and its rules).
pub mod sampling;

// Export: sessions as OTLP spans, sent to a collector.
pub mod export;

// Sinks: local outputs, each written by its own thread.
#[path = "sinks/console.rs"]
pub(crate) mod console;
#[path = "sinks/json_lines.rs"]
pub(crate) mod json_lines;
#[path = "sinks/local.rs"]
pub(crate) mod local;

// Self-telemetry: every session accounted for, in the logs and the self-metrics.
#[path = "telemetry/accounting.rs"]
pub mod accounting;
#[path = "telemetry/metrics.rs"]
pub(crate) mod metrics;
#[path = "telemetry/stats.rs"]
pub mod stats;

// The application: the command line, the wiring of the stages, shutdown and exit codes.
#[path = "app/agent.rs"]
pub mod agent;
#[path = "app/cli.rs"]
pub mod cli;
#[path = "app/error.rs"]
pub mod error;
#[path = "app/routing.rs"]
pub(crate) mod routing;
#[path = "app/shutdown.rs"]
pub mod shutdown;

// A leaf every stage may use: text made safe for log lines, error chains.
pub mod log_text;
