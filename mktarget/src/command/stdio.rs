//! Where a command's streams go when it runs ([`Stdio`]), as data: one
//! value a run instead of one method a combination.

use std::io::Write;
use std::os::fd::OwnedFd;

use anyhow::{bail, Result};

/// Where a command's stdout or its stderr goes while it runs.
pub enum Out<'a> {
    /// Ours: its stdout to our stdout, its stderr to our stderr.
    Inherit,
    /// `/dev/null`.
    Null,
    /// Where its other stream goes: its stdout with its stderr (when our
    /// stdout carries something else), its stderr with its stdout.
    Join,
    /// Kept, and returned when it ends ([`Finished`](super::Finished), [`Child::wait`](super::Child::wait)).
    Capture,
    /// Kept while it runs, passed on to the writer when it succeeds, and
    /// quoted in its error when it fails ([`Cmd::run`](super::Cmd::run) only).
    Hold(Box<dyn Write + 'a>),
    /// Passed on to the writer as it comes, its end kept for the error,
    /// which does not repeat it ([`Cmd::run`](super::Cmd::run) and stdout only: join its
    /// stderr to pass both on).
    Tee(Box<dyn Write + 'a>),
    /// A file, or the write end of a pipe someone reads (a fleet prefixing
    /// each host's lines, a master's log). Our copy is closed once it
    /// started, so a reader sees the end when it (and whatever it left
    /// holding it) is done.
    File(OwnedFd),
    /// A pipe, whose end is ours ([`Child::stdout`](super::Child::stdout), [`Child::stderr`](super::Child::stderr);
    /// [`Cmd::spawn`](super::Cmd::spawn) only).
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
/// command says ([`Stdin`](super::Stdin)).
pub struct Stdio<'a> {
    /// Its stdin a pipe whose write end is ours ([`Child::stdin`](super::Child::stdin);
    /// [`Cmd::spawn`](super::Cmd::spawn) only): a helper the tool talks to sees it close
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
    /// the tool talks to (see [`Stdio::stdin_pipe`], [`Child::take_pipes`](super::Child::take_pipes)).
    pub fn piped() -> Stdio<'a> {
        Stdio {
            stdin_pipe: true,
            stdout: Out::Pipe,
            stderr: Out::Pipe,
        }
    }
}

/// The streams in the order their directions apply: a joined one first,
/// as duct's inner direction, so that it joins wherever the other goes.
pub(super) fn joined_first<'a>(stdout: Out<'a>, stderr: Out<'a>) -> [(Out<'a>, bool); 2] {
    if matches!(stderr, Out::Join) {
        [(stderr, false), (stdout, true)]
    } else {
        [(stdout, true), (stderr, false)]
    }
}

/// `expr` with its stdout (or stderr) going where `out` says, for the
/// ways that need nothing of ours while it runs.
pub(super) fn direct(
    expr: duct::Expression,
    out: Out<'_>,
    is_stdout: bool,
) -> Result<duct::Expression> {
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
