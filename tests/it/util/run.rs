//! The one way the tests run a command and look at how it ended: [`run`] for a command that
//! runs to its end, [`start`] for one the test interacts with first; both give a [`Run`], whose
//! assertions name the command and show its stderr when they fail. Every wait is bounded by
//! [`LIMIT`], so a pglock that hangs fails its test instead of hanging the suite.

use super::LIMIT;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::borrow::BorrowMut;
use std::fmt;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a command ended: its exit status, stdout and stderr.
pub struct Run {
    what: String,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs `cmd` to its end with stdin from /dev/null and stdout and stderr captured (unless the
/// test redirected them), like `Command::output`, but bounded by [`LIMIT`]. Uses `cmd` up.
#[track_caller]
pub fn run(mut cmd: impl BorrowMut<Command>) -> Run {
    let cmd = cmd.borrow_mut();
    let what = format!("{cmd:?}");
    let mut cmd = std::mem::replace(cmd, Command::new("true"));
    let (tx, rx) = mpsc::channel();
    // output() keeps what the test set and pipes the rest; a thread lets the wait be bounded.
    std::thread::spawn(move || tx.send(cmd.output()));
    let out = rx
        .recv_timeout(LIMIT)
        .unwrap_or_else(|_| panic!("{what} did not exit within {LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    Run {
        what,
        status: out.status,
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stdout_bytes(&self) -> &[u8] {
        &self.stdout
    }

    pub fn stderr(&self) -> &str {
        &self.stderr
    }

    /// Stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| panic!("{self}\nnot JSON: {e}"))
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(self.code(), Some(code), "{self}");
        self
    }

    #[track_caller]
    pub fn assert_success(&self) -> &Run {
        self.assert_code(0)
    }

    /// Killed by `signal`, without an exit code.
    #[track_caller]
    pub fn assert_signal(&self, signal: Signal) -> &Run {
        assert_eq!(self.status.signal(), Some(signal as i32), "{self}");
        self
    }

    #[track_caller]
    pub fn assert_stderr(&self, text: &str) -> &Run {
        assert_eq!(self.stderr, text, "{self}");
        self
    }

    #[track_caller]
    pub fn assert_stderr_contains(&self, text: &str) -> &Run {
        assert!(self.stderr.contains(text), "no {text:?} in stderr: {self}");
        self
    }

    #[track_caller]
    pub fn assert_stderr_lacks(&self, text: &str) -> &Run {
        assert!(!self.stderr.contains(text), "{text:?} in stderr: {self}");
        self
    }

    #[track_caller]
    pub fn assert_stderr_starts_with(&self, text: &str) -> &Run {
        assert!(
            self.stderr.starts_with(text),
            "stderr not {text:?}…: {self}"
        );
        self
    }

    /// The documented form of an error: one line, starting `pglock: `.
    #[track_caller]
    pub fn assert_one_pglock_line(&self) -> &Run {
        self.assert_stderr_starts_with("pglock: ");
        assert_eq!(self.stderr.lines().count(), 1, "one line: {self}");
        self
    }

    #[track_caller]
    pub fn assert_stdout(&self, text: &str) -> &Run {
        assert_eq!(self.stdout(), text, "{self}");
        self
    }

    #[track_caller]
    pub fn assert_stdout_contains(&self, text: &str) -> &Run {
        assert!(
            self.stdout().contains(text),
            "no {text:?} in stdout: {self}"
        );
        self
    }
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{}\n  ended: {}\n  stdout: {:?}\n  stderr: {:?}",
            self.what,
            self.status,
            self.stdout(),
            self.stderr
        )
    }
}

/// A command started with [`start`]: in a process group of its own, as a shell starts a job,
/// with stdin piped (closing it ends commands that read it) and stderr collected as it comes.
pub struct Started {
    what: String,
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_done: Receiver<()>,
    status: Option<ExitStatus>,
}

/// Starts `cmd` (usually `pglock()` with arguments); stdout stays as the test set it.
pub fn start(mut cmd: impl BorrowMut<Command>) -> Started {
    start_keeping_stderr(cmd.borrow_mut().stderr(Stdio::piped()))
}

/// As [`start`], with stderr where the test sent it (a closed pipe, a terminal, /dev/full)
/// unless that is a pipe, which is collected.
pub fn start_keeping_stderr(mut cmd: impl BorrowMut<Command>) -> Started {
    let cmd = cmd.borrow_mut();
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (done, stderr_done) = mpsc::channel();
    let (pipe, sink) = (child.stderr.take(), Arc::clone(&stderr));
    std::thread::spawn(move || {
        if let Some(mut pipe) = pipe {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
        let _ = done.send(());
    });
    Started {
        what,
        child,
        stderr,
        stderr_done,
        status: None,
    }
}

impl Started {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends `signal` to the started process.
    pub fn kill(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// Sends `signal` to the started process's group, as a terminal does.
    pub fn kill_group(&self, signal: Signal) {
        killpg(self.pid(), signal).unwrap();
    }

    /// Its stdout, when the test asked for a pipe.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Closes its stdin: a command that reads it sees end of file.
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// What it has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Its exit status, if it has ended (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// Closes its stdin and waits for it to end and close stderr.
    #[track_caller]
    pub fn finish(mut self) -> Run {
        drop(self.child.stdin.take());
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            if start.elapsed() > LIMIT {
                let _ = self.child.kill();
                panic!("{} did not exit within {LIMIT:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // A command's background process may hold stderr open for a while after pglock ended.
        let rest = LIMIT.saturating_sub(start.elapsed());
        if self.stderr_done.recv_timeout(rest).is_err() {
            panic!("{}: stderr still open {LIMIT:?} later", self.what);
        }
        Run {
            what: std::mem::take(&mut self.what),
            status,
            stdout: Vec::new(),
            stderr: self.stderr_so_far(),
        }
    }
}

impl Drop for Started {
    /// A test that failed half-way leaves no pglock behind (its dead man's switch then stops
    /// the command).
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
