//! The local outputs (tcplife's console, JSON lines) under hostile consumers, on the real
//! binary: stdout into a pipe nobody reads, JSON lines into a FIFO nobody reads or nobody
//! opens, stdout closed under the console and under `--json-output -`, a full disk
//! (`/dev/full`); and task names that try to add columns to the console. In each case the
//! periodic accounting keeps coming, SIGTERM stops the agent within `--shutdown-timeout`,
//! the exit code is the documented one, and the final accounting counts every line not
//! written and balances.
//!
//! Each test keeps its agent to the sessions of a listener of its own (`-p <this pid>`,
//! `-L <its port>`), so that the counts are exact while other tests run.

use std::{
    ffi::CString,
    fs::File,
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::Path,
    thread,
    time::{Duration, Instant},
};

use otel_agent_tests::{
    agent::{self, counter},
    process::{ChildGuard, TempDir},
    require_root,
};

/// The agent's `--shutdown-timeout` in these tests.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after the shutdown deadline the agent may take to exit (the final accounting,
/// detaching the probe).
const EXIT_MARGIN: Duration = Duration::from_millis(1500);
/// `EX_IOERR`: a local output cannot be written.
const OUTPUT_FAILED: i32 = 74;

/// A pipe: (read end, write end), both close-on-exec.
fn pipe() -> (File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and belong to nobody else.
    unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Makes the pipe of `fd` hold one page (4096 bytes), the least Linux allows.
fn shrink_pipe(fd: &impl AsRawFd) {
    // SAFETY: F_SETPIPE_SZ takes an int and changes only the pipe's capacity.
    let size = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert_eq!(size, 4096);
}

/// Everything that can be read from `file` (non-blocking) now.
fn read_available(file: &mut File) -> Vec<u8> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor the test owns.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut all = Vec::new();
    let mut buffer = [0; 65_536];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == ErrorKind::WouldBlock => return all,
            Err(error) => panic!("read: {error}"),
        }
    }
}

/// Creates a FIFO at `path`.
fn mkfifo(path: &Path) {
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}

/// `n` sessions accepted by `listener` (the client side's local port is another one, so
/// that `-L <listener port>` keeps exactly `n`).
fn sessions(listener: &TcpListener, n: usize) {
    let address = listener.local_addr().unwrap();
    for _ in 0..n {
        let client = TcpStream::connect(address).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        drop(client);
        drop(server);
    }
}

/// The agent's arguments for the sessions of `listener` only, with a 1 s stats interval and
/// the test's shutdown timeout, then `extra`.
fn args(listener: &TcpListener, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-p",
        &std::process::id().to_string(),
        "-L",
        &listener.local_addr().unwrap().port().to_string(),
        "--stats-interval",
        "1s",
        "--shutdown-timeout",
        "2s",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

fn str_args(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The counters of every periodic `output accounting` line of `output`, oldest first.
fn periodic(stderr: &str, output: &str) -> Vec<std::collections::BTreeMap<String, u64>> {
    let marker = format!("output accounting when=\"periodic\" output=\"{output}\"");
    stderr
        .lines()
        .filter(|line| line.contains(&marker))
        .map(|line| agent::log_counters(line, &[]))
        .collect()
}

/// Waits until a periodic accounting line of `output` has accounted for `n` sessions, then
/// for two more periodic lines: the accounting goes on while the output is stuck.
fn wait_until_accounted(agent: &mut ChildGuard, output: &str, n: u64) {
    let settled = |counters: &std::collections::BTreeMap<String, u64>| {
        [
            "written",
            "lost_output_full",
            "queued",
            "lost_output_failed",
        ]
        .iter()
        .map(|name| counter(counters, name))
        .sum::<u64>()
            == n
    };
    agent.wait_for_output(
        Duration::from_secs(30),
        &format!("a periodic accounting of {n} {output} sessions"),
        |output_text| periodic(output_text, output).iter().any(settled),
    );
    let lines = periodic(&agent.stderr_text(), output).len();
    agent.wait_for_output(
        Duration::from_secs(5),
        "two more periodic accounting lines",
        |output_text| periodic(output_text, output).len() >= lines + 2,
    );
}

/// Sends SIGTERM and waits for the exit, which must come within the shutdown timeout and
/// the margin; returns the exit code.
fn terminate(agent: &mut ChildGuard) -> Option<i32> {
    let asked = Instant::now();
    agent.signal(libc::SIGTERM);
    let status = agent.wait(SHUTDOWN_TIMEOUT + EXIT_MARGIN + Duration::from_secs(5));
    let took = asked.elapsed();
    assert!(
        took <= SHUTDOWN_TIMEOUT + EXIT_MARGIN,
        "SIGTERM took {took:?}; stderr:\n{}",
        agent.stderr_text()
    );
    status.code()
}

/// The session accounting must have read exactly `n` records and lost none.
fn assert_read_exactly(stderr: &str, n: u64) {
    let session = agent::accounting(stderr);
    assert_eq!(counter(&session, "kernel_emitted"), n, "{session:?}");
    assert_eq!(counter(&session, "records_read"), n, "{session:?}");
    assert_eq!(counter(&session, "lost_channel_full"), 0, "{session:?}");
}

/// Checks the final accounting of `output`, whose reader never read while `sessions` came
/// through a hand-off of `capacity`: every session read; the hand-off's `capacity` lost at
/// the deadline, fewer than that written (what the pipe took: an atomic write of up to 4096
/// bytes waits for room for all of it), the rest lost when it did not fit. Returns how many
/// were written.
fn assert_stuck(stderr: &str, output: &str, sessions: u64, capacity: u64) -> u64 {
    assert_read_exactly(stderr, sessions);
    let counters = agent::assert_output_balances(stderr, output);
    assert_eq!(
        counter(&counters, "lost_at_shutdown"),
        capacity,
        "{counters:?}"
    );
    assert_eq!(counter(&counters, "lost_output_failed"), 0, "{counters:?}");
    let written = counter(&counters, "written");
    assert!(written < capacity, "{counters:?}");
    assert_eq!(
        counter(&counters, "lost_output_full"),
        sessions - capacity - written,
        "{counters:?}"
    );
    written
}

#[test]
fn a_console_pipe_nobody_reads_never_freezes_the_agent_and_its_unprinted_lines_are_counted() {
    require_root();
    let dir = TempDir::new("local-stuck-pipe");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let (mut read, write) = pipe();
    shrink_pipe(&write);
    let args = args(&listener, &["-s", "--console-queue-size", "100"]);
    let mut agent = agent::start_with_stdout(&str_args(&args), dir.path(), write.into());
    // 1,000 lines of about 60 bytes: the pipe holds 4096 bytes, the console 100 lines.
    sessions(&listener, 1_000);
    wait_until_accounted(&mut agent, "console", 1_000);
    assert_eq!(terminate(&mut agent), Some(0), "{}", agent.stderr_text());

    let stderr = agent.stderr_text();
    let written = assert_stuck(&stderr, "console", 1_000, 100);
    assert_eq!(
        agent::log_lines(&stderr, "WARN"),
        [
            "otel_agent::local: the console output is not keeping up (its reader is slow or stuck): sessions that do not fit its queue are not written and are counted as lost_output_full output=\"console\" capacity=100",
            "otel_agent::local: tcplife lines not written to stdout before the shutdown deadline output=\"console\" dropped=100",
        ]
    );
    // The pipe holds the header and exactly the lines counted as written, whole.
    let text = String::from_utf8(read_available(&mut read)).unwrap();
    assert!(text.ends_with('\n'), "torn line: {text:?}");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("PID,COMM,IP,LADDR,LPORT,RADDR,RPORT,TX_KB,RX_KB,MS")
    );
    let lines: Vec<&str> = lines.collect();
    assert_eq!(lines.len() as u64, written, "{text}");
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!((fields.len(), fields[4]), (10, port.as_str()), "{line}");
    }
}

#[test]
fn json_lines_into_a_fifo_nobody_reads_never_freeze_the_agent() {
    require_root();
    let dir = TempDir::new("local-stuck-fifo");
    let fifo = dir.path().join("spans.fifo");
    mkfifo(&fifo);
    // Opened for reading (so that the agent's open succeeds), never read.
    let mut reader = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    shrink_pipe(&reader);
    let fifo_text = fifo.display().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let args = args(
        &listener,
        &[
            "--json-output",
            &fifo_text,
            "--bsp-max-queue-size",
            "50",
            "--bsp-max-export-batch-size",
            "1",
        ],
    );
    let mut agent = agent::start(&str_args(&args), &[], dir.path());
    // One JSON line of about 2.7 KB per session: the pipe holds 4096 bytes, the queue 50.
    sessions(&listener, 300);
    wait_until_accounted(&mut agent, "json", 300);
    assert_eq!(terminate(&mut agent), Some(0), "{}", agent.stderr_text());

    let stderr = agent.stderr_text();
    let written = assert_stuck(&stderr, "json", 300, 50);
    // The console (to a file) printed every session meanwhile.
    let console = agent::assert_output_balances(&stderr, "console");
    assert_eq!(counter(&console, "written"), 300, "{console:?}");
    // The FIFO holds exactly the lines counted as written, each a whole JSON request.
    let text = String::from_utf8(read_available(&mut reader)).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "torn line");
    assert_eq!(text.lines().count() as u64, written);
    for line in text.lines() {
        let request: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(
            request["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}

#[test]
fn json_lines_to_a_fifo_nobody_opens_do_not_hold_up_start_or_sigterm() {
    require_root();
    let dir = TempDir::new("local-unopened-fifo");
    let fifo = dir.path().join("spans.fifo");
    mkfifo(&fifo);
    let fifo_text = fifo.display().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let args = args(
        &listener,
        &["--json-output", &fifo_text, "--bsp-schedule-delay", "100ms"],
    );
    // Fails here if opening the FIFO holds up the start.
    let mut agent = agent::start(&str_args(&args), &[], dir.path());
    assert!(
        agent
            .stderr_text()
            .contains("the JSON output is a FIFO that no reader has opened yet"),
        "{}",
        agent.stderr_text()
    );
    sessions(&listener, 5);
    wait_until_accounted(&mut agent, "json", 5);
    assert_eq!(terminate(&mut agent), Some(0), "{}", agent.stderr_text());
    let stderr = agent.stderr_text();
    assert_read_exactly(&stderr, 5);
    let json = agent::assert_output_balances(&stderr, "json");
    assert_eq!(
        (
            counter(&json, "written"),
            counter(&json, "lost_at_shutdown")
        ),
        (0, 5),
        "{json:?}"
    );
    assert!(
        agent::log_lines(&stderr, "WARN").contains(&format!(
            "otel_agent::local: JSON lines not written to {fifo_text} before the shutdown deadline output=\"json\" dropped=5"
        )),
        "{stderr}"
    );
}

/// Reads from `read` until it holds `lines` whole lines, within 10 s.
fn read_lines(read: &mut File, lines: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = Vec::new();
    while text.iter().filter(|&&b| b == b'\n').count() < lines {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            String::from_utf8_lossy(&text)
        );
        text.extend(read_available(read));
        thread::sleep(Duration::from_millis(20));
    }
    String::from_utf8(text).unwrap()
}

/// Runs the agent with `extra` and its stdout on a pipe, and checks what happens when the
/// pipe's reader goes away ([`assert_reader_gone_exits_74`]).
fn assert_closed_stdout_exits_74(name: &str, extra: &[&str], output: &str, message: &str) {
    require_root();
    let dir = TempDir::new(name);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (read, write) = pipe();
    let args = args(&listener, extra);
    let agent = agent::start_with_stdout(&str_args(&args), dir.path(), write.into());
    assert_reader_gone_exits_74(agent, read, &listener, output, message);
}

/// Makes three sessions and reads their lines from `read` (after the header for the
/// console), closes it, and makes sessions until the agent exits: it must exit 74 with
/// `message`, having written exactly the three sessions and counted the others as lost to
/// the failed output (`output`).
fn assert_reader_gone_exits_74(
    mut agent: ChildGuard,
    mut read: File,
    listener: &TcpListener,
    output: &str,
    message: &str,
) {
    sessions(listener, 3);
    let header = usize::from(output == "console");
    let text = read_lines(&mut read, header + 3);
    assert_eq!(text.lines().count(), header + 3, "{text}");
    drop(read);
    let closed = Instant::now();
    let status = loop {
        sessions(listener, 1);
        if let Some(status) = agent.try_wait() {
            break status;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(10),
            "still running with its reader gone:\n{}",
            agent.stderr_text()
        );
        thread::sleep(Duration::from_millis(50));
    };
    let stderr = agent.stderr_text();
    assert_eq!(status.code(), Some(OUTPUT_FAILED), "{stderr}");
    assert_eq!(
        agent::log_lines(&stderr, "ERROR"),
        vec![format!("otel_agent: {message}")]
    );
    let local = agent::assert_output_balances(&stderr, output);
    let read_records = counter(&agent::accounting(&stderr), "records_read");
    assert!(read_records > 3, "{stderr}");
    assert_eq!(
        (
            counter(&local, "written"),
            counter(&local, "lost_output_failed"),
            counter(&local, "lost_output_full"),
            counter(&local, "lost_at_shutdown"),
        ),
        (3, read_records - 3, 0, 0),
        "{local:?}"
    );
}

#[test]
fn json_lines_to_a_fifo_whose_reader_goes_away_stop_with_74() {
    require_root();
    let dir = TempDir::new("local-fifo-epipe");
    let fifo = dir.path().join("spans.fifo");
    mkfifo(&fifo);
    let reader = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let fifo_text = fifo.display().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let args = args(
        &listener,
        &[
            "--json-output",
            &fifo_text,
            "--bsp-max-export-batch-size",
            "1",
            "--bsp-schedule-delay",
            "100ms",
        ],
    );
    let agent = agent::start(&str_args(&args), &[], dir.path());
    assert_reader_gone_exits_74(
        agent,
        reader,
        &listener,
        "json",
        &format!("cannot write JSON lines to {fifo_text}: Broken pipe (os error 32)"),
    );
}

#[test]
fn the_console_on_a_closed_stdout_stops_with_74_and_counts_the_lines_not_printed() {
    assert_closed_stdout_exits_74(
        "local-console-epipe",
        &["-s"],
        "console",
        "cannot write tcplife lines to stdout: Broken pipe (os error 32)",
    );
}

#[test]
fn json_lines_on_a_closed_stdout_stop_with_74_like_the_console() {
    assert_closed_stdout_exits_74(
        "local-json-epipe",
        &[
            "--json-output",
            "-",
            "--bsp-max-export-batch-size",
            "1",
            "--bsp-schedule-delay",
            "100ms",
        ],
        "json",
        "cannot write JSON lines to stdout: Broken pipe (os error 32)",
    );
}

#[test]
fn json_lines_to_a_full_disk_stop_with_74_and_the_console_still_flushes() {
    require_root();
    let dir = TempDir::new("local-json-enospc");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let args = args(
        &listener,
        &[
            "-s",
            "--json-output",
            "/dev/full",
            "--bsp-schedule-delay",
            "100ms",
        ],
    );
    let mut agent = agent::start(&str_args(&args), &[], dir.path());
    sessions(&listener, 2);
    let status = agent.wait(Duration::from_secs(10));
    let stderr = agent.stderr_text();
    assert_eq!(status.code(), Some(OUTPUT_FAILED), "{stderr}");
    assert_eq!(
        agent::log_lines(&stderr, "ERROR"),
        vec![
            "otel_agent: cannot write JSON lines to /dev/full: No space left on device (os error 28)"
                .to_owned()
        ]
    );
    assert_read_exactly(&stderr, 2);
    let json = agent::assert_output_balances(&stderr, "json");
    assert_eq!(
        (
            counter(&json, "written"),
            counter(&json, "lost_output_failed")
        ),
        (0, 2),
        "{json:?}"
    );
    let console = agent::assert_output_balances(&stderr, "console");
    assert_eq!(counter(&console, "written"), 2, "{console:?}");
    assert_eq!(agent.stdout_text().lines().count(), 3);
}

/// Makes one session in a thread named `name`; returns its (client, server) ports.
fn session_named(name: &str) -> (u16, u16) {
    let name = CString::new(name).unwrap();
    thread::spawn(move || {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) }, 0);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        client.write_all(b"ping").unwrap();
        let ports = (
            client.local_addr().unwrap().port(),
            server.local_addr().unwrap().port(),
        );
        drop(client);
        drop(server);
        ports
    })
    .join()
    .expect("the traffic thread")
}

/// The records of RFC 4180 text (up to its last line break): fields separated by commas, a
/// field in double quotes may hold commas, line breaks and doubled quotes.
fn parse_rfc4180(text: &str) -> Vec<Vec<String>> {
    let text = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(!quoted && field.is_empty() && record.is_empty(), "{text:?}");
    records
}

#[test]
fn a_task_name_cannot_add_csv_columns() {
    require_root();
    let dir = TempDir::new("local-csv-injection");
    let pid = std::process::id().to_string();
    let mut agent = agent::start(&["-s", "-p", &pid], &[], dir.path());
    let (client, server) = session_named("x,4,6.6.6.6,22");
    let is_ours = |record: &Vec<String>| {
        record.len() == 10 && record[4] == client.to_string() && record[6] == server.to_string()
    };
    agent.wait_for_output(Duration::from_secs(10), "the session's line", |_| {
        parse_rfc4180(&agent_stdout(&dir)).iter().any(is_ours)
    });
    agent::stop(&mut agent);
    let records = parse_rfc4180(&agent.stdout_text());
    assert!(
        records.iter().all(|record| record.len() == 10),
        "{records:?}"
    );
    let ours: Vec<_> = records.into_iter().filter(is_ours).collect();
    assert_eq!(
        ours[0][..7],
        [
            pid.as_str(),
            "x,4,6.6.6.6,22",
            "4",
            "127.0.0.1",
            &client.to_string(),
            "127.0.0.1",
            &server.to_string()
        ],
        "{ours:?}"
    );
    assert_eq!(ours.len(), 1);
    agent::assert_nothing_lost(&agent.stderr_text());
}

/// What the agent printed so far (its stdout file).
fn agent_stdout(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.path().join("agent.stdout")).unwrap_or_default()
}

#[test]
fn a_task_name_with_spaces_cannot_add_fixed_width_columns() {
    require_root();
    let dir = TempDir::new("local-space-injection");
    let pid = std::process::id().to_string();
    let mut agent = agent::start(&["-w", "-p", &pid], &[], dir.path());
    let (client, server) = session_named("x 4 6.6.6.6 22");
    let ours = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .map(|line| {
                line.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|columns| {
                columns.len() > 6
                    && columns[4] == client.to_string()
                    && columns[6] == server.to_string()
            })
            .collect()
    };
    agent.wait_for_output(Duration::from_secs(10), "the session's line", |_| {
        !ours(&agent_stdout(&dir)).is_empty()
    });
    agent::stop(&mut agent);
    let stdout = agent.stdout_text();
    let columns = stdout.lines().next().unwrap().split_whitespace().count();
    assert_eq!(
        columns, 10,
        "PID COMM IP LADDR LPORT RADDR RPORT TX_KB RX_KB MS"
    );
    for line in stdout.lines() {
        assert_eq!(line.split_whitespace().count(), columns, "{line:?}");
    }
    let ours = ours(&stdout);
    assert_eq!(ours.len(), 1, "{stdout}");
    assert_eq!(
        ours[0][..4],
        [pid.as_str(), "x_4_6.6.6.6_22", "4", "127.0.0.1"]
    );
    agent::assert_nothing_lost(&agent.stderr_text());
}

#[test]
fn json_lines_to_a_file_that_reaches_its_size_limit_end_with_a_whole_line_and_exit_74() {
    require_root();
    let dir = TempDir::new("local-json-efbig");
    let path = dir.path().join("spans.jsonl");
    let path_text = path.display().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let args = args(
        &listener,
        &[
            "-s",
            "--json-output",
            &path_text,
            "--bsp-max-export-batch-size",
            "1",
            "--bsp-schedule-delay",
            "100ms",
        ],
    );
    let mut command = agent::command(&str_args(&args), &[]);
    // 16 KiB per file: five or six JSON lines of about 2.7 KB, the last write cut short by
    // the limit (then EFBIG); the logs and the console stay well below it.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 16 * 1024,
                rlim_max: 16 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0
                || libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut agent = agent::start_command(command, dir.path());
    sessions(&listener, 10);
    let status = agent.wait(Duration::from_secs(10));
    let stderr = agent.stderr_text();
    assert_eq!(status.code(), Some(OUTPUT_FAILED), "{stderr}");
    assert_eq!(
        agent::log_lines(&stderr, "ERROR"),
        vec![format!(
            "otel_agent: cannot write JSON lines to {path_text}: File too large (os error 27)"
        )]
    );
    assert_read_exactly(&stderr, 10);
    let json = agent::assert_output_balances(&stderr, "json");
    let written = counter(&json, "written");
    assert!(written >= 1, "{json:?}");
    assert_eq!(
        counter(&json, "lost_output_failed"),
        10 - written,
        "{json:?}"
    );
    // The line the limit cut short was cut off: the file holds exactly the lines written.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'), "torn line left in the file");
    assert_eq!(text.lines().count() as u64, written);
    for line in text.lines() {
        let _: serde_json::Value = serde_json::from_str(line).expect("a whole JSON line");
    }
    let console = agent::assert_output_balances(&stderr, "console");
    assert_eq!(counter(&console, "written"), 10, "{console:?}");
}
