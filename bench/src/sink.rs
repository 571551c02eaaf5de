//! A counting OTLP/gRPC trace receiver: it accepts `TraceService/Export` requests, counts
//! requests and spans, and throws the spans away. It counts the spans by walking the
//! protobuf wire format down to them ([`wire`]) instead of decoding them as a collector
//! does, so that the receiver costs little CPU per span; a request whose framing is not
//! valid protobuf is rejected (`INVALID_ARGUMENT`), never guessed at. It also accepts (and
//! discards) the agent's self-metrics, so that they do not show up as export errors. It is
//! the benchmark's "test receiver": unlike a collector with a blackhole exporter, it says
//! exactly how many spans arrived. Requests are not accepted gzip-compressed.

pub mod wire;

use std::{
    convert::Infallible,
    future::{self, Future},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Buf as _;
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::trace_service_server::SERVICE_NAME as TRACE_SERVICE,
};
use tokio::{net::TcpListener, sync::Notify};
use tonic::{
    Request, Response, Status,
    body::Body,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{BoxFuture, Service, http},
    server::{Grpc, NamedService, UnaryService},
};

/// What the receiver has seen so far.
#[derive(Debug, Default)]
pub struct Counts {
    requests: AtomicU64,
    spans: AtomicU64,
    /// Woken after every request, for a sender that paces itself on what arrived.
    arrived: Notify,
}

impl Counts {
    /// Waits until the spans received reach `spans` (returns at once if they have).
    pub async fn wait_for_spans(&self, spans: u64) {
        loop {
            let arrived = self.arrived.notified();
            if self.spans() >= spans {
                return;
            }
            arrived.await;
        }
    }

    /// Export requests received.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    /// Spans received, over all requests.
    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Acquire)
    }

    /// The summary line the `otlp-sink` binary prints.
    pub fn line(&self) -> String {
        format!(
            "otlp-sink requests={} spans={}",
            self.requests(),
            self.spans()
        )
    }
}

/// The gRPC services: trace export (counted) and metrics export (discarded).
#[derive(Debug, Clone, Default)]
pub struct CountingSink {
    counts: Arc<Counts>,
}

impl CountingSink {
    /// A sink that adds to `counts`.
    pub fn new(counts: Arc<Counts>) -> Self {
        Self { counts }
    }
}

/// The gRPC method of OTLP trace export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The trace service, by hand rather than `TraceServiceServer`, so that requests go through
/// [`SpanCounter`] instead of being decoded.
impl Service<http::Request<Body>> for CountingSink {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != EXPORT_PATH {
            let status = Status::unimplemented(format!("no method {}", request.uri().path()));
            return Box::pin(future::ready(Ok(status.into_http())));
        }
        let export = Export(self.counts.clone());
        Box::pin(async move {
            let mut grpc = Grpc::new(SpanCounter).max_decoding_message_size(MAX_REQUEST_BYTES);
            Ok(grpc.unary(export, request).await)
        })
    }
}

impl NamedService for CountingSink {
    const NAME: &'static str = TRACE_SERVICE;
}

/// One export request, already counted by [`SpanCounter`]: adds it to the counts.
struct Export(Arc<Counts>);

impl UnaryService<u64> for Export {
    type Response = FullSuccess;
    type Future = future::Ready<Result<Response<FullSuccess>, Status>>;

    fn call(&mut self, request: Request<u64>) -> Self::Future {
        let counts = &self.0;
        counts
            .spans
            .fetch_add(request.into_inner(), Ordering::AcqRel);
        counts.requests.fetch_add(1, Ordering::AcqRel);
        counts.arrived.notify_waiters();
        future::ready(Ok(Response::new(FullSuccess)))
    }
}

/// An `ExportTraceServiceResponse` without `partial_success`: every span accepted.
struct FullSuccess;

/// The gRPC codec of [`CountingSink`]: a request decodes to its number of spans.
struct SpanCounter;

impl Codec for SpanCounter {
    type Encode = FullSuccess;
    type Decode = u64;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for SpanCounter {
    type Item = FullSuccess;
    type Error = Status;

    /// Writes nothing: a message whose fields all have their default value encodes to no
    /// bytes at all.
    fn encode(&mut self, _item: FullSuccess, _dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        Ok(())
    }
}

impl Decoder for SpanCounter {
    type Item = u64;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<u64>, Status> {
        // tonic buffers the whole message in one `BytesMut`: taking it is not a copy.
        let request = src.copy_to_bytes(src.remaining());
        wire::count_spans(&request).map(Some).map_err(|error| {
            Status::invalid_argument(format!("malformed ExportTraceServiceRequest: {error}"))
        })
    }
}

#[tonic::async_trait]
impl MetricsService for CountingSink {
    async fn export(
        &self,
        _request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Largest request accepted, bytes (the exporter's batches of 512 spans are well below).
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Serves OTLP/gRPC on `listener`, adding to `counts`, until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    counts: Arc<Counts>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Without TCP_NODELAY, the server's small frames (window updates, the response) wait
    // for the client's delayed ACK: about 40 ms per request on loopback.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let sink = CountingSink::new(counts);
    tonic::transport::Server::builder()
        .add_service(sink.clone())
        .add_service(MetricsServiceServer::new(sink).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Binds `addr` (port 0 for any free port) and returns the listener and its address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::{
            metrics::v1::metrics_service_client::MetricsServiceClient,
            trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
        },
        common::v1::{AnyValue, KeyValue, any_value},
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };
    use tonic::transport::Channel;

    use super::*;

    /// One resource with a scope of `n` spans for every `n` in `spans_per_scope`; the spans
    /// carry a few attributes, as the agent's do.
    fn request(spans_per_scope: &[usize]) -> ExportTraceServiceRequest {
        let span = Span {
            name: "connect".to_owned(),
            attributes: (0..8)
                .map(|i| KeyValue {
                    key: format!("net.attribute.{i}"),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(i)),
                    }),
                    ..KeyValue::default()
                })
                .collect(),
            ..Span::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: spans_per_scope
                    .iter()
                    .map(|&n| ScopeSpans {
                        spans: vec![span.clone(); n],
                        ..ScopeSpans::default()
                    })
                    .collect(),
                ..ResourceSpans::default()
            }],
        }
    }

    /// A sink on a free loopback port, and a channel to it.
    struct Running {
        counts: Arc<Counts>,
        channel: Channel,
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    }

    impl Running {
        async fn start() -> Self {
            let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let counts = Arc::new(Counts::default());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(serve(listener, counts.clone(), async move {
                let _ = stopped.await;
            }));
            let channel = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            Self {
                counts,
                channel,
                stop,
                server,
            }
        }

        async fn stop(self) {
            drop(self.channel);
            self.stop.send(()).unwrap();
            self.server.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn counts_every_span_of_every_request() {
        let sink = Running::start().await;
        let mut client = TraceServiceClient::new(sink.channel.clone());
        for spans in [&[3, 4][..], &[512], &[], &[0, 0]] {
            let response = client.export(request(spans)).await.unwrap();
            assert_eq!(response.into_inner().partial_success, None);
        }
        let counts = &sink.counts;
        assert_eq!(counts.requests(), 4);
        assert_eq!(counts.spans(), 519);
        assert_eq!(counts.line(), "otlp-sink requests=4 spans=519");
        counts.wait_for_spans(519).await;
        sink.stop().await;
    }

    #[tokio::test]
    async fn rejects_malformed_requests_without_counting_them() {
        let sink = Running::start().await;
        let mut grpc = tonic::client::Grpc::new(sink.channel.clone());
        grpc.ready().await.unwrap();
        // resource_spans whose length runs past the end of the request.
        let status = grpc
            .unary(
                Request::new(vec![0x0a, 0x05, 0x12]),
                http::uri::PathAndQuery::from_static(EXPORT_PATH),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "malformed ExportTraceServiceRequest: a field runs past the end of its message"
        );
        assert_eq!((sink.counts.requests(), sink.counts.spans()), (0, 0));
        sink.stop().await;
    }

    #[tokio::test]
    async fn accepts_and_discards_metrics() {
        let sink = Running::start().await;
        MetricsServiceClient::new(sink.channel.clone())
            .export(ExportMetricsServiceRequest::default())
            .await
            .unwrap();
        assert_eq!((sink.counts.requests(), sink.counts.spans()), (0, 0));
        sink.stop().await;
    }

    /// Sends bytes as they are (no generated client sends a malformed request) and ignores
    /// the response.
    struct RawCodec;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = ();
        type Encoder = Self;
        type Decoder = Self;

        fn encoder(&mut self) -> Self {
            Self
        }

        fn decoder(&mut self) -> Self {
            Self
        }
    }

    impl Encoder for RawCodec {
        type Item = Vec<u8>;
        type Error = Status;

        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }

    impl Decoder for RawCodec {
        type Item = ();
        type Error = Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
            src.advance(src.remaining());
            Ok(Some(()))
        }
    }
}
