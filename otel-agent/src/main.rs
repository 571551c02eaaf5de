//! The `otel-agent` binary: parses the command line, sets up logging and the runtime, runs
//! the agent and turns its outcome into an exit code.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use otel_agent::{
    agent,
    cli::Cli,
    error::{exit_code, with_causes},
    log_text::Escaped,
};
use tracing_subscriber::EnvFilter;

/// Crates whose own logs would only add noise (the exporter's transport stack).
const QUIET_CRATES: &str = "h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off";

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

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
    match runtime.block_on(agent::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", Escaped(&with_causes(&error)));
            error.exit_code()
        }
    }
}
