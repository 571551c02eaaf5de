//! The `otel-agent` binary, in this order: blocks the shutdown signals (an early one waits
//! instead of killing the agent unflushed, [`otel_agent::shutdown`]), parses the command
//! line and sets up logging, prepares the agent on the main thread (checks the
//! configuration, attaches the probe, drops the privileges: [`agent::prepare`]), then builds
//! the async runtime, whose threads inherit the dropped capabilities, installs the signal
//! handlers, runs the agent and turns its outcome into an exit code.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::{Parser as _, error::ErrorKind};
use otel_agent::{
    agent,
    cli::{Cli, Command, LogFormat},
    error::{AgentError, exit_code},
    export::config::check_utf8,
    log_text::{Escaped, with_causes},
    shutdown::{Blocked, Signals},
};
use tracing_subscriber::EnvFilter;

/// Crates whose own logs would only add noise (the exporter's transport stack).
const QUIET_CRATES: &str = "h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off";

fn main() -> ExitCode {
    let blocked = match Blocked::block() {
        Ok(blocked) => blocked,
        Err(error) => {
            eprintln!("otel-agent: cannot block the shutdown signals: {error}");
            return ExitCode::from(exit_code::INTERNAL);
        }
    };
    if let Err(error) = check_utf8(std::env::vars_os()) {
        eprintln!("otel-agent: {error}");
        return ExitCode::from(exit_code::CONFIG);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A flag's or variable's value that clap refuses is a configuration error, like
        // the values checked later; a malformed command line stays a usage error (2).
        Err(error) if is_invalid_value(error.kind()) => {
            let _ = error.print();
            if let Some(variable) = variable_of(&error) {
                eprintln!("otel-agent: the value comes from the environment variable {variable}");
            }
            return ExitCode::from(exit_code::CONFIG);
        }
        Err(error) => error.exit(),
    };
    let filter = match EnvFilter::try_new(format!("{},{QUIET_CRATES}", cli.log)) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!(
                "otel-agent: --log / OTEL_AGENT_LOG=`{}` is not a valid log filter: {error}; use for example `info` or `otel_agent=debug`",
                Escaped(&cli.log)
            );
            return ExitCode::from(exit_code::CONFIG);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    if let Some(Command::Detach { bpf_pin_dir }) = &cli.command {
        return match otel_agent::probe::pins::detach(bpf_pin_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => failed(&AgentError::Probe(error.into())),
        };
    }

    // On this thread, before any other exists: every thread started afterwards inherits the
    // capabilities dropped once the probe is attached.
    // A panic is an error exit with a message, not 101, as in the runtime below.
    let prepared = match std::panic::catch_unwind(|| agent::prepare(cli)) {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(error)) => return failed(&error),
        Err(_) => {
            tracing::error!("the agent failed: preparing it panicked");
            return ExitCode::from(exit_code::INTERNAL);
        }
    };
    // The gRPC exporter needs a multi-thread runtime with at least two workers.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::from(exit_code::INTERNAL);
        }
    };
    let signals = {
        let _runtime = runtime.enter();
        Signals::install(blocked)
    };
    let signals = match signals {
        Ok(signals) => signals,
        Err(error) => {
            return failed(&AgentError::Internal(format!(
                "cannot listen for signals: {error}"
            )));
        }
    };
    // On a task of its own, so that a panic is an error exit with a message, not 101.
    let outcome = runtime.block_on(async { tokio::spawn(agent::run(prepared, signals)).await });
    // Whatever is still running (a self-metrics export the shutdown deadline cut short)
    // must not hold the exit.
    runtime.shutdown_background();
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => failed(&error),
        Err(error) => {
            tracing::error!(%error, "the agent failed: a task panicked");
            ExitCode::from(exit_code::INTERNAL)
        }
    }
}

/// Logs why the agent stopped and returns its exit code.
fn failed(error: &AgentError) -> ExitCode {
    tracing::error!("{}", Escaped(&with_causes(error)));
    error.exit_code()
}

/// The variable an invalid value came from, when it did not come from the command line
/// (clap's message names only the flag).
fn variable_of(error: &clap::Error) -> Option<String> {
    use clap::{CommandFactory as _, error::ContextKind};
    let Some(clap::error::ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let on_command_line = std::env::args_os().any(|word| {
        word.to_str().is_some_and(|word| {
            word == format!("--{long}") || word.starts_with(&format!("--{long}="))
        })
    });
    let command = Cli::command();
    let variable = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_str()?
        .to_owned();
    (!on_command_line && std::env::var_os(&variable).is_some()).then_some(variable)
}

/// clap errors about a value (a flag's or an `env` variable's), as opposed to the shape of
/// the command line.
fn is_invalid_value(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::InvalidUtf8
    )
}
