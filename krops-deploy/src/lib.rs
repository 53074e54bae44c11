//! krops-deploy: populate the build target and the target, then run
//! `nixos-rebuild` on the build target (README: Deploy; krops's `writeDeploy`);
//! optionally preview what it changes first, and confirm the switch over a
//! new connection or have the target roll it back (README: See what a deploy changes).

mod deploy;
pub mod preview;
pub mod reboot;
mod rebuild;
#[cfg(test)]
mod testing;
pub mod watchdog;

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use krops_driver::fleet::{choices, FleetArgs, Setting, SettingKind};
use krops_driver::keys::{Delivery, KeysArgs};
use krops_driver::{FlakeArgs, Reporting, Stages};
use mktarget::tool::{usage, Example};
use mktarget::{Origin, Target};
use populate::{Plan, PopulateArgs, Results};

use deploy::Deploy;
pub use rebuild::{
    nix_sshopts, rebuild_script, Rebuild, Rebuilder, TargetHost, BASH_REBUILDER_PROBE,
};
use watchdog::{Operation, Paths, Watchdog};

/// Populate a NixOS target, then run nixos-rebuild on it.
///
/// Reads sources.json on stdin, syncs it to --build-target (when it differs
/// from --target) and to --target, then runs
/// `NIX_PATH=PATH nixos-rebuild OPERATION` on the build target, which builds
/// the system and activates it on the target.
///
/// With --fleet FILE, deploys every host FILE names instead, several at once
/// (see --jobs and --on): FILE is a JSON object of host name → writeDeploy's
/// attributes (target, source, and optionally buildTarget, operation,
/// crossDeploy, useNixOutputMonitor, force, backup, fast, confirmTimeout,
/// flake, flakeInputs, reboot, rebootTimeout, tags, keys). Each host's
/// output lines start with its name; options given here apply to every host
/// and win over FILE. Exits 1 when any host failed.
///
/// With --keys FILE, also delivers keys to tmpfs on the target (README:
/// Keys): the pre-activation ones before nixos-rebuild, the post-activation
/// ones only after it succeeded; --keys-only sends them and nothing else.
///
/// --preview builds the new system without activating it and prints what
/// would change; --ask then asks before activating it. --confirm-timeout
/// has the target roll a switch back unless a new ssh connection confirms
/// it in time.
///
/// --flake NAME#ATTR builds the flake in the synced source NAME instead
/// (`nixos-rebuild OPERATION --flake PATH/NAME#ATTR --no-write-lock-file`),
/// and each --flake-input INPUT=SOURCE overrides one of its inputs with a
/// synced source, so the build target needs no network.
#[derive(Debug, Parser)]
#[command(name = "krops-deploy", version, after_help = mktarget::tool::examples_help(EXAMPLES))]
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
    pub flake: FlakeArgs,
    #[command(flatten)]
    pub keys: KeysArgs,
    /// Send the keys of --keys and nothing else: no populate, no rebuild (after a reboot emptied the target's tmpfs); the options of a deploy (--operation, --build-target, --confirm-timeout, --reboot, --check) are then moot: nothing is rebuilt or rebooted
    // A fleet host's buildTarget and confirmTimeout are moot then, not
    // mistakes: they go with it.
    #[arg(long, conflicts_with_all = ["preview", "ask"])]
    pub keys_only: bool,
    /// Evaluate and build on this target instead (populated too); it must reach --target over ssh
    #[arg(long, value_name = "TARGET", allow_hyphen_values = true)]
    pub build_target: Option<String>,
    /// The nixos-rebuild operation
    #[arg(long, default_value = "switch", value_name = "OP")]
    pub operation: String,
    /// Build for another architecture: pass --no-build-nix to the bash nixos-rebuild (nixos-rebuild-ng builds no Nix)
    #[arg(long)]
    pub cross_deploy: bool,
    /// When to pipe nixos-rebuild's output through nix-output-monitor (nom)
    #[arg(long, value_enum, default_value_t = Nom::Opportunistic, value_name = "MODE")]
    pub nom: Nom,
    /// Deprecated: deploys are always fast now; accepted and ignored
    #[arg(long)]
    pub fast: bool,
    /// Build the new system (nixos-rebuild build) without activating it and print on stdout what would change against the running system
    #[arg(long, conflicts_with_all = ["ask", "confirm_timeout"])]
    pub preview: bool,
    /// Preview, then ask `Activate? [y/N]` on the terminal and activate the system just built only on y (needs a terminal)
    #[arg(long, conflicts_with = "fleet")]
    pub ask: bool,
    /// For switch and test: the target rolls back unless a new ssh connection confirms the deploy within SECONDS after activation
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub confirm_timeout: Option<u32>,
    /// With --confirm-timeout: run SCRIPT with /bin/sh on the target over the new connection first; if it fails, the deploy is not confirmed. With --reboot: run it again once the target is back
    #[arg(long, value_name = "SCRIPT", allow_hyphen_values = true)]
    pub check: Option<String>,
    /// After a successful boot or switch: reboot the target, wait for it to come back with a new boot id, and check it runs the system just built
    #[arg(long, conflicts_with_all = ["preview", "ask"])]
    pub reboot: bool,
    /// With --reboot: how long the target has to go down and come back (and the check after it, to end) [default: 600]
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub reboot_timeout: Option<u32>,
}

/// What `krops-deploy --help` and its man page show.
pub const EXAMPLES: &[Example] = &[
    Example {
        what: "Deploy server01:",
        line: "krops-deploy --target root@server01 < sources.json",
    },
    Example {
        what: "Build on another machine, and activate at the next boot:",
        line: "krops-deploy --target root@server01 --build-target root@builder --operation boot < sources.json",
    },
    Example {
        what: "Print the plan of every web host of a fleet, and run nothing:",
        line: "krops-deploy --fleet fleet.json --on 'web*' --dry-run",
    },
    Example {
        what: "Deploy a whole fleet, two hosts at a time:",
        line: "krops-deploy --fleet fleet.json --jobs 2",
    },
];

/// The command line `krops-deploy` parses, for its man page and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// krops's `useNixOutputMonitor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Nom {
    /// Use nom if it is on the build target's PATH
    Opportunistic,
    /// Always use nom
    Optimistic,
    /// Use nom through `nix-shell -p nix-output-monitor`
    Pessimistic,
    /// nom if present, else through nix-shell
    True,
    /// Never use nom
    False,
}

/// What a fleet host may set: writeDeploy's attributes besides target and source.
pub const FLEET_SETTINGS: &[Setting] = &[
    Setting {
        key: "buildTarget",
        option: "--build-target",
        kind: SettingKind::Target,
        unless: &[],
    },
    Setting {
        key: "operation",
        option: "--operation",
        kind: SettingKind::Text,
        unless: &[],
    },
    Setting {
        key: "crossDeploy",
        option: "--cross-deploy",
        kind: SettingKind::Flag,
        unless: &[],
    },
    Setting {
        key: "useNixOutputMonitor",
        option: "--nom",
        kind: SettingKind::Choice(choices::<Nom>),
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
    // Deprecated in krops and here; taken so that a writeDeploy call
    // becomes a fleet host unchanged (its run warns).
    Setting {
        key: "fast",
        option: "--fast",
        kind: SettingKind::Flag,
        unless: &[],
    },
    Setting {
        key: "flake",
        option: "--flake",
        kind: SettingKind::Text,
        unless: &[],
    },
    Setting {
        key: "flakeInputs",
        option: "--flake-input",
        kind: SettingKind::Pairs,
        unless: &[],
    },
    Setting {
        key: "confirmTimeout",
        option: "--confirm-timeout",
        kind: SettingKind::Count,
        // A preview activates nothing, so nothing is confirmed.
        unless: &["--preview"],
    },
    Setting {
        key: "reboot",
        option: "--reboot",
        kind: SettingKind::Flag,
        // Nor is anything rebooted into.
        unless: &["--preview"],
    },
    Setting {
        key: "rebootTimeout",
        option: "--reboot-timeout",
        kind: SettingKind::Count,
        unless: &["--preview"],
    },
    krops_driver::keys::SETTING,
];

/// The operations after which `--reboot` reboots: those that make the
/// built system the one the next boot starts.
const REBOOTING: &[&str] = &["switch", "boot"];

/// The operations `--ask` can activate a built system with.
const ACTIVATING: &[&str] = &["switch", "boot", "test", "dry-activate"];

impl Nom {
    /// The mode as `--nom` takes it.
    fn name(self) -> String {
        self.to_possible_value()
            .expect("every --nom mode is a value of the option")
            .get_name()
            .to_owned()
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    cli.populate
        .output
        .with_results("krops-deploy", None, |results| deploy(&cli, results))
}

fn deploy(cli: &Cli, results: &mut Results) -> Result<ExitCode> {
    if cli.fleet.fleet.is_some() {
        return krops_driver::fleet::run(
            "krops-deploy",
            &cli.fleet,
            FLEET_SETTINGS,
            &command(),
            &krops_driver::fleet::args(),
            &cli.populate,
            results,
        );
    }
    if cli.fast {
        eprintln!("krops-deploy: warning: --fast is deprecated: deploys are always fast now");
    }
    let operation = &cli.operation;
    if operation.is_empty()
        || operation.starts_with('-')
        || operation
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(usage(format!(
            "--operation {operation:?}: expected a nixos-rebuild operation such as switch, boot, \
             test, build or dry-activate"
        )));
    }
    check_activation_options(cli)?;
    let origin = Origin::from_env();
    let target = cli.populate.target(&origin)?;
    let keys = cli.keys.read(
        &target.path,
        !cli.keys_only && cli.populate.sources_on_stdin(),
    )?;
    let build = match &cli.build_target {
        // The target itself, but for a trailing slash, is the target: not
        // another machine to populate and reach with --target-host.
        Some(arg) => Some(
            Target::from_arg(arg, &origin)
                .map_err(|err| usage(format!("--build-target: {err:#}")))?,
        )
        .filter(|build| !build.same_place(&target))
        .unwrap_or_else(|| target.clone()),
        None => target.clone(),
    };
    if cli.keys_only {
        return keys_only(cli, &target, &origin, keys, results);
    }
    let sources = cli.populate.read_sources()?;
    let flake = cli.flake.flake(&sources)?;
    if let Some(flake) = &flake {
        flake.rebuild_args(&build.path)?;
    }
    let options = cli.populate.options();
    let target_session = cli.populate.session(&target, &origin)?;
    let build_session = if build == target {
        Arc::clone(&target_session)
    } else {
        cli.populate.session(&build, &origin)?
    };
    let mut plans = Vec::new();
    if build != target {
        plans.push(Plan::new(&build_session, &sources, options)?);
    }
    plans.push(Plan::new(&target_session, &sources, options)?);
    let nixos_rebuild = Rebuild {
        flake: flake
            .as_ref()
            .map(|flake| flake.rebuild_args(&build.path))
            .transpose()?,
        ..Rebuild::new(cli, &target, &build)
    };
    let sshopts = match nix_sshopts(&target, &build) {
        Some(Ok(opts)) => Some(opts),
        Some(Err(word)) => {
            eprintln!(
                "krops-deploy: warning: the target's ssh option {word:?} cannot go through \
                 NIX_SSHOPTS (nixos-rebuild splits it at whitespace and keeps quotes): the build \
                 host gets none of the target's port and options; put them in its ssh config"
            );
            None
        }
        None => None,
    };
    let deploy = Deploy {
        operation: cli.operation.clone(),
        cross_deploy: cli.cross_deploy,
        nom: cli.nom,
        target_session,
        build_session,
        sshopts,
        paths: Paths::nixos(),
        flake,
    };
    let watchdog = match cli.confirm_timeout {
        Some(timeout) => Some(Watchdog {
            quiet: cli.populate.output.quiet,
            ..Watchdog::new(
                timeout,
                Operation::from_name(&cli.operation)
                    .context("--confirm-timeout checked the operation")?,
            )?
        }),
        None => None,
    };
    let reporting = &mut Reporting::new("krops-deploy", &cli.populate, results)?;
    let reboot = cli.reboot.then(|| {
        Rc::new(reboot::Reboot {
            timeout: cli.reboot_timeout.unwrap_or(reboot::DEFAULT_TIMEOUT),
            style: reporting.style,
            paths: Paths::nixos(),
        })
    });
    let deploy = Rc::new(deploy);
    let watchdog = watchdog.map(Rc::new);
    // The confirmation's check; after a reboot, the reboot's.
    let check = cli.check.clone().filter(|_| watchdog.is_some());
    // A preview changes nothing on the target, its keys included.
    let delivery =
        (!cli.preview && !keys.is_empty()).then(|| Delivery::new(&deploy.target_session, keys));
    let stages = if cli.preview || cli.ask {
        deploy::preview_then(&deploy, cli.ask, watchdog, check)
    } else if watchdog.is_some() && build != target {
        deploy::build_then_activate(&deploy, watchdog, check)
    } else if remote_sudo_needs_password(&deploy, &target, &build, &cli.operation) {
        deploy::build_then_activate(&deploy, None, None)
    } else if let Some(watchdog) = &watchdog {
        deploy::confirmed(&deploy, &nixos_rebuild, watchdog, check)
    } else {
        deploy::plain(&deploy, &nixos_rebuild)
    };
    let mut stages = krops_driver::keys::around(delivery.as_ref(), stages);
    if let Some(reboot) = &reboot {
        stages.extend(deploy::reboot_and_wait(
            &deploy,
            reboot,
            cli.check.clone(),
            delivery.as_ref(),
        ));
    }
    Stages::new(plans, stages).run_or_print(cli.populate.dry_run, reporting)
}

/// Whether nixos-rebuild would have to run sudo on the target itself with
/// a password: with a separate build target, its `--use-remote-sudo` runs
/// `ssh -t TARGET sudo …` over connections of its own, where sudo can only
/// ask on a terminal (README: A sudo password). krops-deploy then builds
/// on the build target, copies the system to the target and activates it
/// there itself, through sudo with the password, as `--confirm-timeout`
/// does with a build target.
fn remote_sudo_needs_password(
    deploy: &Deploy,
    target: &Target,
    build: &Target,
    operation: &str,
) -> bool {
    build != target
        && deploy.target_session.sudo_password().is_some()
        && ACTIVATING.contains(&operation)
}

/// `--keys-only`: the keys sent, nothing populated or rebuilt (README: Keys).
fn keys_only(
    cli: &Cli,
    target: &Target,
    origin: &Origin,
    keys: populate::keys::Keys,
    results: &mut Results,
) -> Result<ExitCode> {
    if keys.is_empty() {
        if !cli.populate.output.quiet {
            eprintln!("krops-deploy: --keys-only: no keys to send (give them with --keys FILE)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let session = cli.populate.session(target, origin)?;
    let delivery = Delivery::new(&session, keys);
    let reporting = &mut Reporting::new("krops-deploy", &cli.populate, results)?;
    Stages::new(Vec::new(), vec![krops_driver::keys::only(&delivery)])
        .run_or_print(cli.populate.dry_run, reporting)
}

/// Checks what the activation options need, before anything runs: a
/// mistake here is a usage error (exit status 2), like clap's own.
fn check_activation_options(cli: &Cli) -> Result<()> {
    let operation = cli.operation.as_str();
    if cli.ask && !ACTIVATING.contains(&operation) {
        return Err(usage(format!(
            "--ask activates the built system: --operation must be one of {}, not {operation}",
            ACTIVATING.join(", ")
        )));
    }
    if cli.check.is_some() && cli.confirm_timeout.is_none() && !cli.reboot {
        return Err(usage(
            "--check needs --confirm-timeout (the check decides whether a deploy is confirmed) \
             or --reboot (it runs once the target is back)",
        ));
    }
    if cli.reboot && !REBOOTING.contains(&operation) {
        return Err(usage(format!(
            "--reboot reboots into the system just built: --operation must be one of {}, not \
             {operation}",
            REBOOTING.join(", ")
        )));
    }
    if cli.reboot_timeout.is_some() && !cli.reboot {
        return Err(usage(
            "--reboot-timeout needs --reboot (fleet: reboot: true): it bounds the wait for a \
             rebooted target",
        ));
    }
    if cli.confirm_timeout.is_some() && Operation::from_name(operation).is_none() {
        return Err(usage(format!(
            "--confirm-timeout works with --operation switch or test (it rolls back an \
             activation), not {operation}"
        )));
    }
    if cli.ask && !cli.populate.dry_run && terminal().is_err() {
        return Err(usage(
            "--ask needs a terminal to ask on, and this process has none; use --preview to \
             look without activating",
        ));
    }
    Ok(())
}

/// The controlling terminal, to ask on.
fn terminal() -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
}

/// Asks `Activate? [y/N]` on the terminal; true only for y or yes.
fn ask_activate() -> Result<bool> {
    let mut tty = terminal().context("cannot open the terminal to ask")?;
    tty.write_all(b"Activate? [y/N] ")?;
    tty.flush()?;
    let mut answer = String::new();
    std::io::BufReader::new(tty)
        .read_line(&mut answer)
        .context("cannot read the answer from the terminal")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

fn confirm_what(watchdog: &Watchdog) -> String {
    format!(
        "confirm over a new ssh connection, retried for {} s (unless one is made, the \
         watchdog rolls back)",
        watchdog.timeout
    )
}

pub fn main() -> ExitCode {
    mktarget::tool::main("krops-deploy", || {
        run(mktarget::tool::parse("krops-deploy"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from([&["krops-deploy", "--target", "root@t"], args].concat())
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn check_without_confirm_timeout_is_refused_with_preview_too() {
        // It would never run: a user must not believe it guards anything.
        for args in [&["--check", "true"][..], &["--preview", "--check", "true"]] {
            let err = check_activation_options(&cli(args)).unwrap_err();
            assert!(
                err.to_string().contains("--check needs --confirm-timeout"),
                "{err}"
            );
        }
        // --preview activates nothing, so nothing is confirmed: refused by
        // clap (a fleet host's confirmTimeout is left out with --preview).
        let both = [
            "krops-deploy",
            "--target",
            "t",
            "--preview",
            "--confirm-timeout",
            "5",
        ];
        let err = Cli::try_parse_from(both).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn mistakes_found_after_parsing_are_usage_errors() {
        for args in [
            &["--check", "true"][..],
            &["--confirm-timeout", "5", "--operation", "boot"],
            &["--ask", "--operation", "build"],
            &["--reboot", "--operation", "test"],
            &["--reboot-timeout", "5"],
        ] {
            let err = check_activation_options(&cli(args)).unwrap_err();
            assert!(mktarget::tool::is_usage(&err), "{args:?}: {err}");
        }
    }

    #[test]
    fn nom_modes_are_krops_names() {
        let names: Vec<String> = Nom::value_variants().iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "opportunistic",
                "optimistic",
                "pessimistic",
                "true",
                "false"
            ]
        );
    }

    #[test]
    fn a_fleet_host_may_say_fast_as_writedeploy_does() {
        let origin = Origin {
            user: Some("alice".into()),
            host: "laptop".into(),
        };
        let fleet = r#"{"web1": {"target": "root@web1", "source": {}, "fast": true},
                        "web2": {"target": "root@web2", "source": {}, "fast": false}}"#;
        let hosts = krops_driver::fleet::parse(fleet, FLEET_SETTINGS, &origin, None).unwrap();
        let words: Vec<Vec<String>> = hosts
            .iter()
            .map(|host| host.settings.iter().flat_map(|(_, w)| w.clone()).collect())
            .collect();
        assert_eq!(words, [vec!["--fast".to_owned()], vec![]]);
    }

    #[test]
    fn fleet_refuses_target_and_sources_and_needs_one_of_them() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["krops-deploy"], args].concat());
        assert!(parse(&["--fleet", "f"]).is_ok());
        assert!(parse(&["--fleet", "f", "--target", "t"]).is_err());
        assert!(parse(&["--fleet", "f", "--sources", "s"]).is_err());
        assert!(parse(&["--force"]).is_err());
        assert!(parse(&["--target", "t", "--on", "web*"]).is_err());
        assert!(parse(&["--fleet", "f", "--jobs", "0"]).is_err());
        assert!(parse(&["--fleet", "f", "--max-failures", "0"]).is_err());
        assert!(parse(&["--target", "t", "--max-failures", "1"]).is_err());
        assert!(parse(&["--target", "t", "--reboot", "--preview"]).is_err());
        assert!(parse(&["--target", "t", "--reboot", "--reboot-timeout", "0"]).is_err());
        assert!(parse(&["--target", "t", "--reboot", "--check", "true"]).is_ok());
    }
}
