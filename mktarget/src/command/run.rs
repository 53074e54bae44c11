//! Running a command: to its end ([`Cmd::run`], [`Finished`]) or in the
//! background ([`Cmd::spawn`], [`Child`]), known to the interrupt handler
//! while it runs.

use std::io::{Read, Write};
use std::process::ExitStatus;

use anyhow::{bail, Context, Result};

use super::error::{ProcessError, Program, TAIL_BYTES};
use super::stdio::{direct, joined_first, Out, Stdio};
use super::{Cmd, Stdin};
use crate::interrupt;

impl Cmd {
    /// Runs the command to its end, its streams going where `stdio` says,
    /// known to the interrupt handler meanwhile, and returns how it ended
    /// and what was kept. An error only when it could not run; whether it
    /// failed is for the caller to ask ([`Finished::checked`]).
    pub fn run(&self, stdio: Stdio<'_>) -> Result<Finished> {
        let Stdio {
            stdin_pipe,
            stdout,
            stderr,
        } = stdio;
        if stdin_pipe || matches!(stdout, Out::Pipe) || matches!(stderr, Out::Pipe | Out::Tee(_)) {
            bail!(
                "`{}`: pipes of ours are for a spawned command",
                self.brief()
            );
        }
        let own_group = self.own_group();
        let mut expr = self.expression(own_group);
        let (mut tee, mut hold_out, mut hold_err) = (None, None, None);
        for (out, is_stdout) in joined_first(stdout, stderr) {
            expr = match out {
                Out::Tee(out) => {
                    tee = Some(out);
                    expr
                }
                Out::Hold(out) if is_stdout => {
                    hold_out = Some(out);
                    expr.stdout_capture()
                }
                Out::Hold(out) => {
                    hold_err = Some(out);
                    expr.stderr_capture()
                }
                other => direct(expr, other, is_stdout)?,
            };
        }
        let (output, shown) = match tee {
            Some(mut out) => (self.tee(expr, own_group, &mut out)?, true),
            None => (self.wait_output(expr, own_group)?, false),
        };
        let finished = Finished {
            status: output.status,
            stdout: output.stdout,
            stderr: output.stderr,
            command: self.brief(),
            program: Program::of(&self.program),
            shown,
        };
        if finished.success() {
            // Our stderr going away must not fail a command that succeeded.
            if let Some(mut out) = hold_out {
                let _ = out.write_all(&finished.stdout);
            }
            if let Some(mut out) = hold_err {
                let _ = out.write_all(&finished.stderr);
            }
        }
        Ok(finished)
    }

    /// Runs `expr` (this command, its streams directed) to its end, and
    /// returns how it ended and what was captured. Our copies of files
    /// `expr` directs to are closed once it started, so readers of pipes
    /// see their end when it is done.
    fn wait_output(&self, expr: duct::Expression, own_group: bool) -> Result<std::process::Output> {
        let expr = expr.unchecked();
        let handle = expr
            .start()
            .with_context(|| format!("cannot start `{}`", self.brief()))?;
        drop(expr);
        let _registered = interrupt::register(handle.pids(), own_group);
        handle
            .into_output()
            .with_context(|| format!("waiting for `{}`", self.brief()))
    }

    /// Runs `expr` to its end, its stdout passed on to `out` as it comes;
    /// what comes back as its stderr is the end of that output.
    fn tee(
        &self,
        expr: duct::Expression,
        own_group: bool,
        out: &mut dyn Write,
    ) -> Result<std::process::Output> {
        let mut reader = expr
            .unchecked()
            .reader()
            .with_context(|| format!("cannot start `{}`", self.brief()))?;
        let _registered = interrupt::register(reader.pids(), own_group);
        let mut tail = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = reader
                .read(&mut buf)
                .with_context(|| format!("reading the output of `{}`", self.brief()))?;
            if n == 0 {
                break;
            }
            // Our stderr going away must not abort the step halfway.
            let _ = out.write_all(&buf[..n]);
            keep_tail(&mut tail, &buf[..n]);
        }
        let status = reader
            .try_wait()
            .with_context(|| format!("waiting for `{}`", self.brief()))?
            .map(|output| output.status)
            .with_context(|| format!("`{}` did not exit", self.brief()))?;
        Ok(std::process::Output {
            status,
            stdout: Vec::new(),
            stderr: tail,
        })
    }

    /// Starts the command in the background, its streams going where
    /// `stdio` says (a long-lived helper, such as an ssh master, or one
    /// polled against a deadline); see [`Child`].
    pub fn spawn(&self, stdio: Stdio<'_>) -> Result<Child> {
        let Stdio {
            stdin_pipe,
            stdout,
            stderr,
        } = stdio;
        let pipe = || os_pipe::pipe().context("cannot make a pipe");
        let (mut ours_in, mut ours_out, mut ours_err) = (None, None, None);
        let (expr, own_group) = if stdin_pipe {
            // Not with our stdin_null, which would win over the pipe.
            let mut inner = self.clone();
            inner.stdin = Stdin::Inherit;
            let (reader, mut writer) = pipe()?;
            if let Some(first) = inner.first_line.take() {
                // A pipe holds far more than a line: this never blocks.
                writer
                    .write_all(&first.password.line())
                    .context("cannot write the sudo password to its pipe")?;
            }
            ours_in = Some(writer);
            (inner.expression(true).stdin_file(reader), true)
        } else {
            (self.expression(self.own_group()), self.own_group())
        };
        let mut expr = expr;
        for (out, is_stdout) in joined_first(stdout, stderr) {
            expr = match out {
                Out::Pipe => {
                    let (reader, writer) = pipe()?;
                    if is_stdout {
                        ours_out = Some(reader);
                        expr.stdout_file(writer)
                    } else {
                        ours_err = Some(reader);
                        expr.stderr_file(writer)
                    }
                }
                Out::Tee(_) | Out::Hold(_) => {
                    bail!(
                        "`{}`: a spawned command's output is not ours to pass on",
                        self.brief()
                    )
                }
                other => direct(expr, other, is_stdout)?,
            };
        }
        let expr = expr.unchecked();
        let handle = expr
            .start()
            .with_context(|| format!("cannot start `{}`", self.brief()))?;
        // Our copies of the child's ends: a reader must see its end.
        drop(expr);
        let registered = interrupt::register(handle.pids(), own_group);
        Ok(Child {
            pids: handle.pids(),
            own_group,
            handle,
            _registered: registered,
            command: self.brief(),
            program: Program::of(&self.program),
            stdin: ours_in,
            stdout: ours_out,
            stderr: ours_err,
        })
    }
}

/// A command run to its end ([`Cmd::run`]).
#[derive(Clone, Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// Its stdout, when kept ([`Out::Capture`], [`Out::Hold`]).
    pub stdout: Vec<u8>,
    /// Its stderr, when kept; the end of its output when that went to an
    /// [`Out::Tee`].
    pub stderr: Vec<u8>,
    command: String,
    program: Program,
    shown: bool,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Itself when it succeeded, else its error.
    pub fn checked(self) -> std::result::Result<Finished, ProcessError> {
        if self.success() {
            Ok(self)
        } else {
            Err(self.failure())
        }
    }

    /// The error it is (or would be) when it failed.
    pub fn failure(&self) -> ProcessError {
        ProcessError {
            command: self.command.clone(),
            program: self.program,
            status: self.status,
            stderr: self.stderr.clone(),
            shown: self.shown,
        }
    }

    /// Its kept stdout as text, when it succeeded; else its error.
    pub fn text(self) -> Result<String> {
        self.checked()?.stdout_text()
    }

    /// Its kept stdout as text, however it ended.
    pub fn stdout_text(self) -> Result<String> {
        let command = self.command;
        String::from_utf8(self.stdout)
            .with_context(|| format!("`{command}` printed something that is not UTF-8"))
    }
}

impl From<Finished> for std::process::Output {
    fn from(finished: Finished) -> std::process::Output {
        std::process::Output {
            status: finished.status,
            stdout: finished.stdout,
            stderr: finished.stderr,
        }
    }
}

/// A command started in the background ([`Cmd::spawn`]), and our ends of
/// the pipes it was given; stopped with [`Child::terminate`] (the
/// interrupt handler stops it on a signal: it is registered).
#[derive(Debug)]
pub struct Child {
    handle: duct::Handle,
    pids: Vec<u32>,
    own_group: bool,
    _registered: interrupt::Registered,
    command: String,
    program: Program,
    pub stdin: Option<os_pipe::PipeWriter>,
    pub stdout: Option<os_pipe::PipeReader>,
    pub stderr: Option<os_pipe::PipeReader>,
}

impl Child {
    /// Our ends of its stdin, stdout and stderr, for a child spawned with
    /// [`Stdio::piped`].
    pub fn take_pipes(
        &mut self,
    ) -> (
        os_pipe::PipeWriter,
        os_pipe::PipeReader,
        os_pipe::PipeReader,
    ) {
        match (self.stdin.take(), self.stdout.take(), self.stderr.take()) {
            (Some(stdin), Some(stdout), Some(stderr)) => (stdin, stdout, stderr),
            _ => panic!("`{}` was not spawned with Stdio::piped()", self.command),
        }
    }

    /// How it exited, if it has.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.handle.try_wait()?.map(|output| output.status))
    }

    /// Waits for it to exit; how it did, and what was kept of its output
    /// ([`Out::Capture`]).
    pub fn wait(&mut self) -> Result<Finished> {
        let output = self
            .handle
            .wait()
            .with_context(|| format!("waiting for `{}`", self.command))?;
        Ok(Finished {
            status: output.status,
            stdout: output.stdout.clone(),
            stderr: output.stderr.clone(),
            command: self.command.clone(),
            program: self.program,
            shown: false,
        })
    }

    /// Waits up to `timeout` for it to exit; how it exited, if it did.
    pub fn wait_for(&mut self, timeout: std::time::Duration) -> Option<ExitStatus> {
        let started = std::time::Instant::now();
        loop {
            match self.handle.try_wait() {
                Ok(Some(output)) => return Some(output.status),
                Ok(None) if started.elapsed() < timeout => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                _ => return None,
            }
        }
    }

    /// Sends SIGTERM, waits up to `grace` for it to exit, then kills it.
    /// SIGTERM is sent again every 100 ms meanwhile: a program that checks
    /// for a signal before it waits (OpenSSH 9.2's ssh does) misses one
    /// that lands between the check and the wait until its wait times out.
    pub fn terminate(&mut self, grace: std::time::Duration) {
        use nix::sys::signal::Signal;
        use std::time::{Duration, Instant};
        let signal_all = |signal: Signal| {
            for &pid in &self.pids {
                interrupt::stop(pid, self.own_group, signal);
            }
        };
        let started = Instant::now();
        let mut signalled: Option<Instant> = None;
        while started.elapsed() < grace {
            if !matches!(self.handle.try_wait(), Ok(None)) {
                return;
            }
            if signalled.is_none_or(|at| at.elapsed() >= Duration::from_millis(100)) {
                signal_all(Signal::SIGTERM);
                signalled = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        signal_all(Signal::SIGKILL);
        let _ = self.handle.wait();
    }
}

fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    tail.extend_from_slice(chunk);
    if tail.len() > 2 * TAIL_BYTES {
        tail.drain(..tail.len() - TAIL_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    #[test]
    fn status_to_keeps_stdout_and_stderr_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("out"), dir.path().join("err"));
        let status = Cmd::new("/bin/sh")
            .args(["-c", "echo to-out; echo to-err >&2; exit 4"])
            .run(Stdio::new(
                Out::file(File::create(&out).unwrap()),
                Out::file(File::create(&err).unwrap()),
            ))
            .unwrap()
            .status;
        assert_eq!(status.code(), Some(4));
        assert_eq!(std::fs::read_to_string(out).unwrap(), "to-out\n");
        assert_eq!(std::fs::read_to_string(err).unwrap(), "to-err\n");
    }

    #[test]
    fn captured_stdout_leaves_stderr_ours_or_kept() {
        let script = ["-c", "echo data; echo log >&2; exit 3"];
        let cmd = Cmd::new("/bin/sh").args(script);
        let ran = cmd.run(Stdio::new(Out::Capture, Out::Inherit)).unwrap();
        assert_eq!(
            (ran.status.code(), &ran.stdout[..]),
            (Some(3), &b"data\n"[..])
        );
        assert!(ran.stderr.is_empty());
        let ran = cmd.run(Stdio::capture()).unwrap();
        assert_eq!(
            (&ran.stdout[..], &ran.stderr[..]),
            (&b"data\n"[..], &b"log\n"[..])
        );
    }

    #[test]
    fn held_output_is_passed_on_only_when_it_succeeds() {
        let held = |script: &str| {
            let mut passed = Vec::new();
            let ran = Cmd::new("/bin/sh")
                .args(["-c", script])
                .run(Stdio::new(Out::Capture, Out::Hold(Box::new(&mut passed))))
                .unwrap();
            (ran, passed)
        };
        let (ran, passed) = held("echo data; echo log >&2");
        assert_eq!(
            (ran.text().unwrap().as_str(), &passed[..]),
            ("data\n", &b"log\n"[..])
        );
        let (ran, passed) = held("echo data; echo why >&2; exit 5");
        assert!(passed.is_empty());
        let err = ran.checked().unwrap_err();
        assert_eq!(
            (err.status.code(), &err.stderr[..], err.shown),
            (Some(5), &b"why\n"[..], false)
        );
        assert!(
            err.to_string()
                .ends_with("failed: exit status 5\n--- its output ends with ---\nwhy"),
            "{err}"
        );
    }

    #[test]
    fn a_teed_run_passes_both_streams_on_and_keeps_their_end() {
        let mut passed = Vec::new();
        let cmd = Cmd::new("/bin/sh").args(["-c", "echo out; echo err >&2; exit 4"]);
        let err = cmd
            .run(Stdio::tee(&mut passed))
            .unwrap()
            .checked()
            .unwrap_err();
        assert_eq!(passed, b"out\nerr\n");
        assert_eq!((&err.stderr[..], err.shown), (&b"out\nerr\n"[..], true));
        // Shown, so not repeated.
        assert_eq!(
            err.to_string(),
            format!("`{}` failed: exit status 4", cmd.brief())
        );
    }

    #[test]
    fn a_spawned_child_is_waited_for_its_output() {
        let mut child = Cmd::new("/bin/sh")
            .args(["-c", "echo out; echo err >&2; exit 2"])
            .spawn(Stdio::capture())
            .unwrap();
        while child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let output = child.wait().unwrap();
        assert_eq!(output.status.code(), Some(2));
        assert_eq!(
            (&output.stdout[..], &output.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
    }

    #[test]
    fn a_piped_child_is_talked_to() {
        let mut child = Cmd::new("/bin/sh")
            .args(["-c", "read line; echo \"got $line\"; echo done >&2"])
            .spawn(Stdio::piped())
            .unwrap();
        let (mut stdin, mut stdout, mut stderr) = child.take_pipes();
        stdin.write_all(b"hi\n").unwrap();
        drop(stdin);
        let (mut out, mut err) = (String::new(), String::new());
        stdout.read_to_string(&mut out).unwrap();
        stderr.read_to_string(&mut err).unwrap();
        assert_eq!((out.as_str(), err.as_str()), ("got hi\n", "done\n"));
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn a_joined_stream_goes_where_the_other_goes() {
        let cmd = Cmd::new("/bin/sh").args(["-c", "echo to-out; echo to-err >&2; exit 3"]);
        let ran = cmd.run(Stdio::new(Out::Join, Out::Capture)).unwrap();
        assert_eq!(ran.status.code(), Some(3));
        assert_eq!(
            (&ran.stdout[..], &ran.stderr[..]),
            (&b""[..], &b"to-out\nto-err\n"[..])
        );
        let ran = cmd.run(Stdio::new(Out::Capture, Out::Join)).unwrap();
        assert_eq!(
            (&ran.stdout[..], &ran.stderr[..]),
            (&b"to-out\nto-err\n"[..], &b""[..])
        );
        let ran = cmd.run(Stdio::inherit()).unwrap();
        assert_eq!((ran.status.code(), ran.stderr.len()), (Some(3), 0));
    }

    #[test]
    fn pipes_of_ours_are_refused_where_nothing_reads_them() {
        let cmd = Cmd::new("true");
        assert!(cmd.run(Stdio::piped()).is_err());
        assert!(cmd.spawn(Stdio::read()).is_err());
        assert!(cmd
            .run(Stdio::new(
                Out::Inherit,
                Out::Tee(Box::new(std::io::sink()))
            ))
            .is_err());
    }

    #[test]
    fn stdout_to_a_file_is_written_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        Cmd::new("printf")
            .arg("secret")
            .run(Stdio::new(
                Out::file(File::create(&path).unwrap()),
                Out::Hold(Box::new(std::io::stderr())),
            ))
            .unwrap()
            .checked()
            .unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), "secret");
    }
}
