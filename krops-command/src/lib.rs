//! krops-command: populate a target, then run a shell script there with the
//! target path as `$1` (README: Run something; krops's `writeCommand`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use krops_driver::fleet::{FleetArgs, Setting, SettingKind};
use krops_driver::keys::{Delivery, KeysArgs};
use krops_driver::{Final, Reporting, Stage, Stages};
use mktarget::tool::Example;
use mktarget::Origin;
use populate::{Plan, PopulateArgs, Results};

/// What runs when no SCRIPT is given: print the target path.
pub const DEFAULT_SCRIPT: &str = "printf '%s\\n' \"$1\"";

/// Populate a target, then run SCRIPT there.
///
/// Reads sources.json on stdin, syncs it to --target, then runs
/// `/bin/sh -c SCRIPT krops-command PATH` on the target (through ssh when it
/// is remote, under sudo when it says so), so SCRIPT finds the target path in
/// $1. Exits with SCRIPT's exit status. With --sources FILE, SCRIPT reads
/// this tool's stdin.
///
/// With --keys FILE, also delivers keys to tmpfs on the target (README:
/// Keys): the pre-activation ones before SCRIPT, the post-activation ones
/// only after it succeeded.
///
/// With --fleet FILE, runs on every host FILE names instead, several at once
/// (see --jobs and --on): FILE is a JSON object of host name → writeCommand's
/// attributes (target, source, and optionally command, allocateTTY, force,
/// backup, keys), where command is the script (else SCRIPT). Each host's output
/// lines start with its name; options and a SCRIPT given here apply to every
/// host and win over FILE. Exits 1 when any host failed.
#[derive(Debug, Parser)]
#[command(name = "krops-command", version, after_help = mktarget::tool::examples_help(EXAMPLES))]
#[command(mut_arg("target", |arg| arg
    .required(false)
    .required_unless_present("fleet")
    .conflicts_with("fleet")))]
#[command(mut_arg("sources", |arg| arg.conflicts_with("fleet")))]
pub struct Cli {
    #[command(flatten)]
    pub populate: PopulateArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub keys: KeysArgs,
    /// Allocate a terminal on the target (ssh -t), e.g. for an interactive SCRIPT (not with --fleet: its hosts share no terminal)
    #[arg(long, conflicts_with = "fleet")]
    pub allocate_tty: bool,
    /// The sh script to run on the target; $1 is the target path (default: print it)
    #[arg(default_value = DEFAULT_SCRIPT, hide_default_value = true)]
    pub script: String,
}

/// What `krops-command --help` and its man page show.
pub const EXAMPLES: &[Example] = &[
    Example {
        what: "Check that server01's configuration builds, without activating it:",
        line: r#"krops-command --target root@server01 'nixos-rebuild dry-build -I "$1"' < sources.json"#,
    },
    Example {
        what: "Open a shell in the target path on server01:",
        line: r#"krops-command --target root@server01 --allocate-tty --sources sources.json 'cd "$1" && exec sh -i'"#,
    },
    Example {
        what: "Show the free space at the target path of every host of a fleet:",
        line: r#"krops-command --fleet fleet.json 'df -h "$1"'"#,
    },
];

/// The command line `krops-command` parses, for its man page and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// What a fleet host may set: writeCommand's attributes besides target and source.
pub const FLEET_SETTINGS: &[Setting] = &[
    Setting {
        key: "command",
        option: "SCRIPT",
        kind: SettingKind::Script,
        unless: &[],
    },
    Setting {
        key: "allocateTTY",
        option: "--allocate-tty",
        kind: SettingKind::NotInFleet(
            "a fleet's hosts share no terminal (their output comes as prefixed lines): run \
             krops-command --target … --allocate-tty for that host alone",
        ),
        unless: &[],
    },
    Setting {
        key: "force",
        option: "--force",
        kind: SettingKind::Flag,
        unless: &[],
    },
    Setting {
        key: "backup",
        option: "--backup",
        kind: SettingKind::Flag,
        unless: &[],
    },
    krops_driver::keys::SETTING,
];

/// What krops-command's stdout carries, which the results must not join.
pub const STDOUT_CARRIES: &str = "the command's own output";

pub fn run(cli: Cli) -> Result<ExitCode> {
    cli.populate
        .output
        .with_results("krops-command", Some(STDOUT_CARRIES), |results| {
            run_command(&cli, results)
        })
}

fn run_command(cli: &Cli, results: &mut Results) -> Result<ExitCode> {
    if cli.fleet.fleet.is_some() {
        return krops_driver::fleet::run(
            "krops-command",
            &cli.fleet,
            FLEET_SETTINGS,
            &command(),
            &krops_driver::fleet::args(),
            &cli.populate,
            results,
        );
    }
    let origin = Origin::from_env();
    let target = cli.populate.target(&origin)?;
    let keys = cli
        .keys
        .read(&target.path, cli.populate.sources_on_stdin())?;
    let sources = cli.populate.read_sources()?;
    let session = cli.populate.session(&target, &origin)?;
    // The script is the activation: pre-activation keys before it,
    // post-activation ones only after it succeeded.
    let delivery = (!keys.is_empty()).then(|| Delivery::new(&session, keys));
    let plan = Plan::new(&session, &sources, cli.populate.options())?;
    let args = ["krops-command".to_owned(), target.path.clone()];
    let on = session.machine();
    let mut last = Final::new(&session, &cli.script, format!("the command on {on}")).args(&args);
    // A terminal on the target needs ours (and its hangup stops the
    // command there); with --sources FILE our stdin is free, and the
    // script reads it.
    if cli.allocate_tty {
        last = last.tty();
    } else if cli.populate.sources.is_some() {
        last = last.stdin_inherit();
    }
    let reporting = &mut Reporting::new("krops-command", &cli.populate, results)?;
    let stages = krops_driver::keys::around(delivery.as_ref(), vec![Stage::run(last)]);
    Stages::new(vec![plan], stages).run_or_print(cli.populate.dry_run, reporting)
}

pub fn main() -> ExitCode {
    mktarget::tool::main("krops-command", || {
        run(mktarget::tool::parse("krops-command"))
    })
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
    fn default_script_prints_the_first_argument() {
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", DEFAULT_SCRIPT, "krops-command", "/var/src with space"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "/var/src with space\n"
        );
    }
}
