//! An external command as a value: program, argv, env, working directory and
//! stdin. It prints itself as a quoted shell line (what `--dry-run` and the
//! log show) and becomes a `duct` expression only when it runs.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use anyhow::{Context, Result};

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
    quiet: bool,
    foreground: bool,
    /// `setpriv`, which starts the program for [`Cmd::die_with_us`].
    die_with_us: Option<String>,
    /// A sudo password the command reads first (see [`Cmd::first_line`]).
    first_line: Option<FirstLine>,
}

/// A password line a command reads before its own input: on stdin, or on
/// fd 3 (rsync's remote shell finds it there).
#[derive(Clone, Debug, PartialEq, Eq)]
struct FirstLine {
    password: crate::sudo::SudoPassword,
    on_fd3: bool,
}

/// Runs its arguments with stdin, the password line, moved to fd 3.
const ON_FD3: &str = "exec 3<&0 </dev/null; exec \"$@\"";

/// Writes its stdin (the password line), then runs its arguments: the
/// line goes before what they print.
const LINE_FIRST: &str = "cat && exec \"$@\"";

/// Where a command's stdin comes from. Children never inherit ours unless
/// asked to: the tools read their own input from stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stdin {
    Null,
    Inherit,
    /// The stdout of another command, as in `SOURCE | THIS`.
    Pipe(Box<Cmd>),
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            stdin: Stdin::Null,
            quiet: false,
            foreground: false,
            die_with_us: None,
            first_line: None,
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

    /// Sends its stdout and stderr to /dev/null.
    pub fn quiet(mut self) -> Cmd {
        self.quiet = true;
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

    /// Gives the command `password` and a newline as the first line of its
    /// stdin, before its input (none, [`Cmd::pipe_from`]'s source's
    /// output, or with [`Cmd::stdin_inherit`] ours).
    pub fn first_line(mut self, password: crate::sudo::SudoPassword) -> Cmd {
        self.first_line = Some(FirstLine {
            password,
            on_fd3: false,
        });
        self
    }

    /// Gives the command `password` and a newline on its fd 3, its stdin
    /// being /dev/null.
    pub fn first_line_on_fd3(mut self, password: crate::sudo::SudoPassword) -> Cmd {
        self.first_line = Some(FirstLine {
            password,
            on_fd3: true,
        });
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

    fn expression(&self) -> duct::Expression {
        let expr = self.expression_inner();
        if self.own_group() {
            expr.before_spawn(|command| {
                std::os::unix::process::CommandExt::process_group(command, 0);
                Ok(())
            })
        } else {
            expr
        }
    }

    fn expression_inner(&self) -> duct::Expression {
        let mut argv: Vec<&str> = std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect();
        if self.first_line.as_ref().is_some_and(|line| line.on_fd3) {
            argv.splice(0..0, ["/bin/sh", "-c", ON_FD3, "krops-fd3"]);
        }
        if let Some(setpriv) = &self.die_with_us {
            argv.splice(0..0, [setpriv.as_str(), "--pdeathsig", "TERM", "--"]);
        }
        let mut expr = duct::cmd(argv[0], &argv[1..]);
        for (name, value) in &self.env {
            expr = expr.env(name, value);
        }
        if let Some(dir) = &self.dir {
            expr = expr.dir(dir);
        }
        if self.quiet {
            expr = expr.stdout_null().stderr_null();
        }
        let line = self.first_line.as_ref().map(|first| first.password.line());
        match (&self.stdin, line) {
            (Stdin::Null, None) => expr.stdin_null(),
            (Stdin::Null, Some(line)) => expr.stdin_bytes(line),
            (Stdin::Inherit, None) => expr,
            (Stdin::Inherit, Some(line)) => match os_pipe::pipe() {
                // The line, then our stdin as it comes, copied by a
                // thread that ends with our stdin.
                Ok((reader, mut writer)) => {
                    std::thread::spawn(move || {
                        if writer.write_all(&line).is_ok() {
                            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut writer);
                        }
                    });
                    expr.stdin_file(reader)
                }
                Err(_) => expr.stdin_bytes(line),
            },
            (Stdin::Pipe(source), None) => source.expression_inner().pipe(expr),
            (Stdin::Pipe(source), Some(line)) => {
                let wrapper = ["/bin/sh", "-c", LINE_FIRST, "krops-line"].map(str::to_owned);
                let mut source = source.as_ref().clone().under(&wrapper);
                // duct's innermost redirection wins: none there.
                source.stdin = Stdin::Inherit;
                source.expression_inner().stdin_bytes(line).pipe(expr)
            }
        }
    }

    /// Runs the command with its stdout and stderr going to our stderr (stdout
    /// carries only data). Its error does not repeat the output: it was shown.
    pub fn run(&self) -> Result<()> {
        let (status, _) = self.run_unchecked()?;
        if status.success() {
            Ok(())
        } else {
            Err(self.failure(status, &[]))
        }
    }

    /// Like [`Cmd::run`], but returns how the command exited, with the tail
    /// of its output, for callers that give some exit codes a meaning.
    pub fn run_unchecked(&self) -> Result<(ExitStatus, Vec<u8>)> {
        self.run_unchecked_into(&mut std::io::stderr())
    }

    /// Like [`Cmd::run_unchecked`], with the output going to `out`.
    pub fn run_unchecked_into(&self, out: &mut dyn Write) -> Result<(ExitStatus, Vec<u8>)> {
        let mut reader = self
            .expression()
            .stderr_to_stdout()
            .unchecked()
            .reader()
            .with_context(|| format!("cannot start `{}`", self.brief()))?;
        let _registered = interrupt::register(reader.pids(), self.own_group());
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
        Ok((status, tail))
    }

    /// Runs the command and returns its stdout; its stderr is passed on when
    /// it succeeds and quoted in the error when it fails.
    pub fn read(&self) -> Result<String> {
        let output = self.run_stderr_captured(self.expression().stdout_capture())?;
        let _ = std::io::stderr().write_all(&output.stderr);
        String::from_utf8(output.stdout)
            .with_context(|| format!("`{}` printed something that is not UTF-8", self.brief()))
    }

    /// Runs the command with stdout and stderr captured and returns how it
    /// ended, for callers that report failures themselves.
    pub fn output(&self) -> Result<std::process::Output> {
        self.wait_output(self.expression().stdout_capture().stderr_capture())
    }

    /// Runs `expr` (this command, its streams directed) to its end, known
    /// to the interrupt handler meanwhile, and returns how it ended and what
    /// was captured. Our copies of files `expr` directs to are closed once
    /// it started, so readers of pipes see their end when it is done.
    fn wait_output(&self, expr: duct::Expression) -> Result<std::process::Output> {
        let expr = expr.unchecked();
        let handle = expr
            .start()
            .with_context(|| format!("cannot start `{}`", self.brief()))?;
        drop(expr);
        let _registered = interrupt::register(handle.pids(), self.own_group());
        handle
            .into_output()
            .with_context(|| format!("waiting for `{}`", self.brief()))
    }

    /// [`Cmd::run_to_file_into`] with our stderr as `out`, for the tests.
    #[cfg(test)]
    pub fn run_to_file(&self, file: File) -> Result<()> {
        self.run_to_file_into(file, &mut std::io::stderr())
    }

    /// Runs the command with its stdout written to `file` (used for secrets,
    /// which must never pass through our memory's logs or a pipe to a log),
    /// its stderr going to `out` when it succeeds.
    pub fn run_to_file_into(&self, file: File, out: &mut dyn Write) -> Result<()> {
        let output = self.run_stderr_captured(self.expression().stdout_file(file))?;
        let _ = out.write_all(&output.stderr);
        Ok(())
    }

    /// Runs `expr` (this command with its stdout directed) with stderr
    /// captured: returned when it succeeds, quoted in the error when not.
    fn run_stderr_captured(&self, expr: duct::Expression) -> Result<std::process::Output> {
        let output = self.wait_output(expr.stderr_capture())?;
        if !output.status.success() {
            return Err(self.failure(output.status, &output.stderr));
        }
        Ok(output)
    }

    /// Starts the command in the background, its stdout and stderr going to
    /// our stderr (a long-lived helper, such as an ssh master, whose output
    /// is never data); see [`Started`].
    pub fn start(&self) -> Result<Started> {
        self.start_expression(self.expression().stdout_to_stderr())
    }

    /// Like [`Cmd::start`], its stdout and stderr going to `stderr` (the
    /// write end of a pipe someone reads); our copy of it is closed once
    /// the command started.
    pub fn start_with_stderr(&self, stderr: impl IntoRawFd) -> Result<Started> {
        self.start_expression(self.expression().stdout_to_stderr().stderr_file(stderr))
    }

    fn start_expression(&self, expr: duct::Expression) -> Result<Started> {
        let expr = expr.unchecked();
        let handle = expr
            .start()
            .with_context(|| format!("cannot start `{}`", self.brief()))?;
        drop(expr);
        let registered = interrupt::register(handle.pids(), self.own_group());
        Ok(Started {
            pids: handle.pids(),
            own_group: self.own_group(),
            handle,
            _registered: registered,
        })
    }

    /// Starts the command in the background with its stdout and stderr
    /// captured, for a caller that polls it against a deadline
    /// ([`Started::try_output`]) and decides what of its output to show.
    pub fn start_captured(&self) -> Result<Started> {
        self.start_expression(self.expression().stdout_capture().stderr_capture())
    }

    /// Starts the command in the background with its stdin, stdout and
    /// stderr on pipes of ours: a long-lived helper the tool talks to (the
    /// target's lock), which sees its stdin close when the tool lets go of
    /// the returned writer, or exits, or dies. Like every command whose
    /// stdin is not ours, it runs in a process group of its own.
    pub fn start_piped(&self) -> Result<Piped> {
        let pipe = || os_pipe::pipe().context("cannot make a pipe");
        let (stdin_reader, stdin_writer) = pipe()?;
        let (stdout_reader, stdout_writer) = pipe()?;
        let (stderr_reader, stderr_writer) = pipe()?;
        // Not `expression()`: its stdin_null would win over the pipe.
        let mut inner = self.clone();
        inner.stdin = Stdin::Inherit;
        let mut stdin_writer = stdin_writer;
        if let Some(first) = inner.first_line.take() {
            // A pipe holds far more than a line: this never blocks.
            stdin_writer
                .write_all(&first.password.line())
                .context("cannot write the sudo password to its pipe")?;
        }
        let expr = inner
            .expression_inner()
            .before_spawn(|command| {
                std::os::unix::process::CommandExt::process_group(command, 0);
                Ok(())
            })
            .stdin_file(stdin_reader)
            .stdout_file(stdout_writer)
            .stderr_file(stderr_writer)
            .unchecked();
        let handle = expr
            .start()
            .with_context(|| format!("cannot start `{}`", self.brief()))?;
        // Our copies of the child's ends: the reader must see its end.
        drop(expr);
        let registered = interrupt::register(handle.pids(), true);
        let started = Started {
            pids: handle.pids(),
            own_group: true,
            handle,
            _registered: registered,
        };
        Ok(Piped {
            started,
            stdin: stdin_writer,
            stdout: stdout_reader,
            stderr: stderr_reader,
        })
    }

    /// Runs the command with our stdout and stderr and returns how it exited:
    /// for a driver's final command, whose status is the tool's status.
    pub fn status(&self) -> Result<ExitStatus> {
        Ok(self.wait_output(self.expression())?.status)
    }

    /// Runs the command with its stderr going to ours as it comes and its
    /// stdout captured, for a step whose log should show live but whose
    /// stdout is data (a store path); returns how it exited, its stdout,
    /// and its stderr when `keep_stderr` kept it instead of showing it
    /// (`--quiet`: shown only if it failed).
    pub fn status_and_stdout(&self, keep_stderr: bool) -> Result<(ExitStatus, String, Vec<u8>)> {
        let mut expr = self.expression().stdout_capture();
        if keep_stderr {
            expr = expr.stderr_capture();
        }
        let output = self.wait_output(expr)?;
        let stdout = String::from_utf8(output.stdout)
            .with_context(|| format!("`{}` printed something that is not UTF-8", self.brief()))?;
        Ok((output.status, stdout, output.stderr))
    }

    /// Like [`Cmd::status`], its stdout going to our stderr when
    /// `stdout_to_stderr` (ours then carries something else), and its stderr
    /// (with that stdout) kept and returned instead of shown when
    /// `keep_stderr` (`--quiet`: shown only if it failed).
    pub fn status_redirected(
        &self,
        stdout_to_stderr: bool,
        keep_stderr: bool,
    ) -> Result<(ExitStatus, Vec<u8>)> {
        let mut expr = self.expression();
        if stdout_to_stderr {
            expr = expr.stdout_to_stderr();
        }
        if keep_stderr {
            expr = expr.stderr_capture();
        }
        let output = self.wait_output(expr)?;
        Ok((output.status, output.stderr))
    }

    /// Runs the command with its stdout and stderr written to `stdout` and
    /// `stderr` (the write ends of pipes someone else reads, e.g. a fleet
    /// prefixing each host's lines) and returns how it exited. Our copies of
    /// the ends are closed once it started, so the readers see the end of
    /// its output when it (and whatever it left holding them) is done.
    pub fn status_to(&self, stdout: impl IntoRawFd, stderr: impl IntoRawFd) -> Result<ExitStatus> {
        let expr = self.expression().stdout_file(stdout).stderr_file(stderr);
        Ok(self.wait_output(expr)?.status)
    }

    /// Whether `status` says this command, an ssh, lost or never had its
    /// connection (ssh's own exit status 255).
    pub fn connection_failed(&self, status: ExitStatus) -> bool {
        self.program == "ssh" && status.code() == Some(255)
    }

    /// The error for this command ending with `status`: its command line, how
    /// it exited, and the tail of `stderr` (pass `&[]` when it was shown).
    pub fn failure(&self, status: ExitStatus, stderr: &[u8]) -> anyhow::Error {
        let mut message = format!("`{}` failed: {}", self.brief(), describe(status));
        let tail = String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(TAIL_BYTES)..]);
        let tail = tail.trim_end();
        if !tail.is_empty() {
            message.push_str("\n--- its output ends with ---\n");
            message.push_str(tail);
        }
        anyhow::anyhow!(message)
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
        // `sudo_password` stands for what prints the password's line.
        let line = self.first_line.as_ref();
        let on_fd3 = line.is_some_and(|line| line.on_fd3);
        match (&self.stdin, line) {
            (Stdin::Pipe(source), Some(_)) => write!(f, "{{ sudo_password; {source}; }} | ")?,
            (Stdin::Pipe(source), None) => write!(f, "{source} | ")?,
            (Stdin::Null, Some(_)) => f.write_str("sudo_password | ")?,
            (Stdin::Inherit, Some(_)) => f.write_str("{ sudo_password; cat; } | ")?,
            _ => {}
        }
        if on_fd3 {
            f.write_str("{ ")?;
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
        if on_fd3 {
            f.write_str("; } 3<&0 </dev/null")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `line` through a real /bin/sh and returns its stdout.
    fn sh(line: &str) -> String {
        Cmd::new("/bin/sh").args(["-c", line]).read().unwrap()
    }

    #[test]
    fn display_is_a_shell_line_that_runs_the_same_argv() {
        let cmd = Cmd::new("printf")
            .args(["<%s>", "a b", "it's", "$(id)", "`x`", "", "new\nline"])
            .env("X", "1 2");
        assert_eq!(sh(&cmd.to_string()), cmd.read().unwrap());
        assert_eq!(cmd.read().unwrap(), "<a b><it's><$(id)><`x`><><new\nline>");
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
        assert_eq!(cmd.read().unwrap(), "v w");
        assert_eq!(sh(&cmd.to_string()), "v w");
    }

    #[test]
    fn pipe_feeds_stdout_and_fails_like_pipefail() {
        let cmd = Cmd::new("tr")
            .args(["a-z", "A-Z"])
            .pipe_from(Cmd::new("printf").arg("abc"));
        assert_eq!(cmd.read().unwrap(), "ABC");
        let failing = Cmd::new("cat").pipe_from(Cmd::new("/bin/sh").args(["-c", "echo x; exit 3"]));
        assert!(format!("{:#}", failing.read().unwrap_err()).contains("exit status 3"));
    }

    #[test]
    fn failure_names_command_status_and_stderr_tail() {
        let cmd = Cmd::new("/bin/sh").args(["-c", "echo out; echo 'it broke' >&2; exit 7"]);
        let err = format!("{:#}", cmd.run().unwrap_err());
        assert!(err.contains("/bin/sh -c"), "{err}");
        assert!(err.contains("exit status 7"), "{err}");
        assert!(err.contains("it broke"), "{err}");
        let err = format!("{:#}", cmd.read().unwrap_err());
        assert!(
            err.contains("exit status 7") && err.contains("it broke"),
            "{err}"
        );
    }

    #[test]
    fn signals_are_named() {
        let cmd = Cmd::new("/bin/sh").args(["-c", "kill -TERM $$"]);
        let status = cmd.status().unwrap();
        assert_eq!(describe(status), "killed by signal 15");
        assert_eq!(exit_code(status), 143);
    }

    #[test]
    fn status_to_keeps_stdout_and_stderr_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("out"), dir.path().join("err"));
        let status = Cmd::new("/bin/sh")
            .args(["-c", "echo to-out; echo to-err >&2; exit 4"])
            .status_to(File::create(&out).unwrap(), File::create(&err).unwrap())
            .unwrap();
        assert_eq!(status.code(), Some(4));
        assert_eq!(std::fs::read_to_string(out).unwrap(), "to-out\n");
        assert_eq!(std::fs::read_to_string(err).unwrap(), "to-err\n");
    }

    #[test]
    fn status_and_stdout_keeps_only_stdout() {
        let script = ["-c", "echo data; echo log >&2; exit 3"];
        let (status, stdout, kept) = Cmd::new("/bin/sh")
            .args(script)
            .status_and_stdout(false)
            .unwrap();
        assert_eq!((status.code(), stdout.as_str()), (Some(3), "data\n"));
        assert!(kept.is_empty());
        let (_, stdout, kept) = Cmd::new("/bin/sh")
            .args(script)
            .status_and_stdout(true)
            .unwrap();
        assert_eq!(
            (stdout.as_str(), kept.as_slice()),
            ("data\n", &b"log\n"[..])
        );
    }

    #[test]
    fn a_captured_start_is_polled_for_its_output() {
        let mut started = Cmd::new("/bin/sh")
            .args(["-c", "echo out; echo err >&2; exit 2"])
            .start_captured()
            .unwrap();
        let output = loop {
            if let Some(output) = started.try_output().unwrap() {
                break output;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(output.status.code(), Some(2));
        assert_eq!(
            (&output.stdout[..], &output.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
    }

    #[test]
    fn status_redirected_keeps_stderr_and_moves_stdout_there() {
        let cmd = Cmd::new("/bin/sh").args(["-c", "echo to-out; echo to-err >&2; exit 3"]);
        let (status, kept) = cmd.status_redirected(true, true).unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(String::from_utf8(kept).unwrap(), "to-out\nto-err\n");
        let (status, kept) = cmd.status_redirected(false, false).unwrap();
        assert_eq!((status.code(), kept.len()), (Some(3), 0));
    }

    #[test]
    fn stdin_is_null_unless_inherited() {
        assert_eq!(Cmd::new("cat").read().unwrap(), "");
    }

    #[test]
    fn run_to_file_writes_stdout_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        Cmd::new("printf")
            .arg("secret")
            .run_to_file(File::create(&path).unwrap())
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

/// A command started with [`Cmd::start_piped`], and our ends of its pipes.
#[derive(Debug)]
pub struct Piped {
    pub started: Started,
    pub stdin: os_pipe::PipeWriter,
    pub stdout: os_pipe::PipeReader,
    pub stderr: os_pipe::PipeReader,
}

/// A command started in the background; stopped with [`Started::terminate`]
/// (the interrupt handler stops it on a signal: it is registered).
#[derive(Debug)]
pub struct Started {
    handle: duct::Handle,
    pids: Vec<u32>,
    own_group: bool,
    _registered: interrupt::Registered,
}

impl Started {
    /// How it exited, if it has.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.handle.try_wait()?.map(|output| output.status))
    }

    /// How it exited and what it printed, if it has exited (for a command
    /// started with [`Cmd::start_captured`]; else the output is empty).
    pub fn try_output(&mut self) -> Result<Option<std::process::Output>> {
        Ok(self.handle.try_wait()?.cloned())
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
