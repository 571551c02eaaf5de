//! An in-process OTLP receiver for exact assertions that rotel cannot give: it records every
//! export request with its headers and whether it arrived compressed. gRPC (tonic, the
//! generated `TraceService`) and HTTP/protobuf (hyper), each in plaintext or TLS, the TLS
//! variants optionally requiring a client certificate ([`Pki`] makes throwaway certificates).
//! It can answer that it rejected part of each request (an OTLP partial success), refuse
//! every request with a message of the test's choosing, throttle (HTTP 429 with
//! `Retry-After`, gRPC `RESOURCE_EXHAUSTED` with a `RetryInfo`), or answer HTTP 200 with an
//! HTML page.

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Full};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use prost::Message as _;

use crate::traffic::Exchange;
use tokio::{net::TcpListener, sync::oneshot};

/// One export request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request headers (gRPC metadata), lower-case names.
    pub headers: BTreeMap<String, String>,
    /// Whether the body arrived gzip-compressed.
    pub gzip: bool,
    pub request: ExportTraceServiceRequest,
}

impl Received {
    /// Number of spans in the request.
    pub fn span_count(&self) -> usize {
        self.request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }
}

/// What the receiver has seen, and how it answers.
#[derive(Debug, Default)]
struct State {
    received: Mutex<Vec<Received>>,
    /// Spans of each request to answer as rejected (an OTLP partial success).
    rejects: AtomicI64,
    /// Refuse every request with an error retrying cannot fix (gRPC `INVALID_ARGUMENT`,
    /// HTTP 400).
    refuse: AtomicBool,
    /// The message of refusals and partial successes, when not the default.
    message: Mutex<Option<String>>,
    /// Requests still to throttle, and the wait to ask for: not recorded.
    throttle: Mutex<(usize, Duration)>,
    /// Answer HTTP 200 with an HTML page (the request is recorded).
    html: AtomicBool,
    /// When each trace request arrived, throttled or not.
    arrivals: Mutex<Vec<Instant>>,
}

impl State {
    /// Records `request` and builds the answer to it.
    fn record(&self, received: Received) -> ExportTraceServiceResponse {
        let spans = received.span_count() as i64;
        let rejected = self.rejects.load(Ordering::Relaxed).min(spans);
        self.received.lock().expect("receiver log").push(received);
        ExportTraceServiceResponse {
            partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message: self.message("rejected by the test receiver"),
            }),
        }
    }

    /// The message the test chose, or `default`.
    fn message(&self, default: &str) -> String {
        self.message
            .lock()
            .expect("receiver message")
            .clone()
            .unwrap_or_else(|| default.to_owned())
    }

    /// Notes a trace request's arrival; the wait to ask for if it is to be throttled.
    fn arrived(&self) -> Option<Duration> {
        self.arrivals
            .lock()
            .expect("receiver arrivals")
            .push(Instant::now());
        let mut throttle = self.throttle.lock().expect("receiver throttle");
        (throttle.0 > 0).then(|| {
            throttle.0 -= 1;
            throttle.1
        })
    }
}

type Log = Arc<State>;

/// The message of a refused request.
pub const REFUSAL: &str = "refused by the test receiver";

/// The page a receiver told to [`Receiver::answer_html`] answers with.
pub const HTML: &str = "<html><body>Welcome to nginx!</body></html>";

/// Transport of a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Grpc,
    Http,
}

/// A running receiver on a loopback port; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    log: Log,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Starts a plaintext receiver.
    pub fn start(kind: Kind) -> Self {
        Self::start_with(kind, None)
    }

    /// Starts a receiver; with `tls`, it serves TLS with the PKI's server certificate and, if
    /// `require_client_certificate`, requires a client certificate signed by its CA.
    pub fn start_with(kind: Kind, tls: Option<(&Pki, bool)>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("receiver runtime");
        let log = Log::default();
        let (stop, stopped) = oneshot::channel();
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let tls = tls.map(|(pki, require)| tls_config(pki, require));
        match kind {
            Kind::Grpc => {
                let service = TraceServiceServer::new(Recorder(log.clone()))
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
                let mut builder = tonic::transport::Server::builder();
                if let Some(tls) = tls {
                    builder = builder.tls_config(tls.0).expect("server TLS");
                }
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                runtime.spawn(builder.add_service(service).serve_with_incoming_shutdown(
                    incoming,
                    async {
                        let _ = stopped.await;
                    },
                ));
            }
            Kind::Http => {
                runtime.spawn(serve_http(listener, log.clone(), tls.map(|t| t.1), stopped));
            }
        }
        Self {
            addr,
            log,
            stop: Some(stop),
            runtime: Some(runtime),
        }
    }

    /// Starts a plaintext gRPC receiver that records each request and answers it with
    /// status `OK` and a message that is not an `ExportTraceServiceResponse` (the bytes of
    /// [`HTML`]), as a misbehaving proxy or server could.
    pub fn start_grpc_answering_garbage() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("receiver runtime");
        let log = Log::default();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let served = log.clone();
        runtime.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = &mut stopped => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let log = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let log = log.clone();
                        async move { answer_garbage(request, &log).await }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, service)
                    .await;
                });
            }
        });
        Self {
            addr,
            log,
            stop: Some(stop),
            runtime: Some(runtime),
        }
    }

    /// The base URL to give the agent.
    pub fn url(&self, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://localhost:{}", self.addr.port())
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.received.lock().expect("receiver log").clone()
    }

    /// The spans of every request recorded so far.
    pub fn spans_received(&self) -> u64 {
        self.received().iter().map(|r| r.span_count() as u64).sum()
    }

    /// From now on, answers that `spans` spans of each request (at most all of them) were
    /// rejected, as a collector's OTLP partial success does.
    pub fn reject_in_each_request(&self, spans: i64) {
        self.log.rejects.store(spans, Ordering::Relaxed);
    }

    /// From now on, records each request and refuses it with an error that retrying cannot
    /// fix: gRPC `INVALID_ARGUMENT`, HTTP 400.
    pub fn refuse_every_request(&self) {
        self.log.refuse.store(true, Ordering::Relaxed);
    }

    /// From now on, uses `message` for refusals and partial successes (a collector's text,
    /// which may hold escape sequences and line breaks).
    pub fn answer_with_message(&self, message: &str) {
        *self.log.message.lock().expect("receiver message") = Some(message.to_owned());
    }

    /// Throttles the next `requests` trace requests (not recorded): HTTP 429 with
    /// `Retry-After: <seconds>`, gRPC `RESOURCE_EXHAUSTED` with a `RetryInfo` of `wait`.
    pub fn throttle(&self, requests: usize, wait: Duration) {
        *self.log.throttle.lock().expect("receiver throttle") = (requests, wait);
    }

    /// From now on, records each request and answers HTTP 200 with an HTML page.
    pub fn answer_html(&self) {
        self.log.html.store(true, Ordering::Relaxed);
    }

    /// When each trace request arrived, throttled ones included.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.log.arrivals.lock().expect("receiver arrivals").clone()
    }

    /// Waits until `predicate` holds for what was received, failing after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        predicate: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if predicate(&received) {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what}; received {} requests",
                received.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

struct Recorder(Log);

#[tonic::async_trait]
impl TraceService for Recorder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers: BTreeMap<String, String> = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    value.to_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let gzip = headers.get("grpc-encoding").map(String::as_str) == Some("gzip");
        if let Some(wait) = self.0.arrived() {
            use tonic_types::{ErrorDetails, StatusExt as _};
            return Err(tonic::Status::with_error_details(
                tonic::Code::ResourceExhausted,
                "throttled by the test receiver",
                ErrorDetails::with_retry_info(Some(wait)),
            ));
        }
        let response = self.0.record(Received {
            headers,
            gzip,
            request: request.into_inner(),
        });
        if self.0.refuse.load(Ordering::Relaxed) {
            return Err(tonic::Status::invalid_argument(self.0.message(REFUSAL)));
        }
        Ok(tonic::Response::new(response))
    }
}

/// Serves OTLP/HTTP (protobuf) on `listener` until `stopped`, with TLS if given.
async fn serve_http(
    listener: TcpListener,
    log: Log,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stopped => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let log = log.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let log = log.clone();
                async move { handle_http(request, &log).await }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = builder.serve_connection(io, service).await;
                    }
                }
                None => {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = builder.serve_connection(io, service).await;
                }
            }
        });
    }
}

async fn handle_http(
    request: hyper::Request<hyper::body::Incoming>,
    log: &Log,
) -> Result<hyper::Response<Full<bytes::Bytes>>, hyper::Error> {
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let traces = request.uri().path() == "/v1/traces";
    let body = request.into_body().collect().await?.to_bytes();
    if !traces {
        // The agent's self-metrics: not what the tests look at.
        return Ok(hyper::Response::new(Full::new(bytes::Bytes::new())));
    }
    if let Some(wait) = log.arrived() {
        return Ok(hyper::Response::builder()
            .status(429)
            .header("retry-after", wait.as_secs().to_string())
            .body(Full::new(bytes::Bytes::from_static(b"slow down")))
            .expect("a response"));
    }
    let gzip = headers.get("content-encoding").map(String::as_str) == Some("gzip");
    let body = if gzip {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut plain)
            .expect("a gzip body");
        plain
    } else {
        body.to_vec()
    };
    let request = ExportTraceServiceRequest::decode(&body[..]).expect("an OTLP protobuf body");
    let response = log
        .record(Received {
            headers,
            gzip,
            request,
        })
        .encode_to_vec();
    if log.refuse.load(Ordering::Relaxed) {
        return Ok(hyper::Response::builder()
            .status(400)
            .body(Full::new(bytes::Bytes::from(log.message(REFUSAL))))
            .expect("a response"));
    }
    if log.html.load(Ordering::Relaxed) {
        return Ok(hyper::Response::builder()
            .header("content-type", "text/html")
            .body(Full::new(bytes::Bytes::from_static(HTML.as_bytes())))
            .expect("a response"));
    }
    Ok(hyper::Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(bytes::Bytes::from(response)))
        .expect("a response"))
}

/// Records a gRPC trace export (the agent sends it uncompressed) and answers status `OK`
/// with [`HTML`] as its message; other calls (the self-metrics) get `OK` and no message.
async fn answer_garbage(
    request: hyper::Request<hyper::body::Incoming>,
    log: &Log,
) -> Result<
    hyper::Response<
        http_body_util::combinators::WithTrailers<
            Full<bytes::Bytes>,
            std::future::Ready<Option<Result<hyper::HeaderMap, std::convert::Infallible>>>,
        >,
    >,
    hyper::Error,
> {
    let traces = request.uri().path().ends_with("TraceService/Export");
    let body = request.into_body().collect().await?.to_bytes();
    let mut message = Vec::new();
    if traces {
        // A gRPC message: a compression flag, a 4-byte length, the message.
        let request =
            ExportTraceServiceRequest::decode(&body[5..]).expect("an uncompressed OTLP request");
        log.arrived();
        log.record(Received {
            headers: BTreeMap::new(),
            gzip: false,
            request,
        });
        message.push(0);
        message.extend((HTML.len() as u32).to_be_bytes());
        message.extend(HTML.as_bytes());
    }
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
    Ok(hyper::Response::builder()
        .header("content-type", "application/grpc")
        .body(
            Full::new(bytes::Bytes::from(message))
                .with_trailers(std::future::ready(Some(Ok(trailers)))),
        )
        .expect("a response"))
}

/// Server TLS for both transports: tonic's config and a rustls config for hyper.
fn tls_config(
    pki: &Pki,
    require_client_certificate: bool,
) -> (tonic::transport::ServerTlsConfig, Arc<rustls::ServerConfig>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity = tonic::transport::Identity::from_pem(&pki.server_cert_pem, &pki.server_key_pem);
    let mut tonic_tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if require_client_certificate {
        tonic_tls = tonic_tls.client_ca_root(tonic::transport::Certificate::from_pem(&pki.ca_pem));
    }
    let certs = vec![rustls::pki_types::CertificateDer::from(
        pki.server_cert_der.clone(),
    )];
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(pki.server_key_der.clone()).expect("server key");
    let builder = rustls::ServerConfig::builder();
    let rustls_tls = if require_client_certificate {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(pki.ca_der.clone()))
            .expect("CA");
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .expect("client verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    }
    .with_single_cert(certs, key)
    .expect("server certificate");
    (tonic_tls, Arc::new(rustls_tls))
}

/// A throwaway CA with a server certificate for `localhost`/127.0.0.1 and a client
/// certificate, written as PEM files into a directory.
pub struct Pki {
    pub ca_pem: String,
    ca_der: Vec<u8>,
    server_cert_pem: String,
    server_cert_der: Vec<u8>,
    server_key_pem: String,
    server_key_der: Vec<u8>,
    /// PEM files for the agent's flags.
    pub ca_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

impl Pki {
    pub fn create(dir: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let server_key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let client_key = KeyPair::generate().expect("client key");
        let client = CertificateParams::new(vec!["otel-agent".to_owned()])
            .expect("client params")
            .signed_by(&client_key, &ca)
            .expect("client certificate");
        let write = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents).expect("write a PEM file");
            path
        };
        Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            server_cert_pem: server.pem(),
            server_cert_der: server.der().to_vec(),
            server_key_pem: server_key.serialize_pem(),
            server_key_der: server_key.serialize_der(),
            ca_file: write("ca.pem", &ca.pem()),
            client_cert_file: write("client.pem", &client.pem()),
            client_key_file: write("client-key.pem", &client_key.serialize_pem()),
        }
    }
}

/// The number of spans of `exchange` in `received` ([`spans_for`]).
pub fn spans_of(received: &[Received], exchange: &Exchange) -> usize {
    spans_for(received, exchange).len()
}

/// The spans of `exchange` (both of its ends: local and peer ports its own) in `received`,
/// in the order they arrived.
pub fn spans_for(received: &[Received], exchange: &Exchange) -> Vec<Span> {
    let ports = [
        i64::from(exchange.client.port()),
        i64::from(exchange.server.port()),
    ];
    spans_where(received, |span| {
        matches!(
            (int_attribute(span, "network.local.port"), int_attribute(span, "network.peer.port")),
            (Some(l), Some(p)) if ports.contains(&l) && ports.contains(&p)
        )
    })
}

/// The spans in `received` that `keep` selects, in the order they arrived.
pub fn spans_where(received: &[Received], keep: impl Fn(&Span) -> bool) -> Vec<Span> {
    received
        .iter()
        .flat_map(|r| &r.request.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .filter(|span| keep(span))
        .cloned()
        .collect()
}

/// The value of the integer attribute `key` of `span`.
pub fn int_attribute(span: &Span, key: &str) -> Option<i64> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value {
            Some(Value::IntValue(value)) => Some(value),
            _ => None,
        })
}
