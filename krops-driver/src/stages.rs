//! A driver's run as one ordered list of stages: populate these plans, run
//! this final command, capture a build's store path and go on with it,
//! confirm, … The same value is either run ([`Stages::run`]) or printed as
//! the `--dry-run` script ([`Stages::script`]), so that no mode can run one
//! thing and print another. What is running when a signal comes is told to
//! the interrupt handler by the runner, from each stage's description.

use std::process::{ExitCode, ExitStatus};

use anyhow::{bail, Result};
use mktarget::command::{exit_code, MAX_ARG_BYTES};
use mktarget::Cmd;
use populate::Plan;

use crate::final_command::{Final, Reporting};

/// What a stage done here decides: go on with the next stage, or end the
/// run with this exit status.
#[derive(Debug)]
pub enum Flow {
    Next,
    End(ExitCode),
}

/// What happens anyway after an interrupt from a stage on (a watchdog's
/// rollback, a build's directory left behind), told to the handler when
/// the stage starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aftermath {
    /// As the stages before said.
    Same,
    /// This, from now on.
    Set(String),
    /// Nothing any more.
    Clear,
}

/// What builds the stages after a capture from its stdout (`None` under
/// `--dry-run`, where nothing ran).
type Then = Box<dyn FnOnce(Option<String>) -> Result<Vec<Stage>>>;

/// What a stage done on this machine does, given the exit status of the
/// command before it.
type Act = Box<dyn FnOnce(&mut Reporting, Option<ExitStatus>) -> Result<Flow>>;

/// One stage of a run.
pub struct Stage {
    /// What `--dry-run` calls it (`# then WHAT`); else what the command's
    /// own messages call it.
    shown: Option<String>,
    aftermath: Aftermath,
    kind: StageKind,
}

enum StageKind {
    /// A final command; a failure ends the run with its exit status,
    /// unless the next stage takes it (`passes_status`). Exiting with
    /// `ends_failed_on`, the command has said why: the run ends with 1 and
    /// nothing happens anyway any more.
    Run {
        run: Final,
        passes_status: bool,
        ends_failed_on: Option<i32>,
    },
    /// A final command whose stdout (data: a store path) builds the stages
    /// after it. Its failure ends the run with its exit status, or with
    /// the error `failure` when there is one.
    Capture {
        run: Final,
        failure: Option<String>,
        then: Then,
    },
    /// Something done on this machine (show a preview, ask, confirm), with
    /// the command `--dry-run` shows for it, if any. `doing` is what the
    /// interrupt handler's message says runs.
    Here {
        doing: Option<String>,
        dry: Option<Cmd>,
        /// What `--dry-run` shows instead of `dry`: a script of several
        /// commands (a keys' send: each key made here, then the stream).
        dry_script: Option<String>,
        act: Act,
    },
}

impl Stage {
    /// Runs `run`; its failure ends the run with its exit status.
    pub fn run(run: Final) -> Stage {
        Stage {
            shown: None,
            aftermath: Aftermath::Same,
            kind: StageKind::Run {
                run,
                passes_status: false,
                ends_failed_on: None,
            },
        }
    }

    /// Runs `run` and builds the stages after it from its stdout.
    pub fn capture(
        run: Final,
        then: impl FnOnce(Option<String>) -> Result<Vec<Stage>> + 'static,
    ) -> Stage {
        Stage {
            shown: None,
            aftermath: Aftermath::Same,
            kind: StageKind::Capture {
                run,
                failure: None,
                then: Box::new(then),
            },
        }
    }

    /// Does `act` on this machine; `--dry-run` shows `dry` for it (a
    /// stage with `shown` and no command shows nothing).
    pub fn here(
        dry: Option<Cmd>,
        act: impl FnOnce(&mut Reporting, Option<ExitStatus>) -> Result<Flow> + 'static,
    ) -> Stage {
        Stage::here_with(dry, None, act)
    }

    /// Does `act` on this machine; `--dry-run` shows `script` for it.
    pub fn here_shown_as(
        script: String,
        act: impl FnOnce(&mut Reporting, Option<ExitStatus>) -> Result<Flow> + 'static,
    ) -> Stage {
        Stage::here_with(None, Some(script), act)
    }

    fn here_with(
        dry: Option<Cmd>,
        dry_script: Option<String>,
        act: impl FnOnce(&mut Reporting, Option<ExitStatus>) -> Result<Flow> + 'static,
    ) -> Stage {
        Stage {
            shown: None,
            aftermath: Aftermath::Same,
            kind: StageKind::Here {
                doing: None,
                dry,
                dry_script,
                act: Box::new(act),
            },
        }
    }

    /// `--dry-run` calls the stage `what`.
    pub fn shown(mut self, what: impl Into<String>) -> Stage {
        self.shown = Some(what.into());
        self
    }

    /// From this stage on, an interrupt leaves `aftermath`.
    pub fn aftermath(mut self, aftermath: Aftermath) -> Stage {
        self.aftermath = aftermath;
        self
    }

    /// While this stage (done here) runs, the tool is doing `what`.
    pub fn doing(mut self, what: impl Into<String>) -> Stage {
        if let StageKind::Here { doing, .. } = &mut self.kind {
            *doing = Some(what.into());
        }
        self
    }

    /// The next stage gets this one's exit status, also a failure.
    pub fn passes_status(mut self) -> Stage {
        if let StageKind::Run { passes_status, .. } = &mut self.kind {
            *passes_status = true;
        }
        self
    }

    /// Exiting with `code`, the command has said why it failed: the run
    /// ends with 1, and nothing happens anyway any more.
    pub fn ends_failed_on(mut self, code: i32) -> Stage {
        if let StageKind::Run { ends_failed_on, .. } = &mut self.kind {
            *ends_failed_on = Some(code);
        }
        self
    }

    /// A failure of this capture ends the run with the error `why`.
    pub fn failure_is_error(mut self, why: impl Into<String>) -> Stage {
        if let StageKind::Capture { failure, .. } = &mut self.kind {
            *failure = Some(why.into());
        }
        self
    }

    fn final_command(&self) -> Option<&Final> {
        match &self.kind {
            StageKind::Run { run, .. } | StageKind::Capture { run, .. } => Some(run),
            StageKind::Here { .. } => None,
        }
    }
}

/// A run: populate `plans`, then each stage in order.
pub struct Stages {
    plans: Vec<Plan>,
    stages: Vec<Stage>,
}

impl Stages {
    pub fn new(plans: Vec<Plan>, stages: Vec<Stage>) -> Stages {
        Stages { plans, stages }
    }

    /// Runs the stages, or with `dry_run` prints them as one sh script.
    pub fn run_or_print(self, dry_run: bool, reporting: &mut Reporting) -> Result<ExitCode> {
        self.check_lengths(!dry_run && reporting.locked)?;
        if dry_run {
            print!("{}", self.script()?);
            return Ok(ExitCode::SUCCESS);
        }
        self.run(reporting)
    }

    /// Refuses a final command too long for Linux to pass, before anything
    /// runs.
    fn check_lengths(&self, locked: bool) -> Result<()> {
        for last in self.stages.iter().filter_map(Stage::final_command) {
            let longest = last.command(locked).longest_word();
            if longest > MAX_ARG_BYTES {
                bail!(
                    "{}: it would be {longest} bytes in one argument, more than the \
                     {MAX_ARG_BYTES} Linux passes to a program: the script is too long",
                    last.what,
                );
            }
        }
        Ok(())
    }

    /// The `--dry-run` script: each plan, then each later stage as
    /// `# then WHAT` and its command; a capture's later stages as they
    /// would be built from what it prints.
    pub fn script(self) -> Result<String> {
        let mut script = String::from("#!/bin/sh\n");
        for plan in &self.plans {
            script.push_str(&plan.script());
            script.push('\n');
        }
        let mut todo = self.stages;
        todo.reverse();
        while let Some(stage) = todo.pop() {
            let (what, command) = match stage.kind {
                StageKind::Run { run, .. } => {
                    (stage.shown.unwrap_or(run.what.clone()), run.command(false))
                }
                StageKind::Capture { run, then, .. } => {
                    let command = run.command(false);
                    todo.extend(then(None)?.into_iter().rev());
                    (stage.shown.unwrap_or(run.what.clone()), command)
                }
                StageKind::Here {
                    dry_script: Some(text),
                    ..
                } => {
                    let what = stage.shown.unwrap_or_default();
                    script.push_str(&format!("# then {what}\n{text}\n"));
                    continue;
                }
                StageKind::Here { dry: Some(cmd), .. } => (stage.shown.unwrap_or_default(), cmd),
                StageKind::Here { dry: None, .. } => continue,
            };
            script.push_str(&format!("# then {what}\n{command}\n"));
        }
        Ok(script)
    }

    /// Populates every plan, then runs each stage until one ends the run;
    /// ends with the last command's exit status.
    pub fn run(self, reporting: &mut Reporting) -> Result<ExitCode> {
        populate_all(&self.plans, reporting)?;
        let mut todo = self.stages;
        todo.reverse();
        let mut last: Option<ExitStatus> = None;
        while let Some(stage) = todo.pop() {
            match stage.aftermath {
                Aftermath::Same => {}
                Aftermath::Set(what) => mktarget::interrupt::aftermath(what),
                Aftermath::Clear => mktarget::interrupt::no_aftermath(),
            }
            match stage.kind {
                StageKind::Run {
                    run,
                    passes_status,
                    ends_failed_on,
                } => {
                    let status = run.run(reporting)?;
                    if ends_failed_on.is_some() && status.code() == ends_failed_on {
                        mktarget::interrupt::no_aftermath();
                        return Ok(ExitCode::FAILURE);
                    }
                    if !status.success() && !passes_status {
                        return Ok(ExitCode::from(exit_code(status)));
                    }
                    last = Some(status);
                }
                StageKind::Capture { run, failure, then } => {
                    let (status, stdout) = run.run_capturing_stdout(reporting)?;
                    if let (false, Some(why)) = (status.success(), failure) {
                        bail!(why);
                    }
                    if !status.success() {
                        return Ok(ExitCode::from(exit_code(status)));
                    }
                    last = Some(status);
                    todo.extend(then(Some(stdout))?.into_iter().rev());
                }
                StageKind::Here { doing, act, .. } => {
                    if let Some(what) = doing {
                        mktarget::interrupt::doing(what);
                    }
                    if let Flow::End(code) = act(reporting, last)? {
                        return Ok(code);
                    }
                }
            }
        }
        Ok(match last {
            Some(status) => ExitCode::from(exit_code(status)),
            None => ExitCode::SUCCESS,
        })
    }
}

/// Runs each populate plan, in order, into the results; an error when one
/// fails or a signal came.
fn populate_all(plans: &[Plan], reporting: &mut Reporting) -> Result<()> {
    populate::lock_all(plans, reporting.style, reporting.results)?;
    for plan in plans {
        let report = plan.run(reporting.style);
        reporting.results.add_target(&report);
        report.into_result()?;
    }
    if mktarget::interrupt::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use mktarget::testing::{session, target};

    #[test]
    fn a_dry_run_prints_the_stages_a_capture_would_build_in_order() {
        let session = Arc::new(session(&target("root@t/var/src")));
        let later = Arc::clone(&session);
        let build = Final::new(&session, "echo built", "building".to_owned());
        let stages = Stages::new(
            Vec::new(),
            vec![
                Stage::capture(build, move |stdout| {
                    assert_eq!(stdout, None, "nothing ran");
                    Ok(vec![
                        Stage::here(None, |_, _| Ok(Flow::Next)).shown("not shown"),
                        Stage::run(Final::new(&later, "echo use", "using it".to_owned())),
                    ])
                })
                .shown("build it"),
                Stage::here(Some(Cmd::new("true")), |_, _| Ok(Flow::Next)).shown("confirm"),
            ],
        );
        let script = stages.script().unwrap();
        let comments: Vec<&str> = script.lines().filter(|l| l.starts_with("# ")).collect();
        assert_eq!(
            comments,
            ["# then build it", "# then using it", "# then confirm"],
            "{script}"
        );
        assert!(script.ends_with("# then confirm\ntrue\n"), "{script}");
    }
}
