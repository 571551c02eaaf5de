//! A counting OTLP/gRPC trace receiver: it accepts `ExportTraceService/Export` requests,
//! decodes them fully (as a collector does), counts requests and spans, and throws the spans
//! away. It also accepts (and discards) the agent's self-metrics, so that they do not show
//! up as export errors. It is the benchmark's "test receiver": unlike a collector with a blackhole
//! exporter, it says exactly how many spans arrived.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use tokio::{net::TcpListener, sync::Notify};
use tonic::{Request, Response, Status};

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

/// The gRPC service.
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

#[tonic::async_trait]
impl TraceService for CountingSink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.counts
            .spans
            .fetch_add(u64::try_from(spans).unwrap_or(u64::MAX), Ordering::AcqRel);
        self.counts.requests.fetch_add(1, Ordering::AcqRel);
        self.counts.arrived.notify_waiters();
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
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
        .add_service(
            TraceServiceServer::new(sink.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
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
        collector::trace::v1::trace_service_client::TraceServiceClient,
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };

    use super::*;

    fn request(spans_per_scope: &[usize]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: spans_per_scope
                    .iter()
                    .map(|&n| ScopeSpans {
                        spans: vec![Span::default(); n],
                        ..ScopeSpans::default()
                    })
                    .collect(),
                ..ResourceSpans::default()
            }],
        }
    }

    #[tokio::test]
    async fn counts_every_span_of_every_request() {
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let counts = Arc::new(Counts::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, counts.clone(), async move {
            let _ = stopped.await;
        }));
        let mut client = TraceServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        client.export(request(&[3, 4])).await.unwrap();
        client.export(request(&[512])).await.unwrap();
        assert_eq!(counts.requests(), 2);
        assert_eq!(counts.spans(), 519);
        assert_eq!(counts.line(), "otlp-sink requests=2 spans=519");
        counts.wait_for_spans(519).await;
        drop(client);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
