//! populate: sync krops sources to a target (SPEC §3). The drivers
//! (krops-deploy, krops-test, krops-command) reuse [`PopulateArgs`] and
//! [`Plan`] to populate before they act.

pub mod fleet;
pub mod lock;
pub mod parallel;
pub mod report;
pub mod script;
pub mod secrets;
pub mod source;
mod step;
pub mod sync;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use mktarget::{Cmd, Multiplex, Origin, Session, Target};

pub use lock::Locking;
pub use report::{Printer, Report, StepError, StepOutcome, StepStatus};
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
    /// Read sources.json from FILE instead of stdin
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

    /// Parses `--target` (see [`Target::from_arg`]).
    pub fn target(&self, origin: &Origin) -> Result<Target> {
        let Some(arg) = &self.target else {
            bail!("--target is required");
        };
        Target::from_arg(arg, origin)
    }

    /// Reads and validates sources.json from `--sources` or stdin.
    pub fn read_sources(&self) -> Result<Sources> {
        let text = match &self.sources {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read sources from {}", path.display()))?,
            None => {
                if std::io::stdin().is_terminal() {
                    eprintln!(
                        "populate: reading sources.json from the terminal: type it and end with \
                         Ctrl-D, or pass --sources FILE or pipe it in"
                    );
                }
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read sources from stdin")?;
                text
            }
        };
        let home = std::env::var("HOME").ok().filter(|home| !home.is_empty());
        source::parse(&text, home.as_deref())
    }
}

/// A driver's final command, and what messages call it
/// (`nixos-rebuild switch on root@server01`).
#[derive(Debug)]
pub struct Final {
    pub command: Cmd,
    pub what: String,
    /// The machine it runs on when it runs there through ssh (without a
    /// terminal: a signal here does not stop it there).
    pub remote: Option<String>,
    /// The connection it goes through.
    pub session: Arc<Session>,
}

/// What every driver does: run each populate plan, then the final command
/// on the target, and end with its exit status. With `dry_run`, print all
/// of it as one sh script instead.
pub fn populate_then(tool: &str, plans: &[Plan], last: &Final, dry_run: bool) -> Result<ExitCode> {
    if dry_run {
        let mut script = String::from("#!/bin/sh\n");
        for plan in plans {
            script.push_str(&plan.script());
            script.push('\n');
        }
        script.push_str(&format!("# then {}\n{}\n", last.what, last.command));
        print!("{script}");
        return Ok(ExitCode::SUCCESS);
    }
    lock_all(plans)?;
    for plan in plans {
        plan.run()?;
    }
    if mktarget::interrupt::interrupted() {
        bail!("interrupted");
    }
    last.session.connect();
    mktarget::interrupt::doing(&last.what);
    if let Some(on) = &last.remote {
        mktarget::interrupt::remote(on);
    }
    let status = last.command.status()?;
    if !status.success() {
        mktarget::interrupt::wait_if_interrupted();
        let how = mktarget::command::describe(status);
        if last.command.connection_failed(status) {
            // ssh says 255 for both; a message above tells which.
            eprintln!(
                "{tool}: error: {}: the ssh connection failed, or the command was killed by a \
                 signal on the target ({how}; ssh's message, if any, is above)",
                last.what
            );
        } else {
            eprintln!("{tool}: error: {} failed: {how}", last.what);
        }
    }
    Ok(ExitCode::from(mktarget::command::exit_code(status)))
}

/// Takes the locks of all `plans` before any of them runs (they are held
/// until the plans are dropped), in one order every run agrees on, so two
/// runs that lock the same two targets never wait for each other.
pub fn lock_all(plans: &[Plan]) -> Result<()> {
    let Some(first) = plans.first() else {
        return Ok(());
    };
    let id = lock::holder_id(first.session());
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
        plan.lock(&id)?;
    }
    Ok(())
}

/// Sync krops sources (sources.json on stdin) to a target.
///
/// Checks the sentinel file PATH/.populate on the target, optionally backs
/// PATH up, then syncs every source to PATH/NAME in byte order of the names.
/// The whole input is validated before anything runs. Logs go to stderr.
#[derive(Debug, Parser)]
#[command(name = "populate", version)]
pub struct Cli {
    #[command(flatten)]
    pub args: PopulateArgs,
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let origin = Origin::from_env();
    let target = cli.args.target(&origin)?;
    let sources = cli.args.read_sources()?;
    let session = cli.args.session(&target, &origin)?;
    let plan = Plan::new(&session, &sources, cli.args.options())?;
    if cli.args.dry_run {
        print!("{}", plan.script());
    } else {
        plan.run()?;
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
