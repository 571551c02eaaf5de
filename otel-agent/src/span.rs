//! The session-to-span mapping: one closed session becomes one root span whose start and
//! end are the session's birth and close. The attribute names are listed in the README's
//! mapping table; stable OpenTelemetry names are used where they exist, the `tcplife.*`
//! namespace for what OpenTelemetry has no name for.

use std::{net::IpAddr, sync::Arc};

use common::user::Origin;
use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState},
};
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, SpanData, SpanEvents, SpanLinks,
};

use crate::session::{Closer, ResetByPeer, Session};

/// The instrumentation scope of every span.
pub const SCOPE_NAME: &str = "otel-agent";

/// The name of a session whose opening side is unknown.
pub const UNKNOWN_SPAN_NAME: &str = "tcp session";

/// Attribute keys, spelled once.
pub mod key {
    pub const NETWORK_TRANSPORT: &str = "network.transport";
    pub const NETWORK_TYPE: &str = "network.type";
    pub const NETWORK_LOCAL_ADDRESS: &str = "network.local.address";
    pub const NETWORK_LOCAL_PORT: &str = "network.local.port";
    pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
    pub const NETWORK_PEER_PORT: &str = "network.peer.port";
    /// The side that accepted: the peer for a CLIENT span, this side for a SERVER span.
    pub const SERVER_ADDRESS: &str = "server.address";
    pub const SERVER_PORT: &str = "server.port";
    /// The side that connected.
    pub const CLIENT_ADDRESS: &str = "client.address";
    pub const CLIENT_PORT: &str = "client.port";
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
    /// The owner's container, from its cgroup.
    pub const CONTAINER_ID: &str = "container.id";
}

/// Builds the finished span of `session`: the root of a new trace (fresh random trace and
/// span ids from `ids`), sampled, in the agent's instrumentation `scope`. Spans are built
/// directly, not through a tracer, so that the export queue can hold sessions (small) and
/// build spans only when it sends them.
pub fn span_data(
    session: &Session,
    ids: &RandomIdGenerator,
    scope: &InstrumentationScope,
) -> SpanData {
    let span_context = SpanContext::new(
        ids.new_trace_id(),
        ids.new_span_id(),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    SpanData {
        span_context,
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: kind(session.origin),
        name: name(session).into(),
        start_time: session.start,
        end_time: session.end,
        attributes: attributes(session),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: status(session).unwrap_or(Status::Unset),
        instrumentation_scope: scope.clone(),
    }
}

/// The agent's instrumentation scope.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// A low-cardinality name that reads well in Jaeger's operation list: the server's port,
/// which identifies the service, never the client's ephemeral one.
pub fn name(session: &Session) -> String {
    match session.origin {
        Origin::Active => format!("tcp connect :{}", session.remote.port()),
        Origin::Passive => format!("tcp accept :{}", session.local.port()),
        Origin::Unknown => UNKNOWN_SPAN_NAME.to_owned(),
    }
}

/// CLIENT for the side that connected, SERVER for the side that accepted.
pub fn kind(origin: Origin) -> SpanKind {
    match origin {
        Origin::Active => SpanKind::Client,
        Origin::Passive => SpanKind::Server,
        Origin::Unknown => SpanKind::Internal,
    }
}

/// ERROR for a session that never connected or ended in a reset.
pub fn status(session: &Session) -> Option<Status> {
    let message = match (session.established, session.reset, session.closer) {
        (false, _, _) => "connection never established",
        (true, Some(ResetByPeer), _) => "connection reset by peer",
        (true, None, Closer::Aborted) => "connection aborted (reset sent or timed out)",
        (true, None, _) => return None,
    };
    Some(Status::error(message))
}

/// The span's attributes.
pub fn attributes(session: &Session) -> Vec<KeyValue> {
    let network_type = match session.local.ip() {
        IpAddr::V4(_) => "ipv4",
        IpAddr::V6(_) => "ipv6",
    };
    let owner_source = if session.owner_from_syscall {
        "syscall"
    } else {
        "close"
    };
    // Each address is formatted once and shared by its network.* and server/client.* values.
    let local_address: Arc<str> = session.local.ip().to_string().into();
    let peer_address: Arc<str> = session.remote.ip().to_string().into();
    let mut attributes = vec![
        KeyValue::new(key::NETWORK_TRANSPORT, "tcp"),
        KeyValue::new(key::NETWORK_TYPE, network_type),
        KeyValue::new(key::NETWORK_LOCAL_ADDRESS, local_address.clone()),
        KeyValue::new(key::NETWORK_LOCAL_PORT, i64::from(session.local.port())),
        KeyValue::new(key::NETWORK_PEER_ADDRESS, peer_address.clone()),
        KeyValue::new(key::NETWORK_PEER_PORT, i64::from(session.remote.port())),
        KeyValue::new(key::PROCESS_PID, i64::from(session.pid)),
        KeyValue::new(key::COMM, session.comm.clone()),
        KeyValue::new(key::OWNER_SOURCE, owner_source),
        KeyValue::new(key::BIRTH_SEEN, session.birth_known),
        KeyValue::new(key::ESTABLISHED, session.established),
    ];
    let local = (local_address, session.local.port());
    let peer = (peer_address, session.remote.port());
    let roles = match session.origin {
        Origin::Active => Some((peer, local)),
        Origin::Passive => Some((local, peer)),
        Origin::Unknown => None,
    };
    if let Some(((server_address, server_port), (client_address, client_port))) = roles {
        attributes.push(KeyValue::new(key::SERVER_ADDRESS, server_address));
        attributes.push(KeyValue::new(key::SERVER_PORT, i64::from(server_port)));
        attributes.push(KeyValue::new(key::CLIENT_ADDRESS, client_address));
        attributes.push(KeyValue::new(key::CLIENT_PORT, i64::from(client_port)));
    }
    if let Some(handshake) = session.handshake {
        let micros = i64::try_from(handshake.as_micros()).unwrap_or(i64::MAX);
        attributes.push(KeyValue::new(key::HANDSHAKE_US, micros));
    }
    let closed_by = match session.closer {
        Closer::Local => Some("local"),
        Closer::Peer => Some("peer"),
        Closer::Simultaneous => Some("simultaneous"),
        Closer::Aborted => Some("abort"),
        Closer::Unknown => None,
    };
    if let Some(closed_by) = closed_by {
        attributes.push(KeyValue::new(key::CLOSED_BY, closed_by));
    }
    if session.reset.is_some() {
        attributes.push(KeyValue::new(key::RESET_BY, "peer"));
    }
    if let Some(bytes) = session.bytes {
        attributes.push(KeyValue::new(key::BYTES_ACKED, saturating_i64(bytes.acked)));
        attributes.push(KeyValue::new(
            key::BYTES_RECEIVED,
            saturating_i64(bytes.received),
        ));
    }
    if let Some(payload) = session.payload {
        attributes.push(KeyValue::new(
            key::PAYLOAD_SENT,
            saturating_i64(payload.sent),
        ));
        attributes.push(KeyValue::new(
            key::PAYLOAD_RECEIVED,
            saturating_i64(payload.received),
        ));
    }
    if let Some(health) = session.health {
        attributes.push(KeyValue::new(key::RTT_US, i64::from(health.srtt_us)));
        attributes.push(KeyValue::new(
            key::RETRANSMITS,
            i64::from(health.total_retrans),
        ));
        attributes.push(KeyValue::new(key::SEGMENTS_IN, i64::from(health.segs_in)));
        attributes.push(KeyValue::new(key::SEGMENTS_OUT, i64::from(health.segs_out)));
    }
    if let Some(netns) = session.netns {
        attributes.push(KeyValue::new(key::NETNS, i64::from(netns)));
    }
    if let Some(container_id) = &session.container_id {
        attributes.push(KeyValue::new(key::CONTAINER_ID, container_id.to_string()));
    }
    attributes
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use opentelemetry::Value;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanExporter as _};

    use super::*;
    use crate::session::tests::client_session;

    /// Builds the session's span and passes it through the SDK's in-memory exporter.
    fn export(session: &Session) -> SpanData {
        let exporter = InMemorySpanExporter::default();
        let span = span_data(session, &RandomIdGenerator::default(), &scope());
        block_on(exporter.export(vec![span])).unwrap();
        let mut spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        spans.remove(0)
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

    #[test]
    fn every_session_is_its_own_sampled_trace_in_the_agent_scope() {
        let ids = RandomIdGenerator::default();
        let first = span_data(&session(), &ids, &scope());
        let second = span_data(&session(), &ids, &scope());
        assert_ne!(
            first.span_context.trace_id(),
            second.span_context.trace_id()
        );
        assert!(first.span_context.is_sampled());
        assert_eq!(first.instrumentation_scope.name(), "otel-agent");
        assert_eq!(
            first.instrumentation_scope.version(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }

    /// Runs a future that completes without waiting (the in-memory exporter's).
    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }
}
