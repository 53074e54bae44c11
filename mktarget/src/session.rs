//! A connection to a target as a value (README: Targets): the target resolved once
//! into local or remote, and, for a remote target, one OpenSSH master that
//! every ssh of the run goes through (steps, rsync's `-e`, a driver's final
//! command), so a run costs one handshake instead of one per step.
//!
//! The master's control socket lives in a private 0700 temp dir. The master
//! starts on the first [`Session::connect`] (never for `--dry-run`, which
//! only prints) and is closed when the session is dropped, or by the
//! interrupt handler on a signal (it is a registered child, the dir a
//! registered private dir). A user's own ControlMaster/ControlPath/
//! ControlPersist, in extraOptions or their ssh config, is left alone: the
//! session then adds nothing. If the master cannot reach the target
//! (refused, timed out, host key or login rejected), that is the run's one
//! error, quoting ssh; if it fails for another reason, the session warns
//! once and every ssh connects on its own, as without sharing.
//!
//! Every ssh of a remote session also gets [`DEFAULT_OPTIONS`] (a connect
//! timeout and keepalives), after the user's extraOptions so that theirs
//! win (ssh takes the first value it is given), and only those that
//! neither extraOptions nor the user's ssh config (as `ssh -G` reports it)
//! set.

use std::borrow::Cow;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::command::{Cmd, Started};
use crate::interrupt::{self, PrivateDir};
use crate::mutex::lock;
use crate::shell::{quote_words, rsync_quote_words};
use crate::target::{Origin, Target};

/// Whether a run may share one ssh connection per target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Multiplex {
    /// One master per remote target, unless the user has their own.
    Share,
    /// Every ssh connects on its own (`--no-multiplex`, `--dry-run`).
    Off,
}

impl Multiplex {
    /// `Off` when asked (`--no-multiplex`) or when `KROPS_NO_MULTIPLEX` is set
    /// to anything but empty or `0`.
    pub fn from_flag(no_multiplex: bool) -> Multiplex {
        let env_off = std::env::var("KROPS_NO_MULTIPLEX").is_ok_and(|v| !v.is_empty() && v != "0");
        if no_multiplex || env_off {
            Multiplex::Off
        } else {
            Multiplex::Share
        }
    }
}

/// How this session reaches its target.
#[derive(Debug)]
enum Reach {
    /// Commands run here, without ssh.
    Local,
    /// Every ssh on its own, as the user's options and config say.
    Ssh,
    /// The user's own sharing with ControlPersist: the first ssh of the
    /// run would fork a master that keeps its stderr, our pipe, open for
    /// ControlPersist's time; [`Session::connect`] starts it first, with
    /// its stderr not ours.
    UsersPersisting(Mutex<bool>),
    /// Through the master listening on `socket`.
    Shared(Box<Control>),
}

#[derive(Debug)]
struct Control {
    socket: PathBuf,
    /// The master, once started: `None` before, `Some(None)` when it could
    /// not start (then every ssh connects on its own).
    master: Mutex<Option<Option<Master>>>,
    /// Removes the socket's dir when dropped; declared last, so it goes
    /// after the master has stopped.
    _dir: PrivateDir,
}

/// A running master and what it says on stderr.
#[derive(Debug)]
struct Master {
    process: Started,
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

/// The ssh options every remote session adds, after the user's, unless
/// the user's options or ssh config set them: give up on a host that does
/// not answer within 30 s (TCP connect and ssh handshake), and notice a
/// connection that stopped answering within a minute (4 unanswered
/// keepalives 15 s apart).
pub const DEFAULT_OPTIONS: [(&str, &str); 3] = [
    ("ConnectTimeout", "30"),
    ("ServerAliveInterval", "15"),
    ("ServerAliveCountMax", "4"),
];

/// A target and how to reach it; see the module's documentation.
#[derive(Debug)]
pub struct Session {
    target: Target,
    origin: Origin,
    reach: Reach,
    /// The [`DEFAULT_OPTIONS`] this session adds, as ssh words.
    defaults: Vec<String>,
    /// What sudo on the target gets (`sudo.rs`).
    pub(crate) sudo_password: Option<crate::sudo::SudoPassword>,
}

/// What ssh's configuration for a target is, as `ssh -G` prints it
/// (keywords in lower case); empty when it could not tell.
#[derive(Clone, Debug, Default)]
pub struct SshConfig {
    settings: Vec<(String, String)>,
}

impl SshConfig {
    /// Runs `ssh -G` with the target's user, port and extraOptions; it
    /// connects to nothing.
    pub fn of(target: &Target) -> SshConfig {
        let mut argv = target.ssh_argv_before_options(false);
        argv.push("-G".to_owned());
        argv.extend(target.extra_options.iter().cloned());
        argv.push(target.ssh_host().to_owned());
        match Cmd::from_argv(argv).output() {
            Ok(out) if out.status.success() => {
                SshConfig::parse(&String::from_utf8_lossy(&out.stdout))
            }
            // ssh will say what is wrong when the run connects.
            _ => SshConfig::default(),
        }
    }

    /// Reads `ssh -G`'s output: one `keyword value` a line.
    pub fn parse(text: &str) -> SshConfig {
        let settings = text
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(' ')?;
                Some((key.to_ascii_lowercase(), value.to_owned()))
            })
            .collect();
        SshConfig { settings }
    }

    /// The value of `keyword` (any case), if ssh printed one.
    pub fn get(&self, keyword: &str) -> Option<&str> {
        let keyword = keyword.to_ascii_lowercase();
        self.settings
            .iter()
            .find(|(key, _)| *key == keyword)
            .map(|(_, value)| value.as_str())
    }
}

impl Session {
    /// Resolves `target`; nothing connects yet. With [`Multiplex::Share`] and
    /// a remote target whose ssh options and config set no ControlMaster,
    /// ControlPath or ControlPersist of their own, prepares a private dir
    /// for the control socket.
    pub fn open(target: &Target, origin: &Origin, multiplex: Multiplex) -> Result<Session> {
        let config = if target.is_local(origin) {
            SshConfig::default()
        } else {
            SshConfig::of(target)
        };
        Session::open_with(target, origin, multiplex, &config)
    }

    /// Like [`Session::open`], with `config` standing for what `ssh -G`
    /// says of the target (for tests that must not depend on this
    /// machine's ssh config).
    pub fn open_with(
        target: &Target,
        origin: &Origin,
        multiplex: Multiplex,
        config: &SshConfig,
    ) -> Result<Session> {
        let local = target.is_local(origin);
        let reach = if local {
            Reach::Local
        } else if multiplex == Multiplex::Off {
            Reach::Ssh
        } else if let Some(persist) = users_own_control(target, config) {
            if persist {
                Reach::UsersPersisting(Mutex::new(false))
            } else {
                Reach::Ssh
            }
        } else {
            match control_dir() {
                Ok((dir, socket)) => Reach::Shared(Box::new(Control {
                    socket,
                    master: Mutex::new(None),
                    _dir: dir,
                })),
                Err(err) => {
                    eprintln!(
                        "krops: warning: no shared ssh connection to {} ({err}); each step \
                         connects on its own",
                        target.destination()
                    );
                    Reach::Ssh
                }
            }
        };
        let defaults = if local {
            Vec::new()
        } else {
            default_options(target, config)
        };
        Ok(Session {
            target: target.clone(),
            origin: origin.clone(),
            reach,
            defaults,
            sudo_password: None,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn is_local(&self) -> bool {
        matches!(self.reach, Reach::Local)
    }

    /// Whether ssh connections go through a master of ours (only a test asks).
    #[cfg(test)]
    pub fn is_shared(&self) -> bool {
        matches!(self.reach, Reach::Shared(_))
    }

    /// How long ssh waits for the target to answer, as a person reads it:
    /// `30 s` when the tools set `ConnectTimeout`, else `the ConnectTimeout
    /// you set` (in `extraOptions` or the ssh config).
    pub fn connect_timeout(&self) -> String {
        match self
            .defaults
            .iter()
            .find_map(|option| option.strip_prefix("ConnectTimeout="))
        {
            Some(seconds) => format!("{seconds} s"),
            None => "the ConnectTimeout you set".to_owned(),
        }
    }

    /// The control socket, when connections are shared (only a test asks).
    #[cfg(test)]
    pub fn control_socket(&self) -> Option<&Path> {
        match &self.reach {
            Reach::Shared(control) => Some(&control.socket),
            _ => None,
        }
    }

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
                let _ = self.ssh("true".to_owned(), false).quiet().status();
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
        let mut process = match cmd.start_with_stderr(writer) {
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

    /// `ssh [-l USER] [-p PORT] -T|-t [SHARING] EXTRA_OPTIONS... [DEFAULTS]`
    /// without the host; SHARING is `-o ControlPath=S -o ControlMaster=no`
    /// when shared, DEFAULTS those of [`DEFAULT_OPTIONS`] the user left unset.
    pub fn ssh_argv(&self, tty: bool) -> Vec<String> {
        let mut argv = self.target.ssh_argv_before_options(tty);
        if let Reach::Shared(control) = &self.reach {
            argv.extend([
                "-o".to_owned(),
                format!("ControlPath={}", control.socket.display()),
                "-o".to_owned(),
                "ControlMaster=no".to_owned(),
            ]);
        }
        argv.extend(self.target.extra_options.iter().cloned());
        argv.extend(self.defaults.iter().cloned());
        argv
    }

    /// `ssh [-l USER] [-p PORT] -T EXTRA_OPTIONS... -S none` without the
    /// host: a connection of its own, which goes through no master, neither
    /// ours nor one the user's options or config set up. `-S none` comes
    /// last because ssh takes the last `-S` over any ControlPath, so it also
    /// wins over a `-S` or ControlPath among the user's options, which
    /// otherwise all apply. What a new login sees, not what an open
    /// connection still allows.
    pub fn fresh_ssh_argv(&self) -> Vec<String> {
        let mut argv = self.target.ssh_argv(false);
        argv.extend(["-S".to_owned(), "none".to_owned()]);
        argv
    }

    /// A driver's command as [`Session::command`] builds it (without a
    /// terminal), run over a new ssh connection ([`Session::fresh_ssh_argv`]);
    /// on a local target, the same local command.
    pub fn fresh_command(&self, script: &str, args: &[String]) -> Cmd {
        let argv = self.sudo_argv(self.command_argv(&[], script, args), false);
        let cmd = if self.is_local() {
            Cmd::from_argv(argv)
        } else {
            Cmd::from_argv(self.fresh_ssh_argv())
                .arg(self.target.ssh_host())
                .arg(quote_words(&argv))
        };
        self.feed_sudo(cmd, false)
    }

    /// The ssh command for rsync's `-e`, quoted the way rsync splits it.
    pub fn rsync_shell(&self) -> String {
        rsync_quote_words(self.sudo_rsh(self.ssh_argv(false)))
    }

    /// rsync's destination for `path` on this target: `[USER@]HOST:PATH`, or
    /// the path alone when the target is local.
    pub fn rsync_destination(&self, path: &str) -> String {
        if self.is_local() {
            path.to_owned()
        } else {
            format!("{}:{path}", self.target.destination())
        }
    }

    /// `[HOST:]PATH`, how messages name a place on this target.
    pub fn display_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        if self.is_local() {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(format!("{}:{path}", self.target.bracketed_host()))
        }
    }

    /// How messages name the machine: `this machine` or `[USER@]HOST`.
    pub fn machine(&self) -> String {
        self.target.machine(&self.origin)
    }

    /// A populate step: `script` as is on a local target, else
    /// `ssh … HOST SCRIPT`, or `ssh … HOST "sudo bash -c q(SCRIPT)"` with sudo.
    pub fn shell(&self, script: &str) -> Cmd {
        if self.is_local() {
            return Cmd::new("/bin/sh").args(["-c", script]);
        }
        let remote = if self.target.sudo {
            let sudo = ["sudo", "bash", "-c", script].map(str::to_owned).to_vec();
            quote_words(self.sudo_argv(sudo, false))
        } else {
            script.to_owned()
        };
        self.feed_sudo(self.ssh(remote, false), false)
    }

    /// A driver's final command: `[sudo] /bin/sh -c q(SCRIPT) ARGS...`,
    /// through ssh when the target is remote.
    pub fn command(&self, script: &str, args: &[String], tty: bool) -> Cmd {
        self.command_under(&[], script, args, tty)
    }

    /// Like [`Session::command`], started by `wrapper` (a program and its
    /// arguments, which runs the rest of its argv) on the target, under sudo
    /// when the target says so: `[sudo] WRAPPER... /bin/sh -c q(SCRIPT) ARGS...`.
    pub fn command_under(
        &self,
        wrapper: &[String],
        script: &str,
        args: &[String],
        tty: bool,
    ) -> Cmd {
        let argv = self.sudo_argv(self.command_argv(wrapper, script, args), tty);
        let cmd = if self.is_local() {
            Cmd::from_argv(argv)
        } else {
            self.ssh(quote_words(&argv), tty)
        };
        self.feed_sudo(cmd, tty)
    }

    /// `[sudo] [WRAPPER...] /bin/sh -c SCRIPT ARGS...`, what a driver's command runs.
    fn command_argv(&self, wrapper: &[String], script: &str, args: &[String]) -> Vec<String> {
        let mut argv: Vec<String> = Vec::new();
        if self.target.sudo {
            argv.push("sudo".to_owned());
        }
        argv.extend(wrapper.iter().cloned());
        argv.extend(["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]);
        argv.extend(args.iter().cloned());
        argv
    }

    fn ssh(&self, remote_command: String, tty: bool) -> Cmd {
        Cmd::from_argv(self.ssh_argv(tty))
            .arg(self.target.ssh_host())
            .arg(remote_command)
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
            if let Ok(mut exit) = Cmd::from_argv(argv).quiet().start_captured() {
                if exit.wait_for(Duration::from_secs(2)).is_none() {
                    exit.terminate(Duration::from_secs(1));
                }
            }
            if master.process.wait_for(Duration::from_secs(2)).is_none() {
                master.process.terminate(Duration::from_secs(5));
            }
        }
    }

    /// When `cmd`, an ssh of this session (or an rsync through one), ended
    /// with `status` and output ending in `tail` because of the connection:
    /// what the error says, `the ssh connection to HOST failed: WHY`, where
    /// WHY is ssh's own message (from `tail`, else from the shared
    /// connection's master, if it ended). `None` when the command itself
    /// failed.
    pub fn connection_failure(&self, cmd: &Cmd, status: ExitStatus, tail: &[u8]) -> Option<String> {
        let ssh_failed = status.code() == Some(255);
        // rsync passes ssh's 255 on; a lost connection may also end it
        // with a protocol or I/O error (12, 10, 11): any failure of rsync
        // is looked at.
        let suspect = match cmd.program() {
            "ssh" => ssh_failed,
            "rsync" => true,
            _ => false,
        };
        if self.is_local() || !suspect {
            return None;
        }
        let who = self.target.destination();
        let lines = connection_lines(&String::from_utf8_lossy(tail));
        if !lines.is_empty() {
            return Some(format!(
                "the ssh connection to {who} failed: {}",
                lines.join(" ")
            ));
        }
        if let Some((ended, said)) = self.master_ended() {
            let lines = connection_lines(&said);
            let why = if lines.is_empty() {
                format!("{}; ssh printed no reason", crate::command::describe(ended))
            } else {
                lines.join(" ")
            };
            return Some(format!(
                "the ssh connection to {who} was lost: the shared connection ended ({why})"
            ));
        }
        let how = crate::command::describe(status);
        match cmd.program() {
            // ssh says 255 for both; its message, if any, tells which.
            "ssh" => Some(format!(
                "the ssh connection to {who} failed, or the command was killed by a signal \
                 on the target ({how}; ssh's message, if any, is above)"
            )),
            "rsync" if ssh_failed => Some(format!(
                "the ssh connection to {who} failed (rsync: {how}, which is ssh's; \
                 ssh's message, if any, is above)"
            )),
            _ => None,
        }
    }

    /// How the master ended and what it said, when it ran and has ended
    /// (the shared connection is gone). Waits a moment for it to end: a
    /// step can see the connection go before its master has exited.
    fn master_ended(&self) -> Option<(ExitStatus, String)> {
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

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
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

/// What OpenSSH says when it cannot reach a host, cannot log in, or loses
/// the connection: a line of ssh's output containing one of these is
/// quoted in the error.
const CONNECTION_MESSAGES: &[&str] = &[
    "ssh: connect to host ",
    "ssh: Could not resolve hostname ",
    "Connection timed out during banner exchange",
    "kex_exchange_identification: ",
    "banner exchange: ",
    "host key is known for",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "Host key verification failed.",
    "Too many authentication failures",
    "Unable to negotiate with ",
    "Connection closed by ",
    "Connection reset by ",
    " closed by remote host.",
    "Timeout, server ",
    "client_loop: send disconnect: ",
    "Received disconnect from ",
    "ssh_dispatch_run_fatal: ",
    "Bad owner or permissions on ",
];

/// The lines of `output` in which ssh says why it could not connect or
/// lost the connection (see [`CONNECTION_MESSAGES`], and a rejected login,
/// `USER@HOST: Permission denied (publickey,password).`), trimmed, each
/// once.
pub fn connection_lines(output: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        let said = CONNECTION_MESSAGES.iter().any(|m| line.contains(m)) || login_rejected(line);
        if said && !lines.iter().any(|l| l == line) {
            lines.push(line.to_owned());
        }
    }
    lines
}

/// Whether `line` is ssh's `… Permission denied (METHOD,…).`, not another
/// program's `Permission denied (13)`.
fn login_rejected(line: &str) -> bool {
    let Some((_, methods)) = line.split_once("Permission denied (") else {
        return false;
    };
    methods.strip_suffix(").").is_some_and(|methods| {
        !methods.is_empty()
            && methods
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b",-@.".contains(&b))
    })
}

/// Whether `keyword` appears in the target's extraOptions (a user who
/// names an option there decides it, even when ssh -G cannot tell their
/// value from the default).
fn names_option(target: &Target, keyword: &str) -> bool {
    target.extra_options.iter().any(|option| {
        option
            .to_ascii_lowercase()
            .contains(&keyword.to_ascii_lowercase())
    })
}

/// The [`DEFAULT_OPTIONS`] to add for `target`: those that neither its
/// extraOptions name nor its ssh config sets (`config`, from `ssh -G`,
/// shows an unset option with ssh's default: `none`, `0` (`300` with
/// BatchMode), `3`).
fn default_options(target: &Target, config: &SshConfig) -> Vec<String> {
    let batch = config.get("batchmode") == Some("yes");
    let mut words = Vec::new();
    for (keyword, value) in DEFAULT_OPTIONS {
        let unset = match (keyword, config.get(keyword)) {
            (_, None) => true,
            ("ConnectTimeout", Some(v)) => v == "none",
            ("ServerAliveInterval", Some(v)) => v == "0" || (batch && v == "300"),
            ("ServerAliveCountMax", Some(v)) => v == "3",
            _ => false,
        };
        if unset && !names_option(target, keyword) {
            words.extend(["-o".to_owned(), format!("{keyword}={value}")]);
        }
    }
    words
}

/// Whether the user's options or ssh config for this target set up
/// connection sharing of their own (ControlMaster, ControlPath,
/// ControlPersist; `-M`, `-S`), which ours must not override or fight:
/// `None` when not, else whether their master persists in the background.
/// `config` is what `ssh -G` prints for the target.
fn users_own_control(target: &Target, config: &SshConfig) -> Option<bool> {
    let master = config
        .get("controlmaster")
        .filter(|v| *v != "false" && *v != "no");
    let path = config.get("controlpath").filter(|v| *v != "none");
    let persist = config
        .get("controlpersist")
        .filter(|v| *v != "no" && *v != "false");
    // `-o ControlMaster=no` in extraOptions means "no sharing", though ssh
    // -G shows it as the default.
    let named = ["controlmaster", "controlpath", "controlpersist"]
        .iter()
        .any(|name| names_option(target, name))
        || target
            .extra_options
            .iter()
            .any(|option| option == "-M" || option.starts_with("-S"));
    if !named && master.is_none() && path.is_none() && persist.is_none() {
        return None;
    }
    Some(master.is_some() && persist.is_some())
}

/// Unix socket paths hold at most 107 bytes, and ssh first binds the path
/// with 17 more; a longer `$TMPDIR` falls back to `/tmp`.
const SOCKET_DIR_MAX: usize = 107 - 17 - "/s".len();

fn control_dir() -> std::io::Result<(PrivateDir, PathBuf)> {
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
    use crate::testing::origin;

    fn parse(s: &str) -> Target {
        Target::from_arg(s, &origin()).unwrap()
    }

    /// What `ssh -G` says for a user whose ssh config sets every option of
    /// [`DEFAULT_OPTIONS`] itself: the session adds none.
    fn all_set() -> SshConfig {
        SshConfig::parse("connecttimeout 5\nserveraliveinterval 30\nserveralivecountmax 2\n")
    }

    /// An unshared session, with the plain commands of README's Targets
    /// section (no default options: see [`all_set`]).
    fn off(target: &Target) -> Session {
        Session::open_with(target, &origin(), Multiplex::Off, &all_set()).unwrap()
    }

    fn words(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    /// `ssh -G` with the session's ssh argv: the options ssh would use.
    fn effective(session: &Session) -> SshConfig {
        let mut argv = session.ssh_argv(false);
        argv.insert(1, "-G".to_owned());
        argv.push(session.target().ssh_host().to_owned());
        SshConfig::parse(&Cmd::from_argv(argv).read().unwrap())
    }

    #[test]
    fn default_options_come_after_the_users_and_only_when_unset() {
        let mut t = parse("root@h");
        let defaults = [
            "-o",
            "ConnectTimeout=30",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
        ];
        let nothing_set =
            SshConfig::parse("connecttimeout none\nserveraliveinterval 0\nserveralivecountmax 3\n");
        let open = |t: &Target, config: &SshConfig| {
            Session::open_with(t, &origin(), Multiplex::Off, config).unwrap()
        };
        assert_eq!(
            open(&t, &nothing_set).ssh_argv(false),
            [words(&["ssh", "-l", "root", "-T"]), words(&defaults)].concat()
        );
        // ssh -G could not tell: all of them.
        assert_eq!(
            open(&t, &SshConfig::default()).ssh_argv(false)[4..],
            defaults
        );
        // Named in extraOptions (even as ssh's default value): the user's.
        t.extra_options = words(&["-o", "ServerAliveInterval=0", "-v"]);
        assert_eq!(
            open(&t, &nothing_set).ssh_argv(false),
            words(&[
                "ssh",
                "-l",
                "root",
                "-T",
                "-o",
                "ServerAliveInterval=0",
                "-v",
                "-o",
                "ConnectTimeout=30",
                "-o",
                "ServerAliveCountMax=4",
            ])
        );
        // Set by the user's ssh config: theirs.
        t.extra_options.clear();
        let config =
            SshConfig::parse("connecttimeout 45\nserveraliveinterval 0\nserveralivecountmax 3\n");
        assert_eq!(open(&t, &config).ssh_argv(false)[4..], defaults[2..]);
        // BatchMode makes ssh's own default 300 s: still ours.
        let batch = SshConfig::parse(
            "batchmode yes\nconnecttimeout none\nserveraliveinterval 300\nserveralivecountmax 3\n",
        );
        assert_eq!(open(&t, &batch).ssh_argv(false)[4..], defaults);
        // A local target has no ssh.
        let local = open(&parse("/srv"), &nothing_set);
        assert_eq!(local.shell("true").argv(), ["/bin/sh", "-c", "true"]);
    }

    #[test]
    fn the_users_connect_timeout_wins_in_real_ssh() {
        let dir = tempfile::tempdir().unwrap();
        // In extraOptions, whatever ssh -G said of the config.
        let mut t = parse("root@h");
        t.extra_options = words(&["-oConnectTimeout=3"]);
        let session =
            Session::open_with(&t, &origin(), Multiplex::Off, &SshConfig::default()).unwrap();
        let config = effective(&session);
        assert_eq!(config.get("connecttimeout"), Some("3"));
        assert_eq!(config.get("serveraliveinterval"), Some("15"));
        assert_eq!(config.get("serveralivecountmax"), Some("4"));
        // In an ssh config file: ssh -G tells, and no default is added.
        let file = dir.path().join("config");
        std::fs::write(
            &file,
            "Host h\n  ConnectTimeout 7\n  ServerAliveInterval 60\n",
        )
        .unwrap();
        t.extra_options = words(&["-F", file.to_str().unwrap()]);
        let session = Session::open(&t, &origin(), Multiplex::Off).unwrap();
        let argv = session.ssh_argv(false);
        assert!(
            !argv
                .iter()
                .any(|w| w.starts_with("ConnectTimeout") || w.starts_with("ServerAliveInterval")),
            "{argv:?}"
        );
        let config = effective(&session);
        assert_eq!(config.get("connecttimeout"), Some("7"));
        assert_eq!(config.get("serveraliveinterval"), Some("60"));
        assert_eq!(config.get("serveralivecountmax"), Some("4"));
    }

    #[test]
    fn ssh_s_reasons_are_found_in_its_output() {
        for (output, expected) in [
            (
                "ssh: connect to host 127.0.0.1 port 4: Connection refused\r\n",
                vec!["ssh: connect to host 127.0.0.1 port 4: Connection refused"],
            ),
            (
                "No ED25519 host key is known for alpha and you have requested strict checking.\n\
                 Host key verification failed.\n",
                vec![
                    "No ED25519 host key is known for alpha and you have requested strict checking.",
                    "Host key verification failed.",
                ],
            ),
            (
                "building...\nroot@127.0.0.1: Permission denied (publickey).\n",
                vec!["root@127.0.0.1: Permission denied (publickey)."],
            ),
            (
                "Connection timed out during banner exchange\nConnection timed out during banner exchange\n",
                vec!["Connection timed out during banner exchange"],
            ),
            (
                "./\nbig\nConnection to 127.0.0.1 closed by remote host.\nrsync: [sender] write error: Broken pipe (32)\n",
                vec!["Connection to 127.0.0.1 closed by remote host."],
            ),
            ("Timeout, server 127.0.0.1 not responding.\n", vec!["Timeout, server 127.0.0.1 not responding."]),
            ("error: missing sentinel file\n", vec![]),
            (
                "rsync: [receiver] mkstemp \"/x/.a.Zx\" failed: Permission denied (13)\n\
                 u@h: Permission denied (publickey,keyboard-interactive).\n",
                vec!["u@h: Permission denied (publickey,keyboard-interactive)."],
            ),
        ] {
            assert_eq!(connection_lines(output), expected, "{output:?}");
        }
    }

    #[test]
    fn rsync_gets_the_ssh_argv_quoted_for_its_e() {
        let mut t = parse("root@h");
        t.extra_options = vec!["-o".into(), "ProxyCommand=nc %h %p".into()];
        assert_eq!(
            off(&t).rsync_shell(),
            "'ssh' '-l' 'root' '-T' '-o' 'ProxyCommand=nc %h %p'"
        );
    }

    #[test]
    fn destinations() {
        assert_eq!(off(&parse("root@h/p")).rsync_destination("/p"), "root@h:/p");
        assert_eq!(off(&parse("@h/p")).rsync_destination("/p"), "h:/p");
        assert_eq!(off(&parse("/p")).rsync_destination("/p"), "/p");
        assert_eq!(parse("@h").destination(), "h");
        assert_eq!(
            off(&parse("h/p")).display_path("/p/.populate"),
            "h:/p/.populate"
        );
        assert_eq!(
            off(&parse("/p")).display_path("/p/.populate"),
            "/p/.populate"
        );
    }

    #[test]
    fn each_program_gets_an_ipv6_host_its_own_way() {
        let t = parse("root@[::1]:22/var/src");
        let s = off(&t);
        assert_eq!(t.ssh_host(), "::1");
        assert_eq!(t.bracketed_host(), "[::1]");
        // ssh: the bare address as its host argument.
        assert_eq!(
            s.shell("true").argv(),
            ["ssh", "-l", "root", "-p", "22", "-T", "::1", "true"]
        );
        assert_eq!(
            s.command("id", &[], true).argv(),
            [
                "ssh",
                "-l",
                "root",
                "-p",
                "22",
                "-t",
                "::1",
                "/bin/sh -c id"
            ]
        );
        // rsync and nixos-rebuild: in brackets.
        assert_eq!(s.rsync_destination("/var/src"), "root@[::1]:/var/src");
        assert_eq!(t.destination(), "root@[::1]");
        assert_eq!(parse("@[2001:db8::1]").destination(), "[2001:db8::1]");
        assert_eq!(
            s.rsync_destination("/var/src/nixos-config"),
            "root@[::1]:/var/src/nixos-config"
        );
        // Messages: unambiguous.
        assert_eq!(
            s.display_path("/var/src/.populate"),
            "[::1]:/var/src/.populate"
        );
        // A JSON host "::1" is the same target.
        let host = serde_json::json!({"user": "root", "host": "::1", "port": "22"});
        let json = Target::from_json(&host, &origin()).unwrap();
        assert_eq!(
            off(&json).rsync_destination("/var/src"),
            "root@[::1]:/var/src"
        );
        assert_eq!(off(&json).shell("true").argv(), s.shell("true").argv());
    }

    #[test]
    fn populate_steps_on_targets() {
        assert_eq!(
            off(&parse("")).shell("echo hi").argv(),
            ["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(
            off(&parse("root@h:2")).shell("echo hi").argv(),
            ["ssh", "-l", "root", "-p", "2", "-T", "h", "echo hi"]
        );
        let mut t = parse("u@h");
        t.sudo = true;
        assert_eq!(
            off(&t).shell("echo 'hi'").argv(),
            [
                "ssh",
                "-l",
                "u",
                "-T",
                "h",
                "sudo bash -c 'echo '\\''hi'\\'''"
            ]
        );
    }

    #[test]
    fn driver_commands_on_targets() {
        let args = ["/var/src".to_owned()];
        assert_eq!(
            off(&parse("")).command("echo $1", &args, false).argv(),
            ["/bin/sh", "-c", "echo $1", "/var/src"]
        );
        let mut t = parse("u@h");
        assert_eq!(
            off(&t).command("echo $1", &args, true).argv(),
            ["ssh", "-l", "u", "-t", "h", "/bin/sh -c 'echo $1' /var/src"]
        );
        t.sudo = true;
        assert_eq!(
            off(&t).command("id", &[], false).argv(),
            ["ssh", "-l", "u", "-T", "h", "sudo /bin/sh -c id"]
        );
        // A wrapper runs under sudo too, the command as its arguments.
        let wrapper = [
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            "exec \"$@\"".to_owned(),
            "w".to_owned(),
        ];
        assert_eq!(
            off(&t).command_under(&wrapper, "id", &args, false).argv(),
            [
                "ssh",
                "-l",
                "u",
                "-T",
                "h",
                "sudo /bin/sh -c 'exec \"$@\"' w /bin/sh -c id /var/src"
            ]
        );
        assert_eq!(
            off(&parse(""))
                .command_under(&wrapper, "id", &[], false)
                .argv(),
            ["/bin/sh", "-c", "exec \"$@\"", "w", "/bin/sh", "-c", "id"]
        );
    }

    #[test]
    fn local_and_unshared_sessions_add_no_sharing() {
        let local = Session::open(
            &Target::from_arg("/srv", &origin()).unwrap(),
            &origin(),
            Multiplex::Share,
        )
        .unwrap();
        assert!(local.is_local() && !local.is_shared());
        let remote = Target::from_arg("root@server:22/srv", &origin()).unwrap();
        let off = off(&remote);
        assert_eq!(off.ssh_argv(false), remote.ssh_argv(false));
        assert_eq!(off.rsync_destination("/srv/a"), "root@server:/srv/a");
    }

    #[test]
    fn the_users_own_sharing_is_left_alone() {
        let mut target = Target::from_arg("root@server/srv", &origin()).unwrap();
        for (options, persists) in [
            (vec!["-o", "ControlMaster=no"], Some(false)),
            (vec!["-v"], None),
            (vec!["-oControlPath=/run/user/ssh-%C"], Some(false)),
            (vec!["-S", "/tmp/mine"], Some(false)),
            (
                vec!["-o", "ControlMaster=auto", "-o", "ControlPersist=10m"],
                Some(true),
            ),
        ] {
            target.extra_options = options.iter().map(|s| s.to_string()).collect();
            let config = SshConfig::of(&target);
            assert_eq!(users_own_control(&target, &config), persists, "{options:?}");
        }
    }

    #[test]
    fn fresh_commands_go_through_no_master() {
        let mut t = parse("u@h:2");
        t.sudo = true;
        t.extra_options = vec!["-v".into()];
        // Shared: the usual command goes through our socket, the fresh one
        // through none, with the user's options.
        let shared = Session::open(&t, &origin(), Multiplex::Share).unwrap();
        assert!(shared.is_shared());
        let socket = format!("ControlPath={}", shared.control_socket().unwrap().display());
        assert!(shared.command("id", &[], false).argv().contains(&socket));
        let fresh = shared.fresh_command("echo $1", &["x y".to_owned()]);
        assert_eq!(
            fresh.argv(),
            [
                "ssh",
                "-l",
                "u",
                "-p",
                "2",
                "-T",
                "-v",
                "-S",
                "none",
                "h",
                "sudo /bin/sh -c 'echo $1' 'x y'"
            ]
        );
        // Local: the same command as ever.
        let local = off(&parse("/srv"));
        assert_eq!(
            local.fresh_command("id", &[]).argv(),
            local.command("id", &[], false).argv()
        );
    }

    #[test]
    fn a_fresh_ssh_ignores_a_control_path_from_anywhere() {
        // ssh -G prints what a connection would use: no control path left.
        let mut t = parse("root@h");
        t.extra_options = vec![
            "-o".into(),
            "ControlPath=/tmp/a".into(),
            "-S".into(),
            "/tmp/b".into(),
        ];
        let mut argv = off(&t).fresh_ssh_argv();
        argv.extend(["-G".to_owned(), "h".to_owned()]);
        let out = Cmd::from_argv(argv).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let config = String::from_utf8(out.stdout).unwrap();
        // (ssh -G prints no controlpath line for none.)
        assert!(!config.contains("controlpath"), "{config}");
        // Without `-S none` it would have used the user's.
        let mut argv = t.ssh_argv(false);
        argv.extend(["-G".to_owned(), "h".to_owned()]);
        let config = Cmd::from_argv(argv).read().unwrap();
        assert!(config.contains("controlpath /tmp/"), "{config}");
    }

    #[test]
    fn a_socket_path_fits_the_limit() {
        let (dir, socket) = control_dir().unwrap();
        assert!(socket.as_os_str().len() + 17 <= 107, "{}", socket.display());
        drop(dir);
        assert!(!socket.parent().unwrap().exists());
    }
}
