//! Signals: the first SIGINT or SIGTERM starts a graceful shutdown (flush, detach); a second
//! one exits at once.

use tokio::signal::unix::{SignalKind, signal};

/// Exit code after a second signal cut the shutdown short (128 + SIGINT, as shells do).
const FORCED_EXIT: i32 = 130;

/// Waits for the first SIGINT or SIGTERM, then arms the second-signal exit.
pub async fn wait_for_signal() -> std::io::Result<&'static str> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::warn!("second signal: exiting without waiting for the flush");
        std::process::exit(FORCED_EXIT);
    });
    Ok(name)
}
