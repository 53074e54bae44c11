//! The steps of a populate run (SPEC §3): the sentinel check, the backup,
//! and one step per source, each a command on the target or here; and how
//! they run: the cheap scripts (the checks, symlinks, the claims of rsync
//! sources' places) batched into as few remote runs as fit, then the other
//! sources `jobs` at a time over the target's one shared connection, then
//! derivations (which may build from the sources just synced). Each step's
//! outcome is data ([`Report`]); its output is kept together, in plan order
//! ([`Printer`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use mktarget::interrupt;
use mktarget::shell::quote;
use mktarget::Session;

use crate::lock::{Locking, Taken};
use crate::report::{Printer, Report, StepError, StepOutcome, StepStatus};
use crate::script::PRELUDE;
use crate::source::Sources;
use crate::step::{part_failure, step_failure, Ended, Work};

/// How the sentinel check reports a missing sentinel (any other failure is
/// the transport's, e.g. ssh's 255, or a failed `run`).
const MISSING_SENTINEL: i32 = 3;
/// How the sentinel check reports a file sentinel where `--backup` needs a
/// directory.
const FILE_SENTINEL: i32 = 4;
/// The sentinel script's exit status when the sentinel is a symlink.
const LINKED_SENTINEL: i32 = 5;

/// A batch's script stays below this many bytes: it is one argument of
/// `sh -c` (on the target, of the login shell), and Linux takes at most
/// 128 KiB in one.
const BATCH_BYTES: usize = 96 * 1024;
/// What a batch prints after each part: `\x1ekrops-step INDEX STATUS`.
const BATCH_MARKER: &str = "\x1ekrops-step ";

/// The most source steps run at once: each holds a session of the shared
/// connection, and so does the lock ([`crate::lock`]); 9 and the lock are
/// sshd's default MaxSessions (10).
pub const MAX_JOBS: usize = 9;

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Create the sentinel file (and the target path) first.
    pub force: bool,
    /// Copy the target path to `PATH/.populate/backup/` first.
    pub backup: bool,
    /// How many source steps run at once (1..=[`MAX_JOBS`]).
    pub jobs: usize,
    /// Whether the run takes the lock on the target path, and how long it
    /// waits for it.
    pub locking: Locking,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            force: false,
            backup: false,
            jobs: 4,
            locking: Locking::Wait(None),
        }
    }
}

/// Everything one populate run will do to one target, decided and checked
/// before anything runs.
#[derive(Debug)]
pub struct Plan {
    session: Arc<Session>,
    steps: Vec<Step>,
    jobs: usize,
    force: bool,
    locking: Locking,
    /// The lock on the target path once taken; let go when the plan is
    /// dropped, so a driver holds it through its final command.
    lock: Mutex<Option<Taken>>,
}

#[derive(Debug)]
struct Step {
    /// What the log calls this step: `source nixpkgs (git)`.
    label: String,
    /// The source's name, for source steps.
    name: Option<String>,
    /// The source type, or `sentinel` / `backup`.
    kind: &'static str,
    /// Where on the target it acts: `[HOST:]PATH`.
    place: String,
    work: Work,
}

impl Plan {
    pub fn new(session: &Arc<Session>, sources: &Sources, options: Options) -> Result<Plan> {
        let root = &session.target().path;
        let mut steps = vec![sentinel_step(session, options)];
        if options.backup {
            let backup = format!("{root}/.populate/backup");
            steps.push(Step {
                label: "backup".to_owned(),
                name: None,
                kind: "backup",
                place: session.display_path(&backup).into_owned(),
                work: Work::Batched {
                    body: backup_script(session),
                },
            });
        }
        for (name, source) in sources {
            let label = format!("source {name} ({})", source.type_name());
            let path = format!("{root}/{name}");
            let work = source.work(session, &path).with_context(|| label.clone())?;
            steps.push(Step {
                label,
                name: Some(name.clone()),
                kind: source.type_name(),
                place: session.display_path(&path).into_owned(),
                work,
            });
        }
        Ok(Plan {
            session: Arc::clone(session),
            steps,
            jobs: options.jobs.clamp(1, MAX_JOBS),
            force: options.force,
            locking: options.locking,
            lock: Mutex::new(None),
        })
    }

    /// The connection to the plan's target.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Takes the lock on the target path (see [`crate::lock`]) unless the
    /// plan has it or runs without; `id` is this run's holder id. When
    /// there is nothing to lock yet (no target path, or no sentinel and no
    /// `--force`) or ssh could not connect, the sentinel check alone runs:
    /// its failure is the error, as without a lock; if it passes after all
    /// (another run just made the path, the host is back), the lock is
    /// taken then.
    pub fn lock(&self, id: &str) -> Result<()> {
        let Locking::Wait(timeout) = self.locking else {
            return Ok(());
        };
        let mut held = lock(&self.lock);
        if held.is_some() {
            return Ok(());
        }
        for _ in 0..3 {
            match crate::lock::take(&self.session, self.force, timeout, id)? {
                Taken::Nothing | Taken::Unreachable => self.check_sentinel()?,
                taken => {
                    *held = Some(taken);
                    return Ok(());
                }
            }
        }
        anyhow::bail!(
            "lock on {}: the target path kept changing while the lock was taken",
            self.session.display_path(&self.session.target().path)
        )
    }

    /// Runs the sentinel check alone, with its output and error as in a run.
    fn check_sentinel(&self) -> Result<()> {
        let printer = Printer::stderr(self.steps.len());
        let run = Run::new(self, &printer);
        let body = self.steps[0]
            .work
            .batched()
            .expect("the first step is the batched sentinel check");
        run.batch(&[(0, body)]);
        run.finish().into_result().map(|_| ())
    }

    /// Runs the plan, its output to our stderr; the first failure (in plan
    /// order) is the error.
    pub fn run(&self) -> Result<Report> {
        self.lock(&crate::lock::holder_id(&self.session))?;
        self.run_with(&Printer::stderr(self.steps.len()))
            .into_result()
    }

    /// Runs the plan with its output going to `printer` (one slot a step)
    /// and returns every step's outcome. A failure stops new steps from
    /// starting; the running ones finish.
    pub fn run_with(&self, printer: &Printer) -> Report {
        self.session.connect();
        let run = Run::new(self, printer);
        let mut stopped = run.batches();
        for late in [false, true] {
            if stopped {
                break;
            }
            let queue: Vec<usize> = (0..self.steps.len())
                .filter(|&i| !self.steps[i].work.all_batched() && self.steps[i].work.late() == late)
                .collect();
            stopped = run.parallel(queue);
        }
        run.finish()
    }

    /// The plan as a POSIX sh script, for `--dry-run`, one command or
    /// script a step (not batched). No secret is in it: secrets are
    /// decrypted only when the script runs.
    pub fn script(&self) -> String {
        let mut script = format!(
            "# populate {}\n{}set -efu\n",
            self.session.target(),
            crate::lock::dry_run_note(&self.session, self.locking)
        );
        for step in &self.steps {
            script.push_str(&format!(
                "\n# {}\n{}\n",
                step.label,
                step.work.script(&self.session)
            ));
        }
        script
    }
}

/// One run of a plan: the outcomes so far, and what runs now.
struct Run<'a> {
    plan: &'a Plan,
    printer: &'a Printer,
    outcomes: Mutex<Vec<Option<StepOutcome>>>,
    started: Mutex<Vec<Option<Instant>>>,
    /// The labels of the steps running now, for the interrupt message.
    running: Mutex<Vec<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<'a> Run<'a> {
    fn new(plan: &'a Plan, printer: &'a Printer) -> Run<'a> {
        Run {
            plan,
            printer,
            outcomes: Mutex::new(plan.steps.iter().map(|_| None).collect()),
            started: Mutex::new(vec![None; plan.steps.len()]),
            running: Mutex::new(Vec::new()),
        }
    }

    /// Notes when step `i` started, once.
    fn clock(&self, i: usize) {
        let mut started = lock(&self.started);
        if started[i].is_none() {
            started[i] = Some(Instant::now());
        }
    }

    /// Prints step `i`'s first log line.
    fn header(&self, i: usize) {
        let step = &self.plan.steps[i];
        let line = format!("populate: {} → {}\n", step.label, step.place);
        self.printer.write(i, line.as_bytes());
    }

    /// Says that the steps `labels` start (`on`) or ended, for the
    /// interrupt message: what runs now. (All of a batch's at once: one by
    /// one, a batch of thousands would cost its size squared.)
    fn doing(&self, labels: &[&str], on: bool) {
        let mut running = lock(&self.running);
        if on {
            running.extend(labels.iter().map(|&label| label.to_owned()));
        } else if let [label] = labels {
            running.retain(|l| l != label);
        } else {
            let ended: std::collections::HashSet<&str> = labels.iter().copied().collect();
            running.retain(|l| !ended.contains(l.as_str()));
        }
        if !running.is_empty() {
            interrupt::doing(running.join(", "));
        }
    }

    /// Records how step `i` ended and lets the printer move on; returns
    /// whether it failed.
    fn end(&self, i: usize, status: StepStatus) -> bool {
        let step = &self.plan.steps[i];
        let elapsed = lock(&self.started)[i]
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let failed = matches!(status, StepStatus::Failed(_));
        lock(&self.outcomes)[i] = Some(StepOutcome {
            label: step.label.clone(),
            name: step.name.clone(),
            kind: step.kind.to_owned(),
            place: step.place.clone(),
            status,
            elapsed,
        });
        self.printer.finish(i);
        failed
    }

    /// Runs every step's batched part, in plan order, in as few remote runs
    /// as fit; returns whether a step failed (or a signal came).
    fn batches(&self) -> bool {
        let parts: Vec<(usize, &str)> = self
            .plan
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, step)| step.work.batched().map(|body| (i, body)))
            .collect();
        let mut chunk: Vec<(usize, &str)> = Vec::new();
        let mut size = PRELUDE.len();
        for (i, body) in parts {
            let part_size = body.len() + 128;
            if !chunk.is_empty() && size + part_size > BATCH_BYTES {
                if self.batch(&std::mem::take(&mut chunk)) {
                    return true;
                }
                size = PRELUDE.len();
            }
            chunk.push((i, body));
            size += part_size;
        }
        !chunk.is_empty() && self.batch(&chunk)
    }

    /// One remote run of batched parts, stopping at the first that fails;
    /// returns whether one failed.
    fn batch(&self, parts: &[(usize, &str)]) -> bool {
        if interrupt::interrupted() {
            return true;
        }
        let mut script = format!("{PRELUDE}set +e\n");
        for (i, body) in parts {
            script.push_str(&format!(
                "(\nset -e\n{body}) 2>&1\nkrops_s=$?\nprintf '\\036krops-step %s %s\\n' {i} \"$krops_s\"\n\
                 test \"$krops_s\" = 0 || exit 0\n"
            ));
        }
        let cmd = self.plan.session.shell(&script);
        let labels: Vec<&str> = parts
            .iter()
            .map(|(i, _)| self.plan.steps[*i].label.as_str())
            .collect();
        self.doing(&labels, true);
        for (i, _) in parts {
            self.clock(*i);
        }
        let output = cmd.output();
        self.doing(&labels, false);
        let output = match output {
            Ok(output) => output,
            Err(err) => {
                let (first, _) = parts[0];
                self.header(first);
                return self.end(first, StepStatus::Failed(StepError::from(err)));
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        // What is left of the output: an index, not a copy per part (a
        // copy would cost the output's size times the parts).
        let mut rest: &str = &stdout;
        for (i, _) in parts {
            let step = &self.plan.steps[*i];
            // Only parts that ran (or the one that broke off) are logged.
            self.header(*i);
            let Some(at) = rest.find(BATCH_MARKER) else {
                // The run ended before this part finished: ssh failed, or
                // a signal.
                self.printer.write(*i, rest.as_bytes());
                self.printer.write(*i, &output.stderr);
                let error = step_failure(&cmd, output.status, &output.stderr);
                // The parts after it never ran: `finish` says so.
                return self.end(*i, StepStatus::Failed(error));
            };
            let part_output = rest[..at].to_owned();
            let after = &rest[at + BATCH_MARKER.len()..];
            let line_end = after.find('\n').unwrap_or(after.len());
            let code: i32 = after[..line_end]
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(1);
            rest = &after[(line_end + 1).min(after.len())..];
            self.printer.write(*i, part_output.as_bytes());
            if code == 0 {
                if step.work.all_batched() {
                    self.end(*i, StepStatus::Done);
                }
                continue;
            }
            let error = match (&step.work, code) {
                (Work::Sentinel { .. }, MISSING_SENTINEL) => StepError::message(
                    // The script printed krops's own line, for whoever
                    // matches on it; this adds what to do.
                    "it guards against syncing to the wrong place: create it on the target \
                     (an empty file), or run with --force",
                ),
                // The script said why, and what to do.
                (Work::Sentinel { .. }, FILE_SENTINEL | LINKED_SENTINEL) => StepError::message(
                    "the sentinel is not usable as it is (see above); nothing was synced",
                ),
                _ => part_failure(code, part_output.as_bytes()),
            };
            return self.end(*i, StepStatus::Failed(error));
        }
        if !output.status.success() {
            let (last, _) = parts[parts.len() - 1];
            self.printer.write(last, &output.stderr);
        }
        false
    }

    /// Runs the steps in `queue`, `jobs` at a time; returns whether one
    /// failed (or a signal came).
    fn parallel(&self, queue: Vec<usize>) -> bool {
        let failed = AtomicBool::new(false);
        let stop = || failed.load(Ordering::SeqCst) || interrupt::interrupted();
        crate::parallel::each(queue.len(), self.plan.jobs, stop, |k| {
            let i = queue[k];
            let step = &self.plan.steps[i];
            self.header(i);
            self.clock(i);
            self.doing(&[&step.label], true);
            let mut out = self.printer.step(i);
            let status = match step.work.run(&self.plan.session, &mut out) {
                Ok(Ended::Done) => StepStatus::Done,
                Ok(Ended::Unchanged) => StepStatus::Unchanged,
                Err(err) => StepStatus::Failed(StepError::from(err)),
            };
            self.doing(&[&step.label], false);
            if self.end(i, status) {
                failed.store(true, Ordering::SeqCst);
            }
        });
        failed.into_inner() || interrupt::interrupted()
    }

    /// Every step's outcome: those that never ended did not run.
    fn finish(self) -> Report {
        let outcomes = self
            .outcomes
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        let steps = outcomes
            .into_iter()
            .zip(&self.plan.steps)
            .enumerate()
            .map(|(i, (outcome, step))| {
                outcome.unwrap_or_else(|| {
                    self.printer.finish(i);
                    StepOutcome {
                        label: step.label.clone(),
                        name: step.name.clone(),
                        kind: step.kind.to_owned(),
                        place: step.place.clone(),
                        status: StepStatus::NotRun,
                        elapsed: std::time::Duration::ZERO,
                    }
                })
            })
            .collect();
        Report { steps }
    }
}

fn sentinel_step(session: &Session, options: Options) -> Step {
    let path = &session.target().path;
    let sentinel = format!("{path}/.populate");
    let shown_text = session.display_path(&sentinel).into_owned();
    let shown = quote(&shown_text);
    let s = quote(&sentinel);
    let mut script = String::new();
    if options.force {
        script.push_str(&format!(
            "run mkdir -p {} >&2\n\
             if test -L {s}; then\n  \
             printf 'populate: replacing the symlink at %s (a sentinel is never followed)\\n' {shown} >&2\n  \
             run rm -f {s}\nfi\n",
            quote(path)
        ));
        if options.backup {
            // A backup needs the sentinel to be a directory; krops's hosts
            // have an empty file there, which becomes one.
            script.push_str(&format!(
                "if test -f {s} && ! test -s {s}; then\n  \
                 printf 'populate: turning the empty sentinel file %s into a directory\\n' {shown} >&2\n  \
                 run rm -f {s}\nfi\n\
                 if test -f {s}; then\n  \
                 printf 'error: the sentinel file %s is not empty, so it cannot become the directory a backup needs\\n' {shown} >&2\n  \
                 exit 1\nfi\n\
                 run mkdir -p {s}\n"
            ));
        } else {
            script.push_str(&format!("run touch {s}\n"));
        }
    }
    script.push_str(&format!(
        "if test -L {s}; then\n  \
         printf 'error: the sentinel %s is a symlink, which populate does not follow; replace it with an empty file, or run with --force to have it replaced\\n' {shown} >&2\n  \
         exit {LINKED_SENTINEL}\nfi\n\
         if ! test -e {s}; then\n  printf 'error: missing sentinel file: %s\\n' {shown} >&2\n  exit {MISSING_SENTINEL}\nfi\n"
    ));
    if options.backup {
        script.push_str(&format!(
            "if ! test -d {s}; then\n  \
             printf 'error: the sentinel %s is a file; --backup needs a directory to keep the backup in (--force --backup turns an empty sentinel file into one)\\n' {shown} >&2\n  \
             exit {FILE_SENTINEL}\nfi\n"
        ));
    }
    Step {
        label: "sentinel check".to_owned(),
        name: None,
        kind: "sentinel",
        place: shown_text,
        work: Work::Sentinel { body: script },
    }
}

fn backup_script(session: &Session) -> String {
    let path = &session.target().path;
    let sentinel = format!("{path}/.populate");
    format!(
        "if test -L {s} || ! test -d {s}; then\n  printf 'error: sentinel file is not a directory: %s\\n' {shown} >&2\n  exit 1\nfi\n\
         if test -L {b}; then\n  run rm -f {b}\nfi\n\
         run rsync -aAXF --delete --exclude /.populate --exclude /.populate-lock --link-dest={p} {src} {dest} >&2\n",
        s = quote(&sentinel),
        shown = quote(&session.display_path(&sentinel)),
        p = quote(path),
        src = quote(&format!("{path}/")),
        dest = quote(&format!("{path}/.populate/backup/")),
        b = quote(&format!("{path}/.populate/backup")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mktarget::{Origin, Target};
    use std::path::Path;

    fn origin() -> Origin {
        Origin {
            user: Some("alice".into()),
            host: "laptop".into(),
        }
    }

    fn target(s: &str) -> Target {
        Target::parse(s, &origin()).unwrap()
    }

    fn session(target: &Target) -> Session {
        Session::open(target, &origin(), mktarget::Multiplex::Off).unwrap()
    }

    #[test]
    fn sentinel_with_force_and_backup_makes_a_directory() {
        let local = session(&target("/var/src"));
        let options = Options {
            force: true,
            backup: true,
            ..Options::default()
        };
        let script = sentinel_step(&local, options).work.script(&local);
        assert!(script.contains("mkdir -p /var/src/.populate"), "{script}");
        let options = Options {
            backup: false,
            ..options
        };
        let script = sentinel_step(&local, options).work.script(&local);
        assert!(script.contains("touch /var/src/.populate"), "{script}");
    }

    /// Runs a batch over a local session and returns the outcomes' statuses.
    fn batch_outcomes(sources: serde_json::Value, dest: &Path) -> Vec<String> {
        let session = Arc::new(session(&target(dest.to_str().unwrap())));
        let sources = crate::source::from_json(&sources, None).unwrap();
        let options = Options {
            force: true,
            ..Options::default()
        };
        let plan = Plan::new(&session, &sources, options).unwrap();
        let report = plan.run_with(&Printer::new(plan.steps.len(), Box::new(std::io::sink())));
        report
            .steps
            .iter()
            .map(|step| match &step.status {
                StepStatus::Failed(err) => format!("{}: failed: {}", step.label, err.message),
                status => format!("{}: {status:?}", step.label),
            })
            .collect()
    }

    #[test]
    fn a_batch_runs_each_part_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("src");
        let outcomes = batch_outcomes(
            serde_json::json!({"a": {"symlink": "x"}, "b": {"symlink": "y"}}),
            &dest,
        );
        assert_eq!(
            outcomes,
            [
                "sentinel check: Done",
                "source a (symlink): Done",
                "source b (symlink): Done"
            ]
        );
        assert_eq!(std::fs::read_link(dest.join("b")).unwrap(), Path::new("y"));
        // A directory where a link goes is claimed, then the link made.
        std::fs::remove_file(dest.join("a")).unwrap();
        std::fs::create_dir(dest.join("a")).unwrap();
        std::fs::write(dest.join("a/keep"), "x").unwrap();
        let outcomes = batch_outcomes(
            serde_json::json!({"a": {"symlink": "x"}, "b": {"symlink": "z"}}),
            &dest,
        );
        assert_eq!(outcomes[2], "source b (symlink): Done");
    }

    #[test]
    fn a_failing_part_fails_its_step_and_the_rest_do_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("src");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join(".populate"), "").unwrap();
        let session = Arc::new(session(&target(dest.to_str().unwrap())));
        let options = Options::default();
        let mut plan = Plan::new(&session, &Sources::new(), options).unwrap();
        for (name, body) in [
            ("a", "true\n"),
            ("b", "run sh -c 'exit 7'\n"),
            ("c", "true\n"),
        ] {
            plan.steps.push(Step {
                label: format!("source {name} (symlink)"),
                name: Some(name.to_owned()),
                kind: "symlink",
                place: name.to_owned(),
                work: Work::Batched {
                    body: body.to_owned(),
                },
            });
        }
        let report = plan.run_with(&Printer::new(4, Box::new(std::io::sink())));
        let statuses: Vec<String> = report
            .steps
            .iter()
            .map(|step| match &step.status {
                StepStatus::Failed(err) => format!("failed: {}", err.message),
                status => format!("{status:?}"),
            })
            .collect();
        assert_eq!(
            statuses,
            [
                "Done",
                "Done",
                "failed: `sh -c exit 7` failed: exit status 7",
                "NotRun"
            ]
        );
    }
}
