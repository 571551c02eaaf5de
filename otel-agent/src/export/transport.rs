//! Sends encoded OTLP trace requests ([`super::encode`]) to the collector, over gRPC
//! (`TraceService/Export` on one HTTP/2 connection that carries concurrent requests) or
//! HTTP/protobuf (`POST` to `/v1/traces`), with the configured headers, gzip, timeout and
//! TLS, and reads the collector's answer: a success (with a partial success, or not an OTLP
//! response at all), an answer that refuses the request (with the wait it asks for), or no
//! answer (refused, reset or closed connection, TLS/plaintext mismatch, timeout), each
//! classified as the OTLP specification does ([`SendError::is_retryable`]).

use std::{
    error::Error as _,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::{Buf as _, BufMut as _, Bytes};
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::{
    Request, Status,
    client::Grpc,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt as _;

use super::{
    ExportError,
    config::{Compression, OtlpProtocol, OtlpTarget},
    grpc_tls, header_map, install_crypto_provider,
    queue::Destination,
    reqwest_tls,
};
use crate::log_text::{self, Escaped};

/// The gRPC method of OTLP trace export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// How the agent introduces itself to the collector.
const USER_AGENT: &str = concat!("otel-agent/", env!("CARGO_PKG_VERSION"));

/// What the collector said about a request it accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Spans the collector rejected (OTLP partial success); the rest were accepted.
    pub rejected: u64,
    /// The collector's explanation of the rejection, if any (external text: log it
    /// through [`Escaped`]).
    pub message: String,
    /// The answer said success (HTTP 2xx, gRPC `OK`) but its body is not an OTLP response
    /// (an HTML page from a proxy, garbage): whether the collector has the spans is
    /// unknown. Says what was received instead (external text: log it through
    /// [`Escaped`]).
    pub unconfirmed: Option<String>,
}

impl From<ExportTraceServiceResponse> for Accepted {
    fn from(response: ExportTraceServiceResponse) -> Self {
        response
            .partial_success
            .map(|partial| Self {
                rejected: u64::try_from(partial.rejected_spans).unwrap_or(0),
                message: partial.error_message,
                unconfirmed: None,
            })
            .unwrap_or_default()
    }
}

impl Accepted {
    /// A success answer whose body is not an OTLP response.
    fn unconfirmed(what: String) -> Self {
        Self {
            unconfirmed: Some(what),
            ..Self::default()
        }
    }
}

/// A request that failed.
///
/// `Grpc` and `Http` are answers the collector (or a proxy in front of it) gave; `NoAnswer`
/// is a request that got none (refused or dropped connection, TLS mismatch, timeout), and
/// may or may not have reached the collector. External text (a status message, a body) is
/// escaped when displayed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the collector answered gRPC status {code:?}: {}", Escaped(message))]
    Grpc {
        code: tonic::Code,
        message: String,
        /// The delay a `google.rpc.RetryInfo` in the status details asks for.
        retry_after: Option<Duration>,
    },
    #[error("the collector answered HTTP {status}: {}", Escaped(body))]
    Http {
        status: http::StatusCode,
        body: String,
        /// The delay a `Retry-After` header asks for.
        retry_after: Option<Duration>,
    },
    #[error("no answer from the collector: {}", Escaped(.0))]
    NoAnswer(String),
}

impl SendError {
    /// Whether sending again can succeed, as the OTLP specification classifies failures
    /// (<https://opentelemetry.io/docs/specs/otlp/#failures> for gRPC,
    /// <https://opentelemetry.io/docs/specs/otlp/#failures-1> for HTTP): gRPC `CANCELLED`,
    /// `DEADLINE_EXCEEDED`, `ABORTED`, `OUT_OF_RANGE`, `UNAVAILABLE` and `DATA_LOSS`, and
    /// `RESOURCE_EXHAUSTED` only when the status carries a `RetryInfo` (the server says
    /// recovery is possible; without one it is most often a request over the collector's
    /// size limit); HTTP 429, 502, 503 and 504; and every failure without an answer
    /// (connection refused, reset or closed, TLS mismatch, timeout: the specification's
    /// "retryable" transport errors, the request may not even have arrived), or to write
    /// the output. Anything else (a malformed or too large request, a refused credential,
    /// an unknown path) fails the same way every time.
    pub fn is_retryable(&self) -> bool {
        use tonic::Code;
        match self {
            Self::Grpc {
                code, retry_after, ..
            } => match code {
                Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::OutOfRange
                | Code::Unavailable
                | Code::DataLoss => true,
                Code::ResourceExhausted => retry_after.is_some(),
                _ => false,
            },
            Self::Http { status, .. } => matches!(status.as_u16(), 429 | 502 | 503 | 504),
            Self::NoAnswer(_) => true,
        }
    }

    /// How long the collector asked the agent to wait before sending again (HTTP
    /// `Retry-After`, gRPC `RetryInfo`: the specification's throttling,
    /// <https://opentelemetry.io/docs/specs/otlp/#otlpgrpc-throttling> and
    /// <https://opentelemetry.io/docs/specs/otlp/#otlphttp-throttling>), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Grpc { retry_after, .. } | Self::Http { retry_after, .. } => *retry_after,
            Self::NoAnswer(_) => None,
        }
    }
}

/// A client for the configured collector; cheap to clone, and clones share the connection.
#[derive(Clone)]
pub enum Transport {
    Grpc(GrpcTransport),
    Http(HttpTransport),
}

impl Destination for Transport {
    /// Sends one encoded `ExportTraceServiceRequest`.
    async fn send(&self, request: Bytes) -> Result<Accepted, SendError> {
        match self {
            Self::Grpc(grpc) => grpc.send(request).await,
            Self::Http(http) => http.send(request).await,
        }
    }
}

impl Transport {
    pub fn new(target: &OtlpTarget) -> Result<Self, ExportError> {
        install_crypto_provider();
        Ok(match target.protocol {
            OtlpProtocol::Grpc => Self::Grpc(GrpcTransport::new(target)?),
            OtlpProtocol::HttpProtobuf => Self::Http(HttpTransport::new(target)?),
        })
    }
}

/// OTLP/gRPC.
#[derive(Clone)]
pub struct GrpcTransport {
    connection: Arc<Connection>,
    metadata: MetadataMap,
    link: Link,
}

/// The gRPC connection, shared by the clones of a transport.
struct Connection {
    endpoint: Endpoint,
    gzip: bool,
    /// The client on the current connection: made at the first request (so that the
    /// transport can be built before the async runtime starts), dropped when an attempt
    /// times out.
    client: Mutex<Option<Grpc<Channel>>>,
}

impl GrpcTransport {
    fn new(target: &OtlpTarget) -> Result<Self, ExportError> {
        let invalid = |error: tonic::transport::Error| ExportError::Endpoint(error.to_string());
        let mut endpoint = Endpoint::from_shared(target.endpoint.clone())
            .map_err(invalid)?
            .timeout(target.timeout)
            .connect_timeout(target.timeout)
            .user_agent(USER_AGENT)
            .map_err(invalid)?;
        if target.endpoint.starts_with("https://") {
            endpoint = endpoint.tls_config(grpc_tls(target)?).map_err(invalid)?;
        }
        let gzip = target.compression == Compression::Gzip;
        Ok(Self {
            connection: Arc::new(Connection {
                client: Mutex::new(None),
                endpoint,
                gzip,
            }),
            metadata: MetadataMap::from_headers(header_map(target)?),
            link: Link::of(target),
        })
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Option<Grpc<Channel>>> {
        self.connection
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends one request. tonic's request timeout does not cover connecting, and a TLS
    /// handshake nobody answers would hold the connection, and every request after it, for
    /// good: the whole attempt is bounded by the timeout, and past it the connection is
    /// dropped (requests still on it keep it until they end) and the next request starts a
    /// new one.
    async fn send(&self, body: Bytes) -> Result<Accepted, SendError> {
        let client = self
            .client()
            .get_or_insert_with(|| connect(&self.connection.endpoint, self.connection.gzip))
            .clone();
        match tokio::time::timeout(self.link.timeout, self.call(client, body)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                *self.client() = None;
                Err(SendError::NoAnswer(self.link.timed_out()))
            }
        }
    }

    async fn call(&self, mut client: Grpc<Channel>, body: Bytes) -> Result<Accepted, SendError> {
        client
            .ready()
            .await
            .map_err(|error| SendError::NoAnswer(self.link.describe(&error)))?;
        let mut request = Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        match client
            .unary(
                request,
                PathAndQuery::from_static(EXPORT_PATH),
                EncodedCodec,
            )
            .await
        {
            Ok(response) => Ok(match response.into_inner() {
                Ok(response) => response.into(),
                Err(error) => Accepted::unconfirmed(format!(
                    "gRPC status OK with a message that is not an OTLP response ({error})"
                )),
            }),
            Err(status) => Err(self.link.grpc_failure(&status)),
        }
    }
}

/// A client on a new connection to `endpoint`, made at its first request (and again after
/// the connection breaks).
fn connect(endpoint: &Endpoint, gzip: bool) -> Grpc<Channel> {
    let client = Grpc::new(endpoint.connect_lazy());
    if gzip {
        client
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip)
    } else {
        client
    }
}

/// Sends bytes that are already an encoded request, and decodes the response; a response
/// that does not decode is kept as its error, so that the gRPC status still decides.
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = Result<ExportTraceServiceResponse, prost::DecodeError>;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        Self
    }

    fn decoder(&mut self) -> Self::Decoder {
        Self
    }
}

impl Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = Result<ExportTraceServiceResponse, prost::DecodeError>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        // The whole message is taken, even when it does not decode: what prost left unread
        // would be read as the next message's header.
        let message = src.copy_to_bytes(src.remaining());
        Ok(Some(ExportTraceServiceResponse::decode(message)))
    }
}

/// OTLP/HTTP with protobuf bodies.
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    url: String,
    headers: http::HeaderMap,
    gzip: bool,
    link: Link,
}

impl HttpTransport {
    fn new(target: &OtlpTarget) -> Result<Self, ExportError> {
        let mut builder = reqwest::Client::builder()
            .timeout(target.timeout)
            .user_agent(USER_AGENT);
        let (ca, identity) = reqwest_tls(target)?;
        if let Some(ca) = ca {
            builder = builder.add_root_certificate(ca);
        }
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|error| ExportError::HttpClient(error.to_string()))?;
        let mut headers = header_map(target)?;
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(PROTOBUF),
        );
        let gzip = target.compression == Compression::Gzip;
        if gzip {
            headers.insert(
                http::header::CONTENT_ENCODING,
                http::HeaderValue::from_static("gzip"),
            );
        }
        Ok(Self {
            client,
            url: target.endpoint.clone(),
            headers,
            gzip,
            link: Link::of(target),
        })
    }

    async fn send(&self, body: Bytes) -> Result<Accepted, SendError> {
        let body = if self.gzip { gzip(&body) } else { body };
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await
            .map_err(|error| SendError::NoAnswer(self.link.describe(&error)))?;
        let status = response.status();
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let body = match response.bytes().await {
            Ok(body) => body,
            // The collector said success, then the body broke off: whether it kept the
            // spans is unknown, and sending them again could duplicate them.
            Err(error) if status.is_success() => {
                return Ok(Accepted::unconfirmed(format!(
                    "HTTP {status}, then the body broke off: {}",
                    self.link.describe(&error)
                )));
            }
            Err(_) => Bytes::new(),
        };
        if !status.is_success() {
            return Err(SendError::Http {
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(4 * log_text::MAX_CHARS)])
                    .into_owned(),
                retry_after,
            });
        }
        Ok(http_answer(status, content_type.as_deref(), body))
    }
}

/// Content type of OTLP/HTTP protobuf requests and responses.
const PROTOBUF: &str = "application/x-protobuf";

/// Reads a success answer: an empty body is a full success; a body must be an OTLP
/// protobuf response (the specification: "the response body MUST be the appropriate
/// serialized Protobuf message"), anything else leaves the export unconfirmed.
fn http_answer(status: http::StatusCode, content_type: Option<&str>, body: Bytes) -> Accepted {
    if body.is_empty() {
        return Accepted::default();
    }
    let protobuf = content_type.is_none_or(|kind| kind.starts_with(PROTOBUF));
    let unconfirmed = |why: &str| {
        Accepted::unconfirmed(format!(
            "HTTP {status} with a body that is not an OTLP protobuf response ({why}; content-type {}): {}",
            content_type.unwrap_or("none"),
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    };
    if !protobuf {
        return unconfirmed("wrong content type");
    }
    match ExportTraceServiceResponse::decode(body.clone()) {
        Ok(response) => response.into(),
        Err(error) => unconfirmed(&error.to_string()),
    }
}

/// The delay a `Retry-After` header asks for: seconds, or an HTTP date (RFC 9110 10.2.3).
fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A connection closed by the collector's side before the TLS handshake completed.
const HANDSHAKE_CLOSED: &str = "the connection closed during the TLS handshake";

/// What the transports know of the endpoint to explain a failure without an answer.
#[derive(Debug, Clone, Copy)]
struct Link {
    tls: bool,
    timeout: Duration,
}

impl Link {
    fn of(target: &OtlpTarget) -> Self {
        Self {
            tls: target.endpoint.starts_with("https://"),
            timeout: target.timeout,
        }
    }

    /// A failed gRPC call: the collector's status, or tonic's account of a call that got
    /// none. tonic gives a status either way; one it made from a transport error carries
    /// that error as its source, one the collector sent has none.
    fn grpc_failure(&self, status: &Status) -> SendError {
        if let Some(source) = status.source() {
            return SendError::NoAnswer(self.describe(source));
        }
        // HTTP 200 whose stream ended before its grpc-status: the answer was cut off.
        if status.code() == tonic::Code::Unknown && status.message().contains("missing grpc-status")
        {
            return SendError::NoAnswer(format!(
                "the connection closed before the answer was complete ({})",
                status.message()
            ));
        }
        SendError::Grpc {
            code: status.code(),
            message: status.message().to_owned(),
            retry_after: status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay),
        }
    }

    /// What happened to a request that got no answer, from the chain of causes: timeout,
    /// refused, reset, closed, TLS mismatch; then the causes themselves.
    fn describe(&self, error: &(dyn std::error::Error + 'static)) -> String {
        let causes = crate::log_text::with_causes(error);
        let what = self
            .cause(error)
            .or_else(|| self.cause_in_text(&causes.to_lowercase()));
        match what {
            Some(what) => format!("{what} ({causes})"),
            None => causes,
        }
    }

    /// A request that got no answer within the timeout.
    fn timed_out(&self) -> String {
        format!(
            "no answer within the export timeout of {:?} (--otlp-timeout / OTEL_EXPORTER_OTLP_TIMEOUT)",
            self.timeout
        )
    }

    fn cause(&self, error: &(dyn std::error::Error + 'static)) -> Option<String> {
        let timeout = || self.timed_out();
        let closed = "the connection closed before any answer";
        let mut next = Some(error);
        while let Some(error) = next {
            if error.is::<tonic::TimeoutExpired>() {
                return Some(timeout());
            }
            if let Some(error) = error.downcast_ref::<reqwest::Error>()
                && error.is_timeout()
            {
                return Some(timeout());
            }
            if let Some(error) = error.downcast_ref::<rustls::Error>() {
                return Some(self.tls_failure(error));
            }
            if let Some(error) = error.downcast_ref::<std::io::Error>() {
                if let Some(tls) = error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                {
                    return Some(self.tls_failure(tls));
                }
                use std::io::ErrorKind;
                if error.kind() == ErrorKind::UnexpectedEof
                    && error.to_string().contains("tls handshake eof")
                {
                    return Some(HANDSHAKE_CLOSED.into());
                }
                match error.kind() {
                    ErrorKind::ConnectionRefused => {
                        return Some(
                            "connection refused: nothing listens on the collector's port".into(),
                        );
                    }
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                        return Some("the connection was reset before any answer".into());
                    }
                    ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof => return Some(closed.into()),
                    ErrorKind::TimedOut => return Some(timeout()),
                    _ => {}
                }
            }
            if let Some(error) = error.downcast_ref::<hyper::Error>() {
                if error.is_incomplete_message() || error.is_closed() || error.is_canceled() {
                    return Some(closed.into());
                }
                if error.is_parse() && !self.tls {
                    return Some(self.not_http());
                }
            }
            if let Some(error) = error.downcast_ref::<h2::Error>() {
                // Bytes the agent's HTTP/2 client could not read as frames (not a frame the
                // collector sent to say so).
                let garbled = !error.is_remote()
                    && matches!(
                        error.reason(),
                        Some(h2::Reason::PROTOCOL_ERROR | h2::Reason::FRAME_SIZE_ERROR)
                    );
                if garbled {
                    return Some(if self.tls {
                        "the collector's answer is not HTTP/2".into()
                    } else {
                        self.not_http()
                    });
                }
                if error.is_io()
                    || error.is_go_away()
                    || error.is_remote() && error.reason() == Some(h2::Reason::NO_ERROR)
                {
                    return Some(closed.into());
                }
            }
            next = error.source();
        }
        None
    }

    /// The same, from the text of causes whose types a client keeps to itself (reqwest's
    /// connector wraps its TLS and socket errors).
    fn cause_in_text(&self, causes: &str) -> Option<String> {
        let has = |text: &str| causes.contains(text);
        Some(if has("tls handshake eof") {
            HANDSHAKE_CLOSED.into()
        } else if has("invalidcontenttype") || has("corrupt message") {
            self.tls_failure(&rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType,
            ))
        } else if has("connection refused") {
            "connection refused: nothing listens on the collector's port".into()
        } else if has("connection reset") {
            "the connection was reset before any answer".into()
        } else if has("broken pipe") || has("connection closed") || has("unexpected eof") {
            "the connection closed before any answer".into()
        } else if has("timed out") {
            self.timed_out()
        } else {
            return None;
        })
    }

    /// A plaintext request answered with something else than HTTP: most often TLS.
    fn not_http(&self) -> String {
        "the answer is not HTTP: TLS/plaintext mismatch? the collector may serve TLS on this \
         port (then use an https:// endpoint)"
            .into()
    }

    fn tls_failure(&self, error: &rustls::Error) -> String {
        match error {
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                "TLS handshake failed, the answer is not TLS: TLS/plaintext mismatch? the \
                 collector may serve plaintext on this port (then use an http:// endpoint)"
                    .into()
            }
            error => format!("TLS handshake failed: {error}"),
        }
    }
}

fn gzip(body: &Bytes) -> Bytes {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    Bytes::from(encoder.finish().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(code: tonic::Code) -> SendError {
        SendError::Grpc {
            code,
            message: String::new(),
            retry_after: None,
        }
    }

    fn http(status: u16) -> SendError {
        SendError::Http {
            status: http::StatusCode::from_u16(status).unwrap(),
            body: String::new(),
            retry_after: None,
        }
    }

    const LINK: Link = Link {
        tls: false,
        timeout: Duration::from_secs(2),
    };

    #[test]
    fn only_the_answers_the_specification_calls_transient_are_retried() {
        use tonic::Code;
        for code in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            assert!(grpc(code).is_retryable(), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::Internal,
            Code::Unknown,
        ] {
            assert!(!grpc(code).is_retryable(), "{code:?}");
        }
        for status in [429, 502, 503, 504] {
            assert!(http(status).is_retryable(), "{status}");
        }
        for status in [400, 401, 403, 404, 413, 500] {
            assert!(!http(status).is_retryable(), "{status}");
        }
        assert!(SendError::NoAnswer("refused".into()).is_retryable());
    }

    #[test]
    fn resource_exhausted_is_retried_only_with_a_retry_info() {
        let status = Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "slow down",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        let error = LINK.grpc_failure(&status);
        assert!(error.is_retryable(), "{error}");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
        let error = LINK.grpc_failure(&Status::resource_exhausted("too large"));
        assert!(!error.is_retryable(), "{error}");
        assert_eq!(error.retry_after(), None);
    }

    #[test]
    fn statuses_tonic_makes_from_transport_errors_are_no_answer_and_retried() {
        // What tonic gives for a connection the collector dropped mid-request: `Unknown`,
        // which as an answer would be permanent.
        let dropped = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(dropped.code(), tonic::Code::Unknown);
        let error = LINK.grpc_failure(&dropped);
        assert!(error.is_retryable(), "{error}");
        assert!(
            error.to_string().starts_with(
                "no answer from the collector: the connection was reset before any answer"
            ),
            "{error}"
        );
        let timeout = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        let error = LINK.grpc_failure(&timeout);
        assert!(error.is_retryable());
        assert!(
            error.to_string().starts_with(
                "no answer from the collector: no answer within the export timeout of 2s"
            ),
            "{error}"
        );
        let refused = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(
            LINK.grpc_failure(&refused)
                .to_string()
                .contains("connection refused"),
        );
        let cut =
            Status::unknown("protocol error: missing grpc-status trailer, stream was terminated");
        assert!(LINK.grpc_failure(&cut).is_retryable());
    }

    #[test]
    fn a_tls_answer_to_plaintext_and_a_plaintext_answer_to_tls_are_named() {
        let not_tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        let tls = Link { tls: true, ..LINK };
        let text = tls.describe(&not_tls);
        assert!(
            text.starts_with(
                "TLS handshake failed, the answer is not TLS: TLS/plaintext mismatch?"
            ),
            "{text}"
        );
        let not_http = h2::Error::from(h2::Reason::PROTOCOL_ERROR);
        let text = LINK.describe(&not_http);
        assert!(
            text.starts_with("the answer is not HTTP: TLS/plaintext mismatch?"),
            "{text}"
        );
    }

    #[test]
    fn the_collectors_text_is_escaped_when_shown() {
        let error = SendError::Grpc {
            code: tonic::Code::InvalidArgument,
            message: "bad\x1b[31m\nFORGED line".into(),
            retry_after: None,
        };
        assert_eq!(
            error.to_string(),
            "the collector answered gRPC status InvalidArgument: bad\\u{1b}[31m\\nFORGED line"
        );
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::RETRY_AFTER, value.parse().unwrap());
            retry_after(&headers, now)
        };
        assert_eq!(with("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            with(&httpdate::fmt_http_date(now + Duration::from_secs(12))),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            with(&httpdate::fmt_http_date(now - Duration::from_secs(12))),
            Some(Duration::ZERO),
            "a date in the past: no wait"
        );
        assert_eq!(with("soon"), None);
        assert_eq!(retry_after(&http::HeaderMap::new(), now), None);
    }

    #[test]
    fn a_success_that_is_not_an_otlp_response_is_unconfirmed() {
        let ok = http::StatusCode::OK;
        assert_eq!(http_answer(ok, None, Bytes::new()), Accepted::default());
        let partial = ExportTraceServiceResponse {
            partial_success: Some(
                opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                    rejected_spans: 2,
                    error_message: "no".into(),
                },
            ),
        }
        .encode_to_vec();
        let answer = http_answer(ok, Some(PROTOBUF), partial.into());
        assert_eq!((answer.rejected, answer.unconfirmed), (2, None));
        let html = http_answer(
            ok,
            Some("text/html"),
            Bytes::from_static(b"<html>\x1b[31m\nhello</html>"),
        );
        assert_eq!(
            html.unconfirmed.as_deref(),
            Some(
                "HTTP 200 OK with a body that is not an OTLP protobuf response (wrong content \
                 type; content-type text/html): <html>\x1b[31m\nhello</html>"
            )
        );
        let garbage = http_answer(ok, Some(PROTOBUF), Bytes::from_static(b"<html>"));
        assert!(
            garbage
                .unconfirmed
                .as_deref()
                .is_some_and(|text| text.contains("not an OTLP protobuf response")),
            "{garbage:?}"
        );
    }
}
