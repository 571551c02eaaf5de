//! tcplife's console output, column for column as bcc's `tcplife` prints it: the default
//! 80-column layout (`PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS`), `-w` (wide, fits
//! IPv6, adds the IP version column), `-s` (CSV, which wins over `-w`), `-T` (a TIME column,
//! HH:MM:SS) and `-t` (a TIME(s) column, seconds since the first session printed). KB are
//! KiB rounded down; MS is the lifespan in milliseconds with two decimals. The time columns
//! use the session's close, where tcplife uses the time it prints.

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use crate::session::Session;

/// Which of tcplife's output switches are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleFormat {
    /// `-T`
    pub time: bool,
    /// `-t`
    pub timestamp: bool,
    /// `-w`
    pub wide: bool,
    /// `-s`
    pub csv: bool,
}

/// Turns a wall-clock time into the (hour, minute, second) the TIME column shows.
pub type ClockFace = fn(SystemTime) -> (u32, u32, u32);

/// Writes tcplife lines to any writer.
pub struct Console<W> {
    out: W,
    format: ConsoleFormat,
    clock_face: ClockFace,
    /// The close of the first session printed, origin of the TIME(s) column.
    first_end: Option<SystemTime>,
    line: String,
}

impl<W: Write> Console<W> {
    /// Writes the header and returns the console. The TIME column shows local time.
    pub fn start(out: W, format: ConsoleFormat) -> io::Result<Self> {
        Self::with_clock_face(out, format, local_time)
    }

    /// As [`Console::start`], with the TIME column computed by `clock_face`.
    pub fn with_clock_face(
        mut out: W,
        format: ConsoleFormat,
        clock_face: ClockFace,
    ) -> io::Result<Self> {
        writeln!(out, "{}", header(format))?;
        out.flush()?;
        Ok(Self {
            out,
            format,
            clock_face,
            first_end: None,
            line: String::with_capacity(160),
        })
    }

    /// Writes one session's line (not flushed).
    pub fn write(&mut self, session: &Session) -> io::Result<()> {
        self.line.clear();
        let format = self.format;
        let sep = if format.csv { "," } else { " " };
        if format.time {
            let (h, m, s) = (self.clock_face)(session.end);
            let time = format!("{h:02}:{m:02}:{s:02}");
            if format.csv {
                let _ = write!(self.line, "{time}{sep}");
            } else {
                let _ = write!(self.line, "{time:<8}{sep}");
            }
        }
        if format.timestamp {
            let first = *self.first_end.get_or_insert(session.end);
            let seconds = session
                .end
                .duration_since(first)
                .unwrap_or(Duration::ZERO)
                .as_secs_f64();
            if format.csv {
                let _ = write!(self.line, "{seconds:.6}{sep}");
            } else {
                let _ = write!(self.line, "{seconds:<9.6}{sep}");
            }
        }
        let (tx_kib, rx_kib) = session
            .bytes
            .map_or((0, 0), |bytes| (bytes.acked / 1024, bytes.received / 1024));
        // tcplife divides whole microseconds by 1000.
        let ms = (session.duration().as_micros() as f64) / 1000.0;
        let version = match session.local.ip() {
            IpAddr::V4(_) => "4",
            IpAddr::V6(_) => "6",
        };
        let (pid, lport, rport) = (session.pid, session.local.port(), session.remote.port());
        let (laddr, raddr) = (session.local.ip(), session.remote.ip());
        let _ = if format.csv {
            write!(
                self.line,
                "{pid},{},{version},{laddr},{lport},{raddr},{rport},{tx_kib},{rx_kib},{ms:.2}",
                session.comm
            )
        } else if format.wide {
            write!(
                self.line,
                "{pid:<5} {:<16} {version:<2} {:<26} {lport:<5} {:<26} {rport:<5} {tx_kib:>6} {rx_kib:>6} {ms:.2}",
                truncate(&session.comm, 16),
                laddr.to_string(),
                raddr.to_string(),
            )
        } else {
            write!(
                self.line,
                "{pid:<5} {:<10} {:<15} {lport:<5} {:<15} {rport:<5} {tx_kib:>5} {rx_kib:>5} {ms:.2}",
                truncate(&session.comm, 10),
                laddr.to_string(),
                raddr.to_string(),
            )
        };
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    /// Flushes what was written.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The header line for `format`.
fn header(format: ConsoleFormat) -> String {
    let mut header = String::new();
    if format.csv {
        if format.time {
            header.push_str("TIME,");
        }
        if format.timestamp {
            header.push_str("TIME(s),");
        }
        header.push_str("PID,COMM,IP,LADDR,LPORT,RADDR,RPORT,TX_KB,RX_KB,MS");
        return header;
    }
    if format.time {
        let _ = write!(header, "{:<8} ", "TIME");
    }
    if format.timestamp {
        let _ = write!(header, "{:<9} ", "TIME(s)");
    }
    if format.wide {
        let _ = write!(
            header,
            "{:<5} {:<16} {:<2} {:<26} {:<5} {:<26} {:<5} {:>6} {:>6} MS",
            "PID", "COMM", "IP", "LADDR", "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB"
        );
    } else {
        let _ = write!(
            header,
            "{:<5} {:<10} {:<15} {:<5} {:<15} {:<5} {:>5} {:>5} MS",
            "PID", "COMM", "LADDR", "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB"
        );
    }
    header
}

/// At most `chars` characters of `text` (printf's `%-N.Ns` precision).
fn truncate(text: &str, chars: usize) -> &str {
    text.char_indices()
        .nth(chars)
        .map_or(text, |(end, _)| &text[..end])
}

/// The local time of day of `time`.
fn local_time(time: SystemTime) -> (u32, u32, u32) {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: `tm` is written by localtime_r before it is read.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::localtime_r(&seconds, &mut tm) }.is_null() {
        return utc_time(time);
    }
    (tm.tm_hour as u32, tm.tm_min as u32, tm.tm_sec as u32)
}

/// The UTC time of day of `time`.
pub fn utc_time(time: SystemTime) -> (u32, u32, u32) {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let of_day = seconds % 86_400;
    (
        (of_day / 3600) as u32,
        (of_day / 60 % 60) as u32,
        (of_day % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{ByteCounts, tests::client_session};

    /// Two sessions: the IPv4 client from the session tests (12,347 / 2,049 bytes,
    /// 1.5 ms), and an IPv6 session with a long comm that closes 2.25 s later and lasted
    /// 251.5 ms.
    fn sessions() -> [Session; 2] {
        let first = client_session();
        let mut second = client_session();
        second.pid = 31_337;
        second.comm = "a-very-long-comm".to_owned();
        second.local = "[2001:db8::1]:443".parse().unwrap();
        second.remote = "[2001:db8::7]:51234".parse().unwrap();
        second.bytes = Some(ByteCounts {
            acked: 1_048_577,
            received: 1023,
        });
        second.start = first.start + Duration::from_millis(2_000);
        second.end = first.end + Duration::from_millis(2_250);
        [first, second]
    }

    fn render(format: ConsoleFormat) -> String {
        let mut console = Console::with_clock_face(Vec::new(), format, utc_time).unwrap();
        for session in sessions() {
            console.write(&session).unwrap();
        }
        String::from_utf8(console.out).unwrap()
    }

    fn format(flags: &str) -> ConsoleFormat {
        ConsoleFormat {
            time: flags.contains('T'),
            timestamp: flags.contains('t'),
            wide: flags.contains('w'),
            csv: flags.contains('s'),
        }
    }

    #[test]
    fn golden_default() {
        assert_eq!(
            render(format("")),
            "\
PID   COMM       LADDR           LPORT RADDR           RPORT TX_KB RX_KB MS
777   curl       127.0.0.1       40000 127.0.0.1       8080     12     2 1.50
31337 a-very-lon 2001:db8::1     443   2001:db8::7     51234  1024     0 251.50
"
        );
    }

    #[test]
    fn golden_wide() {
        assert_eq!(
            render(format("w")),
            "\
PID   COMM             IP LADDR                      LPORT RADDR                      RPORT  TX_KB  RX_KB MS
777   curl             4  127.0.0.1                  40000 127.0.0.1                  8080      12      2 1.50
31337 a-very-long-comm 6  2001:db8::1                443   2001:db8::7                51234   1024      0 251.50
"
        );
    }

    #[test]
    fn golden_csv() {
        assert_eq!(
            render(format("s")),
            "\
PID,COMM,IP,LADDR,LPORT,RADDR,RPORT,TX_KB,RX_KB,MS
777,curl,4,127.0.0.1,40000,127.0.0.1,8080,12,2,1.50
31337,a-very-long-comm,6,2001:db8::1,443,2001:db8::7,51234,1024,0,251.50
"
        );
    }

    #[test]
    fn golden_time_and_timestamp() {
        // The first session closes at 1_000_000_000.0115 s since the epoch: 01:46:40 UTC.
        assert_eq!(
            render(format("Tt")),
            "\
TIME     TIME(s)   PID   COMM       LADDR           LPORT RADDR           RPORT TX_KB RX_KB MS
01:46:40 0.000000  777   curl       127.0.0.1       40000 127.0.0.1       8080     12     2 1.50
01:46:42 2.250000  31337 a-very-lon 2001:db8::1     443   2001:db8::7     51234  1024     0 251.50
"
        );
        assert_eq!(
            render(format("T")).lines().nth(1).unwrap(),
            "01:46:40 777   curl       127.0.0.1       40000 127.0.0.1       8080     12     2 1.50"
        );
        assert_eq!(
            render(format("t")).lines().nth(2).unwrap(),
            "2.250000  31337 a-very-lon 2001:db8::1     443   2001:db8::7     51234  1024     0 251.50"
        );
    }

    #[test]
    fn golden_csv_with_time_columns_and_wide_ignored() {
        assert_eq!(
            render(format("Ttws")),
            "\
TIME,TIME(s),PID,COMM,IP,LADDR,LPORT,RADDR,RPORT,TX_KB,RX_KB,MS
01:46:40,0.000000,777,curl,4,127.0.0.1,40000,127.0.0.1,8080,12,2,1.50
01:46:42,2.250000,31337,a-very-long-comm,6,2001:db8::1,443,2001:db8::7,51234,1024,0,251.50
"
        );
    }

    #[test]
    fn golden_wide_with_time() {
        assert_eq!(
            render(format("Tw")).lines().next().unwrap(),
            "TIME     PID   COMM             IP LADDR                      LPORT RADDR                      RPORT  TX_KB  RX_KB MS"
        );
    }
}
