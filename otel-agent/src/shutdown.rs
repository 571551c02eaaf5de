//! Signals: the first SIGINT, SIGTERM or SIGHUP starts a graceful shutdown (flush, detach,
//! final accounting); a second one exits at once. SIGHUP is not a reload: the agent has no
//! configuration file, and a terminal that goes away (what SIGHUP usually means) should not
//! kill it unflushed. The handlers are installed before anything else starts, so that an
//! early signal is never met by the default action (which would kill the agent unflushed).
//!
//! SIGPIPE needs no handler: Rust programs start with it ignored, so that a closed pipe is
//! an `EPIPE` error where the agent writes, never a silent death.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Exit code after a second signal cut the shutdown short (128 + SIGINT, as shells do).
const FORCED_EXIT: i32 = 130;

/// Installed SIGINT, SIGTERM and SIGHUP handlers.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    /// Installs the handlers; from now on the signals are queued for [`Signals::wait`].
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the first signal, then arms the second-signal exit.
    pub async fn wait(mut self) -> &'static str {
        let name = tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = self.interrupt.recv() => {},
                _ = self.terminate.recv() => {},
                _ = self.hangup.recv() => {},
            }
            tracing::warn!("second signal: exiting without waiting for the flush");
            std::process::exit(FORCED_EXIT);
        });
        name
    }
}
