//! tracefs, which aya needs to attach a classic tracepoint: makes sure it is mounted (a fresh
//! machine may not mount it) and checks the running kernel's `inet_sock_set_state` record
//! layout against the one the probe was compiled with.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

/// Where the agent mounts tracefs when no tracefs is mounted.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// The older location, under debugfs, that aya also looks at.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
/// The tracepoints the probe attaches to, with the fields it reads: derived from the
/// record structs the probe reads its context through (`common::tracepoint`), so the check
/// below cannot drift from the probe.
pub use common::tracepoint::{
    INET_SOCK_SET_STATE, SYS_EXIT_ACCEPT, SYS_EXIT_ACCEPT4, TCP_RECEIVE_RESET, Tracepoint,
};

/// What stops the probe from attaching to its tracepoint.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at {TRACEFS} failed ({error}); run as root: mount -t tracefs tracefs {TRACEFS}"
    )]
    Mount { error: io::Error },
    #[error(
        "this process cannot read tracefs at {} ({error}): it is readable by root only; run otel-agent as root, or grant CAP_DAC_READ_SEARCH as well: setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep otel-agent",
        path.display()
    )]
    NotReadable { path: PathBuf, error: io::Error },
    #[error(
        "this kernel has no tracepoint {category}:{name} ({path} is missing: {error}); otel-agent needs Linux 5.17 or newer with CONFIG_INET"
    )]
    TracepointMissing {
        category: &'static str,
        name: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error(
        "this kernel lays out {category}:{name} differently from what the probe expects (field {field}: expected offset {expected_offset} size {expected_size}, found {found}); please report your kernel version"
    )]
    Layout {
        category: &'static str,
        name: &'static str,
        field: &'static str,
        expected_offset: u32,
        expected_size: u32,
        found: String,
    },
}

impl TracefsError {
    /// Whether more privileges would fix it: tracefs not readable, or not mounted and this
    /// process may not mount it (`EPERM` without `CAP_SYS_ADMIN`). Otherwise the kernel lacks
    /// something.
    pub fn is_missing_privilege(&self) -> bool {
        match self {
            Self::NotReadable { .. } => true,
            // EPERM and EACCES.
            Self::Mount { error } => error.kind() == io::ErrorKind::PermissionDenied,
            Self::TracepointMissing { .. } | Self::Layout { .. } => false,
        }
    }
}

/// Returns a mounted tracefs, mounting one at [`TRACEFS`] when there is none. The `bool`
/// says whether this call mounted it. A tracefs this process may not read (it is mode 0700,
/// owned by root) is reported as such, not mistaken for a missing one.
pub fn ensure_mounted() -> Result<(PathBuf, bool), TracefsError> {
    for candidate in [TRACEFS, DEBUGFS_TRACING] {
        match std::fs::metadata(Path::new(candidate).join("events")) {
            Ok(metadata) if metadata.is_dir() => return Ok((PathBuf::from(candidate), false)),
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                return Err(TracefsError::NotReadable {
                    path: PathBuf::from(candidate),
                    error,
                });
            }
            Ok(_) | Err(_) => {}
        }
    }
    mount_tracefs().map_err(|error| TracefsError::Mount { error })?;
    Ok((PathBuf::from(TRACEFS), true))
}

fn mount_tracefs() -> io::Result<()> {
    let source = CString::new("tracefs").map_err(io::Error::other)?;
    let target = CString::new(TRACEFS).map_err(io::Error::other)?;
    // SAFETY: every pointer is a valid NUL-terminated string or null (no mount data).
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Checks a tracepoint's format file under `tracefs` against the probe's layout.
pub fn check_layout(tracefs: &Path, tracepoint: &Tracepoint) -> Result<(), TracefsError> {
    let path = tracefs
        .join("events")
        .join(tracepoint.category)
        .join(tracepoint.name)
        .join("format");
    let format = std::fs::read_to_string(&path).map_err(|error| {
        if error.kind() == io::ErrorKind::PermissionDenied {
            TracefsError::NotReadable { path, error }
        } else {
            TracefsError::TracepointMissing {
                category: tracepoint.category,
                name: tracepoint.name,
                path,
                error,
            }
        }
    })?;
    check_format(&format, tracepoint)
}

fn check_format(format: &str, tracepoint: &Tracepoint) -> Result<(), TracefsError> {
    for field in tracepoint.fields {
        let found = parse_field(format, field.name);
        if found != Some((field.offset, field.size)) {
            return Err(TracefsError::Layout {
                category: tracepoint.category,
                name: tracepoint.name,
                field: field.name,
                expected_offset: field.offset,
                expected_size: field.size,
                found: found.map_or("no such field".to_owned(), |(offset, size)| {
                    format!("offset {offset} size {size}")
                }),
            });
        }
    }
    Ok(())
}

/// Finds `field:<type> <name>[<n>];\toffset:<o>;\tsize:<s>;` in a format file.
fn parse_field(format: &str, name: &str) -> Option<(u32, u32)> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        let declared = declaration.rsplit(' ').next()?;
        let declared = declared.split('[').next()?;
        if declared != name {
            return None;
        }
        let value = |prefix: &str| -> Option<u32> {
            line.split(';')
                .map(str::trim)
                .find_map(|part| part.strip_prefix(prefix))?
                .parse()
                .ok()
        };
        Some((value("offset:")?, value("size:")?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format file of Linux 6.18, as read from
    /// /sys/kernel/tracing/events/sock/inet_sock_set_state/format.
    const FORMAT: &str = "name: inet_sock_set_state
ID: 1558
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn accepts_the_known_layout() {
        check_format(FORMAT, &INET_SOCK_SET_STATE).unwrap();
        assert_eq!(parse_field(FORMAT, "saddr_v6"), Some((40, 16)));
        assert_eq!(parse_field(FORMAT, "skaddr"), Some((8, 8)));
    }

    #[test]
    fn checks_the_reset_and_accept_tracepoints() {
        let receive = "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n";
        check_format(receive, &TCP_RECEIVE_RESET).unwrap();
        let accept = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n";
        check_format(accept, &SYS_EXIT_ACCEPT4).unwrap();
        assert!(check_format(receive, &SYS_EXIT_ACCEPT).is_err());
    }

    #[test]
    fn names_the_first_field_that_moved() {
        let moved = FORMAT.replace("dport;\toffset:26", "dport;\toffset:28");
        assert_eq!(
            check_format(&moved, &INET_SOCK_SET_STATE)
                .unwrap_err()
                .to_string(),
            "this kernel lays out sock:inet_sock_set_state differently from what the probe expects (field dport: expected offset 26 size 2, found offset 28 size 2); please report your kernel version"
        );
        let missing = FORMAT.replace("protocol;", "proto;");
        assert!(
            check_format(&missing, &INET_SOCK_SET_STATE)
                .unwrap_err()
                .to_string()
                .contains("field protocol")
        );
    }
}
