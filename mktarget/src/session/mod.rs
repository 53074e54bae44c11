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

mod argv;
mod config;
mod diagnosis;
mod master;
mod policy;

use std::sync::Mutex;

use anyhow::Result;

use crate::target::{Origin, Target};

pub use config::SshConfig;
pub use diagnosis::connection_lines;
use master::{control_dir, Control};
use policy::{default_options, users_own_control};
pub use policy::{Multiplex, DEFAULT_OPTIONS};

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
    pub fn control_socket(&self) -> Option<&std::path::Path> {
        match &self.reach {
            Reach::Shared(control) => Some(&control.socket),
            _ => None,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// What the tests of the session's parts share.
#[cfg(test)]
mod fixtures {
    pub use super::*;
    pub use crate::command::{Cmd, Stdio};
    pub use crate::testing::origin;

    pub fn parse(s: &str) -> Target {
        Target::from_arg(s, &origin()).unwrap()
    }

    /// What `ssh -G` says for a user whose ssh config sets every option of
    /// [`DEFAULT_OPTIONS`] itself: the session adds none.
    pub fn all_set() -> SshConfig {
        SshConfig::parse("connecttimeout 5\nserveraliveinterval 30\nserveralivecountmax 2\n")
    }

    /// An unshared session, with the plain commands of README's Targets
    /// section (no default options: see [`all_set`]).
    pub fn off(target: &Target) -> Session {
        Session::open_with(target, &origin(), Multiplex::Off, &all_set()).unwrap()
    }

    pub fn words(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    /// `ssh -G` with the session's ssh argv: the options ssh would use.
    pub fn effective(session: &Session) -> SshConfig {
        let mut argv = session.ssh_argv(false);
        argv.insert(1, "-G".to_owned());
        argv.push(session.target().ssh_host().to_owned());
        SshConfig::parse(
            &Cmd::from_argv(argv)
                .run(Stdio::read())
                .unwrap()
                .text()
                .unwrap(),
        )
    }
}
