//! Decides and opens where sessions go: the OTLP exporter, OTLP JSON lines (a file or
//! stdout), and tcplife's console (stdout). Without an OTLP endpoint the console is on, so
//! that the agent is useful out of the box; `--console` keeps it on next to the exporter.

use std::{
    fs::OpenOptions,
    io::{Stdout, Write},
    path::{Path, PathBuf},
};

use crate::{
    cli::Cli,
    console::{Console, ConsoleFormat},
    error::AgentError,
    export::{
        Exporters,
        config::{ConfigError, ExportConfig},
    },
};

/// Where the JSON lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonTarget {
    Stdout,
    File(PathBuf),
}

/// Which outputs are on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub console: bool,
    pub json: Option<JsonTarget>,
}

impl Plan {
    /// The outputs for an OTLP target being configured or not, `--console` and
    /// `--json-output`.
    pub fn decide(
        otlp_configured: bool,
        console_flag: bool,
        json_output: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let json = json_output.map(|path| {
            if path == Path::new("-") {
                JsonTarget::Stdout
            } else {
                JsonTarget::File(path.to_owned())
            }
        });
        let json_on_stdout = json == Some(JsonTarget::Stdout);
        if console_flag && json_on_stdout {
            return Err(ConfigError {
                source_name: "--json-output/OTEL_AGENT_JSON_OUTPUT".into(),
                value: "-".into(),
                expected: "a file path: the console (--console) already writes to stdout".into(),
            });
        }
        Ok(Self {
            console: console_flag || (!otlp_configured && !json_on_stdout),
            json,
        })
    }
}

/// The opened outputs.
pub struct Outputs {
    pub exporters: Exporters,
    pub console: Option<Console<Stdout>>,
}

/// Opens the outputs `config` and the command line ask for.
pub fn open(cli: &Cli, config: &ExportConfig) -> Result<Outputs, AgentError> {
    let plan = Plan::decide(
        config.otlp.is_some(),
        cli.output.console,
        cli.output.json_output.as_deref(),
    )?;
    let json: Option<Box<dyn Write + Send>> = match &plan.json {
        None => None,
        Some(JsonTarget::Stdout) => Some(Box::new(std::io::stdout())),
        Some(JsonTarget::File(path)) => Some(Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| AgentError::JsonOutput {
                    path: path.clone(),
                    source,
                })?,
        )),
    };
    let exporters = Exporters::start(
        config,
        json,
        cli.export.resource_per_process,
        cli.shutdown_timeout,
    )?;
    let format = ConsoleFormat {
        time: cli.output.time,
        timestamp: cli.output.timestamp,
        wide: cli.output.wide,
        csv: cli.output.csv,
    };
    let console = if plan.console {
        Some(Console::start(std::io::stdout(), format).map_err(AgentError::Output)?)
    } else {
        None
    };
    Ok(Outputs { exporters, console })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_on_without_an_endpoint_or_on_request() {
        let plan = |otlp, console, json: Option<&str>| {
            Plan::decide(otlp, console, json.map(Path::new)).unwrap()
        };
        assert_eq!(
            plan(false, false, None),
            Plan {
                console: true,
                json: None
            }
        );
        assert_eq!(
            plan(true, false, None),
            Plan {
                console: false,
                json: None
            }
        );
        assert_eq!(
            plan(true, true, None),
            Plan {
                console: true,
                json: None
            }
        );
        assert_eq!(
            plan(false, false, Some("-")),
            Plan {
                console: false,
                json: Some(JsonTarget::Stdout)
            }
        );
        assert_eq!(
            plan(false, false, Some("/tmp/spans.jsonl")),
            Plan {
                console: true,
                json: Some(JsonTarget::File("/tmp/spans.jsonl".into()))
            }
        );
    }

    #[test]
    fn the_console_and_json_cannot_share_stdout() {
        let error = Plan::decide(true, true, Some(Path::new("-"))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--json-output/OTEL_AGENT_JSON_OUTPUT=`-` is invalid: a file path: the console (--console) already writes to stdout"
        );
    }
}
