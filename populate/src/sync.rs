//! The steps of a populate run (SPEC §3): the sentinel check, the backup,
//! and one step per source, each a command on the target or here; and how
//! they run: the cheap scripts (the checks, symlinks, the claims of rsync
//! sources' places) batched into as few remote runs as fit, then the other
//! sources `jobs` at a time over the target's one shared connection, then
//! derivations (which may build from the sources just synced). Each step's
//! outcome is data ([`Report`]); its output is kept together, in plan order
//! ([`Printer`]).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mktarget::command::{describe, Cmd};
use mktarget::interrupt;
use mktarget::shell::quote;
use mktarget::Session;
use walkdir::WalkDir;

use crate::git::git_script;
use crate::report::{Printer, Report, StepError, StepOutcome, StepStatus};
use crate::script::{failed_command, PRELUDE};
use crate::secrets::SecretDir;
use crate::source::{FileSource, Source, Sources};

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

/// The most source steps run at once: below sshd's default MaxSessions
/// (10), since each holds a session of the shared connection.
pub const MAX_JOBS: usize = 9;

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Create the sentinel file (and the target path) first.
    pub force: bool,
    /// Copy the target path to `PATH/.populate/backup/` first.
    pub backup: bool,
    /// How many source steps run at once (1..=[`MAX_JOBS`]).
    pub jobs: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            force: false,
            backup: false,
            jobs: 4,
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

#[derive(Debug)]
enum Work {
    /// The sentinel check: a script whose exit status says what is wrong.
    Sentinel { body: String },
    /// A script on the target, cheap enough to batch (backup, symlink).
    Batched { body: String },
    /// The claim of the place, then rsync from here: both when the source
    /// syncs (a claim ahead of time would leave the place empty when an
    /// earlier source fails).
    Rsync { claim: String, rsync: Cmd },
    /// A script on the target that runs as a session of its own, as it may
    /// take long (git); `late` ones wait for every other source
    /// (derivations, which may build from them).
    Alone { body: String, late: bool },
    /// A pass or passage store: decrypted here, then synced.
    Secrets(Box<Secrets>),
    /// A pipe: its command's output, kept here, then moved into place there.
    Pipe(Box<Pipe>),
}

impl Work {
    /// The part of the step that runs in a batch, if any: a script body.
    fn batched(&self) -> Option<&str> {
        match self {
            Work::Sentinel { body } | Work::Batched { body } => Some(body),
            _ => None,
        }
    }

    /// Whether the batch does all of the step.
    fn all_batched(&self) -> bool {
        self.batched().is_some()
    }

    fn late(&self) -> bool {
        matches!(self, Work::Alone { late: true, .. })
    }
}

/// A pass or passage store to decrypt into a private dir and sync.
#[derive(Debug)]
struct Secrets {
    /// P on the target.
    path: String,
    /// Where the store's files are (pass: `DIR/NAME`, passage: `DIR`).
    root: PathBuf,
    /// `pass show` or `passage show` and its environment, without the entry name.
    show: Cmd,
    /// pass only: the store dir and entry name, for the change stamp.
    pass: Option<(String, String)>,
}

/// A pipe source: the command runs here with its output going to a private
/// file; only when it succeeded is the output sent, and the target moves it
/// into place only when all of it arrived.
#[derive(Debug)]
struct Pipe {
    command: Cmd,
    /// Reads the output (its size, a newline, then the bytes) on the target.
    receive: Cmd,
}

/// How a step that ran ended.
enum Ended {
    Done,
    Unchanged,
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
            let work = source_work(session, &path, source).with_context(|| label.clone())?;
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
        })
    }

    /// Runs the plan, its output to our stderr; the first failure (in plan
    /// order) is the error.
    pub fn run(&self) -> Result<Report> {
        self.run_with(&Printer::stderr(self.steps.len()))
            .into_result()
    }

    /// Runs the plan with its output going to `printer` (one slot a step)
    /// and returns every step's outcome. A failure stops new steps from
    /// starting; the running ones finish.
    pub fn run_with(&self, printer: &Printer) -> Report {
        self.session.connect();
        let run = Run {
            plan: self,
            printer,
            outcomes: Mutex::new(self.steps.iter().map(|_| None).collect()),
            started: Mutex::new(vec![None; self.steps.len()]),
            running: Mutex::new(Vec::new()),
        };
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
        let mut script = format!("# populate {}\nset -efu\n", self.session.target());
        for step in &self.steps {
            script.push_str(&format!(
                "\n# {}\n{}\n",
                step.label,
                step.script(&self.session)
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

impl Run<'_> {
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

    fn doing(&self, label: &str, on: bool) {
        let mut running = lock(&self.running);
        if on {
            running.push(label.to_owned());
        } else {
            running.retain(|l| l != label);
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
        for label in &labels {
            self.doing(label, true);
        }
        for (i, _) in parts {
            self.clock(*i);
        }
        let output = cmd.output();
        for label in &labels {
            self.doing(label, false);
        }
        let output = match output {
            Ok(output) => output,
            Err(err) => {
                let (first, _) = parts[0];
                self.header(first);
                return self.end(first, StepStatus::Failed(StepError::from(err)));
            }
        };
        let mut rest = String::from_utf8_lossy(&output.stdout).into_owned();
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
            rest = after[(line_end + 1).min(after.len())..].to_owned();
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
            self.doing(&step.label, true);
            let mut out = self.printer.step(i);
            let status = match step.run(&self.plan.session, &mut out) {
                Ok(Ended::Done) => StepStatus::Done,
                Ok(Ended::Unchanged) => StepStatus::Unchanged,
                Err(err) => StepStatus::Failed(StepError::from(err)),
            };
            self.doing(&step.label, false);
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

impl Step {
    /// Runs what the batch did not: the whole step, or an rsync source's
    /// rsync after its claim.
    fn run(&self, session: &Session, out: &mut dyn Write) -> Result<Ended> {
        match &self.work {
            Work::Sentinel { .. } | Work::Batched { .. } => Ok(Ended::Done),
            Work::Rsync { claim, rsync } => {
                run_cmd(&session.shell(&format!("{PRELUDE}{claim}")), out)?;
                run_cmd(rsync, out).map(|()| Ended::Done)
            }
            Work::Alone { body, .. } => {
                run_cmd(&session.shell(&format!("{PRELUDE}{body}")), out).map(|()| Ended::Done)
            }
            Work::Secrets(secrets) => secrets.run(session, out),
            Work::Pipe(pipe) => pipe.run(out).map(|()| Ended::Done),
        }
    }

    fn script(&self, session: &Session) -> String {
        let shell = |body: &str| session.shell(&format!("{PRELUDE}{body}")).to_string();
        match &self.work {
            Work::Sentinel { body } | Work::Batched { body } | Work::Alone { body, .. } => {
                shell(body)
            }
            Work::Rsync { claim, rsync } => format!("{}\n{rsync}", shell(claim)),
            Work::Secrets(secrets) => secrets.script(session),
            Work::Pipe(pipe) => pipe.script(),
        }
    }
}

/// Runs one command of a step, its output going to `out` as it comes.
fn run_cmd(cmd: &Cmd, out: &mut dyn Write) -> Result<()> {
    let (status, tail) = cmd.run_unchecked_into(out)?;
    if status.success() {
        Ok(())
    } else {
        Err(step_failure(cmd, status, &tail).into())
    }
}

/// The error of a failed command of a step: the one command that failed
/// (what a script's `run` named), or what ssh or rsync said, and the
/// status; never the whole script, nor the output again (it was shown).
fn step_failure(cmd: &Cmd, status: std::process::ExitStatus, tail: &[u8]) -> StepError {
    failure(describe(status), tail, |status_text| match cmd.program() {
        _ if cmd.connection_failed(status) => (
            None,
            format!("the ssh connection failed ({status_text}; ssh's message is above)"),
        ),
        "ssh" | "/bin/sh" => (None, format!("its script failed: {status_text}")),
        "rsync" => (
            None,
            format!("rsync failed: {status_text} (its messages are above)"),
        ),
        _ => (
            Some(cmd.brief()),
            format!("`{}` failed: {status_text}", cmd.brief()),
        ),
    })
}

/// The error of a batched part that exited with `code`.
fn part_failure(code: i32, output: &[u8]) -> StepError {
    failure(format!("exit status {code}"), output, |status_text| {
        (None, format!("its script failed: {status_text}"))
    })
}

/// A failed step's error: the command a script's `run` named in `tail`,
/// if it named one, else what `otherwise` says (the command, if known, and
/// the message), given how it exited.
fn failure(
    status_text: String,
    tail: &[u8],
    otherwise: impl FnOnce(&str) -> (Option<String>, String),
) -> StepError {
    let tail = String::from_utf8_lossy(tail).into_owned();
    let (command, message) = match failed_command(&tail) {
        Some(failed) => (
            Some(failed.to_owned()),
            format!("`{failed}` failed: {status_text}"),
        ),
        None => otherwise(&status_text),
    };
    StepError {
        command,
        status: Some(status_text),
        tail,
        message,
    }
}

/// What a source makes at its place on the target: the first argument of
/// the prelude's `claim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Makes {
    /// A directory: a file tree, a checkout, a secret store.
    Dir,
    /// A regular file: a single-file file source, a pipe's output.
    File,
    /// A symlink: a symlink source.
    Link,
    /// A derivation's out link: a symlink into the Nix store (nix-build
    /// replaces only those).
    OutLink,
}

/// The line that claims `p` (see [`PRELUDE`]'s `claim`).
fn claim_line(session: &Session, p: &str, makes: Makes) -> String {
    let kind = match makes {
        Makes::Dir => "dir",
        Makes::File => "file",
        Makes::Link => "link",
        Makes::OutLink => "outlink",
    };
    format!(
        "claim {kind} {} {}\n",
        quote(p),
        quote(&session.display_path(p))
    )
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
         run rsync -aAXF --delete --exclude /.populate --link-dest={p} {src} {dest} >&2\n",
        s = quote(&sentinel),
        shown = quote(&session.display_path(&sentinel)),
        p = quote(path),
        src = quote(&format!("{path}/")),
        dest = quote(&format!("{path}/.populate/backup/")),
        b = quote(&format!("{path}/.populate/backup")),
    )
}

fn source_work(session: &Session, path: &str, source: &Source) -> Result<Work> {
    let p = quote(path);
    let claim = |makes| claim_line(session, path, makes);
    Ok(match source {
        Source::Derivation { text } => Work::Alone {
            body: format!(
                "{}run nix-build -E {} -o {p} >&2\n",
                claim(Makes::OutLink),
                quote(text)
            ),
            late: true,
        },
        Source::File(file) => {
            let local = Path::new(&file.path);
            if !local.exists() {
                bail!("file.path: {} does not exist", file.path);
            }
            let makes = if local.is_dir() {
                Makes::Dir
            } else {
                Makes::File
            };
            Work::Rsync {
                claim: claim(makes),
                rsync: rsync(session, file, &rsync_source(local), path),
            }
        }
        Source::Git(git) => Work::Alone {
            body: format!(
                "{}{}",
                claim(Makes::Dir),
                git_script(path, &session.display_path(path), git)
            ),
            late: false,
        },
        Source::Pass { dir, name } => {
            let root = Path::new(dir).join(name);
            if !root.is_dir() {
                bail!(
                    "pass: {} is not a directory in the password store",
                    root.display()
                );
            }
            Work::Secrets(Box::new(Secrets {
                path: path.to_owned(),
                root,
                show: Cmd::new("pass").env("PASSWORD_STORE_DIR", dir).arg("show"),
                pass: Some((dir.clone(), name.clone())),
            }))
        }
        Source::Passage {
            dir,
            identities_file,
            age,
        } => {
            if !Path::new(dir).is_dir() {
                bail!("passage.dir: {dir} is not a directory");
            }
            if !Path::new(identities_file).is_file() {
                bail!(
                    "passage.identities_file: {identities_file} does not exist \
                     (passage needs it to decrypt the store)"
                );
            }
            Work::Secrets(Box::new(Secrets {
                path: path.to_owned(),
                root: PathBuf::from(dir),
                show: Cmd::new("passage")
                    .env("PASSAGE_AGE", age)
                    .env("PASSAGE_DIR", dir)
                    .env("PASSAGE_IDENTITIES_FILE", identities_file)
                    .arg("show"),
                pass: None,
            }))
        }
        Source::Pipe { command } => {
            let executable = std::fs::metadata(command)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
            if !executable {
                bail!("pipe.command: {command} is not an executable file");
            }
            Work::Pipe(Box::new(Pipe {
                command: Cmd::new(command.clone()),
                receive: session.shell(&format!(
                    "{PRELUDE}{}{}",
                    claim(Makes::File),
                    pipe_receive_script(path)
                )),
            }))
        }
        Source::Symlink { target: link } => Work::Batched {
            // `--`: a link text may begin with '-'.
            body: format!(
                "{}run ln -fnsT -- {} {p}\n",
                claim(Makes::Link),
                quote(link)
            ),
        },
    })
}
/// Receives a pipe's output on the target: its size on the first line, then
/// the bytes, written beside P and moved into place only when all arrived
/// (krops's `cat > P` left a partial file when the connection or the
/// command broke). An existing P's mode and owner carry over, as they did
/// with krops's `cat > P`.
fn pipe_receive_script(path: &str) -> String {
    let p = quote(path);
    let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
    // Not named after the source: a name near 255 bytes would not fit.
    let tmp = quote(&format!("{dir}/.populate-pipe"));
    format!(
        "IFS= read -r size\n\
         tmp={tmp}.$$\n\
         trap 'rm -f \"$tmp\"' EXIT\n\
         rm -f \"$tmp\"\n\
         run tee -- \"$tmp\" >/dev/null\n\
         got=$(wc -c < \"$tmp\")\n\
         if test \"$got\" -ne \"$size\"; then\n  \
         printf 'populate: only %s of %s bytes arrived; %s is left as it was\\n' \"$got\" \"$size\" {p} >&2\n  \
         exit 1\nfi\n\
         if test -f {p}; then\n  \
         run chmod --reference={p} \"$tmp\"\n  \
         chown --reference={p} \"$tmp\" 2>/dev/null || :\nfi\n\
         run mv -fT \"$tmp\" {p}\n"
    )
}

/// Sends a file's size on a line, then the file: what the receive script reads.
fn sized(file: &str) -> Cmd {
    Cmd::new("/bin/sh").args(["-c", "wc -c < \"$1\" && cat \"$1\"", "sh", file])
}

impl Pipe {
    fn run(&self, log: &mut dyn Write) -> Result<()> {
        let out = SecretDir::holding("populate-pipe.", "the pipe's output")?;
        let file = out.create_file(Path::new("out"))?;
        // Its output may be secret: it stays out of the log and the error.
        self.command.run_to_file_into(file, log).context(
            "the command failed, so nothing was sent and the target's file is left as it was",
        )?;
        let path = out.path().join("out");
        run_cmd(
            &self
                .receive
                .clone()
                .pipe_from(sized(&path.to_string_lossy())),
            log,
        )
    }

    fn script(&self) -> String {
        let receive = self
            .receive
            .clone()
            .pipe_from(sized("$tmp_dir/out"))
            .to_string()
            .replace("'$tmp_dir/out'", "\"$tmp_dir\"/out");
        format!(
            "(\ntmp_dir=$(mktemp -d -t populate-pipe.XXXXXXXX)\n\
             trap 'rm -fR \"$tmp_dir\"' EXIT\ntrap 'exit 130' INT TERM HUP\n\
             {} > \"$tmp_dir\"/out\n{receive}\n)",
            self.command
        )
    }
}

/// rsync copies a directory's contents when its name ends in `/`.
fn rsync_source(path: &Path) -> String {
    let mut source = path.to_string_lossy().into_owned();
    if path.is_dir() && !source.ends_with('/') {
        source.push('/');
    }
    source
}

/// `rsync [--checksum] [--rsync-path="sudo rsync"] [--exclude|--include PAT]…
/// -e SSH -vFrlptD [--delete-excluded] SRC DEST`
fn rsync(session: &Session, file: &FileSource, source: &str, path: &str) -> Cmd {
    let mut cmd = Cmd::new("rsync");
    if file.use_checksum {
        cmd = cmd.arg("--checksum");
    }
    if session.target().sudo {
        cmd = cmd.arg("--rsync-path=sudo rsync");
    }
    for pattern in &file.exclude {
        cmd = cmd.args(["--exclude", pattern]);
    }
    for filter in &file.filters {
        let option = if filter.include {
            "--include"
        } else {
            "--exclude"
        };
        cmd = cmd.args([option, &filter.pattern]);
    }
    cmd = cmd.args(["-e", &session.rsync_shell(), "-vFrlptD"]);
    if file.delete_excluded {
        cmd = cmd.arg("--delete-excluded");
    }
    cmd.args([source.to_owned(), session.rsync_destination(path)])
}

/// What pass and passage trees are synced with: rsync's defaults in krops.
fn default_file_options() -> FileSource {
    FileSource {
        // rsync() takes the source path separately.
        path: String::new(),
        use_checksum: false,
        exclude: Vec::new(),
        filters: Vec::new(),
        delete_excluded: true,
    }
}

impl Secrets {
    fn kind(&self) -> &'static str {
        if self.pass.is_some() {
            "pass"
        } else {
            "passage"
        }
    }

    /// Every secret file below the store root, following symlinks, as
    /// (file, entry name relative to the root, name of the decrypted file).
    fn entries(&self) -> Result<Vec<(PathBuf, String, String)>> {
        let mut entries = Vec::new();
        for entry in WalkDir::new(&self.root)
            .follow_links(true)
            .sort_by_file_name()
        {
            let entry = entry.with_context(|| format!("reading {}", self.root.display()))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(&self.root)
                .expect("walkdir stays below its root");
            let rel = rel
                .to_str()
                .with_context(|| format!("{}: not UTF-8", entry.path().display()))?;
            let decrypted = match self.pass {
                Some(_) if entry.file_name() == ".gpg-id" => continue,
                Some(_) => rel.strip_suffix(".gpg").unwrap_or(rel),
                None => match rel.strip_suffix(".age") {
                    Some(stem) => stem,
                    None => continue,
                },
            };
            let entry_name = match &self.pass {
                Some((_, name)) => format!("{}/{decrypted}", name.trim_end_matches('/')),
                None => decrypted.to_owned(),
            };
            entries.push((entry.path().to_owned(), entry_name, decrypted.to_owned()));
        }
        Ok(entries)
    }

    fn rsync(&self, session: &Session, source: &str) -> Cmd {
        rsync(session, &default_file_options(), source, &self.path)
    }

    /// The claim of the store's place, then, for pass with a stamp, the
    /// target's stamp on stdout.
    fn claim(&self, session: &Session, stamp: bool) -> Cmd {
        let mut script = format!("{PRELUDE}{}", claim_line(session, &self.path, Makes::Dir));
        if stamp {
            script.push_str(&format!(
                "cat {}/.pass_info 2>/dev/null || :\n",
                quote(&self.path)
            ));
        }
        session.shell(&script)
    }

    fn run(&self, session: &Session, log: &mut dyn Write) -> Result<Ended> {
        let stamp = match &self.pass {
            Some((dir, name)) => pass_stamp(dir, name, &self.root)?,
            None => None,
        };
        // The place is claimed first, so that neither the stamp nor the
        // secrets are read or written through a symlink.
        let claim = self.claim(session, stamp.is_some());
        let output = claim.output()?;
        let _ = log.write_all(&output.stderr);
        if !output.status.success() {
            return Err(step_failure(&claim, output.status, &output.stderr).into());
        }
        if let Some(stamp) = &stamp {
            if String::from_utf8_lossy(&output.stdout).trim_end_matches('\n') == stamp {
                let _ = writeln!(
                    log,
                    "populate: {} is unchanged since the last run, skipping",
                    self.root.display()
                );
                return Ok(Ended::Unchanged);
            }
        }
        let secrets = SecretDir::new(&format!("populate-{}.", self.kind()))?;
        for (file, entry_name, decrypted) in self.entries()? {
            let out = secrets.create_file(Path::new(&decrypted))?;
            self.show
                .clone()
                .arg(&entry_name)
                .run_to_file_into(out, log)?;
            // pass: the last commit's date, when the store is a git repo
            // (the stamp exists exactly then); passage: the .age file's.
            let mtime = match (&self.pass, &stamp) {
                (Some((dir, _)), Some(_)) => last_commit_time(dir, &file)?,
                (Some(_), None) => None,
                (None, _) => Some(
                    std::fs::metadata(&file)
                        .and_then(|meta| meta.modified())
                        .with_context(|| format!("cannot read the mtime of {}", file.display()))?,
                ),
            };
            if let Some(mtime) = mtime {
                let decrypted = secrets.path().join(&decrypted);
                std::fs::File::options()
                    .write(true)
                    .open(&decrypted)
                    .and_then(|out| out.set_modified(mtime))
                    .with_context(|| format!("cannot set the mtime of {}", decrypted.display()))?;
            }
        }
        if let Some(stamp) = &stamp {
            writeln!(secrets.create_file(Path::new(".pass_info"))?, "{stamp}")?;
        }
        let source = format!("{}/", secrets.path().display());
        run_cmd(&self.rsync(session, &source), log).map(|()| Ended::Done)
    }

    fn script(&self, session: &Session) -> String {
        let kind = self.kind();
        // One subshell per store: its own temp dir, removed when it ends,
        // also on a signal, so several stores never share or leak one.
        let mut script = format!(
            "{}\n(\ntmp_dir=$(mktemp -d -t populate-{kind}.XXXXXXXX)\n\
             trap 'rm -fR \"$tmp_dir\"' EXIT\ntrap 'exit 130' INT TERM HUP\numask 077\n",
            self.claim(session, false)
        );
        match self.entries() {
            Ok(entries) => {
                for (_, entry_name, decrypted) in entries {
                    let dir = Path::new(&decrypted)
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty());
                    if let Some(dir) = dir {
                        script.push_str(&format!(
                            "mkdir -p \"$tmp_dir\"/{}\n",
                            quote(&dir.to_string_lossy())
                        ));
                    }
                    script.push_str(&format!(
                        "{} > \"$tmp_dir\"/{}\n",
                        self.show.clone().arg(&entry_name),
                        quote(&decrypted)
                    ));
                }
            }
            Err(err) => {
                script.push_str(&format!("# cannot list {}: {err:#}\n", self.root.display()))
            }
        }
        // The placeholder word quotes to exactly this; put the variable back.
        let rsync = self
            .rsync(session, "$tmp_dir/")
            .to_string()
            .replace("'$tmp_dir/'", "\"$tmp_dir\"/");
        script.push_str(&rsync);
        script.push_str("\n)");
        script
    }
}

/// pass's change stamp: `NAME <last commit touching NAME>` plus the last
/// commit of each symlink's resolved target, when the store is a git repo.
fn pass_stamp(dir: &str, name: &str, root: &Path) -> Result<Option<String>> {
    if !Path::new(dir).join(".git").exists() {
        return Ok(None);
    }
    let last_commit = |path: &str| {
        Cmd::new("git")
            .args(["-C", dir, "log", "-1", "--format=%H", "--", path])
            .read()
    };
    let mut hashes = last_commit(name)?;
    let mut links = Vec::new();
    for entry in WalkDir::new(root) {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        if entry.path_is_symlink() {
            links.push(std::fs::canonicalize(entry.path())?);
        }
    }
    links.sort();
    for link in links {
        hashes.push_str(&last_commit(&link.to_string_lossy())?);
    }
    Ok(Some(format!("{name} {}", hashes.trim_end_matches('\n'))))
}

fn last_commit_time(dir: &str, file: &Path) -> Result<Option<std::time::SystemTime>> {
    let out = Cmd::new("git")
        .args(["-C", dir, "log", "-1", "--format=%at", "--"])
        .arg(file.to_string_lossy())
        .read()?;
    Ok(out
        .trim()
        .parse::<u64>()
        .ok()
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Filter;
    use mktarget::{Origin, Target};

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
    fn rsync_argv_follows_krops() {
        let mut t = target("root@h:22/var/src");
        t.sudo = true;
        t.extra_options = vec!["-o".into(), "ProxyCommand=nc %h %p".into()];
        let file = FileSource {
            path: "/src".into(),
            use_checksum: true,
            exclude: vec![".git".into()],
            filters: vec![
                Filter {
                    include: true,
                    pattern: "*.nix".into(),
                },
                Filter {
                    include: false,
                    pattern: "*".into(),
                },
            ],
            delete_excluded: true,
        };
        assert_eq!(
            rsync(&session(&t), &file, "/src/", "/var/src/cfg").argv(),
            [
                "rsync",
                "--checksum",
                "--rsync-path=sudo rsync",
                "--exclude",
                ".git",
                "--include",
                "*.nix",
                "--exclude",
                "*",
                "-e",
                "'ssh' '-l' 'root' '-p' '22' '-T' '-o' 'ProxyCommand=nc %h %p'",
                "-vFrlptD",
                "--delete-excluded",
                "/src/",
                "root@h:/var/src/cfg",
            ]
        );
        let plain = default_file_options();
        let argv = rsync(
            &session(&target("/var/src")),
            &FileSource {
                delete_excluded: false,
                ..plain
            },
            "/x",
            "/var/src/x",
        )
        .argv();
        assert_eq!(
            argv,
            [
                "rsync",
                "-e",
                "'ssh' '-l' 'alice' '-T'",
                "-vFrlptD",
                "/x",
                "/var/src/x"
            ]
        );
    }

    #[test]
    fn rsync_names_an_ipv6_host_in_brackets_and_ssh_gets_no_host() {
        let argv = rsync(
            &session(&target("root@[::1]:2222/var/src")),
            &default_file_options(),
            "/src/",
            "/var/src/cfg",
        )
        .argv();
        assert_eq!(
            argv,
            [
                "rsync",
                "-e",
                "'ssh' '-l' 'root' '-p' '2222' '-T'",
                "-vFrlptD",
                "--delete-excluded",
                "/src/",
                "root@[::1]:/var/src/cfg",
            ]
        );
    }

    #[test]
    fn sentinel_with_force_and_backup_makes_a_directory() {
        let local = session(&target("/var/src"));
        let options = Options {
            force: true,
            backup: true,
            ..Options::default()
        };
        let script = sentinel_step(&local, options).script(&local);
        assert!(script.contains("mkdir -p /var/src/.populate"), "{script}");
        let options = Options {
            backup: false,
            ..options
        };
        let script = sentinel_step(&local, options).script(&local);
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
