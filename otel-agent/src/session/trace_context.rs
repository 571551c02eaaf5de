//! The trace context of a TCP connection, derived from its (client ISN, server ISN) pair by a
//! fixed function, so that the agents at both ends put their spans in one trace with no
//! coordination (issue 13). Pure functions; the pair itself comes from the session record.
//!
//! [`crate::span_context`] turns these ids into each session's span context (root, parent
//! or link, under the [`crate::link_policy`]); the encoder writes that context.
//!
//! # The function, version 1
//!
//! The **client** is the side that sent the SYN (active open), the **server** the side that
//! answered with the SYN-ACK; `client_isn` is the sequence number of the SYN, `server_isn`
//! that of the SYN-ACK. Each end knows its own side, so both build the same input.
//!
//! The hash input is 37 bytes, one SHA-256 block (FIPS 180-4):
//!
//! | offset | length | content |
//! |---|---|---|
//! | 0 | 27 | the domain, ASCII `otel-agent/connection-trace` (no terminator) |
//! | 27 | 1 | the version of the function: `0x01` |
//! | 28 | 1 | the attempt: `0x00`, then `0x01`, ... (see "invalid ids") |
//! | 29 | 4 | `client_isn`, big-endian (network order, as in the TCP header) |
//! | 33 | 4 | `server_isn`, big-endian |
//!
//! Its SHA-256 digest `D` (32 bytes) gives all three ids at once:
//!
//! - trace id: `D[0..16]`;
//! - client-side span id: `D[16..24]`;
//! - server-side span id: `D[24..32]`.
//!
//! **Invalid ids.** W3C Trace Context forbids an all-zero trace id or span id, and the two
//! spans of a connection need distinct span ids. If `D[0..16]`, `D[16..24]` or `D[24..32]` is
//! all zero, or `D[16..24] == D[24..32]`, the digest is computed again with the attempt byte
//! incremented, until a digest passes (each attempt fails with probability below 2^-62). Were
//! all 256 attempts to fail, the ids are [`FALLBACK`]; that is as likely as 256 independent
//! 2^-62 events and is there only so that the function is total.
//!
//! **Flags.** The trace flags are `0x03`: sampled (`0x01`) and random (`0x02`, W3C Trace
//! Context Level 2: at least the right-most 7 bytes of the trace id are random or
//! pseudo-random, which OTEP 235 consistent sampling reads as its 56-bit randomness): the
//! digest's bytes are uniformly distributed over the distribution of ISN pairs, and RFC 6528
//! ISNs are keyed hashes with a clock, unpredictable from outside. In OTLP, `Span.flags`
//! carries the trace flags in bits 0-7 and, in bits 8 and 9, whether the parent (or a link's
//! span) is remote (`SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK` = 0x100,
//! `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK` = 0x200): [`OTLP_FLAGS_ROOT`] is the `Span.flags` of
//! any span without a parent (the client span, a server span that only links to it);
//! [`OTLP_FLAGS_REMOTE_PARENT`] is the `Span.flags` of a server span whose parent is the
//! client span and the `Link.flags` of a link to the client span, which always lives at the
//! other end of the connection.
//!
//! A later version changes the version byte and says so in the README; the domain keeps
//! these ids apart from any other SHA-256 use.
//!
//! # A connect that never got a SYN-ACK
//!
//! A refused or timed-out connect has no server ISN, and no other span can ever meet it: the
//! server side never reached ESTABLISHED, so no agent reports it. Its span keeps today's ids,
//! a trace id and span id from the agent's random id generator, and is a root. Deriving them
//! from the client ISN (and addresses) would buy nothing, since there is no peer to agree
//! with, and would cost uniqueness: a client ISN alone has 32 bits, so the trace ids of
//! refused connects would collide after about 2^16 of them (a retry loop against a closed
//! port reaches that in minutes), and even with the 4-tuple the input stays far below 128
//! bits. Random ids are unique and uniformly distributed, so the random flag holds for them
//! too. Sessions whose side is unknown keep the same random ids.
//!
//! # Collisions
//!
//! The input has at most 64 bits of entropy (the two 32-bit ISNs), so two connections share a
//! trace id when their pairs are equal, which for n connections with uniform pairs happens
//! `n^2 / 2^65` times on average (birthday bound on 2^64; a SHA-256 collision between
//! distinct pairs, ~2^-128, is negligible). What counts is n within the time a backend keeps
//! or pairs traces. At a fleet-wide rate r connections per second over a window T:
//!
//! | r | T | n | expected colliding pairs |
//! |---|---|---|---|
//! | 1,000/s | 1 day | 8.6 * 10^7 | 2.0 * 10^-4 |
//! | 10,000/s | 1 day | 8.6 * 10^8 | 0.020 |
//! | 100,000/s | 1 hour | 3.6 * 10^8 | 0.0035 |
//! | 100,000/s | 14 days | 1.2 * 10^11 | 400 |
//!
//! A collision puts two unrelated connections in one trace (four spans, two roots); the
//! OpenTelemetry Collector's `servicegraph` connector pairs spans only within its
//! `store.ttl` (seconds), where collisions are out of reach. A peer whose ISNs are not
//! random (a constant or counter ISN, as some embedded stacks have) leaves 32 bits of
//! entropy: its connections collide after about 2^16.
//!
//! # Cost, and the choice of SHA-256
//!
//! Criterion (`cargo bench -p otel-agent --bench pipeline -- trace_context`), on the
//! project's 2-core x86_64 machine (SHA-NI, AVX-512), median per call on the 37-byte input:
//! `derive` 64-68 ns (all three ids, checks included); the hash alone 52 ns with `sha2`
//! (SHA-256), 104 ns with `ring`'s SHA-256, 85 ns with `blake3`. `sha2` is the fastest
//! here, SHA-256 is in every language's standard library (another implementation, a
//! collector processor in Go or a script in Python, reproduces the ids with no extra
//! dependency), and the derivation costs about 14% of encoding one span (485 ns). The
//! comparison is in the commit that chose it (887e1e5); the bench keeps `derive` and
//! `sha256`.

use opentelemetry::trace::{SpanId, TraceId};
use sha2::{Digest as _, Sha256};

use crate::isn::{IsnPair, Side};

/// The domain separation prefix of the hash input.
pub const DOMAIN: &[u8; 27] = b"otel-agent/connection-trace";
/// The version of the derivation, byte 27 of the hash input.
pub const VERSION: u8 = 1;
/// The W3C trace flags of a derived context: sampled (0x01) and random (0x02).
pub const TRACE_FLAGS: u8 = 0x03;
/// OTLP `Span.flags` of a root span: [`TRACE_FLAGS`] and "the parent's remoteness is known"
/// (0x100; a root has no remote parent).
pub const OTLP_FLAGS_ROOT: u32 = 0x100 | TRACE_FLAGS as u32;
/// OTLP `Span.flags` of a server span whose parent is the client span, and `Link.flags` of a
/// link to the client span: [`TRACE_FLAGS`], remoteness known (0x100) and remote (0x200).
pub const OTLP_FLAGS_REMOTE_PARENT: u32 = 0x300 | TRACE_FLAGS as u32;

/// The ids if every attempt failed (see the module doc): the SHA-256 of the empty string's
/// first 32 bytes, fixed here so the function is total.
pub const FALLBACK: ConnectionIds = ConnectionIds {
    trace_id: TraceId::from_bytes([
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9,
        0x24,
    ]),
    client_span_id: SpanId::from_bytes([0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c]),
    server_span_id: SpanId::from_bytes([0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55]),
};

impl IsnPair {
    /// The hash input of one attempt (the layout in the module doc).
    pub fn hash_input(self, attempt: u8) -> [u8; 37] {
        let mut input = [0_u8; 37];
        input[..27].copy_from_slice(DOMAIN);
        input[27] = VERSION;
        input[28] = attempt;
        input[29..33].copy_from_slice(&self.client.to_be_bytes());
        input[33..37].copy_from_slice(&self.server.to_be_bytes());
        input
    }
}

/// The ids of one connection: the same at both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionIds {
    /// The connection's trace id.
    pub trace_id: TraceId,
    /// The span id of the client-side span (a root).
    pub client_span_id: SpanId,
    /// The span id of the server-side span (the client span's child, or linked to it).
    pub server_span_id: SpanId,
}

impl ConnectionIds {
    /// The ids of the connection with `pair` (version 1 of the function in the module doc).
    pub fn derive(pair: IsnPair) -> Self {
        (0..=u8::MAX)
            .find_map(|attempt| Self::from_digest(&Sha256::digest(pair.hash_input(attempt)).into()))
            .unwrap_or(FALLBACK)
    }

    /// The ids in a digest, or `None` if one is invalid or the span ids are equal.
    pub fn from_digest(digest: &[u8; 32]) -> Option<Self> {
        let mut trace_id = [0_u8; 16];
        let mut client = [0_u8; 8];
        let mut server = [0_u8; 8];
        trace_id.copy_from_slice(&digest[..16]);
        client.copy_from_slice(&digest[16..24]);
        server.copy_from_slice(&digest[24..]);
        let ids = Self {
            trace_id: TraceId::from_bytes(trace_id),
            client_span_id: SpanId::from_bytes(client),
            server_span_id: SpanId::from_bytes(server),
        };
        let valid = ids.trace_id != TraceId::INVALID
            && ids.client_span_id != SpanId::INVALID
            && ids.server_span_id != SpanId::INVALID
            && ids.client_span_id != ids.server_span_id;
        valid.then_some(ids)
    }

    /// The span context of one side: its span id, and its peer's (the server span's parent or
    /// link is the client span; the client span is a root, its peer is the server span).
    pub fn side(&self, side: Side) -> SideIds {
        let (span_id, peer_span_id) = match side {
            Side::Client => (self.client_span_id, self.server_span_id),
            Side::Server => (self.server_span_id, self.client_span_id),
        };
        SideIds {
            trace_id: self.trace_id,
            span_id,
            peer_span_id,
        }
    }
}

/// One side's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SideIds {
    /// The connection's trace id.
    pub trace_id: TraceId,
    /// This side's span id.
    pub span_id: SpanId,
    /// The other side's span id.
    pub peer_span_id: SpanId,
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn hex(ids: &ConnectionIds) -> (String, String, String) {
        (
            format!("{}", ids.trace_id),
            format!("{}", ids.client_span_id),
            format!("{}", ids.server_span_id),
        )
    }

    /// Golden vectors: any change of the function fails here (and needs a new version). The
    /// values were computed independently from the documented layout, with Python's hashlib:
    /// `sha256(b"otel-agent/connection-trace" + bytes([1, 0]) + struct.pack(">II", c, s))`.
    #[test]
    fn golden_vectors() {
        let cases = [
            (
                0x0000_0000,
                0x0000_0000,
                (
                    "0f374382bc3e3f1d42719f85836d6628",
                    "2136fbce09bd7710",
                    "c66b7d43b7afb5c3",
                ),
            ),
            (
                0x1234_5678,
                0x9abc_def0,
                (
                    "88573136ed57febea094d0d8de01bbd7",
                    "f8b9d5fe014c4dc6",
                    "a13a608c60e79f28",
                ),
            ),
            (
                0xffff_ffff,
                0x0000_0001,
                (
                    "2b4ea308366417ff46aa2879d7802568",
                    "72c9d9a4cbbd323a",
                    "fffbe3c2f32b7f63",
                ),
            ),
        ];
        for (client_isn, server_isn, (trace, client, server)) in cases {
            let ids = ConnectionIds::derive(IsnPair {
                client: client_isn,
                server: server_isn,
            });
            assert_eq!(
                hex(&ids),
                (trace.to_owned(), client.to_owned(), server.to_owned()),
                "pair ({client_isn:#010x}, {server_isn:#010x})"
            );
        }
    }

    #[test]
    fn hash_input_layout() {
        let input = IsnPair {
            client: 0x0102_0304,
            server: 0xa0b0_c0d0,
        }
        .hash_input(7);
        assert_eq!(&input[..27], b"otel-agent/connection-trace");
        assert_eq!(input[27..], [1, 7, 1, 2, 3, 4, 0xa0, 0xb0, 0xc0, 0xd0]);
    }

    #[test]
    fn invalid_digests_are_rejected() {
        let mut digest = [0x11_u8; 32];
        digest[24..].fill(0x22);
        assert!(ConnectionIds::from_digest(&digest).is_some());
        let mut zero_trace = digest;
        zero_trace[..16].fill(0);
        let mut zero_client = digest;
        zero_client[16..24].fill(0);
        let mut zero_server = digest;
        zero_server[24..].fill(0);
        let mut equal_spans = digest;
        equal_spans[24..].fill(0x11);
        for bad in [zero_trace, zero_client, zero_server, equal_spans] {
            assert_eq!(ConnectionIds::from_digest(&bad), None);
        }
        // A trace id with one non-zero byte is valid.
        zero_trace[15] = 1;
        assert!(ConnectionIds::from_digest(&zero_trace).is_some());
    }

    #[test]
    fn fallback_is_valid() {
        let mut digest = [0_u8; 32];
        digest[..16].copy_from_slice(&FALLBACK.trace_id.to_bytes());
        digest[16..24].copy_from_slice(&FALLBACK.client_span_id.to_bytes());
        digest[24..].copy_from_slice(&FALLBACK.server_span_id.to_bytes());
        assert_eq!(ConnectionIds::from_digest(&digest), Some(FALLBACK));
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(b"")));
    }

    #[test]
    fn flags() {
        assert_eq!(OTLP_FLAGS_ROOT, 0x103);
        assert_eq!(OTLP_FLAGS_REMOTE_PARENT, 0x303);
    }

    /// A deterministic generator of test pairs (SplitMix64, fixed seed).
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Pearson's chi-square of bucket counts against a uniform expectation.
    fn chi_square(counts: &[u64], total: u64) -> f64 {
        let expected = total as f64 / counts.len() as f64;
        counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    }

    /// The low 56 bits of the trace id (OTEP 235's randomness) are uniform: for structured
    /// pairs (a counter) and random pairs alike, each of the 7 low bytes over 256 buckets,
    /// and the 56-bit value's top 10 bits over 1,024 buckets, pass a chi-square test. The
    /// bound is the mean plus 6 standard deviations (df + 6 * sqrt(2 df)): a uniform source
    /// exceeds it with probability below 10^-6, a counter passed through unhashed fails it
    /// by orders of magnitude.
    #[test]
    fn low_56_bits_are_uniform() {
        const PAIRS: u64 = 100_000;
        let mut state = 0x00c0_ffee_u64;
        let structured = (0..PAIRS).map(|i| IsnPair {
            client: i as u32,
            server: (i / 3) as u32,
        });
        let random: Vec<IsnPair> = (0..PAIRS)
            .map(|_| {
                let r = splitmix(&mut state);
                IsnPair {
                    client: r as u32,
                    server: (r >> 32) as u32,
                }
            })
            .collect();
        for (name, pairs) in [
            ("structured", structured.collect::<Vec<_>>()),
            ("random", random),
        ] {
            let mut bytes = [[0_u64; 256]; 7];
            let mut top = [0_u64; 1024];
            let mut seen = HashSet::new();
            for pair in &pairs {
                let trace = ConnectionIds::derive(*pair).trace_id.to_bytes();
                let low =
                    u64::from_be_bytes(trace[8..].try_into().expect("8 bytes")) & ((1 << 56) - 1);
                for (k, counts) in bytes.iter_mut().enumerate() {
                    counts[((low >> (8 * k)) & 0xff) as usize] += 1;
                }
                top[(low >> 46) as usize] += 1;
                seen.insert(trace);
            }
            let bound = |df: f64| df + 6.0 * (2.0 * df).sqrt();
            for (k, counts) in bytes.iter().enumerate() {
                let chi = chi_square(counts, PAIRS);
                assert!(
                    chi < bound(255.0),
                    "{name}: byte {k} of the low 56 bits: chi-square {chi:.1}"
                );
            }
            let chi = chi_square(&top, PAIRS);
            assert!(
                chi < bound(1023.0),
                "{name}: top 10 of the low 56 bits: chi-square {chi:.1}"
            );
            // Distinct pairs (the random ones are distinct for this seed) give distinct ids.
            let distinct_pairs = pairs.iter().collect::<HashSet<_>>().len();
            assert_eq!(seen.len(), distinct_pairs, "{name}: trace ids collide");
        }
    }

    proptest! {
        /// Both ends compute the same trace id from their own view, and agree on the spans.
        #[test]
        fn both_ends_agree(client_isn in any::<u32>(), server_isn in any::<u32>()) {
            let client_view = IsnPair::from_local(Side::Client, client_isn, server_isn);
            let server_view = IsnPair::from_local(Side::Server, server_isn, client_isn);
            let at_client = ConnectionIds::derive(client_view);
            let at_server = ConnectionIds::derive(server_view);
            prop_assert_eq!(at_client, at_server);
            let client = at_client.side(Side::Client);
            let server = at_server.side(Side::Server);
            prop_assert_eq!(client.trace_id, server.trace_id);
            prop_assert_eq!(server.peer_span_id, client.span_id);
            prop_assert_eq!(client.peer_span_id, server.span_id);
            prop_assert_ne!(client.span_id, server.span_id);
            prop_assert_ne!(client.trace_id, TraceId::INVALID);
            prop_assert_ne!(client.span_id, SpanId::INVALID);
            prop_assert_ne!(server.span_id, SpanId::INVALID);
        }

        /// Distinct pairs give distinct trace ids, including the swapped pair (the
        /// orientation matters).
        #[test]
        fn distinct_pairs_distinct_trace_ids(
            pairs in proptest::collection::hash_set(any::<(u32, u32)>(), 1..500)
        ) {
            let mut ids = HashSet::new();
            for &(client_isn, server_isn) in &pairs {
                ids.insert(ConnectionIds::derive(IsnPair {
                    client: client_isn,
                    server: server_isn,
                }).trace_id);
            }
            prop_assert_eq!(ids.len(), pairs.len());
        }

        #[test]
        fn swapped_pair_differs(a in any::<u32>(), b in any::<u32>()) {
            prop_assume!(a != b);
            prop_assert_ne!(
                ConnectionIds::derive(IsnPair { client: a, server: b }).trace_id,
                ConnectionIds::derive(IsnPair { client: b, server: a }).trace_id
            );
        }
    }
}
