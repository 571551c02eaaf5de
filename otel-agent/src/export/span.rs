//! The session-to-span mapping: one closed session becomes one span whose start and end
//! are the session's birth and close (its ids, parent, link and flags are the session's
//! `context`, decided in the session stage: `crate::span_context`). The attribute names are listed in the README's
//! mapping table; stable OpenTelemetry names are used where they exist, the `tcplife.*`
//! namespace for what OpenTelemetry has no name for. The mapping is written once, as
//! values handed to a visitor, so that spans are encoded straight into OTLP protobuf
//! ([`crate::export::encode`]) without allocating; the tests check it against the
//! OpenTelemetry SDK's own span objects.

use std::net::IpAddr;

use common::user::Origin;
use opentelemetry::{InstrumentationScope, trace::SpanKind};

use crate::session::{Closer, ResetByPeer, Session};

/// The instrumentation scope of every span.
pub const SCOPE_NAME: &str = "otel-agent";

/// The name of a session whose opening side is unknown.
pub const UNKNOWN_SPAN_NAME: &str = "tcp session";

/// Attribute keys, spelled once: the stable OpenTelemetry ones from
/// `opentelemetry-semantic-conventions`, the agent's own (`tcplife.*`) here.
pub mod key {
    pub use opentelemetry_semantic_conventions::attribute::{
        CLIENT_ADDRESS, CLIENT_PORT, CONTAINER_ID, NETWORK_LOCAL_ADDRESS, NETWORK_LOCAL_PORT,
        NETWORK_PEER_ADDRESS, NETWORK_PEER_PORT, NETWORK_TRANSPORT, NETWORK_TYPE, SERVER_ADDRESS,
        SERVER_PORT,
    };
    // `SERVER_*` is the side that accepted: the peer for a CLIENT span, this side for a
    // SERVER span; `CLIENT_*` the side that connected. `CONTAINER_ID` is the owner's
    // container, from its cgroup.

    /// Not stable in the semantic conventions yet (status "development").
    pub const PROCESS_PID: &str = "process.pid";
    /// The owner's kernel task name (16 bytes at most; a thread name, not a path).
    pub const COMM: &str = "tcplife.comm";
    /// `tcp_sock.bytes_acked` at close (payload sent plus SYN and FIN).
    pub const BYTES_ACKED: &str = "tcplife.bytes_acked";
    /// `tcp_sock.bytes_received` at close (payload received plus FIN).
    pub const BYTES_RECEIVED: &str = "tcplife.bytes_received";
    /// Payload bytes sent and acknowledged (SYN and FIN removed).
    pub const PAYLOAD_SENT: &str = "tcplife.payload.sent";
    /// Payload bytes received (FIN removed).
    pub const PAYLOAD_RECEIVED: &str = "tcplife.payload.received";
    /// Whether the probe saw the session's birth (false: the start is the agent's start).
    pub const BIRTH_SEEN: &str = "tcplife.birth_seen";
    /// `syscall` when pid and comm come from a system call of the owner, `close` when they
    /// are the task current at close (best effort).
    pub const OWNER_SOURCE: &str = "tcplife.owner_source";
    /// Whether the session reached ESTABLISHED.
    pub const ESTABLISHED: &str = "tcplife.established";
    /// Birth to ESTABLISHED, microseconds.
    pub const HANDSHAKE_US: &str = "tcplife.handshake_us";
    /// `local`, `peer` or `simultaneous`: who sent the first FIN; `abort` when this side
    /// ended the session without a FIN (reset sent or timeout).
    pub const CLOSED_BY: &str = "tcplife.closed_by";
    /// `peer` when the peer reset the session.
    pub const RESET_BY: &str = "tcplife.reset_by";
    /// Smoothed RTT at close, microseconds.
    pub const RTT_US: &str = "tcplife.rtt_us";
    pub const RETRANSMITS: &str = "tcplife.retransmits";
    pub const SEGMENTS_IN: &str = "tcplife.segments_in";
    pub const SEGMENTS_OUT: &str = "tcplife.segments_out";
    /// Inode number of the socket's network namespace.
    pub const NETNS: &str = "tcplife.netns";
}

/// A span attribute's value, borrowed for the time it takes to encode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeValue<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

/// The text of a span (its name and its addresses), formatted into buffers that are reused
/// from one span to the next, so that building a span allocates nothing.
#[derive(Debug, Default)]
pub struct SpanText {
    name: String,
    local_address: String,
    peer_address: String,
}

impl SpanText {
    /// Formats `session`'s name and addresses.
    pub fn fill(&mut self, session: &Session) {
        self.name.clear();
        match session.origin {
            Origin::Active => {
                self.name.push_str("tcp connect :");
                push_decimal(&mut self.name, session.remote.port());
            }
            Origin::Passive => {
                self.name.push_str("tcp accept :");
                push_decimal(&mut self.name, session.local.port());
            }
            Origin::Unknown => self.name.push_str(UNKNOWN_SPAN_NAME),
        }
        push_address(&mut self.local_address, session.local.ip());
        push_address(&mut self.peer_address, session.remote.ip());
    }

    /// A low-cardinality name that reads well in Jaeger's operation list: the server's
    /// port, which identifies the service, never the client's ephemeral one.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Replaces `text` with `address` in its usual notation. IPv4, by far the most common, is
/// written digit by digit: `Display` costs several times as much.
fn push_address(text: &mut String, address: IpAddr) {
    text.clear();
    match address {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                push_decimal(text, octet.into());
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            // Writing to a String cannot fail.
            let _ = write!(text, "{v6}");
        }
    }
}

/// Appends `value` in decimal.
fn push_decimal(text: &mut String, value: u16) {
    let mut digits = [0u8; 5];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &digit in &digits[start..] {
        text.push(char::from(digit));
    }
}

/// The agent's instrumentation scope.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// CLIENT for the side that connected, SERVER for the side that accepted.
pub fn kind(origin: Origin) -> SpanKind {
    match origin {
        Origin::Active => SpanKind::Client,
        Origin::Passive => SpanKind::Server,
        Origin::Unknown => SpanKind::Internal,
    }
}

/// The description of an ERROR status, for a session that never connected or ended in a
/// reset; `None` leaves the status unset.
pub fn error_message(session: &Session) -> Option<&'static str> {
    match (session.established, session.reset, session.closer) {
        (false, _, _) => Some("connection never established"),
        (true, Some(ResetByPeer), _) => Some("connection reset by peer"),
        (true, None, Closer::Aborted) => Some("connection aborted (reset sent or timed out)"),
        (true, None, _) => None,
    }
}

/// Calls `visit` with each of the span's attributes, in order; `text` holds the session's
/// formatted addresses ([`SpanText::fill`]).
pub fn attributes(
    session: &Session,
    text: &SpanText,
    mut visit: impl FnMut(&'static str, AttributeValue<'_>),
) {
    use AttributeValue::{Bool, Int, Str};
    let network_type = match session.local.ip() {
        IpAddr::V4(_) => "ipv4",
        IpAddr::V6(_) => "ipv6",
    };
    let owner_source = if session.owner_from_syscall {
        "syscall"
    } else {
        "close"
    };
    let local_address = text.local_address.as_str();
    let peer_address = text.peer_address.as_str();
    visit(key::NETWORK_TRANSPORT, Str("tcp"));
    visit(key::NETWORK_TYPE, Str(network_type));
    visit(key::NETWORK_LOCAL_ADDRESS, Str(local_address));
    visit(key::NETWORK_LOCAL_PORT, Int(session.local.port().into()));
    visit(key::NETWORK_PEER_ADDRESS, Str(peer_address));
    visit(key::NETWORK_PEER_PORT, Int(session.remote.port().into()));
    visit(key::PROCESS_PID, Int(session.pid.into()));
    visit(key::COMM, Str(&session.comm));
    visit(key::OWNER_SOURCE, Str(owner_source));
    visit(key::BIRTH_SEEN, Bool(session.birth_known));
    visit(key::ESTABLISHED, Bool(session.established));
    let local = (local_address, session.local.port());
    let peer = (peer_address, session.remote.port());
    let roles = match session.origin {
        Origin::Active => Some((peer, local)),
        Origin::Passive => Some((local, peer)),
        Origin::Unknown => None,
    };
    if let Some(((server_address, server_port), (client_address, client_port))) = roles {
        visit(key::SERVER_ADDRESS, Str(server_address));
        visit(key::SERVER_PORT, Int(server_port.into()));
        visit(key::CLIENT_ADDRESS, Str(client_address));
        visit(key::CLIENT_PORT, Int(client_port.into()));
    }
    if let Some(handshake) = session.handshake {
        let micros = i64::try_from(handshake.as_micros()).unwrap_or(i64::MAX);
        visit(key::HANDSHAKE_US, Int(micros));
    }
    let closed_by = match session.closer {
        Closer::Local => Some("local"),
        Closer::Peer => Some("peer"),
        Closer::Simultaneous => Some("simultaneous"),
        Closer::Aborted => Some("abort"),
        Closer::Unknown => None,
    };
    if let Some(closed_by) = closed_by {
        visit(key::CLOSED_BY, Str(closed_by));
    }
    if session.reset.is_some() {
        visit(key::RESET_BY, Str("peer"));
    }
    if let Some(bytes) = session.bytes {
        visit(key::BYTES_ACKED, Int(saturating_i64(bytes.acked)));
        visit(key::BYTES_RECEIVED, Int(saturating_i64(bytes.received)));
    }
    if let Some(payload) = session.payload {
        visit(key::PAYLOAD_SENT, Int(saturating_i64(payload.sent)));
        visit(key::PAYLOAD_RECEIVED, Int(saturating_i64(payload.received)));
    }
    if let Some(health) = session.health {
        visit(key::RTT_US, Int(health.srtt_us.into()));
        visit(key::RETRANSMITS, Int(health.total_retrans.into()));
        visit(key::SEGMENTS_IN, Int(health.segs_in.into()));
        visit(key::SEGMENTS_OUT, Int(health.segs_out.into()));
    }
    if let Some(netns) = session.netns {
        visit(key::NETNS, Int(netns.into()));
    }
    if let Some(container_id) = &session.container_id {
        visit(key::CONTAINER_ID, Str(container_id));
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, SystemTime};

    use opentelemetry::{
        KeyValue, Value,
        trace::{Link, SpanContext, SpanId, Status, TraceFlags, TraceState},
    };
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

    use super::*;
    use crate::session::tests::client_session;

    /// The span of `session` as the OpenTelemetry SDK's object, built from the mapping
    /// above and the session's context: the reference the OTLP encoder is checked against.
    pub(crate) fn span_data(session: &Session, scope: &InstrumentationScope) -> SpanData {
        let mut text = SpanText::default();
        text.fill(session);
        let mut list = Vec::new();
        attributes(session, &text, |key, value| {
            list.push(match value {
                AttributeValue::Str(text) => KeyValue::new(key, text.to_owned()),
                AttributeValue::Int(number) => KeyValue::new(key, number),
                AttributeValue::Bool(flag) => KeyValue::new(key, flag),
            });
        });
        let context = session.context;
        // The SDK keeps the W3C flags and the parent's remoteness apart; OTLP joins them.
        let remote = |flags: u32| flags & 0x200 != 0;
        let trace_flags = |flags: u32| TraceFlags::new((flags & 0xff) as u8);
        let links = context.link.map_or_else(Vec::new, |link| {
            vec![Link::with_context(SpanContext::new(
                link.trace_id,
                link.span_id,
                trace_flags(link.flags),
                remote(link.flags),
                TraceState::default(),
            ))]
        });
        let mut span_links = SpanLinks::default();
        span_links.links = links;
        SpanData {
            span_context: SpanContext::new(
                context.trace_id,
                context.span_id,
                trace_flags(context.flags),
                false,
                TraceState::default(),
            ),
            parent_span_id: context.parent_span_id.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: remote(context.flags),
            span_kind: kind(session.origin),
            name: text.name().to_owned().into(),
            start_time: session.start,
            end_time: session.end,
            attributes: list,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: span_links,
            status: error_message(session).map_or(Status::Unset, Status::error),
            instrumentation_scope: scope.clone(),
        }
    }

    fn export(session: &Session) -> SpanData {
        span_data(session, &scope())
    }

    fn attribute(span: &SpanData, name: &str) -> Option<Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == name)
            .map(|kv| kv.value.clone())
    }

    fn session() -> Session {
        client_session()
    }

    #[test]
    fn a_client_session_becomes_a_client_root_span_with_exact_times() {
        let span = export(&session());
        assert_eq!(span.name, "tcp connect :8080");
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(span.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        assert_eq!(
            span.start_time,
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_000_000_000_010_000_000)
        );
        assert_eq!(
            span.end_time,
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_000_000_000_011_500_000)
        );
    }

    #[test]
    fn every_attribute_has_its_exact_value() {
        let span = export(&session());
        let expected: [(&str, Value); 26] = [
            (key::NETWORK_TRANSPORT, "tcp".into()),
            (key::NETWORK_TYPE, "ipv4".into()),
            (key::NETWORK_LOCAL_ADDRESS, "127.0.0.1".into()),
            (key::NETWORK_LOCAL_PORT, 40_000_i64.into()),
            (key::NETWORK_PEER_ADDRESS, "127.0.0.1".into()),
            (key::NETWORK_PEER_PORT, 8080_i64.into()),
            (key::SERVER_ADDRESS, "127.0.0.1".into()),
            (key::SERVER_PORT, 8080_i64.into()),
            (key::CLIENT_ADDRESS, "127.0.0.1".into()),
            (key::CLIENT_PORT, 40_000_i64.into()),
            (key::PROCESS_PID, 777_i64.into()),
            (key::COMM, "curl".into()),
            (key::OWNER_SOURCE, "syscall".into()),
            (key::BIRTH_SEEN, true.into()),
            (key::ESTABLISHED, true.into()),
            (key::HANDSHAKE_US, 100_i64.into()),
            (key::CLOSED_BY, "local".into()),
            (key::BYTES_ACKED, 12_347_i64.into()),
            (key::BYTES_RECEIVED, 2_049_i64.into()),
            (key::PAYLOAD_SENT, 12_345_i64.into()),
            (key::PAYLOAD_RECEIVED, 2_048_i64.into()),
            (key::RTT_US, 42_i64.into()),
            (key::RETRANSMITS, 1_i64.into()),
            (key::SEGMENTS_IN, 7_i64.into()),
            (key::SEGMENTS_OUT, 9_i64.into()),
            (key::NETNS, 4_026_531_840_i64.into()),
        ];
        for (name, value) in &expected {
            assert_eq!(
                attribute(&span, name).as_ref(),
                Some(value),
                "attribute {name}"
            );
        }
        assert_eq!(span.attributes.len(), expected.len());
    }

    #[test]
    fn the_kind_name_and_roles_follow_who_opened_the_session() {
        let mut server = session();
        server.origin = Origin::Passive;
        let span = export(&server);
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(span.name, "tcp accept :40000", "the local, listening port");
        assert_eq!(attribute(&span, key::SERVER_PORT), Some(40_000_i64.into()));
        assert_eq!(attribute(&span, key::CLIENT_PORT), Some(8080_i64.into()));
        let mut unknown = session();
        unknown.origin = Origin::Unknown;
        let span = export(&unknown);
        assert_eq!(span.span_kind, SpanKind::Internal);
        assert_eq!(span.name, "tcp session");
        assert_eq!(attribute(&span, key::SERVER_PORT), None, "roles unknown");
        assert_eq!(attribute(&span, key::CLIENT_ADDRESS), None);
    }

    #[test]
    fn ipv6_sessions_say_so_and_unknown_bytes_are_left_out() {
        let mut session = session();
        session.local = "[::1]:40000".parse().unwrap();
        session.remote = "[::1]:8080".parse().unwrap();
        session.bytes = None;
        session.payload = None;
        let span = export(&session);
        assert_eq!(attribute(&span, key::NETWORK_TYPE), Some("ipv6".into()));
        assert_eq!(
            attribute(&span, key::NETWORK_PEER_ADDRESS),
            Some("::1".into())
        );
        assert_eq!(attribute(&span, key::BYTES_ACKED), None);
        assert_eq!(attribute(&span, key::BYTES_RECEIVED), None);
    }

    #[test]
    fn a_containerised_owner_adds_its_container_id() {
        assert_eq!(attribute(&export(&session()), key::CONTAINER_ID), None);
        let mut session = session();
        let id = "4f2a".repeat(16);
        session.container_id = Some(id.as_str().into());
        assert_eq!(
            attribute(&export(&session), key::CONTAINER_ID),
            Some(id.into())
        );
    }

    #[test]
    fn names_and_addresses_are_written_as_display_writes_them() {
        let mut text = SpanText::default();
        for (local, remote) in [
            ("0.0.0.0:0", "255.255.255.255:65535"),
            ("10.0.100.9:1", "192.168.1.10:8080"),
            ("[::ffff:1.2.3.4]:80", "[2001:db8::1]:443"),
        ] {
            let mut session = session();
            session.local = local.parse().unwrap();
            session.remote = remote.parse().unwrap();
            text.fill(&session);
            assert_eq!(text.local_address, session.local.ip().to_string());
            assert_eq!(text.peer_address, session.remote.ip().to_string());
            assert_eq!(
                text.name(),
                format!("tcp connect :{}", session.remote.port())
            );
        }
    }

    #[test]
    fn failed_connects_and_resets_are_errors() {
        assert_eq!(export(&session()).status, Status::Unset);
        let mut failed = session();
        failed.established = false;
        assert_eq!(
            export(&failed).status,
            Status::error("connection never established")
        );
        let mut reset = session();
        reset.reset = Some(ResetByPeer);
        reset.closer = Closer::Unknown;
        let span = export(&reset);
        assert_eq!(span.status, Status::error("connection reset by peer"));
        assert_eq!(attribute(&span, key::RESET_BY), Some("peer".into()));
        let mut aborted = session();
        aborted.closer = Closer::Aborted;
        let span = export(&aborted);
        assert_eq!(
            span.status,
            Status::error("connection aborted (reset sent or timed out)")
        );
        assert_eq!(attribute(&span, key::CLOSED_BY), Some("abort".into()));
    }
}
