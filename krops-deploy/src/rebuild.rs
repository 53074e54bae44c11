//! The rebuild on the build target: nixos-rebuild's arguments as krops's
//! writeDeploy passes them, for whichever nixos-rebuild the build target
//! runs, and the script that runs it (with nix-output-monitor or not).

use mktarget::shell::{quote, quote_words};
use mktarget::Target;

use crate::{Cli, Nom};

/// The nixos-rebuild programs a build target may run. They differ in the
/// options the tools pass, so the build target's own program decides, once
/// per run, in the script that runs it ([`rebuild_script`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rebuilder {
    /// The bash `nixos-rebuild` (NixOS up to 25.05): `--use-remote-sudo`,
    /// and `--no-build-nix` for a cross deploy.
    Bash,
    /// `nixos-rebuild-ng`, the Python program (the default since NixOS
    /// 25.11): `--sudo` (`--use-remote-sudo` is its deprecated alias); it
    /// builds no Nix, so `--no-build-nix` would only warn.
    Ng,
}

/// Shell text that succeeds when the `nixos-rebuild` on PATH is the bash
/// program: it refuses `--sudo` as an unknown option, before reading any
/// other word, while nixos-rebuild-ng knows `--sudo` and refuses the next
/// word instead. Either exits at once, having done nothing.
pub const BASH_REBUILDER_PROBE: &str =
    "nixos-rebuild --sudo --krops-probe 2>&1 | grep -q 'unknown option.*--sudo'";

/// How `--target-host` names the target for each program; they differ for
/// an IPv6 literal. The bash program passes it to ssh as it is, and ssh
/// reads `root@[::1]` as the host name `[::1]`; nixos-rebuild-ng reads it
/// as a URL's authority, which wants the brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetHost {
    /// `root@::1`, for the bash program.
    pub ssh: String,
    /// `root@[::1]`, for nixos-rebuild-ng.
    pub bracketed: String,
}

impl TargetHost {
    pub fn new(target: &Target) -> TargetHost {
        TargetHost {
            ssh: target.ssh_destination(),
            bracketed: target.destination(),
        }
    }

    fn for_program(&self, program: Rebuilder) -> &str {
        match program {
            Rebuilder::Bash => &self.ssh,
            Rebuilder::Ng => &self.bracketed,
        }
    }
}

/// One nixos-rebuild run, before the build target's program is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuild {
    pub operation: String,
    /// `--cross-deploy`: the bash program must not build Nix first.
    pub cross_deploy: bool,
    /// The target, as `--target-host` names it, when nixos-rebuild runs
    /// elsewhere (on the build target).
    pub target_host: Option<TargetHost>,
    /// Whether activation on the target goes through sudo.
    pub sudo: bool,
    /// Flake mode: nixos-rebuild's `--flake REF …` words
    /// ([`krops_driver::Flake::rebuild_args`]), instead of `--no-flake`.
    pub flake: Option<Vec<String>>,
}

impl Rebuild {
    /// What krops's writeDeploy runs for `cli`; the target as each program
    /// wants it ([`TargetHost`]). It builds
    /// where it runs, on the build target: krops also passed `--build-host`
    /// naming that same machine, so nixos-rebuild ssh-ed to itself and
    /// copied to the target from that nested session, without NIX_SSHOPTS.
    pub fn new(cli: &Cli, target: &Target, build: &Target) -> Rebuild {
        Rebuild {
            operation: cli.operation.clone(),
            cross_deploy: cli.cross_deploy,
            target_host: (build != target).then(|| TargetHost::new(target)),
            sudo: target.sudo,
            flake: None,
        }
    }

    /// nixos-rebuild's arguments for `program`. In flake mode the synced
    /// flake's; else `--no-flake`: in this NIX_PATH mode a flake of the
    /// machine's own (`/etc/nixos/flake.nix`) must not replace the synced
    /// sources.
    pub fn args(&self, program: Rebuilder) -> Vec<String> {
        let mut args = vec![self.operation.clone()];
        match &self.flake {
            Some(flake) => args.extend(flake.iter().cloned()),
            None => args.push("--no-flake".to_owned()),
        }
        if self.cross_deploy && program == Rebuilder::Bash {
            args.push("--no-build-nix".to_owned());
        }
        if let Some(host) = &self.target_host {
            args.extend([
                "--target-host".to_owned(),
                host.for_program(program).to_owned(),
            ]);
        }
        if self.sudo {
            args.push(
                match program {
                    Rebuilder::Bash => "--use-remote-sudo",
                    Rebuilder::Ng => "--sudo",
                }
                .to_owned(),
            );
        }
        args
    }
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
/// its output goes through nom. Where the programs' arguments differ, the
/// script asks the build target's program which it is
/// ([`BASH_REBUILDER_PROBE`]) right before running it.
/// A flake is evaluated purely, so its rebuild gets no NIX_PATH (which
/// only nix-shell's `-p` of `--nom pessimistic` reads then).
pub fn rebuild_script(nix_path: &str, sshopts: Option<&str>, run: &Rebuild, mode: Nom) -> String {
    let mut prefix = match run.flake {
        Some(_) => String::new(),
        None => format!("NIX_PATH={} ", quote(nix_path)),
    };
    if let Some(opts) = sshopts {
        prefix.push_str(&format!("NIX_SSHOPTS={} ", quote(opts)));
    }
    let command = |program| format!("{prefix}nixos-rebuild {}", quote_words(run.args(program)));
    let (bash, ng) = (command(Rebuilder::Bash), command(Rebuilder::Ng));
    let rebuild = if bash == ng {
        bash
    } else {
        format!("if {BASH_REBUILDER_PROBE}; then {bash}; else {ng}; fi")
    };
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

#[cfg(test)]
mod tests {
    use clap::Parser;
    use mktarget::testing::origin;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from([&["krops-deploy", "--target", "root@t"], args].concat())
    }

    fn t(s: &str) -> Target {
        Target::parse(s, &origin()).unwrap()
    }

    fn args(args: &[&str], target: &Target, build: &Target, program: Rebuilder) -> Vec<String> {
        Rebuild::new(&cli(args), target, build).args(program)
    }

    #[test]
    fn rebuild_args_follow_write_deploy() {
        use Rebuilder::{Bash, Ng};
        for program in [Bash, Ng] {
            assert_eq!(
                args(&[], &t("root@t"), &t("root@t"), program),
                ["switch", "--no-flake"]
            );
        }
        assert_eq!(
            args(
                &["--operation", "boot", "--cross-deploy"],
                &t("root@t"),
                &t("root@t"),
                Bash
            ),
            ["boot", "--no-flake", "--no-build-nix"]
        );
        // nixos-rebuild-ng builds no Nix: --no-build-nix would only warn.
        assert_eq!(
            args(&["--cross-deploy"], &t("root@t"), &t("root@t"), Ng),
            ["switch", "--no-flake"]
        );
        let mut target = t("deploy@t");
        target.sudo = true;
        // Built where nixos-rebuild runs, on the build target: no --build-host.
        assert_eq!(
            args(&[], &target, &t("@b"), Bash),
            [
                "switch",
                "--no-flake",
                "--target-host",
                "deploy@t",
                "--use-remote-sudo"
            ]
        );
        assert_eq!(
            args(&[], &target, &t("@b"), Ng),
            [
                "switch",
                "--no-flake",
                "--target-host",
                "deploy@t",
                "--sudo"
            ]
        );
    }

    #[test]
    fn a_flake_replaces_no_flake_for_both_programs() {
        let mut target = t("deploy@t");
        target.sudo = true;
        let flake = vec![
            "--flake".to_owned(),
            "path:/var/src/config#web1".to_owned(),
            "--no-write-lock-file".to_owned(),
        ];
        let run = Rebuild {
            flake: Some(flake),
            ..Rebuild::new(&cli(&["--cross-deploy"]), &target, &t("@b"))
        };
        assert_eq!(
            run.args(Rebuilder::Bash),
            [
                "switch",
                "--flake",
                "path:/var/src/config#web1",
                "--no-write-lock-file",
                "--no-build-nix",
                "--target-host",
                "deploy@t",
                "--use-remote-sudo"
            ]
        );
        assert_eq!(
            run.args(Rebuilder::Ng),
            [
                "switch",
                "--flake",
                "path:/var/src/config#web1",
                "--no-write-lock-file",
                "--target-host",
                "deploy@t",
                "--sudo"
            ]
        );
        // Evaluated purely: no NIX_PATH for the rebuild itself.
        let script = rebuild_script("/var/src", None, &run, Nom::False);
        assert!(!script.contains("NIX_PATH"), "{script}");
        assert!(script.contains("--no-write-lock-file"), "{script}");
    }

    #[test]
    fn rebuild_args_name_ipv6_hosts_as_each_program_wants_them() {
        // The bash program hands --target-host to ssh, which would look up
        // `[::1]` as a name; nixos-rebuild-ng reads it as a URL's authority.
        let string = t("root@[::1]:2222/var/src");
        assert_eq!(
            args(&[], &string, &t("root@b"), Rebuilder::Bash),
            ["switch", "--no-flake", "--target-host", "root@::1"]
        );
        assert_eq!(
            args(&[], &string, &t("root@b"), Rebuilder::Ng),
            ["switch", "--no-flake", "--target-host", "root@[::1]"]
        );
        // A host as JSON gives the bare address: the same.
        let mut json = t("root@b");
        json.host = "2001:db8::1".into();
        json.validate().unwrap();
        assert_eq!(
            args(&[], &json, &t("@b"), Rebuilder::Bash),
            ["switch", "--no-flake", "--target-host", "root@2001:db8::1"]
        );
        assert_eq!(
            args(&[], &json, &t("@b"), Rebuilder::Ng),
            [
                "switch",
                "--no-flake",
                "--target-host",
                "root@[2001:db8::1]"
            ]
        );
        // The port still reaches the build host through NIX_SSHOPTS.
        assert_eq!(
            nix_sshopts(&t("root@[::1]:2222"), &t("root@b")),
            Some(Ok("-p 2222".into()))
        );
    }

    /// Runs [`BASH_REBUILDER_PROBE`] with `program` as nixos-rebuild.
    fn probe(program: &str) -> bool {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().display().to_string();
        let path = format!("{dir}/nixos-rebuild");
        std::fs::write(&path, program).unwrap();
        std::process::Command::new("chmod")
            .args(["+x", &path])
            .status()
            .unwrap();
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", BASH_REBUILDER_PROBE])
            .env("PATH", format!("{dir}:/usr/bin:/bin"))
            .status()
            .unwrap();
        status.success()
    }

    #[test]
    fn the_probe_tells_the_bash_program_from_nixos_rebuild_ng() {
        // Their first words on an option they do not know (the real bash
        // program runs in tests/real_nixos.rs).
        let bash = "#!/bin/sh\necho \"$0: unknown option \\`$1'\" >&2; exit 1\n";
        assert!(probe(bash));
        // argparse's usage names --sudo too, but not as unknown.
        let ng = "#!/bin/sh\necho 'usage: nixos-rebuild [--sudo] [--use-remote-sudo]' >&2\n\
                  echo 'nixos-rebuild: error: unrecognized arguments: --krops-probe' >&2; exit 2\n";
        assert!(!probe(ng));
    }

    #[test]
    fn the_script_runs_what_the_build_targets_program_understands() {
        let plain = Rebuild::new(&cli(&[]), &t("root@t"), &t("root@t"));
        let script = rebuild_script("/var/src", None, &plain, Nom::False);
        assert!(!script.contains("--krops-probe"), "{script}");
        assert!(
            script.ends_with("\nNIX_PATH=/var/src nixos-rebuild switch --no-flake\n"),
            "{script}"
        );
        let mut target = t("root@t");
        target.sudo = true;
        let sudo = Rebuild::new(&cli(&[]), &target, &target);
        let script = rebuild_script("/var/src", None, &sudo, Nom::False);
        assert!(
            script.ends_with(&format!(
                "\nif {BASH_REBUILDER_PROBE}; then NIX_PATH=/var/src nixos-rebuild switch \
                 --no-flake --use-remote-sudo; else NIX_PATH=/var/src nixos-rebuild switch \
                 --no-flake --sudo; fi\n"
            )),
            "{script}"
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
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().display().to_string();
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
        let switch = Rebuild::new(&cli(&[]), &t("root@t"), &t("root@t"));
        let script = rebuild_script("/var/src", None, &switch, mode);
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .env("PATH", format!("{bin}:/usr/bin:/bin"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    #[test]
    fn nom_modes_pipe_as_krops_does_and_keep_the_status() {
        let (status, stdout, stderr) = run_script(Nom::Opportunistic, true, 0);
        assert_eq!(status, 0);
        assert_eq!(
            stdout,
            "nom: rebuild switch --no-flake NIX_PATH=/var/src\nnom: oops\n"
        );
        assert!(
            stderr.starts_with("# use nix-output-monitor: opportunistic\n"),
            "{stderr}"
        );
        let (status, stdout, stderr) = run_script(Nom::Opportunistic, false, 0);
        assert_eq!(
            (status, stdout.as_str(), stderr.contains("oops")),
            (0, "rebuild switch --no-flake NIX_PATH=/var/src\n", true)
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
        let switch = Rebuild::new(&cli(&[]), &t("root@t"), &t("root@t"));
        let script = rebuild_script("/var/src", None, &switch, Nom::Pessimistic);
        assert!(
            script
                .contains("\nNIX_PATH=/var/src nix-shell -p nix-output-monitor --run 'exec 3>&1;"),
            "{script}"
        );
        let script = rebuild_script("/var/src", None, &switch, Nom::True);
        assert!(
            script.contains("else\n  NIX_PATH=/var/src nix-shell -p nix-output-monitor"),
            "{script}"
        );
    }
}
