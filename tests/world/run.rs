//! Running a child process with a deadline and capturing everything a failure
//! message needs: the command line, its exit status, its stdout and stderr.

use std::ffi::OsStr;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long one run of a tool may take before it is killed and counted as hung.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished (or killed) child did.
#[derive(Clone)]
pub struct Output {
    /// The command line, quoted for a POSIX shell, prefixed with `cd DIR &&`
    /// when a working directory was set.
    pub command: String,
    /// How the child ended (a kill by signal after a timeout included).
    pub status: ExitStatus,
    /// Everything the child wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the child wrote to stderr.
    pub stderr: Vec<u8>,
    /// True when the child (or a process it left behind holding its stdout or
    /// stderr) was still running at the deadline and was killed.
    pub timed_out: bool,
    /// Wall time from spawn to the end of output.
    pub elapsed: Duration,
}

impl Output {
    /// Exited with status 0 before the deadline.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    /// The exit code, `None` when killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout as text (lossy UTF-8).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy UTF-8).
    /// stdout as the one JSON document a `--json` run prints there.
    #[track_caller]
    pub fn document(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout_str().trim_end())
            .unwrap_or_else(|err| panic!("stdout is not one JSON document ({err}):\n{self}"))
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Panics, showing the command, status, stdout and stderr, unless it succeeded.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        if !self.success() {
            panic!("command failed but should have succeeded\n{self}");
        }
        self
    }

    /// Panics, showing everything, unless the command ran to its end and exited
    /// non-zero (a timeout or a kill by signal is not the failure a test expects).
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        if self.timed_out || matches!(self.status.code(), None | Some(0)) {
            panic!("command should have failed with a non-zero exit status\n{self}");
        }
        self
    }

    /// Panics, showing everything, unless the exit code is `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        if self.timed_out || self.status.code() != Some(code) {
            panic!("command should have exited with status {code}\n{self}");
        }
        self
    }

    /// Panics, showing everything, unless stdout contains `needle`.
    #[track_caller]
    pub fn assert_stdout_contains(&self, needle: &str) -> &Self {
        if !self.stdout_str().contains(needle) {
            panic!("stdout should contain {needle:?}\n{self}");
        }
        self
    }

    /// Panics, showing everything, unless stderr contains `needle`.
    #[track_caller]
    pub fn assert_stderr_contains(&self, needle: &str) -> &Self {
        if !self.stderr_str().contains(needle) {
            panic!("stderr should contain {needle:?}\n{self}");
        }
        self
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.command)?;
        if self.timed_out {
            writeln!(
                f,
                "status:  TIMED OUT after {:.1?} and killed ({})",
                self.elapsed, self.status
            )?;
        } else {
            writeln!(f, "status:  {} (after {:.1?})", self.status, self.elapsed)?;
        }
        writeln!(f, "--- stdout ---")?;
        write_block(f, &self.stdout)?;
        writeln!(f, "--- stderr ---")?;
        write_block(f, &self.stderr)?;
        write!(f, "--- end ---")
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn write_block(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let text = String::from_utf8_lossy(bytes);
    f.write_str(&text)?;
    if !text.is_empty() && !text.ends_with('\n') {
        writeln!(f, "\n(no newline at end)")?;
    }
    Ok(())
}

/// The arguments of a deploy to `target` that asks nothing and shows no
/// nom: `--target TARGET --force --nom false`, then `more`.
pub fn forced_args<'a>(target: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--target", target, "--force", "--nom", "false"];
    args.extend(more);
    args
}

/// Quotes one word for a POSIX shell, for display only.
pub fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b",._+:@%/=-".contains(&b));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The command line of `cmd` as a shell would read it.
pub fn command_line(cmd: &Command) -> String {
    let mut line = String::new();
    if let Some(dir) = cmd.get_current_dir() {
        line.push_str("cd ");
        line.push_str(&quote(dir.as_os_str()));
        line.push_str(" && ");
    }
    line.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

/// Runs `cmd` with `stdin` as its whole input, capturing stdout and stderr, and
/// kills it (with its whole process group) when it is not done by `timeout`.
///
/// The child gets its own process group so that a hung tool and the ssh, rsync
/// or shell it started can all be killed at once.
pub fn run(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    let command = command_line(cmd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start `{command}`: {err}"));
    let pid = child.id();

    let mut input = child.stdin.take().expect("stdin is piped");
    let bytes = stdin.to_vec();
    // A child that never reads its stdin must not block us: write from a thread,
    // which ends with EPIPE when the child is gone.
    thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let (stdout, stdout_done) = collect(child.stdout.take().expect("stdout is piped"));
    let (stderr, stderr_done) = collect(child.stderr.take().expect("stderr is piped"));

    let deadline = start + timeout;
    let mut status = None;
    let mut timed_out = false;
    let mut pause = Duration::from_millis(1);
    loop {
        if status.is_none() {
            status = child
                .try_wait()
                .unwrap_or_else(|err| panic!("cannot wait for `{command}`: {err}"));
        }
        if status.is_some() && stdout_done.is_finished() && stderr_done.is_finished() {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    if timed_out {
        kill_process_group(pid);
        let _ = child.kill();
    }
    // Reaps the child after a timeout; otherwise returns the status try_wait saw.
    let status = child
        .wait()
        .unwrap_or_else(|err| panic!("cannot wait for `{command}`: {err}"));
    if timed_out {
        let grace = Instant::now() + Duration::from_secs(5);
        while !(stdout_done.is_finished() && stderr_done.is_finished()) && Instant::now() < grace {
            thread::sleep(Duration::from_millis(10));
        }
    }
    let elapsed = start.elapsed();
    let take = |buf: &Arc<Mutex<Vec<u8>>>| buf.lock().map(|b| b.clone()).unwrap_or_default();
    Output {
        command,
        status,
        stdout: take(&stdout),
        stderr: take(&stderr),
        timed_out,
        elapsed,
    }
}

/// Sends SIGKILL to the process group `pgid` (which we created for a child),
/// through the shell's builtin `kill`, as the workspace forbids `unsafe`.
pub(crate) fn kill_process_group(pgid: u32) {
    let _ = Command::new("/bin/sh")
        .args(["-c", "kill -s KILL -- \"-$1\" 2>/dev/null", "sh"])
        .arg(pgid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

type Collected = (Arc<Mutex<Vec<u8>>>, thread::JoinHandle<()>);

fn collect(mut pipe: impl Read + Send + 'static) -> Collected {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => sink
                    .lock()
                    .expect("output buffer")
                    .extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    (buf, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_survives_a_real_shell() {
        for word in ["plain", "", "a b", "it's", "$HOME", "a\nb", "*", "-x"] {
            let out = Command::new("/bin/sh")
                .args(["-c", &format!("printf %s {}", quote(OsStr::new(word)))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
        }
    }

    #[test]
    fn a_hung_child_is_killed_at_the_deadline() {
        let out = run(
            Command::new("/bin/sh").args(["-c", "sleep 30 & sleep 30"]),
            b"",
            Duration::from_millis(300),
        );
        assert!(out.timed_out, "{out}");
        assert!(out.elapsed < Duration::from_secs(10), "{out}");
        assert!(!out.success());
    }

    #[test]
    fn stdin_stdout_and_stderr_are_passed() {
        let out = run(
            Command::new("/bin/sh").args(["-c", "cat; echo err >&2; exit 3"]),
            b"input",
            RUN_TIMEOUT,
        );
        assert_eq!(out.stdout, b"input");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.code(), Some(3));
        out.assert_failure();
    }
}
