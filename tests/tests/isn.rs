//! The connection identity against the wire: the (client ISN, server ISN) pair that each end
//! derives from the probe's record at close (`otel_agent::isn`) must be the sequence numbers
//! of the SYN and the SYN-ACK on `lo`, captured by an `AF_PACKET` socket, on both ends of
//! the test's own loopback connections: IPv4, IPv6, with several KB each way, with no data,
//! opened before the probe was attached; and, in network namespaces the test creates (their
//! own `net.ipv4` settings), TCP Fast Open, SYN cookies and a simultaneous open.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _},
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use common::{SessionRecord, states, tcp_state, user::Origin};
use otel_agent::{
    clock::WallClock,
    isn::{self, SeqCounters, Side},
    link_policy::LinkPolicy,
    probe::{Probe, ProbeOptions},
    session::Session,
};
use otel_agent_tests::{capture::Capture, netns::NetNs, require_root};

/// A connected pair on `ip`: (client, server).
fn connect(ip: IpAddr) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// Sends `client_bytes` one way and `server_bytes` back, then closes the client first and
/// the server once it has read the client's FIN. Returns (client port, server port).
fn exchange(
    mut client: TcpStream,
    mut server: TcpStream,
    client_bytes: usize,
    server_bytes: usize,
) -> (u16, u16) {
    let ports = (
        client.local_addr().unwrap().port(),
        server.local_addr().unwrap().port(),
    );
    let writer = std::thread::spawn(move || {
        client.write_all(&vec![b'c'; client_bytes]).unwrap();
        let mut back = vec![0; server_bytes];
        client.read_exact(&mut back).unwrap();
    });
    let mut got = vec![0; client_bytes];
    server.read_exact(&mut got).unwrap();
    server.write_all(&vec![b's'; server_bytes]).unwrap();
    writer.join().unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        server.read_to_end(&mut rest).unwrap(),
        0,
        "only the FIN left"
    );
    drop(server);
    ports
}

/// The probe's records of the connection `ports` = (client, server), in the network
/// namespace `netns` if given: (client end, server end), read until both arrive or two
/// seconds pass. A connection to itself has one record, returned as both.
fn records_for(
    ring: &mut RingBuf<MapData>,
    ports: (u16, u16),
    netns: Option<u32>,
) -> (SessionRecord, SessionRecord) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let (mut client, mut server) = (None, None);
    while Instant::now() < deadline && (client.is_none() || server.is_none()) {
        while let Some(item) = ring.next() {
            let record = SessionRecord::decode(&item).expect("every record decodes");
            if netns.is_some_and(|netns| record.netns != netns) {
                continue;
            }
            let seen = (record.local_port, record.remote_port);
            if seen == ports {
                client = Some(record);
            }
            if seen == (ports.1, ports.0) {
                server = Some(record);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (
        client.expect("the probe reported the client end"),
        server.expect("the probe reported the server end"),
    )
}

fn session(record: &SessionRecord) -> Session {
    Session::from_record(
        record,
        WallClock::sample(),
        SystemTime::now(),
        &LinkPolicy::All,
    )
    .expect("converts")
}

fn counters(record: &SessionRecord) -> SeqCounters {
    SeqCounters {
        snd_una: record.snd_una,
        bytes_acked: record.bytes_acked,
        rcv_nxt: record.rcv_nxt,
        bytes_received: record.bytes_received,
    }
}

fn attach() -> (Probe, RingBuf<MapData>) {
    require_root();
    let mut probe = Probe::attach(&ProbeOptions::default()).expect("attach the probe");
    assert!(
        probe.features.bytes && probe.features.payload,
        "this kernel has BTF: counters and sequence numbers are read: {:?}",
        probe.features
    );
    let ring = probe.take_events().expect("ring buffer");
    (probe, ring)
}

/// Both ends of a connection on `ip` carrying `client_bytes` and `server_bytes`, made while
/// the probe watches, derive the wire's pair.
fn check(ip: IpAddr, client_bytes: usize, server_bytes: usize) {
    let (_probe, mut ring) = attach();
    let capture = Capture::start();
    let (client, server) = connect(ip);
    let ports = exchange(client, server, client_bytes, server_bytes);
    let wire = capture.pair(ports.0, ports.1);
    let (client, server) = records_for(&mut ring, ports, None);
    let (client, server) = (session(&client), session(&server));
    assert_eq!(
        (client.origin, server.origin),
        (Origin::Active, Origin::Passive)
    );
    assert_eq!(
        client.isns,
        Some(wire),
        "the client end derives the wire's pair"
    );
    assert_eq!(
        server.isns,
        Some(wire),
        "the server end derives the wire's pair"
    );
}

#[test]
fn ipv4_connection_with_data_both_ways_derives_the_wire_isns_on_both_ends() {
    check(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_000, 9_000);
}

#[test]
fn ipv6_connection_with_data_both_ways_derives_the_wire_isns_on_both_ends() {
    check(IpAddr::V6(Ipv6Addr::LOCALHOST), 9_000, 40_000);
}

#[test]
fn ipv4_connection_without_data_derives_the_wire_isns_on_both_ends() {
    check(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, 0);
}

#[test]
fn ipv6_connection_without_data_derives_the_wire_isns_on_both_ends() {
    check(IpAddr::V6(Ipv6Addr::LOCALHOST), 0, 0);
}

/// A connection opened before the probe was attached: the record does not say which end
/// connected (origin unknown, birth not seen), so the session carries no pair; given the
/// side, which the test knows, the counters at close still give the wire's pair.
#[test]
fn connection_opened_before_the_probe_derives_the_wire_isns_given_its_side() {
    require_root();
    let capture = Capture::start();
    let (client, server) = connect(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (_probe, mut ring) = attach();
    let ports = exchange(client, server, 6_000, 7_000);
    let wire = capture.pair(ports.0, ports.1);
    let (client, server) = records_for(&mut ring, ports, None);
    for record in [&client, &server] {
        let session = session(record);
        assert!(!session.birth_known);
        assert_eq!(session.origin, Origin::Unknown);
        assert!(session.established);
        assert_eq!(session.isns, None, "the side is unknown");
    }
    assert_eq!(isn::derive(Side::Client, counters(&client)), wire);
    assert_eq!(isn::derive(Side::Server, counters(&server)), wire);
}

/// Runs `f` on a thread inside a network namespace the test creates, with `sysctls`
/// (per-namespace `net.ipv4` settings, as /proc/sys paths under `net/ipv4/`) set there:
/// nothing of the host changes, and the namespace goes when the test ends. Returns what `f`
/// returned and the namespace's inode.
fn in_netns<T: Send + 'static>(
    tag: &str,
    sysctls: &'static [(&str, &str)],
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, u32) {
    let netns = NetNs::create(tag);
    let result = netns.run_in(|| {
        for (name, value) in sysctls {
            // /proc/sys/net is the namespace of the task that opens it: this thread's.
            let file = format!("/proc/sys/net/ipv4/{name}");
            std::fs::write(&file, value).unwrap_or_else(|error| panic!("{file}: {error}"));
        }
        f()
    });
    (result, netns.inode())
}

/// A counter of `TcpExt` in this thread's network namespace (`/proc/thread-self/net`).
fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap();
    let mut lines = text.lines().filter(|line| line.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let index = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("TcpExt has {name}"));
    values
        .split_whitespace()
        .nth(index)
        .unwrap()
        .parse()
        .unwrap()
}

/// TCP Fast Open: the SYN carries data, which the SYN-ACK acknowledges. The connecting end's
/// `bytes_acked` counts it with the SYN; the accepting end's `bytes_received` counts it
/// (`tcp_fastopen_add_skb`): the same formulas hold.
#[test]
fn fast_open_with_data_in_the_syn_derives_the_wire_isns_on_both_ends() {
    const SYN_DATA: usize = 1_000;
    let (_probe, mut ring) = attach();
    // Client and server enabled, no cookie needed either way (0x1 | 0x2 | 0x4 | 0x200).
    let ((ports, wire, syn_payload), netns) =
        in_netns("isn-tfo", &[("tcp_fastopen", "519")], || {
            let capture = Capture::start();
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let queue: libc::c_int = 16;
            // SAFETY: a valid socket and an int option of its size.
            let status = unsafe {
                libc::setsockopt(
                    listener.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_FASTOPEN,
                    std::ptr::from_ref(&queue).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(status, 0, "TCP_FASTOPEN on the listener");
            let SocketAddr::V4(server_addr) = listener.local_addr().unwrap() else {
                unreachable!("bound to IPv4")
            };
            // SAFETY: plain socket(2); the result is checked and owned below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            assert!(fd >= 0);
            // SAFETY: `fd` is a new socket nothing else owns.
            let client = unsafe { TcpStream::from_raw_fd(fd) };
            // SAFETY: sockaddr_in is plain data; all zeros is a valid value.
            let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            to.sin_family = libc::AF_INET as libc::sa_family_t;
            to.sin_port = server_addr.port().to_be();
            to.sin_addr.s_addr = u32::from(*server_addr.ip()).to_be();
            let data = [b'f'; SYN_DATA];
            // SAFETY: `data` and `to` are valid for the lengths given.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_FASTOPEN,
                    std::ptr::from_ref(&to).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            assert_eq!(
                sent,
                SYN_DATA as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
            let (mut server, _) = listener.accept().unwrap();
            let mut got = [0; SYN_DATA];
            server.read_exact(&mut got).unwrap();
            let ports = exchange(client, server, 5_000, 5_000);
            let (wire, syn_payload) = capture.handshake(ports.0, ports.1);
            (ports, wire, syn_payload)
        });
    assert_eq!(syn_payload, SYN_DATA, "the data went in the SYN");
    let (client, server) = records_for(&mut ring, ports, Some(netns));
    assert_eq!(client.bytes_acked, (1 + SYN_DATA + 5_000 + 1) as u64);
    assert_eq!(server.bytes_received, (SYN_DATA + 5_000 + 1) as u64);
    assert_eq!(session(&client).isns, Some(wire), "the client end");
    assert_eq!(session(&server).isns, Some(wire), "the server end");
}

/// SYN cookies (always sent with `tcp_syncookies` = 2): the accepted socket is made from the
/// cookie by the same `tcp_create_openreq_child`: the same formulas hold.
#[test]
fn syn_cookies_derive_the_wire_isns_on_both_ends() {
    let (_probe, mut ring) = attach();
    let ((ports, wire, cookies), netns) =
        in_netns("isn-cookies", &[("tcp_syncookies", "2")], || {
            let capture = Capture::start();
            let before = tcp_ext("SyncookiesSent");
            let (client, server) = connect(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let cookies = tcp_ext("SyncookiesSent") - before;
            let ports = exchange(client, server, 3_000, 3_000);
            (ports, capture.pair(ports.0, ports.1), cookies)
        });
    assert_eq!(cookies, 1, "the SYN-ACK carried a cookie");
    let (client, server) = records_for(&mut ring, ports, Some(netns));
    assert_eq!(session(&client).isns, Some(wire), "the client end");
    assert_eq!(session(&server).isns, Some(wire), "the server end");
}

/// Simultaneous open, as a socket connected to its own address makes it: the socket in
/// `SYN_SENT` receives a SYN, enters `SYN_RECV` and answers with a SYN-ACK of the same ISN.
/// Every end that opens this way connected: none is the server, so the session carries no
/// pair; the client formula still gives the wire's (SYN seq, SYN-ACK seq).
#[test]
fn simultaneous_open_has_no_pair_and_the_client_formula_matches_the_wire() {
    let (_probe, mut ring) = attach();
    let ((port, wire), netns) = in_netns("isn-simopen", &[], || {
        let capture = Capture::start();
        // SAFETY: plain socket(2); the result is checked and owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a new socket nothing else owns.
        let mut stream = unsafe { TcpStream::from_raw_fd(fd) };
        // SAFETY: sockaddr_in is plain data; all zeros is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `addr` is valid for `len` bytes in each call.
        unsafe {
            assert_eq!(libc::bind(fd, std::ptr::from_ref(&addr).cast(), len), 0);
            assert_eq!(
                libc::getsockname(fd, std::ptr::from_mut(&mut addr).cast(), &mut len),
                0
            );
            assert_eq!(
                libc::connect(fd, std::ptr::from_ref(&addr).cast(), len),
                0,
                "connect to itself: {}",
                std::io::Error::last_os_error()
            );
        }
        let port = u16::from_be(addr.sin_port);
        stream.write_all(&[b'x'; 100]).unwrap();
        let mut back = [0; 100];
        stream.read_exact(&mut back).unwrap();
        drop(stream);
        (port, capture.pair(port, port))
    });
    assert_eq!(wire.client, wire.server, "one socket, one ISN");
    let (record, _) = records_for(&mut ring, (port, port), Some(netns));
    assert_ne!(
        record.states & states::bit(tcp_state::SYN_RECV),
        0,
        "SYN_SENT -> SYN_RECV was seen"
    );
    let session = session(&record);
    assert_eq!(session.origin, Origin::Active);
    assert!(session.established);
    assert_eq!(session.isns, None, "no end is the server");
    assert_eq!(isn::derive(Side::Client, counters(&record)), wire);
}
