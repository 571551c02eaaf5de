//! Checks, before anything is loaded, that the agent holds the capabilities the probe needs,
//! so that a missing privilege is reported as such instead of as a failed system call.

/// `CAP_SYS_ADMIN`, `CAP_PERFMON` and `CAP_BPF` from `include/uapi/linux/capability.h`.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

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
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
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
