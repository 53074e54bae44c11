//! krops-test: populate a local target, then build its NixOS system with
//! nix-build without activating it (README: Build without activating; krops's `writeTest`).

use std::process::ExitCode;

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Parser;
use krops_driver::flake::{attr_of_host_name, check_attr};
use krops_driver::{Final, Flake, FlakeArgs, Flow, Reporting, Stage, Stages};
use mktarget::tool::{usage, Example};
use mktarget::{Cmd, Origin};
use populate::{Plan, PopulateArgs, Results};

/// Populate a local target, then build its system with nix-build.
///
/// Reads sources.json on stdin, syncs it to --target (which must be this
/// machine), then runs `NIX_PATH=PATH nix-build -A system '<nixpkgs/nixos>'`
/// (with --flake, `nix build` of the synced flake's
/// nixosConfigurations.ATTR.config.system.build.toplevel). stdout is the
/// built system's store path; everything else goes to stderr.
#[derive(Debug, Parser)]
#[command(name = "krops-test", version, after_help = mktarget::tool::examples_help(EXAMPLES))]
pub struct Cli {
    #[command(flatten)]
    pub populate: PopulateArgs,
    /// Pass --show-trace to nix-build
    #[arg(long)]
    pub trace: bool,
    #[command(flatten)]
    pub flake: FlakeArgs,
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

/// Flake mode: `nix build --no-link --json` of the system of `attr` in
/// the synced flake at `path`, with its inputs overridden, as
/// `nixos-rebuild build --flake` builds it (nix 2.8 has no
/// `--print-out-paths`: the JSON names the store path).
pub fn flake_build_command(flake: &Flake, path: &str, attr: &str, trace: bool) -> Result<Cmd> {
    let mut cmd = Cmd::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes"])
        .args(["build", "--no-link", "--json", "--keep-going"]);
    if trace {
        cmd = cmd.arg("--show-trace");
    }
    Ok(cmd
        .arg(flake.toplevel(path, attr)?)
        .args(flake.lock_args(path)))
}

/// The store path of the system in what `nix build --json` printed.
pub fn built_system(json: &str) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("nix build printed {json:?}, not JSON"))?;
    match value.pointer("/0/outputs/out").and_then(|out| out.as_str()) {
        Some(out) if out.starts_with('/') => Ok(out.to_owned()),
        _ => bail!("nix build printed {json:?}, which names no built system"),
    }
}

/// This machine's host name, which nixos-rebuild takes for the flake's
/// attribute when none is given.
fn local_host_name() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("cannot read this machine's host name (/proc/sys/kernel/hostname)")?;
    let attr = attr_of_host_name(&name);
    check_attr(&attr).map_err(|why| usage(format!("--flake: this machine's host name: {why}")))?;
    Ok(attr)
}

/// The flake build, then its system's store path on stdout.
fn flake_stages(session: &std::sync::Arc<mktarget::Session>, build: Cmd) -> Vec<Stage> {
    let build = Final::here(
        session,
        build,
        "nix build of the flake's system on this machine".to_owned(),
    );
    vec![Stage::capture(build, |stdout| {
        let Some(stdout) = stdout else {
            return Ok(Vec::new());
        };
        let system = built_system(&stdout)?;
        Ok(vec![Stage::here(None, move |reporting, _| {
            reporting
                .results
                .extra
                .insert("system".to_owned(), system.clone().into());
            if reporting.results_on_stdout {
                eprintln!("{system}");
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{system}")?;
                out.flush()?;
            }
            Ok(Flow::Next)
        })])
    })
    .shown("nix build of the flake's system; it prints the system as JSON, its store path is the output")]
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
    let flake = match cli.flake.flake(&sources)? {
        Some(flake) => {
            let attr = match flake.attr() {
                Some(attr) => attr.to_owned(),
                None => local_host_name()?,
            };
            Some(flake_build_command(&flake, &target.path, &attr, cli.trace)?)
        }
        None => None,
    };
    let session = cli.populate.session(&target, &origin)?;
    let plan = Plan::new(&session, &sources, cli.populate.options())?;
    let stages = match flake {
        Some(build) => flake_stages(&session, build),
        None => vec![Stage::run(Final::here(
            &session,
            build_command(&target.path, cli.trace),
            "nix-build of the system on this machine".to_owned(),
        ))],
    };
    Stages::new(vec![plan], stages).run_or_print(
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
