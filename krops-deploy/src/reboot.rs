//! `--reboot` (README: Reboot and wait): after a successful boot or switch,
//! reboot the target, wait for it to go away and come back with a new boot
//! id, and check that it runs the system just built. Every wait is bounded
//! by `--reboot-timeout` and says what it waits for.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use mktarget::command::{Out, Stdio};
use mktarget::shell::without_comments;
use mktarget::{Cmd, Session};
use serde_json::{json, Value};

use crate::watchdog::Paths;

/// The kernel's id of the running boot, new at every boot.
pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// What `--reboot-timeout` is unless given: ten minutes, for machines
/// whose firmware takes its time.
pub const DEFAULT_TIMEOUT: u32 = 600;

/// How long one look at a rebooting target may take (a connection to a
/// machine going down can hang): it is stopped then and tried again.
const TRY: Duration = Duration::from_secs(20);

const REBOOT_SCRIPT: &str = include_str!("reboot.sh");
const STATE_SCRIPT: &str = include_str!("boot-state.sh");

/// A reboot and the wait for the target to come back.
#[derive(Debug)]
pub(crate) struct Reboot {
    /// Seconds the target has to go down and come back (and the check
    /// after it, to end).
    pub(crate) timeout: u32,
    /// How progress lines show: plain ones carry a timestamp, which a
    /// fleet's board reads as what the host does now; none with `--quiet`.
    pub(crate) style: populate::Style,
    pub(crate) paths: Paths,
}

/// What the target says of its boot: its boot id and the system it runs
/// (before a reboot: the one its next boot starts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BootState {
    pub(crate) boot_id: String,
    pub(crate) system: String,
}

impl BootState {
    /// Reads what `reboot.sh` and `boot-state.sh` print.
    pub(crate) fn parse(stdout: &str) -> Option<BootState> {
        let mut boot_id = None;
        let mut system = None;
        for line in stdout.lines() {
            if let Some(id) = line.strip_prefix("boot-id ") {
                boot_id = Some(id.trim().to_owned());
            } else if let Some(path) = line.strip_prefix("system ") {
                system = Some(path.trim().to_owned());
            }
        }
        Some(BootState {
            boot_id: boot_id.filter(|id| !id.is_empty())?,
            system: system?,
        })
    }
}

/// What the reboot found, for the results (`reboot` in `--json`).
#[derive(Debug, Default)]
pub(crate) struct Record {
    pub(crate) before: Option<BootState>,
    pub(crate) after: Option<BootState>,
    pub(crate) seconds: Option<f64>,
}

impl Record {
    pub(crate) fn to_json(&self) -> Value {
        let rebooted = match (&self.before, &self.after) {
            (Some(before), Some(after)) => before.boot_id != after.boot_id,
            _ => false,
        };
        json!({
            "rebooted": rebooted,
            "bootIdBefore": self.before.as_ref().map(|s| &s.boot_id),
            "bootIdAfter": self.after.as_ref().map(|s| &s.boot_id),
            "system": self.before.as_ref().map(|s| &s.system),
            "running": self.after.as_ref().map(|s| &s.system),
            "seconds": self.seconds,
        })
    }
}

/// How a command run against a deadline ended.
enum Ran {
    Exited(std::process::Output),
    /// Stopped at the deadline.
    TimedOut,
}

/// Runs `cmd` with its output captured, stopping it at `deadline`.
fn bounded(cmd: &Cmd, deadline: Instant) -> Result<Ran> {
    let mut started = cmd.spawn(Stdio::capture())?;
    loop {
        if started.try_wait()?.is_some() {
            return Ok(Ran::Exited(started.wait()?.into()));
        }
        if Instant::now() >= deadline || mktarget::interrupt::interrupted() {
            started.terminate(Duration::from_secs(2));
            return Ok(Ran::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of what a command wrote on stderr, for an error.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join("; ")
}

impl Reboot {
    /// Prints a progress line, as a final command's start is.
    fn say(&self, what: &str) {
        populate::final_started(self.style, "krops-deploy", what);
    }

    /// The command that reboots the target (`reboot.sh`), under sudo when
    /// the target says so, over a new connection: the run's shared one is
    /// closed first, as the reboot would cut it (its master saying so on
    /// stderr, also under `--quiet`).
    pub(crate) fn reboot_command(&self, session: &Session) -> Cmd {
        session.fresh_command(
            &without_comments(REBOOT_SCRIPT),
            &[
                "krops-deploy-reboot".to_owned(),
                self.paths.profile.clone(),
                BOOT_ID.to_owned(),
            ],
        )
    }

    /// The command that asks the target for its boot (`boot-state.sh`),
    /// over a new connection: the run's dies with the machine.
    pub(crate) fn state_command(&self, session: &Session) -> Cmd {
        session.fresh_command(
            &without_comments(STATE_SCRIPT),
            &[
                "krops-deploy-boot-state".to_owned(),
                BOOT_ID.to_owned(),
                self.paths.current_system.clone(),
            ],
        )
    }

    /// The check after the reboot, over a new connection.
    pub(crate) fn check_command(&self, session: &Session, check: &str) -> Cmd {
        session.fresh_command(check, &["krops-deploy-check".to_owned()])
    }

    /// Reboots the target; returns its boot before, and when the reboot
    /// began. A connection that ends as the target goes down is what a
    /// reboot does; any other failure is an error.
    pub(crate) fn reboot(&self, session: &Session) -> Result<(BootState, Instant)> {
        let on = session.machine();
        self.say(&format!("rebooting {on}"));
        session.close();
        let began = Instant::now();
        let cmd = self.reboot_command(session);
        let deadline = began + Duration::from_secs(u64::from(self.timeout));
        let output = match bounded(&cmd, deadline)? {
            Ran::Exited(output) => output,
            Ran::TimedOut => bail!(
                "reboot on {on}: it did not return within {} s (--reboot-timeout)",
                self.timeout
            ),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let lost = cmd.connection_failed(output.status);
        match BootState::parse(&stdout) {
            Some(before) if output.status.success() || lost => Ok((before, began)),
            Some(_) => bail!(
                "reboot on {on} failed ({}): {}",
                mktarget::command::describe(output.status),
                tail(&output.stderr)
            ),
            None => bail!(
                "reboot on {on}: cannot learn its boot id and next system before rebooting \
                 ({}): {}; nothing was rebooted unless it says so",
                mktarget::command::describe(output.status),
                tail(&output.stderr)
            ),
        }
    }

    /// Waits until the target answers a new connection with a new boot id,
    /// and checks that it runs `before`'s system; until `began` plus the
    /// timeout. `record` gets what was seen, also when it fails.
    pub(crate) fn wait(
        &self,
        session: &Session,
        before: &BootState,
        began: Instant,
        record: &mut Record,
    ) -> Result<()> {
        let on = session.machine();
        let timeout = self.timeout;
        let deadline = began + Duration::from_secs(u64::from(timeout));
        let left = |now: Instant| deadline.saturating_duration_since(now).as_secs();
        self.say(&format!(
            "waiting for {on} to go down and come back with a new boot id (up to {} s more)",
            left(Instant::now())
        ));
        let cmd = self.state_command(session);
        // Whether a poll went unanswered, and whether the last answer
        // was the old boot id: a poll that times out on a loaded machine
        // is not the host going down for good.
        let (mut down, mut old_answer) = (false, false);
        let after = loop {
            let now = Instant::now();
            if now >= deadline {
                record.seconds = Some(began.elapsed().as_secs_f64());
                let last = match (old_answer, down) {
                    (true, _) => "it still answered with the boot id it had before the reboot",
                    (false, true) => "it went down and has not answered since",
                    (false, false) => "it was not asked in time",
                };
                bail!(
                    "{on} did not come back with a new boot id within {timeout} s \
                     (--reboot-timeout): {last}"
                );
            }
            if mktarget::interrupt::interrupted() {
                bail!("interrupted while waiting for {on} to come back");
            }
            let answer = match bounded(&cmd, (now + TRY).min(deadline))? {
                Ran::Exited(output) if output.status.success() => {
                    BootState::parse(&String::from_utf8_lossy(&output.stdout))
                }
                // Cut short by the deadline: what it would have said is
                // unknown, and what was seen before stands.
                Ran::TimedOut if now + TRY > deadline => continue,
                _ => None,
            };
            old_answer = answer.is_some();
            match answer {
                Some(state) if state.boot_id != before.boot_id => break state,
                Some(_) => {}
                None if !down => {
                    down = true;
                    self.say(&format!(
                        "{on} is down; waiting for it to come back (up to {} s more)",
                        left(Instant::now())
                    ));
                }
                None => {}
            }
            std::thread::sleep(
                Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
            );
        };
        record.seconds = Some(began.elapsed().as_secs_f64());
        record.after = Some(after.clone());
        if after.system != before.system {
            bail!(
                "{on} came back (boot id {}) running {}, not the system just built {}: its boot \
                 loader started another generation",
                after.boot_id,
                if after.system.is_empty() {
                    "no system"
                } else {
                    &after.system
                },
                before.system
            );
        }
        self.say(&format!(
            "{on} is back after {:.0} s (boot id {}), running the system just built",
            began.elapsed().as_secs_f64(),
            after.boot_id
        ));
        Ok(())
    }

    /// Runs `check` on the rebooted target over a new connection, its
    /// output on our stderr, within the timeout.
    pub(crate) fn check(&self, session: &Session, check: &str) -> Result<()> {
        let on = session.machine();
        self.say(&format!(
            "running the check on {on} after the reboot (up to {} s)",
            self.timeout
        ));
        let cmd = self.check_command(session, check);
        let mut started = cmd.spawn(Stdio::new(Out::Join, Out::Inherit))?;
        let timeout = Duration::from_secs(u64::from(self.timeout));
        let Some(status) = started.wait_for(timeout) else {
            started.terminate(Duration::from_secs(3));
            bail!(
                "the check on {on} after the reboot did not end within {} s (--reboot-timeout)",
                self.timeout
            );
        };
        if !status.success() {
            bail!(
                "the check on {on} after the reboot failed ({}): it stays on the new system \
                 (nothing rolls back after a reboot)",
                mktarget::command::describe(status)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_states_parse() {
        assert_eq!(
            BootState::parse("boot-id 1234-5\nsystem /nix/store/abc-system\n"),
            Some(BootState {
                boot_id: "1234-5".into(),
                system: "/nix/store/abc-system".into()
            })
        );
        assert_eq!(
            BootState::parse("boot-id x\nsystem \n").map(|s| s.system),
            Some(String::new())
        );
        assert_eq!(BootState::parse("boot-id \nsystem /s\n"), None);
        assert_eq!(BootState::parse("system /s\n"), None);
        assert_eq!(BootState::parse(""), None);
    }

    #[test]
    fn the_scripts_say_what_the_deployer_reads() {
        let dir = tempfile::tempdir().unwrap();
        let boot_id = dir.path().join("boot_id");
        std::fs::write(&boot_id, "abc-123\n").unwrap();
        let link = dir.path().join("current");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", STATE_SCRIPT, "t"])
            .arg(&boot_id)
            .arg(&link)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let state = BootState::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(state.boot_id, "abc-123");
        let real = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(state.system, real.display().to_string());
    }
}
