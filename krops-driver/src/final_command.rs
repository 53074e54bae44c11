//! A driver's final command: what runs on the target (or here) after the
//! populate plans, shown and recorded as the run's final command.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::ExitStatus;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mktarget::command::{Out, Stdio};
use mktarget::{Cmd, Session};
use populate::{Locking, PopulateArgs, Results, ResultsTo, Style};

/// A driver's final command, and what messages call it
/// (`nixos-rebuild switch on root@server01`). Unless the run takes no
/// lock, it runs on the target under the run's lock there, which then lasts
/// as long as the command, also when the tool ends first
/// ([`populate::final_guard`]).
#[derive(Debug)]
pub struct Final {
    body: Body,
    pub what: String,
    /// The machine it runs on when it runs there through ssh (without a
    /// terminal: a signal here does not stop it there).
    pub remote: Option<String>,
    /// The connection it goes through.
    pub session: Arc<Session>,
    /// An exit status with which the command has said why it failed, as
    /// the run's error line: no other is added.
    told: Option<i32>,
}

/// What a final command runs.
#[derive(Debug)]
enum Body {
    /// `/bin/sh -c SCRIPT ARGS...` on the target ([`Session::command`]).
    Script {
        script: String,
        args: Vec<String>,
        tty: bool,
        stdin: bool,
    },
    /// A command of this machine (krops-test's nix-build: its target is
    /// local).
    Here(Cmd),
}

/// How a driver's run shows its steps and records them: the tool's name
/// for messages, the progress style, whether our stdout carries the
/// results (so a command's stdout must go elsewhere), and the results.
pub struct Reporting<'r> {
    pub tool: &'static str,
    pub style: Style,
    pub results_on_stdout: bool,
    pub results: &'r mut Results,
    /// Whether the run takes the lock (not `--no-lock`): its final
    /// commands then run under it.
    pub locked: bool,
}

impl<'r> Reporting<'r> {
    pub fn new(tool: &'static str, args: &PopulateArgs, results: &'r mut Results) -> Result<Self> {
        Ok(Reporting {
            tool,
            style: args.output.style(),
            results_on_stdout: args.output.results_to(None)? == Some(ResultsTo::Stdout),
            results,
            locked: args.options().locking != Locking::Off,
        })
    }
}

impl Final {
    /// `/bin/sh -c SCRIPT` on `session`'s target ([`Session::command`]),
    /// which messages call `what`.
    pub fn new(session: &Arc<Session>, script: &str, what: String) -> Final {
        Final {
            body: Body::Script {
                script: script.to_owned(),
                args: Vec::new(),
                tty: false,
                stdin: false,
            },
            what,
            remote: (!session.is_local()).then(|| session.machine()),
            session: Arc::clone(session),
            told: None,
        }
    }

    /// `command` on this machine, the target of `session`.
    pub fn here(session: &Arc<Session>, command: Cmd, what: String) -> Final {
        Final {
            body: Body::Here(command),
            what,
            remote: None,
            session: Arc::clone(session),
            told: None,
        }
    }

    /// The script gets `args` (`$0` first).
    pub fn args(mut self, more: &[String]) -> Final {
        if let Body::Script { args, .. } = &mut self.body {
            args.extend_from_slice(more);
        }
        self
    }

    /// With a terminal on the target (`ssh -t`), whose hangup stops the
    /// command there; with our stdin.
    pub fn tty(mut self) -> Final {
        if let Body::Script { tty, stdin, .. } = &mut self.body {
            *tty = true;
            *stdin = true;
        }
        self.remote = None;
        self
    }

    /// Exiting with `code`, the command has said why as the run's error
    /// line (`TOOL: error: …`): no other is added.
    pub fn tells_why_on(mut self, code: i32) -> Final {
        self.told = Some(code);
        self
    }

    /// With our stdin.
    pub fn stdin_inherit(mut self) -> Final {
        if let Body::Script { stdin, .. } = &mut self.body {
            *stdin = true;
        }
        self
    }

    /// The command as it runs: under the run's lock when `locked`, else as
    /// `--dry-run` shows it.
    pub fn command(&self, locked: bool) -> Cmd {
        let guard = if locked {
            populate::final_guard(&self.session)
        } else {
            Vec::new()
        };
        match &self.body {
            Body::Script {
                script,
                args,
                tty,
                stdin,
            } => {
                let cmd = self.session.command_under(&guard, script, args, *tty);
                if *stdin {
                    cmd.stdin_inherit()
                } else {
                    cmd
                }
            }
            Body::Here(cmd) => cmd.clone().under(&guard),
        }
    }

    /// Runs the command (only a stage runs it: [`crate::Stages::run`]) and
    /// returns how it exited, its progress shown and
    /// its outcome recorded as the run's final command; when it failed,
    /// says so as `TOOL: error: …`. Its stdout is ours, or our stderr when
    /// ours carries the results; with `--quiet` its stderr is shown only
    /// when it fails.
    pub(crate) fn run(&self, reporting: &mut Reporting) -> Result<ExitStatus> {
        let began = self.start_running(reporting)?;
        let command = self.command(reporting.locked);
        let quiet = reporting.style.quiet();
        // Only through ssh (there, its stderr is no terminal anyway): a local
        // command keeps ours, for nix's progress on a terminal and for
        // what it leaves running once we are gone.
        let tail_kept =
            !quiet && self.remote.is_some() && matches!(self.body, Body::Script { tty: false, .. });
        let ran = if tail_kept {
            status_keeping_tail(&command, reporting.results_on_stdout)
        } else {
            let stdio = Stdio::new(
                if reporting.results_on_stdout {
                    Out::Join
                } else {
                    Out::Inherit
                },
                kept_if(quiet),
            );
            command.run(stdio).map(|ran| (ran.status, ran.stderr))
        };
        let (status, kept) = self.record(reporting, began, ran)?;
        if !status.success() && !tail_kept {
            let _ = std::io::stderr().write_all(&kept);
        }
        self.report(reporting, status, last_error_line(&kept));
        Ok(status)
    }

    /// Like [`Final::run`], with its stdout captured (data: a store path)
    /// and its stderr shown as it comes (with `--quiet`, only when it
    /// fails).
    pub(crate) fn run_capturing_stdout(
        &self,
        reporting: &mut Reporting,
    ) -> Result<(ExitStatus, String)> {
        let began = self.start_running(reporting)?;
        let stdio = Stdio::new(Out::Capture, kept_if(reporting.style.quiet()));
        let ran = self
            .command(reporting.locked)
            .run(stdio)
            .and_then(|mut ran| {
                let kept = std::mem::take(&mut ran.stderr);
                let status = ran.status;
                Ok((status, (ran.stdout_text()?, kept)))
            });
        let (status, (stdout, kept)) = self.record(reporting, began, ran)?;
        if !status.success() {
            let _ = std::io::stderr().write_all(&kept);
        }
        self.report(reporting, status, None);
        Ok((status, stdout))
    }

    /// Tells the interrupt handler what runs now, and where a signal here
    /// does not stop it (and the lock it keeps there).
    fn tell_interrupt(&self, locked: bool) {
        mktarget::interrupt::doing(&self.what);
        if let Some(on) = &self.remote {
            mktarget::interrupt::remote(on);
            if locked {
                let path = &self.session.target().path;
                mktarget::interrupt::remote_lock(self.session.display_path(path));
            }
        }
    }

    fn start_running(&self, reporting: &Reporting) -> Result<Instant> {
        self.session.connect().with_context(|| self.what.clone())?;
        self.tell_interrupt(reporting.locked);
        populate::final_started(reporting.style, reporting.tool, &self.what);
        Ok(Instant::now())
    }

    /// Records how the command ended (or that it could not run) in the
    /// results and the progress.
    fn record<T>(
        &self,
        reporting: &mut Reporting,
        began: Instant,
        ran: Result<(ExitStatus, T)>,
    ) -> Result<(ExitStatus, T)> {
        let (status, kept) = match ran {
            Ok(ran) => ran,
            Err(err) => {
                reporting
                    .results
                    .set_final(&self.what, None, began.elapsed());
                return Err(err);
            }
        };
        reporting
            .results
            .set_final(&self.what, Some(status), began.elapsed());
        let how = mktarget::command::describe(status);
        populate::final_ended(
            reporting.style,
            reporting.tool,
            &self.what,
            (!status.success()).then_some(how.as_str()),
            began.elapsed(),
        );
        Ok((status, kept))
    }

    /// Says why a failed command failed, as `TOOL: error: …` and as the
    /// results' `error`, so that a script reading them learns what the
    /// exit status and stderr say.
    fn report(&self, reporting: &mut Reporting, status: ExitStatus, said: Option<String>) {
        if status.success() || (self.told.is_some() && status.code() == self.told) {
            return;
        }
        mktarget::interrupt::wait_if_interrupted();
        // Its output was ours, so ssh's message is above; the shared
        // connection's master may tell more.
        let why = match self
            .session
            .connection_failure(&self.command(false).failure(status))
        {
            Some(why) => format!("{}: {why}", self.what),
            None => format!(
                "{} failed: {}{}",
                self.what,
                mktarget::command::describe(status),
                said.map(|line| format!(" ({line})")).unwrap_or_default()
            ),
        };
        eprintln!("{}: error: {why}", reporting.tool);
        reporting.results.final_failed(&why);
    }
}

/// Where a final command's stderr goes: kept, to be shown only if it
/// fails (`--quiet`), or ours.
fn kept_if(quiet: bool) -> Out<'static> {
    if quiet {
        Out::Capture
    } else {
        Out::Inherit
    }
}

/// How much of a final command's stderr is kept to find its last error line.
const TAIL_BYTES: usize = 8192;

/// How long the copy of a command's stderr may go on once the command
/// ended: something it left running (an ssh master it forked) may hold
/// the pipe open, and the tool does not wait for that.
const TAIL_GRACE: Duration = Duration::from_secs(2);

/// Runs `cmd` with its stdout ours (or on our stderr when the results are
/// on stdout), its stderr shown as it comes; its last [`TAIL_BYTES`] are kept
/// as well, for the error line to quote ([`last_error_line`]).
fn status_keeping_tail(cmd: &Cmd, stdout_to_stderr: bool) -> Result<(ExitStatus, Vec<u8>)> {
    let stdout = if stdout_to_stderr {
        std::io::stderr().as_fd().try_clone_to_owned()
    } else {
        std::io::stdout().as_fd().try_clone_to_owned()
    }
    .context("cannot pass on our stdout")?;
    let (mut reader, writer) = os_pipe::pipe().context("cannot make a pipe for stderr")?;
    let tail = Arc::new(Mutex::new(Vec::new()));
    let (done, copied) = mpsc::channel();
    let kept = Arc::clone(&tail);
    std::thread::spawn(move || {
        let mut buf = [0; 8192];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = std::io::stderr().write_all(&buf[..n]);
            let mut tail = kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            tail.extend_from_slice(&buf[..n]);
            let excess = tail.len().saturating_sub(TAIL_BYTES);
            tail.drain(..excess);
        }
        let _ = done.send(());
    });
    let status = cmd
        .run(Stdio::new(Out::file(stdout), Out::file(writer)))?
        .status;
    let _ = copied.recv_timeout(TAIL_GRACE);
    let tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok((status, tail.clone()))
}

/// The last line of `stderr` that says `error: …`, as nix and
/// nixos-rebuild begin theirs (nix's own words about why a build failed:
/// `error: unable to download …`), for the run's error line.
fn last_error_line(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with("error: "))
        .map(|line| line.chars().filter(|c| !c.is_control()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_line_is_nixs_last_word() {
        let stderr = b"warning: error: unable to download 'x'; retrying\n\
                       error: unable to download 'https://api.github.com/x': no host (6)\n\
                       (use '--show-trace' to show detailed location information)\n";
        assert_eq!(
            last_error_line(stderr).as_deref(),
            Some("error: unable to download 'https://api.github.com/x': no host (6)")
        );
        assert_eq!(last_error_line(b"building\nfailed\n"), None);
        assert_eq!(
            last_error_line(b"\x1b[31;1merror:\x1b[0m x\n"),
            None,
            "colours are not guessed at"
        );
    }
}
