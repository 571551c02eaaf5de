//! The disk spool (`--spool-dir`): encoded export requests the collector cannot take now,
//! one file each, appended and removed oldest first, within `--spool-max-bytes` (the oldest
//! are dropped, and counted, to make room). It only stores and counts; when a request goes
//! to disk or comes back is the export worker's decision ([`super::queue`]).
//!
//! A file holds one encoded OTLP `ExportTraceServiceRequest` (protobuf, uncompressed: the
//! same bytes for gRPC and HTTP/protobuf, compressed by the transport at send time, so the
//! agent that delivers it may use another protocol or compression than the one that wrote
//! it). Its name is `<sequence, 20 digits>-<sessions>.<state>`: the sequence orders the
//! files across agents, the session count is known even when the content is not, and the
//! state is `req` (never sent), `sending` (an attempt whose outcome is unknown began: it
//! may reach the collector twice) or `tmp` (being written). Its content is a header of
//! [`HEADER_LEN`] bytes (the magic `OTASPOOL`, the body's format, its length and CRC-32,
//! little-endian) and the body. A file is written under its `tmp` name, synced, renamed
//! and the directory synced, so that a crash or a power loss leaves at worst a `tmp` file
//! or a file whose length or checksum is wrong: the next start (or the read before
//! sending) removes it and counts its sessions (`lost_spool_torn`).

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    sync::Arc,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;

use crate::log_text::Escaped;

/// The first bytes of every spool file.
const MAGIC: &[u8; 8] = b"OTASPOOL";
/// Magic, format (u32), body length (u64), CRC-32 of the body (u32).
pub const HEADER_LEN: usize = 24;
/// The only body format: an OTLP `ExportTraceServiceRequest`, protobuf, uncompressed.
const FORMAT_OTLP_TRACES_PROTOBUF: u32 = 1;
/// The lock file that keeps a second agent out of the directory.
const LOCK_FILE: &str = "lock";

/// Where the spool is and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    /// Bytes of files (headers included) at most.
    pub max_bytes: u64,
}

/// The spool directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot use the spool directory {} (--spool-dir / OTEL_AGENT_SPOOL_DIR): {what}: {error}; \
     {hint}",
    Escaped(&.dir.display().to_string())
)]
pub struct SpoolError {
    pub dir: PathBuf,
    what: &'static str,
    error: io::Error,
    hint: &'static str,
}

/// The spool's counters, in sessions (requests and bytes where named so).
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Sessions in the files found at start (left by an earlier agent), torn ones included.
    pub found: AtomicU64,
    /// Sessions this agent wrote to the spool.
    pub spooled: AtomicU64,
    /// Sessions of spooled requests the collector accepted (part of `exported`).
    pub delivered: AtomicU64,
    /// Sessions delivered from files whose earlier attempt may have reached the collector
    /// (in flight when an agent died or the shutdown deadline passed): possible duplicates.
    pub maybe_duplicated: AtomicU64,
    /// Sessions of the oldest files, dropped to make room (or of a request larger than the
    /// whole spool).
    pub lost_full: AtomicU64,
    /// Sessions of files found torn or unreadable (a crash or power loss while writing,
    /// a truncated or corrupted file, a format this agent does not know).
    pub lost_torn: AtomicU64,
    /// Sessions, requests and bytes in the spool now.
    pub sessions: AtomicU64,
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    /// Bytes this agent wrote (headers included): the write rate's numerator.
    pub written_bytes: AtomicU64,
}

impl SpoolStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The value of `counter` now.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A file's state, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Never sent.
    Ready,
    /// An attempt began whose outcome is unknown.
    Sending,
    /// Being written.
    Partial,
}

impl State {
    const fn suffix(self) -> &'static str {
        match self {
            Self::Ready => "req",
            Self::Sending => "sending",
            Self::Partial => "tmp",
        }
    }
}

/// The name of a file.
fn file_name(seq: u64, sessions: usize, state: State) -> String {
    format!("{seq:020}-{sessions}.{}", state.suffix())
}

/// The sequence, sessions and state a file name holds, if it is a spool file's.
fn parse_name(name: &str) -> Option<(u64, usize, State)> {
    let (stem, suffix) = name.split_once('.')?;
    let state = [State::Ready, State::Sending, State::Partial]
        .into_iter()
        .find(|state| state.suffix() == suffix)?;
    let (seq, sessions) = stem.split_once('-')?;
    if seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((seq.parse().ok()?, sessions.parse().ok()?, state))
}

/// The header of `body`.
pub fn header(body: &[u8]) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_OTLP_TRACES_PROTOBUF.to_le_bytes());
    header[12..20].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[20..].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    header
}

/// Why a file's content is not a whole request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Torn {
    #[error("shorter than its header ({0} bytes)")]
    NoHeader(u64),
    #[error("not a spool file (no OTASPOOL magic)")]
    Magic,
    #[error("body format {0}, which this agent does not know")]
    Format(u32),
    #[error("{actual} bytes, its header says {expected}")]
    Length { expected: u64, actual: u64 },
    #[error("the body's checksum does not match")]
    Checksum,
}

/// The expected file length from a header, checking magic and format.
fn expected_len(header: &[u8]) -> Result<u64, Torn> {
    if header.len() < HEADER_LEN {
        return Err(Torn::NoHeader(header.len() as u64));
    }
    if &header[..8] != MAGIC {
        return Err(Torn::Magic);
    }
    let format = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
    if format != FORMAT_OTLP_TRACES_PROTOBUF {
        return Err(Torn::Format(format));
    }
    let body = u64::from_le_bytes(header[12..20].try_into().unwrap_or_default());
    Ok(body.saturating_add(HEADER_LEN as u64))
}

/// The body of a whole file's content, checked.
pub fn decode(content: &[u8]) -> Result<&[u8], Torn> {
    let expected = expected_len(content)?;
    if expected != content.len() as u64 {
        return Err(Torn::Length {
            expected,
            actual: content.len() as u64,
        });
    }
    let body = &content[HEADER_LEN..];
    let crc = u32::from_le_bytes(content[20..24].try_into().unwrap_or_default());
    if crc32fast::hash(body) != crc {
        return Err(Torn::Checksum);
    }
    Ok(body)
}

/// One file in the spool.
#[derive(Debug)]
struct Entry {
    seq: u64,
    sessions: usize,
    bytes: u64,
    state: State,
    /// An attempt whose outcome nobody knows may have delivered it: found `sending` (an
    /// agent died while sending it) or cut short by the shutdown deadline. The attempts of
    /// this agent that failed do not count: retrying after them is what any exporter does.
    maybe_delivered: bool,
    /// Being sent now.
    claimed: bool,
}

/// A request read back for sending.
#[derive(Debug)]
pub struct Claimed {
    pub seq: u64,
    pub body: Bytes,
    pub sessions: usize,
    /// An earlier attempt may have reached the collector.
    pub maybe_delivered: bool,
}

/// The open spool: its directory (locked against a second agent) and its files, oldest
/// first.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Held (with its `flock`) while the agent runs.
    _lock: File,
    max_bytes: u64,
    next_seq: u64,
    entries: VecDeque<Entry>,
    stats: Arc<SpoolStats>,
}

impl Spool {
    /// Creates the directory if needed (mode 0700), locks it, and reads what an earlier
    /// agent left: removes torn files (counting their sessions) and, beyond `max_bytes`, the
    /// oldest; logs what it found.
    pub fn open(options: &SpoolOptions) -> Result<Self, SpoolError> {
        let dir = options.dir.clone();
        let fail = |what, hint| {
            let dir = dir.clone();
            move |error| SpoolError {
                dir,
                what,
                error,
                hint,
            }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(fail(
                "cannot create it",
                "check the path and that the agent may create it",
            ))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))
            .map_err(fail(
                "cannot create its lock file",
                "the directory must be writable by the agent's user",
            ))?;
        // SAFETY: `flock` on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(fail(
                "it is locked",
                "another otel-agent uses it; give each agent its own directory",
            )(io::Error::last_os_error()));
        }
        let listing = fs::read_dir(&dir).map_err(fail(
            "cannot list it",
            "the directory must be readable by the agent's user",
        ))?;
        let stats = Arc::new(SpoolStats::default());
        let mut spool = Self {
            dir,
            _lock: lock,
            max_bytes: options.max_bytes,
            next_seq: 0,
            entries: VecDeque::new(),
            stats,
        };
        let mut found = Vec::new();
        for item in listing.flatten() {
            let name = item.file_name();
            let Some((seq, sessions, state)) = name.to_str().and_then(parse_name) else {
                continue;
            };
            found.push((seq, sessions, state));
        }
        found.sort_unstable_by_key(|&(seq, ..)| seq);
        let mut torn_files = 0_u64;
        for (seq, sessions, state) in found {
            SpoolStats::add(&spool.stats.found, sessions as u64);
            spool.next_seq = spool.next_seq.max(seq + 1);
            let path = spool.path(seq, sessions, state);
            let checked = match state {
                State::Partial => Err("a write cut short".to_owned()),
                State::Ready | State::Sending => check_length(&path),
            };
            match checked {
                Ok(bytes) => spool.entries.push_back(Entry {
                    seq,
                    sessions,
                    bytes,
                    state,
                    maybe_delivered: state == State::Sending,
                    claimed: false,
                }),
                Err(reason) => {
                    torn_files += 1;
                    tracing::warn!(
                        file = %Escaped(&path.display().to_string()),
                        sessions,
                        reason = %Escaped(&reason),
                        "a torn spool file: removed, its sessions counted as lost_spool_torn"
                    );
                    spool.discard_file(&path);
                    SpoolStats::add(&spool.stats.lost_torn, sessions as u64);
                }
            }
        }
        spool.publish();
        spool.make_room(0);
        tracing::info!(
            dir = %Escaped(&spool.dir.display().to_string()),
            requests = spool.entries.len(),
            sessions = SpoolStats::get(&spool.stats.sessions),
            bytes = SpoolStats::get(&spool.stats.bytes),
            torn_files,
            lost_spool_torn = SpoolStats::get(&spool.stats.lost_torn),
            lost_spool_full = SpoolStats::get(&spool.stats.lost_full),
            max_bytes = spool.max_bytes,
            "spool found: these requests are delivered, oldest first, once the collector \
             accepts spans"
        );
        Ok(spool)
    }

    /// The counters, shared with the accounting.
    pub fn stats(&self) -> Arc<SpoolStats> {
        self.stats.clone()
    }

    fn path(&self, seq: u64, sessions: usize, state: State) -> PathBuf {
        self.dir.join(file_name(seq, sessions, state))
    }

    /// Writes `body` (`sessions` sessions) as the newest file, dropping the oldest files
    /// (not being sent) as needed to stay within the limit; `maybe_delivered` if it was
    /// being sent when it had to be stored. A request larger than the whole spool is
    /// dropped and counted. An error (a full disk, an I/O error) leaves the spool as it
    /// was: the request is still the caller's.
    pub fn append(
        &mut self,
        body: &[u8],
        sessions: usize,
        maybe_delivered: bool,
    ) -> io::Result<()> {
        let bytes = (HEADER_LEN + body.len()) as u64;
        if bytes > self.max_bytes {
            SpoolStats::add(&self.stats.lost_full, sessions as u64);
            tracing::warn!(
                bytes,
                max_bytes = self.max_bytes,
                sessions,
                "a request larger than the whole spool: dropped, counted as lost_spool_full; \
                 raise --spool-max-bytes"
            );
            return Ok(());
        }
        self.make_room(bytes);
        let seq = self.next_seq;
        let state = if maybe_delivered {
            State::Sending
        } else {
            State::Ready
        };
        let partial = self.path(seq, sessions, State::Partial);
        let written = self.write_synced(&partial, body, self.path(seq, sessions, state));
        if written.is_err() {
            let _ = fs::remove_file(&partial);
        }
        written?;
        self.next_seq += 1;
        self.entries.push_back(Entry {
            seq,
            sessions,
            bytes,
            state,
            maybe_delivered,
            claimed: false,
        });
        SpoolStats::add(&self.stats.spooled, sessions as u64);
        SpoolStats::add(&self.stats.written_bytes, bytes);
        self.publish();
        Ok(())
    }

    /// Writes `partial`, syncs it, renames it to `to` and syncs the directory.
    fn write_synced(&self, partial: &Path, body: &[u8], to: PathBuf) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(partial)?;
        file.write_all(&header(body))?;
        file.write_all(body)?;
        file.sync_data()?;
        fs::rename(partial, to)?;
        File::open(&self.dir)?.sync_all()
    }

    /// Drops the oldest files not being sent until `incoming` more bytes fit.
    fn make_room(&mut self, incoming: u64) {
        let mut dropped = (0_u64, 0_usize);
        while SpoolStats::get(&self.stats.bytes) + incoming > self.max_bytes {
            let Some(index) = self.entries.iter().position(|entry| !entry.claimed) else {
                break;
            };
            let entry = self.entries.remove(index).unwrap_or_else(|| unreachable!());
            self.discard_file(&self.path(entry.seq, entry.sessions, entry.state));
            SpoolStats::add(&self.stats.lost_full, entry.sessions as u64);
            dropped.0 += entry.sessions as u64;
            dropped.1 += 1;
            self.publish();
        }
        if dropped.1 > 0 {
            tracing::warn!(
                sessions = dropped.0,
                requests = dropped.1,
                max_bytes = self.max_bytes,
                "the spool is full: its oldest requests were dropped, counted as \
                 lost_spool_full; raise --spool-max-bytes to bridge longer outages"
            );
        }
    }

    /// Reads the oldest file not being sent, marks it as being sent (on disk too: an agent
    /// that dies before its outcome leaves it `sending`) and returns it; torn files on the
    /// way are removed and counted.
    pub fn claim(&mut self) -> Option<Claimed> {
        loop {
            let index = self.entries.iter().position(|entry| !entry.claimed)?;
            let entry = &self.entries[index];
            let (seq, sessions, state) = (entry.seq, entry.sessions, entry.state);
            let maybe_delivered = entry.maybe_delivered;
            let path = self.path(seq, sessions, state);
            let read = fs::read(&path).map_err(|error| error.to_string());
            // The body without a copy: the file's bytes past the header.
            let body = read.and_then(|content| match decode(&content) {
                Ok(_) => Ok(Bytes::from(content).slice(HEADER_LEN..)),
                Err(torn) => Err(torn.to_string()),
            });
            let body = match body {
                Ok(body) => body,
                Err(reason) => {
                    tracing::warn!(
                        file = %Escaped(&path.display().to_string()),
                        sessions,
                        reason = %Escaped(&reason),
                        "a torn spool file: removed, its sessions counted as lost_spool_torn"
                    );
                    self.entries.remove(index);
                    self.discard_file(&path);
                    SpoolStats::add(&self.stats.lost_torn, sessions as u64);
                    self.publish();
                    continue;
                }
            };
            let entry = &mut self.entries[index];
            if state != State::Sending
                && fs::rename(
                    &path,
                    self.dir.join(file_name(seq, sessions, State::Sending)),
                )
                .is_ok()
            {
                entry.state = State::Sending;
            }
            entry.claimed = true;
            return Some(Claimed {
                seq,
                body,
                sessions,
                maybe_delivered,
            });
        }
    }

    /// A claimed request that failed and stays for a later attempt (oldest first still). Its
    /// file stays `sending`: should this agent die, the next cannot know the outcome.
    pub fn release(&mut self, seq: u64) {
        if let Some(entry) = self.entries.iter_mut().find(|entry| entry.seq == seq) {
            entry.claimed = false;
        }
    }

    /// A claimed request that is done with (delivered, or refused for good): its file goes.
    pub fn remove(&mut self, seq: u64) {
        if let Some(index) = self.entries.iter().position(|entry| entry.seq == seq) {
            let entry = self.entries.remove(index).unwrap_or_else(|| unreachable!());
            self.discard_file(&self.path(entry.seq, entry.sessions, entry.state));
            self.publish();
        }
    }

    /// Whether a file waits that is not being sent.
    pub fn has_unclaimed(&self) -> bool {
        self.entries.iter().any(|entry| !entry.claimed)
    }

    /// Logs what stays for the next agent.
    pub fn close(self) {
        tracing::info!(
            dir = %Escaped(&self.dir.display().to_string()),
            requests = self.entries.len(),
            sessions = SpoolStats::get(&self.stats.sessions),
            bytes = SpoolStats::get(&self.stats.bytes),
            "spool left for the next agent"
        );
    }

    fn discard_file(&self, path: &Path) {
        if let Err(error) = fs::remove_file(path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(
                file = %Escaped(&path.display().to_string()),
                %error,
                "cannot remove a spool file; it may be delivered again by the next agent"
            );
        }
    }

    /// Sets the gauges from the entries.
    fn publish(&self) {
        let (sessions, bytes) = self.entries.iter().fold((0, 0), |(s, b), entry| {
            (s + entry.sessions as u64, b + entry.bytes)
        });
        self.stats.sessions.store(sessions, Ordering::Relaxed);
        self.stats.bytes.store(bytes, Ordering::Relaxed);
        self.stats
            .requests
            .store(self.entries.len() as u64, Ordering::Relaxed);
    }
}

/// The length of a file whose header and length agree, or why not.
fn check_length(path: &Path) -> Result<u64, String> {
    let mut file = File::open(path).map_err(|error| error.to_string())?;
    let actual = file.metadata().map_err(|error| error.to_string())?.len();
    let mut header = Vec::with_capacity(HEADER_LEN);
    (&mut file)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut header)
        .map_err(|error| error.to_string())?;
    let expected = expected_len(&header).map_err(|torn| torn.to_string())?;
    if expected != actual {
        return Err(Torn::Length { expected, actual }.to_string());
    }
    Ok(actual)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A spool directory named after the test and this process, removed at the end.
    pub(crate) struct Dir(PathBuf);

    impl Dir {
        pub(crate) fn new(name: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("otel-agent-spool-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            Self(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }

        pub(crate) fn options(&self, max_bytes: u64) -> SpoolOptions {
            SpoolOptions {
                dir: self.0.clone(),
                max_bytes,
            }
        }

        /// The spool files' names, sorted.
        pub(crate) fn names(&self) -> Vec<String> {
            let mut names: Vec<_> = fs::read_dir(&self.0)
                .unwrap()
                .map(|item| item.unwrap().file_name().into_string().unwrap())
                .filter(|name| name != LOCK_FILE)
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn get(counter: &AtomicU64) -> u64 {
        SpoolStats::get(counter)
    }

    #[test]
    fn a_file_is_a_header_and_the_body_and_every_damage_is_named() {
        let body = b"an encoded request";
        let mut content = header(body).to_vec();
        content.extend_from_slice(body);
        assert_eq!(&content[..8], b"OTASPOOL");
        assert_eq!(content[8..12], [1, 0, 0, 0], "format 1, little-endian");
        assert_eq!(content[12..20], (body.len() as u64).to_le_bytes());
        assert_eq!(content[20..24], crc32fast::hash(body).to_le_bytes());
        assert_eq!(decode(&content), Ok(&body[..]));

        assert_eq!(decode(&content[..10]), Err(Torn::NoHeader(10)));
        assert_eq!(
            decode(&content[..30]),
            Err(Torn::Length {
                expected: 42,
                actual: 30
            })
        );
        let mut flipped = content.clone();
        flipped[30] ^= 1;
        assert_eq!(decode(&flipped), Err(Torn::Checksum));
        let mut other = content.clone();
        other[8] = 2;
        assert_eq!(decode(&other), Err(Torn::Format(2)));
        other[0] = b'X';
        assert_eq!(decode(&other), Err(Torn::Magic));
    }

    #[test]
    fn names_carry_the_order_the_sessions_and_the_state() {
        assert_eq!(
            file_name(42, 512, State::Ready),
            "00000000000000000042-512.req"
        );
        assert_eq!(
            parse_name("00000000000000000042-512.sending"),
            Some((42, 512, State::Sending))
        );
        assert_eq!(
            parse_name("00000000000000000007-3.tmp"),
            Some((7, 3, State::Partial))
        );
        for other in [
            "lock",
            "42-512.req",
            "00000000000000000042-x.req",
            "a.req.bak",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn requests_come_back_oldest_first_across_a_reopen_and_are_removed_once_done() {
        let dir = Dir::new("order");
        {
            let mut spool = Spool::open(&dir.options(1 << 20)).unwrap();
            for (body, sessions) in [(&b"first"[..], 2), (b"second", 3), (b"third", 4)] {
                spool.append(body, sessions, false).unwrap();
            }
            assert_eq!(get(&spool.stats.spooled), 9);
            let first = spool.claim().unwrap();
            assert_eq!((&first.body[..], first.sessions), (&b"first"[..], 2));
            assert!(!first.maybe_delivered);
            spool.remove(first.seq);
            let second = spool.claim().unwrap();
            spool.release(second.seq);
            // This agent's own failed attempt: its outcome is known.
            let again = spool.claim().unwrap();
            assert_eq!((again.seq, again.maybe_delivered), (second.seq, false));
            spool.release(again.seq);
            assert_eq!(get(&spool.stats.sessions), 7);
            spool.close();
        }
        // The second was being sent: its outcome unknown to the next agent.
        assert_eq!(
            dir.names(),
            [
                "00000000000000000001-3.sending",
                "00000000000000000002-4.req"
            ]
        );
        let mut spool = Spool::open(&dir.options(1 << 20)).unwrap();
        assert_eq!(get(&spool.stats.found), 7);
        assert_eq!(get(&spool.stats.requests), 2);
        let second = spool.claim().unwrap();
        assert_eq!(
            (&second.body[..], second.maybe_delivered),
            (&b"second"[..], true)
        );
        let third = spool.claim().unwrap();
        assert_eq!(&third.body[..], b"third");
        assert!(spool.claim().is_none(), "both are being sent");
        spool.append(b"fourth", 1, false).unwrap();
        assert_eq!(dir.names().last().unwrap(), "00000000000000000003-1.req");
    }

    #[test]
    fn torn_files_are_removed_and_counted_at_start_and_when_read() {
        let dir = Dir::new("torn");
        {
            let mut spool = Spool::open(&dir.options(1 << 20)).unwrap();
            spool.append(&[7; 100], 5, false).unwrap();
            spool.append(&[8; 100], 6, false).unwrap();
            spool.append(&[9; 100], 7, false).unwrap();
        }
        // A truncated file, a write cut short, a flipped bit (found only when read).
        let file = |name: &str| dir.0.join(name);
        let truncated = file("00000000000000000000-5.req");
        fs::File::options()
            .write(true)
            .open(&truncated)
            .unwrap()
            .set_len(60)
            .unwrap();
        fs::write(file("00000000000000000003-8.tmp"), b"OTASP").unwrap();
        let mut content = fs::read(file("00000000000000000001-6.req")).unwrap();
        content[50] ^= 0xff;
        fs::write(file("00000000000000000001-6.req"), content).unwrap();

        let mut spool = Spool::open(&dir.options(1 << 20)).unwrap();
        assert_eq!(get(&spool.stats.found), 5 + 6 + 7 + 8);
        assert_eq!(get(&spool.stats.lost_torn), 5 + 8);
        let next = spool.claim().unwrap();
        assert_eq!((next.sessions, &next.body[..]), (7, &[9; 100][..]));
        assert_eq!(get(&spool.stats.lost_torn), 5 + 8 + 6);
        assert_eq!(dir.names(), ["00000000000000000002-7.sending"]);
        // A new file follows the torn ones' numbers.
        spool.append(b"x", 1, false).unwrap();
        assert_eq!(dir.names()[1], "00000000000000000004-1.req");
    }

    #[test]
    fn a_full_spool_drops_its_oldest_requests_not_those_being_sent() {
        let dir = Dir::new("full");
        let request = (HEADER_LEN + 100) as u64;
        let mut spool = Spool::open(&dir.options(3 * request)).unwrap();
        for sessions in 1..=3 {
            spool.append(&[0; 100], sessions, false).unwrap();
        }
        let oldest = spool.claim().unwrap();
        assert_eq!(oldest.sessions, 1);
        spool.append(&[0; 100], 4, false).unwrap();
        assert_eq!(get(&spool.stats.lost_full), 2, "the oldest not being sent");
        assert_eq!(get(&spool.stats.bytes), 3 * request);
        spool.append(&[0; 1000], 9, false).unwrap();
        assert_eq!(get(&spool.stats.lost_full), 2 + 9, "larger than the spool");
        assert_eq!(
            dir.names(),
            [
                "00000000000000000000-1.sending",
                "00000000000000000002-3.req",
                "00000000000000000003-4.req"
            ]
        );
        // A smaller limit at the next start drops the oldest at once.
        spool.release(oldest.seq);
        drop(spool);
        let spool = Spool::open(&dir.options(request)).unwrap();
        assert_eq!(get(&spool.stats.lost_full), 1 + 3);
        assert_eq!(dir.names(), ["00000000000000000003-4.req"]);
    }

    #[test]
    fn a_second_agent_cannot_open_a_spool_in_use() {
        let dir = Dir::new("locked");
        let _first = Spool::open(&dir.options(1 << 20)).unwrap();
        let error = Spool::open(&dir.options(1 << 20)).unwrap_err();
        assert!(
            error.to_string().contains("another otel-agent uses it"),
            "{error}"
        );
    }

    #[test]
    fn an_unusable_directory_is_named_with_what_to_do() {
        let dir = Dir::new("file");
        fs::write(&dir.0, b"a file, not a directory").unwrap();
        let error = Spool::open(&dir.options(1 << 20)).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("--spool-dir / OTEL_AGENT_SPOOL_DIR"),
            "{text}"
        );
        assert!(text.contains("cannot create it"), "{text}");
        fs::remove_file(&dir.0).unwrap();
    }
}
