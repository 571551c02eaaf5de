//! `otlp-sink`: the counting OTLP/gRPC receiver as a process. It prints
//! `otlp-sink listening=ADDR` once it accepts connections and, on SIGINT or SIGTERM,
//! `otlp-sink requests=N spans=N` before it exits.

use std::{net::SocketAddr, process::ExitCode, sync::Arc};

use clap::Parser;
use otel_agent_bench::sink::{self, Counts};

/// Receives OTLP traces over gRPC, counts them, and drops them.
#[derive(Debug, Parser)]
#[command(name = "otlp-sink")]
struct Cli {
    /// Address to listen on (loopback; port 0 picks a free port).
    #[arg(long, env = "OTLP_SINK_LISTEN", default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("otlp-sink: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("otlp-sink: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};

    let (listener, local) = sink::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let counts = Arc::new(Counts::default());
    println!("otlp-sink listening={local}");
    sink::serve(listener, counts.clone(), async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
    .await
    .context("serving OTLP/gRPC")?;
    println!("{}", counts.line());
    Ok(())
}
