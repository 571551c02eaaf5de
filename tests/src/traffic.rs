//! Real loopback TCP sessions with known byte counts, driven from one named thread of the
//! test process, with the timestamps the test needs to bracket what the probe reports.

use std::{
    io::{self, ErrorKind, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant, SystemTime},
};

/// Which end closes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    Client,
    Server,
}

/// What the test did, and when (both clocks, so that both raw records and spans can be
/// bracketed).
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// `CLOCK_MONOTONIC` ns just before `connect()`.
    pub before_connect_ns: u64,
    /// `CLOCK_MONOTONIC` ns once both ends hold the established connection.
    pub after_connect_ns: u64,
    /// `CLOCK_MONOTONIC` ns just before the first `close()`.
    pub before_close_ns: u64,
    /// `CLOCK_MONOTONIC` ns just after the second `close()`.
    pub after_close_ns: u64,
    /// Wall clock just before `connect()`.
    pub before_connect_wall: SystemTime,
    /// Wall clock just after the second `close()`.
    pub after_close_wall: SystemTime,
}

/// Name of the thread that owns every socket of an exchange: the probe must report it as
/// the sessions' `comm`.
pub const THREAD_NAME: &str = "tcp-test-io";

/// Opens one TCP connection on `ip` (loopback), sends `client_bytes` from client to server
/// and `server_bytes` back, then closes: `closer` shuts down its sending side first, the
/// other end reads EOF and closes, then `closer` reads EOF and closes. Shutting down (not
/// closing) first keeps the first closer's socket open until the peer's FIN arrives, so the
/// FIN is always counted in its `bytes_received`. Runs in a thread named [`THREAD_NAME`].
pub fn exchange(ip: IpAddr, client_bytes: usize, server_bytes: usize, closer: Closer) -> Exchange {
    thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || run_exchange(ip, client_bytes, server_bytes, closer))
        .expect("spawn the traffic thread")
        .join()
        .expect("the traffic thread panicked")
}

fn run_exchange(ip: IpAddr, client_bytes: usize, server_bytes: usize, closer: Closer) -> Exchange {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind a loopback listener");
    let server_addr = listener.local_addr().expect("listener address");

    let before_connect_wall = SystemTime::now();
    let before_connect_ns = monotonic_ns();
    let mut client = TcpStream::connect(server_addr).expect("connect on loopback");
    let (mut server, _) = listener.accept().expect("accept");
    let after_connect_ns = monotonic_ns();
    let client_addr = client.local_addr().expect("client address");
    drop(listener);

    send_both_ways(&mut client, &mut server, client_bytes, server_bytes);
    let before_close_ns = monotonic_ns();
    close_in_order(client, server, closer);
    let after_close_ns = monotonic_ns();

    Exchange {
        client: client_addr,
        server: server_addr,
        before_connect_ns,
        after_connect_ns,
        before_close_ns,
        after_close_ns,
        before_connect_wall,
        after_close_wall: SystemTime::now(),
    }
}

/// Sends `client_bytes` from `client` to `server` and `server_bytes` back over a connected
/// pair, each read in full by the other end.
pub fn send_both_ways(
    client: &mut TcpStream,
    server: &mut TcpStream,
    client_bytes: usize,
    server_bytes: usize,
) {
    client
        .write_all(&vec![b'c'; client_bytes])
        .expect("client write");
    read_exactly(server, client_bytes);
    server
        .write_all(&vec![b's'; server_bytes])
        .expect("server write");
    read_exactly(client, server_bytes);
}

/// Closes a connected pair as an [`exchange`] does: `closer` shuts down its sending side
/// first, the other end reads EOF and closes, then `closer` reads EOF and closes.
pub fn close_in_order(client: TcpStream, server: TcpStream, closer: Closer) {
    let (mut first, mut second) = match closer {
        Closer::Client => (client, server),
        Closer::Server => (server, client),
    };
    first
        .shutdown(Shutdown::Write)
        .expect("shut down the first closer's side");
    read_eof(&mut second);
    drop(second);
    read_eof(&mut first);
    drop(first);
}

/// Ends the connection of `client` with a reset: `client_bytes` to `server`, read there,
/// then, once the client's send queue is empty (every byte acknowledged, so that both ends
/// count them), the client closes with `SO_LINGER` 0, which sends an RST; the server's next
/// read sees it.
pub fn reset(mut client: TcpStream, mut server: TcpStream, client_bytes: usize) {
    client
        .write_all(&vec![b'c'; client_bytes])
        .expect("client write");
    read_exactly(&mut server, client_bytes);
    abort(client).expect("abort the client");
    let mut byte = [0_u8; 1];
    match server.read(&mut byte) {
        Ok(0) => {}
        Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected a reset, got {other:?}"),
    }
}

/// Closes `stream` with a reset (`SO_LINGER` 0) once every byte written to it was
/// acknowledged (its send queue, `SIOCOUTQ`, is empty; at most 5 s).
pub fn abort(stream: TcpStream) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut unacked: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int.
        if unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &raw mut unacked) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if unacked == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("{unacked} bytes still unacknowledged after 5 s"),
            ));
        }
        thread::sleep(Duration::from_millis(1));
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a valid `linger` of the right size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    drop(stream);
    Ok(())
}

fn read_eof(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read until EOF");
    assert!(
        rest.is_empty(),
        "unexpected {} bytes before EOF",
        rest.len()
    );
}

fn read_exactly(stream: &mut TcpStream, len: usize) {
    let mut buffer = vec![0; len];
    stream
        .read_exact(&mut buffer)
        .expect("read the peer's bytes");
}

/// `CLOCK_MONOTONIC` in ns, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    u64::try_from(otel_agent::clock::read_ns(libc::CLOCK_MONOTONIC)).expect("monotonic time")
}
