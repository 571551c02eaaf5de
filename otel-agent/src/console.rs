//! tcplife's console output: a header, then one line per closed session with bcc tcplife's
//! default columns and units (`PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS`; KB are KiB
//! rounded down, MS the lifespan in milliseconds with two decimals).

use std::io::{self, Write};

use crate::session::Session;

/// The header line, as bcc tcplife prints it (`%-5s %-10.10s %s%-15s %-5s %-15s %-5s %5s %5s %s`).
pub const HEADER: &str =
    "PID   COMM       LADDR           LPORT RADDR           RPORT TX_KB RX_KB MS";

/// Writes tcplife lines to any writer.
pub struct Console<W> {
    out: W,
}

impl<W: Write> Console<W> {
    /// Writes the header and returns the console.
    pub fn start(mut out: W) -> io::Result<Self> {
        writeln!(out, "{HEADER}")?;
        out.flush()?;
        Ok(Self { out })
    }

    /// Writes one session's line (not flushed).
    pub fn write(&mut self, session: &Session) -> io::Result<()> {
        let (tx_kib, rx_kib) = session
            .bytes
            .map_or((0, 0), |bytes| (bytes.acked / 1024, bytes.received / 1024));
        let comm: String = session.comm.chars().take(10).collect();
        writeln!(
            self.out,
            "{:<5} {:<10} {:<15} {:<5} {:<15} {:<5} {:>5} {:>5} {:.2}",
            session.pid,
            comm,
            session.local.ip(),
            session.local.port(),
            session.remote.ip(),
            session.remote.port(),
            tx_kib,
            rx_kib,
            session.duration().as_nanos() as f64 / 1e6,
        )
    }

    /// Flushes what was written.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::{agent_start, client_record, clock};

    #[test]
    fn prints_the_header_and_tcplife_columns() {
        let mut record = client_record();
        record.comm = *b"a-very-long-comm";
        record.bytes_acked = 1_048_577;
        let session = Session::from_record(&record, clock(), agent_start()).unwrap();
        let mut console = Console::start(Vec::new()).unwrap();
        console.write(&session).unwrap();
        assert_eq!(
            String::from_utf8(console.out).unwrap(),
            format!(
                "{HEADER}\n777   a-very-lon 127.0.0.1       40000 127.0.0.1       8080   1024     2 1.50\n"
            )
        );
    }
}
