//! The steps of a populate run (README: Sources): the sentinel check, the backup,
//! and one step per source, each a command on the target or here; and how
//! they run: the cheap scripts (the checks, symlinks, the claims of rsync
//! sources' places) batched into as few remote runs as fit, then the other
//! sources `jobs` at a time over the target's one shared connection, then
//! derivations (which may build from the sources just synced). Each step's
//! outcome is data ([`Report`]); its display ([`Progress`]) keeps each
//! step's output together, in plan order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use mktarget::command::{describe, Finished, Stdio, MAX_ARG_BYTES};
use mktarget::interrupt;
use mktarget::mutex::{self, lock};
use mktarget::Session;

use crate::lock::{BatchRuns, FirstBatch, Locking, Taken};
use crate::progress::{Progress, Row, Style};
use crate::report::{Report, StepError, StepOutcome, StepStatus, Transfer};
use crate::script::{Function, Script, PRELUDE, STEP};
use crate::source::file::Joinable;
use crate::source::Sources;
use crate::step::{part_failure, step_failure, Ended, Work};
use crate::together::{self, Synced, Unit};

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
/// What running a step adds to what [`Work::longest_word`] measured of its
/// script, at most (for a batched part, which is measured as a batch of its
/// own, what sharing a batch adds is below [`BATCH_BYTES`]).
const BATCH_LINES: usize = 256;
/// What a batch prints after each part: `\x1ekrops-step INDEX STATUS`.
const BATCH_MARKER: &str = "\x1ekrops-step ";

/// The most source steps run at once: each holds a session of the shared
/// connection, and so does the lock ([`crate::lock`], where the checkouts
/// run meanwhile; without a lock, in a session of their own): 9 and that
/// one are sshd's default MaxSessions (10).
pub const MAX_JOBS: usize = 9;

/// How long a target may leave the first connection unanswered before the
/// log says that it is still connecting.
const SLOW_CONNECT: Duration = Duration::from_secs(3);

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
            jobs: MAX_JOBS,
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

impl Drop for Plan {
    /// Lets go of the lock first: its session must end before the shared
    /// connection it runs over is closed, which dropping the session may do.
    fn drop(&mut self) {
        lock(&self.lock).take();
    }
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

impl Step {
    /// This step's outcome: `status`, after `elapsed`.
    fn outcome(
        &self,
        status: StepStatus,
        elapsed: Duration,
        transfer: Option<crate::report::Transfer>,
    ) -> StepOutcome {
        StepOutcome {
            label: self.label.clone(),
            name: self.name.clone(),
            kind: self.kind.to_owned(),
            place: self.place.clone(),
            status,
            elapsed,
            transfer,
        }
    }
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
                    script: backup_script(session),
                },
            });
        }
        for (name, source) in sources {
            let label = format!("source {name} ({})", source.type_name());
            let path = format!("{root}/{name}");
            let work = source.work(session, &path).with_context(|| label.clone())?;
            let longest = work.longest_word(session);
            if longest + BATCH_LINES > MAX_ARG_BYTES {
                bail!(
                    "{label}: what it runs on the target would be {longest} bytes in one \
                     argument, more than the {MAX_ARG_BYTES} Linux passes to a program: a \
                     field of the source (a Nix expression, a URL, patterns) is too long"
                );
            }
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

    /// A report of this plan's target with no steps yet.
    fn empty_report(&self) -> Report {
        let target = self.session.target();
        Report {
            target: self.session.display_path(&target.path).into_owned(),
            address: target.to_string(),
            ..Report::default()
        }
    }

    /// The report of a run stopped by `error` before any step ran.
    fn stopped_report(&self, error: &anyhow::Error, elapsed: Duration) -> Report {
        let steps = self
            .steps
            .iter()
            .map(|step| step.outcome(StepStatus::NotRun, Duration::ZERO, None))
            .collect();
        Report {
            steps,
            elapsed,
            error: Some(format!("{error:#}")),
            ..self.empty_report()
        }
    }

    /// Takes the lock on the target path (see [`crate::lock`]) unless the
    /// plan has it or runs without; `id` is this run's holder id. When
    /// there is nothing to lock yet (no target path, or no sentinel and no
    /// `--force`) or ssh could not connect, the sentinel check alone runs:
    /// its failure is the error, as without a lock; if it passes after all
    /// (another run just made the path, the host is back), the lock is
    /// taken then. The sentinel check shows as `style` says; when it
    /// fails, its report (for the results) is returned, and the caller
    /// ends the run with [`Report::into_result`]. `first` says when the
    /// lock script runs the first batch: at once only when this is the
    /// run's only lock.
    pub fn lock(&self, id: &str, style: Style, first: BatchRuns) -> Result<Option<Report>> {
        let Locking::Wait(timeout) = self.locking else {
            return Ok(None);
        };
        let mut held = lock(&self.lock);
        if held.is_some() {
            return Ok(None);
        }
        let began = Instant::now();
        // Unreachable: said once, as the sentinel check's failure, which
        // took as long as the try to connect.
        if let Err(err) = self.connect(style) {
            return Ok(self.check_sentinel(style, Some((err, began))));
        }
        // The first batch (the sentinel check, and the symlinks and backup
        // batched with it) runs in the lock's session when the run starts:
        // one session fewer.
        let chunks = self.chunks();
        let batch = chunks
            .first()
            .map(|chunk| crate::script::batch(chunk))
            .filter(|batch| batch.len() <= BATCH_BYTES);
        let batch = batch
            .as_deref()
            .map(|text| FirstBatch { text, runs: first });
        for _ in 0..3 {
            let taken =
                crate::lock::take(&self.session, self.force, timeout, id, style.quiet(), batch);
            match taken {
                Err(err) => return Ok(Some(self.stopped_report(&err, began.elapsed()))),
                Ok(Taken::Nothing | Taken::Unreachable) => {
                    if let Some(failed) = self.check_sentinel(style, None) {
                        return Ok(Some(failed));
                    }
                }
                Ok(taken) => {
                    *held = Some(taken);
                    return Ok(None);
                }
            }
        }
        let err = anyhow::anyhow!(
            "lock on {}: the target path kept changing while the lock was taken",
            self.session.display_path(&self.session.target().path)
        );
        Ok(Some(self.stopped_report(&err, began.elapsed())))
    }

    /// The scripts `part` picks of the steps' work, in plan order.
    fn parts<'s>(
        &'s self,
        part: impl Fn(&'s Work) -> Option<&'s Script>,
    ) -> Vec<(usize, &'s Script)> {
        self.steps
            .iter()
            .enumerate()
            .filter_map(|(i, step)| part(&step.work).map(|script| (i, script)))
            .collect()
    }

    /// Every step's batched part, in plan order, cut into batches
    /// ([`chunks`]).
    fn chunks(&self) -> Vec<Vec<(usize, &Script)>> {
        chunks(self.parts(Work::batched))
    }

    /// The scripts of the steps that run alone (checkouts, or the `late`
    /// derivations), each a batch of its own: a failure elsewhere stops
    /// the ones after it from starting, as it stops new syncs.
    fn alone(&self, late: bool) -> Vec<Vec<(usize, &Script)>> {
        self.parts(|work| work.alone(late))
            .into_iter()
            .map(|part| vec![part])
            .collect()
    }

    /// Opens the shared connection; says so when the target has not
    /// answered for a while (ssh gives up after its ConnectTimeout), unless
    /// `style` is quiet.
    fn connect(&self, style: Style) -> Result<()> {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            if !style.quiet() && !self.session.is_local() {
                let who = self.session.target().destination();
                let limit = self.session.connect_timeout();
                scope.spawn(move || {
                    if let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(SLOW_CONNECT) {
                        eprintln!(
                            "{} populate: still connecting to {who}: no answer for {} s \
                             (ssh gives up after {limit})",
                            crate::progress::timestamp(SystemTime::now()),
                            SLOW_CONNECT.as_secs()
                        );
                    }
                });
            }
            let connected = self.session.connect();
            drop(done);
            connected
        })
    }

    /// Runs the sentinel check alone, with its output and error as in a
    /// run; with `unreachable`, the connection's failure is its error and
    /// the try to connect, begun at the given time, its time.
    /// Its report when it failed.
    fn check_sentinel(
        &self,
        style: Style,
        unreachable: Option<(anyhow::Error, Instant)>,
    ) -> Option<Report> {
        let began = unreachable
            .as_ref()
            .map_or_else(Instant::now, |(_, since)| *since);
        let progress = Progress::new(style, self.rows());
        // Not in the lock's session: there is none yet, and its mutex is
        // held while the lock is taken.
        let run = Run {
            lock_session: false,
            ..Run::new(self, &progress)
        };
        if let Some((err, since)) = unreachable {
            run.unreachable(since, &err);
        } else {
            let script = self.steps[0]
                .work
                .batched()
                .expect("the first step is the batched sentinel check");
            run.batch(&[(0, script)], false);
        }
        let mut report = run.finish();
        report.elapsed = began.elapsed();
        progress.finish();
        report.first_failure().is_some().then_some(report)
    }

    /// Runs the plan, shown on our stderr as `style` says, and returns
    /// every step's outcome ([`Report::into_result`] makes the first
    /// failure, in plan order, the error). A failure stops new steps from
    /// starting; the running ones finish.
    pub fn run(&self, style: Style) -> Report {
        // Connected before the display starts, which the note that the
        // target does not answer would tear.
        let connecting = self.connect_timed(style);
        let progress = Progress::new(style, self.rows());
        let report = self.run_with(&progress, connecting);
        progress.finish();
        report
    }

    /// Runs the plan with plain lines (or, with `style` quiet, errors only)
    /// going to `out` (only a test runs a plan so).
    #[cfg(test)]
    pub fn run_to(&self, style: Style, out: Box<dyn std::io::Write + Send>) -> Report {
        let connecting = self.connect_timed(style);
        self.run_with(&Progress::plain(style, self.rows(), out), connecting)
    }

    /// [`Plan::connect`] (a no-op once connected, as after the lock), with
    /// when it began: a run's time counts the time spent connecting.
    fn connect_timed(&self, style: Style) -> (Instant, Result<()>) {
        let began = Instant::now();
        (began, self.connect(style))
    }

    /// The steps as the display shows them.
    fn rows(&self) -> Vec<Row> {
        let host = if self.session.is_local() {
            "local".to_owned()
        } else {
            self.session.target().bracketed_host().into_owned()
        };
        self.steps
            .iter()
            .map(|step| Row {
                label: step.label.clone(),
                place: step.place.clone(),
                host: host.clone(),
                name: step.name.clone().unwrap_or_else(|| step.label.clone()),
                kind: if step.name.is_some() {
                    step.kind.to_owned()
                } else {
                    String::new()
                },
            })
            .collect()
    }

    fn run_with(&self, progress: &Progress, (began, connected): (Instant, Result<()>)) -> Report {
        let run = Run::new(self, progress);
        // The target cannot be reached: the first step (the sentinel
        // check) fails with ssh's reason, and nothing else runs.
        if let Err(err) = connected {
            run.unreachable(began, &err);
            let mut report = run.finish();
            report.elapsed = began.elapsed();
            return report;
        }
        // The checks, the backup and symlinks first; then every source
        // synced from here at once (as many as `jobs` allows), while the
        // checkouts run one after another in the lock's session (or one
        // of their own); then the derivations, which may build from them.
        // With one job, one source at a time, in name order.
        let mut stopped = run.batches();
        if !stopped && self.jobs == 1 {
            let queue: Vec<usize> = (0..self.steps.len())
                .filter(|&i| {
                    let work = &self.steps[i].work;
                    work.synced_here() || work.alone(false).is_some()
                })
                .collect();
            stopped = run.parallel(queue);
        } else if !stopped {
            let queue: Vec<usize> = (0..self.steps.len())
                .filter(|&i| self.steps[i].work.synced_here())
                .collect();
            let checkouts = self.alone(false);
            stopped = std::thread::scope(|scope| {
                let checked_out = scope.spawn(|| run.scripts(&checkouts));
                let synced = run.parallel(queue);
                let checked_out = checked_out.join().unwrap_or(true);
                synced || checked_out
            });
        }
        if !stopped {
            run.scripts(&self.alone(true));
        }
        let mut report = run.finish();
        report.elapsed = began.elapsed();
        report
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
    progress: &'a Progress,
    outcomes: Mutex<Vec<Option<StepOutcome>>>,
    /// When each step started, by our clock and the wall's.
    started: Mutex<Vec<Option<(Instant, SystemTime)>>>,
    /// The labels of the steps running now, for the interrupt message.
    running: Mutex<Vec<String>>,
    /// Whether a step failed: no new step starts.
    failed: AtomicBool,
    /// Whether batches run in the lock's session when it is held.
    lock_session: bool,
}

impl<'a> Run<'a> {
    fn new(plan: &'a Plan, progress: &'a Progress) -> Run<'a> {
        Run {
            plan,
            progress,
            outcomes: Mutex::new(plan.steps.iter().map(|_| None).collect()),
            started: Mutex::new(vec![None; plan.steps.len()]),
            running: Mutex::new(Vec::new()),
            failed: AtomicBool::new(false),
            lock_session: true,
        }
    }

    /// Notes when step `i` started, once.
    fn clock(&self, i: usize) {
        let mut started = lock(&self.started);
        if started[i].is_none() {
            started[i] = Some((Instant::now(), SystemTime::now()));
            self.progress.start(i);
        }
    }

    /// The target could not be reached, trying since `began`: the first
    /// step (the sentinel check) fails with `err`, its time the time spent
    /// trying. Its header says now, not when the try began: the note that
    /// the target does not answer came before it.
    fn unreachable(&self, began: Instant, err: &anyhow::Error) {
        lock(&self.started)[0] = Some((began, SystemTime::now()));
        self.progress.start(0);
        self.header(0);
        self.end(
            0,
            StepStatus::Failed(StepError::message(format!("{err:#}"))),
        );
    }

    /// Prints step `i`'s first log line.
    fn header(&self, i: usize) {
        let at = lock(&self.started)[i].map_or_else(SystemTime::now, |(_, at)| at);
        self.progress.header(i, at);
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

    /// Records how step `i` ended and lets the display move on; returns
    /// whether it failed.
    fn end(&self, i: usize, status: StepStatus) -> bool {
        self.end_with(i, status, None)
    }

    /// Like [`Run::end`], with what rsync did.
    fn end_with(
        &self,
        i: usize,
        status: StepStatus,
        transfer: Option<crate::report::Transfer>,
    ) -> bool {
        let step = &self.plan.steps[i];
        let elapsed = lock(&self.started)[i]
            .map(|(t, _)| t.elapsed())
            .unwrap_or_default();
        let failed = matches!(status, StepStatus::Failed(_));
        if failed {
            self.failed.store(true, Ordering::SeqCst);
        }
        let outcome = step.outcome(status, elapsed, transfer);
        self.progress.end(i, &outcome);
        lock(&self.outcomes)[i] = Some(outcome);
        failed
    }

    /// Runs every step's batched part, in plan order, in as few remote runs
    /// as fit; returns whether a step failed (or a signal came).
    fn batches(&self) -> bool {
        let chunks = self.plan.chunks();
        chunks
            .iter()
            .enumerate()
            .any(|(k, chunk)| self.batch(chunk, k == 0))
    }

    /// Runs `chunks` one after another, each a batch, until a step failed
    /// (here or elsewhere) or a signal came; returns whether so.
    fn scripts(&self, chunks: &[Vec<(usize, &Script)>]) -> bool {
        chunks
            .iter()
            .any(|chunk| self.failed.load(Ordering::SeqCst) || self.batch(chunk, false))
            || self.failed.load(Ordering::SeqCst)
    }

    /// One remote run of batched parts, stopping at the first that fails;
    /// returns whether one failed. It runs in the lock's session, under
    /// the lock, when the lock is held by this run's script (the `first`
    /// batch as the lock was given it: [`Plan::lock`]); else in a session
    /// of its own.
    fn batch(&self, parts: &[(usize, &Script)], first: bool) -> bool {
        if interrupt::interrupted() {
            return true;
        }
        let labels: Vec<&str> = parts
            .iter()
            .map(|(i, _)| self.plan.steps[*i].label.as_str())
            .collect();
        self.doing(&labels, true);
        for (i, _) in parts {
            self.clock(*i);
        }
        let text = std::cell::OnceCell::new();
        let text = || text.get_or_init(|| crate::script::batch(parts));
        let in_lock = if self.lock_session {
            let session = &self.plan.session;
            lock(&self.plan.lock).as_mut().and_then(|taken| {
                let given = if first {
                    taken.run_batch(session)
                } else {
                    None
                };
                given.or_else(|| taken.run_script(session, text()))
            })
        } else {
            None
        };
        let (output, cmd) = match in_lock {
            Some(ran) => (ran.map(|(stdout, code)| Ran::InLock { stdout, code }), None),
            None => {
                let cmd = self.plan.session.shell(text());
                (cmd.run(Stdio::capture()).map(Ran::Alone), Some(cmd))
            }
        };
        self.doing(&labels, false);
        let output = match output {
            Ok(output) => output,
            Err(err) => {
                let (first, _) = parts[0];
                self.header(first);
                return self.end(first, StepStatus::Failed(StepError::from(err)));
            }
        };
        let stdout = String::from_utf8_lossy(output.stdout());
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
                self.progress.output(*i, rest.as_bytes());
                let error = match (&output, &cmd) {
                    (Ran::Alone(output), Some(_)) => {
                        self.progress.output(*i, &output.stderr);
                        step_failure(&self.plan.session, &output.failure())
                    }
                    _ => StepError::message(format!(
                        "the lock's session ended its batch before this step finished \
                         (exit status {})",
                        output.code()
                    )),
                };
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
            self.progress.output(*i, part_output.as_bytes());
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
        if let Ran::Alone(output) = &output {
            if !output.status.success() {
                let (last, _) = parts[parts.len() - 1];
                self.progress.output(last, &output.stderr);
            }
        }
        false
    }

    /// Runs the steps in `queue`, `jobs` at a time; returns whether one
    /// failed (or a signal came).
    fn parallel(&self, queue: Vec<usize>) -> bool {
        let stop = || self.failed.load(Ordering::SeqCst) || interrupt::interrupted();
        // With more than one job, the trees that may share an rsync do
        // (each walked for a .rsync-filter only when there are others).
        let joinable = |i: usize| self.plan.steps[i].work.joinable();
        let units =
            if self.plan.jobs > 1 && queue.iter().filter(|&&i| joinable(i).is_some()).count() > 1 {
                together::units(&queue, |i| {
                    let tree = joinable(i).filter(|tree| !tree.holds_filter_file())?;
                    Some((tree.options, tree.claim.text().len()))
                })
            } else {
                queue.iter().map(|&i| Unit::One(i)).collect()
            };
        crate::parallel::each(units.len(), self.plan.jobs, stop, |k| match &units[k] {
            Unit::One(i) => {
                let i = *i;
                if let Some(script) = self.plan.steps[i].work.alone(false) {
                    self.batch(&[(i, script)], false);
                    return;
                }
                self.header(i);
                self.clock(i);
                self.step(i, None);
            }
            Unit::Together(members) => self.together(members),
        });
        self.failed.load(Ordering::SeqCst) || interrupt::interrupted()
    }

    /// Runs step `i` (its header printed, its clock started); `before`
    /// is what an rsync of it did already (its changes come first).
    fn step(&self, i: usize, before: Option<Transfer>) {
        let step = &self.plan.steps[i];
        self.doing(&[&step.label], true);
        let mut out = self.progress.step(i);
        let (status, transfer) = match step.work.run(&self.plan.session, &mut out) {
            Ok(Ended::Done(transfer)) => (StepStatus::Done, transfer),
            Ok(Ended::Unchanged) => (StepStatus::Unchanged, None),
            Err(err) => (StepStatus::Failed(StepError::from(err)), None),
        };
        // What the shared rsync sent is not known by tree.
        let transfer = match (before, transfer) {
            (Some(mut before), Some(after)) => {
                if before.changes.is_empty() {
                    before.bytes_sent = after.bytes_sent;
                }
                before.changes.extend(after.changes);
                Some(before)
            }
            (before, after) => after.or(before),
        };
        self.doing(&[&step.label], false);
        self.end_with(i, status, transfer);
    }

    /// Syncs the trees of steps `members` in one rsync ([`together`]);
    /// when that fails for another reason than the connection or a
    /// signal, each alone, whatever the others do (they all started).
    fn together(&self, members: &[usize]) {
        let labels: Vec<&str> = members
            .iter()
            .map(|&i| self.plan.steps[i].label.as_str())
            .collect();
        let trees: Vec<(usize, &Joinable)> = members
            .iter()
            .filter_map(|&i| self.plan.steps[i].work.joinable().map(|tree| (i, tree)))
            .collect();
        for &i in members {
            self.header(i);
            self.clock(i);
        }
        self.doing(&labels, true);
        let path = &self.plan.session.target().path;
        let synced = together::sync(&self.plan.session, self.progress, path, &trees);
        self.doing(&labels, false);
        let before = match synced {
            Ok(Synced::Done(results)) => {
                for (&i, result) in members.iter().zip(results) {
                    match result {
                        Ok(transfer) => self.end_with(i, StepStatus::Done, Some(transfer)),
                        Err(error) => self.end(i, StepStatus::Failed(error)),
                    };
                }
                return;
            }
            Ok(Synced::Failed(error)) => {
                for &i in members {
                    self.end(i, StepStatus::Failed(error.clone()));
                }
                return;
            }
            Ok(Synced::Alone(transfers)) => transfers.into_iter().map(Some).collect(),
            Err(_) => vec![None; members.len()],
        };
        for (&i, before) in members.iter().zip(before) {
            if interrupt::interrupted() {
                break;
            }
            self.step(i, before);
        }
    }

    /// Every step's outcome: those that never ended did not run.
    fn finish(self) -> Report {
        let outcomes = mutex::into_inner(self.outcomes);
        let steps = outcomes
            .into_iter()
            .zip(&self.plan.steps)
            .enumerate()
            .map(|(i, (outcome, step))| {
                outcome.unwrap_or_else(|| {
                    let outcome = step.outcome(StepStatus::NotRun, Duration::ZERO, None);
                    self.progress.end(i, &outcome);
                    outcome
                })
            })
            .collect();
        Report {
            steps,
            ..self.plan.empty_report()
        }
    }
}

/// How one batch ran.
enum Ran {
    /// In a session of its own.
    Alone(Finished),
    /// In the lock's session: what it printed, and its exit status.
    InLock { stdout: Vec<u8>, code: i32 },
}

impl Ran {
    fn stdout(&self) -> &[u8] {
        match self {
            Ran::Alone(output) => &output.stdout,
            Ran::InLock { stdout, .. } => stdout,
        }
    }

    /// Its exit status, for a message.
    fn code(&self) -> String {
        match self {
            Ran::Alone(output) => describe(output.status),
            Ran::InLock { code, .. } => code.to_string(),
        }
    }
}

/// The batched parts (INDEX, its script), in order, cut into as few
/// batches as fit: each batch's script ([`crate::script::batch`]) stays
/// below [`BATCH_BYTES`], but for a part too big to share one.
fn chunks(parts: Vec<(usize, &Script)>) -> Vec<Vec<(usize, &Script)>> {
    let mut chunks: Vec<Vec<(usize, &Script)>> = Vec::new();
    let empty = || (PRELUDE.len() + STEP.text.len(), Vec::new());
    let (mut size, mut defined) = empty();
    for (i, script) in parts {
        let mut with = defined.clone();
        let part_size = script.batch_size(&mut with);
        match chunks.last_mut() {
            Some(chunk) if size + part_size <= BATCH_BYTES => {
                chunk.push((i, script));
                size += part_size;
                defined = with;
            }
            _ => {
                (size, defined) = empty();
                size += script.batch_size(&mut defined);
                chunks.push(vec![(i, script)]);
            }
        }
    }
    chunks
}

/// `krops_sentinel PATH SHOWN FORCE BACKUP` (`scripts/sentinel.sh`).
static SENTINEL: Function = Function {
    name: "krops_sentinel",
    text: include_str!("scripts/sentinel.sh"),
};

/// `krops_backup PATH SHOWN` (`scripts/backup.sh`).
static BACKUP: Function = Function {
    name: "krops_backup",
    text: include_str!("scripts/backup.sh"),
};

fn sentinel_step(session: &Session, options: Options) -> Step {
    let path = &session.target().path;
    let shown = session
        .display_path(&format!("{path}/.populate"))
        .into_owned();
    let force = if options.force { "force" } else { "check" };
    let backup = if options.backup {
        "backup"
    } else {
        "no-backup"
    };
    Step {
        label: "sentinel check".to_owned(),
        name: None,
        kind: "sentinel",
        work: Work::Sentinel {
            script: Script::call(&SENTINEL, &[path, &shown, force, backup]),
        },
        place: shown,
    }
}

fn backup_script(session: &Session) -> Script {
    let path = &session.target().path;
    let sentinel = format!("{path}/.populate");
    Script::call(&BACKUP, &[path, &session.display_path(&sentinel)])
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;

    use mktarget::testing::{session, target};

    fn quiet() -> Style {
        Style::plain(crate::progress::Verbosity::Quiet)
    }

    /// A source as the property test makes it; its local files are made
    /// when the test runs ([`materialize`]).
    #[derive(Clone, Debug)]
    enum Spec {
        File {
            tree: bool,
            checksum: Option<bool>,
            filters: Vec<(bool, String)>,
        },
        Git {
            url: String,
            git_ref: String,
            shallow: bool,
            clean: Vec<String>,
        },
        Pass(Vec<String>),
        Passage(Vec<String>),
        Pipe,
        Symlink(String),
        Derivation(String),
    }

    /// Free text: any characters but NUL, shell syntax often.
    fn free_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            "[^\\x00]{1,24}",
            proptest::collection::vec(
                prop_oneof![
                    Just("'"),
                    Just("\""),
                    Just("$("),
                    Just(")"),
                    Just("`"),
                    Just("\n"),
                    Just("\\"),
                    Just(" "),
                    Just("é"),
                    Just("*"),
                    Just("-"),
                    Just("a"),
                ],
                1..16,
            )
            .prop_map(|parts| parts.concat()),
        ]
    }

    fn spec() -> impl proptest::strategy::Strategy<Value = Spec> {
        use proptest::prelude::*;
        let entries = || proptest::collection::vec("[a-z]{1,6}(/[a-z' ]{1,6})?", 0..4);
        let url = prop_oneof![
            "https://example\\.org/[a-z]{1,8}\\.git",
            "/srv/git/[a-z' $]{1,8}",
            "git@example\\.org:[a-z]{1,8}/[a-z]{1,8}\\.git",
            "file:///[^\\x00-\\x1f\\x7f-\\u{9f}]{1,12}",
        ];
        let git_ref = prop_oneof![
            Just("main".to_owned()),
            "[0-9a-f]{40}",
            "[0-9a-f]{7}",
            Just("main~1".to_owned()),
            Just("v1^{}".to_owned()),
            Just(":/fix it".to_owned()),
            Just("origin/release-1".to_owned()),
            "[a-z]{1,8}(/[a-z]{1,8})?",
        ];
        prop_oneof![
            (
                any::<bool>(),
                proptest::option::of(any::<bool>()),
                proptest::collection::vec((any::<bool>(), free_text()), 0..4),
            )
                .prop_map(|(tree, checksum, filters)| Spec::File {
                    tree,
                    checksum,
                    filters
                }),
            (
                url,
                git_ref,
                any::<bool>(),
                proptest::collection::vec(free_text(), 0..3)
            )
                .prop_filter(
                    "a shallow ref names one commit",
                    |(_, git_ref, shallow, _)| {
                        !shallow || crate::source::git::shallow_refusal(git_ref).is_none()
                    }
                )
                .prop_map(|(url, git_ref, shallow, clean)| Spec::Git {
                    url,
                    git_ref,
                    shallow,
                    clean
                }),
            entries().prop_map(Spec::Pass),
            entries().prop_map(Spec::Passage),
            Just(Spec::Pipe),
            free_text().prop_map(Spec::Symlink),
            free_text()
                .prop_filter("an expression", |text| !text.trim().is_empty())
                .prop_map(Spec::Derivation),
        ]
    }

    /// Makes `spec`'s local files below `base` and returns its JSON.
    fn materialize(base: &Path, name: &str, spec: &Spec) -> serde_json::Value {
        use serde_json::json;
        let text = |path: &Path| path.to_str().unwrap().to_owned();
        let write = |path: &Path, content: &str| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        };
        match spec {
            Spec::File {
                tree,
                checksum,
                filters,
            } => {
                let path = base.join("files").join(name);
                if *tree {
                    write(&path.join("a/b.nix"), "{ }\n");
                } else {
                    write(&path, "{ }\n");
                }
                let filters: Vec<_> = filters
                    .iter()
                    .map(|(include, pattern)| {
                        json!({"type": if *include { "include" } else { "exclude" }, "pattern": pattern})
                    })
                    .collect();
                json!({"file": {"path": text(&path), "useChecksum": checksum, "filters": filters}})
            }
            Spec::Git {
                url,
                git_ref,
                shallow,
                clean,
            } => json!({"git": {"url": url, "ref": git_ref, "shallow": shallow,
                                "clean": {"exclude": clean}}}),
            Spec::Pass(entries) => {
                let store = base.join("pass").join(name);
                std::fs::create_dir_all(store.join("host")).unwrap();
                for entry in entries {
                    write(&store.join("host").join(format!("{entry}.gpg")), "x");
                }
                json!({"pass": {"dir": text(&store), "name": "host"}})
            }
            Spec::Passage(entries) => {
                let store = base.join("passage").join(name);
                std::fs::create_dir_all(&store).unwrap();
                for entry in entries {
                    write(&store.join(format!("{entry}.age")), "x");
                }
                let identities = base.join("identities");
                write(&identities, "AGE-SECRET-KEY-1");
                json!({"passage": {"dir": text(&store), "identities_file": text(&identities)}})
            }
            Spec::Pipe => {
                let command = base.join("bin").join(name);
                write(&command, "#!/bin/sh\necho hi\n");
                std::fs::set_permissions(
                    &command,
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )
                .unwrap();
                json!({"pipe": text(&command)})
            }
            Spec::Symlink(link) => json!({"symlink": link}),
            Spec::Derivation(expression) => json!({"derivation": expression}),
        }
    }

    /// Whether `/bin/sh -n` reads `script` without a syntax error.
    fn sh_n(script: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-n")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any valid sources object → plan → `--dry-run` script: the script,
        /// and every script a step runs on the target, pass `sh -n`, and the
        /// script names every source. Local, remote and sudo targets; local
        /// files below a directory whose name is full of shell syntax.
        #[test]
        fn any_valid_sources_make_a_dry_run_script_sh_reads(
            specs in proptest::collection::btree_map(
                "[A-Za-z0-9_][A-Za-z0-9._-]{0,15}", spec(), 1..8),
            how in 0..3u8,
            force in proptest::prelude::any::<bool>(),
            backup in proptest::prelude::any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().join("we'ird \"d\" $(touch x) `y` \\ é");
            let json: serde_json::Map<String, serde_json::Value> = specs
                .iter()
                .map(|(name, spec)| (name.clone(), materialize(&base, name, spec)))
                .collect();
            let sources = crate::source::from_json(&json.into(), Some("/home/alice"))
                .map_err(|err| proptest::test_runner::TestCaseError::fail(format!("{err:#}")))?;
            let root = base.join("target path");
            let mut target = match how {
                0 => target(root.to_str().unwrap()),
                _ => target("root@server01:2222/var/src/it's here"),
            };
            target.sudo = how == 2;
            let session = Arc::new(session(&target));
            let options = Options { force, backup, ..Options::default() };
            let plan = Plan::new(&session, &sources, options)
                .map_err(|err| proptest::test_runner::TestCaseError::fail(format!("{err:#}")))?;
            let script = plan.script();
            if let Err(err) = sh_n(&script) {
                proptest::prop_assert!(false, "sh -n: {}\n{}", err, script);
            }
            for step in &plan.steps {
                let script = match &step.work {
                    Work::Sentinel { script } | Work::Batched { script } => {
                        crate::script::batch(&[(0, script)])
                    }
                    Work::Alone { script, .. } => script.whole(),
                    _ => continue,
                };
                if let Err(err) = sh_n(&script) {
                    proptest::prop_assert!(false, "{}: sh -n: {}\n{}", step.label, err, script);
                }
            }
            for (name, source) in &sources {
                let label = format!("\n# source {name} ({})\n", source.type_name());
                proptest::prop_assert!(script.contains(&label), "no {:?} in\n{}", label, script);
            }
        }
    }

    /// Runs the sentinel check for `options` on the local target `dest`
    /// alone; its exit status and stderr.
    fn sentinel_run(dest: &Path, options: Options) -> (i32, String) {
        let local = session(&target(dest.to_str().unwrap()));
        let script = sentinel_step(&local, options)
            .work
            .batched()
            .unwrap()
            .whole();
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        (out.status.code().unwrap(), stderr)
    }

    #[test]
    fn sentinel_with_force_and_backup_makes_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("src");
        let options = Options {
            force: true,
            backup: true,
            ..Options::default()
        };
        assert_eq!(sentinel_run(&dest, options), (0, String::new()));
        assert!(dest.join(".populate").is_dir());
        let dest = dir.path().join("other");
        let options = Options {
            backup: false,
            ..options
        };
        assert_eq!(sentinel_run(&dest, options), (0, String::new()));
        assert!(dest.join(".populate").is_file());
    }

    /// The statuses the plan reads the sentinel check's failures by are
    /// the ones `sentinel.sh` exits with.
    #[test]
    fn the_sentinel_check_exits_as_the_plan_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path();
        let check = Options::default();
        let (status, stderr) = sentinel_run(dest, check);
        assert_eq!(status, MISSING_SENTINEL, "{stderr}");
        assert!(
            stderr.contains("error: missing sentinel file: "),
            "{stderr}"
        );
        std::fs::write(dest.join(".populate"), "").unwrap();
        assert_eq!(sentinel_run(dest, check), (0, String::new()));
        let backup = Options {
            backup: true,
            ..check
        };
        let (status, stderr) = sentinel_run(dest, backup);
        assert_eq!(status, FILE_SENTINEL, "{stderr}");
        std::fs::remove_file(dest.join(".populate")).unwrap();
        std::os::unix::fs::symlink("/etc", dest.join(".populate")).unwrap();
        let (status, stderr) = sentinel_run(dest, check);
        assert_eq!(status, LINKED_SENTINEL, "{stderr}");
    }

    #[test]
    fn batches_stay_below_their_size_and_keep_the_order() {
        let long = "x".repeat(4000);
        let scripts: Vec<Script> = (0..100)
            .map(|i| {
                let p = format!("/var/src/{i}");
                Script::call(&crate::source::symlink::SYMLINK, &[&p, &p, &long])
            })
            .collect();
        let parts: Vec<(usize, &Script)> = scripts.iter().enumerate().collect();
        let chunks = chunks(parts);
        assert!(chunks.len() > 1, "{} batches", chunks.len());
        let mut next = 0;
        for chunk in &chunks {
            let text = crate::script::batch(chunk);
            assert!(text.len() <= BATCH_BYTES, "{} bytes", text.len());
            // The symlink function is defined once a batch.
            assert_eq!(text.matches("krops_symlink() {").count(), 1);
            for (i, _) in chunk {
                assert_eq!(*i, next);
                next += 1;
            }
        }
        assert_eq!(next, 100);
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
        let report = plan.run_to(quiet(), Box::new(std::io::sink()));
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

    /// A link already as it should be is left alone (the same inode: it
    /// was not made again); a link that differs, a directory where a link
    /// goes, a missing link, and links whose text a line-wise comparison
    /// could take for what they should be (newlines, \001) are made.
    #[test]
    fn links_already_right_are_kept_and_only_what_differs_is_made() {
        use std::os::unix::fs::{symlink, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("src");
        let inode = |name: &str| {
            std::fs::symlink_metadata(dest.join(name))
                .map(|m| m.ino())
                .ok()
        };
        let sources = serde_json::json!({
            "a": {"symlink": "x"}, "b": {"symlink": "y"}, "c": {"symlink": "z"},
            "d": {"symlink": "w"}, "e": {"symlink": "n\nd/w"}, "f": {"symlink": "s\u{1}t"},
            "g": {"symlink": "same"},
        });
        assert!(batch_outcomes(sources.clone(), &dest)
            .iter()
            .all(|outcome| outcome.ends_with(": Done")));
        let before: Vec<_> = ["a", "b", "c", "d", "e", "f", "g"]
            .iter()
            .map(|name| inode(name))
            .collect();
        // b now differs; c is a directory; d is gone; e's text is "n"
        // followed by what d's would be; f's is "s\nt".
        std::fs::remove_file(dest.join("b")).unwrap();
        symlink("other", dest.join("b")).unwrap();
        std::fs::remove_file(dest.join("c")).unwrap();
        std::fs::create_dir(dest.join("c")).unwrap();
        std::fs::remove_file(dest.join("d")).unwrap();
        std::fs::remove_file(dest.join("e")).unwrap();
        symlink("n", dest.join("e")).unwrap();
        std::fs::remove_file(dest.join("f")).unwrap();
        symlink("s\nt", dest.join("f")).unwrap();
        let outcomes = batch_outcomes(sources, &dest);
        assert!(
            outcomes.iter().all(|outcome| outcome.ends_with(": Done")),
            "{outcomes:?}"
        );
        for (name, to) in [
            ("a", "x"),
            ("b", "y"),
            ("c", "z"),
            ("d", "w"),
            ("e", "n\nd/w"),
            ("f", "s\u{1}t"),
            ("g", "same"),
        ] {
            assert_eq!(
                std::fs::read_link(dest.join(name)).unwrap(),
                Path::new(to),
                "{name}"
            );
        }
        assert_eq!(inode("a"), before[0], "a was made again");
        assert_eq!(inode("g"), before[6], "g was made again");
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
        for (name, script) in [
            ("a", Script::command("true", &[])),
            ("b", Script::command("run", &["sh", "-c", "exit 7"])),
            ("c", Script::command("true", &[])),
        ] {
            plan.steps.push(Step {
                label: format!("source {name} (symlink)"),
                name: Some(name.to_owned()),
                kind: "symlink",
                place: name.to_owned(),
                work: Work::Batched { script },
            });
        }
        let report = plan.run_to(quiet(), Box::new(std::io::sink()));
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
