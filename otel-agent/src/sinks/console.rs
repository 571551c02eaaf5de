//! tcplife's console output, column for column as bcc's `tcplife` prints it: the default
//! 80-column layout (`PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS`), `-w` (wide, fits
//! IPv6, adds the IP version column), `-s` (CSV, which wins over `-w`), `-T` (a TIME column,
//! HH:MM:SS) and `-t` (a TIME(s) column, seconds since the first session printed). KB are
//! KiB rounded down; MS is the lifespan in milliseconds with two decimals. The time columns
//! use the session's close, where tcplife uses the time it prints.

//!
//! A task name is the one column a process controls (any process sets its own with
//! `prctl(PR_SET_NAME)`; control characters already arrive as `?`): it can never add a
//! column or a line. In `-s` it is quoted as RFC 4180 says when it holds a comma or a double
//! quote (`"x,4,6.6.6.6,22"`; a quote is doubled). In the fixed-width layouts each
//! whitespace character in it (Unicode `White_Space`: space, no-break space, line
//! separators...) is printed as `_`, so that splitting a line on whitespace always gives
//! the same columns. In every mode the Unicode bidirectional controls (U+061C, U+200E,
//! U+200F, U+202A to U+202E, U+2066 to U+2069), which make a terminal show the rest of the
//! line reordered, are printed as `?`.

use std::{
    borrow::Cow,
    fmt::Write as _,
    io,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    local::{Lines, Render},
    session::Session,
};

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

/// Renders tcplife lines (on the console output's thread, [`crate::local`]).
pub struct Console {
    format: ConsoleFormat,
    clock_face: ClockFace,
    /// The close of the first session printed, origin of the TIME(s) column.
    first_end: Option<SystemTime>,
    line: String,
}

impl Console {
    /// A console whose TIME column shows local time.
    pub fn new(format: ConsoleFormat) -> Self {
        Self::with_clock_face(format, local_time)
    }

    /// As [`Console::new`], with the TIME column computed by `clock_face`.
    pub fn with_clock_face(format: ConsoleFormat, clock_face: ClockFace) -> Self {
        Self {
            format,
            clock_face,
            first_end: None,
            line: String::with_capacity(160),
        }
    }

    /// The header line (without its newline).
    pub fn header(&self) -> String {
        header(self.format)
    }

    /// The line of one session (without its newline).
    pub fn line(&mut self, session: &Session) -> &str {
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
                csv_field(&without_bidi_controls(&session.comm))
            )
        } else if format.wide {
            write!(
                self.line,
                "{pid:<5} {:<16} {version:<2} {:<26} {lport:<5} {:<26} {rport:<5} {tx_kib:>6} {rx_kib:>6} {ms:.2}",
                truncate(&column_text(&session.comm), 16),
                laddr.to_string(),
                raddr.to_string(),
            )
        } else {
            write!(
                self.line,
                "{pid:<5} {:<10} {:<15} {lport:<5} {:<15} {rport:<5} {tx_kib:>5} {rx_kib:>5} {ms:.2}",
                truncate(&column_text(&session.comm), 10),
                laddr.to_string(),
                raddr.to_string(),
            )
        };
        &self.line
    }
}

impl Render for Console {
    fn render(&mut self, sessions: &[Arc<Session>], lines: &mut Lines) -> io::Result<()> {
        for session in sessions {
            let line = self.line(session);
            lines.buffer().extend_from_slice(line.as_bytes());
            lines.end_line(1);
        }
        Ok(())
    }
}

/// `text` as one RFC 4180 field: quoted, with its quotes doubled, when it holds a comma, a
/// double quote or a line break.
fn csv_field(text: &str) -> Cow<'_, str> {
    if text.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", text.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(text)
    }
}

/// Whether `c` is a Unicode bidirectional control.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with its bidirectional controls as `?`.
fn without_bidi_controls(text: &str) -> Cow<'_, str> {
    if text.contains(is_bidi_control) {
        Cow::Owned(text.replace(is_bidi_control, "?"))
    } else {
        Cow::Borrowed(text)
    }
}

/// `text` as one column of a fixed-width layout: whitespace as `_`, bidirectional controls
/// as `?`.
fn column_text(text: &str) -> Cow<'_, str> {
    if text.contains(|c: char| c.is_whitespace() || is_bidi_control(c)) {
        Cow::Owned(
            text.chars()
                .map(|c| match c {
                    c if c.is_whitespace() => '_',
                    c if is_bidi_control(c) => '?',
                    c => c,
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
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
        render_sessions(format, &sessions())
    }

    /// The header and the lines of `sessions`, as the console output writes them.
    fn render_sessions(format: ConsoleFormat, sessions: &[Session]) -> String {
        let mut console = Console::with_clock_face(format, utc_time);
        let mut lines = Lines::default();
        lines
            .buffer()
            .extend_from_slice(console.header().as_bytes());
        lines.end_line(0);
        let sessions: Vec<_> = sessions.iter().cloned().map(Arc::new).collect();
        console.render(&sessions, &mut lines).unwrap();
        String::from_utf8(lines.into_bytes()).unwrap()
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

    /// The client session, owned by a task with the name `comm`.
    fn named(comm: &str) -> Session {
        let mut session = sessions()[0].clone();
        comm.clone_into(&mut session.comm);
        session
    }

    #[test]
    fn golden_csv_quotes_a_task_name_that_would_add_columns() {
        let sessions = [
            named("x,4,6.6.6.6,22"),
            named("say \"hi\""),
            named("a\"b,c"),
        ];
        assert_eq!(
            render_sessions(format("s"), &sessions),
            "\
PID,COMM,IP,LADDR,LPORT,RADDR,RPORT,TX_KB,RX_KB,MS
777,\"x,4,6.6.6.6,22\",4,127.0.0.1,40000,127.0.0.1,8080,12,2,1.50
777,\"say \"\"hi\"\"\",4,127.0.0.1,40000,127.0.0.1,8080,12,2,1.50
777,\"a\"\"b,c\",4,127.0.0.1,40000,127.0.0.1,8080,12,2,1.50
"
        );
    }

    #[test]
    fn golden_fixed_width_prints_whitespace_in_a_task_name_as_underscores() {
        // ASCII space, no-break space, ideographic space, line separator; then bidi
        // overrides.
        let sessions = [
            named("x 4 6.6.6.6 22"),
            named("a\u{a0}b\u{3000}c\u{2028}d"),
            named("\u{202e}evil\u{2066}"),
        ];
        assert_eq!(
            render_sessions(format(""), &sessions),
            "\
PID   COMM       LADDR           LPORT RADDR           RPORT TX_KB RX_KB MS
777   x_4_6.6.6. 127.0.0.1       40000 127.0.0.1       8080     12     2 1.50
777   a_b_c_d    127.0.0.1       40000 127.0.0.1       8080     12     2 1.50
777   ?evil?     127.0.0.1       40000 127.0.0.1       8080     12     2 1.50
"
        );
        assert_eq!(
            render_sessions(format("w"), &sessions[..1])
                .lines()
                .nth(1)
                .unwrap(),
            "777   x_4_6.6.6.6_22   4  127.0.0.1                  40000 127.0.0.1                  8080      12      2 1.50"
        );
        // Every line splits into the header's nine columns.
        for flags in ["", "w", "T"] {
            let text = render_sessions(format(flags), &sessions);
            let mut lines = text.lines().map(|line| line.split_whitespace().count());
            let columns = lines.next().unwrap();
            assert!(lines.all(|n| n == columns), "{flags}: {text}");
        }
        assert_eq!(
            render_sessions(format("s"), &sessions[2..])
                .lines()
                .nth(1)
                .unwrap(),
            "777,?evil?,4,127.0.0.1,40000,127.0.0.1,8080,12,2,1.50"
        );
    }
}
