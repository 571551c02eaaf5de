//! Owns the export side: builds the tracer provider whose batch processors send spans to
//! the OTLP collector ([`config`] decides where and how) and/or to OTLP JSON lines
//! ([`json`]), optionally regrouped per observed process ([`per_process`]), and shuts it down
//! (flushing what is queued) once, within a deadline.

pub mod config;
pub mod json;
pub mod per_process;

use std::{collections::HashMap, io::Write, path::Path, time::Duration};

use opentelemetry_otlp::{
    Protocol, SpanExporter, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
    tonic_types::{
        metadata::MetadataMap,
        transport::{Certificate, ClientTlsConfig, Identity},
    },
};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};

use self::{
    config::{BatchSettings, Compression, ExportConfig, OtlpTarget},
    json::JsonLinesExporter,
    per_process::PerProcessExporter,
};
use crate::{cli::OtlpProtocol, resource::agent_resource};

/// The instrumentation scope of every span.
pub const SCOPE_NAME: &str = "otel-agent";

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

/// Builds the tracer provider for the configured outputs, or `None` when spans go nowhere
/// (no endpoint, SDK disabled, no JSON output).
///
/// Must run inside the multi-thread tokio runtime: the gRPC client lives on it.
pub fn tracer_provider(
    config: &ExportConfig,
    json_output: Option<Box<dyn Write + Send>>,
    per_process: bool,
) -> Result<Option<SdkTracerProvider>, ExportError> {
    if config.otlp.is_none() && json_output.is_none() {
        return Ok(None);
    }
    let mut builder = SdkTracerProvider::builder().with_resource(agent_resource());
    if let Some(target) = &config.otlp {
        let exporter = otlp_exporter(target)?;
        builder = builder.with_span_processor(batch_processor(exporter, per_process, config.batch));
    }
    if let Some(out) = json_output {
        let exporter = JsonLinesExporter::new(out);
        builder = builder.with_span_processor(batch_processor(exporter, per_process, config.batch));
    }
    Ok(Some(builder.build()))
}

fn batch_processor<E: opentelemetry_sdk::trace::SpanExporter + 'static>(
    exporter: E,
    per_process: bool,
    batch: BatchSettings,
) -> BatchSpanProcessor {
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(batch.max_queue_size)
        .with_max_export_batch_size(batch.max_export_batch_size)
        .with_scheduled_delay(batch.scheduled_delay)
        .build();
    if per_process {
        BatchSpanProcessor::builder(PerProcessExporter::new(exporter))
            .with_batch_config(config)
            .build()
    } else {
        BatchSpanProcessor::builder(exporter)
            .with_batch_config(config)
            .build()
    }
}

fn otlp_exporter(target: &OtlpTarget) -> Result<SpanExporter, ExportError> {
    let tls = target.endpoint.starts_with("https://");
    // One crypto provider (ring) for tonic and reqwest, which both build on rustls; reqwest
    // needs it installed even for plain HTTP. A second call finds it installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match target.protocol {
        OtlpProtocol::Grpc => {
            let mut headers = http::HeaderMap::new();
            for (key, value) in &target.headers {
                let name = http::HeaderName::from_bytes(key.as_bytes())
                    .map_err(|_| ExportError::InvalidHeader(key.clone()))?;
                let value = http::HeaderValue::from_str(value)
                    .map_err(|_| ExportError::InvalidHeader(key.clone()))?;
                headers.insert(name, value);
            }
            let metadata = MetadataMap::from_headers(headers);
            let mut builder = SpanExporter::builder()
                .with_tonic()
                .with_endpoint(&target.endpoint)
                .with_timeout(target.timeout)
                .with_metadata(metadata);
            if target.compression == Compression::Gzip {
                builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            if tls {
                builder = builder.with_tls_config(grpc_tls(target)?);
            }
            Ok(builder.build()?)
        }
        OtlpProtocol::HttpProtobuf => {
            let headers: HashMap<String, String> = target.headers.iter().cloned().collect();
            let mut builder = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(&target.endpoint)
                .with_timeout(target.timeout)
                .with_headers(headers);
            if target.compression == Compression::Gzip {
                builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            if tls {
                builder = builder.with_http_client(https_client(target)?);
            }
            Ok(builder.build()?)
        }
    }
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

/// Flushes queued spans and shuts the provider down, giving up after `deadline`. Returns
/// whether everything was flushed in time.
pub async fn shutdown(provider: SdkTracerProvider, deadline: Duration) -> bool {
    let flush = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(deadline));
    match tokio::time::timeout(deadline + Duration::from_millis(500), flush).await {
        Ok(Ok(Ok(()))) => true,
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "the span exporter did not shut down cleanly");
            false
        }
        Ok(Err(join_error)) => {
            tracing::warn!(error = %join_error, "the span exporter's shutdown task failed");
            false
        }
        Err(_elapsed) => {
            tracing::warn!(
                ?deadline,
                "queued spans were not flushed before the shutdown deadline"
            );
            false
        }
    }
}
