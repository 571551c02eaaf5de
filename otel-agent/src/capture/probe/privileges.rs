//! The capabilities a thread holds, as its `/proc/<pid>/status` shows them (the one parser
//! of its `Cap*` and `NoNewPrivs` lines), and the check, before anything is loaded, that the
//! agent holds the capabilities the probe needs, so that a missing privilege is reported as
//! such instead of as a failed system call.

use capctl::Cap;

/// The bits of `CAP_SYS_ADMIN`, `CAP_PERFMON` and `CAP_BPF` in a capability mask.
const CAP_SYS_ADMIN: u32 = Cap::SYS_ADMIN as u32;
const CAP_PERFMON: u32 = Cap::PERFMON as u32;
pub(crate) const CAP_BPF: u32 = Cap::BPF as u32;

/// One thread's capability sets and `no_new_privs` flag, as `/proc/<pid>/status` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

impl CapSets {
    /// Reads the `CapInh`, `CapPrm`, `CapEff`, `CapAmb` and `NoNewPrivs` lines of a status
    /// file; `None` if one is missing or malformed.
    pub fn from_status(status: &str) -> Option<Self> {
        Some(Self {
            effective: mask(status, "CapEff")?,
            permitted: mask(status, "CapPrm")?,
            inheritable: mask(status, "CapInh")?,
            ambient: mask(status, "CapAmb")?,
            no_new_privs: field(status, "NoNewPrivs")? == "1",
        })
    }

    /// No capability in any set, and `no_new_privs` set.
    pub fn is_dropped(&self) -> bool {
        self.is_dropped_except(0)
    }

    /// No capability but those of `keep` in the effective and permitted sets, none in the
    /// others, and `no_new_privs` set.
    pub fn is_dropped_except(&self, keep: u64) -> bool {
        (self.effective | self.permitted) & !keep == 0
            && (self.inheritable | self.ambient) == 0
            && self.no_new_privs
    }
}

/// The value of the `name:` line of a status file.
pub(crate) fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// A capability mask line (`CapEff:\t000001ffffffffff`) of a status file.
fn mask(status: &str, name: &str) -> Option<u64> {
    u64::from_str_radix(field(status, name)?, 16).ok()
}

/// The agent lacks a capability it needs.
#[derive(Debug, thiserror::Error)]
#[error(
    "otel-agent needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load its probe, and this process has {held}; run it as root (sudo otel-agent) or grant them, with CAP_DAC_READ_SEARCH to read tracefs when not root: setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep otel-agent"
)]
pub struct MissingPrivileges {
    held: String,
}

/// Fails unless the effective capabilities allow loading a tracing BPF program.
pub fn check() -> Result<(), MissingPrivileges> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    check_status(&status)
}

fn check_status(status: &str) -> Result<(), MissingPrivileges> {
    let effective = mask(status, "CapEff").unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let held = match (has(CAP_BPF), has(CAP_PERFMON)) {
        (false, false) => "neither",
        (true, false) => "only CAP_BPF",
        (false, true) => "only CAP_PERFMON",
        (true, true) => "both",
    };
    Err(MissingPrivileges {
        held: held.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "Name:\totel-agent\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n";

    #[test]
    fn reads_the_sets_from_a_status_file() {
        assert_eq!(
            CapSets::from_status(ROOT),
            Some(CapSets {
                effective: 0x1ff_ffff_ffff,
                permitted: 0x1ff_ffff_ffff,
                inheritable: 0,
                ambient: 0,
                no_new_privs: false,
            })
        );
        assert_eq!(CapSets::from_status("CapEff:\t0\n"), None);
        assert_eq!(
            CapSets::from_status(&ROOT.replace("CapAmb:\t0000000000000000", "CapAmb:\tzz")),
            None
        );
    }

    #[test]
    fn dropped_means_empty_sets_and_no_new_privs() {
        let dropped = CapSets {
            effective: 0,
            permitted: 0,
            inheritable: 0,
            ambient: 0,
            no_new_privs: true,
        };
        assert!(dropped.is_dropped());
        assert!(!CapSets::from_status(ROOT).unwrap().is_dropped());
        assert!(
            !CapSets {
                no_new_privs: false,
                ..dropped
            }
            .is_dropped()
        );
        assert!(
            !CapSets {
                ambient: 1 << 39,
                ..dropped
            }
            .is_dropped()
        );
        let only_bpf = CapSets {
            effective: 1 << CAP_BPF,
            permitted: 1 << CAP_BPF,
            ..dropped
        };
        assert!(!only_bpf.is_dropped());
        assert!(only_bpf.is_dropped_except(1 << CAP_BPF));
        assert!(
            !CapSets {
                inheritable: 1 << CAP_BPF,
                ..only_bpf
            }
            .is_dropped_except(1 << CAP_BPF)
        );
    }

    #[test]
    fn root_and_bpf_plus_perfmon_pass() {
        check_status("Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap();
        check_status("CapEff:\t000000c000000000\n").unwrap();
        check_status("CapEff:\t0000000000200000\n").unwrap();
    }

    #[test]
    fn missing_capabilities_are_named() {
        let error = check_status("CapEff:\t0000000000000000\n").unwrap_err();
        assert!(error.to_string().starts_with(
            "otel-agent needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load its probe, and this process has neither;"
        ));
        let error = check_status("CapEff:\t0000008000000000\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "otel-agent needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load its probe, and this process has only CAP_BPF; run it as root (sudo otel-agent) or grant them, with CAP_DAC_READ_SEARCH to read tracefs when not root: setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep otel-agent"
        );
    }
}
