//! The command line: every flag, its `--help` text and its environment equivalent. Parsing
//! here is typed; how the export flags and the standard `OTEL_*` variables combine (and
//! their validation) is decided in [`crate::export::config`].

use std::{os::unix::fs::MetadataExt as _, path::PathBuf, time::Duration};

use clap::{
    Args, Parser, ValueEnum,
    builder::{PossibleValuesParser, TypedValueParser as _},
};
use common::{AF_INET, AF_INET6, Filters, MAX_FILTER_PORTS};

use crate::link_policy::LinkPolicy;
use crate::{
    export::{
        config::{ConfigError, ExportFlags, INDEFINITE_TIMEOUT, MAX_DURATION, OtlpProtocol},
        session_metrics::DEFAULT_CARDINALITY_LIMIT,
        spool::SpoolOptions,
        workload::{DEFAULT_MAX_WORKLOADS, ResourceMode, ResourceSettings},
    },
    probe::{ProbeOptions, StateProbe},
    sampling::{
        SamplingFlags,
        rules::{Network, Rules},
    },
};

/// The most sockets `--max-tracked-sockets` accepts: 2^22, 64 times the default. The
/// kernel preallocates the whole LRU map; a map far larger is refused by the kernel
/// (`E2BIG`) or exhausts its memory.
pub const MAX_TRACKED_SOCKETS: u32 = 1 << 22;

/// Watches every TCP session on this host and turns each closed one into an OpenTelemetry
/// span (start = the session's birth, end = its close), exported over OTLP. Without an OTLP
/// endpoint it prints one tcplife-style line per closed session instead.
#[derive(Debug, Parser)]
#[command(name = "otel-agent", version)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// A subcommand instead of running the agent.
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub export: ExportArgs,

    #[command(flatten)]
    pub probe: ProbeArgs,

    #[command(flatten)]
    pub output: OutputArgs,

    /// The peer networks where agents run, which decide a server span's parent: for a
    /// client in them, the server span is the client span's child; for any other, it has
    /// no parent and a span link to the client span (both stay in one trace, without a
    /// "missing parent" in Jaeger or Tempo). A comma-separated list of networks in CIDR
    /// notation or addresses (IPv4-mapped IPv6 peers match their IPv4 network), `all` or
    /// `none`. Default: loopback and this host's own addresses, read at start.
    #[arg(
        long,
        env = "OTEL_AGENT_LINK_PEERS",
        value_name = "CIDR,...|all|none",
        value_parser = LinkPolicy::parse
    )]
    pub link_peers: Option<LinkPolicy>,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// How long the whole shutdown may take (draining, flushing queued spans to every
    /// output, the last self-metrics); what is not out by then is counted as lost. A
    /// positive duration.
    #[arg(
        long,
        env = "OTEL_AGENT_SHUTDOWN_TIMEOUT",
        default_value = "5s",
        value_parser = parse_positive_duration
    )]
    pub shutdown_timeout: Duration,

    /// How often the agent logs its session accounting and exports its self-metrics (to
    /// the OTLP collector, when exporting). A positive duration.
    #[arg(
        long,
        env = "OTEL_AGENT_STATS_INTERVAL",
        default_value = "60s",
        value_parser = parse_positive_duration
    )]
    pub stats_interval: Duration,

    /// Log filter for the agent's own logs on stderr, in `tracing` EnvFilter syntax
    /// (for example `info` or `otel_agent=debug`).
    #[arg(long, env = "OTEL_AGENT_LOG", default_value = "info")]
    pub log: String,

    /// Format of the agent's own logs on stderr: `text` (one `key=value` line per event) or
    /// `json` (one JSON object per line, its fields at the top level). The final accounting
    /// is one line in either (`final accounting`, its figures in the `json` field).
    #[arg(long, env = "OTEL_AGENT_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// What `otel-agent SUBCOMMAND` does instead of running the agent.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Detach the probe an agent left pinned with --bpf-pin-dir and remove every pin (the
    /// records still waiting in its ring buffer are discarded). Stop the agent first.
    /// Nothing to detach is not an error.
    Detach {
        /// The pin directory given to the agent.
        #[arg(long, env = "OTEL_AGENT_BPF_PIN_DIR", value_name = "DIR")]
        bpf_pin_dir: PathBuf,
    },
}

/// How the agent's own logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where spans go and how they are batched. Flags win over the standard variables named in
/// each help text.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// OTLP base endpoint, for example http://127.0.0.1:4317 (gRPC) or
    /// http://127.0.0.1:4318 (HTTP; /v1/traces is appended); https:// for TLS. Environment:
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is), OTEL_EXPORTER_OTLP_ENDPOINT. With
    /// none of them, sessions are printed to stdout instead of exported.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport. Environment: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    /// OTEL_EXPORTER_OTLP_PROTOCOL. Default: http/protobuf.
    #[arg(long, value_name = "PROTOCOL", value_parser = protocol_parser())]
    pub otlp_protocol: Option<OtlpProtocol>,

    /// Request headers, for example an authentication token: comma-separated key=value
    /// pairs, values percent-encoded. Environment: OTEL_EXPORTER_OTLP_TRACES_HEADERS,
    /// OTEL_EXPORTER_OTLP_HEADERS. Never logged.
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub otlp_headers: Option<String>,

    /// Compression of export requests: gzip or none. Environment:
    /// OTEL_EXPORTER_OTLP_TRACES_COMPRESSION, OTEL_EXPORTER_OTLP_COMPRESSION. Default: none.
    #[arg(long, value_name = "gzip|none")]
    pub otlp_compression: Option<String>,

    /// Timeout of one export request, like 10s; 0 means no limit (as the specification
    /// says; in practice 2^31-1 ms). Environment (milliseconds):
    /// OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, OTEL_EXPORTER_OTLP_TIMEOUT. Default: 10s.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub otlp_timeout: Option<Duration>,

    /// CA certificate (PEM) that signed the collector's certificate, for an https://
    /// endpoint. Environment: OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
    /// OTEL_EXPORTER_OTLP_CERTIFICATE.
    #[arg(long, value_name = "PATH")]
    pub otlp_certificate: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS. Environment:
    /// OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE.
    #[arg(long, value_name = "PATH")]
    pub otlp_client_certificate: Option<PathBuf>,

    /// Private key (PEM) of the client certificate. Environment:
    /// OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY, OTEL_EXPORTER_OTLP_CLIENT_KEY.
    #[arg(long, value_name = "PATH")]
    pub otlp_client_key: Option<PathBuf>,

    /// Spans held for export at most (waiting, in flight or awaiting a retry); beyond it
    /// spans are dropped (and counted). Environment: OTEL_BSP_MAX_QUEUE_SIZE. Default: 32768.
    #[arg(long, value_name = "SPANS", value_parser = parse_positive)]
    pub bsp_max_queue_size: Option<usize>,

    /// Spans sent in one export request at most. Environment:
    /// OTEL_BSP_MAX_EXPORT_BATCH_SIZE. Default: 512.
    #[arg(long, value_name = "SPANS", value_parser = parse_positive)]
    pub bsp_max_export_batch_size: Option<usize>,

    /// Longest wait before queued spans are exported, like 5s; positive. Environment
    /// (milliseconds): OTEL_BSP_SCHEDULE_DELAY. Default: 5s.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub bsp_schedule_delay: Option<Duration>,

    /// Export requests in flight at once: the next batch is encoded and sent while the
    /// collector still works on earlier ones. Environment: OTEL_BSP_MAX_CONCURRENT_EXPORTS.
    /// Default: 4.
    #[arg(long, value_name = "REQUESTS", value_parser = parse_positive)]
    pub bsp_max_concurrent_exports: Option<usize>,

    /// Keep export requests the collector cannot take now (down, slow, or not by the
    /// shutdown deadline) in this directory instead of dropping them, and deliver them,
    /// oldest first, once it takes spans again (this agent or the next one). Created if
    /// missing (mode 0700); one agent per directory. Off by default.
    #[arg(long, env = "OTEL_AGENT_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Bytes the spool may hold: a number of bytes, or with KiB, MiB or GiB (like 512MiB),
    /// at least 1MiB; beyond it the oldest requests are dropped (and counted).
    #[arg(long, env = "OTEL_AGENT_SPOOL_MAX_BYTES", value_name = "BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub spool_max_bytes: u64,

    /// Which resource each span goes under: `workload`, one per container (all its
    /// processes) or, outside containers, per executable, with service.name = the
    /// executable's name, process.executable.name and container.id, so that service maps
    /// and the collector's k8sattributes tell workloads apart; `process`, one per process
    /// (adds process.pid); `single`, the agent's one resource. Default: `single` when
    /// OTEL_SERVICE_NAME or service.name in OTEL_RESOURCE_ATTRIBUTES names the service (a
    /// sidecar: the pod is the service), else `workload`. The session metrics go under the
    /// same resource as the session's span. Replaces --resource-per-process.
    #[arg(
        long,
        env = "OTEL_AGENT_RESOURCE_MODE",
        value_enum,
        value_name = "MODE"
    )]
    pub resource_mode: Option<ResourceModeFlag>,

    /// Workload (or process) resources live at once at most; a session of a new workload
    /// beyond it goes under one overflow resource (otel_agent.workload.overflow=true) and is
    /// counted (degraded_workload_overflow). A workload leaves after 5 minutes without
    /// sessions. Each live workload holds its session metrics (one meter provider).
    #[arg(
        long,
        env = "OTEL_AGENT_MAX_WORKLOADS",
        value_name = "N",
        default_value_t = DEFAULT_MAX_WORKLOADS,
        value_parser = parse_max_workloads
    )]
    pub max_workloads: usize,

    /// The cgroup v2 hierarchy in which the owners' cgroup ids are looked up for their
    /// container ids: the host's, when the agent runs in a container (mount the host's
    /// /sys/fs/cgroup read-only, say at /host/sys/fs/cgroup). Default: the cgroup2 mount
    /// in /proc/self/mountinfo.
    #[arg(long, env = "OTEL_AGENT_CGROUP_ROOT", value_name = "PATH", value_parser = parse_directory)]
    pub cgroup_root: Option<PathBuf>,
}

/// `--resource-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResourceModeFlag {
    Workload,
    Process,
    Single,
}

/// Local outputs: tcplife's console and OTLP JSON lines.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print tcplife lines on stdout even when exporting (without an endpoint they are
    /// printed anyway).
    #[arg(long, env = "OTEL_AGENT_CONSOLE")]
    pub console: bool,

    /// tcplife -T: a TIME column (HH:MM:SS, local time of the close).
    #[arg(short = 'T', long, env = "OTEL_AGENT_CONSOLE_TIME")]
    pub time: bool,

    /// tcplife -t: a TIME(s) column (seconds since the first session printed).
    #[arg(short = 't', long, env = "OTEL_AGENT_CONSOLE_TIMESTAMP")]
    pub timestamp: bool,

    /// tcplife -w: wide columns that fit IPv6 addresses, and an IP version column.
    #[arg(short = 'w', long, env = "OTEL_AGENT_CONSOLE_WIDE")]
    pub wide: bool,

    /// tcplife -s: comma-separated values.
    #[arg(short = 's', long, env = "OTEL_AGENT_CONSOLE_CSV")]
    pub csv: bool,

    /// Lines the console may hold while stdout is not being read (a paused pager, a stuck
    /// pipe); sessions beyond are not printed and are counted (`lost_output_full`).
    #[arg(
        long,
        env = "OTEL_AGENT_CONSOLE_QUEUE_SIZE",
        value_name = "LINES",
        default_value_t = 32_768,
        value_parser = parse_positive
    )]
    pub console_queue_size: usize,

    /// Also write every span as OTLP JSON (one ExportTraceServiceRequest per line) to this
    /// file, or to stdout with `-`.
    #[arg(long, env = "OTEL_AGENT_JSON_OUTPUT", value_name = "PATH|-")]
    pub json_output: Option<PathBuf>,
}

/// What the probe watches, decided in the kernel at load time (tcplife's filters and more).
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Only sessions owned by this process id (positive: the kernel filter reads 0 as "no
    /// filter").
    #[arg(short = 'p', long, env = "OTEL_AGENT_PID", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,

    /// Only sessions with one of these local ports (comma-separated, at most 16).
    #[arg(short = 'L', long, env = "OTEL_AGENT_LOCAL_PORTS", value_name = "PORTS", value_parser = parse_ports)]
    pub local_ports: Option<PortList>,

    /// Only sessions with one of these remote ports (comma-separated, at most 16).
    #[arg(short = 'D', long, env = "OTEL_AGENT_REMOTE_PORTS", value_name = "PORTS", value_parser = parse_ports)]
    pub remote_ports: Option<PortList>,

    /// Only IPv4 sessions (IPv4-mapped IPv6 included).
    #[arg(
        short = '4',
        long,
        env = "OTEL_AGENT_IPV4_ONLY",
        conflicts_with = "ipv6"
    )]
    pub ipv4: bool,

    /// Only IPv6 sessions (IPv4-mapped IPv6 excluded).
    #[arg(short = '6', long, env = "OTEL_AGENT_IPV6_ONLY")]
    pub ipv6: bool,

    /// Only sessions in this network namespace: an inode number (`stat -L -c %i
    /// /proc/PID/ns/net`) or `self` for the agent's own (a sidecar's pod).
    #[arg(long, env = "OTEL_AGENT_NETNS", value_name = "INODE|self", value_parser = parse_netns)]
    pub netns: Option<u32>,

    /// Also report the agent's own sessions (for example to the collector); by default they
    /// are left out, so that exporting never produces more sessions to export.
    #[arg(long, env = "OTEL_AGENT_INCLUDE_OWN_SESSIONS")]
    pub include_own_sessions: bool,

    /// Skip sessions that were already open when the agent started (tcplife's behaviour);
    /// by default they are reported at close with the agent's start as their start.
    #[arg(long, env = "OTEL_AGENT_SKIP_UNKNOWN_BIRTH")]
    pub skip_unknown_birth: bool,

    /// Open sockets the probe can track at once (LRU: the oldest is evicted beyond this, and
    /// reported at close with an unknown birth): 64 to 4194304 (the kernel preallocates
    /// every entry, about 100 bytes each).
    #[arg(long, env = "OTEL_AGENT_MAX_TRACKED_SOCKETS", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(64..=i64::from(MAX_TRACKED_SOCKETS)))]
    pub max_tracked_sockets: u32,

    /// The kernel's BTF, from which struct offsets are read (for kernels that ship it
    /// elsewhere). Without it the agent runs, without byte counts and the facts that need
    /// offsets.
    #[arg(long, env = "OTEL_AGENT_BTF", value_name = "PATH", default_value = crate::probe::btf::VMLINUX_BTF)]
    pub btf: PathBuf,

    /// Size of the kernel-to-agent ring buffer in bytes: a power of two, at least 4096.
    #[arg(long, env = "OTEL_AGENT_RING_BUFFER_BYTES", default_value_t = 1 << 22, value_parser = parse_ring_buffer_bytes)]
    pub ring_buffer_bytes: u32,

    /// How the probe attaches to `sock:inet_sock_set_state`. `raw-tracepoint` is skipped by
    /// the kernel (`lost_probe_skipped`) only while the probe itself runs on that CPU, not
    /// while any BPF tracing program does (a backup program then handles the state change),
    /// for about 140 ns more per state change; it needs the kernel's BTF (without it, the
    /// tracepoint is used).
    #[arg(long, env = "OTEL_AGENT_ATTACH", value_enum, default_value_t = AttachType::Tracepoint)]
    pub attach: AttachType,

    /// Pin the probe under this directory on a BPF filesystem (for example
    /// /sys/fs/bpf/otel-agent) so that it keeps running while no agent does, and take over
    /// what a previous agent pinned there: no session is missed across a restart or an
    /// upgrade. On stop the probe stays attached; `otel-agent detach --bpf-pin-dir DIR`
    /// removes it. Off by default.
    #[arg(long, env = "OTEL_AGENT_BPF_PIN_DIR", value_name = "DIR")]
    pub bpf_pin_dir: Option<PathBuf>,
}

/// Volume control (README "Sampling"): which sessions the outputs get (the sampler and the
/// rules that override it), and the session metrics, which count every session before them.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// The sampler: always_on, always_off, traceidratio, parentbased_always_on,
    /// parentbased_always_off or parentbased_traceidratio (parentbased_X decides as X: a
    /// session's parent is derived, not propagated). Environment: OTEL_TRACES_SAMPLER.
    /// Default: parentbased_always_on (every session).
    #[arg(long, value_name = "SAMPLER")]
    pub traces_sampler: Option<String>,

    /// The ratio of the traceidratio samplers, from 0 to 1 (consistent: both ends of a
    /// connection decide alike). Environment: OTEL_TRACES_SAMPLER_ARG. Default: 1.
    #[arg(long, value_name = "RATIO")]
    pub traces_sampler_arg: Option<String>,

    /// Keep every failed session (never established, reset, aborted), whatever the sampler
    /// says: true or false.
    #[arg(
        long,
        env = "OTEL_AGENT_SAMPLE_KEEP_FAILED",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub sample_keep_failed: bool,

    /// Keep every session that lasted at least this long, like 30s, whatever the sampler
    /// says. A positive duration.
    #[arg(long, env = "OTEL_AGENT_SAMPLE_KEEP_LONGER_THAN", value_name = "DURATION", value_parser = parse_positive_duration)]
    pub sample_keep_longer_than: Option<Duration>,

    /// Leave out sessions whose local port is one of these (comma-separated), whatever
    /// the sampler and the keep rules say.
    #[arg(long, env = "OTEL_AGENT_SAMPLE_DROP_LOCAL_PORTS", value_name = "PORTS", value_parser = parse_any_ports)]
    pub sample_drop_local_ports: Option<PortList>,

    /// Leave out sessions whose peer port is one of these (comma-separated).
    #[arg(long, env = "OTEL_AGENT_SAMPLE_DROP_PEER_PORTS", value_name = "PORTS", value_parser = parse_any_ports)]
    pub sample_drop_peer_ports: Option<PortList>,

    /// Leave out sessions whose peer address is in one of these networks (comma-separated,
    /// like 10.0.0.0/8,fd00::/8; an IPv4-mapped address matches its IPv4 network).
    #[arg(long, env = "OTEL_AGENT_SAMPLE_DROP_PEER_NETWORKS", value_name = "CIDR,...", value_parser = parse_networks)]
    pub sample_drop_peer_networks: Option<Networks>,

    /// Leave out sessions whose owner's task name (comm, at most 15 bytes) or executable's
    /// file name (process.executable.name, at most 47 bytes kept) is one of these
    /// (comma-separated, exact).
    #[arg(long, env = "OTEL_AGENT_SAMPLE_DROP_PROCESSES", value_name = "NAME,...", value_parser = parse_process_names)]
    pub sample_drop_processes: Option<ProcessNames>,

    /// Leave out sessions whose owner runs in one of these containers (comma-separated
    /// container ids, full or shortened to at least 12 hex digits like `docker ps` shows
    /// them; matched as a prefix of container.id).
    #[arg(long, env = "OTEL_AGENT_SAMPLE_DROP_CONTAINERS", value_name = "ID,...", value_parser = parse_container_ids)]
    pub sample_drop_containers: Option<ContainerIds>,

    /// Export the session metrics (tcp.session.duration, tcp.session.payload) next to the
    /// spans, counted before the sampler and its rules: true or false. Interval:
    /// OTEL_METRIC_EXPORT_INTERVAL (ms, default 60000); temporality:
    /// OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE (default cumulative).
    #[arg(
        long,
        env = "OTEL_AGENT_SESSION_METRICS",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub session_metrics: bool,

    /// Attribute sets of tcp.session.duration at most (tcp.session.payload: twice, one per
    /// direction); sessions beyond are counted in one series with otel.metric.overflow=true,
    /// so that a port scan cannot grow memory without limit. A positive integer.
    #[arg(
        long,
        env = "OTEL_AGENT_SESSION_METRICS_CARDINALITY_LIMIT",
        value_name = "SETS",
        default_value_t = DEFAULT_CARDINALITY_LIMIT,
        value_parser = parse_positive
    )]
    pub session_metrics_cardinality_limit: usize,
}

impl SamplingArgs {
    /// The sampling flags as plain values, for [`crate::sampling::Sampler::resolve`].
    pub fn flags(&self) -> SamplingFlags {
        SamplingFlags {
            sampler: self.traces_sampler.clone(),
            sampler_arg: self.traces_sampler_arg.clone(),
            rules: Rules {
                keep_failed: self.sample_keep_failed,
                keep_longer_than: self.sample_keep_longer_than,
                drop_local_ports: self
                    .sample_drop_local_ports
                    .clone()
                    .map_or_else(Vec::new, |PortList(ports)| ports),
                drop_peer_ports: self
                    .sample_drop_peer_ports
                    .clone()
                    .map_or_else(Vec::new, |PortList(ports)| ports),
                drop_peer_networks: self
                    .sample_drop_peer_networks
                    .clone()
                    .map_or_else(Vec::new, |Networks(networks)| networks),
                drop_processes: self
                    .sample_drop_processes
                    .clone()
                    .map_or_else(Vec::new, |ProcessNames(names)| names),
                drop_containers: self
                    .sample_drop_containers
                    .clone()
                    .map_or_else(Vec::new, |ContainerIds(ids)| ids),
            },
        }
    }
}

/// IP networks of a drop rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Networks(Vec<Network>);

/// Task or executable names of a drop rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessNames(Vec<String>);

/// Container ids (or their prefixes) of a drop rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerIds(Vec<String>);

/// The ports of a drop rule: any number.
fn parse_any_ports(text: &str) -> Result<PortList, String> {
    text.split(',')
        .map(|port| {
            port.trim()
                .parse::<u16>()
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| format!("`{port}` is not a port (1-65535)"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(PortList)
}

fn parse_networks(text: &str) -> Result<Networks, String> {
    text.split(',')
        .map(Network::parse)
        .collect::<Result<Vec<_>, _>>()
        .map(Networks)
}

/// The longest name a process rule can match: an executable's file name as the probe keeps
/// it (`EXE_LEN` - 1 bytes; a task name has at most 15).
const MAX_PROCESS_NAME_LEN: usize = common::EXE_LEN - 1;

fn parse_process_names(text: &str) -> Result<ProcessNames, String> {
    text.split(',')
        .map(|name| {
            let name = name.trim();
            if name.is_empty() || name.len() > MAX_PROCESS_NAME_LEN {
                Err(format!(
                    "`{name}` is not a process name: 1 to {MAX_PROCESS_NAME_LEN} bytes, a task \
                     name as `comm` shows it or an executable's file name"
                ))
            } else {
                Ok(name.to_owned())
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(ProcessNames)
}

/// The shortest container id prefix a drop rule takes: Docker's short id.
const MIN_CONTAINER_PREFIX: usize = 12;

fn parse_container_ids(text: &str) -> Result<ContainerIds, String> {
    text.split(',')
        .map(|id| {
            let id = id.trim();
            if (MIN_CONTAINER_PREFIX..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                Ok(id.to_owned())
            } else {
                Err(format!(
                    "`{id}` is not a container id: {MIN_CONTAINER_PREFIX} to 64 lowercase hex \
                     digits, the id or its start as `docker ps` or `crictl ps` shows it"
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(ContainerIds)
}

impl ExportArgs {
    /// The resource settings, when the user does or does not name the service (`named`).
    pub fn resources(&self, named: bool) -> Result<ResourceSettings, ConfigError> {
        let mode = self.resource_mode.map(|mode| match mode {
            ResourceModeFlag::Workload => ResourceMode::Workload,
            ResourceModeFlag::Process => ResourceMode::Process,
            ResourceModeFlag::Single => ResourceMode::Single,
        });
        ResourceSettings::resolve(mode, self.max_workloads, named)
    }

    /// The export flags as plain values, for [`crate::export::config::ExportConfig::resolve`].
    pub fn flags(&self) -> ExportFlags {
        ExportFlags {
            otlp_endpoint: self.otlp_endpoint.clone(),
            otlp_protocol: self.otlp_protocol,
            otlp_headers: self.otlp_headers.clone(),
            otlp_compression: self.otlp_compression.clone(),
            otlp_timeout: self.otlp_timeout,
            otlp_certificate: self.otlp_certificate.clone(),
            otlp_client_certificate: self.otlp_client_certificate.clone(),
            otlp_client_key: self.otlp_client_key.clone(),
            bsp_max_queue_size: self.bsp_max_queue_size,
            bsp_max_export_batch_size: self.bsp_max_export_batch_size,
            bsp_schedule_delay: self.bsp_schedule_delay,
            bsp_max_concurrent_exports: self.bsp_max_concurrent_exports,
        }
    }

    /// The spool's options, if `--spool-dir` is given.
    pub fn spool(&self) -> Option<SpoolOptions> {
        Some(SpoolOptions {
            dir: self.spool_dir.clone()?,
            max_bytes: self.spool_max_bytes,
        })
    }
}

/// The smallest `--spool-max-bytes`: room for a few large requests.
const MIN_SPOOL_BYTES: u64 = 1 << 20;

/// Parses a size in bytes, or with a KiB, MiB or GiB suffix, of at least [`MIN_SPOOL_BYTES`].
fn parse_bytes(text: &str) -> Result<u64, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let scale = match unit {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "`{text}` is not a size; use bytes or KiB, MiB, GiB, like 512MiB"
            ));
        }
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| {
            format!("`{text}` is not a size; use bytes or KiB, MiB, GiB, like 512MiB")
        })?;
    if bytes < MIN_SPOOL_BYTES {
        return Err(format!("`{text}` is too small: at least 1MiB"));
    }
    Ok(bytes)
}

/// Ports of one filter, at most [`MAX_FILTER_PORTS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(Vec<u16>);

impl ProbeArgs {
    /// The probe's load-time options.
    pub fn options(&self) -> ProbeOptions {
        let mut filters = Filters {
            pid: self.pid.unwrap_or(0),
            exclude_pid: if self.include_own_sessions {
                0
            } else {
                std::process::id()
            },
            netns: self.netns.unwrap_or(0),
            family: if self.ipv4 {
                AF_INET
            } else if self.ipv6 {
                AF_INET6
            } else {
                0
            },
            ..Filters::default()
        };
        if let Some(PortList(ports)) = &self.local_ports {
            filters.local_ports[..ports.len()].copy_from_slice(ports);
            filters.local_port_count = ports.len() as u16;
        }
        if let Some(PortList(ports)) = &self.remote_ports {
            filters.remote_ports[..ports.len()].copy_from_slice(ports);
            filters.remote_port_count = ports.len() as u16;
        }
        ProbeOptions {
            btf: self.btf.clone(),
            filters,
            report_unknown_birth: !self.skip_unknown_birth,
            max_tracked_sockets: self.max_tracked_sockets,
            ring_buffer_bytes: self.ring_buffer_bytes,
            state_probe: match self.attach {
                AttachType::Tracepoint => StateProbe::Tracepoint,
                AttachType::RawTracepoint => StateProbe::RawTracepoint,
            },
            pin_dir: self.bpf_pin_dir.clone(),
        }
    }
}

fn parse_ports(text: &str) -> Result<PortList, String> {
    let PortList(ports) = parse_any_ports(text)?;
    if ports.len() > MAX_FILTER_PORTS {
        return Err(format!(
            "at most {MAX_FILTER_PORTS} ports, got {}",
            ports.len()
        ));
    }
    Ok(PortList(ports))
}

fn parse_netns(text: &str) -> Result<u32, String> {
    if text == "self" {
        let metadata = std::fs::metadata("/proc/self/ns/net")
            .map_err(|error| format!("cannot read /proc/self/ns/net: {error}"))?;
        return u32::try_from(metadata.ino())
            .map_err(|_| "namespace inode out of range".to_owned());
    }
    text.parse::<u32>()
        .ok()
        .filter(|&inode| inode != 0)
        .ok_or_else(|| format!("`{text}` is neither `self` nor a namespace inode number"))
}

fn parse_ring_buffer_bytes(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|bytes| bytes.is_power_of_two() && *bytes >= 4096)
        .ok_or_else(|| format!("`{text}` is not a power of two of at least 4096"))
}

/// How the state-change program attaches (`--attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttachType {
    /// A classic tracepoint (through tracefs and perf events).
    Tracepoint,
    /// A raw tracepoint (reads the socket at offsets from BTF).
    RawTracepoint,
}

/// `--otlp-protocol`: one of the [`OtlpProtocol`] names (listed by `--help` and by the
/// error for any other value).
fn protocol_parser() -> impl clap::builder::TypedValueParser<Value = OtlpProtocol> {
    PossibleValuesParser::new(OtlpProtocol::ALL.map(OtlpProtocol::name)).try_map(|name| {
        OtlpProtocol::from_name(&name).ok_or_else(|| format!("`{name}` is not an OTLP protocol"))
    })
}

/// Parses a path that must name a directory.
fn parse_directory(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if path.is_dir() {
        Ok(path)
    } else {
        Err(format!("`{text}` is not a directory"))
    }
}

/// The largest `--max-workloads`: beyond, a batch could carry as many resources as spans.
const MAX_WORKLOADS_LIMIT: usize = 65_536;

/// Parses `--max-workloads`: 1 to [`MAX_WORKLOADS_LIMIT`].
fn parse_max_workloads(text: &str) -> Result<usize, String> {
    parse_positive(text)?;
    text.parse::<usize>()
        .ok()
        .filter(|&n| n <= MAX_WORKLOADS_LIMIT)
        .ok_or_else(|| format!("`{text}` is more than {MAX_WORKLOADS_LIMIT}"))
}

/// Parses a positive integer.
fn parse_positive(text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{text}` is not a positive integer"))
}

/// The units a duration may use: milliseconds, seconds, minutes.
const DURATION_UNITS: [&str; 3] = ["ms", "s", "m"];

/// Parses `500ms`, `5s` or `2m` (or a sum such as `1m30s`), at most [`MAX_DURATION`], with
/// humantime, in the units of [`DURATION_UNITS`] only.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let error = || format!("`{text}` is not a duration; use a number with ms, s or m, like 5s");
    let known_units = text
        .split(|c: char| !c.is_alphabetic())
        .filter(|unit| !unit.is_empty())
        .all(|unit| DURATION_UNITS.contains(&unit));
    if !known_units || !text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(error());
    }
    match humantime::parse_duration(text) {
        Ok(duration) if duration <= MAX_DURATION => Ok(duration),
        Ok(_) | Err(humantime::DurationError::NumberOverflow) if !number_overflows(text) => {
            Err(format!(
                "`{text}` is too long: at most {}ms (about 24 days)",
                MAX_DURATION.as_millis()
            ))
        }
        Ok(_) | Err(_) => Err(error()),
    }
}

/// Whether a number of `text` does not fit in 64 bits (not a duration at all, rather than
/// one that is too long).
fn number_overflows(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|number| !number.is_empty() && number.parse::<u64>().is_err())
}

/// Parses a duration that must not be zero (a period, a deadline).
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!(
            "`{text}` is zero; use a positive duration, like 5s"
        )),
        duration => Ok(duration),
    }
}

/// Parses a timeout: zero means no limit, as the specification says of timeouts.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Ok(INDEFINITE_TIMEOUT),
        timeout => Ok(timeout),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn durations_take_ms_s_and_m() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(
            parse_duration("5"),
            Err("`5` is not a duration; use a number with ms, s or m, like 5s".to_owned())
        );
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn durations_are_bounded_and_zero_means_what_each_flag_says() {
        assert_eq!(
            parse_duration("2147483647ms"),
            Ok(Duration::from_millis(2_147_483_647))
        );
        let too_long = "`2147483648ms` is too long: at most 2147483647ms (about 24 days)";
        assert_eq!(parse_duration("2147483648ms"), Err(too_long.to_owned()));
        assert!(
            parse_duration("99999999999999999m")
                .unwrap_err()
                .contains("too long")
        );
        assert!(
            parse_duration("99999999999999999999s")
                .unwrap_err()
                .contains("not a duration")
        );
        assert_eq!(
            parse_positive_duration("0s"),
            Err("`0s` is zero; use a positive duration, like 5s".to_owned())
        );
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_timeout("0ms"), Ok(INDEFINITE_TIMEOUT));
        assert_eq!(parse_timeout("3s"), Ok(Duration::from_secs(3)));
        let error = |args: &[&str]| {
            let mut argv = vec!["otel-agent"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).unwrap_err()
        };
        for flag in [
            "--stats-interval",
            "--shutdown-timeout",
            "--bsp-schedule-delay",
        ] {
            let error = error(&[flag, "0s"]);
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
            assert!(error.to_string().contains(flag), "{error}");
            assert!(error.to_string().contains("is zero"), "{error}");
        }
        let cli = Cli::try_parse_from(["otel-agent", "--otlp-timeout", "0s"]).unwrap();
        assert_eq!(cli.export.otlp_timeout, Some(INDEFINITE_TIMEOUT));
    }

    #[test]
    fn resource_mode_and_max_workloads_are_validated() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["otel-agent"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(|cli| cli.export)
        };
        let default = parse(&[]).unwrap();
        assert_eq!(default.resource_mode, None);
        assert_eq!(default.max_workloads, DEFAULT_MAX_WORKLOADS);
        assert_eq!(
            default.resources(false).unwrap().mode,
            ResourceMode::Workload
        );
        assert_eq!(default.resources(true).unwrap().mode, ResourceMode::Single);
        assert_eq!(default.cgroup_root, None);
        let root = parse(&["--cgroup-root", "/sys"]).unwrap();
        assert_eq!(root.cgroup_root, Some(PathBuf::from("/sys")));
        let process = parse(&["--resource-mode", "process", "--max-workloads", "65536"]).unwrap();
        assert_eq!(
            process.resources(false),
            Ok(ResourceSettings {
                mode: ResourceMode::Process,
                max_workloads: 65_536
            })
        );
        for (args, says) in [
            (&["--resource-mode", "pod"][..], "invalid value 'pod'"),
            (&["--max-workloads", "0"][..], "is not a positive integer"),
            (&["--max-workloads", "65537"][..], "is more than 65536"),
            (&["--resource-per-process"][..], "unexpected argument"),
            (&["--cgroup-root", "/nonexistent"][..], "is not a directory"),
        ] {
            let error = parse(args).unwrap_err().to_string();
            assert!(error.contains(says), "{args:?}: {error}");
            assert!(error.contains(args[0]), "{args:?}: {error}");
        }
    }

    #[test]
    fn max_tracked_sockets_is_bounded_before_the_kernel_refuses_it() {
        let parse = |value: &str| {
            Cli::try_parse_from(["otel-agent", "--max-tracked-sockets", value])
                .map(|cli| cli.probe.max_tracked_sockets)
        };
        assert_eq!(parse("4194304").unwrap(), MAX_TRACKED_SOCKETS);
        for value in ["4194305", "4294967295", "63"] {
            let error = parse(value).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
            assert!(error.to_string().contains("64..=4194304"), "{error}");
        }
    }

    #[test]
    fn the_protocol_flag_takes_the_otel_names() {
        let cli = Cli::try_parse_from(["otel-agent", "--otlp-protocol", "http/protobuf"]).unwrap();
        assert_eq!(cli.export.otlp_protocol, Some(OtlpProtocol::HttpProtobuf));
        let error =
            Cli::try_parse_from(["otel-agent", "--otlp-protocol", "http/json"]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("[possible values: grpc, http/protobuf]"),
            "{error}"
        );
    }

    #[test]
    fn tcplife_filter_flags_become_kernel_filters() {
        let cli = Cli::try_parse_from([
            "otel-agent",
            "-p",
            "42",
            "-L",
            "80,443",
            "-D",
            "5432",
            "-6",
            "--netns",
            "4026531840",
            "--skip-unknown-birth",
            "--max-tracked-sockets",
            "1024",
            "--ring-buffer-bytes",
            "65536",
            "--attach",
            "raw-tracepoint",
        ])
        .unwrap();
        let options = cli.probe.options();
        assert_eq!(options.filters.pid, 42);
        assert_eq!(options.filters.family, AF_INET6);
        assert_eq!(options.filters.netns, 4_026_531_840);
        assert_eq!(options.filters.local_port_count, 2);
        assert_eq!(&options.filters.local_ports[..3], &[80, 443, 0]);
        assert_eq!(options.filters.remote_port_count, 1);
        assert_eq!(options.filters.remote_ports[0], 5432);
        assert!(!options.report_unknown_birth);
        assert_eq!(options.max_tracked_sockets, 1024);
        assert_eq!(options.ring_buffer_bytes, 65_536);
        assert_eq!(options.state_probe, StateProbe::RawTracepoint);
    }

    #[test]
    fn defaults_filter_nothing() {
        let options = Cli::try_parse_from(["otel-agent"]).unwrap().probe.options();
        assert_eq!(
            options.filters,
            Filters {
                exclude_pid: std::process::id(),
                ..Filters::default()
            }
        );
        let with_own = Cli::try_parse_from(["otel-agent", "--include-own-sessions"]).unwrap();
        assert_eq!(with_own.probe.options().filters.exclude_pid, 0);
        assert!(options.report_unknown_birth);
    }

    #[test]
    fn bad_filter_values_name_the_flag_and_the_rule() {
        let error = |args: &[&str]| {
            let mut argv = vec!["otel-agent"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).unwrap_err().to_string()
        };
        assert!(error(&["-L", "80,x"]).contains("`x` is not a port (1-65535)"));
        let seventeen = (1..=17)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(error(&["-D", &seventeen]).contains("at most 16 ports, got 17"));
        assert!(error(&["--netns", "abc"]).contains("neither `self` nor a namespace inode"));
        assert!(error(&["--ring-buffer-bytes", "5000"]).contains("not a power of two"));
        assert!(error(&["-4", "-6"]).contains("cannot be used with"));
        assert!(error(&["--max-tracked-sockets", "3"]).contains("--max-tracked-sockets"));
        assert!(
            error(&["-p", "0"]).contains("0 is not in 1..=4294967295"),
            "{}",
            error(&["-p", "0"])
        );
    }

    #[test]
    fn the_spool_is_off_by_default_and_its_size_takes_binary_units() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["otel-agent"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(|cli| cli.export.spool())
        };
        assert_eq!(parse(&[]).unwrap(), None);
        let spool = |max_bytes| {
            Some(SpoolOptions {
                dir: "/var/spool/x".into(),
                max_bytes,
            })
        };
        assert_eq!(
            parse(&["--spool-dir", "/var/spool/x"]).unwrap(),
            spool(1 << 30)
        );
        for (size, bytes) in [
            ("1048576", 1 << 20),
            ("512MiB", 512 << 20),
            ("2GiB", 2 << 30),
        ] {
            assert_eq!(
                parse(&["--spool-dir", "/var/spool/x", "--spool-max-bytes", size]).unwrap(),
                spool(bytes),
                "{size}"
            );
        }
        for (size, message) in [
            ("1KiB", "`1KiB` is too small: at least 1MiB"),
            ("0", "`0` is too small"),
            (
                "5MB",
                "`5MB` is not a size; use bytes or KiB, MiB, GiB, like 512MiB",
            ),
            ("-1", "`-1` is not a size"),
            ("99999999999GiB", "`99999999999GiB` is not a size"),
        ] {
            let error = parse(&[&format!("--spool-max-bytes={size}")]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
            let text = error.to_string();
            assert!(
                text.contains(message) && text.contains("--spool-max-bytes"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_pin_directory_is_off_by_default_and_detach_is_a_subcommand() {
        let plain = Cli::try_parse_from(["otel-agent", "-L", "80"]).unwrap();
        assert!(plain.command.is_none());
        assert_eq!(plain.probe.options().pin_dir, None);
        let pinned = Cli::try_parse_from(["otel-agent", "--bpf-pin-dir", "/sys/fs/bpf/a"]).unwrap();
        assert_eq!(
            pinned.probe.options().pin_dir,
            Some(PathBuf::from("/sys/fs/bpf/a"))
        );
        let detach =
            Cli::try_parse_from(["otel-agent", "detach", "--bpf-pin-dir", "/sys/fs/bpf/a"])
                .unwrap();
        assert!(matches!(
            detach.command,
            Some(Command::Detach { bpf_pin_dir }) if bpf_pin_dir == Path::new("/sys/fs/bpf/a")
        ));
        // The agent's flags do not mix with a subcommand.
        assert!(
            Cli::try_parse_from(["otel-agent", "-L", "80", "detach", "--bpf-pin-dir", "/x"])
                .is_err()
        );
    }

    #[test]
    fn netns_self_is_this_process_namespace() {
        let expected = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(parse_netns("self"), Ok(expected as u32));
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn link_peers_takes_networks_all_or_none() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["otel-agent"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(|cli| cli.link_peers)
        };
        assert_eq!(
            parse(&[]).unwrap(),
            None,
            "the default is resolved at start"
        );
        assert_eq!(
            parse(&["--link-peers", "all"]).unwrap(),
            Some(LinkPolicy::All)
        );
        assert_eq!(
            parse(&["--link-peers", "none"]).unwrap(),
            Some(LinkPolicy::Nothing)
        );
        let networks = parse(&["--link-peers", "10.0.0.0/8,fd00::/8"])
            .unwrap()
            .unwrap();
        assert_eq!(networks.to_string(), "10.0.0.0/8,fd00::/8");
        for bad in ["10.0.0.0/40", "10.0.0.1/8", "pods", "", "all,none"] {
            let error = parse(&["--link-peers", bad]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
            let text = error.to_string();
            assert!(text.contains("--link-peers"), "{text}");
            assert!(text.contains("CIDR notation"), "{text}");
        }
    }

    #[test]
    fn sampling_flags_become_rules_and_bad_values_name_the_flag() {
        let cli = Cli::try_parse_from([
            "otel-agent",
            "--traces-sampler",
            "traceidratio",
            "--traces-sampler-arg",
            "0.1",
            "--sample-keep-failed",
            "false",
            "--sample-keep-longer-than",
            "30s",
            "--sample-drop-local-ports",
            "10250,4317",
            "--sample-drop-peer-ports",
            "53",
            "--sample-drop-peer-networks",
            "10.0.0.0/8, fd00::/8",
            "--sample-drop-processes",
            "kubelet,otelcol-contrib",
            "--sample-drop-containers",
            "0123456789ab, fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
        ])
        .unwrap();
        let flags = cli.sampling.flags();
        assert_eq!(flags.sampler.as_deref(), Some("traceidratio"));
        assert_eq!(flags.sampler_arg.as_deref(), Some("0.1"));
        assert_eq!(
            flags.rules,
            Rules {
                keep_failed: false,
                keep_longer_than: Some(Duration::from_secs(30)),
                drop_local_ports: vec![10250, 4317],
                drop_peer_ports: vec![53],
                drop_peer_networks: vec![
                    Network::parse("10.0.0.0/8").unwrap(),
                    Network::parse("fd00::/8").unwrap()
                ],
                drop_processes: vec!["kubelet".into(), "otelcol-contrib".into()],
                drop_containers: vec!["0123456789ab".into(), "fedcba9876543210".repeat(4)],
            }
        );
        // Failed sessions are kept by default; nothing is dropped.
        let defaults = Cli::try_parse_from(["otel-agent"])
            .unwrap()
            .sampling
            .flags();
        assert_eq!(
            defaults.rules,
            Rules {
                keep_failed: true,
                ..Rules::default()
            }
        );
        let error = |args: &[&str]| {
            let mut argv = vec!["otel-agent"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).unwrap_err().to_string()
        };
        let keep = error(&["--sample-keep-failed", "yes"]);
        assert!(keep.contains("--sample-keep-failed"), "{keep}");
        assert!(keep.contains("[possible values: true, false]"), "{keep}");
        assert!(error(&["--sample-keep-longer-than", "0s"]).contains("is zero"));
        assert!(error(&["--sample-drop-peer-ports", "0"]).contains("`0` is not a port"));
        assert!(
            error(&["--sample-drop-peer-networks", "10.0.0.0/40"])
                .contains("`10.0.0.0/40` is not a network")
        );
        assert!(
            error(&["--sample-drop-processes", "x".repeat(48).as_str()])
                .contains("is not a process name: 1 to 47 bytes")
        );
        for bad in ["0123456789a", "0123456789AB", "docker-0123456789ab"] {
            assert!(
                error(&["--sample-drop-containers", bad]).contains(&format!(
                    "`{bad}` is not a container id: 12 to 64 lowercase hex digits"
                )),
                "{bad}"
            );
        }
        // More than the kernel filter's 16 ports is fine for a drop rule.
        let many = (1..=40)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let cli = Cli::try_parse_from(["otel-agent", "--sample-drop-local-ports", &many]).unwrap();
        assert_eq!(cli.sampling.flags().rules.drop_local_ports.len(), 40);
    }
}
