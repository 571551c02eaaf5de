//! The command line: every flag, its `--help` text and its environment equivalent. Parsing
//! here is typed; how flags and the standard `OTEL_*` variables combine is decided in
//! [`crate::export::ExportTarget::resolve`].

use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

/// Watches every TCP session on this host and turns each closed one into an OpenTelemetry
/// span (start = the session's birth, end = its close), exported over OTLP. Without an OTLP
/// endpoint it prints one tcplife-style line per closed session instead.
#[derive(Debug, Parser)]
#[command(name = "otel-agent", version)]
pub struct Cli {
    #[command(flatten)]
    pub export: ExportArgs,

    /// How long shutdown may take to flush queued spans to the collector before giving up.
    #[arg(
        long,
        env = "OTEL_AGENT_SHUTDOWN_TIMEOUT",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub shutdown_timeout: Duration,

    /// Log filter for the agent's own logs on stderr, in `tracing` EnvFilter syntax
    /// (for example `info` or `otel_agent=debug`).
    #[arg(long, env = "OTEL_AGENT_LOG", default_value = "info")]
    pub log: String,
}

/// Where spans go.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// OTLP base endpoint, for example http://127.0.0.1:4317 (gRPC) or
    /// http://127.0.0.1:4318 (HTTP; /v1/traces is appended). Without this flag the standard
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is) and OTEL_EXPORTER_OTLP_ENDPOINT apply;
    /// with none of them, sessions are printed to stdout instead of exported.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport. Without this flag the standard OTEL_EXPORTER_OTLP_TRACES_PROTOCOL and
    /// OTEL_EXPORTER_OTLP_PROTOCOL apply; the default is http/protobuf.
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<OtlpProtocol>,
}

/// The OTLP transports the agent speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (usually port 4317).
    #[value(name = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (usually port 4318).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The name used on the command line and in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Parses `500ms`, `5s` or `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let error = || format!("`{text}` is not a duration; use a number with ms, s or m, like 5s");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(error)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| error())?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_s_and_m() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(
            parse_duration("5"),
            Err("`5` is not a duration; use a number with ms, s or m, like 5s".to_owned())
        );
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn the_protocol_flag_takes_the_otel_names() {
        let cli = Cli::try_parse_from(["otel-agent", "--otlp-protocol", "http/protobuf"]).unwrap();
        assert_eq!(cli.export.otlp_protocol, Some(OtlpProtocol::HttpProtobuf));
        let error =
            Cli::try_parse_from(["otel-agent", "--otlp-protocol", "http/json"]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("[possible values: grpc, http/protobuf]"),
            "{error}"
        );
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
