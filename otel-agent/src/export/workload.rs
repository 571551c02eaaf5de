//! Which resource a session's span goes under (`--resource-mode`): one per workload (a
//! container, all its processes, when the owner runs in one; otherwise an executable), one
//! per process, or the agent's single resource. Jaeger's service list and the servicegraph
//! connector are keyed by the resource's `service.name`, and the collector's `k8sattributes`
//! works per resource (by its `container.id`), so a workload resource is what lets them tell
//! the services of a node apart.
//!
//! Two halves: the pipeline admits each session's workload into the live set
//! ([`WorkloadTable`], bounded: a node running thousands of distinct short-lived commands
//! cannot grow memory or requests without limit; a workload beyond the bound is marked
//! `workload_overflow` and counted), and each encoder groups a batch by workload and keeps
//! each workload's resource encoded ([`WorkloadResources`]). The live set also holds what a
//! workload owns besides its spans ([`PerWorkload`]: the session metrics' instruments),
//! made when it is admitted and dropped when it leaves, so that nothing else keeps a table
//! of workloads.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use super::{config::ConfigError, encode::EncodedResource, resource::workload_resource};
use crate::session::Session;

/// How sessions are grouped into resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceMode {
    /// One resource per container, or per executable outside containers.
    Workload,
    /// One resource per process (pid), with its container.
    Process,
    /// The agent's one resource for every session.
    Single,
}

impl ResourceMode {
    /// The name `--resource-mode` takes.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Process => "process",
            Self::Single => "single",
        }
    }
}

/// `--resource-mode` and `--max-workloads`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceSettings {
    pub mode: ResourceMode,
    pub max_workloads: usize,
}

impl ResourceSettings {
    /// The settings from `--resource-mode` (`None`: not given) and `--max-workloads`, when
    /// the user does or does not name the service (`named`): a named service is the one
    /// service, so its sessions share one resource, and asking for more is an error.
    pub fn resolve(
        mode: Option<ResourceMode>,
        max_workloads: usize,
        named: bool,
    ) -> Result<Self, ConfigError> {
        let mode = match mode {
            None if named => ResourceMode::Single,
            None => ResourceMode::Workload,
            Some(ResourceMode::Single) => ResourceMode::Single,
            Some(mode) if named => {
                return Err(ConfigError {
                    source_name: "--resource-mode (OTEL_AGENT_RESOURCE_MODE)".to_owned(),
                    value: mode.name().to_owned(),
                    expected: "`single` or nothing while OTEL_SERVICE_NAME or service.name in \
                               OTEL_RESOURCE_ATTRIBUTES names the one service; unset them for \
                               one resource per workload or process"
                        .to_owned(),
                });
            }
            Some(mode) => mode,
        };
        Ok(Self {
            mode,
            max_workloads,
        })
    }

    /// The agent's one resource.
    pub const SINGLE: Self = Self {
        mode: ResourceMode::Single,
        max_workloads: DEFAULT_MAX_WORKLOADS,
    };
}

/// The live workloads held at most by default (`--max-workloads`): a Kubernetes node runs
/// at most 110 pods by default (the kubelet's `maxPods`), a few containers each, plus the
/// host's own services: a few hundred workloads, so 1024 leaves room while bounding the
/// cached resources (about 0.5 KiB each encoded) and the `ResourceSpans` a request may
/// hold.
pub const DEFAULT_MAX_WORKLOADS: usize = 1024;
/// A workload with no session for this long leaves the live set (when room is needed).
pub const IDLE_AFTER: Duration = Duration::from_secs(300);
/// The shortest time between two sweeps of the idle workloads of a full table.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What one resource stands for: its container (if any), its name (the executable, or the
/// comm when the probe could not read it: `executable` false) and, in
/// [`ResourceMode::Process`], its pid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub container: Option<Arc<str>>,
    pub name: Arc<str>,
    pub executable: bool,
    pub pid: Option<u32>,
}

impl WorkloadKey {
    /// The workload of `session` in `mode` (`None` in [`ResourceMode::Single`] and for a
    /// session over the bound: the overflow resource).
    pub fn of(mode: ResourceMode, session: &Session) -> Option<Self> {
        if mode == ResourceMode::Single || session.workload_overflow {
            return None;
        }
        Some(Self {
            container: session.container_id.clone(),
            name: session
                .exe
                .clone()
                .unwrap_or_else(|| Arc::from(session.comm.as_str())),
            executable: session.exe.is_some(),
            pid: (mode == ResourceMode::Process).then_some(session.pid),
        })
    }
}

/// What the live set holds for each workload besides its last session's time, and what it
/// does with each session admitted: `()` holds nothing.
pub trait PerWorkload {
    /// A live workload's own state, dropped when the workload leaves the live set.
    type State;
    /// The state of a workload admitted now.
    fn admitted(&mut self, key: &WorkloadKey) -> Self::State;
    /// One session, with its workload's state (`None`: the session is over the bound, or
    /// the mode has no workloads).
    fn session(&mut self, session: &Session, state: Option<&mut Self::State>);
}

impl PerWorkload for () {
    type State = ();
    fn admitted(&mut self, _: &WorkloadKey) {}
    fn session(&mut self, _: &Session, _: Option<&mut ()>) {}
}

/// Something per workload, or nothing (the session metrics, when exported).
impl<P: PerWorkload> PerWorkload for Option<P> {
    type State = Option<P::State>;
    fn admitted(&mut self, key: &WorkloadKey) -> Self::State {
        self.as_mut().map(|per| per.admitted(key))
    }
    fn session(&mut self, session: &Session, state: Option<&mut Self::State>) {
        if let Some(per) = self {
            per.session(session, state.and_then(Option::as_mut));
        }
    }
}

/// The live workloads, at most `max`: a workload is live from its first session until it
/// has had none for [`IDLE_AFTER`] and room is needed. Each holds its `S`
/// ([`PerWorkload::State`]).
#[derive(Debug)]
pub struct WorkloadTable<S = ()> {
    mode: ResourceMode,
    max: usize,
    live: HashMap<WorkloadKey, Live<S>>,
    last_sweep: Option<Instant>,
}

#[derive(Debug)]
struct Live<S> {
    seen: Instant,
    state: S,
}

impl<S> WorkloadTable<S> {
    pub fn new(mode: ResourceMode, max: usize) -> Self {
        Self {
            mode,
            max: max.max(1),
            live: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Admits the workload of each session at `now`, marking `workload_overflow` on those
    /// that find the table full, and hands each session with its workload's state to
    /// `per`; returns how many overflowed.
    pub fn admit<P: PerWorkload<State = S>>(
        &mut self,
        sessions: &mut [Session],
        now: Instant,
        per: &mut P,
    ) -> u64 {
        let mut overflowed = 0;
        for session in sessions {
            let Some(key) = WorkloadKey::of(self.mode, session) else {
                per.session(session, None);
                continue;
            };
            if let Some(live) = self.live.get_mut(&key) {
                live.seen = now;
                per.session(session, Some(&mut live.state));
                continue;
            }
            if self.live.len() >= self.max {
                self.sweep(now);
            }
            if self.live.len() >= self.max {
                session.workload_overflow = true;
                overflowed += 1;
                per.session(session, None);
            } else {
                let state = per.admitted(&key);
                let live = self.live.entry(key).or_insert(Live { seen: now, state });
                per.session(session, Some(&mut live.state));
            }
        }
        overflowed
    }

    /// Forgets the workloads idle for [`IDLE_AFTER`] (dropping their state), at most once a
    /// [`SWEEP_INTERVAL`].
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_INTERVAL)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.live
            .retain(|_, live| now.saturating_duration_since(live.seen) < IDLE_AFTER);
    }

    /// How many workloads are live.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.len()
    }
}

/// The resource of the sessions over the bound: the agent's `base`, marked with
/// [`OVERFLOW_ATTRIBUTE`].
pub fn overflow_resource(base: &Resource) -> Resource {
    Resource::builder_empty()
        .with_attributes(
            base.iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
                .chain([KeyValue::new(OVERFLOW_ATTRIBUTE, true)]),
        )
        .build()
}

/// An encoder's resources: the agent's (for [`ResourceMode::Single`] and the overflow) and
/// each workload's, encoded once and kept for the next batches.
#[derive(Debug)]
pub struct WorkloadResources {
    mode: ResourceMode,
    base: Resource,
    overflow: EncodedResource,
    /// At most twice the live bound: beyond, the cache starts over (workloads that left the
    /// live set are encoded again if they come back).
    max_cached: usize,
    encoded: HashMap<WorkloadKey, EncodedResource>,
}

/// Attribute marking the overflow resource.
pub const OVERFLOW_ATTRIBUTE: &str = "otel_agent.workload.overflow";

impl WorkloadResources {
    /// The resources built from the agent's `base` resource, for at most `max_workloads`
    /// live workloads.
    pub fn new(mode: ResourceMode, base: Resource, max_workloads: usize) -> Self {
        Self {
            mode,
            overflow: EncodedResource::new(&overflow_resource(&base)),
            base,
            max_cached: max_workloads.saturating_mul(2).max(1),
            encoded: HashMap::new(),
        }
    }

    /// Splits `sessions` by workload, in key order (the overflow, if any, first), each group
    /// with its resource.
    pub fn groups<'s>(
        &mut self,
        sessions: &'s [Arc<Session>],
    ) -> Vec<(EncodedResource, Vec<&'s Session>)> {
        let mut groups: BTreeMap<Option<WorkloadKey>, Vec<&Session>> = BTreeMap::new();
        for session in sessions {
            groups
                .entry(WorkloadKey::of(self.mode, session))
                .or_default()
                .push(session);
        }
        if self.encoded.len() + groups.len() > self.max_cached {
            self.encoded.clear();
        }
        groups
            .into_iter()
            .map(|(key, members)| {
                let resource = match key {
                    None => self.overflow.clone(),
                    Some(key) => self
                        .encoded
                        .entry(key)
                        .or_insert_with_key(|key| {
                            EncodedResource::new(&workload_resource(&self.base, key))
                        })
                        .clone(),
                };
                (resource, members)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::client_session;

    fn session(exe: Option<&str>, comm: &str, container: Option<&str>, pid: u32) -> Session {
        Session {
            exe: exe.map(Arc::from),
            comm: comm.to_owned(),
            container_id: container.map(Arc::from),
            pid,
            ..client_session()
        }
    }

    #[test]
    fn a_workload_is_a_container_or_else_an_executable() {
        let in_container = session(Some("nginx"), "worker", Some("c1"), 10);
        let key = WorkloadKey::of(ResourceMode::Workload, &in_container).unwrap();
        assert_eq!(
            key,
            WorkloadKey {
                container: Some("c1".into()),
                name: "nginx".into(),
                executable: true,
                pid: None
            }
        );
        // Another process of the same executable in the same container: the same workload.
        let sibling = session(Some("nginx"), "nginx", Some("c1"), 11);
        assert_eq!(WorkloadKey::of(ResourceMode::Workload, &sibling), Some(key));
        // Without an executable name, the comm names it.
        let kernel = session(None, "kworker/0:1", None, 12);
        assert_eq!(
            WorkloadKey::of(ResourceMode::Workload, &kernel).map(|k| (k.name, k.executable)),
            Some(("kworker/0:1".into(), false))
        );
        assert_eq!(
            WorkloadKey::of(ResourceMode::Process, &sibling).and_then(|k| k.pid),
            Some(11)
        );
        assert_eq!(WorkloadKey::of(ResourceMode::Single, &sibling), None);
    }

    #[test]
    fn a_named_service_is_the_one_resource() {
        let resolve = |mode, named| ResourceSettings::resolve(mode, 64, named).map(|s| s.mode);
        assert_eq!(resolve(None, false), Ok(ResourceMode::Workload));
        assert_eq!(resolve(None, true), Ok(ResourceMode::Single));
        assert_eq!(
            resolve(Some(ResourceMode::Process), false),
            Ok(ResourceMode::Process)
        );
        assert_eq!(
            resolve(Some(ResourceMode::Single), true),
            Ok(ResourceMode::Single)
        );
        assert_eq!(
            resolve(Some(ResourceMode::Workload), true)
                .unwrap_err()
                .to_string(),
            "--resource-mode (OTEL_AGENT_RESOURCE_MODE)=`workload` is invalid: `single` or \
             nothing while OTEL_SERVICE_NAME or service.name in OTEL_RESOURCE_ATTRIBUTES names \
             the one service; unset them for one resource per workload or process"
        );
    }

    #[test]
    fn the_live_set_is_bounded_and_the_overflow_counted() {
        let mut table = WorkloadTable::new(ResourceMode::Workload, 2);
        let start = Instant::now();
        let mut sessions: Vec<Session> = ["a", "b", "c", "a", "d"]
            .into_iter()
            .map(|exe| session(Some(exe), exe, None, 1))
            .collect();
        assert_eq!(table.admit(&mut sessions, start, &mut ()), 2);
        let overflowed: Vec<bool> = sessions.iter().map(|s| s.workload_overflow).collect();
        assert_eq!(overflowed, [false, false, true, false, true]);
        assert_eq!(table.len(), 2);

        // Once a and b have been idle long enough, new workloads take their place.
        let later = start + IDLE_AFTER;
        let mut fresh = vec![session(Some("c"), "c", None, 1)];
        assert_eq!(table.admit(&mut fresh, later, &mut ()), 0);
        assert!(!fresh[0].workload_overflow);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn overflowed_sessions_share_the_overflow_resource() {
        let base = Resource::builder_empty()
            .with_attributes([KeyValue::new("host.name", "node-1")])
            .build();
        let mut resources = WorkloadResources::new(ResourceMode::Workload, base, 1);
        let mut over = session(Some("b"), "b", None, 2);
        over.workload_overflow = true;
        let sessions = [
            Arc::new(session(Some("a"), "a", None, 1)),
            Arc::new(over.clone()),
            Arc::new(over),
        ];
        let groups = resources.groups(&sessions);
        let sizes: Vec<usize> = groups.iter().map(|(_, members)| members.len()).collect();
        assert_eq!(sizes, [2, 1], "the overflow group first, then workload a");
    }
}
