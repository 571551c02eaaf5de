//! Which sessions the outputs get: the sampler (`OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`, or their flags) and the [`rules`] that override it, decided per
//! session in the pipeline, after the session metrics have counted it. What is left out is
//! counted by [`Dropped`] cause (the accounting's `FilterCause`s: intentional, never a loss).
//!
//! The ratio samplers are consistent probability samplers ([`crate::threshold`]): a session
//! is kept when its trace id's randomness is at or above the ratio's threshold, and its span
//! carries the threshold in its tracestate (`ot=th:...`). Both ends of a connection share
//! one derived trace id (`crate::trace_context`), so two agents with the same ratio keep or
//! drop both ends together.
//!
//! `parentbased_*`: a session's parent is derived, not propagated, so there is no incoming
//! sampled flag to follow. A client span is a root: its root sampler decides. A server span's
//! parent is the client span of the same connection, whose agent applied the same rule to
//! the same trace id: following that parent's decision is deciding with the root sampler
//! again. So `parentbased_X` decides exactly as `X` does, on both sides.

pub mod rules;

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::TraceId;

use self::rules::{KeepRule, Rules};
use crate::{export::config::ConfigError, session::Session, threshold::Threshold};

/// Why a session is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The sampler's ratio (or `always_off`).
    SampledOut,
    /// A drop rule on its local or peer port.
    Port,
    /// A drop rule on its peer's network.
    Peer,
    /// A drop rule on its workload: its owner's task or executable name, its container.
    Process,
}

/// The standard sampler names (`OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerName {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio,
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio,
}

impl SamplerName {
    /// Every name, in the order the errors list them.
    pub const ALL: [Self; 6] = [
        Self::AlwaysOn,
        Self::AlwaysOff,
        Self::TraceIdRatio,
        Self::ParentBasedAlwaysOn,
        Self::ParentBasedAlwaysOff,
        Self::ParentBasedTraceIdRatio,
    ];

    /// The name, as `OTEL_TRACES_SAMPLER` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::AlwaysOn => "always_on",
            Self::AlwaysOff => "always_off",
            Self::TraceIdRatio => "traceidratio",
            Self::ParentBasedAlwaysOn => "parentbased_always_on",
            Self::ParentBasedAlwaysOff => "parentbased_always_off",
            Self::ParentBasedTraceIdRatio => "parentbased_traceidratio",
        }
    }

    /// The sampler called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|sampler| sampler.name() == name)
    }

    /// Whether it takes a ratio (`OTEL_TRACES_SAMPLER_ARG`).
    const fn takes_ratio(self) -> bool {
        matches!(self, Self::TraceIdRatio | Self::ParentBasedTraceIdRatio)
    }
}

/// The sampling settings from the command line, as plain values; the variables fill in
/// what the flags leave unset ([`Sampler::resolve`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SamplingFlags {
    /// `--traces-sampler`.
    pub sampler: Option<String>,
    /// `--traces-sampler-arg`.
    pub sampler_arg: Option<String>,
    pub rules: Rules,
}

/// What the sampler does before the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    /// Keep every session; spans carry no tracestate (as before sampling existed).
    All,
    /// Keep none (the keep rules still apply).
    None,
    /// Keep those whose randomness is at or above the threshold.
    Ratio(Threshold),
}

/// The sampler and its rules, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampler {
    name: SamplerName,
    base: Base,
    rules: Rules,
}

/// The decision for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Offer it to the outputs; its span's tracestate carries this threshold, if any.
    Keep {
        threshold: Option<Threshold>,
        /// The keep rule that kept it, if one did.
        rule: Option<KeepRule>,
    },
    /// Leave it out, for this reason.
    Drop(Dropped),
}

impl Sampler {
    /// Combines the flags with `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (read
    /// through `env`; a flag wins over its variable). Default: `parentbased_always_on`, as
    /// the specification says, which keeps every session. A ratio sampler without an
    /// argument uses 1.0; an argument for another sampler is ignored, as the specification
    /// says, except a flag, which is refused.
    pub fn resolve(
        flags: &SamplingFlags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        let (sampler_source, sampler_text) = match (&flags.sampler, env("OTEL_TRACES_SAMPLER")) {
            (Some(flag), _) => ("--traces-sampler", Some(flag.clone())),
            (None, value) => ("OTEL_TRACES_SAMPLER", value),
        };
        let name = match sampler_text {
            Some(text) => SamplerName::from_name(text.trim()).ok_or_else(|| ConfigError {
                source_name: sampler_source.to_owned(),
                value: text.clone(),
                expected: format!(
                    "one of {}",
                    SamplerName::ALL.map(SamplerName::name).join(", ")
                ),
            })?,
            None => SamplerName::ParentBasedAlwaysOn,
        };
        let (arg_source, arg_text) = match (&flags.sampler_arg, env("OTEL_TRACES_SAMPLER_ARG")) {
            (Some(flag), _) => ("--traces-sampler-arg", Some(flag.clone())),
            (None, value) => ("OTEL_TRACES_SAMPLER_ARG", value),
        };
        let base = match name {
            SamplerName::AlwaysOn | SamplerName::ParentBasedAlwaysOn => Base::All,
            SamplerName::AlwaysOff | SamplerName::ParentBasedAlwaysOff => Base::None,
            SamplerName::TraceIdRatio | SamplerName::ParentBasedTraceIdRatio => {
                match arg_text.as_deref().map(str::trim) {
                    None => Base::Ratio(Threshold::ALWAYS),
                    Some(text) => match text.parse::<f64>() {
                        Ok(0.0) => Base::None,
                        Ok(ratio) => Base::Ratio(
                            Threshold::from_ratio(ratio)
                                .ok_or_else(|| ratio_error(arg_source, text))?,
                        ),
                        Err(_) => return Err(ratio_error(arg_source, text)),
                    },
                }
            }
        };
        if flags.sampler_arg.is_some() && !name.takes_ratio() {
            return Err(ConfigError {
                source_name: "--traces-sampler-arg".to_owned(),
                value: flags.sampler_arg.clone().unwrap_or_default(),
                expected: format!(
                    "no argument: the sampler {} takes none (only traceidratio and \
                     parentbased_traceidratio take a ratio)",
                    name.name()
                ),
            });
        }
        Ok(Self {
            name,
            base,
            rules: flags.rules.clone(),
        })
    }

    /// The sampler's name.
    pub fn name(&self) -> SamplerName {
        self.name
    }

    /// The ratio of sessions the sampler keeps before the rules.
    pub fn ratio(&self) -> f64 {
        match self.base {
            Base::All => 1.0,
            Base::None => 0.0,
            Base::Ratio(threshold) => threshold.probability(),
        }
    }

    /// Whether every session is kept, whatever its trace id: nothing to decide.
    pub fn keeps_all(&self) -> bool {
        self.base == Base::All && self.rules.drops_nothing()
    }

    /// Decides for `session`, whose span has `trace_id`: a drop rule first, then a keep
    /// rule, then the sampler.
    pub fn decide(&self, session: &Session, trace_id: TraceId) -> Decision {
        if let Some(cause) = self.rules.dropped(session) {
            return Decision::Drop(cause);
        }
        // Kept whatever its randomness: an adjusted count of 1 (`th:0`) where a ratio
        // sampler writes thresholds at all.
        let certain = match self.base {
            Base::All => None,
            Base::None | Base::Ratio(_) => Some(Threshold::ALWAYS),
        };
        if let Some(rule) = self.rules.kept(session) {
            return Decision::Keep {
                threshold: certain,
                rule: Some(rule),
            };
        }
        match self.base {
            Base::All => Decision::Keep {
                threshold: None,
                rule: None,
            },
            Base::None => Decision::Drop(Dropped::SampledOut),
            Base::Ratio(threshold) if threshold.keeps(trace_id) => Decision::Keep {
                threshold: Some(threshold),
                rule: None,
            },
            Base::Ratio(_) => Decision::Drop(Dropped::SampledOut),
        }
    }
}

/// The pipeline's counts of its decisions, shared with the accounting.
#[derive(Debug, Default)]
pub struct SamplingStats {
    sampled_out: AtomicU64,
    drop_port: AtomicU64,
    drop_peer: AtomicU64,
    drop_process: AtomicU64,
    kept_failed: AtomicU64,
    kept_long: AtomicU64,
}

/// [`SamplingStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SamplingCounts {
    pub sampled_out: u64,
    pub drop_port: u64,
    pub drop_peer: u64,
    pub drop_process: u64,
    pub kept_failed: u64,
    pub kept_long: u64,
}

impl SamplingStats {
    /// Counts `decision`: a drop by its cause, a keep by the rule that kept it.
    pub fn count(&self, decision: Decision) {
        let counter = match decision {
            Decision::Drop(Dropped::SampledOut) => &self.sampled_out,
            Decision::Drop(Dropped::Port) => &self.drop_port,
            Decision::Drop(Dropped::Peer) => &self.drop_peer,
            Decision::Drop(Dropped::Process) => &self.drop_process,
            Decision::Keep {
                rule: Some(KeepRule::Failed),
                ..
            } => &self.kept_failed,
            Decision::Keep {
                rule: Some(KeepRule::Long),
                ..
            } => &self.kept_long,
            Decision::Keep { rule: None, .. } => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn counts(&self) -> SamplingCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SamplingCounts {
            sampled_out: get(&self.sampled_out),
            drop_port: get(&self.drop_port),
            drop_peer: get(&self.drop_peer),
            drop_process: get(&self.drop_process),
            kept_failed: get(&self.kept_failed),
            kept_long: get(&self.kept_long),
        }
    }
}

impl SamplingCounts {
    /// Sessions `rule` kept.
    pub fn kept(&self, rule: KeepRule) -> u64 {
        match rule {
            KeepRule::Failed => self.kept_failed,
            KeepRule::Long => self.kept_long,
        }
    }
}

fn ratio_error(source: &str, text: &str) -> ConfigError {
    ConfigError {
        source_name: source.to_owned(),
        value: text.to_owned(),
        expected: "a sampling ratio from 0 to 1, like 0.1 (0 keeps no session, 1 every one)"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use super::*;
    use crate::session::tests::client_session;

    fn resolve(flags: &SamplingFlags, env: &[(&str, &str)]) -> Result<Sampler, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Sampler::resolve(flags, |name| env.get(name).cloned())
    }

    fn env_only(env: &[(&str, &str)]) -> Result<Sampler, ConfigError> {
        resolve(&SamplingFlags::default(), env)
    }

    /// A trace id whose randomness (last 7 bytes) is `randomness`.
    fn trace_id(randomness: u64) -> TraceId {
        let mut bytes = [0x5a; 16];
        bytes[9..].copy_from_slice(&randomness.to_be_bytes()[1..]);
        TraceId::from_bytes(bytes)
    }

    #[test]
    fn every_standard_name_resolves_and_parentbased_decides_as_its_root() {
        let half = Threshold::from_ratio(0.5).unwrap();
        let cases = [
            ("always_on", None, Base::All),
            ("parentbased_always_on", None, Base::All),
            ("always_off", None, Base::None),
            ("parentbased_always_off", None, Base::None),
            ("traceidratio", Some("0.5"), Base::Ratio(half)),
            ("parentbased_traceidratio", Some(" 0.5 "), Base::Ratio(half)),
            ("traceidratio", None, Base::Ratio(Threshold::ALWAYS)),
            ("traceidratio", Some("0"), Base::None),
            ("traceidratio", Some("1"), Base::Ratio(Threshold::ALWAYS)),
            // The specification ignores an argument of a sampler that takes none.
            ("always_on", Some("0.5"), Base::All),
        ];
        for (name, arg, base) in cases {
            let mut env = vec![("OTEL_TRACES_SAMPLER", name)];
            env.extend(arg.map(|arg| ("OTEL_TRACES_SAMPLER_ARG", arg)));
            let sampler = env_only(&env).unwrap();
            assert_eq!(sampler.base, base, "{name} {arg:?}");
            assert_eq!(sampler.name.name(), name);
        }
        assert_eq!(
            env_only(&[]).unwrap().name,
            SamplerName::ParentBasedAlwaysOn
        );
        assert_eq!(
            env_only(&[("OTEL_TRACES_SAMPLER", " ")]).unwrap().base,
            Base::All
        );
        // Flags win over the variables.
        let flags = SamplingFlags {
            sampler: Some("traceidratio".into()),
            sampler_arg: Some("0.25".into()),
            ..SamplingFlags::default()
        };
        let sampler = resolve(
            &flags,
            &[
                ("OTEL_TRACES_SAMPLER", "always_off"),
                ("OTEL_TRACES_SAMPLER_ARG", "x"),
            ],
        )
        .unwrap();
        assert_eq!(
            sampler.base,
            Base::Ratio(Threshold::from_ratio(0.25).unwrap())
        );
        assert_eq!(sampler.ratio(), 0.25);
    }

    #[test]
    fn bad_values_name_the_variable_and_what_is_accepted() {
        let error = env_only(&[("OTEL_TRACES_SAMPLER", "xray")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "OTEL_TRACES_SAMPLER=`xray` is invalid: one of always_on, always_off, \
             traceidratio, parentbased_always_on, parentbased_always_off, \
             parentbased_traceidratio"
        );
        for bad in ["1.5", "-0.1", "half", "NaN", "inf"] {
            let error = env_only(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", bad),
            ])
            .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "OTEL_TRACES_SAMPLER_ARG=`{bad}` is invalid: a sampling ratio from 0 to 1, \
                     like 0.1 (0 keeps no session, 1 every one)"
                )
            );
        }
        let flags = SamplingFlags {
            sampler: Some("always_off".into()),
            sampler_arg: Some("0.5".into()),
            ..SamplingFlags::default()
        };
        let error = resolve(&flags, &[]).unwrap_err();
        assert_eq!(error.source_name, "--traces-sampler-arg");
        let flags = SamplingFlags {
            sampler: Some("Always_On".into()),
            ..SamplingFlags::default()
        };
        assert_eq!(
            resolve(&flags, &[]).unwrap_err().source_name,
            "--traces-sampler"
        );
    }

    #[test]
    fn decisions_follow_rules_then_the_ratio_with_their_thresholds() {
        let half = Threshold::from_ratio(0.5).unwrap();
        let sampler = |name: &str, rules: Rules| {
            let flags = SamplingFlags {
                sampler: Some(name.into()),
                sampler_arg: name.contains("ratio").then(|| "0.5".into()),
                rules,
            };
            resolve(&flags, &[]).unwrap()
        };
        let session = client_session();
        let (above, below) = (trace_id(0x80_0000_0000_0000), trace_id(0x7f_ffff_ffff_ffff));
        let keep = |threshold, rule| Decision::Keep { threshold, rule };
        let ratio = sampler("traceidratio", Rules::default());
        assert_eq!(ratio.decide(&session, above), keep(Some(half), None));
        assert_eq!(
            ratio.decide(&session, below),
            Decision::Drop(Dropped::SampledOut)
        );
        let on = sampler("always_on", Rules::default());
        assert_eq!(on.decide(&session, below), keep(None, None));
        assert!(on.keeps_all());
        let off = sampler("always_off", Rules::default());
        assert_eq!(
            off.decide(&session, above),
            Decision::Drop(Dropped::SampledOut)
        );

        // A keep rule overrides the ratio, with an adjusted count of 1.
        let long = Rules {
            keep_longer_than: Some(Duration::from_millis(1)),
            ..Rules::default()
        };
        for name in ["traceidratio", "always_off"] {
            assert_eq!(
                sampler(name, long.clone()).decide(&session, below),
                keep(Some(Threshold::ALWAYS), Some(KeepRule::Long)),
                "{name}"
            );
        }
        // A drop rule overrides everything.
        let drop = Rules {
            drop_peer_ports: vec![8080],
            ..long
        };
        assert_eq!(
            sampler("always_on", drop.clone()).decide(&session, above),
            Decision::Drop(Dropped::Port)
        );
        assert!(!sampler("always_on", drop).keeps_all());
    }
}
