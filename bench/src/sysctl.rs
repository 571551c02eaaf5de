//! Sysctl changes that undo themselves: [`SysctlGuard::set`] remembers the value it
//! replaced and writes it back when the guard is dropped (normal return, error, panic
//! unwinding, or a signal turned into an orderly stop by [`crate::signals`]).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// A sysctl could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("cannot read sysctl {name} ({path}): {source}")]
    Read {
        name: String,
        path: String,
        source: io::Error,
    },
    #[error(
        "cannot set sysctl {name} to `{value}` ({source}); run as root, or pass --keep-sysctls to leave it unchanged"
    )]
    Write {
        name: String,
        value: String,
        source: io::Error,
    },
}

/// The `/proc/sys` file of a dotted sysctl name (`net.ipv4.tcp_max_tw_buckets` ->
/// `/proc/sys/net/ipv4/tcp_max_tw_buckets`).
pub fn path_of(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

/// Reads a sysctl, without the trailing newline.
pub fn read(name: &str) -> Result<String, SysctlError> {
    let path = path_of(name);
    fs::read_to_string(&path)
        .map(|value| value.trim_end().to_owned())
        .map_err(|source| SysctlError::Read {
            name: name.to_owned(),
            path: path.display().to_string(),
            source,
        })
}

/// A changed sysctl; dropping it restores the previous value.
#[derive(Debug)]
pub struct SysctlGuard {
    name: String,
    original: String,
}

impl SysctlGuard {
    /// Sets `name` to `value` and returns a guard that restores the previous value.
    pub fn set(name: &str, value: &str) -> Result<Self, SysctlError> {
        let original = read(name)?;
        write(name, value)?;
        Ok(Self {
            name: name.to_owned(),
            original,
        })
    }

    /// The value that will be restored.
    pub fn original(&self) -> &str {
        &self.original
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(error) = write(&self.name, &self.original) {
            eprintln!(
                "churn: {error}; restore it by hand: sysctl -w {}='{}'",
                self.name, self.original
            );
        }
    }
}

fn write(name: &str, value: &str) -> Result<(), SysctlError> {
    fs::write(path_of(name), value).map_err(|source| SysctlError::Write {
        name: name.to_owned(),
        value: value.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_names_map_to_proc_sys_paths() {
        assert_eq!(
            path_of("net.ipv4.ip_local_port_range"),
            Path::new("/proc/sys/net/ipv4/ip_local_port_range")
        );
    }

    #[test]
    fn reads_a_sysctl_without_its_newline() {
        let value = read("kernel.ostype").unwrap();
        assert_eq!(value, "Linux");
    }

    #[test]
    fn a_missing_sysctl_names_itself() {
        let error = read("net.ipv4.no_such_knob").unwrap_err().to_string();
        assert!(
            error.starts_with(
                "cannot read sysctl net.ipv4.no_such_knob (/proc/sys/net/ipv4/no_such_knob)"
            ),
            "{error}"
        );
    }
}
