//! A closed TCP session in userspace terms: socket addresses, wall-clock times and typed
//! fields, made from a decoded [`SessionRecord`]. This is what every sink (span, console)
//! consumes.

use std::{net::SocketAddr, time::SystemTime};

use common::{
    SessionRecord, flags,
    user::{DecodeError, Origin},
};

use crate::clock::WallClock;

/// Byte counters from `struct tcp_sock` at close, as tcplife reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteCounts {
    /// `bytes_acked`: sequence space the peer acknowledged (payload sent, plus SYN and FIN).
    pub acked: u64,
    /// `bytes_received`: sequence space received (payload received, plus FIN).
    pub received: u64,
}

/// One closed TCP session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session's birth (first state below `TCP_FIN_WAIT1`), wall clock.
    pub start: SystemTime,
    /// The change to `TCP_CLOSE`, wall clock.
    pub end: SystemTime,
    /// Lifespan in ns, from the kernel's monotonic timestamps.
    pub duration_ns: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Whether this side connected or accepted.
    pub origin: Origin,
    /// Process (thread group) id of the owner.
    pub pid: u32,
    /// The owner's task name.
    pub comm: String,
    /// `None` when the kernel's BTF did not give the counters' offsets.
    pub bytes: Option<ByteCounts>,
}

/// Why a record does not become a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The session opened before the probe was attached, so its birth is unknown.
    #[error("the session's birth was not seen (it opened before the probe was attached)")]
    BirthNotSeen,
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl Session {
    /// Builds a session from a decoded record, converting its timestamps with `clock`.
    pub fn from_record(record: &SessionRecord, clock: WallClock) -> Result<Self, SessionError> {
        if !record.has(flags::BIRTH_SEEN) {
            return Err(SessionError::BirthNotSeen);
        }
        let bytes = record.has(flags::BYTES_VALID).then_some(ByteCounts {
            acked: record.bytes_acked,
            received: record.bytes_received,
        });
        Ok(Self {
            start: clock.to_system_time(record.birth_ns),
            end: clock.to_system_time(record.close_ns),
            duration_ns: record.close_ns.saturating_sub(record.birth_ns),
            local: SocketAddr::new(record.local_ip()?, record.local_port),
            remote: SocketAddr::new(record.remote_ip()?, record.remote_port),
            origin: record.origin()?,
            pid: record.pid,
            comm: record.comm().into_owned(),
            bytes,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use common::{AF_INET, origin};

    use super::*;

    /// A record of a client session: 127.0.0.1:40000 -> 127.0.0.1:8080, 1.5 ms long.
    pub(crate) fn client_record() -> SessionRecord {
        let mut record = SessionRecord {
            birth_ns: 10_000_000,
            close_ns: 11_500_000,
            bytes_acked: 12_347,
            bytes_received: 2_049,
            pid: 777,
            flags: flags::BIRTH_SEEN | flags::BYTES_VALID,
            family: AF_INET,
            local_port: 40_000,
            remote_port: 8080,
            origin: origin::ACTIVE,
            ..SessionRecord::default()
        };
        record.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        record.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        record.comm[..4].copy_from_slice(b"curl");
        record
    }

    #[test]
    fn converts_a_record_field_by_field() {
        let clock = WallClock::with_offset_ns(1_000_000_000_000_000_000);
        let session = Session::from_record(&client_record(), clock).unwrap();
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(
            session,
            Session {
                start: epoch + Duration::from_nanos(1_000_000_000_010_000_000),
                end: epoch + Duration::from_nanos(1_000_000_000_011_500_000),
                duration_ns: 1_500_000,
                local: "127.0.0.1:40000".parse().unwrap(),
                remote: "127.0.0.1:8080".parse().unwrap(),
                origin: Origin::Active,
                pid: 777,
                comm: "curl".to_owned(),
                bytes: Some(ByteCounts {
                    acked: 12_347,
                    received: 2_049
                }),
            }
        );
    }

    #[test]
    fn byte_counts_are_absent_without_btf_offsets() {
        let mut record = client_record();
        record.flags = flags::BIRTH_SEEN;
        let session = Session::from_record(&record, WallClock::with_offset_ns(0)).unwrap();
        assert_eq!(session.bytes, None);
    }

    #[test]
    fn a_session_without_a_seen_birth_is_refused() {
        let mut record = client_record();
        record.flags = flags::BYTES_VALID;
        assert_eq!(
            Session::from_record(&record, WallClock::with_offset_ns(0)),
            Err(SessionError::BirthNotSeen)
        );
    }
}
