//! Decides the export configuration from the flags (as plain values: [`ExportFlags`], filled
//! in by the command line) and the standard OpenTelemetry variables, in one place and as a
//! pure function: a flag wins over the signal-specific
//! variable (`OTEL_EXPORTER_OTLP_TRACES_*`), which wins over the generic one
//! (`OTEL_EXPORTER_OTLP_*`); batching comes from the flags or `OTEL_BSP_*`. Every value is
//! validated here, so that a bad one stops the agent with a message naming its source and
//! the accepted values (the SDK would silently ignore it).

use std::{path::PathBuf, time::Duration};

const TRACES_PATH: &str = "v1/traces";
const METRICS_PATH: &str = "v1/metrics";

/// The OTLP exporter's default timeout (specification: 10 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest duration or timeout the agent accepts: 2³¹ − 1 milliseconds (about 24.8
/// days), the range the specification asks SDKs to support for integer variables.
pub const MAX_DURATION: Duration = Duration::from_millis(i32::MAX as u64);

/// What a timeout of zero means: "indefinite", which the specification (SDK environment
/// variables, "Timeout") lets an implementation spell as the largest 32-bit number of
/// milliseconds.
pub const INDEFINITE_TIMEOUT: Duration = MAX_DURATION;

/// What a configuration error says instead of a value that may hold a secret.
const REDACTED: &str = "<redacted>";

/// A configuration value the agent cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}=`{value}` is invalid: {expected}")]
pub struct ConfigError {
    /// The flag or variable the value came from.
    pub source_name: String,
    pub value: String,
    /// What is accepted instead.
    pub expected: String,
}

impl ConfigError {
    fn new(source_name: &str, value: &str, expected: &str) -> Self {
        Self {
            source_name: source_name.to_owned(),
            value: value.to_owned(),
            expected: expected.to_owned(),
        }
    }
}

/// A URL shown with its userinfo (`user:password@`) replaced by `<redacted>`, so that a
/// password in an endpoint never reaches the log; everything that formats an endpoint goes
/// through it.
#[derive(Debug, Clone, Copy)]
pub struct Redacted<'a>(pub &'a str);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.0;
        // The authority starts after `scheme://` and ends at the first `/`, `?` or `#`;
        // userinfo is what precedes its last `@`.
        let start = url.find("://").map_or(0, |i| i + 3);
        let end = url[start..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |i| start + i);
        match url[start..end].rfind('@') {
            Some(at) => write!(f, "{}{REDACTED}{}", &url[..start], &url[start + at..]),
            None => f.write_str(url),
        }
    }
}

/// The OTLP transports the agent speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (usually port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (usually port 4318).
    HttpProtobuf,
}

impl OtlpProtocol {
    /// Every protocol, in the order `--help` lists them.
    pub const ALL: [Self; 2] = [Self::Grpc, Self::HttpProtobuf];

    /// The name used on the command line and in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }

    /// The protocol called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|protocol| protocol.name() == name)
    }
}

/// The export flags as given (`None`: not given); [`ExportConfig::resolve`] combines them
/// with the environment. The command line fills them in (`ExportArgs::flags`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportFlags {
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<OtlpProtocol>,
    pub otlp_headers: Option<String>,
    pub otlp_compression: Option<String>,
    pub otlp_timeout: Option<Duration>,
    pub otlp_certificate: Option<PathBuf>,
    pub otlp_client_certificate: Option<PathBuf>,
    pub otlp_client_key: Option<PathBuf>,
    pub bsp_max_queue_size: Option<usize>,
    pub bsp_max_export_batch_size: Option<usize>,
    pub bsp_schedule_delay: Option<Duration>,
    pub bsp_max_concurrent_exports: Option<usize>,
}

/// Compression of export requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

/// TLS files for an `https` endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate (PEM) that signed the collector's certificate.
    pub ca_certificate: Option<PathBuf>,
    /// Client certificate and key (PEM), for mutual TLS.
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Where and how to send spans over OTLP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    pub protocol: OtlpProtocol,
    /// The full URL the exporter sends to (for HTTP, including `/v1/traces`). It may carry
    /// a password: format it with [`Redacted`].
    pub endpoint: String,
    /// Where the agent's self-metrics go (for HTTP, including `/v1/metrics`).
    pub metrics_endpoint: String,
    /// Request headers (for example authentication tokens). Never logged.
    pub headers: Vec<(String, String)>,
    pub compression: Compression,
    pub timeout: Duration,
    pub tls: TlsFiles,
}

/// The batch span processor's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub scheduled_delay: Duration,
    pub max_concurrent_exports: usize,
}

impl Default for BatchSettings {
    /// The specification's batch size and delay; four requests in flight (the SDK's
    /// experimental `OTEL_BSP_MAX_CONCURRENT_EXPORTS` defaults to one, which caps
    /// throughput at one batch per round trip); and a queue sixteen times the SDK's 2048,
    /// because sessions in flight count against it and a busy host closes tens of
    /// thousands of sessions a second (about 10 MB when full).
    fn default() -> Self {
        Self {
            max_queue_size: 32_768,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_secs(5),
            max_concurrent_exports: 4,
        }
    }
}

/// The whole export configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// `None`: no endpoint configured, or `OTEL_SDK_DISABLED=true`.
    pub otlp: Option<OtlpTarget>,
    /// `OTEL_SDK_DISABLED=true`.
    pub sdk_disabled: bool,
    pub batch: BatchSettings,
}

impl ExportConfig {
    /// Combines the flags with the environment, read through `env`.
    pub fn resolve(
        args: &ExportFlags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        // The OpenTelemetry specification treats an empty variable as unset.
        let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        let sdk_disabled = match env("OTEL_SDK_DISABLED") {
            Some(value) => parse_bool("OTEL_SDK_DISABLED", &value)?,
            None => false,
        };
        let batch = resolve_batch(args, &env)?;
        let otlp = if sdk_disabled {
            None
        } else {
            resolve_otlp(args, &env)?
        };
        Ok(Self {
            otlp,
            sdk_disabled,
            batch,
        })
    }
}

/// The first of the flag (named `flag`), `OTEL_EXPORTER_OTLP_TRACES_<suffix>` and
/// `OTEL_EXPORTER_OTLP_<suffix>` that is set, with the name of its source.
fn pick(
    flag: (&'static str, Option<String>),
    suffix: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Option<(String, String)> {
    if let (name, Some(value)) = flag {
        return Some((name.to_owned(), value));
    }
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"),
        format!("OTEL_EXPORTER_OTLP_{suffix}"),
    ]
    .into_iter()
    .find_map(|name| env(&name).map(|value| (name, value)))
}

fn resolve_otlp(
    args: &ExportFlags,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpTarget>, ConfigError> {
    let protocol = match args.otlp_protocol {
        Some(protocol) => protocol,
        None => match pick(("--otlp-protocol", None), "PROTOCOL", env) {
            Some((source, value)) => parse_protocol(&source, &value)?,
            None => OtlpProtocol::HttpProtobuf,
        },
    };
    let (source, endpoint, base) = if let Some(base) = &args.otlp_endpoint {
        let url = signal_url(base, TRACES_PATH, protocol);
        ("--otlp-endpoint".to_owned(), url, Some(base.clone()))
    } else if let Some(url) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        let base = env("OTEL_EXPORTER_OTLP_ENDPOINT");
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".to_owned(), url, base)
    } else if let Some(base) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let url = signal_url(&base, TRACES_PATH, protocol);
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), url, Some(base))
    } else {
        return Ok(None);
    };
    // Self-metrics: the signal-specific variable, else the base, else next to the traces.
    let metrics_endpoint = match (env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"), &base) {
        (Some(url), _) => url,
        (None, Some(base)) => signal_url(base, METRICS_PATH, protocol),
        (None, None) => endpoint.replace(TRACES_PATH, METRICS_PATH),
    };
    let shown = args.otlp_endpoint.as_deref().unwrap_or(&endpoint);
    check_url(&source, shown, &endpoint)?;
    if let Some(url) = env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
        check_url("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &url, &url)?;
    }
    let headers = match pick(
        ("--otlp-headers", args.otlp_headers.clone()),
        "HEADERS",
        env,
    ) {
        Some((source, value)) => parse_headers(&source, &value)?,
        None => Vec::new(),
    };
    let compression = match pick(
        ("--otlp-compression", args.otlp_compression.clone()),
        "COMPRESSION",
        env,
    ) {
        Some((source, value)) => parse_compression(&source, &value)?,
        None => Compression::None,
    };
    let timeout = match (
        args.otlp_timeout,
        pick(("--otlp-timeout", None), "TIMEOUT", env),
    ) {
        (Some(timeout), _) => timeout,
        (None, Some((source, value))) => match parse_millis(&source, &value)? {
            Duration::ZERO => INDEFINITE_TIMEOUT,
            timeout => timeout,
        },
        (None, None) => DEFAULT_TIMEOUT,
    };
    let file = |flag: &'static str, value: &Option<PathBuf>, suffix: &str| {
        pick(
            (flag, value.as_ref().map(|p| p.display().to_string())),
            suffix,
            env,
        )
        .map(|(_, path)| PathBuf::from(path))
    };
    let tls = TlsFiles {
        ca_certificate: file("--otlp-certificate", &args.otlp_certificate, "CERTIFICATE"),
        client_certificate: file(
            "--otlp-client-certificate",
            &args.otlp_client_certificate,
            "CLIENT_CERTIFICATE",
        ),
        client_key: file("--otlp-client-key", &args.otlp_client_key, "CLIENT_KEY"),
    };
    if tls.client_certificate.is_some() != tls.client_key.is_some() {
        return Err(ConfigError::new(
            "--otlp-client-certificate/--otlp-client-key",
            "only one of them",
            "both a client certificate and its key, or neither",
        ));
    }
    Ok(Some(OtlpTarget {
        protocol,
        endpoint,
        metrics_endpoint,
        headers,
        compression,
        timeout,
        tls,
    }))
}

/// Names of the variables the agent reads (directly, through clap or through the SDK), by
/// prefix or in full, and of those that hold a path (any bytes are valid in a path).
const READ_PREFIXES: [&str; 3] = ["OTEL_EXPORTER_OTLP_", "OTEL_BSP_", "OTEL_AGENT_"];
const READ_NAMES: [&str; 6] = [
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_METRIC_EXPORT_INTERVAL",
];
const PATH_VARIABLES: [&str; 2] = ["OTEL_AGENT_JSON_OUTPUT", "OTEL_AGENT_BTF"];

/// Refuses a variable the agent reads whose value is not UTF-8: read as text it would be
/// unset, silently dropping an authentication header or turning export off. Paths are
/// exempt. `vars` is the environment (`std::env::vars_os()`).
pub fn check_utf8(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<(), ConfigError> {
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        let read = READ_NAMES.contains(&name)
            || READ_PREFIXES.iter().any(|prefix| name.starts_with(prefix));
        if read && !PATH_VARIABLES.contains(&name) && value.to_str().is_none() {
            return Err(ConfigError::new(
                name,
                REDACTED,
                "text in UTF-8, and this value is not; percent-encode other bytes where the \
                 variable allows it (headers, resource attributes)",
            ));
        }
    }
    Ok(())
}

fn resolve_batch(
    args: &ExportFlags,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<BatchSettings, ConfigError> {
    let defaults = BatchSettings::default();
    let count = |flag: Option<usize>, name: &str, default: usize| -> Result<usize, ConfigError> {
        match (flag, env(name)) {
            (Some(value), _) => Ok(value),
            (None, Some(value)) => value
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| ConfigError::new(name, &value, "a positive integer")),
            (None, None) => Ok(default),
        }
    };
    let max_queue_size = count(
        args.bsp_max_queue_size,
        "OTEL_BSP_MAX_QUEUE_SIZE",
        defaults.max_queue_size,
    )?;
    let batch_source = args
        .bsp_max_export_batch_size
        .or_else(|| env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").map(|_| 0));
    let max_export_batch_size = count(
        args.bsp_max_export_batch_size,
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        defaults.max_export_batch_size,
    )?;
    let max_export_batch_size = match batch_source {
        // The specification's default batch never exceeds a smaller queue.
        None => max_export_batch_size.min(max_queue_size),
        Some(_) if max_export_batch_size > max_queue_size => {
            return Err(ConfigError::new(
                "--bsp-max-export-batch-size/OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                &max_export_batch_size.to_string(),
                &format!("at most the queue size ({max_queue_size})"),
            ));
        }
        Some(_) => max_export_batch_size,
    };
    let scheduled_delay = match (args.bsp_schedule_delay, env("OTEL_BSP_SCHEDULE_DELAY")) {
        (Some(delay), _) => delay,
        (None, Some(value)) => match parse_millis("OTEL_BSP_SCHEDULE_DELAY", &value)? {
            // The specification gives a zero delay no meaning; the worker needs a period.
            Duration::ZERO => {
                return Err(ConfigError::new(
                    "OTEL_BSP_SCHEDULE_DELAY",
                    &value,
                    "a positive integer number of milliseconds",
                ));
            }
            delay => delay,
        },
        (None, None) => defaults.scheduled_delay,
    };
    let max_concurrent_exports = count(
        args.bsp_max_concurrent_exports,
        "OTEL_BSP_MAX_CONCURRENT_EXPORTS",
        defaults.max_concurrent_exports,
    )?;
    Ok(BatchSettings {
        max_queue_size,
        max_export_batch_size,
        scheduled_delay,
        max_concurrent_exports,
    })
}

fn parse_protocol(source: &str, value: &str) -> Result<OtlpProtocol, ConfigError> {
    OtlpProtocol::from_name(value.trim())
        .ok_or_else(|| ConfigError::new(source, value, "grpc or http/protobuf"))
}

fn parse_compression(source: &str, value: &str) -> Result<Compression, ConfigError> {
    match value.trim() {
        "gzip" => Ok(Compression::Gzip),
        "none" => Ok(Compression::None),
        _ => Err(ConfigError::new(source, value, "gzip or none")),
    }
}

fn parse_bool(source: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ConfigError::new(source, value, "true or false")),
    }
}

/// Durations in `OTEL_*` variables are integer milliseconds, at most [`MAX_DURATION`].
pub(crate) fn parse_millis(source: &str, value: &str) -> Result<Duration, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
        .filter(|duration| *duration <= MAX_DURATION)
        .ok_or_else(|| {
            ConfigError::new(
                source,
                value,
                &format!(
                    "an integer number of milliseconds, at most {}",
                    MAX_DURATION.as_millis()
                ),
            )
        })
}

/// `key1=value1,key2=value2`, values percent-decoded (W3C baggage format, as the
/// specification says for `OTEL_EXPORTER_OTLP_HEADERS`).
fn parse_headers(source: &str, value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    // The message never repeats the value: headers usually carry secrets.
    let invalid = || ConfigError::new(source, REDACTED, "comma-separated key=value pairs");
    value
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(invalid)?;
            let key = key.trim();
            let valid_key = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid_key {
                return Err(invalid());
            }
            let value = percent_decode(value.trim()).ok_or_else(invalid)?;
            Ok((key.to_ascii_lowercase(), value))
        })
        .collect()
}

/// `text` with each `%XX` replaced by its byte, if every `%` starts such an escape and the
/// result is UTF-8 (`percent-encoding` alone would keep a malformed escape as it is).
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let well_formed = text.split('%').skip(1).all(|escaped| {
        escaped
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// A signal's URL for a base endpoint: gRPC uses it as is, HTTP appends `v1/traces` or
/// `v1/metrics` to its path, as the OTLP exporter specification says for
/// `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn signal_url(base: &str, path: &str, protocol: OtlpProtocol) -> String {
    match protocol {
        OtlpProtocol::Grpc => base.to_owned(),
        OtlpProtocol::HttpProtobuf => format!("{}/{path}", base.trim_end_matches('/')),
    }
}

/// Checks that `url` (given as `shown` by `source`) is an `http`/`https` URL with a host
/// and, if it names a port, one from 1 to 65535. The message never shows a password.
fn check_url(source: &str, shown: &str, url: &str) -> Result<(), ConfigError> {
    let invalid = |expected: &str| ConfigError::new(source, &Redacted(shown).to_string(), expected);
    let uri = url.parse::<http::Uri>().ok().filter(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
    });
    let Some(uri) = uri else {
        return Err(invalid(
            "a URL with http:// or https:// and a host, like http://127.0.0.1:4317",
        ));
    };
    // `http::Uri` accepts a port beyond 65535 (and then reports none): read it here.
    let authority = uri.authority().map_or("", |a| a.as_str());
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, rest)| rest);
    let after_host = host_port
        .rsplit_once(']')
        .map_or(host_port, |(_, rest)| rest);
    match after_host.rsplit_once(':') {
        Some((_, port)) if !matches!(port.parse::<u16>(), Ok(1..)) => Err(invalid(
            "a port from 1 to 65535, like http://127.0.0.1:4317",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    fn args(argv: &[&str]) -> ExportFlags {
        let mut full = vec!["otel-agent"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).unwrap().export.flags()
    }

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    fn otlp(argv: &[&str], env: &[(&str, &str)]) -> OtlpTarget {
        ExportConfig::resolve(&args(argv), env_of(env))
            .unwrap()
            .otlp
            .expect("an OTLP target")
    }

    fn error(argv: &[&str], env: &[(&str, &str)]) -> String {
        ExportConfig::resolve(&args(argv), env_of(env))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn nothing_configured_means_no_export_and_default_batching() {
        let config = ExportConfig::resolve(&args(&[]), env_of(&[])).unwrap();
        assert_eq!(
            config,
            ExportConfig {
                otlp: None,
                sdk_disabled: false,
                batch: BatchSettings::default(),
            }
        );
        let empty = [("OTEL_EXPORTER_OTLP_ENDPOINT", " ")];
        assert_eq!(
            ExportConfig::resolve(&args(&[]), env_of(&empty))
                .unwrap()
                .otlp,
            None
        );
    }

    #[test]
    fn the_flag_endpoint_is_a_base_url_like_the_generic_variable() {
        let grpc = otlp(
            &[
                "--otlp-endpoint",
                "http://127.0.0.1:4317",
                "--otlp-protocol",
                "grpc",
            ],
            &[],
        );
        assert_eq!(
            grpc,
            OtlpTarget {
                protocol: OtlpProtocol::Grpc,
                endpoint: "http://127.0.0.1:4317".into(),
                metrics_endpoint: "http://127.0.0.1:4317".into(),
                headers: vec![],
                compression: Compression::None,
                timeout: DEFAULT_TIMEOUT,
                tls: TlsFiles::default(),
            }
        );
        let http = otlp(&["--otlp-endpoint", "http://127.0.0.1:4318/"], &[]);
        assert_eq!(http.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(http.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(http.metrics_endpoint, "http://127.0.0.1:4318/v1/metrics");
    }

    #[test]
    fn flags_win_over_signal_variables_which_win_over_generic_ones() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=generic"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "Authorization=Bearer%20t0ken,x-tenant=a",
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/ca.pem"),
        ];
        let from_env = otlp(&[], &env);
        assert_eq!(from_env.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(from_env.endpoint, "http://traces:9999/custom");
        assert_eq!(from_env.metrics_endpoint, "http://generic:4318/v1/metrics");
        assert_eq!(
            from_env.headers,
            vec![
                ("authorization".to_owned(), "Bearer t0ken".to_owned()),
                ("x-tenant".to_owned(), "a".to_owned())
            ]
        );
        assert_eq!(from_env.compression, Compression::Gzip);
        assert_eq!(from_env.timeout, Duration::from_millis(2500));
        assert_eq!(from_env.tls.ca_certificate, Some(PathBuf::from("/ca.pem")));

        let from_flags = otlp(
            &[
                "--otlp-endpoint",
                "http://flag:4317",
                "--otlp-protocol",
                "grpc",
                "--otlp-headers",
                "x-key=flag",
                "--otlp-compression",
                "none",
                "--otlp-timeout",
                "3s",
            ],
            &env,
        );
        assert_eq!(from_flags.protocol, OtlpProtocol::Grpc);
        assert_eq!(from_flags.endpoint, "http://flag:4317");
        assert_eq!(
            from_flags.headers,
            vec![("x-key".to_owned(), "flag".to_owned())]
        );
        assert_eq!(from_flags.compression, Compression::None);
        assert_eq!(from_flags.timeout, Duration::from_secs(3));
    }

    #[test]
    fn batching_comes_from_flags_or_bsp_variables() {
        let env = [
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", "2"),
        ];
        let config = ExportConfig::resolve(&args(&[]), env_of(&env)).unwrap();
        assert_eq!(
            config.batch,
            BatchSettings {
                max_queue_size: 100,
                max_export_batch_size: 10,
                scheduled_delay: Duration::from_millis(250),
                max_concurrent_exports: 2,
            }
        );
        let flags = args(&[
            "--bsp-max-export-batch-size",
            "5",
            "--bsp-schedule-delay",
            "1s",
            "--bsp-max-concurrent-exports",
            "8",
        ]);
        let config = ExportConfig::resolve(&flags, env_of(&env)).unwrap();
        assert_eq!(config.batch.max_export_batch_size, 5);
        assert_eq!(config.batch.scheduled_delay, Duration::from_secs(1));
        assert_eq!(config.batch.max_queue_size, 100);
        assert_eq!(config.batch.max_concurrent_exports, 8);
        let defaults = ExportConfig::resolve(&args(&[]), env_of(&[])).unwrap();
        assert_eq!(defaults.batch, BatchSettings::default());
    }

    #[test]
    fn sdk_disabled_turns_export_off() {
        let env = [
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
        ];
        let config = ExportConfig::resolve(&args(&[]), env_of(&env)).unwrap();
        assert!(config.sdk_disabled);
        assert_eq!(config.otlp, None);
    }

    #[test]
    fn invalid_values_name_their_source_and_the_accepted_values() {
        let endpoint = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318")];
        let with = |extra: (&'static str, &'static str)| vec![endpoint[0], extra];
        assert_eq!(
            error(&[], &with(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"))),
            "OTEL_EXPORTER_OTLP_PROTOCOL=`http/json` is invalid: grpc or http/protobuf"
        );
        assert_eq!(
            error(&["--otlp-endpoint", "127.0.0.1:4317"], &[]),
            "--otlp-endpoint=`127.0.0.1:4317` is invalid: a URL with http:// or https:// and a host, like http://127.0.0.1:4317"
        );
        assert_eq!(
            error(
                &[],
                &with(("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd"))
            ),
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION=`zstd` is invalid: gzip or none"
        );
        assert_eq!(
            error(&[], &with(("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"))),
            "OTEL_EXPORTER_OTLP_TIMEOUT=`10s` is invalid: an integer number of milliseconds, at most 2147483647"
        );
        assert_eq!(
            error(
                &[],
                &with(("OTEL_EXPORTER_OTLP_HEADERS", "secret-token-without-key"))
            ),
            "OTEL_EXPORTER_OTLP_HEADERS=`<redacted>` is invalid: comma-separated key=value pairs"
        );
        assert_eq!(
            error(&[], &[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]),
            "OTEL_BSP_MAX_QUEUE_SIZE=`0` is invalid: a positive integer"
        );
        assert_eq!(
            error(
                &["--bsp-max-export-batch-size", "4096"],
                &[("OTEL_BSP_MAX_QUEUE_SIZE", "2048")]
            ),
            "--bsp-max-export-batch-size/OTEL_BSP_MAX_EXPORT_BATCH_SIZE=`4096` is invalid: at most the queue size (2048)"
        );
        assert_eq!(
            error(&[], &[("OTEL_SDK_DISABLED", "yes")]),
            "OTEL_SDK_DISABLED=`yes` is invalid: true or false"
        );
        assert!(
            error(&["--otlp-client-certificate", "/c.pem"], &endpoint)
                .contains("both a client certificate and its key, or neither")
        );
        let ftp = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x/")];
        assert!(error(&[], &ftp).starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=`ftp://x/`"));
    }
}

#[cfg(test)]
mod hardening_tests {
    use std::{ffi::OsString, os::unix::ffi::OsStringExt as _};

    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    fn resolve(argv: &[&str], env: &[(&str, &str)]) -> Result<ExportConfig, String> {
        let mut full = vec!["otel-agent"];
        full.extend_from_slice(argv);
        let args = Cli::try_parse_from(full).unwrap().export.flags();
        ExportConfig::resolve(&args, |name| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
        .map_err(|error| error.to_string())
    }

    #[test]
    fn userinfo_is_redacted_and_nothing_else_changes() {
        let cases = [
            (
                "http://alice:secret@host:4318/v1/traces",
                "http://<redacted>@host:4318/v1/traces",
            ),
            ("https://token@host", "https://<redacted>@host"),
            (
                "http://a:b@c@host:1/x?y=z@w",
                "http://<redacted>@host:1/x?y=z@w",
            ),
            ("http://host:4318/a@b", "http://host:4318/a@b"),
            ("http://[::1]:4317", "http://[::1]:4317"),
            ("alice:secret@host:4317", "<redacted>@host:4317"),
        ];
        for (url, shown) in cases {
            assert_eq!(Redacted(url).to_string(), shown, "{url}");
        }
    }

    #[test]
    fn ports_out_of_range_are_refused_without_showing_the_password() {
        for port in ["0", "99999", "65536"] {
            let url = format!("http://alice:secret@127.0.0.1:{port}");
            assert_eq!(
                resolve(&["--otlp-endpoint", &url], &[]).unwrap_err(),
                format!(
                    "--otlp-endpoint=`http://<redacted>@127.0.0.1:{port}` is invalid: a port from 1 to 65535, like http://127.0.0.1:4317"
                )
            );
        }
        assert_eq!(
            resolve(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://u:p@x:0/")]).unwrap_err(),
            "OTEL_EXPORTER_OTLP_ENDPOINT=`http://<redacted>@x:0/v1/traces` is invalid: a port from 1 to 65535, like http://127.0.0.1:4317"
        );
        assert_eq!(
            resolve(
                &["--otlp-endpoint", "http://x:4318"],
                &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://x:70000")]
            )
            .unwrap_err(),
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=`http://x:70000` is invalid: a port from 1 to 65535, like http://127.0.0.1:4317"
        );
        assert_eq!(
            resolve(&["--otlp-endpoint", "alice:secret@x:4318"], &[]).unwrap_err(),
            "--otlp-endpoint=`<redacted>@x:4318` is invalid: a URL with http:// or https:// and a host, like http://127.0.0.1:4317"
        );
        let fine = resolve(&["--otlp-endpoint", "http://x:65535"], &[]).unwrap();
        assert_eq!(fine.otlp.unwrap().endpoint, "http://x:65535/v1/traces");
        let no_port = resolve(&["--otlp-endpoint", "https://x"], &[]).unwrap();
        assert_eq!(no_port.otlp.unwrap().endpoint, "https://x/v1/traces");
    }

    #[test]
    fn a_zero_timeout_is_indefinite_and_a_zero_schedule_delay_is_refused() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318");
        let timeout = |env: &[(&str, &str)]| resolve(&[], env).unwrap().otlp.unwrap().timeout;
        assert_eq!(
            timeout(&[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "0")]),
            INDEFINITE_TIMEOUT
        );
        assert_eq!(INDEFINITE_TIMEOUT, Duration::from_millis(2_147_483_647));
        assert_eq!(
            timeout(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2147483647")
            ]),
            MAX_DURATION
        );
        assert_eq!(
            resolve(
                &[],
                &[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "2147483648")]
            )
            .unwrap_err(),
            "OTEL_EXPORTER_OTLP_TIMEOUT=`2147483648` is invalid: an integer number of milliseconds, at most 2147483647"
        );
        assert_eq!(
            resolve(&[], &[("OTEL_BSP_SCHEDULE_DELAY", "0")]).unwrap_err(),
            "OTEL_BSP_SCHEDULE_DELAY=`0` is invalid: a positive integer number of milliseconds"
        );
        assert_eq!(
            resolve(&[], &[("OTEL_BSP_SCHEDULE_DELAY", "99999999999999")]).unwrap_err(),
            "OTEL_BSP_SCHEDULE_DELAY=`99999999999999` is invalid: an integer number of milliseconds, at most 2147483647"
        );
    }

    #[test]
    fn non_utf8_values_of_variables_the_agent_reads_are_refused_by_name() {
        let bad = || OsString::from_vec(b"authorization=Bearer \xff".to_vec());
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_SDK_DISABLED",
            "OTEL_RESOURCE_ATTRIBUTES",
            "OTEL_SERVICE_NAME",
            "OTEL_BSP_SCHEDULE_DELAY",
            "OTEL_AGENT_STATS_INTERVAL",
            "OTEL_AGENT_CONSOLE",
            "OTEL_TRACES_SAMPLER",
            "OTEL_TRACES_SAMPLER_ARG",
            "OTEL_METRIC_EXPORT_INTERVAL",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        ] {
            let vars = [
                ("PATH".into(), "/bin".into()),
                (OsString::from(name), bad()),
            ];
            assert_eq!(
                check_utf8(vars).unwrap_err().to_string(),
                format!(
                    "{name}=`<redacted>` is invalid: text in UTF-8, and this value is not; percent-encode other bytes where the variable allows it (headers, resource attributes)"
                )
            );
        }
        // Paths may be any bytes; variables the agent does not read are not its business.
        for name in [
            "OTEL_AGENT_JSON_OUTPUT",
            "OTEL_AGENT_BTF",
            "OTEL_PYTHON_X",
            "HOME",
        ] {
            assert_eq!(
                check_utf8([(OsString::from(name), bad())]),
                Ok(()),
                "{name}"
            );
        }
        assert_eq!(check_utf8(std::env::vars_os()), Ok(()));
    }

    #[test]
    fn percent_decoding_takes_two_hex_digits_only() {
        assert_eq!(percent_decode("a%20b%2C").as_deref(), Some("a b,"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None, "not UTF-8");
    }
}
