//! The shared connection's life: its private socket dir, the master's start
//! (and the run's one error when it cannot reach the target), its stderr,
//! and its close.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::diagnosis::connection_lines;
use super::{Reach, Session};
use crate::command::{Child, Cmd, Out, Stdio};
use crate::interrupt::{self, PrivateDir};
use crate::mutex::lock;

#[derive(Debug)]
pub(super) struct Control {
    pub(super) socket: PathBuf,
    /// The master, once started: `None` before, `Some(None)` when it could
    /// not start (then every ssh connects on its own).
    pub(super) master: Mutex<Option<Option<Master>>>,
    /// Removes the socket's dir when dropped; declared last, so it goes
    /// after the master has stopped.
    pub(super) _dir: PrivateDir,
}

/// A running master and what it says on stderr.
#[derive(Debug)]
pub(super) struct Master {
    process: Child,
    log: Arc<Mutex<MasterLog>>,
}

/// The master's stderr: kept until it is up, so that a failure to connect
/// is told once, in the run's error; then passed on to ours as it comes.
/// Its end stays kept, for the error of a step that lost the connection.
#[derive(Debug, Default)]
struct MasterLog {
    text: Vec<u8>,
    /// Passing it on.
    live: bool,
    /// The master closed its stderr: the text is complete.
    closed: bool,
}

/// How much of the master's stderr is kept.
const MASTER_LOG_BYTES: usize = 8192;

impl Session {
    /// Starts the master, once; a no-op for local targets, unshared
    /// sessions, and after the first call. Waits until the master listens
    /// or has given up. If it could not reach the target, that is the
    /// error, quoting ssh's message (which is not shown otherwise), and the
    /// run should end with it; if it failed for another reason,
    /// warns and lets every ssh connect on its own (ssh with
    /// `ControlMaster=no` does when the socket is absent).
    pub fn connect(&self) -> Result<()> {
        if let Reach::UsersPersisting(started) = &self.reach {
            let mut started = lock(started);
            if !*started && !interrupt::interrupted() {
                *started = true;
                // Its failure shows again, with ssh's message, in the first step.
                let _ = self.ssh("true".to_owned(), false).run(Stdio::null());
            }
            return Ok(());
        }
        let Reach::Shared(control) = &self.reach else {
            return Ok(());
        };
        let mut master = lock(&control.master);
        if interrupt::interrupted() {
            return Ok(());
        }
        if master.is_some() {
            return Ok(());
        }
        match self.start_master(&control.socket) {
            Ok(started) => {
                *master = Some(started);
                Ok(())
            }
            Err(err) => {
                // Told once; nothing tries again.
                *master = Some(None);
                Err(err)
            }
        }
    }

    fn start_master(&self, socket: &Path) -> Result<Option<Master>> {
        // It ends with us also when we are killed (SIGKILL, the OOM
        // killer), when we cannot close it.
        let mut cmd = Cmd::from_argv(self.target.ssh_argv_before_options(false)).die_with_us();
        cmd = cmd.args([
            "-M".to_owned(),
            "-N".to_owned(),
            "-o".to_owned(),
            format!("ControlPath={}", socket.display()),
            "-o".to_owned(),
            "ControlPersist=no".to_owned(),
        ]);
        cmd = cmd
            .args(self.target.extra_options.iter().cloned())
            .args(self.defaults.iter().cloned())
            .arg(self.target.ssh_host());
        // A host key, passphrase or password prompt needs our terminal:
        // ssh opens /dev/tty, which only the foreground process group may
        // read, so with one the master stays in ours.
        if std::io::stdin().is_terminal() {
            cmd = cmd.stdin_inherit();
        } else if std::fs::File::open("/dev/tty").is_ok() {
            cmd = cmd.foreground();
        }
        let who = self.target.destination();
        let fall_back = |why: String| {
            eprintln!(
                "krops: warning: cannot start a shared ssh connection to {who} ({why}); \
                 each step connects on its own"
            );
            Ok(None)
        };
        let (reader, writer) = match os_pipe::pipe() {
            Ok(pipe) => pipe,
            Err(err) => return fall_back(format!("cannot make a pipe: {err}")),
        };
        let mut process = match cmd.spawn(Stdio::new(Out::Join, Out::file(writer))) {
            Ok(process) => process,
            Err(err) => return fall_back(format!("{err:#}")),
        };
        let log = Arc::new(Mutex::new(MasterLog::default()));
        pump_master_log(reader, Arc::clone(&log));
        loop {
            if socket.exists() {
                // Up: what it said so far (warnings) is shown, and so is
                // what it says from now on.
                {
                    let mut said = lock(&log);
                    let _ = std::io::stderr().write_all(&said.text);
                    said.live = true;
                }
                return Ok(Some(Master { process, log }));
            }
            match process.try_wait() {
                Ok(None) if !interrupt::interrupted() => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => return Ok(Some(Master { process, log })),
                Ok(Some(_)) if interrupt::interrupted() => return Ok(None),
                Ok(Some(status)) => {
                    let said = wait_for_log(&log);
                    let lines = connection_lines(&said);
                    if !lines.is_empty() {
                        return Err(anyhow!(
                            "the ssh connection to {who} failed: {}",
                            lines.join(" ")
                        ));
                    }
                    let said = said.trim_end();
                    let why = if said.is_empty() {
                        crate::command::describe(status)
                    } else {
                        format!("{}: {said}", crate::command::describe(status))
                    };
                    return fall_back(why);
                }
                Err(err) => return fall_back(format!("{err:#}")),
            }
        }
    }

    /// Stops the master, if one runs, and waits for it.
    pub fn close(&self) {
        let Reach::Shared(control) = &self.reach else {
            return;
        };
        let master = lock(&control.master).take();
        if let Some(Some(mut master)) = master {
            // Asked over its socket (`ssh -O exit`), the master exits at
            // once, whatever it was doing; a signal is the fallback. It
            // removes its socket when it stops.
            let mut argv = self.ssh_argv(false);
            argv.extend(["-O", "exit", self.target.ssh_host()].map(str::to_owned));
            if let Ok(mut exit) = Cmd::from_argv(argv).spawn(Stdio::null()) {
                if exit.wait_for(Duration::from_secs(2)).is_none() {
                    exit.terminate(Duration::from_secs(1));
                }
            }
            if master.process.wait_for(Duration::from_secs(2)).is_none() {
                master.process.terminate(Duration::from_secs(5));
            }
        }
    }

    /// How the master ended and what it said, when it ran and has ended
    /// (the shared connection is gone). Waits a moment for it to end: a
    /// step can see the connection go before its master has exited.
    pub(super) fn master_ended(&self) -> Option<(ExitStatus, String)> {
        let Reach::Shared(control) = &self.reach else {
            return None;
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            {
                let mut master = lock(&control.master);
                let Some(Some(master)) = master.as_mut() else {
                    return None;
                };
                if let Ok(Some(status)) = master.process.try_wait() {
                    return Some((status, wait_for_log(&master.log)));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Reads the master's stderr into `log` until it closes, passing it on to
/// ours once the log is live.
fn pump_master_log(mut reader: os_pipe::PipeReader, log: Arc<Mutex<MasterLog>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut log = lock(&log);
            if log.live {
                let _ = std::io::stderr().write_all(&buf[..n]);
            }
            log.text.extend_from_slice(&buf[..n]);
            if log.text.len() > 2 * MASTER_LOG_BYTES {
                let cut = log.text.len() - MASTER_LOG_BYTES;
                log.text.drain(..cut);
            }
        }
        lock(&log).closed = true;
    });
}

/// The master's log, once it is complete (or after a moment: a process
/// the master started may hold its stderr open).
fn wait_for_log(log: &Mutex<MasterLog>) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let log = lock(log);
        if log.closed || Instant::now() >= deadline {
            return String::from_utf8_lossy(&log.text).into_owned();
        }
        drop(log);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Unix socket paths hold at most 107 bytes, and ssh first binds the path
/// with 17 more; a longer `$TMPDIR` falls back to `/tmp`.
const SOCKET_DIR_MAX: usize = 107 - 17 - "/s".len();

pub(super) fn control_dir() -> std::io::Result<(PrivateDir, PathBuf)> {
    let tmp = std::env::temp_dir();
    let base = if tmp.as_os_str().len() + "/krops-ssh.XXXXXX".len() <= SOCKET_DIR_MAX {
        tmp
    } else {
        PathBuf::from("/tmp")
    };
    interrupt::private_dir("the shared ssh connection's socket", || {
        let dir = tempfile::Builder::new()
            .prefix("krops-ssh.")
            .rand_bytes(6)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(&base)?
            .keep();
        Ok((dir.clone(), dir.join("s")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_path_fits_the_limit() {
        let (dir, socket) = control_dir().unwrap();
        assert!(socket.as_os_str().len() + 17 <= 107, "{}", socket.display());
        drop(dir);
        assert!(!socket.parent().unwrap().exists());
    }
}
