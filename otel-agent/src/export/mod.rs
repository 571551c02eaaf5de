//! The exporters: one bounded [`queue`] and worker per OTLP destination, which encodes
//! batches of sessions straight into OTLP protobuf ([`encode`], `protobuf`) under the
//! resource of each session's [`workload`] (or the agent's one) and sends them to the collector
//! (`transport`, configured by [`config`]), each session as the span [`span`] maps it,
//! under the [`resource`] (`crate::json_lines` renders the same requests for a sink);
//! and the staged shutdown that flushes what is queued
//! within a deadline, or writes it to the disk [`spool`] (`--spool-dir`). The agent's
//! self-metrics and the [`session_metrics`] go through the OpenTelemetry SDK's OTLP exporter
//! ([`metric_exporter`]) to the same collector.

pub mod config;
pub mod encode;
pub(crate) mod protobuf;
pub mod queue;
pub mod resource;
pub mod session_metrics;
pub mod span;
pub mod spool;
pub(crate) mod transport;
pub mod workload;

use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry_otlp::{
    MetricExporter, Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig,
    tonic_types::{
        metadata::MetadataMap,
        transport::{Certificate, ClientTlsConfig, Identity},
    },
};
use opentelemetry_sdk::metrics::{SdkMeterProvider, Temporality};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use self::config::OtlpProtocol;
use self::resource::agent_resource;
use self::workload::ResourceSettings;
use self::{
    config::{BatchSettings, Compression, ExportConfig, OtlpTarget},
    encode::RequestEncoder,
    queue::{Destination, ExportQueue, QueueStats},
    spool::Spool,
    transport::Transport,
};
use crate::{log_text::Escaped, session::Session};

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot set up the OTLP exporter: {}", crate::log_text::with_causes(.0))]
    Build(opentelemetry_otlp::ExporterBuildError),
    #[error("cannot use the OTLP endpoint: {0}")]
    Endpoint(String),
    #[error("cannot read the {what} {path}: {error}")]
    TlsFile {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("cannot use the {what} {path}: {reason}")]
    TlsInvalid {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("cannot build the HTTP client for OTLP: {0}")]
    HttpClient(String),
    #[error(
        "the header `{0}` has a name or value that cannot be sent; fix --otlp-headers / OTEL_EXPORTER_OTLP_HEADERS"
    )]
    InvalidHeader(String),
}

/// What the rest of the agent sees of one exporter: its queue (fed by the pipeline) and its
/// counters.
#[derive(Clone)]
pub struct ExporterHandle {
    /// `otlp`.
    pub name: &'static str,
    pub queue: ExportQueue,
    pub stats: Arc<QueueStats>,
}

/// One running exporter.
struct Exporter {
    handle: ExporterHandle,
    worker: JoinHandle<()>,
}

/// The running exporters.
pub struct Exporters {
    exporters: Vec<Exporter>,
    /// The shutdown deadline, once there is one: the workers' stop signal.
    stop: watch::Sender<Option<Instant>>,
    /// Cancelled when a worker ends, however (a panic included).
    ended: CancellationToken,
}

/// The configured exporters' transports, built (and their settings checked: endpoint, TLS
/// files, headers) before the probe is attached and before the async runtime starts;
/// nothing connects before the first export.
pub struct Destinations {
    otlp: Option<(Transport, BatchSettings, Option<Spool>)>,
}

impl Destinations {
    /// The transport of each configured output (none: no endpoint, SDK disabled), with the
    /// opened `spool` for the OTLP output. The JSON lines are a local output (`local`),
    /// rendered by `crate::json_lines`.
    pub fn new(config: &ExportConfig, spool: Option<Spool>) -> Result<Self, ExportError> {
        let otlp = match &config.otlp {
            Some(target) => Some((Transport::new(target)?, config.batch, spool)),
            None => None,
        };
        Ok(Self { otlp })
    }
}

impl Exporters {
    /// Starts a worker per output of `destinations`.
    ///
    /// Must run inside the multi-thread tokio runtime: the gRPC client lives on it.
    pub fn start(destinations: Destinations, resources: ResourceSettings) -> Self {
        let resource = agent_resource();
        let (stop, stopped) = watch::channel(None);
        let ended = CancellationToken::new();
        let mut outputs = Vec::new();
        if let Some((transport, batch, spool)) = destinations.otlp {
            outputs.push(Exporter::start(
                "otlp",
                transport,
                RequestEncoder::new(&resource, resources),
                (batch, spool),
                (&stopped, &ended),
            ));
        }
        Self {
            exporters: outputs,
            stop,
            ended,
        }
    }

    /// The exporters' queues and counters.
    pub fn handles(&self) -> Vec<ExporterHandle> {
        self.exporters
            .iter()
            .map(|output| output.handle.clone())
            .collect()
    }

    /// Resolves when a worker has ended: before [`Exporters::shutdown`], a failure.
    pub async fn worker_ended(&self) {
        self.ended.cancelled().await;
    }

    /// Stops the workers; each exports what it still holds until `deadline` (the agent's
    /// one shutdown deadline) and counts the rest as dropped. Returns the exporters whose
    /// worker panicked.
    pub async fn shutdown(self, deadline: Instant) -> Vec<&'static str> {
        self.stop.send_replace(Some(deadline));
        let mut panicked = Vec::new();
        for output in self.exporters {
            if let Err(error) = output.worker.await {
                tracing::error!(
                    output = output.handle.name,
                    error = %Escaped(&error.to_string()),
                    "the export worker panicked"
                );
                panicked.push(output.handle.name);
            }
        }
        panicked
    }
}

impl Exporter {
    /// Starts the worker of one output, with its spool if it has one.
    fn start(
        name: &'static str,
        destination: impl Destination,
        encoder: RequestEncoder,
        (settings, spool): (BatchSettings, Option<Spool>),
        (stop, ended): (&watch::Receiver<Option<Instant>>, &CancellationToken),
    ) -> Self {
        let stats = Arc::new(QueueStats::with_spool(spool.as_ref()));
        let queue = ExportQueue::new(settings, stats.clone());
        let run = queue.clone().run(destination, encoder, spool, stop.clone());
        // Dropped when the worker returns or unwinds.
        let ended = ended.clone().drop_guard();
        let worker = tokio::spawn(async move {
            let _ended = ended;
            run.await;
        });
        Self {
            handle: ExporterHandle { name, queue, stats },
            worker,
        }
    }
}

/// Hands a batch of sessions to every output's queue, one lock per queue.
pub fn push_all(outputs: &[ExporterHandle], sessions: &[Arc<Session>]) {
    for output in outputs {
        output.queue.push(sessions);
    }
}

/// An OTLP metrics exporter to the same collector (the self-metrics, the session
/// metrics), with `temporality` (`None`: the SDK reads
/// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`).
pub fn metric_exporter(
    target: &OtlpTarget,
    temporality: Option<Temporality>,
) -> Result<MetricExporter, ExportError> {
    let endpoint = &target.metrics_endpoint;
    let builder = MetricExporter::builder();
    let builder = match temporality {
        Some(temporality) => builder.with_temporality(temporality),
        None => builder,
    };
    Ok(match target.protocol {
        OtlpProtocol::Grpc => tonic_options(builder.with_tonic(), target, endpoint)?
            .build()
            .map_err(ExportError::Build)?,
        OtlpProtocol::HttpProtobuf => http_options(builder.with_http(), target, endpoint)?
            .build()
            .map_err(ExportError::Build)?,
    })
}

/// Shuts a meter provider down (which exports one last time), giving up after `timeout`
/// (what remains of the shutdown deadline: the SDK's own shutdown waits up to 5 s whatever
/// it is told). An export that fails or is cut short is a warning; a panic is an error.
/// `what` names the metrics in the messages.
pub async fn shutdown_meter_provider(
    provider: SdkMeterProvider,
    timeout: Duration,
    what: &'static str,
) -> Result<(), String> {
    let shutdown = tokio::task::spawn_blocking(move || provider.shutdown());
    match tokio::time::timeout(timeout, shutdown).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(error))) => {
            tracing::warn!(
                error = %Escaped(&error.to_string()),
                "the last {what} were not exported"
            );
            Ok(())
        }
        Ok(Err(error)) => Err(format!(
            "the {what} shutdown panicked: {}",
            Escaped(&error.to_string())
        )),
        // The blocking thread is left behind; the process exits without waiting for it.
        Err(_) => {
            tracing::warn!(
                ?timeout,
                "the last {what} were not exported: the shutdown deadline passed"
            );
            Ok(())
        }
    }
}

/// Applies `target` (endpoint, timeout, headers, compression, TLS) to a gRPC builder.
fn tonic_options<B: WithExportConfig + WithTonicConfig>(
    builder: B,
    target: &OtlpTarget,
    endpoint: &str,
) -> Result<B, ExportError> {
    install_crypto_provider();
    let mut builder = builder
        .with_endpoint(endpoint)
        .with_timeout(target.timeout)
        .with_metadata(MetadataMap::from_headers(header_map(target)?));
    if target.compression == Compression::Gzip {
        builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
    }
    if endpoint.starts_with("https://") {
        builder = builder.with_tls_config(grpc_tls(target)?);
    }
    Ok(builder)
}

/// Applies `target` to an HTTP/protobuf builder.
fn http_options<B: WithExportConfig + WithHttpConfig>(
    builder: B,
    target: &OtlpTarget,
    endpoint: &str,
) -> Result<B, ExportError> {
    install_crypto_provider();
    let headers: HashMap<String, String> = target.headers.iter().cloned().collect();
    let mut builder = builder
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(target.timeout)
        .with_headers(headers);
    if target.compression == Compression::Gzip {
        builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
    }
    if endpoint.starts_with("https://") {
        builder = builder.with_http_client(https_client(target)?);
    }
    Ok(builder)
}

/// The configured headers, checked.
fn header_map(target: &OtlpTarget) -> Result<http::HeaderMap, ExportError> {
    let mut headers = http::HeaderMap::new();
    for (key, value) in &target.headers {
        let name = http::HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| ExportError::InvalidHeader(key.clone()))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|_| ExportError::InvalidHeader(key.clone()))?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// One crypto provider (ring) for tonic and reqwest, which both build on rustls; reqwest
/// needs it installed even for plain HTTP. A second call finds it installed.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, ExportError> {
    std::fs::read(path).map_err(|error| ExportError::TlsFile {
        what,
        path: path.display().to_string(),
        error,
    })
}

fn grpc_tls(target: &OtlpTarget) -> Result<ClientTlsConfig, ExportError> {
    let mut tls = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &target.tls.ca_certificate {
        tls = tls.ca_certificate(Certificate::from_pem(read_pem("CA certificate", ca)?));
    }
    if let (Some(cert), Some(key)) = (&target.tls.client_certificate, &target.tls.client_key) {
        tls = tls.identity(Identity::from_pem(
            read_pem("client certificate", cert)?,
            read_pem("client key", key)?,
        ));
    }
    Ok(tls)
}

fn invalid_pem(what: &'static str, path: &Path, error: &reqwest::Error) -> ExportError {
    ExportError::TlsInvalid {
        what,
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// The CA certificate and client identity for reqwest, when configured.
fn reqwest_tls(
    target: &OtlpTarget,
) -> Result<(Option<reqwest::Certificate>, Option<reqwest::Identity>), ExportError> {
    let ca = match &target.tls.ca_certificate {
        Some(ca) => Some(
            reqwest::Certificate::from_pem(&read_pem("CA certificate", ca)?)
                .map_err(|error| invalid_pem("CA certificate", ca, &error))?,
        ),
        None => None,
    };
    let identity = match (&target.tls.client_certificate, &target.tls.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = read_pem("client certificate", cert)?;
            pem.extend(read_pem("client key", key)?);
            Some(
                reqwest::Identity::from_pem(&pem)
                    .map_err(|error| invalid_pem("client certificate", cert, &error))?,
            )
        }
        _ => None,
    };
    Ok((ca, identity))
}

/// The blocking client the metrics exporter needs for HTTPS (it exports from its own
/// thread, outside the runtime).
fn https_client(target: &OtlpTarget) -> Result<reqwest::blocking::Client, ExportError> {
    let mut builder = reqwest::blocking::Client::builder().timeout(target.timeout);
    let (ca, identity) = reqwest_tls(target)?;
    if let Some(ca) = ca {
        builder = builder.add_root_certificate(ca);
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    // reqwest's blocking client must not be built on a runtime thread.
    std::thread::spawn(move || builder.build())
        .join()
        .map_err(|_| ExportError::HttpClient("the client builder panicked".into()))?
        .map_err(|error| ExportError::HttpClient(error.to_string()))
}

#[cfg(test)]
mod worker_failure_tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::export::transport::{Accepted, SendError};

    /// A destination that accepts everything.
    #[derive(Clone)]
    struct AcceptAll;

    impl Destination for AcceptAll {
        async fn send(&self, _request: Bytes) -> Result<Accepted, SendError> {
            Ok(Accepted::default())
        }
    }

    /// A shutdown deadline one second away.
    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    /// One OTLP exporter with `settings`, sending to [`AcceptAll`].
    fn exporters(settings: BatchSettings) -> Exporters {
        let (stop, stopped) = watch::channel(None);
        let ended = CancellationToken::new();
        let output = Exporter::start(
            "otlp",
            AcceptAll,
            RequestEncoder::new(&agent_resource(), ResourceSettings::SINGLE),
            (settings, None),
            (&stopped, &ended),
        );
        Exporters {
            exporters: vec![output],
            stop,
            ended,
        }
    }

    /// A worker that panics (here: a zero schedule delay, which `tokio::time::interval`
    /// refuses, what `OTEL_BSP_SCHEDULE_DELAY=0` used to do) is seen at once and reported
    /// by the shutdown, so that the agent cannot stop "cleanly".
    #[tokio::test]
    async fn a_panicking_worker_is_reported_not_swallowed() {
        let exporters = exporters(BatchSettings {
            scheduled_delay: Duration::ZERO,
            ..BatchSettings::default()
        });
        tokio::time::timeout(Duration::from_secs(5), exporters.worker_ended())
            .await
            .expect("the worker's end is noticed");
        assert_eq!(exporters.shutdown(soon()).await, vec!["otlp"]);
    }

    #[tokio::test]
    async fn workers_that_stop_when_asked_are_not_failures() {
        let exporters = exporters(BatchSettings::default());
        assert!(!exporters.ended.is_cancelled());
        assert_eq!(exporters.shutdown(soon()).await, Vec::<&str>::new());
    }
}
