//! What one step of a populate run does ([`Work`]), and how a step's
//! failure is told ([`StepError`]). The sources make their work
//! ([`crate::source`]); the plan runs it ([`crate::sync`]).

use std::io::Write;

use anyhow::Result;
use mktarget::command::{describe, Cmd, ProcessError, Program, Stdio};
use mktarget::Session;

use crate::report::{StepError, Transfer};
use crate::script::{batch, failed_command, Script};
use crate::source::file::Joinable;

#[derive(Debug)]
pub(crate) enum Work {
    /// The sentinel check: a script whose exit status says what is wrong.
    Sentinel { script: Script },
    /// A script on the target, cheap enough to batch (backup, symlink): one
    /// call.
    Batched { script: Script },
    /// rsync from here, after the claim of its place: both when the source
    /// syncs (a claim ahead of time would leave the place empty when an
    /// earlier source fails). The claim is a script of its own only where
    /// rsync's `--rsync-path` cannot run it (a local target).
    Rsync {
        claim: Option<Script>,
        rsync: Cmd,
        /// How it syncs in one rsync with other trees, when it may.
        joinable: Option<Box<Joinable>>,
    },
    /// A script on the target that may take long (git): batched with the
    /// others of its kind, in the lock's session (or one of its own), while
    /// the sources synced from here run; `late` ones wait for every other
    /// source (derivations, which may build from them).
    Alone { script: Script, late: bool },
    /// A pass or passage store: decrypted here, then synced.
    Secrets(Box<dyn Staged>),
    /// A pipe: its command's output, kept here, then moved into place there.
    Pipe(Box<dyn Staged>),
}

/// Work made here before it goes to the target (secrets decrypted, a
/// pipe's output kept), by the source type that knows how: the steps run
/// it without knowing the types.
pub(crate) trait Staged: std::fmt::Debug + Send + Sync {
    /// Runs it on `session`'s target, what it says going to `out`.
    fn run(&self, session: &Session, out: &mut dyn Write) -> Result<Ended>;

    /// The commands it runs, as `--dry-run` shows them.
    fn script(&self, session: &Session) -> String;
}

impl Work {
    /// The part of the step that runs in a batch, if any.
    pub(crate) fn batched(&self) -> Option<&Script> {
        match self {
            Work::Sentinel { script } | Work::Batched { script } => Some(script),
            _ => None,
        }
    }

    /// Whether a batch does all of the step: the cheap ones, and those
    /// that run alone ([`Work::alone`]).
    pub(crate) fn all_batched(&self) -> bool {
        self.batched().is_some() || matches!(self, Work::Alone { .. })
    }

    /// The script of an `Alone` step that is `late` (a derivation) or not
    /// (a checkout), which a run batches in the lock's session.
    pub(crate) fn alone(&self, late: bool) -> Option<&Script> {
        match self {
            Work::Alone { script, late: l } if *l == late => Some(script),
            _ => None,
        }
    }

    /// How the step's tree syncs in one rsync with others, when it may.
    pub(crate) fn joinable(&self) -> Option<&Joinable> {
        match self {
            Work::Rsync { joinable, .. } => joinable.as_deref(),
            _ => None,
        }
    }

    /// Whether the step syncs from here (rsync, a pipe): it holds a
    /// session of its own while it runs.
    pub(crate) fn synced_here(&self) -> bool {
        matches!(self, Work::Rsync { .. } | Work::Secrets(_) | Work::Pipe(_))
    }

    /// Runs what the batch did not: the whole step, or an rsync source's
    /// rsync after its claim.
    pub(crate) fn run(&self, session: &Session, out: &mut dyn Write) -> Result<Ended> {
        match self {
            Work::Sentinel { .. } | Work::Batched { .. } => Ok(Ended::Done(None)),
            Work::Rsync { claim, rsync, .. } => {
                if let Some(claim) = claim {
                    run_cmd(session, &session.shell(&claim.whole()), out)?;
                }
                run_rsync(session, rsync, out).map(|transfer| Ended::Done(Some(transfer)))
            }
            Work::Alone { script, .. } => {
                run_cmd(session, &session.shell(&script.whole()), out).map(|()| Ended::Done(None))
            }
            Work::Secrets(staged) | Work::Pipe(staged) => staged.run(session, out),
        }
    }

    /// The length of the longest word of the commands it runs from what
    /// the input said (the scripts on the target, a batched one with the
    /// batch's `krops_step`; rsync's argv): beyond
    /// [`mktarget::command::MAX_ARG_BYTES`], less a batch's own lines, it
    /// could not start. Secrets and pipes run commands made of paths
    /// that are checked to be short.
    pub(crate) fn longest_word(&self, session: &Session) -> usize {
        let shell = |script: &Script| session.shell(&script.whole()).longest_word();
        match self {
            Work::Sentinel { script } | Work::Batched { script } => {
                session.shell(&batch(&[(0, script)])).longest_word()
            }
            // Batched in the lock's session, or a session of its own.
            Work::Alone { script, .. } => session.shell(&batch(&[(0, script)])).longest_word(),
            Work::Rsync { claim, rsync, .. } => {
                claim.as_ref().map_or(0, shell).max(rsync.longest_word())
            }
            Work::Secrets(_) | Work::Pipe(_) => 0,
        }
    }

    pub(crate) fn script(&self, session: &Session) -> String {
        let shell = |script: &Script| session.shell(&script.whole()).to_string();
        match self {
            Work::Sentinel { script } | Work::Batched { script } | Work::Alone { script, .. } => {
                shell(script)
            }
            Work::Rsync {
                claim: Some(claim),
                rsync,
                ..
            } => format!("{}\n{rsync}", shell(claim)),
            Work::Rsync {
                claim: None, rsync, ..
            } => rsync.to_string(),
            Work::Secrets(staged) | Work::Pipe(staged) => staged.script(session),
        }
    }
}

/// How a step that ran ended.
pub(crate) enum Ended {
    /// With what rsync did, for the steps that sync with it.
    Done(Option<Transfer>),
    Unchanged,
}

/// What a source synced from here makes at its place on the target: the
/// first argument of the prelude's `claim` (the symlink and derivation
/// scripts claim theirs, `link` and `outlink`, themselves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Makes {
    /// A directory git makes: a checkout.
    Dir,
    /// A directory rsync syncs: a file tree, a secret store.
    Tree,
    /// A regular file: a single-file file source, a pipe's output.
    File,
}

impl Makes {
    /// Its name as `claim`'s first argument.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Makes::Dir => "dir",
            Makes::Tree => "tree",
            Makes::File => "file",
        }
    }
}

/// The call that claims `p` (see [`crate::script::PRELUDE`]'s `claim`).
pub(crate) fn claim(session: &Session, p: &str, makes: Makes) -> Script {
    Script::command("claim", &[makes.word(), p, &session.display_path(p)])
}

/// Runs one command of a step on `session`'s target, its output going to
/// `out` as it comes.
pub(crate) fn run_cmd(session: &Session, cmd: &Cmd, out: &mut dyn Write) -> Result<()> {
    match cmd.run(Stdio::tee(out))?.checked() {
        Ok(_) => Ok(()),
        Err(failed) => Err(step_failure(session, &failed).into()),
    }
}

/// Runs an rsync of a step (with `--itemize-changes`), its output going to
/// `out` as it comes, and returns what it says it did.
pub(crate) fn run_rsync(session: &Session, cmd: &Cmd, out: &mut dyn Write) -> Result<Transfer> {
    let mut watch = Watch {
        out,
        lines: Lines::default(),
        transfer: Transfer::default(),
    };
    run_cmd(session, cmd, &mut watch)?;
    let rest = watch.lines.rest();
    watch.transfer.read_line(&String::from_utf8_lossy(&rest));
    Ok(watch.transfer)
}

/// A stream cut into lines as it comes ([`Lines::feed`]).
#[derive(Default)]
pub(crate) struct Lines {
    line: Vec<u8>,
}

impl Lines {
    /// Gives `each` every line `buf` completes, without its newline.
    pub(crate) fn feed(&mut self, buf: &[u8], mut each: impl FnMut(&[u8])) {
        for &byte in buf {
            if byte == b'\n' {
                each(&std::mem::take(&mut self.line));
            } else {
                self.line.push(byte);
            }
        }
    }

    /// What came after the last newline.
    pub(crate) fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.line)
    }
}

/// Passes a command's output on and reads it line by line.
struct Watch<'a> {
    out: &'a mut dyn Write,
    lines: Lines,
    transfer: Transfer,
}

impl Write for Watch<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The output goes on whatever happens to it there.
        let _ = self.out.write_all(buf);
        let transfer = &mut self.transfer;
        self.lines.feed(buf, |line| {
            transfer.read_line(&String::from_utf8_lossy(line))
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The error of a failed command of a step: that the connection to the
/// target failed and why (ssh's own words), or the one command that failed
/// (what a script's `run` named), or what rsync said, and the status;
/// never the whole script, nor the output again (it was shown).
pub(crate) fn step_failure(session: &Session, failed: &ProcessError) -> StepError {
    let (status, tail) = (failed.status, &failed.stderr[..]);
    if let Some(message) = session.connection_failure(failed) {
        return StepError {
            command: None,
            status: Some(describe(status)),
            tail: String::from_utf8_lossy(tail).into_owned(),
            message,
        };
    }
    failure(describe(status), tail, |status_text| match failed.program {
        Program::Ssh | Program::Shell => (None, format!("its script failed: {status_text}")),
        Program::Rsync => (
            None,
            format!("rsync failed: {status_text} (its messages are above)"),
        ),
        Program::Other => (
            Some(failed.command.clone()),
            format!("`{}` failed: {status_text}", failed.command),
        ),
    })
}

/// The error of a batched part that exited with `code`.
pub(crate) fn part_failure(code: i32, output: &[u8]) -> StepError {
    failure(format!("exit status {code}"), output, |status_text| {
        (None, format!("its script failed: {status_text}"))
    })
}

/// A failed step's error: the command a script's `run` named in `tail`,
/// if it named one, else what `otherwise` says (the command, if known, and
/// the message), given how it exited.
fn failure(
    status_text: String,
    tail: &[u8],
    otherwise: impl FnOnce(&str) -> (Option<String>, String),
) -> StepError {
    let tail = String::from_utf8_lossy(tail).into_owned();
    let (command, message) = match failed_command(&tail) {
        Some(failed) => (
            Some(failed.to_owned()),
            format!("`{failed}` failed: {status_text}"),
        ),
        None => otherwise(&status_text),
    };
    StepError {
        command,
        status: Some(status_text),
        tail,
        message,
    }
}
