//! krops-deploy: populate the build target and the target, then run
//! `nixos-rebuild` on the build target (SPEC §4, krops's `writeDeploy`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use mktarget::shell::{quote, quote_words};
use mktarget::{Origin, Target};
use populate::fleet::{FleetArgs, Kind, Setting};
use populate::{populate_then, Final, Plan, PopulateArgs, Results};

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
/// crossDeploy, useNixOutputMonitor, force, backup). Each host's output lines
/// start with its name; options given here apply to every host and win over
/// FILE. Exits 1 when any host failed.
#[derive(Debug, Parser)]
#[command(name = "krops-deploy", version)]
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
    /// Evaluate and build on this target instead (populated too); it must reach --target over ssh
    #[arg(long, value_name = "TARGET", allow_hyphen_values = true)]
    pub build_target: Option<String>,
    /// The nixos-rebuild operation
    #[arg(long, default_value = "switch", value_name = "OP")]
    pub operation: String,
    /// Build for another architecture: pass --no-build-nix to nixos-rebuild
    #[arg(long)]
    pub cross_deploy: bool,
    /// When to pipe nixos-rebuild's output through nix-output-monitor (nom)
    #[arg(long, value_enum, default_value_t = Nom::Opportunistic, value_name = "MODE")]
    pub nom: Nom,
    /// Deprecated: deploys are always fast now; accepted and ignored
    #[arg(long)]
    pub fast: bool,
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

/// The values of --nom, as a fleet's useNixOutputMonitor may say them.
pub const NOM_MODES: &[&str] = &[
    "opportunistic",
    "optimistic",
    "pessimistic",
    "true",
    "false",
];

/// What a fleet host may set: writeDeploy's attributes besides target and source.
pub const FLEET_SETTINGS: &[Setting] = &[
    Setting {
        key: "buildTarget",
        option: "--build-target",
        kind: Kind::Target,
    },
    Setting {
        key: "operation",
        option: "--operation",
        kind: Kind::Text,
    },
    Setting {
        key: "crossDeploy",
        option: "--cross-deploy",
        kind: Kind::Flag,
    },
    Setting {
        key: "useNixOutputMonitor",
        option: "--nom",
        kind: Kind::Choice(NOM_MODES),
    },
    Setting {
        key: "force",
        option: "--force",
        kind: Kind::Flag,
    },
    Setting {
        key: "backup",
        option: "--backup",
        kind: Kind::Flag,
    },
];

impl Nom {
    fn name(self) -> &'static str {
        match self {
            Nom::Opportunistic => "opportunistic",
            Nom::Optimistic => "optimistic",
            Nom::Pessimistic => "pessimistic",
            Nom::True => "true",
            Nom::False => "false",
        }
    }
}

/// The arguments of nixos-rebuild, as krops's writeDeploy passes them; the
/// hosts as [`Target::destination`] writes them (`root@[::1]` for IPv6).
pub fn rebuild_args(cli: &Cli, target: &Target, build: &Target) -> Vec<String> {
    let mut args = vec![cli.operation.clone()];
    if cli.cross_deploy {
        args.push("--no-build-nix".to_owned());
    }
    if build != target {
        args.extend([
            "--build-host".to_owned(),
            build.destination(),
            "--target-host".to_owned(),
            target.destination(),
        ]);
    }
    if target.sudo {
        args.push("--use-remote-sudo".to_owned());
    }
    args
}

/// ssh options the build host needs to reach the target, for NIX_SSHOPTS
/// (krops drops the target's port and extraOptions here): `None` when there
/// are none, else the words joined by spaces, or `Err(word)` for the first
/// word NIX_SSHOPTS cannot carry. nixos-rebuild splits NIX_SSHOPTS at
/// whitespace without removing quotes (nixos-rebuild-ng removes them), so
/// only words without whitespace, quotes and backslashes mean the same to both.
pub fn nix_sshopts(target: &Target, build: &Target) -> Option<Result<String, String>> {
    if build == target {
        return None;
    }
    let mut opts = Vec::new();
    if let Some(port) = &target.port {
        opts.extend(["-p".to_owned(), port.clone()]);
    }
    opts.extend(target.extra_options.iter().cloned());
    if opts.is_empty() {
        return None;
    }
    let unsafe_word = opts.iter().find(|word| {
        word.chars()
            .any(|c| c.is_whitespace() || "'\"\\".contains(c))
    });
    Some(match unsafe_word {
        Some(word) => Err(word.clone()),
        None => Ok(opts.join(" ")),
    })
}

/// The script run on the build target: the rebuild, piped through nom as
/// `mode` says. Unlike krops, a failing rebuild fails the script even when
/// its output goes through nom.
pub fn rebuild_script(nix_path: &str, sshopts: Option<&str>, args: &[String], mode: Nom) -> String {
    let mut rebuild = format!("NIX_PATH={} ", quote(nix_path));
    if let Some(opts) = sshopts {
        rebuild.push_str(&format!("NIX_SSHOPTS={} ", quote(opts)));
    }
    rebuild.push_str("nixos-rebuild ");
    rebuild.push_str(&quote_words(args));
    // `(CMD) 2>&1 | nom`, failing when either fails (POSIX sh has no
    // pipefail): both statuses are collected on fd 4, the rebuild's first.
    // A failed nom wins: the rebuild then only died of the broken pipe.
    let through_nom = format!(
        "exec 3>&1; statuses=$( {{ {{ ({rebuild}) 2>&1; echo $? >&4; }} | nom >&3; echo $? >&4; }} 4>&1 ); \
         set -- $statuses; if [ \"${{2:-1}}\" != 0 ]; then exit \"${{2:-1}}\"; fi; exit \"$1\""
    );
    let pessimistic = format!(
        "NIX_PATH={} nix-shell -p nix-output-monitor --run {}",
        quote(nix_path),
        quote(&through_nom)
    );
    let body = match mode {
        Nom::Opportunistic => {
            format!("if command -v nom >/dev/null; then\n  {through_nom}\nelse\n  {rebuild}\nfi")
        }
        Nom::Optimistic => through_nom,
        Nom::Pessimistic => pessimistic,
        Nom::True => {
            format!(
                "if command -v nom >/dev/null; then\n  {through_nom}\nelse\n  {pessimistic}\nfi"
            )
        }
        Nom::False => rebuild,
    };
    format!(
        "printf '# use nix-output-monitor: %s\\n' {} >&2\n{body}\n",
        mode.name()
    )
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    cli.populate
        .output
        .with_results("krops-deploy", None, |results| deploy(&cli, results))
}

fn deploy(cli: &Cli, results: &mut Results) -> Result<ExitCode> {
    if cli.fleet.fleet.is_some() {
        return populate::fleet::run(
            "krops-deploy",
            &cli.fleet,
            FLEET_SETTINGS,
            &<Cli as clap::CommandFactory>::command(),
            &populate::fleet::args(),
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
        bail!(
            "--operation {operation:?}: expected a nixos-rebuild operation such as switch, boot, \
             test, build or dry-activate"
        );
    }
    let origin = Origin::from_env();
    let target = cli.populate.target(&origin)?;
    let build = match &cli.build_target {
        Some(arg) => Target::from_arg(arg, &origin).map_err(|err| err.context("--build-target"))?,
        None => target.clone(),
    };
    let sources = cli.populate.read_sources()?;
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
    let args = rebuild_args(cli, &target, &build);
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
    let script = rebuild_script(&build.path, sshopts.as_deref(), &args, cli.nom);
    let on = build_session.machine();
    let role = if build == target {
        "the target"
    } else {
        "the build target"
    };
    let rebuild = Final {
        command: build_session.command(&script, &[], false),
        what: format!("nixos-rebuild {} on {on} ({role})", cli.operation),
        remote: (!build_session.is_local()).then(|| on.clone()),
        session: build_session,
    };
    populate_then("krops-deploy", &plans, &rebuild, &cli.populate, results)
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

    fn origin() -> Origin {
        Origin {
            user: Some("alice".into()),
            host: "laptop".into(),
        }
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from([&["krops-deploy", "--target", "root@t"], args].concat())
    }

    fn t(s: &str) -> Target {
        Target::parse(s, &origin()).unwrap()
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn fleet_nom_modes_are_the_options_values() {
        let names: Vec<String> = Nom::value_variants()
            .iter()
            .map(|v| v.to_possible_value().unwrap().get_name().to_owned())
            .collect();
        assert_eq!(names, NOM_MODES);
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
    }

    #[test]
    fn rebuild_args_follow_write_deploy() {
        assert_eq!(
            rebuild_args(&cli(&[]), &t("root@t"), &t("root@t")),
            ["switch"]
        );
        assert_eq!(
            rebuild_args(
                &cli(&["--operation", "boot", "--cross-deploy"]),
                &t("root@t"),
                &t("root@t")
            ),
            ["boot", "--no-build-nix"]
        );
        let mut target = t("deploy@t");
        target.sudo = true;
        assert_eq!(
            rebuild_args(&cli(&[]), &target, &t("@b")),
            [
                "switch",
                "--build-host",
                "b",
                "--target-host",
                "deploy@t",
                "--use-remote-sudo"
            ]
        );
    }

    #[test]
    fn rebuild_args_bracket_ipv6_hosts() {
        assert_eq!(
            rebuild_args(&cli(&[]), &t("root@[::1]:2222/var/src"), &t("root@b")),
            [
                "switch",
                "--build-host",
                "root@b",
                "--target-host",
                "root@[::1]"
            ]
        );
        // A host as JSON gives it: the bare address.
        let mut json = t("root@b");
        json.host = "2001:db8::1".into();
        json.validate().unwrap();
        assert_eq!(
            rebuild_args(&cli(&[]), &t("@b"), &json),
            [
                "switch",
                "--build-host",
                "root@[2001:db8::1]",
                "--target-host",
                "b"
            ]
        );
        // The port still reaches the build host through NIX_SSHOPTS.
        assert_eq!(
            nix_sshopts(&t("root@[::1]:2222"), &t("root@b")),
            Some(Ok("-p 2222".into()))
        );
    }

    #[test]
    fn sshopts_carry_the_targets_port_and_options() {
        let mut target = t("root@t:2222");
        target.extra_options = vec!["-o".into(), "ProxyJump=jump".into()];
        let opts = nix_sshopts(&target, &t("root@b"));
        assert_eq!(opts, Some(Ok("-p 2222 -o ProxyJump=jump".into())));
        assert_eq!(nix_sshopts(&target, &target), None);
        assert_eq!(nix_sshopts(&t("root@t"), &t("root@b")), None);
        // Words NIX_SSHOPTS cannot carry the same way to every nixos-rebuild.
        for word in ["ProxyCommand=nc %h %p", "it's", "a\\b", "\"q\""] {
            target.extra_options = vec!["-o".into(), word.into()];
            assert_eq!(nix_sshopts(&target, &t("root@b")), Some(Err(word.into())));
        }
    }

    /// Runs the rebuild script with stand-in `nixos-rebuild` and `nom`.
    fn run_script(mode: Nom, with_nom: bool, rebuild_status: i32) -> (i32, String, String) {
        let dir = tempfile_dir();
        let bin = format!("{dir}/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let write = |name: &str, body: &str| {
            let path = format!("{bin}/{name}");
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::process::Command::new("chmod")
                .args(["+x", &path])
                .status()
                .unwrap();
        };
        write(
            "nixos-rebuild",
            &format!(
                "echo \"rebuild $* NIX_PATH=$NIX_PATH\"; echo oops >&2; exit {rebuild_status}"
            ),
        );
        if with_nom {
            write("nom", "sed 's/^/nom: /'");
        }
        let script = rebuild_script("/var/src", None, &["switch".into()], mode);
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .env("PATH", format!("{bin}:/usr/bin:/bin"))
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    fn tempfile_dir() -> String {
        let out = std::process::Command::new("mktemp")
            .arg("-d")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn nom_modes_pipe_as_krops_does_and_keep_the_status() {
        let (status, stdout, stderr) = run_script(Nom::Opportunistic, true, 0);
        assert_eq!(status, 0);
        assert_eq!(stdout, "nom: rebuild switch NIX_PATH=/var/src\nnom: oops\n");
        assert!(
            stderr.starts_with("# use nix-output-monitor: opportunistic\n"),
            "{stderr}"
        );
        let (status, stdout, stderr) = run_script(Nom::Opportunistic, false, 0);
        assert_eq!(
            (status, stdout.as_str(), stderr.contains("oops")),
            (0, "rebuild switch NIX_PATH=/var/src\n", true)
        );
        let (status, stdout, _) = run_script(Nom::Optimistic, true, 4);
        assert_eq!((status, stdout.starts_with("nom: ")), (4, true));
        // nom missing: optimistic fails as krops does (127), never silently.
        let (status, _, stderr) = run_script(Nom::Optimistic, false, 0);
        assert_eq!(status, 127, "{stderr}");
        let (status, stdout, _) = run_script(Nom::False, true, 5);
        assert_eq!((status, stdout.starts_with("rebuild")), (5, true));
        // The real nix-shell runs and looks for nixpkgs below NIX_PATH.
        let (status, _, stderr) = run_script(Nom::Pessimistic, true, 0);
        assert_ne!(status, 0);
        assert!(stderr.contains("nixpkgs"), "{stderr}");
        let (status, stdout, _) = run_script(Nom::True, true, 6);
        assert_eq!((status, stdout.starts_with("nom: ")), (6, true));
    }

    #[test]
    fn pessimistic_runs_nom_through_nix_shell() {
        let script = rebuild_script("/var/src", None, &["switch".into()], Nom::Pessimistic);
        assert!(
            script
                .contains("\nNIX_PATH=/var/src nix-shell -p nix-output-monitor --run 'exec 3>&1;"),
            "{script}"
        );
        let script = rebuild_script("/var/src", None, &["switch".into()], Nom::True);
        assert!(
            script.contains("else\n  NIX_PATH=/var/src nix-shell -p nix-output-monitor"),
            "{script}"
        );
    }
}
