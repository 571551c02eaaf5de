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
fn varint_len(value: u64) -> usize {
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

/// A nested message whose body `body` appends. Its length is known only afterwards, so one
/// byte is reserved for it and the body moved when the length needs more (the common case
/// of a body under 128 bytes moves nothing).
pub fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LENGTH_DELIMITED);
    let at = out.len();
    out.push(0);
    body(out);
    let len = out.len() - at - 1;
    let width = varint_len(len as u64);
    if width > 1 {
        out.resize(out.len() + width - 1, 0);
        out.copy_within(at + 1..at + 1 + len, at + width);
    }
    let mut rest = len as u64;
    for slot in &mut out[at..at + width] {
        *slot = (rest as u8 & 0x7f) | 0x80;
        rest >>= 7;
    }
    out[at + width - 1] &= 0x7f;
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
            message(&mut out, 4, |out| out.extend(encode(inner)));
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
