//! Sends encoded OTLP trace requests ([`super::encode`]) to the collector, over gRPC
//! (`TraceService/Export` on one HTTP/2 connection that carries concurrent requests) or
//! HTTP/protobuf (`POST` to `/v1/traces`), with the configured headers, gzip, timeout and
//! TLS, and reads the collector's answer, including a partial success.

use bytes::{BufMut as _, Bytes};
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

use super::{
    ExportError,
    config::{Compression, OtlpTarget},
    grpc_tls, header_map, install_crypto_provider,
    queue::Destination,
    reqwest_tls,
};
use crate::cli::OtlpProtocol;

/// The gRPC method of OTLP trace export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// How the agent introduces itself to the collector.
const USER_AGENT: &str = concat!("otel-agent/", env!("CARGO_PKG_VERSION"));

/// What the collector said about a request it accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Spans the collector rejected (OTLP partial success); the rest were accepted.
    pub rejected: u64,
    /// The collector's explanation of the rejection, if any.
    pub message: String,
}

impl From<ExportTraceServiceResponse> for Accepted {
    fn from(response: ExportTraceServiceResponse) -> Self {
        response
            .partial_success
            .map(|partial| Self {
                rejected: u64::try_from(partial.rejected_spans).unwrap_or(0),
                message: partial.error_message,
            })
            .unwrap_or_default()
    }
}

/// A request that failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the collector answered gRPC status {code:?}: {message}")]
    Grpc { code: tonic::Code, message: String },
    #[error("the collector answered HTTP {status}: {body}")]
    Http {
        status: http::StatusCode,
        body: String,
    },
    #[error("cannot reach the collector: {0}")]
    Connection(String),
}

impl SendError {
    /// Whether sending again can succeed, as the OTLP specification classifies answers:
    /// gRPC `CANCELLED`, `DEADLINE_EXCEEDED`, `ABORTED`, `OUT_OF_RANGE`, `UNAVAILABLE` and
    /// `DATA_LOSS`, HTTP 429, 502, 503 and 504, and failures to reach the collector or to
    /// write the output. Anything else (a malformed or too large request, a refused
    /// credential, an unknown path) fails the same way every time. `RESOURCE_EXHAUSTED` is
    /// retryable only with a `RetryInfo` the agent does not read; without one it is most
    /// often a request over the collector's size limit.
    pub fn is_retryable(&self) -> bool {
        use tonic::Code;
        match self {
            Self::Grpc { code, .. } => matches!(
                code,
                Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::OutOfRange
                    | Code::Unavailable
                    | Code::DataLoss
            ),
            Self::Http { status, .. } => matches!(status.as_u16(), 429 | 502 | 503 | 504),
            Self::Connection(_) => true,
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
    client: Grpc<Channel>,
    metadata: MetadataMap,
}

impl GrpcTransport {
    fn new(target: &OtlpTarget) -> Result<Self, ExportError> {
        let invalid = |error: tonic::transport::Error| ExportError::Endpoint(error.to_string());
        let mut endpoint = Endpoint::from_shared(target.endpoint.clone())
            .map_err(invalid)?
            .timeout(target.timeout)
            .user_agent(USER_AGENT)
            .map_err(invalid)?;
        if target.endpoint.starts_with("https://") {
            endpoint = endpoint.tls_config(grpc_tls(target)?).map_err(invalid)?;
        }
        // Connects at the first request, and again after the connection breaks.
        let mut client = Grpc::new(endpoint.connect_lazy());
        if target.compression == Compression::Gzip {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        Ok(Self {
            client,
            metadata: MetadataMap::from_headers(header_map(target)?),
        })
    }

    async fn send(&self, body: Bytes) -> Result<Accepted, SendError> {
        let mut client = self.client.clone();
        client
            .ready()
            .await
            .map_err(|error| SendError::Connection(error.to_string()))?;
        let mut request = Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        client
            .unary(
                request,
                PathAndQuery::from_static(EXPORT_PATH),
                EncodedCodec,
            )
            .await
            .map(|response| response.into_inner().into())
            .map_err(|status| SendError::Grpc {
                code: status.code(),
                message: status.message().to_owned(),
            })
    }
}

/// Sends bytes that are already an encoded request, and decodes the response.
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
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
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|error| Status::internal(format!("undecodable response: {error}")))
    }
}

/// OTLP/HTTP with protobuf bodies.
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    url: String,
    headers: http::HeaderMap,
    gzip: bool,
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
            http::HeaderValue::from_static("application/x-protobuf"),
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
            .map_err(|error| SendError::Connection(error.to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| SendError::Connection(error.to_string()))?;
        if !status.is_success() {
            return Err(SendError::Http {
                status,
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
        // An empty body is a full success.
        Ok(ExportTraceServiceResponse::decode(body)
            .unwrap_or_default()
            .into())
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
        }
    }

    fn http(status: u16) -> SendError {
        SendError::Http {
            status: http::StatusCode::from_u16(status).unwrap(),
            body: String::new(),
        }
    }

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
        ] {
            assert!(!grpc(code).is_retryable(), "{code:?}");
        }
        for status in [429, 502, 503, 504] {
            assert!(http(status).is_retryable(), "{status}");
        }
        for status in [400, 401, 403, 404, 413, 500] {
            assert!(!http(status).is_retryable(), "{status}");
        }
        assert!(SendError::Connection("refused".into()).is_retryable());
    }
}
