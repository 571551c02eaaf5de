//! The initial sequence numbers on the wire: an `AF_PACKET` capture of the SYNs and SYN-ACKs
//! on one interface, keyed by (client port, server port), to check what the agent derives
//! from them (`tests/tests/isn.rs`, `tests/tests/connection_trace.rs`).

use std::{
    collections::HashMap,
    ffi::CStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use otel_agent::isn::IsnPair;

/// `ETH_P_ALL`, `ETH_P_IP` and `ETH_P_IPV6` from `include/uapi/linux/if_ether.h`.
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// TCP header flag bits.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// What the wire showed of one connection: keyed by (client port, server port).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// Sequence number of the SYN.
    pub syn: Option<u32>,
    /// Sequence number of the SYN-ACK.
    pub syn_ack: Option<u32>,
    /// Payload bytes the SYN carried (TCP Fast Open).
    pub syn_payload: Option<usize>,
}

type Seen = Arc<Mutex<HashMap<(u16, u16), Handshake>>>;

/// An `AF_PACKET` socket on one interface and the thread that reads SYNs and SYN-ACKs from
/// it.
pub struct Capture {
    seen: Seen,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Capture {
    /// Captures on `lo` in the calling thread's network namespace.
    pub fn start() -> Self {
        Self::on(c"lo")
    }

    /// Captures on `interface` in the calling thread's network namespace. Opens the socket
    /// before returning, so every packet sent afterwards is captured.
    pub fn on(interface: &CStr) -> Self {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the name is a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(interface.as_ptr()) };
        assert_ne!(ifindex, 0, "{interface:?} has an index");
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the size given.
        let status = unsafe {
            libc::bind(
                fd,
                std::ptr::from_ref(&addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            status,
            0,
            "bind to {interface:?}: {}",
            std::io::Error::last_os_error()
        );
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        let rcvbuf: libc::c_int = 8 << 20;
        // SAFETY: each option value is valid for its size.
        unsafe {
            assert_eq!(
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    std::ptr::from_ref(&timeout).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                ),
                0
            );
            assert_eq!(
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    std::ptr::from_ref(&rcvbuf).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                ),
                0
            );
        }
        let seen = Seen::default();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                // Headers only: a longer packet is truncated, which is all the test needs.
                let mut buf = [0_u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: `buf` is valid for writes of its length.
                    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                    if let Ok(n) = usize::try_from(n)
                        && let Some((client, server, handshake)) = parse(&buf[..n.min(buf.len())])
                    {
                        let mut seen = seen.lock().unwrap();
                        let entry = seen.entry((client, server)).or_default();
                        entry.syn = entry.syn.or(handshake.syn);
                        entry.syn_ack = entry.syn_ack.or(handshake.syn_ack);
                        entry.syn_payload = entry.syn_payload.or(handshake.syn_payload);
                    }
                }
                // SAFETY: the thread owns `fd` and closes it once.
                unsafe { libc::close(fd) };
            })
        };
        Self {
            seen,
            stop,
            reader: Some(reader),
        }
    }

    /// The wire's (SYN seq, SYN-ACK seq) of the connection from `client` to `server`.
    pub fn pair(&self, client: u16, server: u16) -> IsnPair {
        self.handshake(client, server).0
    }

    /// The wire's (SYN seq, SYN-ACK seq) of the connection from `client` to `server`, and
    /// the SYN's payload length.
    pub fn handshake(&self, client: u16, server: u16) -> (IsnPair, usize) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let handshake = self.seen.lock().unwrap().get(&(client, server)).copied();
            if let Some(Handshake {
                syn: Some(syn),
                syn_ack: Some(syn_ack),
                syn_payload: Some(syn_payload),
            }) = handshake
            {
                return (
                    IsnPair {
                        client: syn,
                        server: syn_ack,
                    },
                    syn_payload,
                );
            }
            assert!(
                Instant::now() < deadline,
                "the capture saw the handshake of :{client} -> :{server}: {handshake:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }
}

/// A SYN or SYN-ACK in an Ethernet frame (as `lo` and veth frame them): (client port, server port,
/// what it tells).
fn parse(frame: &[u8]) -> Option<(u16, u16, Handshake)> {
    let u16_at = |b: &[u8], i: usize| Some(u16::from_be_bytes(b.get(i..i + 2)?.try_into().ok()?));
    let ethertype = u16_at(frame, 12)?;
    let ip = frame.get(14..)?;
    // The TCP segment and its length (header and payload), from the IP header.
    let (tcp, segment_len) = match ethertype {
        ETH_P_IP => {
            let header_len = usize::from(ip.first()? & 0x0f) * 4;
            (*ip.get(9)? == libc::IPPROTO_TCP as u8).then_some(())?;
            let total_len = usize::from(u16_at(ip, 2)?);
            (ip.get(header_len..)?, total_len.checked_sub(header_len)?)
        }
        // Loopback traffic carries no extension headers.
        ETH_P_IPV6 => {
            (*ip.get(6)? == libc::IPPROTO_TCP as u8).then_some(())?;
            (ip.get(40..)?, usize::from(u16_at(ip, 4)?))
        }
        _ => return None,
    };
    let payload = segment_len.checked_sub(usize::from(tcp.get(12)? >> 4) * 4)?;
    let (source, destination) = (u16_at(tcp, 0)?, u16_at(tcp, 2)?);
    let seq = u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?);
    let flags = *tcp.get(13)?;
    match (flags & TCP_SYN != 0, flags & TCP_ACK != 0) {
        (true, false) => Some((
            source,
            destination,
            Handshake {
                syn: Some(seq),
                syn_ack: None,
                syn_payload: Some(payload),
            },
        )),
        (true, true) => Some((
            destination,
            source,
            Handshake {
                syn: None,
                syn_ack: Some(seq),
                syn_payload: None,
            },
        )),
        _ => None,
    }
}
