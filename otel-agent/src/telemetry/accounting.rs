//! The accounting contract, defined once: every way a session can be lost ([`LossCause`]),
//! deliberately left out ([`FilterCause`]) or reported with less than it should carry
//! ([`Degradation`]), each with the one name that the log lines (`lost_<name>`,
//! `filtered_<name>`, `degraded_<name>`), the self-metrics (`cause="<name>"`) and the README
//! use; the figures of one moment by those names ([`Accounting`]), rendered as the
//! `session accounting` / `export accounting` / `output accounting` log lines and as the
//! one-line JSON of the `final accounting` line; and the equation they obey
//! ([`Accounting::reconcile`]), which the tests and the scripts call instead of restating it.
//!
//! The split follows Vector's intentional and unintentional drops: a filtered session was
//! asked for (not lost), a lost one was not.

use std::fmt;

use serde_json::{Map, Value};

/// Where a loss happens, which decides what the equation compares it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// In the kernel, before a record is emitted: not part of `kernel_emitted`.
    Kernel,
    /// Between the ring buffer and the outputs: a loss for every output.
    Pipeline,
    /// In one output (per output).
    Output,
}

/// The two kinds of output, each with its own accounting line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// An OTLP exporter: delivers by exporting (`exported`).
    Export,
    /// A local output (the console, JSON lines): delivers by writing (`written`).
    Local,
}

impl OutputKind {
    /// The name in the JSON line (`kind`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Export => "export",
            Self::Local => "local",
        }
    }

    /// The message of its accounting log line.
    pub const fn log_message(self) -> &'static str {
        match self {
            Self::Export => "export accounting",
            Self::Local => "output accounting",
        }
    }

    /// The figure of the sessions it delivered.
    pub const fn delivered(self) -> &'static str {
        match self {
            Self::Export => "exported",
            Self::Local => "written",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Export, Self::Local]
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

/// Every way a session the agent should have delivered is lost (an unintentional drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossCause {
    /// The ring buffer had no room for a record.
    RingBufferFull,
    /// The kernel skipped the state-change program (a BPF program was already running on
    /// that CPU) and no backup handled it: an upper bound (a skipped close loses a session,
    /// a skipped birth or intermediate state only degrades one).
    ProbeSkipped,
    /// A ring-buffer record did not decode.
    DecodeError,
    /// The pipeline fell behind the reader by more than its channel holds.
    ChannelFull,
    /// An export queue was full (the collector down or too slow).
    QueueFull,
    /// The collector rejected the spans (a partial success, or a request refused for good).
    Rejected,
    /// A local output's queue was full (a slow or stuck reader).
    OutputFull,
    /// A local output's write had failed.
    OutputFailed,
    /// The disk spool was full: its oldest requests were dropped to make room.
    SpoolFull,
    /// A spool file was torn or unreadable (a crash or power loss while it was written, a
    /// truncated or corrupted file).
    SpoolTorn,
    /// An output had not delivered them by the shutdown deadline.
    AtShutdown,
}

impl LossCause {
    /// Every cause, in the order of the log lines.
    pub const ALL: [Self; 11] = [
        Self::RingBufferFull,
        Self::ProbeSkipped,
        Self::DecodeError,
        Self::ChannelFull,
        Self::QueueFull,
        Self::Rejected,
        Self::OutputFull,
        Self::OutputFailed,
        Self::SpoolFull,
        Self::SpoolTorn,
        Self::AtShutdown,
    ];

    /// The one name: `cause="<name>"` on `otel_agent.sessions.lost`, `lost_<name>` in the log.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RingBufferFull => "ring_buffer_full",
            Self::ProbeSkipped => "probe_skipped",
            Self::DecodeError => "decode_error",
            Self::ChannelFull => "channel_full",
            Self::QueueFull => "queue_full",
            Self::Rejected => "rejected",
            Self::OutputFull => "output_full",
            Self::OutputFailed => "output_failed",
            Self::SpoolFull => "spool_full",
            Self::SpoolTorn => "spool_torn",
            Self::AtShutdown => "at_shutdown",
        }
    }

    /// The figure's name in the log lines and the JSON line: `lost_<name>`.
    pub fn key(self) -> String {
        format!("lost_{}", self.name())
    }

    /// Where it happens.
    pub const fn stage(self) -> Stage {
        match self {
            Self::RingBufferFull | Self::ProbeSkipped => Stage::Kernel,
            Self::DecodeError | Self::ChannelFull => Stage::Pipeline,
            Self::QueueFull
            | Self::Rejected
            | Self::OutputFull
            | Self::OutputFailed
            | Self::SpoolFull
            | Self::SpoolTorn
            | Self::AtShutdown => Stage::Output,
        }
    }

    /// Whether an output of `kind` can lose sessions this way.
    pub const fn applies_to(self, kind: OutputKind) -> bool {
        match self {
            Self::QueueFull | Self::Rejected | Self::SpoolFull | Self::SpoolTorn => {
                matches!(kind, OutputKind::Export)
            }
            Self::OutputFull | Self::OutputFailed => matches!(kind, OutputKind::Local),
            Self::AtShutdown => true,
            Self::RingBufferFull | Self::ProbeSkipped | Self::DecodeError | Self::ChannelFull => {
                false
            }
        }
    }

    /// The causes of `stage`.
    pub fn of_stage(stage: Stage) -> impl Iterator<Item = Self> {
        Self::ALL
            .into_iter()
            .filter(move |cause| cause.stage() == stage)
    }

    /// The causes an output of `kind` counts.
    pub fn of_output(kind: OutputKind) -> impl Iterator<Item = Self> {
        Self::ALL
            .into_iter()
            .filter(move |cause| cause.applies_to(kind))
    }
}

/// Every way a session is deliberately left out (an intentional drop: asked for, not lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterCause {
    /// A filter rejected the socket at its birth (it was never tracked).
    AtBirth,
    /// A filter rejected the session at its close (its owner or namespace did not match).
    AfterTracking,
    /// Its birth was not seen and `--skip-unknown-birth` asked to skip such sessions.
    UnknownBirth,
    /// The sampler left it out (`OTEL_TRACES_SAMPLER`): counted in the session metrics.
    SampledOut,
    /// A drop rule on its local or peer port (`--sample-drop-local-ports`,
    /// `--sample-drop-peer-ports`): counted in the session metrics.
    DropPort,
    /// A drop rule on its peer's network (`--sample-drop-peer-networks`): counted in the
    /// session metrics.
    DropPeer,
    /// A drop rule on its workload: its owner's task or executable name
    /// (`--sample-drop-processes`) or container (`--sample-drop-containers`): counted in the
    /// session metrics.
    DropProcess,
}

impl FilterCause {
    /// Every cause, in the order of the log line.
    pub const ALL: [Self; 7] = [
        Self::AtBirth,
        Self::AfterTracking,
        Self::UnknownBirth,
        Self::SampledOut,
        Self::DropPort,
        Self::DropPeer,
        Self::DropProcess,
    ];

    /// Where it happens: in the kernel (no record is emitted) or in the pipeline (after
    /// `records_read`: no output gets the session).
    pub const fn stage(self) -> Stage {
        match self {
            Self::AtBirth | Self::AfterTracking | Self::UnknownBirth => Stage::Kernel,
            Self::SampledOut | Self::DropPort | Self::DropPeer | Self::DropProcess => {
                Stage::Pipeline
            }
        }
    }

    /// The one name: `cause="<name>"` on `otel_agent.sessions.filtered`, `filtered_<name>` in
    /// the log.
    pub const fn name(self) -> &'static str {
        match self {
            Self::AtBirth => "at_birth",
            Self::AfterTracking => "after_tracking",
            Self::UnknownBirth => "unknown_birth",
            Self::SampledOut => "sampled_out",
            Self::DropPort => "drop_port",
            Self::DropPeer => "drop_peer",
            Self::DropProcess => "drop_process",
        }
    }

    /// The figure's name in the log line and the JSON line: `filtered_<name>`.
    pub fn key(self) -> String {
        format!("filtered_{}", self.name())
    }
}

/// Every way a session is reported with less than it should carry (degraded, not lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degradation {
    /// Its birth was not seen (opened before the agent, evicted, or not stored): no start.
    BirthNotSeen,
    /// The socket map was full and evicted its entry (known once the probe is detached).
    Evicted,
    /// Its birth could not be stored in the socket map.
    MapUpdateFailed,
    /// The kernel skipped `tcp:tcp_receive_reset` for it: it may lack its reset-by-peer mark.
    ProbeSkippedReset,
    /// The kernel skipped `syscalls:sys_exit_accept*` for it: a server session may carry the
    /// task current at close as its owner.
    ProbeSkippedAccept,
    /// Its owner's cgroup id was not found in the cgroup2 hierarchy (removed before the
    /// agent looked): no container.id.
    ContainerUnresolved,
    /// Its workload was new while the live workloads were at `--max-workloads`: its span
    /// went under the overflow resource.
    WorkloadOverflow,
}

impl Degradation {
    /// Every degradation, in the order of the log line.
    pub const ALL: [Self; 7] = [
        Self::BirthNotSeen,
        Self::Evicted,
        Self::MapUpdateFailed,
        Self::ProbeSkippedReset,
        Self::ProbeSkippedAccept,
        Self::ContainerUnresolved,
        Self::WorkloadOverflow,
    ];

    /// The one name: `cause="<name>"` on `otel_agent.sessions.degraded`, `degraded_<name>`
    /// in the log.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BirthNotSeen => "birth_not_seen",
            Self::Evicted => "evicted",
            Self::MapUpdateFailed => "map_update_failed",
            Self::ProbeSkippedReset => "probe_skipped_reset",
            Self::ProbeSkippedAccept => "probe_skipped_accept",
            Self::ContainerUnresolved => "container_unresolved",
            Self::WorkloadOverflow => "workload_overflow",
        }
    }

    /// The figure's name in the log line and the JSON line: `degraded_<name>`.
    pub fn key(self) -> String {
        format!("degraded_{}", self.name())
    }
}

/// Named figures in a fixed order (the order of the log line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures(pub Vec<(String, u64)>);

impl Figures {
    /// Adds `name = value`.
    pub fn push(&mut self, name: impl Into<String>, value: u64) {
        self.0.push((name.into(), value));
    }

    /// The figure `name`.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.0
            .iter()
            .find_map(|(found, value)| (found == name).then_some(*value))
    }

    /// The figure `name`, or which one is missing.
    fn need(&self, name: &str, whose: &str) -> Result<u64, Imbalance> {
        self.get(name).ok_or_else(|| Imbalance::Missing {
            whose: whose.to_owned(),
            figure: name.to_owned(),
        })
    }

    fn to_json(&self, object: &mut Map<String, Value>) {
        for (name, value) in &self.0 {
            object.insert(name.clone(), Value::from(*value));
        }
    }

    fn from_json(object: &Map<String, Value>) -> Self {
        Self(
            object
                .iter()
                .filter_map(|(name, value)| Some((name.clone(), value.as_u64()?)))
                .collect(),
        )
    }
}

/// `name=value` pairs separated by spaces, as the text log lines show them.
impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (name, value)) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

/// One output's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFigures {
    pub kind: OutputKind,
    /// `otlp`, `console` or `json`.
    pub output: String,
    pub figures: Figures,
}

/// Every figure at one moment, by name: the session (kernel and pipeline) and each output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounting {
    pub session: Figures,
    pub outputs: Vec<OutputFigures>,
}

/// Why the figures do not reconcile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Imbalance {
    #[error(
        "kernel_emitted (+ pins_adopted_records) = {emitted} but records_read (+ pins_left_records) = {read}"
    )]
    Kernel { emitted: u64, read: u64 },
    /// For an export output, `queued` includes `spool_left` and `records_read` includes
    /// `spool_found`.
    #[error(
        "{output}: {delivered} + unconfirmed + lost + queued = {accounted}, but records_read - \
         the pipeline's losses and filters = {expected}"
    )]
    Output {
        output: String,
        delivered: &'static str,
        accounted: u64,
        expected: u64,
    },
    #[error(
        "{output}: enqueued + lost_queue_full = {accounted}, but records_read - the \
         pipeline's losses and filters = {expected}"
    )]
    Enqueued {
        output: String,
        accounted: u64,
        expected: u64,
    },
    #[error("{whose}: no figure {figure}")]
    Missing { whose: String, figure: String },
}

/// The name of the final accounting line, whose `json` field is [`Accounting::to_json`].
pub const FINAL_LINE: &str = "final accounting";

impl Accounting {
    /// Checks the equation, exact once the probe is detached, the ring buffer drained and
    /// the outputs flushed (the final figures):
    /// - `kernel_emitted (+ pins_adopted_records) = records_read (+ pins_left_records)`
    ///   (kernel losses happen before a record is emitted);
    /// - for every output, `delivered (exported or written) + exported_unconfirmed + every
    ///   lost_<cause> of the output + queued = records_read - every loss of the pipeline -
    ///   every filtered_<cause> of the pipeline (sampled out, dropped by a rule)`,
    ///   where an export output also counts `spool_left` (in its disk spool at the end) with
    ///   `queued`, and `spool_found` (left in the spool by an earlier agent) with
    ///   `records_read` (the sessions it can deliver);
    /// - for an export output, `enqueued + lost_queue_full = records_read - every loss of
    ///   the pipeline` (without the spool: what this agent read).
    pub fn reconcile(&self) -> Result<(), Imbalance> {
        let session = |name: &str| self.session.need(name, "session accounting");
        // A pinned probe: what waited in the ring buffer when this agent took over was
        // emitted before it, and what it left is read by the next one.
        let pinned = |name: &str| self.session.get(name).unwrap_or(0);
        let read = session("records_read")?;
        let (emitted, handed) = (
            session("kernel_emitted")? + pinned("pins_adopted_records"),
            read + pinned("pins_left_records"),
        );
        if emitted != handed {
            return Err(Imbalance::Kernel {
                emitted,
                read: handed,
            });
        }
        let mut expected = read;
        for cause in LossCause::of_stage(Stage::Pipeline) {
            expected = expected.saturating_sub(session(&cause.key())?);
        }
        // Left out on purpose in the pipeline: no output was offered them.
        for cause in FilterCause::ALL {
            if cause.stage() == Stage::Pipeline {
                expected = expected.saturating_sub(session(&cause.key())?);
            }
        }
        for output in &self.outputs {
            let figure = |name: &str| output.figures.need(name, &output.output);
            let delivered = output.kind.delivered();
            let mut accounted = figure(delivered)? + figure("queued")?;
            let mut deliverable = expected;
            if output.kind == OutputKind::Export {
                accounted += figure("exported_unconfirmed")? + figure("spool_left")?;
                deliverable += figure("spool_found")?;
            }
            for cause in LossCause::of_output(output.kind) {
                accounted += figure(&cause.key())?;
            }
            if accounted != deliverable {
                return Err(Imbalance::Output {
                    output: output.output.clone(),
                    delivered,
                    accounted,
                    expected: deliverable,
                });
            }
            if output.kind == OutputKind::Export {
                let accounted = figure("enqueued")? + figure(&LossCause::QueueFull.key())?;
                if accounted != expected {
                    return Err(Imbalance::Enqueued {
                        output: output.output.clone(),
                        accounted,
                        expected,
                    });
                }
            }
        }
        Ok(())
    }

    /// Logs one `session accounting` line and one accounting line per output, every figure
    /// as `name=value`; `when` is `periodic` or `final`.
    pub fn log(&self, when: &str) {
        tracing::info!("session accounting when={when:?} {}", self.session);
        for output in &self.outputs {
            tracing::info!(
                "{} when={when:?} output={:?} {}",
                output.kind.log_message(),
                output.output,
                output.figures
            );
        }
    }

    /// Logs the `final accounting` line: every figure and the verdict of
    /// [`Accounting::reconcile`] as one JSON object (its `json` field), for scripts and
    /// tests; and a warning when the figures do not reconcile.
    pub fn log_final(&self) {
        let verdict = self.reconcile();
        if let Err(imbalance) = &verdict {
            tracing::warn!(%imbalance, "the final accounting does not reconcile");
        }
        tracing::info!(json = %self.to_json(&verdict), "{FINAL_LINE}");
    }

    /// `{"session": {...}, "outputs": [{"kind": "export", "output": "otlp", ...}, ...],
    /// "reconciled": true}`, with `"imbalance": "..."` when `verdict` is an error.
    pub fn to_json(&self, verdict: &Result<(), Imbalance>) -> Value {
        let mut session = Map::new();
        self.session.to_json(&mut session);
        let outputs = self
            .outputs
            .iter()
            .map(|output| {
                let mut object = Map::new();
                object.insert("kind".into(), output.kind.name().into());
                object.insert("output".into(), output.output.clone().into());
                output.figures.to_json(&mut object);
                Value::Object(object)
            })
            .collect();
        let mut object = Map::new();
        object.insert("session".into(), Value::Object(session));
        object.insert("outputs".into(), Value::Array(outputs));
        object.insert("reconciled".into(), verdict.is_ok().into());
        if let Err(imbalance) = verdict {
            object.insert("imbalance".into(), imbalance.to_string().into());
        }
        Value::Object(object)
    }

    /// Reads the figures back from [`Accounting::to_json`]'s object (the verdict is left out:
    /// call [`Accounting::reconcile`]).
    pub fn from_json(value: &Value) -> Option<Self> {
        let session = Figures::from_json(value.get("session")?.as_object()?);
        let outputs = value
            .get("outputs")?
            .as_array()?
            .iter()
            .map(|output| {
                let object = output.as_object()?;
                Some(OutputFigures {
                    kind: OutputKind::from_name(object.get("kind")?.as_str()?)?,
                    output: object.get("output")?.as_str()?.to_owned(),
                    figures: Figures::from_json(object),
                })
            })
            .collect::<Option<_>>()?;
        Some(Self { session, outputs })
    }

    /// The JSON object of the last `final accounting` line of the agent's log `stderr`, in
    /// either log format (`--log-format text`: `... final accounting json={...}`; `json`: a
    /// JSON object whose `json` field is that object as a string).
    pub fn final_json(stderr: &str) -> Option<Value> {
        let line = stderr
            .lines()
            .rev()
            .find(|line| line.contains(FINAL_LINE))?;
        if line.starts_with('{') {
            let event: Value = serde_json::from_str(line).ok()?;
            if event.get("message")?.as_str()? != FINAL_LINE {
                return None;
            }
            return serde_json::from_str(event.get("json")?.as_str()?).ok();
        }
        let (_, json) = line.split_once(" json=")?;
        serde_json::Deserializer::from_str(json)
            .into_iter::<Value>()
            .next()?
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(pairs: &[(&str, u64)]) -> Figures {
        Figures(
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), *value))
                .collect(),
        )
    }

    /// 100 records read, 3 lost in the pipeline; the OTLP output exported 90, 1 unconfirmed,
    /// 2 rejected, 2 dropped at a full queue, 1 at shutdown, 1 queued; the console wrote 95
    /// and lost 1 of each kind.
    fn balanced() -> Accounting {
        Accounting {
            session: figures(&[
                ("kernel_emitted", 100),
                ("records_read", 100),
                ("lost_ring_buffer_full", 7),
                ("lost_decode_error", 1),
                ("lost_channel_full", 2),
                ("filtered_sampled_out", 0),
                ("filtered_drop_port", 0),
                ("filtered_drop_peer", 0),
                ("filtered_drop_process", 0),
            ]),
            outputs: vec![
                OutputFigures {
                    kind: OutputKind::Export,
                    output: "otlp".into(),
                    figures: figures(&[
                        ("enqueued", 95),
                        ("exported", 90),
                        ("exported_unconfirmed", 1),
                        ("queued", 1),
                        ("lost_rejected", 2),
                        ("lost_queue_full", 2),
                        ("lost_spool_full", 0),
                        ("lost_spool_torn", 0),
                        ("lost_at_shutdown", 1),
                        ("spool_found", 0),
                        ("spool_left", 0),
                    ]),
                },
                OutputFigures {
                    kind: OutputKind::Local,
                    output: "console".into(),
                    figures: figures(&[
                        ("written", 94),
                        ("queued", 0),
                        ("lost_output_full", 1),
                        ("lost_output_failed", 1),
                        ("lost_at_shutdown", 1),
                    ]),
                },
            ],
        }
    }

    fn set(figures: &mut Figures, name: &str, value: u64) {
        figures.0.iter_mut().find(|(n, _)| n == name).unwrap().1 = value;
    }

    #[test]
    fn balanced_figures_reconcile() {
        assert_eq!(balanced().reconcile(), Ok(()));
    }

    /// Sessions the sampler or a drop rule left out reach no output: they balance the
    /// outputs' equations, and are not losses.
    #[test]
    fn pipeline_filters_are_subtracted_once_for_every_output() {
        let mut filtered = balanced();
        set(&mut filtered.session, "filtered_sampled_out", 4);
        set(&mut filtered.session, "filtered_drop_port", 1);
        assert!(filtered.reconcile().is_err());
        for output in &mut filtered.outputs {
            let delivered = output.kind.delivered();
            let value = output.figures.get(delivered).unwrap();
            set(&mut output.figures, delivered, value - 5);
        }
        let enqueued = filtered.outputs[0].figures.get("enqueued").unwrap();
        set(&mut filtered.outputs[0].figures, "enqueued", enqueued - 5);
        assert_eq!(filtered.reconcile(), Ok(()));
        // Kernel filters are not subtracted: their sessions were never read.
        assert_eq!(FilterCause::AtBirth.stage(), Stage::Kernel);
        assert_eq!(FilterCause::SampledOut.stage(), Stage::Pipeline);
    }

    /// 6 sessions found in the spool, 2 of them torn; 1 dropped when it was full, 3 left in it
    /// for the next agent: the other sessions of the 10 more exported came from the spool.
    #[test]
    fn the_spool_found_is_deliverable_and_what_it_leaves_is_accounted() {
        let mut spool = balanced();
        let otlp = &mut spool.outputs[0].figures;
        set(otlp, "spool_found", 6);
        set(otlp, "lost_spool_torn", 2);
        set(otlp, "lost_spool_full", 1);
        set(otlp, "spool_left", 3);
        assert_eq!(
            spool.reconcile(),
            Ok(()),
            "6 found = 2 torn + 1 dropped + 3 left"
        );
        set(&mut spool.outputs[0].figures, "spool_left", 0);
        assert_eq!(
            spool.reconcile(),
            Err(Imbalance::Output {
                output: "otlp".into(),
                delivered: "exported",
                accounted: 100,
                expected: 103
            })
        );
        let otlp = &mut spool.outputs[0].figures;
        set(otlp, "exported", 93);
        assert_eq!(spool.reconcile(), Ok(()), "or 3 delivered");
        // The enqueued equation is this agent's reads only.
        set(&mut spool.outputs[0].figures, "enqueued", 98);
        assert!(matches!(spool.reconcile(), Err(Imbalance::Enqueued { .. })));
    }

    #[test]
    fn a_pinned_probe_balances_with_what_it_adopted_and_left() {
        // 100 emitted while this agent ran, 7 waiting when it took over: 104 read, 3 left.
        let mut pinned = balanced();
        set(&mut pinned.session, "records_read", 104);
        pinned.session.push("pins_adopted_records", 7);
        pinned.session.push("pins_left_records", 3);
        for output in &mut pinned.outputs {
            let delivered = output.kind.delivered();
            let value = output.figures.get(delivered).unwrap();
            set(&mut output.figures, delivered, value + 4);
        }
        pinned.outputs[0]
            .figures
            .0
            .iter_mut()
            .find(|(name, _)| name == "enqueued")
            .unwrap()
            .1 += 4;
        assert_eq!(pinned.reconcile(), Ok(()));
        set(&mut pinned.session, "pins_left_records", 2);
        assert_eq!(
            pinned.reconcile(),
            Err(Imbalance::Kernel {
                emitted: 107,
                read: 106
            })
        );
    }

    #[test]
    fn each_broken_equation_is_named() {
        let mut kernel = balanced();
        set(&mut kernel.session, "records_read", 99);
        assert_eq!(
            kernel.reconcile(),
            Err(Imbalance::Kernel {
                emitted: 100,
                read: 99
            })
        );

        let mut export = balanced();
        set(&mut export.outputs[0].figures, "lost_rejected", 3);
        assert_eq!(
            export.reconcile(),
            Err(Imbalance::Output {
                output: "otlp".into(),
                delivered: "exported",
                accounted: 98,
                expected: 97
            })
        );

        let mut enqueued = balanced();
        set(&mut enqueued.outputs[0].figures, "enqueued", 94);
        assert_eq!(
            enqueued.reconcile(),
            Err(Imbalance::Enqueued {
                output: "otlp".into(),
                accounted: 96,
                expected: 97
            })
        );

        let mut local = balanced();
        set(&mut local.outputs[1].figures, "written", 95);
        let error = local.reconcile().unwrap_err();
        assert_eq!(
            error.to_string(),
            "console: written + unconfirmed + lost + queued = 98, but records_read - the \
             pipeline's losses and filters = 97"
        );

        let mut missing = balanced();
        missing.outputs[1].figures.0.pop();
        assert_eq!(
            missing.reconcile(),
            Err(Imbalance::Missing {
                whose: "console".into(),
                figure: "lost_at_shutdown".into()
            })
        );
    }

    #[test]
    fn the_json_line_carries_every_figure_and_the_verdict_and_reads_back() {
        let accounting = balanced();
        let json = accounting.to_json(&accounting.reconcile());
        assert_eq!(json["reconciled"], true);
        assert_eq!(json["outputs"][0]["lost_rejected"], 2);
        assert_eq!(json.get("imbalance"), None);
        let line = format!("2026-01-01T00:00:00Z  INFO otel_agent: {FINAL_LINE} json={json}");
        let read = Accounting::final_json(&format!("other\n{line}\n")).unwrap();
        assert_eq!(read, json);
        // The same line as `--log-format json` writes it.
        let event = serde_json::json!({
            "timestamp": "2026-01-01T00:00:00Z",
            "level": "INFO",
            "message": FINAL_LINE,
            "json": json.to_string(),
            "target": "otel_agent::accounting",
        });
        assert_eq!(
            Accounting::final_json(&format!("{event}\n")),
            Some(json.clone())
        );
        let back = Accounting::from_json(&read).unwrap();
        // The JSON object sorts the names; the figures are the same.
        for (mine, theirs) in std::iter::once((&accounting.session, &back.session)).chain(
            accounting
                .outputs
                .iter()
                .zip(&back.outputs)
                .map(|(a, b)| (&a.figures, &b.figures)),
        ) {
            for (name, value) in &mine.0 {
                assert_eq!(theirs.get(name), Some(*value), "{name}");
            }
            assert_eq!(mine.0.len(), theirs.0.len());
        }

        let mut broken = balanced();
        set(&mut broken.session, "kernel_emitted", 101);
        let json = broken.to_json(&broken.reconcile());
        assert_eq!(json["reconciled"], false);
        assert_eq!(
            json["imbalance"],
            "kernel_emitted (+ pins_adopted_records) = 101 but records_read (+ pins_left_records) = 100"
        );
    }

    #[test]
    fn the_log_keys_are_the_names_with_their_prefix_and_the_names_are_unique() {
        let names: Vec<_> = LossCause::ALL.iter().map(|cause| cause.name()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert_eq!(LossCause::QueueFull.key(), "lost_queue_full");
        assert_eq!(FilterCause::UnknownBirth.key(), "filtered_unknown_birth");
        assert_eq!(Degradation::Evicted.key(), "degraded_evicted");
        // Every output can lose sessions at shutdown; kernel and pipeline losses are not an
        // output's.
        for cause in LossCause::ALL {
            assert_eq!(
                cause.stage() == Stage::Output,
                cause.applies_to(OutputKind::Export) || cause.applies_to(OutputKind::Local),
                "{cause:?}"
            );
        }
    }

    /// The README's tables and the metrics module's table name exactly these causes.
    #[test]
    fn the_docs_list_exactly_these_names() {
        let readme = include_str!("../../../README.md");
        let metrics = include_str!("metrics.rs");
        let lost = metric_causes(LossCause::ALL.iter().map(|cause| cause.name()));
        let filtered = metric_causes(FilterCause::ALL.iter().map(|cause| cause.name()));
        let degraded = metric_causes(Degradation::ALL.iter().map(|cause| cause.name()));
        for (doc, text) in [("README.md", readme), ("metrics.rs", metrics)] {
            for list in [&lost, &filtered, &degraded] {
                assert!(text.contains(list), "{doc} does not list {list}");
            }
        }
        for key in LossCause::ALL
            .iter()
            .map(|cause| cause.key())
            .chain(FilterCause::ALL.iter().map(|cause| cause.key()))
            .chain(Degradation::ALL.iter().map(|cause| cause.key()))
        {
            assert!(
                readme.contains(&format!("`{key}`")),
                "README.md does not explain {key}"
            );
        }
        // No other lost_ or filtered_ name in the README's accounting table.
        let table = readme
            .split("## Nothing lost silently")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("the README's section Nothing lost silently");
        for word in table.split('`') {
            if let Some(name) = word.strip_prefix("lost_") {
                assert!(
                    LossCause::ALL.iter().any(|cause| cause.name() == name),
                    "README: {word} is not a loss cause"
                );
            }
            if let Some(name) = word.strip_prefix("filtered_") {
                assert!(
                    FilterCause::ALL.iter().any(|cause| cause.name() == name),
                    "README: {word} is not a filter cause"
                );
            }
            if let Some(name) = word.strip_prefix("degraded_") {
                assert!(
                    Degradation::ALL.iter().any(|cause| cause.name() == name),
                    "README: {word} is not a degradation"
                );
            }
        }
    }

    /// `cause` (`a`, `b`, ...): how the metric tables list the values of `cause`.
    fn metric_causes<'a>(names: impl Iterator<Item = &'a str>) -> String {
        let list: Vec<_> = names.map(|name| format!("`{name}`")).collect();
        format!("`cause` ({})", list.join(", "))
    }
}
