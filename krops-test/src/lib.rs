//! krops-test: populate a local target, then build its NixOS system with
//! nix-build without activating it (README: Build without activating; krops's `writeTest`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use krops_driver::{Final, Reporting, Stage, Stages};
use mktarget::tool::{usage, Example};
use mktarget::{Cmd, Origin};
use populate::{Plan, PopulateArgs, Results};

/// Populate a local target, then build its system with nix-build.
///
/// Reads sources.json on stdin, syncs it to --target (which must be this
/// machine), then runs `NIX_PATH=PATH nix-build -A system '<nixpkgs/nixos>'`.
/// stdout is the built system's store path; everything else goes to stderr.
#[derive(Debug, Parser)]
#[command(name = "krops-test", version, after_help = mktarget::tool::examples_help(EXAMPLES))]
pub struct Cli {
    #[command(flatten)]
    pub populate: PopulateArgs,
    /// Pass --show-trace to nix-build
    #[arg(long)]
    pub trace: bool,
}

/// What `krops-test --help` and its man page show.
pub const EXAMPLES: &[Example] = &[
    Example {
        what: "Build server01's system here without activating it (the first run creates the directory):",
        line: "krops-test --target /tmp/server01-src --force < sources.json",
    },
    Example {
        what: "The same with nix's trace of an evaluation error, the sources from a file:",
        line: "krops-test --target /tmp/server01-src --trace --sources sources.json",
    },
];

/// The command line `krops-test` parses, for its man page and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// `NIX_PATH=PATH nix-build -A system --keep-going --no-out-link [--show-trace] '<nixpkgs/nixos>'`
pub fn build_command(path: &str, trace: bool) -> Cmd {
    let mut cmd = Cmd::new("nix-build").env("NIX_PATH", path).args([
        "-A",
        "system",
        "--keep-going",
        "--no-out-link",
    ]);
    if trace {
        cmd = cmd.arg("--show-trace");
    }
    cmd.arg("<nixpkgs/nixos>")
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    cli.populate.output.with_results(
        "krops-test",
        Some("the built system's store path"),
        |results| test(&cli, results),
    )
}

fn test(cli: &Cli, results: &mut Results) -> Result<ExitCode> {
    let origin = Origin::from_env();
    let target = cli.populate.target(&origin)?;
    if !target.is_local(&origin) {
        return Err(usage(format!(
            "--target {target}: krops-test builds on this machine, so the target must be local \
             (user {:?} and host {:?} or localhost)",
            origin.user.as_deref().unwrap_or(""),
            origin.host
        )));
    }
    let sources = cli.populate.read_sources()?;
    let session = cli.populate.session(&target, &origin)?;
    let plan = Plan::new(&session, &sources, cli.populate.options())?;
    let build = Final::here(
        &session,
        build_command(&target.path, cli.trace),
        "nix-build of the system on this machine".to_owned(),
    );
    Stages::new(vec![plan], vec![Stage::run(build)]).run_or_print(
        cli.populate.dry_run,
        &mut Reporting::new("krops-test", &cli.populate, results)?,
    )
}

pub fn main() -> ExitCode {
    mktarget::tool::main("krops-test", || run(mktarget::tool::parse("krops-test")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn build_command_follows_write_test() {
        assert_eq!(
            build_command("/var/src", true).to_string(),
            "NIX_PATH=/var/src nix-build -A system --keep-going --no-out-link --show-trace '<nixpkgs/nixos>'"
        );
        assert!(!build_command("/var/src", false)
            .argv()
            .contains(&"--show-trace".to_owned()));
    }
}
