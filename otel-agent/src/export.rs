//! Owns the OTLP side: decides where spans go from the flags and the standard
//! `OTEL_EXPORTER_OTLP_*` variables, builds the batching tracer provider, and shuts it down
//! (flushing what is queued) once, within a deadline.

use std::time::Duration;

use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};

use crate::cli::{ExportArgs, OtlpProtocol};

/// The service name spans carry unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`
/// say otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "otel-agent";
/// The instrumentation scope of every span.
pub const SCOPE_NAME: &str = "otel-agent";

const TRACES_PATH: &str = "v1/traces";

/// A configuration value the agent cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}=`{value}` is not a supported OTLP protocol; use grpc or http/protobuf")]
    Protocol { source_name: String, value: String },
    #[error(
        "{source_name}=`{value}` is not a valid OTLP endpoint; use a URL like http://127.0.0.1:4317"
    )]
    Endpoint { source_name: String, value: String },
}

/// The exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter: {0}")]
pub struct ExportError(#[from] opentelemetry_otlp::ExporterBuildError);

/// Where and how to send spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTarget {
    pub protocol: OtlpProtocol,
    /// The full URL the exporter sends to (for HTTP, including `/v1/traces`).
    pub endpoint: String,
}

impl ExportTarget {
    /// Combines the flags with the environment (read through `env`): a flag wins over the
    /// signal-specific variable, which wins over the generic one. `None` means no endpoint
    /// is configured anywhere.
    pub fn resolve(
        args: &ExportArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        // The OpenTelemetry specification treats an empty variable as unset.
        let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        let protocol = match args.otlp_protocol {
            Some(protocol) => protocol,
            None => [
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ]
            .into_iter()
            .find_map(|name| env(name).map(|value| (name, value)))
            .map(|(name, value)| parse_protocol(name, &value))
            .transpose()?
            .unwrap_or(OtlpProtocol::HttpProtobuf),
        };
        let (source_name, endpoint) = if let Some(base) = &args.otlp_endpoint {
            ("--otlp-endpoint", signal_url(base, protocol))
        } else if let Some(url) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        } else if let Some(base) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_ENDPOINT", signal_url(&base, protocol))
        } else {
            return Ok(None);
        };
        if !is_http_url(&endpoint) {
            return Err(ConfigError::Endpoint {
                source_name: source_name.to_owned(),
                value: args.otlp_endpoint.clone().unwrap_or(endpoint),
            });
        }
        Ok(Some(Self { protocol, endpoint }))
    }
}

fn parse_protocol(source_name: &str, value: &str) -> Result<OtlpProtocol, ConfigError> {
    match value.trim() {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        _ => Err(ConfigError::Protocol {
            source_name: source_name.to_owned(),
            value: value.to_owned(),
        }),
    }
}

/// The traces URL for a base endpoint: gRPC uses it as is, HTTP appends `v1/traces` to its
/// path, as the OTLP exporter specification says for `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn signal_url(base: &str, protocol: OtlpProtocol) -> String {
    match protocol {
        OtlpProtocol::Grpc => base.to_owned(),
        OtlpProtocol::HttpProtobuf => format!("{}/{TRACES_PATH}", base.trim_end_matches('/')),
    }
}

fn is_http_url(url: &str) -> bool {
    url.parse::<http::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
    })
}

/// Builds a tracer provider that batches spans and exports them to `target`.
///
/// Must run inside the multi-thread tokio runtime: the gRPC client lives on it.
pub fn tracer_provider(target: &ExportTarget) -> Result<SdkTracerProvider, ExportError> {
    let exporter = match target.protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&target.endpoint)
            .build()?,
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(&target.endpoint)
            .build()?,
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build())
}

/// The SDK's resource (which honours `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`),
/// with the agent's own service name instead of the SDK's `unknown_service` default.
fn resource() -> Resource {
    let resource = Resource::builder().build();
    let unnamed = resource
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_none_or(|name| name.as_str().starts_with("unknown_service"));
    if unnamed {
        Resource::builder()
            .with_service_name(DEFAULT_SERVICE_NAME)
            .build()
    } else {
        resource
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(endpoint: Option<&str>, protocol: Option<OtlpProtocol>) -> ExportArgs {
        ExportArgs {
            otlp_endpoint: endpoint.map(str::to_owned),
            otlp_protocol: protocol,
        }
    }

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    fn target(protocol: OtlpProtocol, endpoint: &str) -> Option<ExportTarget> {
        Some(ExportTarget {
            protocol,
            endpoint: endpoint.to_owned(),
        })
    }

    #[test]
    fn nothing_configured_means_no_export() {
        assert_eq!(
            ExportTarget::resolve(&args(None, None), env_of(&[])).unwrap(),
            None
        );
        let empty = [("OTEL_EXPORTER_OTLP_ENDPOINT", " ")];
        assert_eq!(
            ExportTarget::resolve(&args(None, None), env_of(&empty)).unwrap(),
            None
        );
    }

    #[test]
    fn the_flag_endpoint_is_a_base_url_like_the_generic_variable() {
        let grpc = args(Some("http://127.0.0.1:4317"), Some(OtlpProtocol::Grpc));
        assert_eq!(
            ExportTarget::resolve(&grpc, env_of(&[])).unwrap(),
            target(OtlpProtocol::Grpc, "http://127.0.0.1:4317")
        );
        let http = args(Some("http://127.0.0.1:4318/"), None);
        assert_eq!(
            ExportTarget::resolve(&http, env_of(&[])).unwrap(),
            target(
                OtlpProtocol::HttpProtobuf,
                "http://127.0.0.1:4318/v1/traces"
            )
        );
    }

    #[test]
    fn flags_win_over_variables_and_signal_variables_over_generic_ones() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ];
        assert_eq!(
            ExportTarget::resolve(&args(None, None), env_of(&env)).unwrap(),
            target(OtlpProtocol::HttpProtobuf, "http://traces:9999/custom")
        );
        assert_eq!(
            ExportTarget::resolve(
                &args(Some("http://flag:4317"), Some(OtlpProtocol::Grpc)),
                env_of(&env)
            )
            .unwrap(),
            target(OtlpProtocol::Grpc, "http://flag:4317")
        );
        let generic = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        assert_eq!(
            ExportTarget::resolve(&args(None, None), env_of(&generic)).unwrap(),
            target(OtlpProtocol::Grpc, "http://generic:4317")
        );
    }

    #[test]
    fn invalid_values_name_their_source_and_the_accepted_values() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ];
        assert_eq!(
            ExportTarget::resolve(&args(None, None), env_of(&env))
                .unwrap_err()
                .to_string(),
            "OTEL_EXPORTER_OTLP_PROTOCOL=`http/json` is not a supported OTLP protocol; use grpc or http/protobuf"
        );
        assert_eq!(
            ExportTarget::resolve(
                &args(Some("127.0.0.1:4317"), Some(OtlpProtocol::Grpc)),
                env_of(&[])
            )
            .unwrap_err()
            .to_string(),
            "--otlp-endpoint=`127.0.0.1:4317` is not a valid OTLP endpoint; use a URL like http://127.0.0.1:4317"
        );
        let env = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x/")];
        assert!(matches!(
            ExportTarget::resolve(&args(None, None), env_of(&env)),
            Err(ConfigError::Endpoint { .. })
        ));
    }
}
