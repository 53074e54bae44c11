//! populate: sync krops sources to a target (README: Sources). The drivers
//! (krops-deploy, krops-test, krops-command) reuse [`PopulateArgs`] and
//! [`Plan`] to populate before they act (through krops-driver's stages).

pub mod keys;
mod lock;
mod parallel;
mod progress;
mod report;
mod results;
mod script;
mod secrets;
pub mod source;
mod step;
mod sync;
mod together;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use mktarget::tool::{usage, Example};
use mktarget::{Multiplex, Origin, Session, SudoPassword, Target};

// The engine's face: what the drivers (krops-driver) use.
pub use lock::{final_guard, BatchRuns, Locking};
pub use parallel::each as parallel_each;
pub use progress::{doing_now, final_ended, final_started, Style, Verbosity};
pub use results::{Results, ResultsTo};
pub use secrets::SecretDir;
pub use source::{Source, Sources};
pub use sync::{Options, Plan};

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
    /// How many sources of a target sync from here at once (1-9; by default 9: all of them in one wave, up to sshd's default MaxSessions 10 with the lock's session)
    #[arg(long, value_name = "N", default_value_t = sync::MAX_JOBS as u8,
          value_parser = clap::value_parser!(u8).range(1..=sync::MAX_JOBS as i64))]
    pub source_jobs: u8,
    /// Wait at most SECONDS for another run to let go of the lock on the target path (PATH/.populate-lock), then give up (default: as long as it takes)
    #[arg(long, value_name = "SECONDS", conflicts_with = "no_lock")]
    pub lock_timeout: Option<u32>,
    /// Take no lock on the target path (by default a run holds one from its first write to the end of its final command, so two runs never write or rebuild at once)
    #[arg(long)]
    pub no_lock: bool,
    /// Ask once, on the terminal, for the password sudo wants on sudo targets, and give it to their `sudo -S` for every step that needs root
    #[arg(long, conflicts_with = "sudo_password_file")]
    pub ask_sudo_password: bool,
    /// Read that password from the first line of FILE, which must be yours and not readable by others (for automation)
    #[arg(long, value_name = "FILE")]
    pub sudo_password_file: Option<PathBuf>,
    /// The password, once asked or read.
    #[arg(skip)]
    pub sudo_password_got: std::sync::Mutex<Option<Option<SudoPassword>>>,
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
        let session = Session::open(target, origin, multiplex)?;
        let password = if target.sudo {
            self.sudo_password()?
        } else {
            // A password on stdin (a fleet gives every host's run its own
            // there) is read all the same, so that it never goes on to a
            // command's input on a target that needs none.
            if self.sudo_password_file.as_deref().is_some_and(is_stdin) {
                self.sudo_password()?;
            }
            None
        };
        Ok(Arc::new(session.with_sudo_password(password)))
    }

    /// The sudo password `--ask-sudo-password` or `--sudo-password-file`
    /// gives, asked or read once a run; for `--dry-run` only the mark of
    /// one (it shows where the password goes, and asks for none).
    pub fn sudo_password(&self) -> Result<Option<SudoPassword>> {
        let mut got = mktarget::mutex::lock(&self.sudo_password_got);
        if let Some(password) = got.as_ref() {
            return Ok(password.clone());
        }
        let password = match &self.sudo_password_file {
            _ if self.dry_run && self.ask_sudo_password => Some(SudoPassword::shown()),
            Some(file) => {
                // Checked for --dry-run too, which then shows only where it goes.
                let password = SudoPassword::read_file(file)?;
                Some(if self.dry_run {
                    SudoPassword::shown()
                } else {
                    password
                })
            }
            None if self.ask_sudo_password => {
                Some(SudoPassword::ask("[sudo] password for the targets: ")?)
            }
            None => None,
        };
        *got = Some(password.clone());
        Ok(password)
    }

    /// Parses `--target` (see [`Target::from_arg`]); a bad one is a
    /// mistake on the command line (exit 2).
    pub fn target(&self, origin: &Origin) -> Result<Target> {
        let Some(arg) = &self.target else {
            return Err(usage("--target is required"));
        };
        Target::from_arg(arg, origin).map_err(|err| usage(format!("{err:#}")))
    }

    /// Whether sources.json comes on stdin (no `--sources FILE`, or `-`).
    pub fn sources_on_stdin(&self) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|path| path.as_os_str() == "-")
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
                // Both would read stdin: the first would leave the other
                // nothing, or the other's text (README: A sudo password).
                if let Some(file) = self.sudo_password_file.as_deref().filter(|f| is_stdin(f)) {
                    return Err(usage(format!(
                        "--sudo-password-file {}: stdin carries the sources here; give them \
                         with --sources FILE",
                        file.display()
                    )));
                }
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

/// Whether `path` names this process's stdin (`/dev/stdin` and its
/// aliases), which `--sudo-password-file` may read but then shares with
/// nothing else.
pub fn is_stdin(path: &std::path::Path) -> bool {
    ["/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"]
        .iter()
        .any(|stdin| path == std::path::Path::new(stdin))
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
    // With one lock, nothing waits for another: its first batch runs as
    // soon as it is held.
    let first = match plans.len() {
        1 => BatchRuns::AtOnce,
        _ => BatchRuns::WhenAsked,
    };
    for plan in order {
        if let Some(failed) = plan.lock(id, style, first)? {
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
