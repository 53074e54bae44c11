//! Stopping cleanly on SIGINT, SIGTERM and SIGHUP (README: Differences from krops).
//!
//! Every child a tool starts is registered here while it runs. Children that
//! do not share our terminal run in a process group of their own, so a
//! signal meant for us (`kill PID` from a supervisor) does not reach them
//! half-way; instead, on a signal, the handler stops every child's whole
//! group (rsync and the ssh it started, a pipe's both ends), waits for them,
//! removes the private dirs registered for cleanup (decrypted secrets), says
//! what was interrupted, and exits with 128 + the signal's number.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::mutex::lock;

/// How long children get to stop after SIGTERM before they are killed.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    tool: &'static str,
    /// Running children: (pid, whether it leads a process group of its own).
    children: Vec<(u32, bool)>,
    /// Dirs to remove on a signal, with what they hold (decrypted secrets).
    private_dirs: Vec<(PathBuf, &'static str)>,
    /// What the dirs removed so far held, for the message.
    removed: Vec<&'static str>,
    /// What the tool is doing now, for the message.
    doing: Option<String>,
    /// Where a command runs that stopping ssh does not stop, if one does.
    remote: Option<String>,
    /// The lock that command keeps on its target until it ends.
    remote_lock: Option<String>,
    /// What happens anyway after an interrupt (a watchdog's rollback on the
    /// target), for the message.
    aftermath: Option<String>,
    /// The signal received, once one was.
    signal: Option<i32>,
    /// What to print after the message (a fleet's summary of its hosts).
    report: Option<Box<dyn Fn() -> String + Send>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("tool", &self.tool)
            .field("children", &self.children)
            .field("signal", &self.signal)
            .finish_non_exhaustive()
    }
}

static STATE: Mutex<State> = Mutex::new(State {
    tool: "krops",
    children: Vec::new(),
    private_dirs: Vec::new(),
    removed: Vec::new(),
    doing: None,
    remote: None,
    remote_lock: None,
    aftermath: None,
    signal: None,
    report: None,
});
static INSTALL: Once = Once::new();

/// Every change to a registered private dir, and every registration of a
/// child, happens while holding this lock; the handler exits holding it, so
/// nothing can re-create a secret after the handler removed it, and no child
/// can start unnoticed.
fn state() -> MutexGuard<'static, State> {
    lock(&STATE)
}

/// Starts the handler thread; `tool` names the tool in its message.
pub fn install(tool: &'static str) {
    INSTALL.call_once(|| {
        state().tool = tool;
        match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(mut signals) => {
                std::thread::spawn(move || {
                    if let Some(signal) = signals.forever().next() {
                        handle(signal);
                    }
                });
            }
            Err(err) => eprintln!("{tool}: warning: cannot handle interrupts: {err}"),
        }
    });
}

/// Whether a signal arrived: the tool must not start anything new, nor exit
/// on its own (the handler decides the exit status).
pub fn interrupted() -> bool {
    state().signal.is_some()
}

/// Says what the tool is doing now (`source nixpkgs (git) → host:/var/src/nixpkgs`).
/// A remote command said by [`remote`] was the last thing's: it has ended,
/// so the message no longer says it may still be running (at `Activate?`,
/// after the build).
pub fn doing(what: impl Into<String>) {
    let mut state = state();
    state.doing = Some(what.into());
    state.remote = None;
}

/// Says that what runs now is a command on `on` (`root@server01`) started
/// through ssh, which a signal here does not stop there: ssh gives it no
/// terminal, so it gets no hangup; the message says so.
pub fn remote(on: impl Into<String>) {
    state().remote = Some(on.into());
}

/// Says that the command of [`remote`] keeps the lock on `place`
/// (`server01:/var/src`) there until it ends, for the message.
pub fn remote_lock(place: impl Into<String>) {
    state().remote_lock = Some(place.into());
}

/// Says what happens anyway if the tool is interrupted from now on (`the
/// watchdog on root@server01 rolls the deploy back …`): the message ends
/// with it, so that a user who stops the tool knows what the target does.
pub fn aftermath(what: impl Into<String>) {
    state().aftermath = Some(what.into());
}

/// Nothing happens anyway any more: the message ends without [`aftermath`].
pub fn no_aftermath() {
    state().aftermath = None;
}

/// Has the handler print what `report` returns after its message, once the
/// children stopped (a fleet's summary of which hosts finished). `report`
/// runs in the handler, which holds this module's lock: it must not call
/// into this module, nor wait for a lock that is held while doing so.
pub fn on_signal_report(report: impl Fn() -> String + Send + 'static) {
    state().report = Some(Box::new(report));
}

/// A running child, unregistered when dropped (after it was waited for).
#[derive(Debug)]
pub struct Registered {
    pids: Vec<u32>,
}

/// Registers children that were just started; `own_group` says they lead
/// process groups of their own. If a signal already arrived, they are
/// stopped at once.
pub fn register(pids: Vec<u32>, own_group: bool) -> Registered {
    let mut state = state();
    for &pid in &pids {
        state.children.push((pid, own_group));
        if state.signal.is_some() {
            stop(pid, own_group, Signal::SIGTERM);
        }
    }
    Registered { pids }
}

impl Drop for Registered {
    fn drop(&mut self) {
        state().children.retain(|(pid, _)| !self.pids.contains(pid));
    }
}

/// A private dir that is removed when dropped, or by the handler on a
/// signal: both under the lock, so a signal never finds it half removed.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

/// Registers a dir for removal on a signal; `holds` says what is in it, for
/// the message (`decrypted secrets`). `create` makes it while the lock is
/// held, so the handler either sees it registered or it never exists.
pub fn private_dir<T>(
    holds: &'static str,
    create: impl FnOnce() -> std::io::Result<(PathBuf, T)>,
) -> std::io::Result<(PrivateDir, T)> {
    let mut state = state();
    let (path, value) = create()?;
    state.private_dirs.push((path.clone(), holds));
    Ok((PrivateDir { path }, value))
}

impl PrivateDir {
    /// Runs `change` (which creates something below the dir) under the lock.
    pub fn change<T>(&self, change: impl FnOnce(&Path) -> T) -> T {
        let _state = state();
        change(&self.path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let mut state = state();
        remove(&mut state, &self.path);
    }
}

/// Removes a registered dir and unregisters it, remembering what it held.
fn remove(state: &mut State, path: &Path) {
    let Some(at) = state.private_dirs.iter().position(|(p, _)| p == path) else {
        return;
    };
    let (path, holds) = state.private_dirs.remove(at);
    match std::fs::remove_dir_all(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            eprintln!(
                "{}: warning: cannot remove {} ({holds}): {err}",
                state.tool,
                path.display()
            );
            return;
        }
    }
    if !state.removed.contains(&holds) {
        state.removed.push(holds);
    }
}

/// Sends `signal` to a child: to its whole process group when it leads one.
pub(crate) fn stop(pid: u32, own_group: bool, signal: Signal) {
    let Ok(pid) = i32::try_from(pid).map(Pid::from_raw) else {
        return;
    };
    let _ = if own_group {
        killpg(pid, signal)
    } else {
        kill(pid, signal)
    };
}

/// Whether a process of the process group `pgid` is still running (not a
/// zombie): a child's own children (rsync's remote shell, which removes
/// its temp dir as it ends) may outlive it for a moment.
fn group_running(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // After the command name in parentheses: state, ppid, pgrp.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|pgrp| pgrp.parse::<u32>().ok());
        pgrp == Some(pgid) && !state.starts_with(['Z', 'X'])
    })
}

/// Whether process `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

fn handle(signal: i32) {
    let children = {
        let mut state = state();
        state.signal = Some(signal);
        state.children.clone()
    };
    for &(pid, group) in &children {
        stop(pid, group, Signal::SIGTERM);
    }
    // The threads that started the children wait for them and unregister.
    let started = Instant::now();
    let mut killed = false;
    loop {
        // A child that exited but is not yet waited for (a zombie) is gone:
        // the thread that would wait for it may be parked.
        let left: Vec<(u32, bool)> = state()
            .children
            .iter()
            .copied()
            .filter(|&(pid, group)| running(pid) || (group && group_running(pid)))
            .collect();
        if left.is_empty() || started.elapsed() > 2 * GRACE {
            break;
        }
        if !killed && started.elapsed() > GRACE {
            for &(pid, group) in &left {
                stop(pid, group, Signal::SIGKILL);
            }
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut state = state();
    let dirs: Vec<PathBuf> = state.private_dirs.iter().map(|(p, _)| p.clone()).collect();
    for path in &dirs {
        remove(&mut state, path);
    }
    let mut message = format!("{}: interrupted by {}", state.tool, signal_name(signal));
    if let Some(doing) = &state.doing {
        message.push_str(&format!(" during {doing}"));
    }
    if !children.is_empty() {
        message.push_str("; its commands were stopped");
    }
    if let Some(on) = &state.remote {
        message.push_str(&format!(
            "; the command on {on} may still be running there (stopping ssh does not stop it)"
        ));
        if let Some(place) = &state.remote_lock {
            message.push_str(&format!(", and keeps the lock on {place} until it ends"));
        }
    }
    if !state.removed.is_empty() {
        message.push_str(&format!("; {} removed", state.removed.join(" and ")));
    }
    if let Some(aftermath) = &state.aftermath {
        message.push_str(&format!("; {aftermath}"));
    }
    // Not eprintln!: with our stderr gone (a closed terminal) it would
    // panic, and the tool would never exit.
    let _ = writeln!(std::io::stderr(), "{message}");
    if let Some(report) = &state.report {
        let _ = std::io::stderr().write_all(report().as_bytes());
    }
    // Exits holding the lock: see `state`.
    std::process::exit(128 + signal);
}

/// Blocks forever once a signal arrived, so that the handler, not the
/// failure it caused, decides how the tool ends.
pub fn wait_if_interrupted() {
    if interrupted() {
        loop {
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn a_group_runs_while_a_child_of_its_leader_does() {
        // The leader ends at once; its child, in its group, a moment later.
        let mut leader = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 1 & exit 0"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = leader.id();
        leader.wait().unwrap();
        assert!(!running(pgid));
        assert!(group_running(pgid));
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_running(pgid) {
            assert!(Instant::now() < deadline, "the group never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
