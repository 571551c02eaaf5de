//! The agent's top-level error and the exit code each kind of failure maps to, so that
//! scripts and supervisors can tell bad input from missing privileges from a kernel that
//! lacks a feature. Codes follow `sysexits.h`; clap's own usage errors exit with 2.

use std::process::ExitCode;

use crate::{export, local, probe};

/// Exit codes, one per kind of failure.
pub mod exit_code {
    /// A flag, variable or configuration value is invalid (`EX_CONFIG`).
    pub const CONFIG: u8 = 78;
    /// The agent lacks a privilege it needs (`EX_NOPERM`).
    pub const NO_PERMISSION: u8 = 77;
    /// The kernel lacks a feature the probe needs (`EX_UNAVAILABLE`).
    pub const KERNEL_UNSUPPORTED: u8 = 69;
    /// Writing a local output (the console, JSON lines) failed, for example stdout was
    /// closed or the disk is full; or the spool directory cannot be used (`EX_IOERR`).
    pub const OUTPUT: u8 = 74;
    /// The pin directory (`--bpf-pin-dir`) holds a probe of a layout this agent cannot take
    /// over (`EX_DATAERR`): `otel-agent detach --bpf-pin-dir DIR` removes it.
    pub const PINS_INCOMPATIBLE: u8 = 65;
    /// Anything else: an internal failure (`EX_SOFTWARE`).
    pub const INTERNAL: u8 = 70;
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] export::config::ConfigError),
    #[error(transparent)]
    Export(#[from] export::ExportError),
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
    #[error(transparent)]
    Output(#[from] local::SinkFailed),
    #[error(transparent)]
    Spool(#[from] export::spool::SpoolError),
    #[error("cannot open the JSON output {path}: {error}; check the path and its permissions")]
    JsonOutput {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Config(_) | Self::Export(_) | Self::JsonOutput { .. } => exit_code::CONFIG,
            Self::Probe(error) if error.is_incompatible_pins() => exit_code::PINS_INCOMPATIBLE,
            Self::Probe(error) if error.is_unusable_pin_dir() => exit_code::CONFIG,
            Self::Probe(error) if error.is_missing_privilege() => exit_code::NO_PERMISSION,
            Self::Probe(error) if error.is_missing_kernel_feature() => {
                exit_code::KERNEL_UNSUPPORTED
            }
            Self::Probe(_) | Self::Internal(_) => exit_code::INTERNAL,
            Self::Output(_) | Self::Spool(_) => exit_code::OUTPUT,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_text::with_causes;

    fn output_failed(error: std::io::Error) -> AgentError {
        AgentError::Output(local::SinkFailed {
            what: "tcplife lines",
            target: "stdout".into(),
            error,
        })
    }

    #[test]
    fn causes_are_chained_once() {
        let error = output_failed(std::io::Error::other("disk on fire"));
        assert_eq!(
            with_causes(&error),
            "cannot write tcplife lines to stdout: disk on fire"
        );
    }

    #[test]
    fn errors_embed_their_cause_and_expose_none() {
        use std::error::Error as _;
        let output = output_failed(std::io::Error::other("disk on fire"));
        let mount = tracefs(probe::tracefs::TracefsError::Mount {
            error: std::io::Error::from_raw_os_error(libc::EPERM),
        });
        let json = AgentError::JsonOutput {
            path: "/x".into(),
            error: std::io::Error::other("disk full"),
        };
        for error in [output, mount, json] {
            assert!(error.source().is_none(), "{error}");
            assert_eq!(with_causes(&error), error.to_string());
        }
    }

    #[test]
    fn each_kind_of_failure_has_its_own_code() {
        let config = AgentError::Config(export::config::ConfigError {
            source_name: "--otlp-endpoint".into(),
            value: "x".into(),
            expected: "a URL".into(),
        });
        assert_eq!(config.exit_code(), ExitCode::from(exit_code::CONFIG));
        let output = output_failed(std::io::Error::other("closed"));
        assert_eq!(output.exit_code(), ExitCode::from(exit_code::OUTPUT));
    }

    #[test]
    fn pin_directory_failures_are_layout_or_configuration() {
        use probe::pins::PinError;
        let pins = |error| AgentError::Probe(probe::ProbeError::Pins(error));
        let incompatible = pins(PinError::Incompatible {
            path: "/sys/fs/bpf/a".into(),
            reason: "its record layout is version 2, this agent's is 1".into(),
        });
        assert_eq!(
            incompatible.exit_code(),
            ExitCode::from(exit_code::PINS_INCOMPATIBLE)
        );
        for unusable in [
            PinError::NotBpffs {
                path: "/tmp/a".into(),
                reason: "/tmp is not on a BPF filesystem".into(),
            },
            PinError::Busy {
                path: "/sys/fs/bpf/a".into(),
            },
        ] {
            assert_eq!(
                pins(unusable).exit_code(),
                ExitCode::from(exit_code::CONFIG)
            );
        }
        let io = pins(PinError::Io {
            path: "/sys/fs/bpf/a".into(),
            what: "pin a link",
            reason: "Operation not permitted (os error 1)".into(),
        });
        assert_eq!(io.exit_code(), ExitCode::from(exit_code::INTERNAL));
    }

    fn tracefs(error: probe::tracefs::TracefsError) -> AgentError {
        AgentError::Probe(probe::ProbeError::Tracefs(error))
    }

    #[test]
    fn tracefs_failures_are_privileges_or_kernel_features() {
        use probe::tracefs::TracefsError;
        let os = std::io::Error::from_raw_os_error;
        let privileges = ExitCode::from(exit_code::NO_PERMISSION);
        let kernel = ExitCode::from(exit_code::KERNEL_UNSUPPORTED);
        let mount = |errno| tracefs(TracefsError::Mount { error: os(errno) });
        assert_eq!(mount(libc::EPERM).exit_code(), privileges);
        assert_eq!(mount(libc::EACCES).exit_code(), privileges);
        assert_eq!(
            mount(libc::ENODEV).exit_code(),
            kernel,
            "no tracefs in the kernel"
        );
        let not_readable = tracefs(TracefsError::NotReadable {
            path: "/sys/kernel/tracing".into(),
            error: os(libc::EACCES),
        });
        assert_eq!(not_readable.exit_code(), privileges);
        let missing = tracefs(TracefsError::TracepointMissing {
            category: "sock",
            name: "inet_sock_set_state",
            path: "/sys/kernel/tracing/events/sock/inet_sock_set_state/format".into(),
            error: os(libc::ENOENT),
        });
        assert_eq!(missing.exit_code(), kernel);
        assert_eq!(
            with_causes(&not_readable),
            "this process cannot read tracefs at /sys/kernel/tracing (Permission denied (os error 13)): it is readable by root only; run otel-agent as root, or grant CAP_DAC_READ_SEARCH as well: setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep otel-agent"
        );
    }
}
