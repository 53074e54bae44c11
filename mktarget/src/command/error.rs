//! A command that failed, as a type ([`ProcessError`]) callers match on,
//! and how an exit status is told.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::Cmd;

/// How many bytes of a failed command's stderr its error quotes.
pub(super) const TAIL_BYTES: usize = 2048;

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
    /// Whether a command of this program that ended with `status` is an
    /// ssh that lost or never had its connection (ssh's own 255).
    fn ssh_failed(self, status: ExitStatus) -> bool {
        self == Program::Ssh && status.code() == Some(255)
    }

    pub(super) fn of(program: &str) -> Program {
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
    /// passed on as it came ([`Out::Tee`](super::Out::Tee)); else empty.
    pub stderr: Vec<u8>,
    /// Whether `stderr` was shown already (the message then leaves it out).
    pub shown: bool,
}

impl ProcessError {
    /// Whether it is an ssh that lost or never had its connection (ssh's
    /// own exit status 255).
    pub fn ssh_failed(&self) -> bool {
        self.program.ssh_failed(self.status)
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

impl Cmd {
    /// Whether `status` says this command, an ssh, lost or never had its
    /// connection (ssh's own exit status 255).
    pub fn connection_failed(&self, status: ExitStatus) -> bool {
        Program::of(&self.program).ssh_failed(status)
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

#[cfg(test)]
mod tests {
    use anyhow::Result;

    use super::*;
    use crate::command::Stdio;

    /// What `$(CMD)` reads.
    fn read(cmd: &Cmd) -> Result<String> {
        cmd.run(Stdio::read())?.text()
    }

    #[test]
    fn only_ssh_s_own_255_is_a_lost_connection() {
        let status = |code: i32| ExitStatus::from_raw(code << 8);
        assert!(Cmd::new("ssh").connection_failed(status(255)));
        assert!(!Cmd::new("ssh").connection_failed(status(1)));
        assert!(!Cmd::new("/bin/sh").connection_failed(status(255)));
        let failed = Cmd::new("rsync").arg("-a").failure(status(255));
        assert_eq!(
            (failed.program, failed.ssh_failed()),
            (Program::Rsync, false)
        );
        assert_eq!(failed.to_string(), "`rsync -a` failed: exit status 255");
        let failed = Cmd::new("ssh").failure(status(255));
        assert_eq!((failed.program, failed.ssh_failed()), (Program::Ssh, true));
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
}
