//! Signals: the first SIGINT, SIGTERM or SIGHUP starts a graceful shutdown (flush, detach,
//! final accounting); a second one exits at once. SIGHUP is not a reload: the agent has no
//! configuration file, and a terminal that goes away (what SIGHUP usually means) should not
//! kill it unflushed. An early signal is never met by the default action (which would kill
//! the agent unflushed): `main` blocks the three signals first thing ([`Blocked::block`]),
//! before the configuration is read and the probe attached on the main thread, so that a
//! signal sent meanwhile stays pending; every thread started later (the async runtime's,
//! then the outputs') inherits the blocked mask. Once the runtime runs, [`Signals::install`]
//! installs the handlers and unblocks the signals on the main thread, which from then on
//! takes them all: a pending one is delivered at once and starts the graceful shutdown.
//!
//! SIGPIPE needs no handler: Rust programs start with it ignored, so that a closed pipe is
//! an `EPIPE` error where the agent writes, never a silent death.

use std::{io, marker::PhantomData};

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Exit code after a second signal cut the shutdown short (128 + SIGINT, as shells do).
const FORCED_EXIT: i32 = 130;

/// The signals that start the graceful shutdown.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// SIGINT, SIGTERM and SIGHUP, blocked on the thread that blocked them (the main thread)
/// until [`Signals::install`] has installed their handlers.
pub struct Blocked {
    set: libc::sigset_t,
    /// Unblocked on the thread that blocked them: not `Send`.
    _thread: PhantomData<*const ()>,
}

impl Blocked {
    /// Blocks the signals on the calling thread (and the threads it starts from now on).
    pub fn block() -> io::Result<Self> {
        // SAFETY: a sigset_t is plain data, and an all-zero one is a valid value that
        // sigemptyset then initialises.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigemptyset and sigaddset write to the set they are given, which lives on
        // this stack frame; the signal numbers are valid.
        unsafe {
            libc::sigemptyset(&raw mut set);
            for signal in SIGNALS {
                libc::sigaddset(&raw mut set, signal);
            }
        }
        thread_mask(libc::SIG_BLOCK, &set)?;
        Ok(Self {
            set,
            _thread: PhantomData,
        })
    }
}

/// Changes the calling thread's signal mask.
fn thread_mask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: pthread_sigmask reads an initialised set and changes only the calling
    // thread's mask; the old mask is not asked for.
    match unsafe { libc::pthread_sigmask(how, set, std::ptr::null_mut()) } {
        0 => Ok(()),
        error => Err(io::Error::from_raw_os_error(error)),
    }
}

/// Installed SIGINT, SIGTERM and SIGHUP handlers.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    /// Installs the handlers, then unblocks the signals blocked by `blocked` (on the
    /// calling thread, the one that blocked them); from now on the signals, one already
    /// pending included, are queued for [`Signals::wait`]. Must run within the tokio
    /// runtime (`Runtime::enter`).
    pub fn install(blocked: Blocked) -> io::Result<Self> {
        let signals = Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        };
        thread_mask(libc::SIG_UNBLOCK, &blocked.set)?;
        Ok(signals)
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
