//! An external command as a value: program, argv, env, working directory and
//! stdin. It prints itself as a quoted shell line (what `--dry-run` and the
//! log show) and becomes a `duct` expression only when it runs, in one of
//! two ways: [`Cmd::run`] to its end, or [`Cmd::spawn`] in the background,
//! its streams going where a [`Stdio`] says. A failure is a
//! [`ProcessError`]: the command line, how it ended, the end of its output.

use std::fmt;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use anyhow::{bail, Context, Result};

use crate::interrupt;
use crate::shell::quote;

/// How many bytes of a failed command's stderr its error quotes.
const TAIL_BYTES: usize = 2048;

/// The longest single argument Linux passes to a program
/// (`MAX_ARG_STRLEN`, 32 pages, the terminating NUL byte included). A
/// script for the target is one argument of `sh -c` there, of the login
/// shell sshd starts.
pub const MAX_ARG_BYTES: usize = 128 * 1024 - 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: Option<String>,
    stdin: Stdin,
    foreground: bool,
    /// `setpriv`, which starts the program for [`Cmd::die_with_us`].
    die_with_us: Option<String>,
}

/// Where a command's stdin comes from: part of the command, as its shell
/// line shows a pipe. Children never inherit ours unless asked to: the
/// tools read their own input from stdin. (A pipe of ours instead, to
/// talk to a helper, is [`Stdio::piped`].)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stdin {
    Null,
    Inherit,
    /// The stdout of another command, as in `SOURCE | THIS`.
    Pipe(Box<Cmd>),
}

/// Where a command's stdout or its stderr goes while it runs.
pub enum Out<'a> {
    /// Ours: its stdout to our stdout, its stderr to our stderr.
    Inherit,
    /// `/dev/null`.
    Null,
    /// Where its other stream goes: its stdout with its stderr (when our
    /// stdout carries something else), its stderr with its stdout.
    Join,
    /// Kept, and returned when it ends ([`Finished`], [`Child::wait`]).
    Capture,
    /// Kept while it runs, passed on to the writer when it succeeds, and
    /// quoted in its error when it fails ([`Cmd::run`] only).
    Hold(Box<dyn Write + 'a>),
    /// Passed on to the writer as it comes, its end kept for the error,
    /// which does not repeat it ([`Cmd::run`] and stdout only: join its
    /// stderr to pass both on).
    Tee(Box<dyn Write + 'a>),
    /// A file, or the write end of a pipe someone reads (a fleet prefixing
    /// each host's lines, a master's log). Our copy is closed once it
    /// started, so a reader sees the end when it (and whatever it left
    /// holding it) is done.
    File(OwnedFd),
    /// A pipe, whose end is ours ([`Child::stdout`], [`Child::stderr`];
    /// [`Cmd::spawn`] only).
    Pipe,
}

impl Out<'_> {
    /// To `file`: see [`Out::File`].
    pub fn file(file: impl Into<OwnedFd>) -> Out<'static> {
        Out::File(file.into())
    }
}

/// Where a command's streams go when it runs: its stdout and stderr (see
/// [`Out`]), and whether its stdin is a pipe of ours instead of what the
/// command says ([`Stdin`]).
pub struct Stdio<'a> {
    /// Its stdin a pipe whose write end is ours ([`Child::stdin`];
    /// [`Cmd::spawn`] only): a helper the tool talks to sees it close
    /// when the tool lets go of it, or exits, or dies. The command then
    /// runs in a process group of its own.
    pub stdin_pipe: bool,
    pub stdout: Out<'a>,
    pub stderr: Out<'a>,
}

impl<'a> Stdio<'a> {
    pub fn new(stdout: Out<'a>, stderr: Out<'a>) -> Stdio<'a> {
        Stdio {
            stdin_pipe: false,
            stdout,
            stderr,
        }
    }

    /// Our stdout and stderr: a driver's final command, whose status is
    /// the tool's.
    pub fn inherit() -> Stdio<'a> {
        Stdio::new(Out::Inherit, Out::Inherit)
    }

    /// Both to `/dev/null`.
    pub fn null() -> Stdio<'a> {
        Stdio::new(Out::Null, Out::Null)
    }

    /// Both kept, for a caller that tells what of them to show.
    pub fn capture() -> Stdio<'a> {
        Stdio::new(Out::Capture, Out::Capture)
    }

    /// Its stdout kept (data), its stderr passed on to ours when it
    /// succeeds and quoted in its error when it fails: what `$(…)` reads.
    pub fn read() -> Stdio<'a> {
        Stdio::new(Out::Capture, Out::Hold(Box::new(std::io::stderr())))
    }

    /// Its stdout and stderr, together, into `out` as they come; their end
    /// kept for the error (a step's log).
    pub fn tee(out: impl Write + 'a) -> Stdio<'a> {
        Stdio::new(Out::Tee(Box::new(out)), Out::Join)
    }

    /// Its stdin, stdout and stderr on pipes of ours: a long-lived helper
    /// the tool talks to (see [`Stdio::stdin_pipe`], [`Child::take_pipes`]).
    pub fn piped() -> Stdio<'a> {
        Stdio {
            stdin_pipe: true,
            stdout: Out::Pipe,
            stderr: Out::Pipe,
        }
    }
}

/// What a command is, as far as telling why it failed goes: whether its
/// exit status may be ssh's, or rsync's over ssh (see
/// [`crate::Session::connection_failure`]), or a script's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Ssh,
    Rsync,
    /// `/bin/sh`: a script here.
    Shell,
    Other,
}

impl Program {
    fn of(program: &str) -> Program {
        match program {
            "ssh" => Program::Ssh,
            "rsync" => Program::Rsync,
            "/bin/sh" => Program::Shell,
            _ => Program::Other,
        }
    }
}

/// A command that failed: its command line as users see it, how it ended,
/// and the end of its output. Its message is cargo's: `` `LINE` failed:
/// exit status N ``, then the output's end unless it was shown.
#[derive(Clone, Debug)]
pub struct ProcessError {
    /// The command line, cut short ([`Cmd::brief`]).
    pub command: String,
    pub program: Program,
    pub status: ExitStatus,
    /// Its stderr when it was kept; the end of its output when that was
    /// passed on as it came ([`Out::Tee`]); else empty.
    pub stderr: Vec<u8>,
    /// Whether `stderr` was shown already (the message then leaves it out).
    pub shown: bool,
}

impl ProcessError {
    /// Whether it is an ssh that lost or never had its connection (ssh's
    /// own exit status 255).
    pub fn ssh_failed(&self) -> bool {
        self.program == Program::Ssh && self.status.code() == Some(255)
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed: {}", self.command, describe(self.status))?;
        if self.shown {
            return Ok(());
        }
        let stderr = &self.stderr;
        let tail = String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(TAIL_BYTES)..]);
        let tail = tail.trim_end();
        if !tail.is_empty() {
            write!(f, "\n--- its output ends with ---\n{tail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProcessError {}

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

impl Cmd {
    pub fn new(program: impl Into<String>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            stdin: Stdin::Null,
            foreground: false,
            die_with_us: None,
        }
    }

    /// The command whose argv (program first) is `argv`.
    pub fn from_argv(argv: impl IntoIterator<Item = String>) -> Cmd {
        let mut argv = argv.into_iter();
        Cmd::new(argv.next().unwrap_or_default()).args(argv)
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Cmd {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn dir(mut self, dir: impl Into<String>) -> Cmd {
        self.dir = Some(dir.into());
        self
    }

    /// Keeps it in our process group though its stdin is not ours, so it
    /// can prompt on our terminal (see [`interrupt`]).
    pub fn foreground(mut self) -> Cmd {
        self.foreground = true;
        self
    }

    /// Has the kernel send it SIGTERM when we die, even by SIGKILL, when
    /// no handler of ours can stop it (Linux's parent-death signal, set by
    /// util-linux's `setpriv --pdeathsig`, when there is one on PATH): for
    /// a helper that would otherwise run on without us, like the shared ssh
    /// connection's master. The signal comes when the thread that started
    /// the command ends, so only a command started on the main thread gets
    /// it; one started on another thread, or where there is no `setpriv`
    /// (not Linux), runs as without.
    pub fn die_with_us(mut self) -> Cmd {
        if std::thread::current().name() == Some("main") {
            self.die_with_us = find_on_path("setpriv");
        }
        self
    }

    pub fn stdin_inherit(mut self) -> Cmd {
        self.stdin = Stdin::Inherit;
        self
    }

    /// Feeds `source`'s stdout into this command: `SOURCE | THIS`.
    pub fn pipe_from(mut self, source: Cmd) -> Cmd {
        self.stdin = Stdin::Pipe(Box::new(source));
        self
    }

    /// This command started by `wrapper`, a program and its arguments that
    /// runs the rest of its argv: `WRAPPER... PROGRAM ARGS...`, with the
    /// same environment, directory and stdin.
    pub fn under(self, wrapper: &[String]) -> Cmd {
        let Some((program, first)) = wrapper.split_first() else {
            return self;
        };
        let args = first
            .iter()
            .cloned()
            .chain(std::iter::once(self.program))
            .chain(self.args)
            .collect();
        Cmd {
            program: program.clone(),
            args,
            ..self
        }
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// The length of its longest word (the program, an argument, an
    /// environment entry), and of its input command's when it has one:
    /// beyond [`MAX_ARG_BYTES`] it cannot start.
    pub fn longest_word(&self) -> usize {
        let words = std::iter::once(self.program.len())
            .chain(self.args.iter().map(String::len))
            .chain(
                self.env
                    .iter()
                    .map(|(name, value)| name.len() + 1 + value.len()),
            );
        let source = match &self.stdin {
            Stdin::Pipe(source) => source.longest_word(),
            _ => 0,
        };
        words.max().unwrap_or(0).max(source)
    }

    /// The program followed by its arguments.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// Whether the command runs in process groups of its own (see
    /// [`interrupt`]): all but those that share our terminal, which must
    /// stay in the foreground group to read it.
    fn own_group(&self) -> bool {
        if self.foreground {
            return false;
        }
        match &self.stdin {
            Stdin::Null => true,
            Stdin::Inherit => false,
            Stdin::Pipe(source) => source.own_group(),
        }
    }

    fn expression(&self, own_group: bool) -> duct::Expression {
        let expr = self.expression_inner();
        if own_group {
            expr.before_spawn(|command| {
                std::os::unix::process::CommandExt::process_group(command, 0);
                Ok(())
            })
        } else {
            expr
        }
    }

    fn expression_inner(&self) -> duct::Expression {
        let mut expr = match &self.die_with_us {
            Some(setpriv) => duct::cmd(
                setpriv,
                ["--pdeathsig", "TERM", "--", &self.program]
                    .into_iter()
                    .chain(self.args.iter().map(String::as_str)),
            ),
            None => duct::cmd(&self.program, &self.args),
        };
        for (name, value) in &self.env {
            expr = expr.env(name, value);
        }
        if let Some(dir) = &self.dir {
            expr = expr.dir(dir);
        }
        match &self.stdin {
            Stdin::Null => expr.stdin_null(),
            Stdin::Inherit => expr,
            Stdin::Pipe(source) => source.expression_inner().pipe(expr),
        }
    }

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
            let (reader, writer) = pipe()?;
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

    /// Whether `status` says this command, an ssh, lost or never had its
    /// connection (ssh's own exit status 255).
    pub fn connection_failed(&self, status: ExitStatus) -> bool {
        self.failure(status).ssh_failed()
    }

    /// The error for this command ending with `status`, its output shown
    /// (for a caller that ran it with its output ours).
    pub fn failure(&self, status: ExitStatus) -> ProcessError {
        ProcessError {
            command: self.brief(),
            program: Program::of(&self.program),
            status,
            stderr: Vec::new(),
            shown: true,
        }
    }

    /// The command line, cut short for error messages (a populate step's
    /// script can be dozens of lines).
    pub fn brief(&self) -> String {
        let line = self.to_string();
        const MAX: usize = 400;
        match line.char_indices().nth(MAX) {
            Some((cut, _)) => format!("{}…", &line[..cut]),
            None => line,
        }
    }
}

/// `exit status N`, or the signal that killed the command.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown exit status".to_owned(),
    }
}

/// The exit code a tool should end with when its final command ended so.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    tail.extend_from_slice(chunk);
    if tail.len() > 2 * TAIL_BYTES {
        tail.drain(..tail.len() - TAIL_BYTES);
    }
}

impl fmt::Display for Cmd {
    /// One POSIX sh line that runs this command.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Stdin::Pipe(source) = &self.stdin {
            write!(f, "{source} | ")?;
        }
        if let Some(dir) = &self.dir {
            write!(f, "(cd {} && ", quote(dir))?;
        }
        for (name, value) in &self.env {
            write!(f, "{name}={} ", quote(value))?;
        }
        // A first word with `=` would read as an assignment.
        if self.program.contains('=') {
            write!(f, "'{}'", self.program.replace('\'', "'\\''"))?;
        } else {
            f.write_str(&quote(&self.program))?;
        }
        for arg in &self.args {
            write!(f, " {}", quote(arg))?;
        }
        if self.dir.is_some() {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Where `name` is on PATH: the first executable file of that name.
fn find_on_path(name: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| {
            std::fs::metadata(file)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
        .map(|file| file.display().to_string())
}

/// The streams in the order their directions apply: a joined one first,
/// as duct's inner direction, so that it joins wherever the other goes.
fn joined_first<'a>(stdout: Out<'a>, stderr: Out<'a>) -> [(Out<'a>, bool); 2] {
    if matches!(stderr, Out::Join) {
        [(stderr, false), (stdout, true)]
    } else {
        [(stdout, true), (stderr, false)]
    }
}

/// `expr` with its stdout (or stderr) going where `out` says, for the
/// ways that need nothing of ours while it runs.
fn direct(expr: duct::Expression, out: Out<'_>, is_stdout: bool) -> Result<duct::Expression> {
    Ok(match (out, is_stdout) {
        (Out::Inherit, _) => expr,
        (Out::Null, true) => expr.stdout_null(),
        (Out::Null, false) => expr.stderr_null(),
        (Out::Join, true) => expr.stdout_to_stderr(),
        (Out::Join, false) => expr.stderr_to_stdout(),
        (Out::Capture, true) => expr.stdout_capture(),
        (Out::Capture, false) => expr.stderr_capture(),
        (Out::File(fd), true) => expr.stdout_file(fd),
        (Out::File(fd), false) => expr.stderr_file(fd),
        (Out::Pipe | Out::Tee(_) | Out::Hold(_), _) => bail!("unsupported stdio"),
    })
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

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    /// What `$(CMD)` reads.
    fn read(cmd: &Cmd) -> Result<String> {
        cmd.run(Stdio::read())?.text()
    }

    /// Runs `line` through a real /bin/sh and returns its stdout.
    fn sh(line: &str) -> String {
        read(&Cmd::new("/bin/sh").args(["-c", line])).unwrap()
    }

    #[test]
    fn display_is_a_shell_line_that_runs_the_same_argv() {
        let cmd = Cmd::new("printf")
            .args(["<%s>", "a b", "it's", "$(id)", "`x`", "", "new\nline"])
            .env("X", "1 2");
        assert_eq!(sh(&cmd.to_string()), read(&cmd).unwrap());
        assert_eq!(read(&cmd).unwrap(), "<a b><it's><$(id)><`x`><><new\nline>");
    }

    #[test]
    fn longest_word_counts_argv_env_and_the_input_command() {
        let cmd = Cmd::new("sh").args(["-c", "12345"]).env("X", "1");
        assert_eq!(cmd.longest_word(), 5);
        assert_eq!(cmd.clone().env("LONG", "123456").longest_word(), 11);
        let piped = cmd.pipe_from(Cmd::new("printf").arg("x".repeat(20)));
        assert_eq!(piped.longest_word(), 20);
    }

    #[test]
    fn under_puts_the_wrapper_first_and_keeps_env_and_dir() {
        let cmd = Cmd::new("nix-build")
            .args(["-A", "system"])
            .env("NIX_PATH", "/srv")
            .dir("/tmp");
        let wrapped = cmd.clone().under(&[
            "/bin/sh".into(),
            "-c".into(),
            "exec \"$@\"".into(),
            "w".into(),
        ]);
        assert_eq!(
            wrapped.argv(),
            [
                "/bin/sh",
                "-c",
                "exec \"$@\"",
                "w",
                "nix-build",
                "-A",
                "system"
            ]
        );
        assert_eq!(
            wrapped.to_string(),
            "(cd /tmp && NIX_PATH=/srv /bin/sh -c 'exec \"$@\"' w nix-build -A system)"
        );
        assert_eq!(cmd.clone().under(&[]), cmd);
    }

    #[test]
    fn display_shows_env_dir_and_pipes() {
        let cmd = Cmd::new("cat")
            .env("NIX_PATH", "/var/src")
            .dir("/tmp/a b")
            .pipe_from(Cmd::new("echo").arg("hi there"));
        assert_eq!(
            cmd.to_string(),
            "echo 'hi there' | (cd '/tmp/a b' && NIX_PATH=/var/src cat)"
        );
    }

    #[test]
    fn env_reaches_the_child() {
        let cmd = Cmd::new("/bin/sh")
            .args(["-c", "printf %s \"$K\""])
            .env("K", "v w");
        assert_eq!(read(&cmd).unwrap(), "v w");
        assert_eq!(sh(&cmd.to_string()), "v w");
    }

    #[test]
    fn pipe_feeds_stdout_and_fails_like_pipefail() {
        let cmd = Cmd::new("tr")
            .args(["a-z", "A-Z"])
            .pipe_from(Cmd::new("printf").arg("abc"));
        assert_eq!(read(&cmd).unwrap(), "ABC");
        let failing = Cmd::new("cat").pipe_from(Cmd::new("/bin/sh").args(["-c", "echo x; exit 3"]));
        assert!(format!("{:#}", read(&failing).unwrap_err()).contains("exit status 3"));
    }

    #[test]
    fn failure_names_command_status_and_stderr_tail() {
        let cmd = Cmd::new("/bin/sh").args(["-c", "echo out; echo 'it broke' >&2; exit 7"]);
        let ran = cmd.run(Stdio::tee(std::io::stderr())).unwrap();
        let err = format!("{:#}", anyhow::Error::from(ran.checked().unwrap_err()));
        assert!(err.contains("/bin/sh -c"), "{err}");
        assert!(err.contains("exit status 7"), "{err}");
        assert!(err.contains("it broke"), "{err}");
        let err = format!("{:#}", read(&cmd).unwrap_err());
        assert!(
            err.contains("exit status 7") && err.contains("it broke"),
            "{err}"
        );
    }

    #[test]
    fn signals_are_named() {
        let cmd = Cmd::new("/bin/sh").args(["-c", "kill -TERM $$"]);
        let status = cmd.run(Stdio::inherit()).unwrap().status;
        assert_eq!(describe(status), "killed by signal 15");
        assert_eq!(exit_code(status), 143);
    }

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
    fn stdin_is_null_unless_inherited() {
        assert_eq!(read(&Cmd::new("cat")).unwrap(), "");
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

    #[test]
    fn brief_cuts_long_lines() {
        let cmd = Cmd::new("echo").arg("x".repeat(1000));
        assert!(cmd.brief().chars().count() <= 401);
        assert!(cmd.brief().ends_with('…'));
    }
}
