//! populate: sync krops sources to a target (SPEC §3). The drivers
//! (krops-deploy, krops-test, krops-command) reuse [`PopulateArgs`] and
//! [`Plan`] to populate before they act.

pub mod fleet;
pub mod lock;
pub mod parallel;
pub mod progress;
pub mod report;
pub mod results;
pub mod script;
pub mod secrets;
pub mod source;
mod step;
pub mod sync;
#[cfg(test)]
mod testing;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use mktarget::tool::{usage, Example};
use mktarget::{Cmd, Multiplex, Origin, Session, Target};

pub use lock::Locking;
pub use progress::{Style, Verbosity};
pub use report::{Printer, Report, StepError, StepOutcome, StepStatus, Transfer};
pub use results::{Results, ResultsTo};
pub use source::{Source, Sources};
pub use sync::{Options, Plan, MAX_JOBS};

/// What every tool that populates takes on its command line.
#[derive(Debug, clap::Args)]
pub struct PopulateArgs {
    // Required; an Option only so that a driver's --fleet can stand in for it.
    /// Where to sync: krops's `[[USER]@]HOST[:PORT][/PATH]` or a JSON object as mktarget prints it
    #[arg(
        long,
        value_name = "TARGET",
        allow_hyphen_values = true,
        required = true
    )]
    pub target: Option<String>,
    /// Create the sentinel file PATH/.populate (and PATH) if missing
    #[arg(long)]
    pub force: bool,
    /// Copy PATH to PATH/.populate/backup/ before syncing (the sentinel must be a directory)
    #[arg(long)]
    pub backup: bool,
    /// Print the commands as a POSIX sh script instead of running them
    #[arg(long)]
    pub dry_run: bool,
    /// Read sources.json from FILE instead of stdin (`-`: stdin, as with --fleet)
    #[arg(long, value_name = "FILE")]
    pub sources: Option<PathBuf>,
    /// Connect to the target once per step, as krops does, instead of sharing one ssh connection (also KROPS_NO_MULTIPLEX=1)
    #[arg(long)]
    pub no_multiplex: bool,
    /// How many sources of a target sync at once (1-9)
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u8).range(1..=sync::MAX_JOBS as i64))]
    pub source_jobs: u8,
    /// Wait at most SECONDS for another run to let go of the lock on the target path (PATH/.populate-lock), then give up (default: as long as it takes)
    #[arg(long, value_name = "SECONDS", conflicts_with = "no_lock")]
    pub lock_timeout: Option<u32>,
    /// Take no lock on the target path (by default a run holds one from its first write to the end of its final command, so two runs never write or rebuild at once)
    #[arg(long)]
    pub no_lock: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// How a run reports: on stderr as it goes, and as JSON at the end.
#[derive(Debug, Default, clap::Args)]
pub struct OutputArgs {
    /// Print errors only (and a failed step's output)
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// On a terminal, also show every step's own output (else shown only under a failed step)
    #[arg(short, long)]
    pub verbose: bool,
    /// At the end, print the results as one JSON document on stdout (see README)
    #[arg(long, conflicts_with_all = ["json_file", "dry_run"])]
    pub json: bool,
    /// At the end, write the results as one JSON document to FILE (`-`: stdout)
    #[arg(long, value_name = "FILE", conflicts_with = "dry_run")]
    pub json_file: Option<PathBuf>,
}

impl OutputArgs {
    pub fn verbosity(&self) -> Verbosity {
        if self.quiet {
            Verbosity::Quiet
        } else if self.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        }
    }

    /// How the run shows itself on our stderr.
    pub fn style(&self) -> Style {
        Style::detect(self.verbosity())
    }

    /// Where the results go, if anywhere. `stdout_carries` says what a
    /// tool's stdout is for besides the results (krops-test's store path),
    /// which the results must not be mixed into.
    pub fn results_to(&self, stdout_carries: Option<&str>) -> Result<Option<ResultsTo>> {
        let to = match &self.json_file {
            Some(path) if path.as_os_str() == "-" => Some(ResultsTo::Stdout),
            Some(path) => Some(ResultsTo::File(path.clone())),
            None if self.json => Some(ResultsTo::Stdout),
            None => None,
        };
        if let (Some(ResultsTo::Stdout), Some(carries)) = (&to, stdout_carries) {
            return Err(usage(format!(
                "--json: stdout carries {carries}, so the results go to a file: --json-file FILE"
            )));
        }
        if let Some(ResultsTo::File(path)) = &to {
            // Refused before anything runs, not after a whole deploy.
            if path.is_dir() {
                return Err(usage(format!(
                    "--json-file: {} is a directory",
                    path.display()
                )));
            }
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            if let Some(parent) = parent.filter(|p| !p.is_dir()) {
                return Err(usage(format!(
                    "--json-file: {} is not a directory: the results could not be written",
                    parent.display()
                )));
            }
        }
        Ok(to)
    }

    /// Runs `body`, then writes the results where `--json`/`--json-file`
    /// say, also when `body` failed (the document then says why).
    pub fn with_results(
        &self,
        tool: &str,
        stdout_carries: Option<&str>,
        body: impl FnOnce(&mut Results) -> Result<ExitCode>,
    ) -> Result<ExitCode> {
        let to = self.results_to(stdout_carries)?;
        let mut results = Results::new(tool);
        let outcome = body(&mut results);
        if let Some(to) = to {
            results.write(&to, outcome.as_ref().err())?;
        }
        outcome
    }
}

impl PopulateArgs {
    pub fn options(&self) -> Options {
        Options {
            force: self.force,
            backup: self.backup,
            jobs: usize::from(self.source_jobs),
            locking: if self.no_lock {
                Locking::Off
            } else {
                Locking::Wait(self.lock_timeout)
            },
        }
    }

    /// The connection to `target` for this run: shared unless
    /// `--no-multiplex`, `KROPS_NO_MULTIPLEX` or `--dry-run` (whose script
    /// connects on its own) says otherwise.
    pub fn session(&self, target: &Target, origin: &Origin) -> Result<Arc<Session>> {
        let multiplex = if self.dry_run {
            Multiplex::Off
        } else {
            Multiplex::from_flag(self.no_multiplex)
        };
        Ok(Arc::new(Session::open(target, origin, multiplex)?))
    }

    /// Parses `--target` (see [`Target::from_arg`]); a bad one is a
    /// mistake on the command line (exit 2).
    pub fn target(&self, origin: &Origin) -> Result<Target> {
        let Some(arg) = &self.target else {
            return Err(usage("--target is required"));
        };
        Target::from_arg(arg, origin).map_err(|err| usage(format!("{err:#}")))
    }

    /// Reads and validates sources.json from `--sources` or stdin.
    pub fn read_sources(&self) -> Result<Sources> {
        let text = match self.sources.as_ref().filter(|path| path.as_os_str() != "-") {
            Some(path) => {
                let what = format!("sources from {}", path.display());
                let file =
                    std::fs::File::open(path).with_context(|| format!("cannot read {what}"))?;
                mktarget::json::read(file, &what)?
            }
            None => {
                if std::io::stdin().is_terminal() {
                    eprintln!(
                        "populate: reading sources.json from the terminal: type it and end with \
                         Ctrl-D, or pass --sources FILE or pipe it in"
                    );
                }
                mktarget::json::read(std::io::stdin(), "sources from stdin")?
            }
        };
        let home = std::env::var("HOME").ok().filter(|home| !home.is_empty());
        source::parse(&text, home.as_deref())
    }
}

/// A driver's final command, and what messages call it
/// (`nixos-rebuild switch on root@server01`). Unless the run takes no
/// lock, it runs on the target under the run's lock there, which then lasts
/// as long as the command, also when the tool ends first
/// ([`lock::final_guard`]).
#[derive(Debug)]
pub struct Final {
    body: Body,
    pub what: String,
    /// The machine it runs on when it runs there through ssh (without a
    /// terminal: a signal here does not stop it there).
    pub remote: Option<String>,
    /// The connection it goes through.
    pub session: Arc<Session>,
    /// An exit status with which the command has said why it failed, as
    /// the run's error line: no other is added.
    told: Option<i32>,
}

/// What a final command runs.
#[derive(Debug)]
enum Body {
    /// `/bin/sh -c SCRIPT ARGS...` on the target ([`Session::command`]).
    Script {
        script: String,
        args: Vec<String>,
        tty: bool,
        stdin: bool,
    },
    /// A command of this machine (krops-test's nix-build: its target is
    /// local).
    Here(Cmd),
}

/// How a driver's run shows its steps and records them: the tool's name
/// for messages, the progress style, whether our stdout carries the
/// results (so a command's stdout must go elsewhere), and the results.
pub struct Reporting<'r> {
    pub tool: &'static str,
    pub style: Style,
    pub results_on_stdout: bool,
    pub results: &'r mut Results,
    /// Whether the run takes the lock (not `--no-lock`): its final
    /// commands then run under it.
    pub locked: bool,
}

impl<'r> Reporting<'r> {
    pub fn new(tool: &'static str, args: &PopulateArgs, results: &'r mut Results) -> Result<Self> {
        Ok(Reporting {
            tool,
            style: args.output.style(),
            results_on_stdout: args.output.results_to(None)? == Some(ResultsTo::Stdout),
            results,
            locked: args.options().locking != Locking::Off,
        })
    }
}

/// What every driver does: run each populate plan, then the final command
/// on the target, and end with its exit status; the results record it all.
/// With `dry_run`, print all of it as one sh script instead.
pub fn populate_then(
    plans: &[Plan],
    last: &Final,
    dry_run: bool,
    reporting: &mut Reporting,
) -> Result<ExitCode> {
    let longest = last.command(!dry_run && reporting.locked).longest_word();
    if longest > mktarget::command::MAX_ARG_BYTES {
        bail!(
            "{}: it would be {longest} bytes in one argument, more than the {} Linux \
             passes to a program: the script is too long",
            last.what,
            mktarget::command::MAX_ARG_BYTES
        );
    }
    if dry_run {
        print!(
            "{}",
            dry_run_script(plans, &[(&last.what, &last.command(false))])
        );
        return Ok(ExitCode::SUCCESS);
    }
    populate_all(plans, reporting)?;
    let status = last.run(reporting)?;
    Ok(ExitCode::from(mktarget::command::exit_code(status)))
}

/// The `--dry-run` script of a driver: each plan, then each later step as
/// `# then WHAT` and its command.
pub fn dry_run_script(plans: &[Plan], steps: &[(&str, &Cmd)]) -> String {
    let mut script = String::from("#!/bin/sh\n");
    for plan in plans {
        script.push_str(&plan.script());
        script.push('\n');
    }
    for (what, command) in steps {
        script.push_str(&format!("# then {what}\n{command}\n"));
    }
    script
}

/// Runs each populate plan, in order, into the results; an error when one
/// fails or a signal came.
pub fn populate_all(plans: &[Plan], reporting: &mut Reporting) -> Result<()> {
    lock_all(plans, reporting.style, reporting.results)?;
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

impl Final {
    /// `/bin/sh -c SCRIPT` on `session`'s target ([`Session::command`]),
    /// which messages call `what`.
    pub fn new(session: &Arc<Session>, script: &str, what: String) -> Final {
        Final {
            body: Body::Script {
                script: script.to_owned(),
                args: Vec::new(),
                tty: false,
                stdin: false,
            },
            what,
            remote: (!session.is_local()).then(|| session.machine()),
            session: Arc::clone(session),
            told: None,
        }
    }

    /// `command` on this machine, the target of `session`.
    pub fn here(session: &Arc<Session>, command: Cmd, what: String) -> Final {
        Final {
            body: Body::Here(command),
            what,
            remote: None,
            session: Arc::clone(session),
            told: None,
        }
    }

    /// The script gets `args` (`$0` first).
    pub fn args(mut self, more: &[String]) -> Final {
        if let Body::Script { args, .. } = &mut self.body {
            args.extend_from_slice(more);
        }
        self
    }

    /// With a terminal on the target (`ssh -t`), whose hangup stops the
    /// command there; with our stdin.
    pub fn tty(mut self) -> Final {
        if let Body::Script { tty, stdin, .. } = &mut self.body {
            *tty = true;
            *stdin = true;
        }
        self.remote = None;
        self
    }

    /// Exiting with `code`, the command has said why as the run's error
    /// line (`TOOL: error: …`): no other is added.
    pub fn tells_why_on(mut self, code: i32) -> Final {
        self.told = Some(code);
        self
    }

    /// With our stdin.
    pub fn stdin_inherit(mut self) -> Final {
        if let Body::Script { stdin, .. } = &mut self.body {
            *stdin = true;
        }
        self
    }

    /// The command as it runs: under the run's lock when `locked`, else as
    /// `--dry-run` shows it.
    pub fn command(&self, locked: bool) -> Cmd {
        let guard = if locked {
            lock::final_guard(&self.session)
        } else {
            Vec::new()
        };
        match &self.body {
            Body::Script {
                script,
                args,
                tty,
                stdin,
            } => {
                let cmd = self.session.command_under(&guard, script, args, *tty);
                if *stdin {
                    cmd.stdin_inherit()
                } else {
                    cmd
                }
            }
            Body::Here(cmd) => cmd.clone().under(&guard),
        }
    }

    /// Runs the command and returns how it exited, its progress shown and
    /// its outcome recorded as the run's final command; when it failed,
    /// says so as `TOOL: error: …`. Its stdout is ours, or our stderr when
    /// ours carries the results; with `--quiet` its stderr is shown only
    /// when it fails.
    pub fn run(&self, reporting: &mut Reporting) -> Result<ExitStatus> {
        let began = self.start_running(reporting)?;
        let ran = self
            .command(reporting.locked)
            .status_redirected(reporting.results_on_stdout, reporting.style.quiet());
        let (status, kept) = self.record(reporting, began, ran)?;
        if !status.success() {
            let _ = std::io::stderr().write_all(&kept);
        }
        self.report(reporting, status);
        Ok(status)
    }

    /// Like [`Final::run`], with its stdout captured (data: a store path)
    /// and its stderr shown as it comes (with `--quiet`, only when it
    /// fails).
    pub fn run_capturing_stdout(&self, reporting: &mut Reporting) -> Result<(ExitStatus, String)> {
        let began = self.start_running(reporting)?;
        let ran = self
            .command(reporting.locked)
            .status_and_stdout(reporting.style.quiet())
            .map(|(status, stdout, kept)| (status, (stdout, kept)));
        let (status, (stdout, kept)) = self.record(reporting, began, ran)?;
        if !status.success() {
            let _ = std::io::stderr().write_all(&kept);
        }
        self.report(reporting, status);
        Ok((status, stdout))
    }

    fn start_running(&self, reporting: &Reporting) -> Result<Instant> {
        self.session.connect().with_context(|| self.what.clone())?;
        mktarget::interrupt::doing(&self.what);
        if let Some(on) = &self.remote {
            mktarget::interrupt::remote(on);
            if reporting.locked {
                let path = &self.session.target().path;
                mktarget::interrupt::remote_lock(self.session.display_path(path));
            }
        }
        progress::final_started(reporting.style, reporting.tool, &self.what);
        Ok(Instant::now())
    }

    /// Records how the command ended (or that it could not run) in the
    /// results and the progress.
    fn record<T>(
        &self,
        reporting: &mut Reporting,
        began: Instant,
        ran: Result<(ExitStatus, T)>,
    ) -> Result<(ExitStatus, T)> {
        let (status, kept) = match ran {
            Ok(ran) => ran,
            Err(err) => {
                reporting
                    .results
                    .set_final(&self.what, None, began.elapsed());
                return Err(err);
            }
        };
        reporting
            .results
            .set_final(&self.what, Some(status), began.elapsed());
        let how = mktarget::command::describe(status);
        progress::final_ended(
            reporting.style,
            reporting.tool,
            &self.what,
            (!status.success()).then_some(how.as_str()),
            began.elapsed(),
        );
        Ok((status, kept))
    }

    /// Says why a failed command failed, as `TOOL: error: …` and as the
    /// results' `error`, so that a script reading them learns what the
    /// exit status and stderr say.
    fn report(&self, reporting: &mut Reporting, status: ExitStatus) {
        if status.success() || (self.told.is_some() && status.code() == self.told) {
            return;
        }
        mktarget::interrupt::wait_if_interrupted();
        // Its output was ours, so ssh's message is above; the shared
        // connection's master may tell more.
        let why = match self
            .session
            .connection_failure(&self.command(false), status, &[])
        {
            Some(why) => format!("{}: {why}", self.what),
            None => format!(
                "{} failed: {}",
                self.what,
                mktarget::command::describe(status)
            ),
        };
        eprintln!("{}: error: {why}", reporting.tool);
        reporting.results.final_failed(&why);
    }
}

/// Takes the locks of all `plans` before any of them runs (they are held
/// until the plans are dropped), in one order every run agrees on, so two
/// runs that lock the same two targets never wait for each other. A
/// target with nothing to lock (no sentinel, or not reachable) gets its
/// failed sentinel check shown as `style` says and recorded in `results`,
/// as a run without the lock would.
pub fn lock_all(plans: &[Plan], style: Style, results: &mut Results) -> Result<()> {
    let Some(first) = plans.first() else {
        return Ok(());
    };
    let id = lock::this_run(first.session());
    let mut order: Vec<&Plan> = plans.iter().collect();
    order.sort_by_key(|plan| {
        let target = plan.session().target();
        (
            target.destination(),
            target.port.clone(),
            target.path.clone(),
        )
    });
    for plan in order {
        if let Some(failed) = plan.lock(id, style)? {
            results.add_target(&failed);
            failed.into_result()?;
        }
    }
    Ok(())
}

/// Sync krops sources (sources.json on stdin) to a target.
///
/// Checks the sentinel file PATH/.populate on the target, optionally backs
/// PATH up, then syncs every source to PATH/NAME in byte order of the names.
/// The whole input is validated before anything runs. Logs go to stderr.
#[derive(Debug, Parser)]
#[command(name = "populate", version, after_help = mktarget::tool::examples_help(EXAMPLES))]
pub struct Cli {
    #[command(flatten)]
    pub args: PopulateArgs,
}

/// What `populate --help` and its man page show.
pub const EXAMPLES: &[Example] = &[
    Example {
        what: "Print what would run, as a sh script, and run nothing:",
        line: "populate --target root@server01 --dry-run < sources.json",
    },
    Example {
        what: "First sync to a new target: create /etc/krops and its sentinel file:",
        line: "populate --target root@server01:22/etc/krops --force --sources sources.json",
    },
    Example {
        what: "Sync as a user with sudo there, one source at a time:",
        line: "populate --target \"$(mktarget deploy@server01 --sudo)\" --source-jobs 1 < sources.json",
    },
];

/// The command line `populate` parses, for its man page and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    cli.args
        .output
        .with_results("populate", None, |results| populate(&cli.args, results))
}

fn populate(args: &PopulateArgs, results: &mut Results) -> Result<ExitCode> {
    let origin = Origin::from_env();
    let target = args.target(&origin)?;
    let sources = args.read_sources()?;
    let session = args.session(&target, &origin)?;
    let plan = Plan::new(&session, &sources, args.options())?;
    if args.dry_run {
        print!("{}", plan.script());
    } else {
        lock_all(std::slice::from_ref(&plan), args.output.style(), results)?;
        let report = plan.run(args.output.style());
        results.add_target(&report);
        report.into_result()?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn main() -> ExitCode {
    mktarget::tool::main("populate", || run(mktarget::tool::parse("populate")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
