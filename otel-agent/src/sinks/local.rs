//! The sinks, the local outputs (tcplife's console, OTLP JSON lines): each has a bounded hand-off and its
//! own OS thread, which opens the target (opening a FIFO blocks until a reader opens it) and
//! does every blocking write, so that a slow, stuck or failed consumer never holds up the
//! reader, the pipeline, the export, the signals or the accounting.
//!
//! The pipeline only ever offers sessions ([`SinkHandle::offer`]); those that do not fit
//! are counted (`lost_output_full`). The thread renders them into lines ([`Render`]) and
//! writes whole lines, grouped into writes of at most `PIPE_BUF` bytes (a longer line is
//! written alone), so that on a pipe every write is atomic: a session counts as written
//! once the write holding its line returned. A failed write ends the output: the sessions
//! not written, and every one offered afterwards, are counted (`lost_output_failed`), a
//! line torn in a regular file is cut off, and the agent is told ([`Sinks::failed`])
//! so that it stops with exit 74. At shutdown the thread gets until the deadline; what it
//! has not written then is counted (`lost_at_shutdown`) and the thread, which may be blocked
//! in `write(2)` for good, is left behind, never joined.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, Seek as _, SeekFrom, Write as _},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::session::Session;

/// Bytes a write to a pipe may carry and still be atomic (POSIX `PIPE_BUF`, 4096 on Linux).
const PIPE_BUF: usize = libc::PIPE_BUF;

/// A local output could not be written; the agent stops with exit 74.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {what} to {target}: {error}")]
pub struct SinkFailed {
    /// `tcplife lines` or `JSON lines`.
    pub what: &'static str,
    /// `stdout` or the path.
    pub target: String,
    pub error: io::Error,
}

/// The counters of one local output, in sessions.
#[derive(Debug, Default)]
pub struct LocalStats {
    /// Sessions whose line was written whole.
    pub written: AtomicU64,
    /// Sessions offered while the hand-off was full (the consumer is slow or stuck).
    pub lost_output_full: AtomicU64,
    /// Sessions not written because a write failed, and every one offered after that.
    pub lost_output_failed: AtomicU64,
    /// Sessions not written by the shutdown deadline.
    pub lost_at_shutdown: AtomicU64,
}

impl LocalStats {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// How an output's thread takes sessions from its hand-off.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Sessions the hand-off holds, those being written included.
    pub capacity: usize,
    /// Sessions rendered at once.
    pub batch: usize,
    /// How long a partial batch may wait for more (zero: it is written at once).
    pub delay: Duration,
}

/// Rendered lines: their bytes and, for each, where it ends and how many sessions it
/// carries.
#[derive(Debug, Default)]
pub struct Lines {
    bytes: Vec<u8>,
    ends: Vec<(usize, usize)>,
}

impl Lines {
    /// The buffer to append the text of the next line to (without its newline).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Ends the line written into [`Lines::buffer`] since the last one; it carries
    /// `sessions` sessions.
    pub fn end_line(&mut self, sessions: usize) {
        self.bytes.push(b'\n');
        self.ends.push((self.bytes.len(), sessions));
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// The bytes, for tests.
    #[cfg(test)]
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Turns sessions into lines, on the output's thread.
pub trait Render: Send + 'static {
    /// Appends the lines of `sessions` (each session in exactly one line) to `lines`.
    fn render(&mut self, sessions: &[Arc<Session>], lines: &mut Lines) -> io::Result<()>;
}

/// Opens an output's target on its thread.
pub type Open = Box<dyn FnOnce() -> io::Result<File> + Send>;

/// Where an output writes.
pub struct Target {
    /// What it writes, for messages: `tcplife lines` or `JSON lines`.
    pub what: &'static str,
    /// `stdout` or the path.
    pub name: String,
    /// Opens it, on the output's thread.
    pub open: Open,
}

/// What the pipeline and the accounting see of one local output.
#[derive(Clone)]
pub struct SinkHandle {
    /// `console` or `json`.
    pub name: &'static str,
    pub stats: Arc<LocalStats>,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    batching: Batching,
    stats: Arc<LocalStats>,
    /// Cancelled when any output of the agent fails.
    failed: CancellationToken,
    /// Cancelled when this output's thread has finished.
    finished: CancellationToken,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Arc<Session>>,
    /// Sessions the thread took and has not accounted for yet (they count against the
    /// capacity).
    taken: usize,
    /// The agent is stopping: write what is left, then finish.
    closing: bool,
    /// Sessions were dropped for want of room since the hand-off was last empty (one
    /// warning per episode).
    overflowing: bool,
    /// The shutdown deadline passed: what the thread still does no longer counts.
    abandoned: bool,
    /// The thread has finished.
    finished: bool,
    /// Why the output failed; nothing is written after it.
    error: Option<io::Error>,
}

impl Shared {
    /// The state, even if a panic poisoned its lock.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the next batch to write; `None` once there is nothing more to do.
    fn next_batch(&self) -> Option<Vec<Arc<Session>>> {
        let Batching { batch, delay, .. } = self.batching;
        let mut due_at = Instant::now() + delay;
        let mut state = self.state();
        loop {
            if state.abandoned || state.error.is_some() {
                return None;
            }
            let now = Instant::now();
            let waiting = state.waiting.len();
            if waiting > 0 && (waiting >= batch || state.closing || now >= due_at) {
                let n = waiting.min(batch);
                state.taken += n;
                return Some(state.waiting.drain(..n).collect());
            }
            if state.closing {
                return None;
            }
            if now >= due_at {
                due_at = now + delay;
            }
            state = if delay.is_zero() {
                self.wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner)
            } else {
                self.wake
                    .wait_timeout(state, due_at - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            };
        }
    }

    /// Counts `sessions` of the taken ones as written; false once the output was
    /// abandoned (nothing more counts then).
    fn wrote(&self, sessions: usize) -> bool {
        let mut state = self.state();
        if state.abandoned {
            return false;
        }
        state.taken -= sessions;
        if state.taken == 0 && state.waiting.is_empty() {
            state.overflowing = false;
        }
        LocalStats::add(&self.stats.written, sessions);
        true
    }

    /// Ends the output: what it took and did not write, and what waits, is lost.
    fn fail(&self, error: io::Error) {
        let mut state = self.state();
        if !state.abandoned {
            let lost = state.taken + state.waiting.len();
            LocalStats::add(&self.stats.lost_output_failed, lost);
            state.taken = 0;
            state.waiting.clear();
        }
        state.error = Some(error);
        drop(state);
        self.failed.cancel();
    }

    fn finish(&self) {
        self.state().finished = true;
        self.finished.cancel();
    }
}

impl SinkHandle {
    /// Offers sessions to the output: those that do not fit are counted
    /// (`lost_output_full`), and all of them once the output failed (`lost_output_failed`).
    /// Never waits for the output.
    pub fn offer(&self, sessions: &[Arc<Session>]) {
        let shared = &self.shared;
        let mut state = shared.state();
        if state.error.is_some() {
            drop(state);
            LocalStats::add(&shared.stats.lost_output_failed, sessions.len());
            return;
        }
        if state.abandoned {
            drop(state);
            LocalStats::add(&shared.stats.lost_at_shutdown, sessions.len());
            return;
        }
        let room = shared
            .batching
            .capacity
            .saturating_sub(state.waiting.len() + state.taken);
        let accepted = sessions.len().min(room);
        state.waiting.extend(sessions[..accepted].iter().cloned());
        let dropped = sessions.len() - accepted;
        let first_drop = dropped > 0 && !std::mem::replace(&mut state.overflowing, true);
        drop(state);
        LocalStats::add(&shared.stats.lost_output_full, dropped);
        if first_drop {
            tracing::warn!(
                output = self.name,
                capacity = shared.batching.capacity,
                "the {} output is not keeping up (its reader is slow or stuck): sessions that \
                 do not fit its queue are not written and are counted as lost_output_full",
                self.name
            );
        }
        if accepted > 0 {
            shared.wake.notify_one();
        }
    }

    /// Sessions offered and not written or lost yet: waiting, or being written.
    pub fn queued(&self) -> u64 {
        let state = self.shared.state();
        (state.waiting.len() + state.taken) as u64
    }
}

/// One running local output.
pub struct Sink {
    handle: SinkHandle,
    what: &'static str,
    target: String,
}

impl Sink {
    /// Starts the thread of the output `name`, which opens `target`, writes `preamble` (the
    /// console's header), then the lines `render` makes of the sessions offered. `failed` is
    /// cancelled if it fails.
    pub fn start(
        name: &'static str,
        target: Target,
        preamble: Lines,
        render: impl Render,
        batching: Batching,
        failed: &CancellationToken,
    ) -> io::Result<Self> {
        let stats = Arc::new(LocalStats::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            batching,
            stats: stats.clone(),
            failed: failed.clone(),
            finished: CancellationToken::new(),
        });
        let thread_shared = shared.clone();
        let Target {
            what,
            name: target,
            open,
        } = target;
        // Detached: a thread blocked in write(2) for good must not hold up the exit.
        std::thread::Builder::new()
            .name(format!("otel-agent-{name}"))
            .spawn(move || run(&thread_shared, open, preamble, render))?;
        Ok(Self {
            handle: SinkHandle {
                name,
                stats,
                shared,
            },
            what,
            target,
        })
    }

    pub fn handle(&self) -> SinkHandle {
        self.handle.clone()
    }
}

/// The thread of one output. A panic in it fails the output like a write error would.
fn run(shared: &Shared, open: Open, preamble: Lines, mut render: impl Render) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        write_all_batches(shared, open, &preamble, &mut render)
    }));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => shared.fail(error),
        Err(_) => shared.fail(io::Error::other("the output's thread panicked")),
    }
    shared.finish();
}

fn write_all_batches(
    shared: &Shared,
    open: Open,
    preamble: &Lines,
    render: &mut impl Render,
) -> io::Result<()> {
    let mut file = open()?;
    let mut lines = Lines::default();
    write_lines(&mut file, preamble, |_| true)?;
    while let Some(batch) = shared.next_batch() {
        lines.clear();
        render.render(&batch, &mut lines)?;
        let carried: usize = lines.ends.iter().map(|&(_, sessions)| sessions).sum();
        if carried != batch.len() {
            return Err(io::Error::other(format!(
                "{} sessions rendered into lines carrying {carried}",
                batch.len()
            )));
        }
        if !write_lines(&mut file, &lines, |sessions| shared.wrote(sessions))? {
            break;
        }
    }
    Ok(())
}

/// Writes `lines`, whole lines at a time in writes of at most [`PIPE_BUF`] bytes (a longer
/// line alone), calling `wrote` with the sessions of each write once it returned; stops
/// early (`Ok(false)`) when `wrote` says so. A line that a failed write tore in a regular
/// file is cut off again.
fn write_lines(
    file: &mut File,
    lines: &Lines,
    mut wrote: impl FnMut(usize) -> bool,
) -> io::Result<bool> {
    let mut start = 0;
    let mut sessions = 0;
    let mut end = 0;
    let mut ends = lines.ends.iter().peekable();
    while let Some(&(line_end, line_sessions)) = ends.next() {
        end = line_end;
        sessions += line_sessions;
        let next_fits = ends
            .peek()
            .is_some_and(|&&(next_end, _)| next_end - start <= PIPE_BUF);
        if next_fits {
            continue;
        }
        write_whole(file, &lines.bytes[start..end])?;
        if !wrote(sessions) {
            return Ok(false);
        }
        start = end;
        sessions = 0;
    }
    debug_assert_eq!(end, lines.bytes.len());
    Ok(true)
}

/// Writes all of `bytes`; if a write fails after part of them went out to a regular file,
/// cuts that part off so that the file ends with a whole line.
fn write_whole(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        match file.write(&bytes[done..]) {
            Ok(0) => {
                return Err(cut_torn_line(
                    file,
                    done,
                    io::Error::from(io::ErrorKind::WriteZero),
                ));
            }
            Ok(n) => done += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(cut_torn_line(file, done, error)),
        }
    }
    Ok(())
}

/// After `error`, removes the `torn` bytes just written to `file` when it is a regular file
/// (a pipe or a terminal cannot take them back); returns `error`.
fn cut_torn_line(file: &mut File, torn: usize, error: io::Error) -> io::Error {
    if torn == 0 || !file.metadata().is_ok_and(|metadata| metadata.is_file()) {
        return error;
    }
    // After a write, even in append mode, the offset is the end of what it wrote.
    let cut = file
        .stream_position()
        .map(|end| end.saturating_sub(torn as u64))
        .and_then(|cut| {
            file.set_len(cut)?;
            file.seek(SeekFrom::Start(cut))
        });
    if let Err(cut_error) = cut {
        tracing::warn!(%cut_error, torn, "cannot cut off the line a failed write tore");
    }
    error
}

/// The running local outputs.
pub struct Sinks {
    outputs: Vec<Sink>,
    failed: CancellationToken,
}

impl Sinks {
    /// `outputs`, which report failures on `failed`.
    pub fn new(outputs: Vec<Sink>, failed: CancellationToken) -> Self {
        Self { outputs, failed }
    }

    pub fn handles(&self) -> Vec<SinkHandle> {
        self.outputs.iter().map(Sink::handle).collect()
    }

    /// Completes when an output has failed (never, if none does).
    pub async fn failed(&self) {
        self.failed.cancelled().await;
    }

    /// Lets every thread write what it holds until `deadline`, then counts what is left as
    /// lost at shutdown and leaves the threads behind. Returns the first failure.
    pub async fn shutdown(self, deadline: tokio::time::Instant) -> Result<(), SinkFailed> {
        for output in &self.outputs {
            output.handle.shared.state().closing = true;
            output.handle.shared.wake.notify_all();
        }
        let mut first_failure = None;
        for output in self.outputs {
            let shared = &output.handle.shared;
            let _ = tokio::time::timeout_at(deadline, shared.finished.cancelled()).await;
            let mut state = shared.state();
            if !state.finished && !state.abandoned {
                state.abandoned = true;
                let left = state.waiting.len() + state.taken;
                state.waiting.clear();
                state.taken = 0;
                LocalStats::add(&shared.stats.lost_at_shutdown, left);
                tracing::warn!(
                    output = output.handle.name,
                    dropped = left,
                    "{} not written to {} before the shutdown deadline",
                    output.what,
                    output.target
                );
            }
            if let Some(error) = state.error.take()
                && first_failure.is_none()
            {
                first_failure = Some(SinkFailed {
                    what: output.what,
                    target: output.target.clone(),
                    error,
                });
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, os::fd::AsRawFd as _};

    use super::*;
    use crate::session::tests::client_session;

    /// One line per session: its local port.
    struct Ports;

    impl Render for Ports {
        fn render(&mut self, sessions: &[Arc<Session>], lines: &mut Lines) -> io::Result<()> {
            for session in sessions {
                write!(lines.buffer(), "{}", session.local.port())?;
                lines.end_line(1);
            }
            Ok(())
        }
    }

    fn sessions(ports: std::ops::Range<u16>) -> Vec<Arc<Session>> {
        ports
            .map(|port| {
                let mut session = client_session();
                session.local.set_port(port);
                Arc::new(session)
            })
            .collect()
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned by nobody else.
        unsafe {
            use std::os::fd::FromRawFd as _;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        }
    }

    fn start(out: File, capacity: usize, failed: &CancellationToken) -> Sink {
        let mut header = Lines::default();
        header.buffer().extend_from_slice(b"PORT");
        header.end_line(0);
        Sink::start(
            "test",
            Target {
                what: "test lines",
                name: "a pipe".into(),
                open: Box::new(move || Ok(out)),
            },
            header,
            Ports,
            Batching {
                capacity,
                batch: 1024,
                delay: Duration::ZERO,
            },
            failed,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_stuck_reader_never_blocks_the_offer_and_the_unwritten_are_counted() {
        let (mut read, write) = pipe();
        // SAFETY: F_SETPIPE_SZ takes an int; the smallest pipe is one page.
        assert!(unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } > 0);
        let failed = CancellationToken::new();
        let output = start(write, 100, &failed);
        let handle = output.handle();
        let outputs = Sinks::new(vec![output], failed);
        // 5,000 lines of 6 bytes: far more than the pipe (4096 bytes) and the hand-off hold.
        let all = sessions(10_000..15_000);
        let started = Instant::now();
        for chunk in all.chunks(10) {
            handle.offer(chunk);
            std::thread::sleep(Duration::from_micros(50));
        }
        assert!(started.elapsed() < Duration::from_secs(5), "offer waited");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        outputs.shutdown(deadline).await.unwrap();
        let stats = &handle.stats;
        let (written, full, at_shutdown) = (
            get(&stats.written),
            get(&stats.lost_output_full),
            get(&stats.lost_at_shutdown),
        );
        assert_eq!(written + full + at_shutdown, 5_000);
        assert_eq!(get(&stats.lost_output_failed), 0);
        assert!(
            full > 0 && at_shutdown > 0,
            "{written} {full} {at_shutdown}"
        );
        assert_eq!(handle.queued(), 0);
        // Every line counted as written is in the pipe, whole; no other line is.
        let mut text = vec![0; 8192];
        let n = read.read(&mut text).unwrap();
        let text = String::from_utf8(text[..n].to_vec()).unwrap();
        assert!(text.ends_with('\n'), "torn line: {text:?}");
        assert_eq!(text.lines().count() as u64, written + 1, "{text}");
        assert_eq!(text.lines().nth(1), Some("10000"));
    }

    #[tokio::test]
    async fn a_closed_pipe_fails_the_output_and_counts_what_was_not_written() {
        let (read, write) = pipe();
        let failed = CancellationToken::new();
        let output = start(write, 1_000, &failed);
        let handle = output.handle();
        let outputs = Sinks::new(vec![output], failed);
        drop(read);
        handle.offer(&sessions(1..11));
        tokio::time::timeout(Duration::from_secs(5), outputs.failed())
            .await
            .unwrap();
        handle.offer(&sessions(11..16));
        let error = outputs
            .shutdown(tokio::time::Instant::now() + Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot write test lines to a pipe: Broken pipe (os error 32)"
        );
        let stats = &handle.stats;
        assert_eq!(
            (
                get(&stats.written),
                get(&stats.lost_output_failed),
                get(&stats.lost_at_shutdown)
            ),
            (0, 15, 0)
        );
    }

    /// Panics on its first batch.
    struct Panics;

    impl Render for Panics {
        fn render(&mut self, _: &[Arc<Session>], _: &mut Lines) -> io::Result<()> {
            panic!("a bug in rendering");
        }
    }

    #[tokio::test]
    async fn a_panic_in_the_thread_fails_the_output_and_counts_its_sessions() {
        let (_read, write) = pipe();
        let failed = CancellationToken::new();
        let output = Sink::start(
            "test",
            Target {
                what: "test lines",
                name: "a pipe".into(),
                open: Box::new(move || Ok(write)),
            },
            Lines::default(),
            Panics,
            Batching {
                capacity: 100,
                batch: 100,
                delay: Duration::ZERO,
            },
            &failed,
        )
        .unwrap();
        let handle = output.handle();
        let outputs = Sinks::new(vec![output], failed);
        handle.offer(&sessions(1..4));
        tokio::time::timeout(Duration::from_secs(5), outputs.failed())
            .await
            .unwrap();
        let error = outputs
            .shutdown(tokio::time::Instant::now() + Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot write test lines to a pipe: the output's thread panicked"
        );
        assert_eq!(get(&handle.stats.lost_output_failed), 3);
    }

    #[test]
    fn a_line_torn_in_a_regular_file_is_cut_off() {
        let path = std::env::temp_dir().join(format!("otel-agent-torn-{}", std::process::id()));
        let mut file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        file.write_all(b"one\ntwo\nthr").unwrap();
        let error = cut_torn_line(&mut file, 3, io::Error::other("disk full"));
        assert_eq!(error.to_string(), "disk full");
        file.write_all(b"four\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\nfour\n");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn lines_are_grouped_into_writes_of_at_most_pipe_buf() {
        let mut lines = Lines::default();
        // 1,000 lines of 100 bytes, then one of 10,000.
        for _ in 0..1_000 {
            lines.buffer().extend_from_slice(&[b'x'; 99]);
            lines.end_line(1);
        }
        lines.buffer().extend_from_slice(&[b'y'; 9_999]);
        lines.end_line(7);
        let (read, mut write) = pipe();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            (&read).read_to_end(&mut all).unwrap();
            all.len()
        });
        let mut writes = Vec::new();
        assert!(
            write_lines(&mut write, &lines, |sessions| {
                writes.push(sessions);
                true
            })
            .unwrap()
        );
        drop(write);
        assert_eq!(reader.join().unwrap(), 110_000);
        // 40 lines (4,000 bytes) per write, 25 writes, then the long line alone.
        assert_eq!(writes.len(), 26);
        assert!(writes[..25].iter().all(|&n| n == 40), "{writes:?}");
        assert_eq!(writes[25], 7);
    }
}
