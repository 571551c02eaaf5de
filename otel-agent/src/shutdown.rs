//! Signals: the first SIGINT or SIGTERM starts a graceful shutdown (flush, detach); a second
//! one exits at once. The handlers are installed before anything else starts, so that an
//! early signal is never met by the default action (which would kill the agent unflushed).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Exit code after a second signal cut the shutdown short (128 + SIGINT, as shells do).
const FORCED_EXIT: i32 = 130;

/// Installed SIGINT and SIGTERM handlers.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Installs the handlers; from now on the signals are queued for [`Signals::wait`].
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the first SIGINT or SIGTERM, then arms the second-signal exit.
    pub async fn wait(mut self) -> &'static str {
        let name = tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = self.interrupt.recv() => {},
                _ = self.terminate.recv() => {},
            }
            tracing::warn!("second signal: exiting without waiting for the flush");
            std::process::exit(FORCED_EXIT);
        });
        name
    }
}
