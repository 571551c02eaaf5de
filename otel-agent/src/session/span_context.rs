//! The one place that decides a session's span context: its trace id and span id, its
//! parent (if any), its span link (if any) and its OTLP flags. Decided when the session is
//! built ([`crate::session::Session::context`]), so that anything after the session stage
//! (a sampler, the encoder, JSON lines) reads the same ids; the encoder writes what it is
//! given.
//!
//! - A session with an ISN pair ([`crate::isn`]; it reached ESTABLISHED and its side is
//!   known) gets the connection's derived ids ([`crate::trace_context`]). The client side is
//!   a root ([`OTLP_FLAGS_ROOT`]). The server side's parent is the client span
//!   ([`OTLP_FLAGS_REMOTE_PARENT`]) when the [`LinkPolicy`] says its peer runs an agent;
//!   otherwise it is a root with one span link to the client span (the link's flags say it
//!   is remote).
//! - Any other session (a refused or timed-out connect, an unknown side, a simultaneous
//!   open, counters not read) is a root with random ids, as before connection traces. The
//!   ids of the SDK's random generator are uniform over 128 and 64 bits, so these spans
//!   carry the W3C random flag too: every span the agent writes has trace flags 0x03.

use std::net::IpAddr;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};

use crate::{
    isn::{IsnPair, Side},
    link_policy::LinkPolicy,
    trace_context::{ConnectionIds, OTLP_FLAGS_REMOTE_PARENT, OTLP_FLAGS_ROOT},
};

/// A span's identity and its relations, as OTLP carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The parent span (always the client span, at the other end of the connection).
    pub parent_span_id: Option<SpanId>,
    /// A span link, for a server span without a parent.
    pub link: Option<SpanLink>,
    /// OTLP `Span.flags`: the W3C trace flags and whether the parent is remote.
    pub flags: u32,
}

/// One OTLP `Span.Link`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanLink {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// OTLP `Link.flags`.
    pub flags: u32,
}

impl SpanContext {
    /// The context of a session on `side` with `isns`, whose peer is at `peer`.
    pub fn decide(
        side: Option<Side>,
        isns: Option<IsnPair>,
        peer: IpAddr,
        policy: &LinkPolicy,
    ) -> Self {
        let (Some(side), Some(isns)) = (side, isns) else {
            return Self::random();
        };
        let ids = ConnectionIds::derive(isns);
        let root = Self {
            trace_id: ids.trace_id,
            span_id: ids.side(side).span_id,
            parent_span_id: None,
            link: None,
            flags: OTLP_FLAGS_ROOT,
        };
        match side {
            Side::Client => root,
            Side::Server if policy.links(peer) => Self {
                parent_span_id: Some(ids.client_span_id),
                flags: OTLP_FLAGS_REMOTE_PARENT,
                ..root
            },
            Side::Server => Self {
                link: Some(SpanLink {
                    trace_id: ids.trace_id,
                    span_id: ids.client_span_id,
                    flags: OTLP_FLAGS_REMOTE_PARENT,
                }),
                ..root
            },
        }
    }

    /// A root of its own trace, with random ids.
    pub fn random() -> Self {
        let ids = RandomIdGenerator::default();
        Self {
            trace_id: ids.new_trace_id(),
            span_id: ids.new_span_id(),
            parent_span_id: None,
            link: None,
            flags: OTLP_FLAGS_ROOT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAIR: IsnPair = IsnPair {
        client: 0x1234_5678,
        server: 0x9abc_def0,
    };

    fn loopback() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    fn hex(id: impl std::fmt::Display) -> String {
        id.to_string()
    }

    /// The golden vector of `trace_context` for `PAIR`.
    #[test]
    fn client_spans_are_roots_and_server_spans_their_children() {
        let client =
            SpanContext::decide(Some(Side::Client), Some(PAIR), loopback(), &LinkPolicy::All);
        assert_eq!(hex(client.trace_id), "88573136ed57febea094d0d8de01bbd7");
        assert_eq!(hex(client.span_id), "f8b9d5fe014c4dc6");
        assert_eq!((client.parent_span_id, client.link), (None, None));
        assert_eq!(client.flags, 0x103);
        let server =
            SpanContext::decide(Some(Side::Server), Some(PAIR), loopback(), &LinkPolicy::All);
        assert_eq!(server.trace_id, client.trace_id);
        assert_eq!(hex(server.span_id), "a13a608c60e79f28");
        assert_eq!(server.parent_span_id, Some(client.span_id));
        assert_eq!(server.link, None);
        assert_eq!(server.flags, 0x303);
    }

    #[test]
    fn a_peer_outside_the_policy_gets_a_link_instead_of_a_parent() {
        let policy = LinkPolicy::parse("10.0.0.0/8").unwrap();
        let client = SpanContext::decide(Some(Side::Client), Some(PAIR), loopback(), &policy);
        let linked = SpanContext::decide(
            Some(Side::Server),
            Some(PAIR),
            IpAddr::from([10, 1, 2, 3]),
            &policy,
        );
        assert_eq!(linked.parent_span_id, Some(client.span_id));
        for policy in [policy, LinkPolicy::Nothing] {
            let server = SpanContext::decide(Some(Side::Server), Some(PAIR), loopback(), &policy);
            assert_eq!(server.trace_id, client.trace_id);
            assert_eq!(server.span_id, linked.span_id);
            assert_eq!(server.parent_span_id, None);
            assert_eq!(
                server.link,
                Some(SpanLink {
                    trace_id: client.trace_id,
                    span_id: client.span_id,
                    flags: 0x303,
                })
            );
            assert_eq!(server.flags, 0x103);
        }
        // The client side is a root whatever the policy.
        assert_eq!(
            SpanContext::decide(
                Some(Side::Client),
                Some(PAIR),
                loopback(),
                &LinkPolicy::Nothing
            ),
            client
        );
    }

    #[test]
    fn without_a_pair_or_a_side_the_ids_are_random_roots() {
        let cases = [
            (Some(Side::Client), None),
            (Some(Side::Server), None),
            (None, Some(PAIR)),
            (None, None),
        ];
        for (side, isns) in cases {
            let first = SpanContext::decide(side, isns, loopback(), &LinkPolicy::All);
            let second = SpanContext::decide(side, isns, loopback(), &LinkPolicy::All);
            assert_ne!(first.trace_id, second.trace_id, "{side:?} {isns:?}");
            assert_ne!(first.span_id, second.span_id);
            assert_ne!(first.trace_id, TraceId::INVALID);
            assert_ne!(first.span_id, SpanId::INVALID);
            assert_eq!((first.parent_span_id, first.link), (None, None));
            assert_eq!(first.flags, 0x103);
        }
    }
}
