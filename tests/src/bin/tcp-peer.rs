//! One end of a test TCP session, run as its own process so that tests can check which
//! process the agent attributes each session to. It names itself `peer-server` or
//! `peer-client` (its `comm`), binds before connecting so that its local port is known even
//! when the connection fails, prints what the test needs on stdout, and exits 0 when the
//! scenario ran as planned.
//!
//! ```text
//! tcp-peer server IP SCENARIO [LINGER_MS]
//!                                      prints "PORT <port>", serves one connection, then
//!                                      stays alive LINGER_MS (as a service would)
//! tcp-peer client IP PORT SCENARIO     prints "LOCAL <port>", runs the client side
//! ```
//!
//! Scenarios (client payload A, server payload B):
//! - `client-first`: A then B, the client closes first;
//! - `server-first`: A then B, the server closes first;
//! - `reset`: A, then the client aborts (SO_LINGER 0) once A is acknowledged and the server
//!   has read it: the server prints "READ" and the client waits for a line on its stdin,
//!   which the test writes then (otherwise the reset can close the server's socket before
//!   `accept()` returns, and no process owns it);
//! - `bulk`: 4 MiB then 3 MiB, the client closes first;
//! - `refused` (client only): connect to a port nobody listens on.

use std::{
    ffi::CString,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::FromRawFd,
    process::ExitCode,
    time::Duration,
};

use otel_agent_tests::{peer::payload, traffic::abort};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["server", ip, scenario] => server(parse_ip(ip), scenario),
        ["server", ip, scenario, linger_ms] => server(parse_ip(ip), scenario).map(|()| {
            std::thread::sleep(Duration::from_millis(linger_ms.parse().unwrap_or(0)));
        }),
        ["client", ip, port, scenario] => {
            client(parse_ip(ip), port.parse().expect("port"), scenario)
        }
        _ => Err("usage: tcp-peer server IP SCENARIO | tcp-peer client IP PORT SCENARIO".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tcp-peer: {error}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn parse_ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

fn set_comm(name: &str) {
    let name = CString::new(name).expect("no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

fn server(ip: IpAddr, scenario: &str) -> Result<()> {
    set_comm("peer-server");
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    println!("PORT {port}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let (mut stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    drop(listener);
    let (a, b) = payload(scenario).ok_or_else(|| format!("unknown scenario {scenario}"))?;
    read_exactly(&mut stream, a)?;
    if scenario == "reset" {
        println!("READ");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        // The client aborts: the next read fails with ECONNRESET (or sees EOF).
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
            other => return Err(format!("expected a reset, got {other:?}")),
        }
        return Ok(());
    }
    stream
        .write_all(&vec![b's'; b])
        .map_err(|e| format!("write: {e}"))?;
    if scenario == "server-first" {
        drop(stream);
    } else {
        read_eof(&mut stream)?;
        drop(stream);
    }
    Ok(())
}

fn client(ip: IpAddr, port: u16, scenario: &str) -> Result<()> {
    set_comm("peer-client");
    let stream = connect_bound(ip, port, scenario == "refused")?;
    let Some(mut stream) = stream else {
        return Ok(());
    };
    let (a, b) = payload(scenario).ok_or_else(|| format!("unknown scenario {scenario}"))?;
    stream
        .write_all(&vec![b'c'; a])
        .map_err(|e| format!("write: {e}"))?;
    if scenario == "reset" {
        std::io::stdin()
            .read_line(&mut String::new())
            .map_err(|e| format!("wait for the server to read: {e}"))?;
        return abort(stream).map_err(|e| format!("abort: {e}"));
    }
    read_exactly(&mut stream, b)?;
    if scenario == "server-first" {
        read_eof(&mut stream)?;
    }
    drop(stream);
    Ok(())
}

/// Binds to an ephemeral port (printed as `LOCAL <port>`), then connects. `Ok(None)` when a
/// refusal was expected and happened.
fn connect_bound(ip: IpAddr, port: u16, expect_refusal: bool) -> Result<Option<TcpStream>> {
    let domain = if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket creation; the fd is owned by a TcpStream right after.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let local = socket2_addr(SocketAddr::new(ip, 0));
    // SAFETY: `local` is a valid sockaddr of the given length.
    if unsafe { libc::bind(fd, local.0.as_ptr().cast(), local.1) } != 0 {
        return Err(format!("bind: {}", std::io::Error::last_os_error()));
    }
    let local_port = stream.local_addr().map_err(|e| e.to_string())?.port();
    println!("LOCAL {local_port}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let remote = socket2_addr(SocketAddr::new(ip, port));
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, remote.0.as_ptr().cast(), remote.1) };
    match (rc == 0, expect_refusal) {
        (true, false) => Ok(Some(stream)),
        (false, true) if std::io::Error::last_os_error().kind() == ErrorKind::ConnectionRefused => {
            Ok(None)
        }
        (true, true) => Err("connected, but a refusal was expected".into()),
        (false, _) => Err(format!("connect: {}", std::io::Error::last_os_error())),
    }
}

/// A socket address as raw `sockaddr_in`/`sockaddr_in6` bytes and its length.
fn socket2_addr(addr: SocketAddr) -> (Vec<u8>, libc::socklen_t) {
    match addr {
        SocketAddr::V4(v4) => {
            let raw = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            (
                as_bytes(&raw),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(v6) => {
            let raw = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            (
                as_bytes(&raw),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

fn as_bytes<T>(value: &T) -> Vec<u8> {
    // SAFETY: reading the bytes of a plain C struct.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

fn read_exactly(stream: &mut TcpStream, len: usize) -> Result<()> {
    let mut buffer = vec![0; len];
    stream
        .read_exact(&mut buffer)
        .map_err(|e| format!("read {len} bytes: {e}"))
}

fn read_eof(stream: &mut TcpStream) -> Result<()> {
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .map_err(|e| format!("read until EOF: {e}"))?;
    if rest.is_empty() {
        Ok(())
    } else {
        Err(format!("{} unexpected bytes before EOF", rest.len()))
    }
}
