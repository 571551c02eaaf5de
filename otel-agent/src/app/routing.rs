//! Routing: decides and opens where sessions go, the outputs: the OTLP exporter, and the
//! sinks, OTLP JSON lines (a file, a FIFO or stdout) and tcplife's console (stdout). Without an OTLP endpoint the console is on, so
//! that the agent is useful out of the box; `--console` keeps it on next to the exporter.
//! Each sink is written by its own thread ([`crate::local`]).

use std::{
    fs::{File, OpenOptions},
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::OpenOptionsExt as _,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use crate::{
    cli::Cli,
    console::{Console, ConsoleFormat},
    error::AgentError,
    export::{
        Destinations, Exporters,
        config::{ConfigError, ExportConfig},
        encode::RequestEncoder,
        resource::agent_resource,
        spool::Spool,
    },
    json_lines::JsonLines,
    local::{Batching, Lines, Open, Sink, SinkFailed, Sinks, Target},
};

/// Sessions the console's thread formats into one write (at most one pipeline batch).
const CONSOLE_BATCH: usize = 1024;

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

/// The outputs, checked and their targets opened, not started yet: what can fail as
/// configuration fails here, before the probe is attached; the threads and export workers
/// start later ([`Prepared::start`]), in the async runtime, once the privileges are
/// dropped, so that they inherit the dropped sets.
pub struct Prepared {
    /// The JSON lines' target (its name and its opener).
    json: Option<(String, Open)>,
    /// The console's stdout.
    console: Option<Open>,
    destinations: Destinations,
}

/// The opened outputs.
pub struct Outputs {
    pub exporters: Exporters,
    /// The console and the JSON lines, each on its own thread.
    pub sinks: Sinks,
}

/// Checks the outputs `config` and the command line ask for and opens their targets.
pub fn prepare(cli: &Cli, config: &ExportConfig) -> Result<Prepared, AgentError> {
    let plan = Plan::decide(
        config.otlp.is_some(),
        cli.output.console,
        cli.output.json_output.as_deref(),
    )?;
    let json = match &plan.json {
        Some(JsonTarget::Stdout) => Some(("stdout".to_owned(), open_stdout("JSON lines")?)),
        Some(JsonTarget::File(path)) => Some((path.display().to_string(), open_json_file(path)?)),
        None => None,
    };
    let spool = match (cli.export.spool(), &config.otlp) {
        (Some(options), Some(_)) => Some(Spool::open(&options)?),
        (Some(options), None) => {
            return Err(ConfigError {
                source_name: "--spool-dir/OTEL_AGENT_SPOOL_DIR".into(),
                value: options.dir.display().to_string(),
                expected: "a spool needs an OTLP endpoint (it holds export requests): set \
                           --otlp-endpoint, or remove --spool-dir"
                    .into(),
            }
            .into());
        }
        (None, _) => None,
    };
    let destinations = Destinations::new(config, spool)?;
    let console = if plan.console {
        Some(open_stdout("tcplife lines")?)
    } else {
        None
    };
    Ok(Prepared {
        json,
        console,
        destinations,
    })
}

impl Prepared {
    /// Starts the outputs: a thread per local output, a worker per export output. Must run
    /// inside the multi-thread tokio runtime.
    pub fn start(self, cli: &Cli, config: &ExportConfig) -> Result<Outputs, AgentError> {
        let per_process = cli.export.resource_per_process;
        let failed = CancellationToken::new();
        let mut locals = Vec::new();
        if let Some((target, open)) = self.json {
            let batch = config.batch;
            locals.push(start(
                Sink::start(
                    "json",
                    Target {
                        what: "JSON lines",
                        name: target,
                        open,
                    },
                    Lines::default(),
                    JsonLines::new(RequestEncoder::new(&agent_resource(), per_process)),
                    Batching {
                        capacity: batch.max_queue_size,
                        batch: batch.max_export_batch_size,
                        delay: batch.scheduled_delay,
                    },
                    &failed,
                ),
                "json",
            )?);
        }
        let exporters = Exporters::start(self.destinations, per_process);
        if let Some(stdout) = self.console {
            let console = Console::new(ConsoleFormat {
                time: cli.output.time,
                timestamp: cli.output.timestamp,
                wide: cli.output.wide,
                csv: cli.output.csv,
            });
            let mut header = Lines::default();
            header
                .buffer()
                .extend_from_slice(console.header().as_bytes());
            header.end_line(0);
            locals.push(start(
                Sink::start(
                    "console",
                    Target {
                        what: "tcplife lines",
                        name: "stdout".to_owned(),
                        open: stdout,
                    },
                    header,
                    console,
                    Batching {
                        capacity: cli.output.console_queue_size,
                        batch: CONSOLE_BATCH,
                        delay: Duration::ZERO,
                    },
                    &failed,
                ),
                "console",
            )?);
        }
        Ok(Outputs {
            exporters,
            sinks: Sinks::new(locals, failed),
        })
    }
}

/// The output's thread started, or why not.
fn start(output: std::io::Result<Sink>, name: &'static str) -> Result<Sink, AgentError> {
    output.map_err(|error| {
        AgentError::Internal(format!(
            "cannot start the thread of the {name} output: {error}"
        ))
    })
}

/// A descriptor of stdout of its own, for the output's thread (std's `Stdout` and its lock
/// stay unused).
fn open_stdout(what: &'static str) -> Result<Open, AgentError> {
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|error| SinkFailed {
            what,
            target: "stdout".into(),
            error,
        })?;
    let file = File::from(fd);
    Ok(Box::new(move || Ok(file)))
}

/// Opens the JSON output's file now, so that a wrong path stops the agent at start-up;
/// except a FIFO that no reader has opened yet (opening it would block until one does):
/// its thread opens it, and the agent does not wait.
fn open_json_file(path: &Path) -> Result<Open, AgentError> {
    let failed = |error| AgentError::JsonOutput {
        path: path.to_owned(),
        error,
    };
    let opened = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
    match opened {
        Ok(file) => {
            // Writes are the thread's: blocking ones.
            let fd = file.as_raw_fd();
            // SAFETY: F_GETFL and F_SETFL on a descriptor this function owns.
            let cleared = unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
            };
            if !cleared {
                return Err(failed(std::io::Error::last_os_error()));
            }
            Ok(Box::new(move || Ok(file)))
        }
        Err(error) if error.raw_os_error() == Some(libc::ENXIO) => {
            tracing::info!(
                path = %path.display(),
                "the JSON output is a FIFO that no reader has opened yet: writing to it once \
                 one does (meanwhile, sessions beyond --bsp-max-queue-size are counted as \
                 lost_output_full)"
            );
            let path: PathBuf = path.to_owned();
            Ok(Box::new(move || OpenOptions::new().append(true).open(path)))
        }
        Err(error) => Err(failed(error)),
    }
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
