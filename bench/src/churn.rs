//! The churn workload: client threads open loopback TCP connections to server threads, send
//! a small request, read a small response and close, as fast as they can, until a duration,
//! a connection count or a stop signal ends the run. The request/response pacing keeps the
//! accept backlog from overflowing (an overflow adds 1 s SYN retries), and every socket
//! operation has a timeout, so a run always ends.
//!
//! Each completed connection is two TCP sessions for the kernel (one per end): the client
//! closes first, the server closes when it reads end-of-file.

use std::{
    fmt,
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// What one run does.
#[derive(Debug, Clone)]
pub struct Config {
    /// The loopback address the server listens on (127.0.0.1 or ::1).
    pub address: IpAddr,
    /// Client threads, each with one connection at a time.
    pub clients: usize,
    /// Server threads, each serving one connection at a time.
    pub servers: usize,
    /// The run ends after this long...
    pub duration: Duration,
    /// ...or after this many connections were started, whichever comes first.
    pub max_connections: u64,
    /// Request size (client to server), bytes.
    pub request_bytes: usize,
    /// Response size (server to client), bytes.
    pub response_bytes: usize,
    /// Connect, read and write timeout of every socket.
    pub timeout: Duration,
}

/// Why the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoppedBy {
    Duration,
    MaxConnections,
    Signal,
}

impl fmt::Display for StoppedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Duration => "duration",
            Self::MaxConnections => "max_connections",
            Self::Signal => "signal",
        })
    }
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Connections that completed the request/response exchange and were closed.
    pub connections: u64,
    /// Client-side failures (connect, write or read; the connection is counted here, not in
    /// `connections`).
    pub client_errors: u64,
    /// Server-side failures (read, write).
    pub server_errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// From the start of the clients to the end of the last one.
    pub elapsed: Duration,
    pub stopped_by: StoppedBy,
}

impl Report {
    /// Completed connections per second.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.connections as f64 / seconds
        } else {
            0.0
        }
    }

    /// The machine-readable summary line `scripts/bench.sh` parses.
    pub fn line(&self) -> String {
        format!(
            "churn connections={} sessions={} client_errors={} server_errors={} elapsed_s={:.3} rate_per_s={:.1} stopped_by={}",
            self.connections,
            2 * self.connections,
            self.client_errors,
            self.server_errors,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.stopped_by,
        )
    }
}

/// Counters shared by the client and server threads.
#[derive(Default)]
struct Shared {
    started: AtomicU64,
    completed: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, counter: &AtomicU64, what: &str, error: &io::Error) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if first.is_none() {
            *first = Some(format!("{what}: {error}"));
        }
    }
}

/// Runs the workload until `config.duration`, `config.max_connections` or `stop`.
pub fn run(config: &Config, stop: &AtomicBool) -> io::Result<Report> {
    let listener = TcpListener::bind(SocketAddr::new(config.address, 0))?;
    let server_addr = listener.local_addr()?;
    let shared = Shared::default();
    let servers_done = AtomicBool::new(false);
    // Set when the clients may start; `abort` ends them early if a thread cannot start.
    let go = AtomicBool::new(false);
    let abort = AtomicBool::new(false);
    let mut elapsed = Duration::ZERO;
    let spawned = thread::scope(|scope| -> io::Result<()> {
        let result = (|| -> io::Result<()> {
            for index in 0..config.servers {
                thread::Builder::new()
                    .name(format!("server-{index}"))
                    .spawn_scoped(scope, || serve(&listener, config, &shared, &servers_done))?;
            }
            let mut clients = Vec::with_capacity(config.clients);
            for index in 0..config.clients {
                let (go, abort, shared) = (&go, &abort, &shared);
                clients.push(
                    thread::Builder::new()
                        .name(format!("client-{index}"))
                        .spawn_scoped(scope, move || {
                            while !go.load(Ordering::Acquire) {
                                thread::sleep(Duration::from_micros(100));
                            }
                            if !abort.load(Ordering::Relaxed) {
                                let deadline = Instant::now() + config.duration;
                                client(server_addr, config, shared, stop, deadline);
                            }
                        })?,
                );
            }
            let start = Instant::now();
            go.store(true, Ordering::Release);
            for client in clients {
                if client.join().is_err() {
                    return Err(io::Error::other("a client thread panicked"));
                }
            }
            elapsed = start.elapsed();
            Ok(())
        })();
        // Whatever happened, release and stop every thread so that the scope can end.
        abort.store(result.is_err(), Ordering::Relaxed);
        go.store(true, Ordering::Release);
        servers_done.store(true, Ordering::SeqCst);
        wake_acceptors(&listener);
        result
    });
    spawned?;
    let stopped_by = if stop.load(Ordering::SeqCst) {
        StoppedBy::Signal
    } else if shared.started.load(Ordering::Relaxed) >= config.max_connections {
        StoppedBy::MaxConnections
    } else {
        StoppedBy::Duration
    };
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(Report {
        connections: shared.completed.load(Ordering::Relaxed),
        client_errors: shared.client_errors.load(Ordering::Relaxed),
        server_errors: shared.server_errors.load(Ordering::Relaxed),
        first_error,
        elapsed,
        stopped_by,
    })
}

/// Serves connections until `done` is set and the listener is shut down.
fn serve(listener: &TcpListener, config: &Config, shared: &Shared, done: &AtomicBool) {
    let mut request = vec![0u8; config.request_bytes];
    let response = vec![b'r'; config.response_bytes];
    let mut drain = [0u8; 512];
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) if done.load(Ordering::SeqCst) => return,
            Err(error) => {
                shared.error(&shared.server_errors, "accept", &error);
                thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let result = (|| -> io::Result<()> {
            let mut stream = stream;
            stream.set_read_timeout(Some(config.timeout))?;
            stream.set_write_timeout(Some(config.timeout))?;
            stream.set_nodelay(true)?;
            stream.read_exact(&mut request)?;
            stream.write_all(&response)?;
            // The client closes first: wait for its FIN, then close ours.
            while stream.read(&mut drain)? > 0 {}
            Ok(())
        })();
        if let Err(error) = result {
            shared.error(&shared.server_errors, "server", &error);
        }
    }
}

/// One client thread's loop.
fn client(
    server: SocketAddr,
    config: &Config,
    shared: &Shared,
    stop: &AtomicBool,
    deadline: Instant,
) {
    let request = vec![b'q'; config.request_bytes];
    let mut response = vec![0u8; config.response_bytes];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if shared.started.fetch_add(1, Ordering::Relaxed) >= config.max_connections {
            return;
        }
        let result = (|| -> io::Result<()> {
            let mut stream = TcpStream::connect_timeout(&server, config.timeout)?;
            stream.set_read_timeout(Some(config.timeout))?;
            stream.set_write_timeout(Some(config.timeout))?;
            stream.set_nodelay(true)?;
            stream.write_all(&request)?;
            stream.read_exact(&mut response)?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                shared.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                shared.error(&shared.client_errors, "client", &error);
                // Do not spin on a persistent failure (ports exhausted, for example).
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Wakes threads blocked in `accept()` on `listener`: on Linux, shutting a listening socket
/// down makes `accept()` fail with `EINVAL`.
fn wake_acceptors(listener: &TcpListener) {
    // SAFETY: the fd is a valid, open socket owned by `listener` for the whole call.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
}
