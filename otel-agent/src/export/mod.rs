//! Owns the export side: one bounded [`queue`] and worker per output, sending spans to the
//! OTLP collector ([`config`] decides where and how) and/or to OTLP JSON lines ([`json`]),
//! optionally regrouped per observed process ([`per_process`]), under the agent's resource;
//! and the staged shutdown that flushes what is queued within a deadline.

pub mod config;
pub mod json;
pub mod per_process;
pub mod queue;

use std::{collections::HashMap, io::Write, path::Path, sync::Arc, time::Duration};

use opentelemetry_otlp::{
    MetricExporter, Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
    tonic_types::{
        metadata::MetadataMap,
        transport::{Certificate, ClientTlsConfig, Identity},
    },
};
use opentelemetry_sdk::{Resource, trace::SpanExporter as _};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::{
    config::{BatchSettings, Compression, ExportConfig, OtlpTarget},
    json::JsonLinesExporter,
    per_process::PerProcessExporter,
    queue::{ExportQueue, QueueStats},
};
use crate::{cli::OtlpProtocol, resource::agent_resource, session::Session};

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot set up the OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot read the {what} {path}: {source}")]
    TlsFile {
        what: &'static str,
        path: String,
        source: std::io::Error,
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

/// What the rest of the agent sees of one output: its queue (fed by the pipeline) and its
/// counters.
#[derive(Clone)]
pub struct OutputHandle {
    /// `otlp` or `json`.
    pub name: &'static str,
    pub queue: ExportQueue,
    pub stats: Arc<QueueStats>,
}

/// One running output.
struct Output {
    handle: OutputHandle,
    worker: JoinHandle<()>,
}

/// The running outputs.
pub struct Exporters {
    outputs: Vec<Output>,
    stop: CancellationToken,
}

impl Exporters {
    /// Starts a worker per configured output (none: no endpoint, SDK disabled, no JSON).
    /// `deadline` bounds the flush at shutdown.
    ///
    /// Must run inside the multi-thread tokio runtime: the gRPC client lives on it.
    pub fn start(
        config: &ExportConfig,
        json_output: Option<Box<dyn Write + Send>>,
        per_process: bool,
        deadline: Duration,
    ) -> Result<Self, ExportError> {
        let resource = agent_resource();
        let stop = CancellationToken::new();
        let mut outputs = Vec::new();
        if let Some(target) = &config.otlp {
            let exporter = otlp_exporter(target)?;
            outputs.push(Output::start(
                "otlp",
                exporter,
                per_process,
                &resource,
                config.batch,
                &stop,
                deadline,
            ));
        }
        if let Some(out) = json_output {
            let exporter = JsonLinesExporter::new(out);
            outputs.push(Output::start(
                "json",
                exporter,
                per_process,
                &resource,
                config.batch,
                &stop,
                deadline,
            ));
        }
        Ok(Self { outputs, stop })
    }

    /// The outputs' queues and counters.
    pub fn handles(&self) -> Vec<OutputHandle> {
        self.outputs
            .iter()
            .map(|output| output.handle.clone())
            .collect()
    }

    /// Stops the workers; each exports what it still holds until the deadline given at
    /// start, counts the rest as dropped, and shuts its exporter down.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for output in self.outputs {
            if let Err(error) = output.worker.await {
                tracing::error!(output = output.handle.name, %error, "the export worker panicked");
            }
        }
    }
}

impl Output {
    /// Starts the worker of one output, its exporter under `resource` (regrouped per
    /// process if asked).
    fn start<E>(
        name: &'static str,
        mut exporter: E,
        per_process: bool,
        resource: &Resource,
        settings: BatchSettings,
        stop: &CancellationToken,
        deadline: Duration,
    ) -> Self
    where
        E: opentelemetry_sdk::trace::SpanExporter + Sync + 'static,
    {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings, stats.clone());
        let worker = if per_process {
            let mut wrapped = PerProcessExporter::new(exporter);
            wrapped.set_resource(resource);
            tokio::spawn(queue.clone().run(wrapped, stop.clone(), deadline))
        } else {
            exporter.set_resource(resource);
            tokio::spawn(queue.clone().run(exporter, stop.clone(), deadline))
        };
        Self {
            handle: OutputHandle { name, queue, stats },
            worker,
        }
    }
}

/// Hands a batch of sessions to every output's queue, one lock per queue.
pub fn push_all(outputs: &[OutputHandle], sessions: &[Arc<Session>]) {
    for output in outputs {
        output.queue.push(sessions);
    }
}

fn otlp_exporter(target: &OtlpTarget) -> Result<SpanExporter, ExportError> {
    Ok(match target.protocol {
        OtlpProtocol::Grpc => tonic_options(
            SpanExporter::builder().with_tonic(),
            target,
            &target.endpoint,
        )?
        .build()?,
        OtlpProtocol::HttpProtobuf => http_options(
            SpanExporter::builder().with_http(),
            target,
            &target.endpoint,
        )?
        .build()?,
    })
}

/// The OTLP metrics exporter for the agent's self-telemetry, to the same collector.
pub fn metric_exporter(target: &OtlpTarget) -> Result<MetricExporter, ExportError> {
    let endpoint = &target.metrics_endpoint;
    Ok(match target.protocol {
        OtlpProtocol::Grpc => {
            tonic_options(MetricExporter::builder().with_tonic(), target, endpoint)?.build()?
        }
        OtlpProtocol::HttpProtobuf => {
            http_options(MetricExporter::builder().with_http(), target, endpoint)?.build()?
        }
    })
}

/// Applies `target` (endpoint, timeout, headers, compression, TLS) to a gRPC builder.
fn tonic_options<B: WithExportConfig + WithTonicConfig>(
    builder: B,
    target: &OtlpTarget,
    endpoint: &str,
) -> Result<B, ExportError> {
    install_crypto_provider();
    let mut headers = http::HeaderMap::new();
    for (key, value) in &target.headers {
        let name = http::HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| ExportError::InvalidHeader(key.clone()))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|_| ExportError::InvalidHeader(key.clone()))?;
        headers.insert(name, value);
    }
    let mut builder = builder
        .with_endpoint(endpoint)
        .with_timeout(target.timeout)
        .with_metadata(MetadataMap::from_headers(headers));
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

/// One crypto provider (ring) for tonic and reqwest, which both build on rustls; reqwest
/// needs it installed even for plain HTTP. A second call finds it installed.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, ExportError> {
    std::fs::read(path).map_err(|source| ExportError::TlsFile {
        what,
        path: path.display().to_string(),
        source,
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

fn https_client(target: &OtlpTarget) -> Result<reqwest::blocking::Client, ExportError> {
    let mut builder = reqwest::blocking::Client::builder().timeout(target.timeout);
    if let Some(ca) = &target.tls.ca_certificate {
        let certificate = reqwest::Certificate::from_pem(&read_pem("CA certificate", ca)?)
            .map_err(|error| invalid_pem("CA certificate", ca, &error))?;
        builder = builder.add_root_certificate(certificate);
    }
    if let (Some(cert), Some(key)) = (&target.tls.client_certificate, &target.tls.client_key) {
        let mut pem = read_pem("client certificate", cert)?;
        pem.extend(read_pem("client key", key)?);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|error| invalid_pem("client certificate", cert, &error))?;
        builder = builder.identity(identity);
    }
    // reqwest's blocking client must not be built on a runtime thread.
    std::thread::spawn(move || builder.build())
        .join()
        .map_err(|_| ExportError::HttpClient("the client builder panicked".into()))?
        .map_err(|error| ExportError::HttpClient(error.to_string()))
}
