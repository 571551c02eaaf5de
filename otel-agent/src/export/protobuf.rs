//! The protocol-buffers wire format, as much of it as encoding OTLP spans takes: varints,
//! fixed-width integers, length-delimited bytes and nested messages, appended to a
//! `Vec<u8>` that is reused between requests. Fields are written in field-number order and
//! scalars at their default value are left out, as prost (and every other protobuf
//! library) does, so that what this writes decodes to the same message and, field for
//! field, has the same bytes.

/// Wire type of varint fields (`int64`, `uint32`, `bool`, enums).
const VARINT: u32 = 0;
/// Wire type of `fixed64` fields.
const FIXED64: u32 = 1;
/// Wire type of strings, bytes and nested messages.
const LENGTH_DELIMITED: u32 = 2;
/// Wire type of `fixed32` fields.
const FIXED32: u32 = 5;

/// Appends `value` as a varint.
pub fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// How many bytes `value` takes as a varint.
pub fn varint_len(value: u64) -> usize {
    // One byte per started group of 7 bits; 0 still takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(out, u64::from(field << 3 | wire_type));
}

/// A `bytes` or `string` field, written even when empty (for `oneof` members).
pub fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    key(out, field, LENGTH_DELIMITED);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// A `bytes` or `string` field, left out when empty.
pub fn bytes_unless_empty(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        bytes(out, field, value);
    }
}

/// A varint field (`int64` is written as its two's complement, as protobuf does), written
/// even when zero (for `oneof` members).
pub fn int(out: &mut Vec<u8>, field: u32, value: i64) {
    key(out, field, VARINT);
    varint(out, value as u64);
}

/// A varint field, left out when zero.
pub fn int_unless_zero(out: &mut Vec<u8>, field: u32, value: i64) {
    if value != 0 {
        int(out, field, value);
    }
}

/// A `fixed64` field, left out when zero.
pub fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(out, field, FIXED64);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A `fixed32` field, left out when zero.
pub fn fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        key(out, field, FIXED32);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A nested message whose body `body` appends, expected to be under 128 bytes.
pub fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    message_sized(out, field, 1, body);
}

/// A nested message whose body `body` appends. Its length is known only afterwards, so
/// `width` bytes (the expected size of the length) are reserved for it, and the body is
/// moved only when the length takes another number of bytes.
pub fn message_sized(out: &mut Vec<u8>, field: u32, width: usize, body: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LENGTH_DELIMITED);
    let at = out.len();
    out.resize(at + width, 0);
    body(out);
    let len = out.len() - at - width;
    let needed = varint_len(len as u64);
    if needed != width {
        let body_at = at + width;
        if needed > width {
            out.resize(out.len() + needed - width, 0);
        }
        out.copy_within(body_at..body_at + len, at + needed);
        out.truncate(at + needed + len);
    }
    write_varint_at(&mut out[at..at + needed], len as u64);
}

/// A length-delimited field whose body is `len` bytes the caller appends next.
pub fn length_delimited_header(out: &mut Vec<u8>, field: u32, len: usize) {
    key(out, field, LENGTH_DELIMITED);
    varint(out, len as u64);
}

/// How many bytes a length-delimited field takes around a body of `len` bytes.
pub fn length_delimited_len(field: u32, len: usize) -> usize {
    varint_len(u64::from(field << 3)) + varint_len(len as u64) + len
}

/// Writes `value` as a varint filling `slot` exactly.
fn write_varint_at(slot: &mut [u8], mut value: u64) {
    for byte in slot.iter_mut() {
        *byte = (value as u8 & 0x7f) | 0x80;
        value >>= 7;
    }
    if let Some(last) = slot.last_mut() {
        *last &= 0x7f;
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// A message with one field of each kind written here, as prost encodes it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Sample {
        #[prost(int64, tag = "1")]
        number: i64,
        #[prost(fixed64, tag = "2")]
        wide: u64,
        #[prost(string, tag = "3")]
        text: String,
        #[prost(message, optional, tag = "4")]
        inner: Option<Box<Sample>>,
        #[prost(fixed32, tag = "5")]
        narrow: u32,
    }

    fn encode(sample: &Sample) -> Vec<u8> {
        let mut out = Vec::new();
        int_unless_zero(&mut out, 1, sample.number);
        fixed64(&mut out, 2, sample.wide);
        bytes_unless_empty(&mut out, 3, sample.text.as_bytes());
        if let Some(inner) = &sample.inner {
            // Every guess of the length's size gives the same bytes.
            let mut guesses = (1..=3).map(|width| {
                let mut nested = Vec::new();
                message_sized(&mut nested, 4, width, |out| out.extend(encode(inner)));
                nested
            });
            let first = guesses.next().unwrap();
            assert!(guesses.all(|other| other == first));
            out.extend(first);
        }
        fixed32(&mut out, 5, sample.narrow);
        out
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(varint_len(value), out.len(), "{value}");
        }
    }

    #[test]
    fn fields_are_byte_for_byte_what_prost_writes() {
        let leaf = Sample {
            number: -5,
            wide: 0,
            text: "x".repeat(300),
            inner: None,
            narrow: 0x101,
        };
        let middle = Sample {
            number: 0,
            wide: 1_700_000_000_000_000_000,
            text: String::new(),
            inner: Some(Box::new(leaf)),
            narrow: 0,
        };
        // Nested bodies of 0, under 128, and over 16,383 bytes (a three-byte length).
        for sample in [
            Sample::default(),
            middle.clone(),
            Sample {
                number: i64::MAX,
                wide: 1,
                text: "y".repeat(20_000),
                inner: Some(Box::new(middle)),
                narrow: 7,
            },
        ] {
            assert_eq!(encode(&sample), sample.encode_to_vec());
        }
    }
}
