//! Counts the spans of an encoded `ExportTraceServiceRequest` by walking the protobuf wire
//! format (<https://protobuf.dev/programming-guides/encoding/>) along
//! `resource_spans` (1) -> `scope_spans` (2) -> `spans` (2), without decoding the spans.
//!
//! Contract: every field on that path, and every field skipped next to it, must be well
//! framed (valid keys and varints, lengths within their message, the expected wire type for
//! the fields on the path); otherwise the request is rejected, so a count is never a guess.
//! The contents of the fields it skips (resource, scope, schema URLs, the spans themselves)
//! are not checked: a request that prost would reject only for what is inside them is
//! counted. Groups (wire types 3 and 4, proto2 only; OTLP has none) are rejected.

/// Field numbers on the path to the spans (opentelemetry-proto's `trace_service.proto` and
/// `trace.proto`).
const RESOURCE_SPANS: u32 = 1;
const SCOPE_SPANS: u32 = 2;
const SPANS: u32 = 2;

/// Why a request's framing is not valid protobuf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("a field runs past the end of its message")]
    Truncated,
    #[error("a varint is longer than 10 bytes or exceeds 64 bits")]
    VarintOverflow,
    #[error("field key {0} has field number 0 or does not fit 32 bits")]
    InvalidKey(u64),
    #[error("wire type {0} is not one of 0, 1, 2 or 5")]
    InvalidWireType(u8),
    #[error("field {0} must be length-delimited (an embedded message)")]
    NotLengthDelimited(u32),
}

/// The spans in `request`, an encoded `ExportTraceServiceRequest`.
pub fn count_spans(request: &[u8]) -> Result<u64, WireError> {
    let mut spans = 0;
    for_each_embedded(request, RESOURCE_SPANS, |resource_spans| {
        for_each_embedded(resource_spans, SCOPE_SPANS, |scope_spans| {
            for_each_embedded(scope_spans, SPANS, |_span| {
                spans += 1;
                Ok(())
            })
        })
    })?;
    Ok(spans)
}

/// Walks the fields of `message`, checking each one's framing, and calls `visit` with the
/// payload of every occurrence of field `wanted` (a repeated embedded message).
fn for_each_embedded<'a>(
    message: &'a [u8],
    wanted: u32,
    mut visit: impl FnMut(&'a [u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut reader = Reader { rest: message };
    while !reader.rest.is_empty() {
        let (field, wire_type) = reader.key()?;
        if field != wanted {
            reader.skip(wire_type)?;
        } else if wire_type == WireType::Len {
            visit(reader.len_delimited()?)?;
        } else {
            return Err(WireError::NotLengthDelimited(field));
        }
    }
    Ok(())
}

/// The wire types proto3 uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WireType {
    Varint,
    I64,
    Len,
    I32,
}

impl TryFrom<u8> for WireType {
    type Error = WireError;

    fn try_from(value: u8) -> Result<Self, WireError> {
        match value {
            0 => Ok(Self::Varint),
            1 => Ok(Self::I64),
            2 => Ok(Self::Len),
            5 => Ok(Self::I32),
            other => Err(WireError::InvalidWireType(other)),
        }
    }
}

/// The unread part of one message.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A base-128 varint, with prost's limits: at most 10 bytes, and the tenth may only
    /// carry bit 63.
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0;
        for (index, &byte) in self.rest.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte < 0x80 {
                if index == 9 && byte > 1 {
                    return Err(WireError::VarintOverflow);
                }
                self.rest = &self.rest[index + 1..];
                return Ok(value);
            }
        }
        Err(if self.rest.len() < 10 {
            WireError::Truncated
        } else {
            WireError::VarintOverflow
        })
    }

    /// A field key: its field number and wire type. Like prost, the key must fit 32 bits
    /// and the field number must not be 0.
    fn key(&mut self) -> Result<(u32, WireType), WireError> {
        let key = self.varint()?;
        let field = u32::try_from(key)
            .map(|key| key >> 3)
            .map_err(|_| WireError::InvalidKey(key))?;
        if field == 0 {
            return Err(WireError::InvalidKey(key));
        }
        let wire_type = WireType::try_from((key & 0x07) as u8)?;
        Ok((field, wire_type))
    }

    /// The next `len` bytes.
    fn take(&mut self, len: u64) -> Result<&'a [u8], WireError> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.rest.len())
            .ok_or(WireError::Truncated)?;
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    /// The payload of a length-delimited field whose key was just read.
    fn len_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.varint()?;
        self.take(len)
    }

    /// Passes over the value of a field whose key was just read.
    fn skip(&mut self, wire_type: WireType) -> Result<(), WireError> {
        match wire_type {
            WireType::Varint => self.varint().map(drop),
            WireType::I64 => self.take(8).map(drop),
            WireType::Len => self.len_delimited().map(drop),
            WireType::I32 => self.take(4).map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span, span},
    };
    use proptest::{collection::vec, prelude::*};
    use prost::Message as _;

    use super::*;

    /// What prost, decoding the whole request, counts.
    fn prost_count(request: &[u8]) -> Option<u64> {
        let request = ExportTraceServiceRequest::decode(request).ok()?;
        let spans = request
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum::<usize>();
        Some(spans as u64)
    }

    /// Asserts that the counting pass and prost agree on `request` and returns the count.
    fn agreed_count(request: &[u8]) -> u64 {
        let spans = count_spans(request).expect("counts");
        assert_eq!(Some(spans), prost_count(request), "prost disagrees");
        spans
    }

    fn attribute(key: &str, value: String) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value)),
            }),
            ..KeyValue::default()
        }
    }

    /// A span with `attributes` attributes, and as many events and links, each with
    /// attributes of their own.
    fn span(attributes: usize) -> Span {
        let attributes: Vec<KeyValue> = (0..attributes)
            .map(|i| attribute("key", format!("value {i}")))
            .collect();
        Span {
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            name: "connect".to_owned(),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_150_000,
            events: (0..attributes.len())
                .map(|_| span::Event {
                    name: "state".to_owned(),
                    attributes: attributes.clone(),
                    ..span::Event::default()
                })
                .collect(),
            links: (0..attributes.len())
                .map(|_| span::Link {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    attributes: attributes.clone(),
                    ..span::Link::default()
                })
                .collect(),
            attributes,
            ..Span::default()
        }
    }

    /// `spans[r][s]` spans in scope `s` of resource `r`, with a resource, a scope and
    /// schema URLs as the SDK sends them.
    fn request(spans: &[Vec<Vec<Span>>]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: spans
                .iter()
                .map(|scopes| ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![attribute("service.name", "otel-agent".to_owned())],
                        ..Resource::default()
                    }),
                    scope_spans: scopes
                        .iter()
                        .map(|spans| ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "otel-agent".to_owned(),
                                ..InstrumentationScope::default()
                            }),
                            spans: spans.clone(),
                            schema_url: "https://opentelemetry.io/schemas/1.26.0".to_owned(),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
        }
    }

    fn put_varint(mut value: u64, out: &mut Vec<u8>) {
        while value >= 0x80 {
            out.push((value & 0x7f) as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn put_key(field: u32, wire_type: u8, out: &mut Vec<u8>) {
        put_varint(u64::from(field) << 3 | u64::from(wire_type), out);
    }

    /// Field `field` as an embedded message (or any length-delimited value).
    fn embedded(field: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_key(field, 2, &mut out);
        put_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// One field of each wire type, numbered so that no OTLP message on the path declares
    /// it (prost skips them too): a 10-byte varint, a fixed64, 300 bytes behind a two-byte
    /// key and length, and a fixed32 with the largest field number.
    fn unknown_fields() -> Vec<u8> {
        let mut out = Vec::new();
        put_key(15, 0, &mut out);
        put_varint(u64::MAX, &mut out);
        put_key(16, 1, &mut out);
        out.extend_from_slice(&[7; 8]);
        out.extend(embedded(1_000, &[0xff; 300]));
        put_key(536_870_911, 5, &mut out);
        out.extend_from_slice(&[7; 4]);
        out
    }

    /// `spans[r][s]` spans in scope `s` of resource `r`, encoded by hand, with
    /// [`unknown_fields`] before and after the known ones at every level.
    fn request_with_unknown_fields(spans: &[Vec<Vec<Span>>]) -> Vec<u8> {
        let unknown = unknown_fields();
        let wrap = |parts: Vec<Vec<u8>>| -> Vec<u8> {
            let mut out = unknown.clone();
            out.extend(parts.into_iter().flatten());
            out.extend_from_slice(&unknown);
            out
        };
        wrap(
            spans
                .iter()
                .map(|scopes| {
                    let scopes = scopes
                        .iter()
                        .map(|spans| {
                            let spans = spans
                                .iter()
                                .map(|span| embedded(SPANS, &span.encode_to_vec()))
                                .collect();
                            embedded(SCOPE_SPANS, &wrap(spans))
                        })
                        .collect();
                    embedded(RESOURCE_SPANS, &wrap(scopes))
                })
                .collect(),
        )
    }

    #[test]
    fn counts_no_spans_in_empty_requests() {
        assert_eq!(agreed_count(&[]), 0);
        assert_eq!(agreed_count(&request(&[]).encode_to_vec()), 0);
        assert_eq!(agreed_count(&request(&[vec![]]).encode_to_vec()), 0);
        assert_eq!(
            agreed_count(&request(&[vec![vec![]; 3]]).encode_to_vec()),
            0
        );
    }

    #[test]
    fn counts_spans_over_several_resources_and_scopes() {
        let spans = [
            vec![vec![span(0); 3], vec![], vec![span(1); 4]],
            vec![],
            vec![vec![span(2); 5]],
        ];
        assert_eq!(agreed_count(&request(&spans).encode_to_vec()), 12);
    }

    #[test]
    fn counts_spans_with_many_attributes_events_and_links() {
        let spans = [vec![vec![span(40), span(0), span(40)]]];
        assert_eq!(agreed_count(&request(&spans).encode_to_vec()), 3);
    }

    #[test]
    fn counts_large_requests_with_multi_byte_lengths() {
        // One span over 16 KiB (a 3-byte length) and 512 spans (the exporter's batch).
        let big = span(30);
        assert!(big.encoded_len() > 16 * 1024);
        let spans = [vec![vec![big], vec![span(3); 512]]];
        let encoded = request(&spans).encode_to_vec();
        assert!(encoded.len() > 128 * 1024);
        assert_eq!(agreed_count(&encoded), 513);
    }

    #[test]
    fn skips_unknown_fields_at_every_level() {
        let spans = [vec![vec![span(2); 3], vec![]], vec![vec![span(0)]]];
        assert_eq!(agreed_count(&request_with_unknown_fields(&spans)), 4);
    }

    #[test]
    fn rejects_malformed_framing() {
        let valid = request(&[vec![vec![span(1); 2]]]).encode_to_vec();
        let cases: [(&[u8], WireError); 9] = [
            // Truncated at every level: the request's field, a scope's, a span's.
            (&valid[..valid.len() - 1], WireError::Truncated),
            (
                &embedded(RESOURCE_SPANS, &[0x12, 0x05, 0x12, 0x01]),
                WireError::Truncated,
            ),
            (&[0x0a, 0x80], WireError::Truncated),
            // A length beyond any buffer, and a key cut in the middle.
            (&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], WireError::Truncated),
            (&[0x80], WireError::Truncated),
            // Eleven bytes, and a tenth byte beyond bit 63.
            (
                &[
                    0x78, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                WireError::VarintOverflow,
            ),
            (
                &[
                    0x78, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
                WireError::VarintOverflow,
            ),
            // Wire type 7, and resource_spans as a varint.
            (&[0x7f, 0x00], WireError::InvalidWireType(7)),
            (&[0x08, 0x01], WireError::NotLengthDelimited(1)),
        ];
        for (input, error) in cases {
            assert_eq!(count_spans(input), Err(error), "{input:02x?}");
            assert_eq!(prost_count(input), None, "prost accepts {input:02x?}");
        }
    }

    #[test]
    fn rejects_invalid_keys_and_groups() {
        // Field number 0; a key beyond 32 bits; a group (wire type 3) around nothing.
        assert_eq!(count_spans(&[0x02, 0x00]), Err(WireError::InvalidKey(2)));
        let wide_key = [0x80, 0x80, 0x80, 0x80, 0x10, 0x00];
        assert_eq!(count_spans(&wide_key), Err(WireError::InvalidKey(1 << 32)));
        assert_eq!(
            count_spans(&[0x7b, 0x7c]),
            Err(WireError::InvalidWireType(3))
        );
    }

    /// Spans with 0 to 3 attributes or, one in five, 20 (and as many events and links).
    fn any_span() -> impl Strategy<Value = Span> {
        prop_oneof![4 => 0..4_usize, 1 => Just(20)].prop_map(span)
    }

    /// Up to 4 resources of up to 4 scopes of up to 30 spans.
    fn any_spans() -> impl Strategy<Value = Vec<Vec<Vec<Span>>>> {
        vec(vec(vec(any_span(), 0..30), 0..4), 0..4)
    }

    fn total(spans: &[Vec<Vec<Span>>]) -> u64 {
        spans.iter().flatten().map(Vec::len).sum::<usize>() as u64
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn counts_what_prost_decodes(spans in any_spans()) {
            prop_assert_eq!(agreed_count(&request(&spans).encode_to_vec()), total(&spans));
            prop_assert_eq!(agreed_count(&request_with_unknown_fields(&spans)), total(&spans));
        }

        /// A request cut short is rejected exactly when prost rejects it, and otherwise
        /// (cut between two fields) counted as prost counts it.
        #[test]
        fn agrees_with_prost_on_every_cut(spans in any_spans(), cut in any::<prop::sample::Index>()) {
            let encoded = request_with_unknown_fields(&spans);
            let prefix = &encoded[..cut.index(encoded.len() + 1)];
            prop_assert_eq!(count_spans(prefix).ok(), prost_count(prefix));
        }
    }
}
