//! A TCP front that stands between the agent and a receiver and injects the transport
//! faults a collector's network can have, one connection at a time: it reads a request
//! and closes the connection without an answer, resets it, or never answers; or it
//! forwards the connection, bytes as they are, to another receiver (a TLS one for a
//! plaintext agent, or the reverse: a TLS/plaintext mismatch). The connections after the
//! planned faults are forwarded to the real receiver, so that a test sees the spans arrive
//! once the fault clears.

use std::{
    collections::VecDeque,
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

/// What the front does with one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Reads the request, then closes the connection (FIN) without answering.
    Close,
    /// Reads the request, then resets the connection (RST).
    Reset,
    /// Reads the request and never answers; closes the connection once the agent gives up
    /// (it sends anything more or closes its side), at most after 30 s.
    Silent,
    /// Forwards the connection to this address instead of the receiver.
    ForwardTo(SocketAddr),
}

/// A running front on a loopback port; stops accepting when dropped.
pub struct Front {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

/// How long a request may pause before the front takes it as complete.
const IDLE: Duration = Duration::from_millis(300);

impl Front {
    /// Starts a front whose first connections meet `faults`, in order, and whose next
    /// ones are forwarded to `receiver`.
    pub fn start(faults: &[Fault], receiver: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the front");
        Self::serve(listener, faults, receiver)
    }

    /// Like [`start`](Self::start), on a port given (one nobody listened on until now, for
    /// an agent that found the port refusing connections).
    pub fn start_on(addr: SocketAddr, faults: &[Fault], receiver: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).expect("bind the front on its port");
        Self::serve(listener, faults, receiver)
    }

    fn serve(listener: TcpListener, faults: &[Fault], receiver: SocketAddr) -> Self {
        let addr = listener.local_addr().expect("front address");
        listener.set_nonblocking(true).expect("non-blocking accept");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let plan = Arc::new(Mutex::new(faults.iter().copied().collect::<VecDeque<_>>()));
        {
            let stop = stop.clone();
            let accepted = accepted.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            let fault = plan.lock().expect("plan").pop_front();
                            std::thread::spawn(move || handle(stream, fault, receiver));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Self {
            addr,
            stop,
            accepted,
        }
    }

    /// The URL to give the agent.
    pub fn url(&self, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://localhost:{}", self.addr.port())
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn handle(stream: TcpStream, fault: Option<Fault>, receiver: SocketAddr) {
    let _ = stream.set_nodelay(true);
    match fault {
        None => forward(stream, receiver),
        Some(Fault::ForwardTo(other)) => forward(stream, other),
        Some(Fault::Close) => {
            read_request(&stream);
            let _ = stream.shutdown(Shutdown::Both);
        }
        Some(Fault::Reset) => {
            read_request(&stream);
            reset(stream);
        }
        Some(Fault::Silent) => {
            read_request(&stream);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let mut byte = [0u8; 1];
            let _ = (&stream).read(&mut byte);
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Reads until the agent has sent nothing for [`IDLE`] (its request is in).
fn read_request(mut stream: &TcpStream) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let mut buffer = [0u8; 16 * 1024];
    while matches!(stream.read(&mut buffer), Ok(n) if n > 0) {}
}

/// Closes with RST: a zero linger time discards what is unsent and resets the connection.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this function borrows, with a pointer to a linger
    // value that lives through the call and its exact size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    // Closing the socket with a zero linger resets the connection.
    drop(stream);
}

/// Copies bytes both ways between the agent and `to` until both sides are done.
fn forward(agent: TcpStream, to: SocketAddr) {
    let Ok(upstream) = TcpStream::connect(to) else {
        reset(agent);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let (Ok(agent_reader), Ok(upstream_writer)) = (agent.try_clone(), upstream.try_clone()) else {
        return;
    };
    let there = std::thread::spawn(move || copy(agent_reader, upstream_writer));
    copy(upstream, agent);
    let _ = there.join();
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
