//! A connection to a target as a value (SPEC §2): the target resolved once
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
//! session then adds nothing. If the master cannot start, the session warns
//! once and every ssh connects on its own, as without sharing.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;

use crate::command::{Cmd, Started};
use crate::interrupt::{self, PrivateDir};
use crate::shell::{quote, quote_words, rsync_quote_words};
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
    master: Mutex<Option<Option<Started>>>,
    /// Removes the socket's dir when dropped; declared last, so it goes
    /// after the master has stopped.
    _dir: PrivateDir,
}

/// A target and how to reach it; see the module's documentation.
#[derive(Debug)]
pub struct Session {
    target: Target,
    origin: Origin,
    reach: Reach,
}

impl Session {
    /// Resolves `target`; nothing connects yet. With [`Multiplex::Share`] and
    /// a remote target whose ssh options and config set no ControlMaster,
    /// ControlPath or ControlPersist of their own, prepares a private dir
    /// for the control socket.
    pub fn open(target: &Target, origin: &Origin, multiplex: Multiplex) -> Result<Session> {
        let reach = if target.is_local(origin) {
            Reach::Local
        } else if multiplex == Multiplex::Off {
            Reach::Ssh
        } else if let Some(persist) = users_own_control(target) {
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
        Ok(Session {
            target: target.clone(),
            origin: origin.clone(),
            reach,
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

    /// Whether ssh connections go through a master of ours.
    pub fn is_shared(&self) -> bool {
        matches!(self.reach, Reach::Shared(_))
    }

    /// The control socket, when connections are shared.
    pub fn control_socket(&self) -> Option<&Path> {
        match &self.reach {
            Reach::Shared(control) => Some(&control.socket),
            _ => None,
        }
    }

    /// Starts the master, once; a no-op for local targets, unshared
    /// sessions, and after the first call. Waits until the master listens
    /// or has given up; if it gave up, warns and lets every ssh connect on
    /// its own (ssh with `ControlMaster=no` does when the socket is absent).
    pub fn connect(&self) {
        if let Reach::UsersPersisting(started) = &self.reach {
            let mut started = started.lock().unwrap_or_else(|p| p.into_inner());
            if !*started && !interrupt::interrupted() {
                *started = true;
                // Its failure shows again, with ssh's message, in the first step.
                let _ = self.ssh("true".to_owned(), false).quiet().status();
            }
            return;
        }
        let Reach::Shared(control) = &self.reach else {
            return;
        };
        let mut master = control
            .master
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if master.is_some() || interrupt::interrupted() {
            return;
        }
        *master = Some(self.start_master(&control.socket));
    }

    fn start_master(&self, socket: &Path) -> Option<Started> {
        let mut cmd = Cmd::from_argv(self.target.ssh_argv_before_options(false));
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
        let mut started = match cmd.start() {
            Ok(started) => started,
            Err(err) => {
                eprintln!(
                    "krops: warning: cannot start a shared ssh connection to {who} ({err:#}); \
                     each step connects on its own"
                );
                return None;
            }
        };
        loop {
            if socket.exists() {
                return Some(started);
            }
            match started.try_wait() {
                Ok(None) if !interrupt::interrupted() => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => return Some(started),
                Ok(Some(_)) if interrupt::interrupted() => return None,
                Ok(Some(status)) => {
                    eprintln!(
                        "krops: warning: the shared ssh connection to {who} could not start \
                         ({}); each step connects on its own",
                        crate::command::describe(status)
                    );
                    return None;
                }
                Err(err) => {
                    eprintln!("krops: warning: shared ssh connection to {who}: {err:#}");
                    return None;
                }
            }
        }
    }

    /// `ssh [-l USER] [-p PORT] -T|-t [SHARING] EXTRA_OPTIONS...` without the
    /// host; SHARING is `-o ControlPath=S -o ControlMaster=no` when shared.
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
        let argv = self.command_argv(script, args);
        if self.is_local() {
            Cmd::from_argv(argv)
        } else {
            Cmd::from_argv(self.fresh_ssh_argv())
                .arg(self.target.ssh_host())
                .arg(quote_words(&argv))
        }
    }

    /// The ssh command for rsync's `-e`, quoted the way rsync splits it.
    pub fn rsync_shell(&self) -> String {
        rsync_quote_words(self.ssh_argv(false))
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
            format!("sudo bash -c {}", quote(script))
        } else {
            script.to_owned()
        };
        self.ssh(remote, false)
    }

    /// A driver's final command: `[sudo] /bin/sh -c q(SCRIPT) ARGS...`,
    /// through ssh when the target is remote.
    pub fn command(&self, script: &str, args: &[String], tty: bool) -> Cmd {
        let argv = self.command_argv(script, args);
        if self.is_local() {
            Cmd::from_argv(argv)
        } else {
            self.ssh(quote_words(&argv), tty)
        }
    }

    /// `[sudo] /bin/sh -c SCRIPT ARGS...`, what a driver's command runs.
    fn command_argv(&self, script: &str, args: &[String]) -> Vec<String> {
        let mut argv: Vec<String> = Vec::new();
        if self.target.sudo {
            argv.push("sudo".to_owned());
        }
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
        let master = control
            .master
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(Some(mut master)) = master {
            // The master removes its socket when it stops.
            master.terminate(Duration::from_secs(5));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// Whether the user's options or ssh config for this target set up
/// connection sharing of their own (ControlMaster, ControlPath,
/// ControlPersist; `-M`, `-S`), which ours must not override or fight:
/// `None` when not, else whether their master persists in the background.
/// `ssh -G` prints the configuration ssh would use, without connecting.
fn users_own_control(target: &Target) -> Option<bool> {
    let mut argv = target.ssh_argv_before_options(false);
    argv.push("-G".to_owned());
    argv.extend(target.extra_options.iter().cloned());
    argv.push(target.ssh_host().to_owned());
    let out = match Cmd::from_argv(argv).output() {
        Ok(out) if out.status.success() => out,
        // ssh will say what is wrong when the run connects.
        _ => return None,
    };
    let config = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = |name: &str| {
        config.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.to_owned())
        })
    };
    let master = value("controlmaster").filter(|v| v != "false" && v != "no");
    let path = value("controlpath").filter(|v| v != "none");
    let persist = value("controlpersist").filter(|v| v != "no" && v != "false");
    // `-o ControlMaster=no` in extraOptions means "no sharing", though ssh
    // -G shows it as the default.
    let options = target.extra_options.join(" ").to_ascii_lowercase();
    let named = ["controlmaster", "controlpath", "controlpersist"]
        .iter()
        .any(|name| options.contains(name))
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

    fn origin() -> Origin {
        Origin {
            user: Some("alice".into()),
            host: "laptop".into(),
        }
    }

    fn parse(s: &str) -> Target {
        Target::from_arg(s, &origin()).unwrap()
    }

    /// An unshared session, whose commands are SPEC §2's.
    fn off(target: &Target) -> Session {
        Session::open(target, &origin(), Multiplex::Off).unwrap()
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
    }

    #[test]
    fn local_and_unshared_sessions_add_nothing() {
        let local = Session::open(
            &Target::from_arg("/srv", &origin()).unwrap(),
            &origin(),
            Multiplex::Share,
        )
        .unwrap();
        assert!(local.is_local() && !local.is_shared());
        let remote = Target::from_arg("root@server:22/srv", &origin()).unwrap();
        let off = Session::open(&remote, &origin(), Multiplex::Off).unwrap();
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
            assert_eq!(users_own_control(&target), persists, "{options:?}");
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
