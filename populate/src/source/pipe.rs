//! The pipe source: a command run here, its output written to P on the
//! target, whole or not at all.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use mktarget::command::{Out, Stdio};
use mktarget::{Cmd, Session};
use serde_json::Value;

use super::fields::{absolute, Fields};
use crate::script::{Function, Script};
use crate::secrets::SecretDir;
use crate::step::{run_cmd, Ended, Staged, Work};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeSource {
    /// An executable, run without arguments.
    pub command: String,
}

/// `"COMMAND"` or `{"command": COMMAND}`, an absolute path.
pub(super) fn parse(path: &str, value: &Value) -> Result<PipeSource> {
    if let Value::String(_) = value {
        return Ok(PipeSource {
            command: absolute(path, value)?,
        });
    }
    let mut fields = Fields::new(path, value)?;
    let command = fields.absolute("command")?;
    fields.finish()?;
    Ok(PipeSource { command })
}

impl PipeSource {
    pub(super) fn work(&self, session: &Session, p: &str) -> Result<Work> {
        let command = &self.command;
        let executable = std::fs::metadata(command)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
        if !executable {
            bail!("pipe.command: {command} is not an executable file");
        }
        Ok(Work::Pipe(Box::new(Pipe {
            command: Cmd::new(command.clone()),
            receive: session.shell(&receive(session, p).whole()),
        })))
    }
}

/// The receiving script for P: its temp file is beside it, and not named
/// after the source (a name near 255 bytes would not fit).
fn receive(session: &Session, p: &str) -> Script {
    let dir = p.rsplit_once('/').map_or("", |(dir, _)| dir);
    let tmp = format!("{dir}/.populate-pipe");
    Script::call(&RECEIVE, &[p, &session.display_path(p), &tmp])
}

/// A pipe source: the command runs here with its output going to a private
/// file; only when it succeeded is the output sent, and the target moves it
/// into place only when all of it arrived.
#[derive(Debug)]
pub(crate) struct Pipe {
    command: Cmd,
    /// Reads the output (its size, a newline, then the bytes) on the target.
    receive: Cmd,
}

/// `krops_pipe P SHOWN TMP` (`pipe.sh`): receives a pipe's output on the
/// target, whole or not at all.
static RECEIVE: Function = Function {
    name: "krops_pipe",
    text: include_str!("pipe.sh"),
};

/// Sends a file's size on a line, then the file: what the receive script reads.
fn sized(file: &str) -> Cmd {
    Cmd::new("/bin/sh").args(["-c", "wc -c < \"$1\" && cat \"$1\"", "sh", file])
}

impl Staged for Pipe {
    fn run(&self, session: &Session, log: &mut dyn Write) -> Result<Ended> {
        Pipe::run(self, session, log).map(|()| Ended::Done(None))
    }

    fn script(&self, _: &Session) -> String {
        Pipe::script(self)
    }
}

impl Pipe {
    pub(crate) fn run(&self, session: &Session, log: &mut dyn Write) -> Result<()> {
        let out = SecretDir::holding("populate-pipe.", "the pipe's output")?;
        let file = out.create_file(Path::new("out"))?;
        // Its output may be secret: it stays out of the log and the error.
        let stdio = Stdio::new(Out::file(file), Out::Hold(Box::new(&mut *log)));
        let ran = self.command.run(stdio).and_then(|ran| Ok(ran.checked()?));
        ran.context(
            "the command failed, so nothing was sent and the target's file is left as it was",
        )?;
        let path = out.path().join("out");
        run_cmd(
            session,
            &self
                .receive
                .clone()
                .pipe_from(sized(&path.to_string_lossy())),
            log,
        )
    }

    pub(crate) fn script(&self) -> String {
        let receive = self
            .receive
            .clone()
            .pipe_from(sized("$tmp_dir/out"))
            .to_string()
            .replace("'$tmp_dir/out'", "\"$tmp_dir\"/out");
        format!(
            "(\ntmp_dir=$(mktemp -d -t populate-pipe.XXXXXXXX)\n\
             trap 'rm -fR \"$tmp_dir\"' EXIT\ntrap 'exit 130' INT TERM HUP\n\
             {} > \"$tmp_dir\"/out\n{receive}\n)",
            self.command
        )
    }
}
