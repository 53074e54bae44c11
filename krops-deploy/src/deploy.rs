//! One deploy's commands and its modes: each mode (plain, preview/ask,
//! confirmed switch, build target then activate) is one function returning
//! the run's stages, which krops-driver runs or prints as the `--dry-run`
//! script, so that a mode cannot print one thing and run another.

use std::io::Write;
use std::process::{ExitCode, ExitStatus};
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use krops_driver::flake::{attr_of_host_name, check_attr};
use krops_driver::keys::Delivery;
use krops_driver::{Aftermath, Final, Flake, Flow, Reporting, Stage};
use mktarget::command::{exit_code, Stdio};
use mktarget::{Cmd, Session, Target};

use crate::preview::{self, Built};
use crate::reboot::{self, Reboot};
use crate::watchdog::{self, Confirmation, Learned, Outcome, Paths, Watchdog};
use crate::{ask_activate, confirm_what, rebuild_script, Nom, Rebuild};

/// How `--dry-run` writes the store path of the system a build would make.
pub(crate) const NEW_PLACEHOLDER: &str = "/nix/store/NEW-SYSTEM";

/// How `--dry-run` writes the private directory a build would make.
const DIR_PLACEHOLDER: &str = "BUILD-DIR";

/// How `--dry-run` writes the target's host name, a flake's attribute
/// when `--flake` names none.
const HOST_NAME_PLACEHOLDER: &str = "TARGET-HOST-NAME";

/// Prints the host name, which nixos-rebuild takes for the flake's
/// attribute when none is given (both programs read the kernel's).
const HOST_NAME_SCRIPT: &str = "cat /proc/sys/kernel/hostname";

/// One deploy's commands, once its input is checked.
pub(crate) struct Deploy {
    pub(crate) operation: String,
    pub(crate) cross_deploy: bool,
    pub(crate) nom: Nom,
    pub(crate) target_session: Arc<Session>,
    pub(crate) build_session: Arc<Session>,
    /// NIX_SSHOPTS for the build target to reach the target, if any.
    pub(crate) sshopts: Option<String>,
    pub(crate) paths: Paths,
    /// Flake mode (`--flake`), checked against the sources and the build
    /// target's path.
    pub(crate) flake: Option<Flake>,
}

impl Deploy {
    fn target(&self) -> &Target {
        self.target_session.target()
    }

    fn build(&self) -> &Target {
        self.build_session.target()
    }

    fn separate_build(&self) -> bool {
        self.build() != self.target()
    }

    /// `PROGRAM OPERATION on MACHINE (the [build] target)`, for messages.
    pub(crate) fn on_build(&self, program: &str, operation: &str) -> String {
        let role = if self.separate_build() {
            "the build target"
        } else {
            "the target"
        };
        format!(
            "{program} {operation} on {} ({role})",
            self.build_session.machine()
        )
    }

    /// The script of the rebuild on the build target, as krops runs it; on
    /// the target with the watchdog started first when there is one.
    pub(crate) fn rebuild_command(&self, rebuild: &Rebuild, watchdog: Option<&Watchdog>) -> String {
        let script = rebuild_script(
            &self.build().path,
            self.sshopts.as_deref(),
            rebuild,
            self.nom,
        );
        match watchdog {
            Some(watchdog) => watchdog.guard(&script),
            None => script,
        }
    }

    /// nixos-rebuild's flake arguments on the build target, with `attr`
    /// when `--flake` names no attribute. The deploy checked the path.
    pub(crate) fn flake_args(&self, attr: Option<&str>) -> Option<Vec<String>> {
        let flake = self.flake.as_ref()?;
        let flake = match (flake.attr(), attr) {
            (None, Some(attr)) => flake.with_attr(attr),
            _ => flake.clone(),
        };
        let args = flake.rebuild_args(&self.build().path);
        Some(args.expect("the deploy checked the build target's path for the flake"))
    }

    /// `rebuild` with the flake's attribute `attr`, when krops names it.
    fn rebuild_of(&self, rebuild: &Rebuild, attr: Option<&str>) -> Rebuild {
        match attr {
            Some(_) => Rebuild {
                flake: self.flake_args(attr),
                ..rebuild.clone()
            },
            None => rebuild.clone(),
        }
    }

    /// Whether the build needs the target's host name first: a flake
    /// without an attribute, built on another machine than the target
    /// (nixos-rebuild would take its own name, or, with `--target-host`,
    /// ask the target without the options of NIX_SSHOPTS).
    fn needs_host_name(&self) -> bool {
        self.separate_build() && self.flake.as_ref().is_some_and(|f| f.attr().is_none())
    }

    /// `nixos-rebuild build` in a private directory on the build target
    /// (a flake's attribute `attr` when it names none).
    fn build_command(&self, attr: Option<&str>) -> Final {
        let build = Rebuild {
            operation: "build".to_owned(),
            cross_deploy: self.cross_deploy,
            target_host: None,
            sudo: false,
            flake: self.flake_args(attr),
        };
        let rebuild = rebuild_script(&self.build().path, None, &build, self.nom);
        Final::new(
            &self.build_session,
            &preview::build_script(&rebuild),
            self.on_build("nixos-rebuild", "build"),
        )
    }

    fn activate_command(&self, system: &str, watchdog: Option<&Watchdog>) -> Final {
        let script = preview::activate_script(&self.paths, &self.operation, system);
        let script = match watchdog {
            Some(watchdog) => watchdog.guard(&script),
            None => script,
        };
        Final::new(
            &self.target_session,
            &script,
            format!(
                "activating the new system ({}) on {}",
                self.operation,
                self.target_session.machine()
            ),
        )
        .tells_why_on(watchdog::NOT_STARTED)
    }

    fn confirm_command(&self, watchdog: &Watchdog, check: Option<&str>) -> Cmd {
        self.target_session
            .fresh_command(&watchdog.confirm_script(check), &[])
    }

    fn copy_final(&self, system: &str) -> Final {
        let script = preview::copy_script(
            self.sshopts.as_deref(),
            &self.target().destination(),
            system,
        );
        Final::new(
            &self.build_session,
            &script,
            format!(
                "copying the system from {} to {}",
                self.build_session.machine(),
                self.target_session.machine()
            ),
        )
    }

    /// After a guarded activation that ended with `status`: confirm or
    /// learn what the watchdog did, and say so, on stderr and in the
    /// results. Never success after a rollback.
    fn conclude(
        &self,
        watchdog: &Watchdog,
        check: Option<&str>,
        status: ExitStatus,
        reporting: &mut Reporting,
    ) -> ExitCode {
        let on = self.target_session.machine();
        let report = watchdog.conclude(&self.target_session, check, status.success());
        let failed = || {
            if status.success() {
                ExitCode::FAILURE
            } else {
                ExitCode::from(exit_code(status))
            }
        };
        let Confirmation::NotConfirmed { reason, outcome } = report else {
            return ExitCode::from(exit_code(status));
        };
        let what = match outcome {
            Learned::Outcome(Outcome::RolledBack(how)) => {
                format!("{on} rolled back to the previous system ({how})")
            }
            Learned::Outcome(Outcome::Unchanged(why)) => {
                format!("nothing was rolled back on {on}: {why}")
            }
            Learned::Outcome(Outcome::Failed(how)) => format!(
                "rolling back on {on} FAILED ({how}); its log is {}/log there",
                watchdog.dir()
            ),
            Learned::Outcome(Outcome::Confirmed) => {
                // The confirmation was made, though its answer was lost.
                if !watchdog.quiet {
                    eprintln!("krops-deploy: the watchdog on {on} recorded the confirmation");
                }
                return ExitCode::from(exit_code(status));
            }
            // Activated only after the watchdog started: its record was
            // removed since (or a reboot emptied /run).
            Learned::Gone if status.success() => format!(
                "{on} has no record of the watchdog ({}): nothing rolls back, the new system \
                 stays unconfirmed",
                watchdog.dir()
            ),
            Learned::Gone => format!(
                "{on} has no record of the watchdog ({}): it did not start, so nothing was \
                 activated, or its record was removed; nothing rolls back",
                watchdog.dir()
            ),
            Learned::Nothing => format!(
                "{on} could not be reached to learn whether it rolled back (the watchdog's \
                 record is {} there)",
                watchdog.dir()
            ),
        };
        let why = format!("not confirmed ({reason}): {what}");
        eprintln!("krops-deploy: error: {why}");
        reporting.results.final_failed(&why);
        failed()
    }
}

/// The plain deploy, krops's: `nixos-rebuild OPERATION` on the build
/// target, which activates on the target.
pub(crate) fn plain(deploy: &Rc<Deploy>, rebuild: &Rebuild) -> Vec<Stage> {
    let (deploy, rebuild) = (Rc::clone(deploy), rebuild.clone());
    with_host_name(&Rc::clone(&deploy), move |attr| {
        let rebuild = deploy.rebuild_of(&rebuild, attr);
        vec![Stage::run(
            Final::new(
                &deploy.build_session,
                &deploy.rebuild_command(&rebuild, None),
                deploy.on_build("nixos-rebuild", &deploy.operation),
            )
            .tells_why_on(watchdog::NOT_STARTED),
        )]
    })
}

/// `--confirm-timeout` on the target itself: the rebuild with the watchdog
/// started first, then the confirmation over a new connection.
pub(crate) fn confirmed(
    deploy: &Rc<Deploy>,
    rebuild: &Rebuild,
    watchdog: &Rc<Watchdog>,
    check: Option<String>,
) -> Vec<Stage> {
    let run = Final::new(
        &deploy.build_session,
        &deploy.rebuild_command(rebuild, Some(watchdog)),
        deploy.on_build("nixos-rebuild", &deploy.operation),
    )
    .tells_why_on(watchdog::NOT_STARTED);
    vec![
        Stage::run(run)
            .aftermath(Aftermath::Set(
                watchdog.aftermath(&deploy.target_session.machine()),
            ))
            .passes_status()
            .ends_failed_on(watchdog::NOT_STARTED),
        confirm(deploy, watchdog, check),
    ]
}

/// `--preview` and `--ask` (`ask`): build, show what changes; with `ask`,
/// activate what was built if the answer is yes.
pub(crate) fn preview_then(
    deploy: &Rc<Deploy>,
    ask: bool,
    watchdog: Option<Rc<Watchdog>>,
    check: Option<String>,
) -> Vec<Stage> {
    let deploy = Rc::clone(deploy);
    build_then(&Rc::clone(&deploy), move |built| {
        let system = built.system().to_owned();
        let compare = Final::new(
            &deploy.target_session,
            &preview::diff_script(&deploy.paths, &system),
            format!(
                "comparing the new system with the running one on {}",
                deploy.target_session.machine()
            ),
        );
        // Stopped from now on, the tool leaves the build's directory (and
        // its result link, which keeps the system from being collected).
        let left = format!(
            "nothing was activated; the built system's directory {} stays on {} (remove it \
             with rm -rf)",
            built.dir(),
            deploy.build_session.machine()
        );
        let shown = format!(
            "compare it with the running system on {}",
            deploy.target_session.machine()
        );
        let compare = Stage::capture(compare, move |stdout| {
            let mut stages = Vec::new();
            if let Some(stdout) = stdout {
                let preview = preview::parse_diff(&system, &stdout)?;
                let deploy = Rc::clone(&deploy);
                stages.push(Stage::here(None, move |reporting, _| {
                    show_preview(&deploy, &preview, reporting)?;
                    Ok(if ask {
                        Flow::Next
                    } else {
                        Flow::End(ExitCode::SUCCESS)
                    })
                }));
            }
            if ask {
                stages.push(
                    Stage::here(None, |_, _| {
                        if !ask_activate()? {
                            bail!(
                                "not activated: the answer was not y (the built system stays \
                                 in the Nix store until it is collected)"
                            );
                        }
                        Ok(Flow::Next)
                    })
                    .doing("asking whether to activate"),
                );
                stages.extend(activation(&deploy, &system, watchdog, check));
            }
            stages.push(built.kept_until_here());
            Ok(stages)
        })
        .shown(shown)
        .aftermath(Aftermath::Set(left))
        .failure_is_error("cannot compare the new system with the running one");
        vec![compare]
    })
}

/// A build target with `--confirm-timeout`: build there, activate on the
/// target with its watchdog (nixos-rebuild would activate over its own
/// ssh, where no watchdog can tell when activation ends).
pub(crate) fn build_then_activate(
    deploy: &Rc<Deploy>,
    watchdog: Option<Rc<Watchdog>>,
    check: Option<String>,
) -> Vec<Stage> {
    let deploy = Rc::clone(deploy);
    build_then(&Rc::clone(&deploy), move |built| {
        let mut stages = activation(&deploy, built.system(), watchdog, check);
        stages.push(built.kept_until_here());
        stages
    })
}

/// `nixos-rebuild build` in a private directory on the build target, then
/// (when the build target is another machine) the copy of the system to
/// the target, then what `then` makes of the build. The directory is
/// removed once the stages after it are done or dropped.
fn build_then(deploy: &Rc<Deploy>, then: impl FnOnce(Build) -> Vec<Stage> + 'static) -> Vec<Stage> {
    let deploy = Rc::clone(deploy);
    with_host_name(&Rc::clone(&deploy), move |attr| {
        build_with(&deploy, attr, then)
    })
}

/// The stages `then` makes, given the flake's attribute when krops must
/// name it: a flake without one, built on a build target, gets the
/// target's host name, read over krops's own connection to it, as
/// nixos-rebuild would read it there (the bash program does that before
/// it applies NIX_SSHOPTS, so a target reached with a port or options
/// would be asked without them; README: Flakes).
fn with_host_name(
    deploy: &Rc<Deploy>,
    then: impl FnOnce(Option<&str>) -> Vec<Stage> + 'static,
) -> Vec<Stage> {
    if !deploy.needs_host_name() {
        return then(None);
    }
    let read = Final::new(
        &deploy.target_session,
        HOST_NAME_SCRIPT,
        format!(
            "reading the host name of {}",
            deploy.target_session.machine()
        ),
    );
    let shown = format!(
        "the host name of {}, the flake's attribute ({HOST_NAME_PLACEHOLDER} below)",
        deploy.target_session.machine()
    );
    let deploy = Rc::clone(deploy);
    vec![Stage::capture(read, move |stdout| {
        let attr = match stdout {
            Some(stdout) => attr_of_host_name(&stdout),
            None => HOST_NAME_PLACEHOLDER.to_owned(),
        };
        check_attr(&attr).map_err(|why| {
            anyhow!(
                "the host name of {}, the flake's attribute: {why}",
                deploy.target_session.machine()
            )
        })?;
        Ok(then(Some(&attr)))
    })
    .shown(shown)
    .failure_is_error("cannot read the target's host name, the flake's attribute")]
}

/// [`build_then`] once the flake's attribute is known (`attr`, when
/// `--flake` names none).
fn build_with(
    deploy: &Rc<Deploy>,
    attr: Option<&str>,
    then: impl FnOnce(Build) -> Vec<Stage> + 'static,
) -> Vec<Stage> {
    let build = deploy.build_command(attr);
    let shown = format!(
        "{} in a private directory; it prints the directory and the new system, \
         {NEW_PLACEHOLDER} below",
        build.what
    );
    let deploy = Rc::clone(deploy);
    vec![Stage::capture(build, move |stdout| {
        let built = match stdout {
            Some(stdout) => Build::Real(BuildDir::new(
                &deploy.build_session,
                preview::parse_built(&stdout)?,
            )),
            None => Build::Printed,
        };
        let mut stages = Vec::new();
        if deploy.separate_build() {
            let copy = deploy.copy_final(built.system());
            stages.push(Stage::run(copy));
        }
        stages.extend(then(built));
        Ok(stages)
    })
    .shown(shown)]
}

/// Activates `system` on the target (guarded by `watchdog`, then confirmed
/// or rolled back, when there is one).
fn activation(
    deploy: &Rc<Deploy>,
    system: &str,
    watchdog: Option<Rc<Watchdog>>,
    check: Option<String>,
) -> Vec<Stage> {
    let run = deploy.activate_command(system, watchdog.as_deref());
    let shown = format!(
        "activate it ({}) on {}",
        deploy.operation,
        deploy.target_session.machine()
    );
    match watchdog {
        None => vec![Stage::run(run).shown(shown).aftermath(Aftermath::Clear)],
        Some(watchdog) => vec![
            Stage::run(run)
                .shown(shown)
                .aftermath(Aftermath::Set(
                    watchdog.aftermath(&deploy.target_session.machine()),
                ))
                .passes_status()
                .ends_failed_on(watchdog::NOT_STARTED),
            confirm(deploy, &watchdog, check),
        ],
    }
}

/// The confirmation after a guarded activation, whose exit status it
/// gets: over new connections, retried until the watchdog's timeout.
fn confirm(deploy: &Rc<Deploy>, watchdog: &Rc<Watchdog>, check: Option<String>) -> Stage {
    let command = deploy.confirm_command(watchdog, check.as_deref());
    let shown = confirm_what(watchdog);
    let deploy = Rc::clone(deploy);
    let watchdog = Rc::clone(watchdog);
    Stage::here(Some(command), move |reporting, status| {
        let status = status.expect("a confirmation follows an activation");
        let code = deploy.conclude(&watchdog, check.as_deref(), status, reporting);
        // Confirmed, the run goes on (post-activation keys, README: Keys; a
        // reboot may follow) and ends with the activation's status, 0.
        Ok(if code == ExitCode::SUCCESS {
            Flow::Next
        } else {
            Flow::End(code)
        })
    })
    .shown(shown)
}

/// `--reboot`, after a successful boot or switch (the stages before end
/// the run otherwise): reboot the target, wait for it to come back with a
/// new boot id running the system just built, then what runs once it is
/// back ([`after_the_host_is_back`]).
pub(crate) fn reboot_and_wait(
    deploy: &Rc<Deploy>,
    reboot: &Rc<Reboot>,
    check: Option<String>,
    keys: Option<&Rc<Delivery>>,
) -> Vec<Stage> {
    let on = deploy.target_session.machine();
    let before = Rc::new(std::cell::RefCell::new(None));
    let rebooting = {
        let (deploy, reboot, before) = (Rc::clone(deploy), Rc::clone(reboot), Rc::clone(&before));
        Stage::here(
            Some(reboot.reboot_command(&deploy.target_session)),
            move |reporting, _| {
                let mut record = reboot::Record::default();
                let done = reboot.reboot(&deploy.target_session);
                if let Ok((state, _)) = &done {
                    record.before = Some(state.clone());
                }
                reporting
                    .results
                    .extra
                    .insert("reboot".to_owned(), record.to_json());
                *before.borrow_mut() = Some((done?, record));
                Ok(Flow::Next)
            },
        )
        .shown(format!(
            "reboot {on}; it prints its boot id and the system its next boot starts"
        ))
        .doing(format!("rebooting {on}"))
        .aftermath(Aftermath::Set(format!(
            "{on} may be rebooting (into the system just built, unless its boot loader picks \
             another)"
        )))
    };
    let waiting = {
        let dry = reboot.state_command(&deploy.target_session);
        let (deploy, reboot) = (Rc::clone(deploy), Rc::clone(reboot));
        let shown = format!(
            "over a new ssh connection every second, for up to {} s after the reboot: until {on} \
             answers with a new boot id, running the system its boot was to start",
            reboot.timeout
        );
        Stage::here(Some(dry), move |reporting, _| {
            let ((state, began), mut record) =
                before.borrow_mut().take().expect("the reboot came first");
            let waited = reboot.wait(&deploy.target_session, &state, began, &mut record);
            reporting
                .results
                .extra
                .insert("reboot".to_owned(), record.to_json());
            waited?;
            // Back: nothing happens on its own any more.
            mktarget::interrupt::no_aftermath();
            Ok(Flow::Next)
        })
        .shown(shown)
        .doing(format!("waiting for {on} to come back after the reboot"))
    };
    let mut stages = vec![rebooting, waiting];
    stages.extend(after_the_host_is_back(deploy, reboot, check, keys));
    stages
}

/// What runs once a rebooted target is back with the system just built,
/// in order: the keys sent again, all of them (a boot empties a tmpfs
/// `destDir` such as `/run/keys`; README: Keys), over a new shared
/// connection, then the check.
fn after_the_host_is_back(
    deploy: &Rc<Deploy>,
    reboot: &Rc<Reboot>,
    check: Option<String>,
    keys: Option<&Rc<Delivery>>,
) -> Vec<Stage> {
    let mut stages = Vec::new();
    if let Some(keys) = keys {
        stages.push(krops_driver::keys::only(keys));
    }
    if let Some(check) = check {
        let on = deploy.target_session.machine();
        let dry = reboot.check_command(&deploy.target_session, &check);
        let shown = format!(
            "the check on {on} after the reboot, over a new ssh connection (up to {} s)",
            reboot.timeout
        );
        let (deploy, reboot) = (Rc::clone(deploy), Rc::clone(reboot));
        stages.push(
            Stage::here(Some(dry), move |_, _| {
                reboot.check(&deploy.target_session, &check)?;
                Ok(Flow::Next)
            })
            .shown(shown)
            .doing(format!("running the check on {on} after the reboot")),
        );
    }
    stages
}

/// Shows the preview on stdout (or, when stdout carries the results, as a
/// log that --quiet leaves out) and records it in the results.
fn show_preview(
    deploy: &Deploy,
    preview: &preview::Preview,
    reporting: &mut Reporting,
) -> Result<()> {
    let shown = preview::render(preview, &deploy.target_session.machine());
    reporting
        .results
        .extra
        .insert("preview".to_owned(), preview.to_json());
    if reporting.results_on_stdout {
        if !reporting.style.quiet() {
            std::io::stderr().write_all(shown.as_bytes())?;
        }
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(shown.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

/// What a build made: its directory on the build target (removed when
/// dropped), or under `--dry-run` the placeholders the script shows.
enum Build {
    Real(BuildDir),
    Printed,
}

impl Build {
    fn system(&self) -> &str {
        match self {
            Build::Real(dir) => &dir.built.system,
            Build::Printed => NEW_PLACEHOLDER,
        }
    }

    fn dir(&self) -> &str {
        match self {
            Build::Real(dir) => &dir.built.dir,
            Build::Printed => DIR_PLACEHOLDER,
        }
    }

    /// A stage that keeps the build's directory until the run reaches it
    /// (or ends before).
    fn kept_until_here(self) -> Stage {
        Stage::here(None, move |_, _| {
            drop(self);
            Ok(Flow::Next)
        })
    }
}

/// The private directory of a build on the build target, removed when
/// dropped (a failure only warns). A signal leaves it (the interrupt
/// message says so).
struct BuildDir {
    session: Arc<Session>,
    built: Built,
}

impl BuildDir {
    fn new(session: &Arc<Session>, built: Built) -> BuildDir {
        BuildDir {
            session: Arc::clone(session),
            built,
        }
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        let cmd = self
            .session
            .command(&preview::cleanup_script(&self.built), &[], false);
        let ran = cmd.run(Stdio::tee(std::io::stderr()));
        if let Err(err) = ran.and_then(|ran| Ok(ran.checked()?)) {
            eprintln!(
                "krops-deploy: warning: cannot remove {}: {err:#}",
                self.built.dir
            );
        }
    }
}
