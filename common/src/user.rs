//! Userspace decoding of [`SessionRecord`]s: a length-checked, alignment-free copy out of the
//! ring buffer, and typed views of the fields the kernel stores as integers.

use core::{fmt, net::IpAddr};

use crate::{
    AF_INET, AF_INET6, Filters, KernelOffsets, SESSION_RECORD_SIZE, SessionRecord, SocketState,
    origin,
};

// SAFETY: both are `repr(C)` structs of integers and integer arrays without padding holes;
// every bit pattern is valid.
unsafe impl aya::Pod for KernelOffsets {}
// SAFETY: as above.
unsafe impl aya::Pod for Filters {}
// SAFETY: as above (the padding is an explicit field).
unsafe impl aya::Pod for SocketState {}

/// Why a ring-buffer item is not a session record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The item is shorter than a [`SessionRecord`].
    TooShort { len: usize },
    /// The record's address family is neither `AF_INET` nor `AF_INET6`.
    UnknownFamily(u16),
    /// The record's origin is not one of [`origin`].
    UnknownOrigin(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(
                f,
                "record of {len} bytes is shorter than a session record ({SESSION_RECORD_SIZE} bytes)"
            ),
            Self::UnknownFamily(family) => write!(f, "unknown address family {family}"),
            Self::UnknownOrigin(origin) => write!(f, "unknown session origin {origin}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// How the session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The probe did not see whether this side connected or accepted.
    Unknown,
    /// This side called `connect()`.
    Active,
    /// This side accepted the connection from a listener.
    Passive,
}

impl TryFrom<u8> for Origin {
    type Error = DecodeError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            origin::UNKNOWN => Ok(Self::Unknown),
            origin::ACTIVE => Ok(Self::Active),
            origin::PASSIVE => Ok(Self::Passive),
            other => Err(DecodeError::UnknownOrigin(other)),
        }
    }
}

impl SessionRecord {
    /// Copies a record out of `bytes` (a ring-buffer item), checking its length and the
    /// fields that have a closed set of values. Extra trailing bytes are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < SESSION_RECORD_SIZE {
            return Err(DecodeError::TooShort { len: bytes.len() });
        }
        // SAFETY: the length was checked above, `read_unaligned` copes with any alignment,
        // and every bit pattern is a valid `SessionRecord` (integers and byte arrays only).
        let record = unsafe { bytes.as_ptr().cast::<Self>().read_unaligned() };
        record.local_ip()?;
        record.origin()?;
        Ok(record)
    }

    /// The local address; an IPv4-mapped IPv6 address is returned as IPv4.
    pub fn local_ip(&self) -> Result<IpAddr, DecodeError> {
        ip_from(self.family, &self.local_addr)
    }

    /// The remote address; an IPv4-mapped IPv6 address is returned as IPv4.
    pub fn remote_ip(&self) -> Result<IpAddr, DecodeError> {
        ip_from(self.family, &self.remote_addr)
    }

    /// How the session was opened.
    pub fn origin(&self) -> Result<Origin, DecodeError> {
        Origin::try_from(self.origin)
    }

    /// The owner's task name, up to its first NUL, safe to print and export (see
    /// [`printable`]).
    pub fn comm(&self) -> std::borrow::Cow<'_, str> {
        printable(&self.comm)
    }

    /// The owner's executable file name, up to its first NUL (at most `EXE_LEN - 1`
    /// bytes), safe to print and export (see [`printable`]); empty when the probe could
    /// not read it.
    pub fn exe(&self) -> std::borrow::Cow<'_, str> {
        printable(&self.exe.0)
    }

    /// Whether all bits of `flag` (from [`crate::flags`]) are set.
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag == flag
    }
}

/// `bytes` up to the first NUL as text safe to print and export: invalid UTF-8 becomes
/// U+FFFD and every control character (C0, DEL and C1: a process sets its name to any bytes
/// with `prctl(PR_SET_NAME)`, and a file name may hold any byte but `/`, escape sequences
/// and newlines included) becomes `?`.
fn printable(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = std::string::String::from_utf8_lossy(&bytes[..len]);
    if text.chars().any(char::is_control) {
        let replaced = text
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        std::borrow::Cow::Owned(replaced)
    } else {
        text
    }
}

fn ip_from(family: u16, bytes: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
        AF_INET6 => Ok(IpAddr::from(*bytes).to_canonical()),
        other => Err(DecodeError::UnknownFamily(other)),
    }
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, Ipv6Addr};
    use std::{string::ToString as _, vec::Vec};

    use super::*;
    use crate::flags;
    use crate::{COMM_LEN, EXE_LEN};

    fn bytes_of(record: &SessionRecord) -> Vec<u8> {
        // SAFETY: `SessionRecord` is `repr(C)` plain data without padding holes.
        unsafe {
            core::slice::from_raw_parts(
                core::ptr::from_ref(record).cast::<u8>(),
                SESSION_RECORD_SIZE,
            )
        }
        .to_vec()
    }

    fn ipv4_record() -> SessionRecord {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut local_addr = [0u8; 16];
        local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut remote_addr = [0u8; 16];
        remote_addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        SessionRecord {
            birth_ns: 1_000,
            close_ns: 5_000,
            bytes_acked: 12_347,
            bytes_received: 801,
            pid: 4242,
            flags: flags::BIRTH_SEEN | flags::BYTES_VALID,
            family: AF_INET,
            local_port: 50_000,
            remote_port: 443,
            origin: origin::ACTIVE,
            local_addr,
            remote_addr,
            comm,
            ..SessionRecord::default()
        }
    }

    #[test]
    fn decodes_an_ipv4_record_field_by_field() {
        let record = SessionRecord::decode(&bytes_of(&ipv4_record())).unwrap();
        assert_eq!(record, ipv4_record());
        assert_eq!(
            record.local_ip(),
            Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)))
        );
        assert_eq!(
            record.remote_ip(),
            Ok(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
        );
        assert_eq!(record.origin(), Ok(Origin::Active));
        assert_eq!(record.comm(), "curl");
        assert!(record.has(flags::BIRTH_SEEN));
        assert!(record.has(flags::BYTES_VALID));
    }

    #[test]
    fn decodes_an_ipv6_record_from_an_unaligned_buffer() {
        let mut record = ipv4_record();
        record.family = AF_INET6;
        record.local_addr = Ipv6Addr::LOCALHOST.octets();
        record.remote_addr = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets();
        record.origin = origin::PASSIVE;
        let mut buffer = std::vec![0xAA];
        buffer.extend(bytes_of(&record));

        let decoded = SessionRecord::decode(&buffer[1..]).unwrap();

        assert_eq!(decoded.local_ip(), Ok(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(
            decoded.remote_ip(),
            Ok("2001:db8::7".parse::<IpAddr>().unwrap())
        );
        assert_eq!(decoded.origin(), Ok(Origin::Passive));
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_are_reported_as_ipv4() {
        let mut record = ipv4_record();
        record.family = AF_INET6;
        record.local_addr = "::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets();
        record.remote_addr = "::ffff:10.0.0.9".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(
            record.local_ip(),
            Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)))
        );
        assert_eq!(
            record.remote_ip(),
            Ok(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)))
        );
    }

    #[test]
    fn a_full_comm_without_nul_is_kept_whole() {
        let mut record = ipv4_record();
        record.comm = *b"sixteen-chars-xy";
        assert_eq!(record.comm(), "sixteen-chars-xy");
    }

    fn comm_of(bytes: &[u8]) -> std::string::String {
        let mut record = ipv4_record();
        record.comm = [0; COMM_LEN];
        record.comm[..bytes.len()].copy_from_slice(bytes);
        record.comm().into_owned()
    }

    #[test]
    fn control_characters_in_comm_become_question_marks() {
        assert_eq!(comm_of(b"\x1b[31mred\x1b[0m"), "?[31mred?[0m");
        assert_eq!(comm_of(b"two\nlines\r\t"), "two?lines??");
        assert_eq!(comm_of(b"bell\x07del\x7f"), "bell?del?");
        assert_eq!(comm_of(b"\x01\x02\x03\x1f"), "????");
        // C1 controls, encoded in UTF-8: NEL (U+0085) and CSI (U+009B).
        assert_eq!(comm_of(b"a\xc2\x85b\xc2\x9bc"), "a?b?c");
        // Printable non-ASCII and punctuation stay as they are.
        assert_eq!(comm_of("caf\u{e9} x,y".as_bytes()), "caf\u{e9} x,y");
    }

    #[test]
    fn invalid_utf8_in_comm_is_replaced_and_controls_too() {
        assert_eq!(comm_of(b"bad\xff\xfe"), "bad\u{fffd}\u{fffd}");
        assert_eq!(comm_of(b"\xc3\x1b"), "\u{fffd}?");
        // A 16-byte name without NUL, cut in the middle of a character by the kernel.
        assert_eq!(comm_of(b"fifteen-chars-\xc3\xa9"), "fifteen-chars-\u{e9}");
        assert_eq!(comm_of(b"fifteen-chars-x\xc3"), "fifteen-chars-x\u{fffd}");
    }

    #[test]
    fn a_clean_comm_is_borrowed() {
        let record = ipv4_record();
        assert!(matches!(record.comm(), std::borrow::Cow::Borrowed("curl")));
    }

    #[test]
    fn refuses_a_short_record() {
        let bytes = bytes_of(&ipv4_record());
        assert_eq!(
            SessionRecord::decode(&bytes[..SESSION_RECORD_SIZE - 1]),
            Err(DecodeError::TooShort { len: 199 })
        );
        assert_eq!(
            SessionRecord::decode(&[]),
            Err(DecodeError::TooShort { len: 0 })
        );
    }

    #[test]
    fn refuses_an_unknown_family_or_origin() {
        let mut record = ipv4_record();
        record.family = 1;
        assert_eq!(
            SessionRecord::decode(&bytes_of(&record)),
            Err(DecodeError::UnknownFamily(1))
        );
        let mut record = ipv4_record();
        record.origin = 9;
        assert_eq!(
            SessionRecord::decode(&bytes_of(&record)),
            Err(DecodeError::UnknownOrigin(9))
        );
    }

    #[test]
    fn error_messages_say_what_was_wrong() {
        assert_eq!(
            DecodeError::TooShort { len: 3 }.to_string(),
            "record of 3 bytes is shorter than a session record (200 bytes)"
        );
    }

    /// Property tests: any bytes decode to a record or to the error that names what is
    /// wrong, never a panic; a valid record survives encode and decode unchanged.
    mod properties {
        use core::mem::offset_of;
        use std::vec::Vec;

        use proptest::{collection::vec, prelude::*};

        use super::{super::*, COMM_LEN, EXE_LEN, bytes_of};
        use crate::flags;

        /// A record with every field arbitrary but the family and origin, which decoding
        /// checks.
        fn valid_record() -> impl Strategy<Value = SessionRecord> {
            (
                any::<[u64; 6]>(),
                any::<[u32; 12]>(),
                prop_oneof![Just(AF_INET), Just(AF_INET6)],
                any::<[u16; 2]>(),
                (0u8..=2, any::<u8>()),
                any::<[[u8; 16]; 3]>(),
                any::<[[u8; 16]; EXE_LEN / 16]>(),
            )
                .prop_map(
                    |(wide, narrow, family, ports, (origin, close_from), bytes, exe)| {
                        let [
                            birth_ns,
                            close_ns,
                            established_ns,
                            bytes_acked,
                            bytes_received,
                            cgroup_id,
                        ] = wide;
                        let [
                            pid,
                            flags,
                            states,
                            snd_una,
                            write_seq,
                            rcv_nxt,
                            copied_seq,
                            srtt_us,
                            total_retrans,
                            segs_in,
                            segs_out,
                            netns,
                        ] = narrow;
                        let [local_addr, remote_addr, comm] = bytes;
                        SessionRecord {
                            birth_ns,
                            close_ns,
                            established_ns,
                            bytes_acked,
                            bytes_received,
                            cgroup_id,
                            pid,
                            flags,
                            states,
                            snd_una,
                            write_seq,
                            rcv_nxt,
                            copied_seq,
                            srtt_us,
                            total_retrans,
                            segs_in,
                            segs_out,
                            netns,
                            family,
                            local_port: ports[0],
                            remote_port: ports[1],
                            origin,
                            close_from_state: close_from,
                            local_addr,
                            remote_addr,
                            comm,
                            exe: crate::ExeName(exe.concat().try_into().unwrap_or([0; EXE_LEN])),
                        }
                    },
                )
        }

        /// The error `decode` must return for `bytes`, computed independently, or `None`.
        fn expected_error(bytes: &[u8]) -> Option<DecodeError> {
            if bytes.len() < SESSION_RECORD_SIZE {
                return Some(DecodeError::TooShort { len: bytes.len() });
            }
            let at = offset_of!(SessionRecord, family);
            let family = u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
            let origin = bytes[offset_of!(SessionRecord, origin)];
            if family != AF_INET && family != AF_INET6 {
                Some(DecodeError::UnknownFamily(family))
            } else if origin > origin::PASSIVE {
                Some(DecodeError::UnknownOrigin(origin))
            } else {
                None
            }
        }

        /// Uses every accessor of a decoded record: none may panic, and `comm` is clean.
        fn use_every_accessor(record: &SessionRecord) -> Result<(), TestCaseError> {
            prop_assert!(record.local_ip().is_ok());
            prop_assert!(record.remote_ip().is_ok());
            prop_assert!(record.origin().is_ok());
            let comm = record.comm();
            prop_assert!(!comm.chars().any(char::is_control), "{:?}", comm);
            prop_assert!(comm.chars().count() <= COMM_LEN);
            let exe = record.exe();
            prop_assert!(!exe.chars().any(char::is_control), "{:?}", exe);
            prop_assert!(exe.chars().count() <= EXE_LEN);
            let _ = record.has(flags::BIRTH_SEEN);
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            #[test]
            fn arbitrary_bytes_decode_or_fail_with_the_right_error(
                mut bytes in vec(any::<u8>(), 0..2 * SESSION_RECORD_SIZE),
                make_valid: bool,
            ) {
                // Half the long inputs get a valid family and origin, to reach the Ok path.
                if make_valid && bytes.len() >= SESSION_RECORD_SIZE {
                    let at = offset_of!(SessionRecord, family);
                    let family = if bytes[at] % 2 == 0 { AF_INET } else { AF_INET6 };
                    bytes[at..at + 2].copy_from_slice(&family.to_ne_bytes());
                    let at = offset_of!(SessionRecord, origin);
                    bytes[at] %= 3;
                }
                match (SessionRecord::decode(&bytes), expected_error(&bytes)) {
                    (Ok(record), None) => {
                        prop_assert_eq!(bytes_of(&record), &bytes[..SESSION_RECORD_SIZE]);
                        use_every_accessor(&record)?;
                    }
                    (result, expected) => prop_assert_eq!(result.err(), expected),
                }
            }

            #[test]
            fn a_valid_record_round_trips(
                record in valid_record(),
                misalign in 0usize..8,
                trailing in vec(any::<u8>(), 0..16),
            ) {
                let mut buffer: Vec<u8> = std::vec![0xA5; misalign];
                buffer.extend(bytes_of(&record));
                buffer.extend(&trailing);
                let decoded = SessionRecord::decode(&buffer[misalign..]);
                prop_assert_eq!(decoded, Ok(record));
                use_every_accessor(&record)?;
            }

            #[test]
            fn comm_is_always_printable_and_keeps_printable_ascii(comm: [u8; COMM_LEN]) {
                let mut record = SessionRecord { comm, ..SessionRecord::default() };
                let printed = record.comm().into_owned();
                prop_assert!(!printed.chars().any(char::is_control), "{:?}", printed);
                // Printable ASCII up to the first NUL comes out unchanged.
                let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
                for byte in &mut record.comm[..end] {
                    *byte = b' ' + *byte % 95;
                }
                let ascii: std::string::String =
                    record.comm[..end].iter().map(|&b| char::from(b)).collect();
                prop_assert_eq!(record.comm(), ascii.as_str());
            }
        }
    }
}
