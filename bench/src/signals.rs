//! Turns SIGINT, SIGTERM and SIGHUP into a stop flag, so that a Ctrl-C ends a run in an
//! orderly way and every RAII guard (sysctls, sockets) runs. The signals are blocked in the
//! calling thread before any other thread exists (new threads inherit the mask) and a
//! dedicated thread receives them with `sigwait`.

use std::{
    io, mem,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

/// The signals that stop a run.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Blocks the stop signals and starts the thread that waits for them. Call it first in
/// `main`, before any other thread is started. The returned flag becomes true at the first
/// signal. Later signals only say that the run is stopping: a run stops within its socket
/// timeouts, and exiting before the guards ran would leave sysctls changed.
pub fn install() -> io::Result<Arc<AtomicBool>> {
    // SAFETY: `set` is a valid, writable sigset_t; sigemptyset/sigaddset only write to it.
    let set = unsafe {
        let mut set: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&raw mut set);
        for signal in STOP_SIGNALS {
            libc::sigaddset(&raw mut set, signal);
        }
        set
    };
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc =
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            loop {
                let mut signal: libc::c_int = 0;
                // SAFETY: `set` is initialised and `signal` is writable.
                if unsafe { libc::sigwait(&raw const set, &raw mut signal) } != 0 {
                    continue;
                }
                if flag.swap(true, Ordering::SeqCst) {
                    eprintln!("signal {signal}: already stopping (within the socket timeouts)");
                } else {
                    eprintln!("signal {signal}: stopping, then restoring what was changed");
                }
            }
        })?;
    Ok(stop)
}
