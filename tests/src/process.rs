//! Child processes for tests: always reaped, signalled by their own pid only, with their
//! output captured to files the test can read while they run.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// A running child that is killed and reaped when dropped.
pub struct ChildGuard {
    child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl ChildGuard {
    /// Starts `command` with stdout and stderr going to `<dir>/<name>.stdout` / `.stderr`.
    pub fn spawn(command: Command, dir: &Path, name: &str) -> Self {
        let stdout = dir.join(format!("{name}.stdout"));
        let file = File::create(&stdout).expect("create stdout file");
        Self::spawn_with_stdout(command, dir, name, file.into())
    }

    /// Starts `command` with its stdout on `stdout` (a pipe the test holds, say; then
    /// [`ChildGuard::stdout_text`] is empty) and stderr going to `<dir>/<name>.stderr`.
    pub fn spawn_with_stdout(mut command: Command, dir: &Path, name: &str, out: Stdio) -> Self {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(File::create(&stderr).expect("create stderr file"))
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to this child (and only to it).
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal the child");
    }

    /// Waits for the child to exit, failing the test after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the child did not exit within {timeout:?}; stderr:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll the child")
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls stdout+stderr until `predicate` holds, failing the test after `timeout` or as
    /// soon as the child exits.
    pub fn wait_for_output(
        &mut self,
        timeout: Duration,
        what: &str,
        predicate: impl Fn(&str) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let output = format!("{}{}", self.stdout_text(), self.stderr_text());
            if predicate(&output) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the child exited ({status}) before {what}; output:\n{output}");
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what}; output so far:\n{output}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `otel-agent` binary built next to this test (`target/<profile>/otel-agent`), or the
/// one `OTEL_AGENT_BIN` names.
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("OTEL_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let binary = profile_dir.join("otel-agent");
    assert!(
        binary.is_file(),
        "{} does not exist; build it first with `cargo build -p otel-agent` (scripts/test.sh does)",
        binary.display()
    );
    binary
}

/// A directory for one test's files, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("otel-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the test directory");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
