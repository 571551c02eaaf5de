//! Encodes batches of sessions straight into the protobuf bytes of an OTLP
//! `ExportTraceServiceRequest`, without building the SDK's span objects or the generated
//! protobuf structs in between: one reused buffer, no allocation per span. What a
//! collector receives is the same message, byte for byte, as the OpenTelemetry SDK's
//! exporters send for the same spans (the tests compare the two).
//!
//! The message layout is `opentelemetry/proto/collector/trace/v1/trace_service.proto` and
//! `opentelemetry/proto/trace/v1/trace.proto`; the field numbers below are theirs.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;

use opentelemetry::InstrumentationScope;
use opentelemetry_proto::{
    tonic::{
        common::v1::InstrumentationScope as ProtoScope, resource::v1::Resource as ProtoResource,
        trace::v1::span::SpanKind as ProtoSpanKind,
    },
    transform::common::tonic::ResourceAttributesWithSchema,
};
use opentelemetry_sdk::Resource;
use prost::Message as _;

use super::{
    protobuf,
    workload::{ResourceMode, ResourceSettings, WorkloadResources},
};
use crate::{
    export::span::{self, AttributeValue, SpanText},
    session::Session,
    threshold::Threshold,
};

/// `ExportTraceServiceRequest.resource_spans`.
const REQUEST_RESOURCE_SPANS: u32 = 1;
/// `ResourceSpans` fields.
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const RESOURCE_SPANS_SCHEMA_URL: u32 = 3;
/// `ScopeSpans` fields.
const SCOPE_SPANS_SCOPE: u32 = 1;
const SCOPE_SPANS_SPANS: u32 = 2;
/// `Span` fields.
const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_TRACE_STATE: u32 = 3;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START: u32 = 7;
const SPAN_END: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_LINKS: u32 = 13;
const SPAN_STATUS: u32 = 15;
const SPAN_FLAGS: u32 = 16;
/// `Span.Link` fields.
const LINK_TRACE_ID: u32 = 1;
const LINK_SPAN_ID: u32 = 2;
const LINK_FLAGS: u32 = 6;
/// `Status` fields.
const STATUS_MESSAGE: u32 = 2;
const STATUS_CODE: u32 = 3;
/// `Status.code` ERROR.
const STATUS_CODE_ERROR: i64 = 2;
/// `KeyValue` fields.
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
/// `AnyValue` members.
const ANY_VALUE_STRING: u32 = 1;
const ANY_VALUE_BOOL: u32 = 2;
const ANY_VALUE_INT: u32 = 3;

/// A resource, encoded once.
#[derive(Debug, Clone)]
pub struct EncodedResource {
    /// The `Resource` message.
    message: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub fn new(resource: &Resource) -> Self {
        let attributes = ResourceAttributesWithSchema::from(resource);
        let message = ProtoResource {
            attributes: attributes.attributes.0,
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        }
        .encode_to_vec();
        Self {
            message,
            schema_url: attributes.schema_url.unwrap_or_default(),
        }
    }
}

/// Buffers of sent requests kept for the next ones at most (one per request in flight is
/// enough).
const MAX_SPARE_BUFFERS: usize = 8;

/// Turns a batch of sessions into one request, under each session's workload resource
/// (`--resource-mode`), or the agent's one resource.
///
/// A request takes hundreds of kilobytes. The buffers of sent requests are reused
/// ([`RequestEncoder::recycle`]): a fresh allocation that large is mapped anew by the
/// allocator, and the page faults and zeroing cost as much as a tenth of the encoding.
#[derive(Debug)]
pub struct RequestEncoder {
    spans: SpanEncoder,
    resources: Resources,
    /// The size of the last request, to allocate the next one at once.
    last_len: usize,
    spare: Vec<Vec<u8>>,
}

#[derive(Debug)]
enum Resources {
    Agent(EncodedResource),
    Workloads(WorkloadResources),
}

impl RequestEncoder {
    pub fn new(resource: &Resource, settings: ResourceSettings) -> Self {
        let resources = match settings.mode {
            ResourceMode::Single => Resources::Agent(EncodedResource::new(resource)),
            mode => Resources::Workloads(WorkloadResources::new(
                mode,
                resource.clone(),
                settings.max_workloads,
            )),
        };
        Self {
            spans: SpanEncoder::default(),
            resources,
            last_len: 0,
            spare: Vec::new(),
        }
    }

    /// The encoded `ExportTraceServiceRequest` of `sessions`.
    pub fn encode(&mut self, sessions: &[Arc<Session>]) -> Bytes {
        let mut out = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.last_len + self.last_len / 8));
        out.clear();
        match &mut self.resources {
            Resources::Agent(resource) => {
                self.spans
                    .resource_spans(&mut out, resource, sessions.iter().map(AsRef::as_ref));
            }
            Resources::Workloads(workloads) => {
                for (resource, members) in workloads.groups(sessions) {
                    self.spans.resource_spans(&mut out, &resource, members);
                }
            }
        }
        self.last_len = out.len();
        Bytes::from(out)
    }

    /// Takes back the buffer of a request that was sent, unless something still holds it.
    pub fn recycle(&mut self, request: Bytes) {
        if self.spare.len() < MAX_SPARE_BUFFERS
            && let Ok(buffer) = request.try_into_mut()
        {
            self.spare.push(buffer.into());
        }
    }
}

/// Writes spans; holds the reused text buffers and the encoded scope.
#[derive(Debug)]
pub struct SpanEncoder {
    scope: Vec<u8>,
    text: SpanText,
}

impl Default for SpanEncoder {
    fn default() -> Self {
        Self {
            scope: encode_scope(&span::scope()),
            text: SpanText::default(),
        }
    }
}

impl SpanEncoder {
    /// Appends one `ResourceSpans` to the request in `out`: `sessions`' spans under
    /// `resource`, in the agent's scope. A request is any number of these, back to back.
    pub fn resource_spans<'a>(
        &mut self,
        out: &mut Vec<u8>,
        resource: &EncodedResource,
        sessions: impl IntoIterator<Item = &'a Session>,
    ) {
        // The two messages around the spans take 16 KiB to 2 MiB for a batch of more than
        // about twenty spans: a three-byte length, so the spans are written in place, once.
        protobuf::message_sized(out, REQUEST_RESOURCE_SPANS, 3, |out| {
            protobuf::bytes(out, RESOURCE_SPANS_RESOURCE, &resource.message);
            protobuf::message_sized(out, RESOURCE_SPANS_SCOPE_SPANS, 3, |out| {
                protobuf::bytes(out, SCOPE_SPANS_SCOPE, &self.scope);
                for session in sessions {
                    // A span takes 128 to 16,383 bytes: a two-byte length.
                    protobuf::message_sized(out, SCOPE_SPANS_SPANS, 2, |out| {
                        self.span(out, session);
                    });
                }
            });
            protobuf::bytes_unless_empty(
                out,
                RESOURCE_SPANS_SCHEMA_URL,
                resource.schema_url.as_bytes(),
            );
        });
    }

    /// The body of one `Span`, with the ids, parent, link and flags the session stage
    /// decided ([`crate::span_context`]).
    fn span(&mut self, out: &mut Vec<u8>, session: &Session) {
        let context = &session.context;
        protobuf::bytes(out, SPAN_TRACE_ID, &context.trace_id.to_bytes());
        protobuf::bytes(out, SPAN_SPAN_ID, &context.span_id.to_bytes());
        if let Some(threshold) = session.threshold {
            trace_state(out, threshold);
        }
        if let Some(parent) = context.parent_span_id {
            protobuf::bytes(out, SPAN_PARENT_SPAN_ID, &parent.to_bytes());
        }
        self.text.fill(session);
        protobuf::bytes_unless_empty(out, SPAN_NAME, self.text.name().as_bytes());
        let kind = ProtoSpanKind::from(span::kind(session.origin)) as i64;
        protobuf::int_unless_zero(out, SPAN_KIND, kind);
        protobuf::fixed64(out, SPAN_START, unix_nanos(session.start));
        protobuf::fixed64(out, SPAN_END, unix_nanos(session.end));
        span::attributes(session, &self.text, |key, value| attribute(out, key, value));
        if let Some(link) = context.link {
            protobuf::message(out, SPAN_LINKS, |out| {
                protobuf::bytes(out, LINK_TRACE_ID, &link.trace_id.to_bytes());
                protobuf::bytes(out, LINK_SPAN_ID, &link.span_id.to_bytes());
                protobuf::fixed32(out, LINK_FLAGS, link.flags);
            });
        }
        // The SDK's exporters always send a status, empty when unset.
        protobuf::message(out, SPAN_STATUS, |out| {
            if let Some(message) = span::error_message(session) {
                protobuf::bytes(out, STATUS_MESSAGE, message.as_bytes());
                protobuf::int(out, STATUS_CODE, STATUS_CODE_ERROR);
            }
        });
        protobuf::fixed32(out, SPAN_FLAGS, context.flags);
    }
}

/// `Span.trace_state`: the W3C tracestate `ot=th:<hex>`, the sampling threshold
/// ([`crate::threshold`]), written without allocating.
fn trace_state(out: &mut Vec<u8>, threshold: Threshold) {
    use std::io::Write as _;
    // `ot=th:` and at most 14 digits.
    let mut text = [0u8; 20];
    let mut rest = &mut text[..];
    // The buffer fits the longest value: the write cannot fail.
    let _ = write!(rest, "ot=th:{}", threshold.th());
    let len = 20 - rest.len();
    protobuf::bytes(out, SPAN_TRACE_STATE, &text[..len]);
}

/// One `Span.attributes` entry: a `KeyValue` whose `AnyValue` holds exactly one member,
/// written even when it is empty or zero. The sizes are computed first, so that it is
/// written in one pass.
fn attribute(out: &mut Vec<u8>, key: &str, value: AttributeValue<'_>) {
    let any_value_len = match value {
        AttributeValue::Str(text) => protobuf::length_delimited_len(ANY_VALUE_STRING, text.len()),
        AttributeValue::Bool(_) => 2,
        // int64 is written as its two's complement.
        AttributeValue::Int(number) => 1 + protobuf::varint_len(number as u64),
    };
    let key_value_len = protobuf::length_delimited_len(KEY_VALUE_KEY, key.len())
        + protobuf::length_delimited_len(KEY_VALUE_VALUE, any_value_len);
    protobuf::length_delimited_header(out, SPAN_ATTRIBUTES, key_value_len);
    protobuf::bytes(out, KEY_VALUE_KEY, key.as_bytes());
    protobuf::length_delimited_header(out, KEY_VALUE_VALUE, any_value_len);
    match value {
        AttributeValue::Str(text) => protobuf::bytes(out, ANY_VALUE_STRING, text.as_bytes()),
        AttributeValue::Bool(flag) => protobuf::int(out, ANY_VALUE_BOOL, i64::from(flag)),
        AttributeValue::Int(number) => protobuf::int(out, ANY_VALUE_INT, number),
    }
}

/// The `InstrumentationScope` message (name and version).
fn encode_scope(scope: &InstrumentationScope) -> Vec<u8> {
    ProtoScope {
        name: scope.name().to_owned(),
        version: scope.version().unwrap_or_default().to_owned(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
    .encode_to_vec()
}

/// Nanoseconds since the Unix epoch; 0 for a time before it.
fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{net::SocketAddr, time::Duration};

    use common::user::Origin;
    use opentelemetry::KeyValue;
    use opentelemetry_proto::{
        tonic::collector::trace::v1::ExportTraceServiceRequest,
        transform::trace::tonic::group_spans_by_resource_and_scope,
    };

    use super::*;
    use crate::{
        export::span::tests::span_data,
        isn::Side,
        link_policy::LinkPolicy,
        session::{Closer, ResetByPeer, tests::client_session},
        span_context::SpanContext,
    };

    /// Sessions that reach every branch of the mapping: client, server (with its parent,
    /// or a link), unknown origin (random ids), IPv6, failed connect, reset, abort, no byte
    /// counters, a container, odd names.
    pub(crate) fn varied_sessions() -> Vec<Session> {
        let base = client_session();
        let context =
            |side, policy| SpanContext::decide(Some(side), base.isns, base.remote.ip(), &policy);
        let mut server = base.clone();
        server.origin = Origin::Passive;
        server.closer = Closer::Peer;
        server.context = context(Side::Server, LinkPolicy::All);
        let mut linked = server.clone();
        linked.context = context(Side::Server, LinkPolicy::Nothing);
        let mut unknown = base.clone();
        unknown.origin = Origin::Unknown;
        unknown.birth_known = false;
        unknown.owner_from_syscall = false;
        unknown.isns = None;
        unknown.context = SpanContext::random();
        let mut ipv6 = base.clone();
        ipv6.local = "[2001:db8::1]:40000".parse::<SocketAddr>().unwrap();
        ipv6.remote = "[::1]:443".parse::<SocketAddr>().unwrap();
        ipv6.bytes = None;
        ipv6.payload = None;
        ipv6.health = None;
        ipv6.netns = None;
        let mut failed = base.clone();
        failed.established = false;
        failed.handshake = None;
        failed.closer = Closer::Unknown;
        failed.isns = None;
        failed.context = SpanContext::random();
        let mut reset = base.clone();
        reset.reset = Some(ResetByPeer);
        reset.closer = Closer::Unknown;
        let mut aborted = base.clone();
        aborted.closer = Closer::Aborted;
        aborted.comm = String::new();
        let mut contained = base.clone();
        contained.container_id = Some("4f2a".repeat(16).into());
        contained.comm = "nginx: worker ü".into();
        contained.pid = 0;
        contained.end = contained.start + Duration::from_secs(86_400 * 365);
        vec![
            base, server, linked, unknown, ipv6, failed, reset, aborted, contained,
        ]
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "otel-agent"),
                KeyValue::new("host.name", "node-1"),
                KeyValue::new("process.pid", 42),
            ])
            .with_schema_url([], "https://opentelemetry.io/schemas/1.26.0")
            .build()
    }

    /// The request the SDK's OTLP exporters send for these spans.
    fn sdk_request(sessions: &[Session], resource: &Resource) -> Vec<u8> {
        let scope = span::scope();
        let spans = sessions
            .iter()
            .map(|session| span_data(session, &scope))
            .collect();
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &resource.into()),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_request_is_byte_for_byte_what_the_sdk_exporters_send() {
        let resource = resource();
        // A few spans (the lengths around them take fewer bytes than reserved) and a
        // batch-sized request (exactly as many), each encoded twice into reused buffers.
        let many: Vec<Session> = (0..64).flat_map(|_| varied_sessions()).collect();
        for sessions in [varied_sessions(), many] {
            let expected = sdk_request(&sessions, &resource);
            let mut out = Vec::new();
            for _ in 0..2 {
                out.clear();
                let mut encoder = SpanEncoder::default();
                encoder.resource_spans(&mut out, &EncodedResource::new(&resource), &sessions);
                assert_eq!(out, expected);
            }
        }
    }

    /// The request with every trace and span id cleared and resource attributes sorted (a
    /// resource keeps them in a hash map, so two equal resources may list them in different
    /// orders).
    fn normalised(mut request: ExportTraceServiceRequest) -> ExportTraceServiceRequest {
        for resource in request
            .resource_spans
            .iter_mut()
            .filter_map(|r| r.resource.as_mut())
        {
            resource.attributes.sort_by(|a, b| a.key.cmp(&b.key));
        }
        for span in request
            .resource_spans
            .iter_mut()
            .flat_map(|r| &mut r.scope_spans)
            .flat_map(|s| &mut s.spans)
        {
            span.trace_id.clear();
            span.span_id.clear();
        }
        request
    }

    #[test]
    fn workload_requests_carry_one_resource_spans_per_workload() {
        let base = resource();
        let container: Arc<str> = "4f2a".repeat(16).into();
        let mut nginx = client_session();
        nginx.exe = Some("nginx".into());
        nginx.container_id = Some(container.clone());
        nginx.pid = 10;
        // Another process of the same container and executable: the same workload.
        let mut worker = nginx.clone();
        worker.pid = 11;
        worker.comm = "nginx: worker".into();
        let mut curl = client_session();
        curl.exe = Some("curl".into());
        curl.pid = 20;
        let batch: Vec<Arc<Session>> = [&nginx, &curl, &worker]
            .map(|session| Arc::new(session.clone()))
            .into();
        let settings = ResourceSettings {
            mode: ResourceMode::Workload,
            max_workloads: 8,
        };
        let mut encoder = RequestEncoder::new(&base, settings);
        let request = ExportTraceServiceRequest::decode(encoder.encode(&batch)).unwrap();
        let mut expected = Vec::new();
        for (container, name, members) in [
            (None, "curl", vec![curl]),
            (Some(container), "nginx", vec![nginx, worker]),
        ] {
            let key = crate::export::workload::WorkloadKey {
                container,
                name: name.into(),
                executable: true,
                pid: None,
            };
            let workload = crate::export::resource::workload_resource(&base, &key);
            expected.extend(
                ExportTraceServiceRequest::decode(sdk_request(&members, &workload).as_slice())
                    .unwrap()
                    .resource_spans,
            );
        }
        let expected = ExportTraceServiceRequest {
            resource_spans: expected,
        };
        assert_eq!(normalised(request), normalised(expected));
    }

    #[test]
    fn the_buffer_of_a_sent_request_is_reused_unless_still_shared() {
        let batch = vec![Arc::new(client_session())];
        let mut encoder = RequestEncoder::new(&resource(), ResourceSettings::SINGLE);
        let first = encoder.encode(&batch);
        let address = first.as_ptr();
        encoder.recycle(first);
        let second = encoder.encode(&batch);
        assert_eq!(second.as_ptr(), address, "the same buffer");
        let still_sending = second.clone();
        encoder.recycle(second);
        let third = encoder.encode(&batch);
        assert_ne!(
            third.as_ptr(),
            still_sending.as_ptr(),
            "not taken while shared"
        );
        assert_eq!(third.len(), still_sending.len());
    }

    /// Each span carries its session's context, exactly: the client span a root with the
    /// derived ids, the server span its child (or, outside the linked peers, a root with a
    /// link to it), a failed connect a random root; every span sampled with random ids.
    #[test]
    fn spans_carry_the_context_their_session_stage_decided() {
        let sessions = &varied_sessions()[..4];
        let mut out = Vec::new();
        SpanEncoder::default().resource_spans(
            &mut out,
            &EncodedResource::new(&resource()),
            sessions,
        );
        let request = ExportTraceServiceRequest::decode(out.as_slice()).unwrap();
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        let [client, server, linked, unknown] = spans.as_slice() else {
            panic!("4 spans: {spans:?}");
        };
        let ids = crate::trace_context::ConnectionIds::derive(sessions[0].isns.unwrap());
        let trace = ids.trace_id.to_bytes().to_vec();
        let client_id = ids.client_span_id.to_bytes().to_vec();
        let server_id = ids.server_span_id.to_bytes().to_vec();
        assert_eq!(
            (
                &client.trace_id,
                &client.span_id,
                client.parent_span_id.is_empty()
            ),
            (&trace, &client_id, true)
        );
        assert_eq!((client.flags, client.links.len()), (0x103, 0));
        assert_eq!(
            (&server.trace_id, &server.span_id, &server.parent_span_id),
            (&trace, &server_id, &client_id)
        );
        assert_eq!((server.flags, server.links.len()), (0x303, 0));
        assert_eq!(
            (
                &linked.trace_id,
                &linked.span_id,
                linked.parent_span_id.is_empty()
            ),
            (&trace, &server_id, true)
        );
        assert_eq!(linked.flags, 0x103);
        let [link] = linked.links.as_slice() else {
            panic!("one link: {:?}", linked.links);
        };
        assert_eq!(
            (
                &link.trace_id,
                &link.span_id,
                link.flags,
                link.trace_state.as_str()
            ),
            (&trace, &client_id, 0x303, "")
        );
        assert_eq!(unknown.trace_id.len(), 16);
        assert_eq!(unknown.span_id.len(), 8);
        assert_ne!(unknown.trace_id, trace);
        assert!(unknown.parent_span_id.is_empty());
        assert_eq!((unknown.flags, unknown.links.len()), (0x103, 0));
        let scope = request.resource_spans[0].scope_spans[0]
            .scope
            .as_ref()
            .unwrap();
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("otel-agent", env!("CARGO_PKG_VERSION"))
        );
    }

    /// A sampled session's span carries its threshold as its W3C tracestate; others none.
    #[test]
    fn the_sampling_threshold_is_the_spans_tracestate() {
        let mut sessions = [client_session(), client_session(), client_session()];
        sessions[0].threshold = Threshold::from_ratio(0.5);
        sessions[1].threshold = Threshold::from_ratio(0.01);
        let mut out = Vec::new();
        SpanEncoder::default().resource_spans(
            &mut out,
            &EncodedResource::new(&resource()),
            &sessions,
        );
        let request = ExportTraceServiceRequest::decode(out.as_slice()).unwrap();
        let states: Vec<_> = request.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|span| span.trace_state.as_str())
            .collect();
        assert_eq!(states, ["ot=th:8", "ot=th:fd70a", ""]);
        // The longest value fits.
        let mut out = Vec::new();
        trace_state(&mut out, Threshold::from_ratio(1e-300).unwrap());
        assert_eq!(&out[2..], b"ot=th:ffffffffffff");
    }
}
