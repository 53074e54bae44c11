//! The real nixos-rebuild in the test world: NixOS's own bash program and
//! the small honest NixOS that its `setup.sh` lays out around it (see the
//! README.md of that directory), found at `$KROPS_NIXOS_REBUILD`, which
//! `scripts/test` sets.
//!
//! [`World::real_rebuild`] lays it out in the world's `rr/` and tells the
//! `nixos-rebuild` stand-in to run it (after recording the call, so a test
//! may still look at the arguments): every nixos-rebuild the tools start,
//! over ssh, under sudo or locally, is then the real one. It builds real
//! systems with the real nix-build, moves the real system profile
//! `/nix/var/nix/profiles/system` with nix-env and `/run/current-system`
//! with the systems' `switch-to-configuration`. Those paths are fixed, so
//! the real program only runs on the world's NixOS machines, each in a mount
//! namespace of its own (`nixos.rs`): a NixOS host over ssh, or the local
//! machine with the tool itself started in one ([`World::run_local_nixos`]).
//! Anywhere else the stand-in refuses to run it.
//!
//! The indirect GC roots its builds register (a build's `result` link, the
//! program's own temp files) are removed with the world ([`crate::World`]'s
//! drop).
//!
//! Without `$KROPS_NIXOS_REBUILD` (a fresh clone without the shared
//! directory beside it), [`World::real_rebuild`] prints a `skipped:` line
//! that cargo does not capture, and the test returns.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::run::Output;
use crate::standins::REBUILD_REAL_FILE;
use crate::World;

/// The variable naming the directory with the real `nixos-rebuild.sh` and
/// its `setup.sh`.
pub const REAL_REBUILD_ENV: &str = "KROPS_NIXOS_REBUILD";

/// What the machine-wide paths the real program uses pointed at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachinePaths {
    profile: Option<PathBuf>,
    current_system: Option<PathBuf>,
    build_dirs: Vec<PathBuf>,
}

impl MachinePaths {
    fn now() -> MachinePaths {
        let mut build_dirs: Vec<PathBuf> = fs::read_dir("/tmp")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("krops-build."))
            })
            .collect();
        build_dirs.sort();
        MachinePaths {
            profile: fs::read_link("/nix/var/nix/profiles/system").ok(),
            current_system: fs::read_link("/run/current-system").ok(),
            build_dirs,
        }
    }
}

/// The real nixos-rebuild laid out in one world.
#[derive(Debug)]
pub struct RealRebuild {
    root: PathBuf,
    world_root: PathBuf,
    before: MachinePaths,
}

impl RealRebuild {
    /// Its `ROOT` (`setup.sh ROOT`): `bin/nixos-rebuild`, `nixpkgs/`, `log/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The fake but evaluating nixpkgs, with `nixos/` and a flake.
    pub fn nixpkgs(&self) -> PathBuf {
        self.root.join("nixpkgs")
    }

    /// Every `ACTION SYSTEM` the systems' `switch-to-configuration` ran,
    /// oldest first.
    pub fn activations(&self) -> Vec<String> {
        fs::read_to_string(self.root.join("log/activations.log"))
            .unwrap_or_default()
            .lines()
            .map(|line| {
                line.split(' ')
                    .skip(1)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    /// Panics unless the machine's own system profile and
    /// `/run/current-system` are as they were when the program was laid
    /// out, and no build directory of a deploy (`/tmp/krops-build.*`,
    /// with its `result` link) was left behind.
    #[track_caller]
    pub fn assert_machine_untouched(&self) {
        let now = MachinePaths::now();
        assert_eq!(
            (&now.profile, &now.current_system),
            (&self.before.profile, &self.before.current_system),
            "the real nixos-rebuild changed this machine's system profile or /run/current-system"
        );
        let new: Vec<&PathBuf> = now
            .build_dirs
            .iter()
            .filter(|dir| !self.before.build_dirs.contains(dir))
            .filter(|dir| points_into(dir, &self.world_root))
            .collect();
        assert!(new.is_empty(), "build directories left behind: {new:?}");
    }
}

/// Whether the build directory `dir` holds a `result` of this world's
/// systems (whose store paths name the world's `rr/log`): other tests
/// running at the same time leave their own.
fn points_into(dir: &Path, world_root: &Path) -> bool {
    let Ok(system) = fs::canonicalize(dir.join("result")) else {
        return false;
    };
    let settings =
        fs::read_to_string(system.join("bin/switch-to-configuration")).unwrap_or_default();
    settings.contains(&world_root.display().to_string())
}

impl World {
    /// Lays out the real nixos-rebuild in the world's `rr/` and has the
    /// `nixos-rebuild` stand-in run it from now on. Without
    /// `$KROPS_NIXOS_REBUILD`, prints `skipped: TEST: …` and returns `None`.
    #[track_caller]
    pub fn real_rebuild(&self) -> Option<RealRebuild> {
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        let Some(dir) = std::env::var_os(REAL_REBUILD_ENV) else {
            // Straight to stderr: cargo captures print! and eprint! only.
            let _ = writeln!(
                std::io::stderr(),
                "skipped: {test}: needs the real nixos-rebuild, and {REAL_REBUILD_ENV} is not set \
                 (scripts/test sets it to ../shared/nixos-rebuild when that exists)"
            );
            return None;
        };
        let setup = PathBuf::from(dir).join("setup.sh");
        assert!(
            setup.is_file(),
            "{REAL_REBUILD_ENV} names no directory with setup.sh: {}",
            setup.display()
        );
        let before = MachinePaths::now();
        let root = self.path("rr");
        self.checked(
            Command::new(&setup)
                .arg(&root)
                .env_clear()
                .env("PATH", crate::SYSTEM_PATH),
        );
        let program = root.join("bin/nixos-rebuild");
        fs::write(
            self.records_dir().join(REBUILD_REAL_FILE),
            format!("{}\n", program.display()),
        )
        .unwrap_or_else(|err| panic!("cannot point the stand-in at {}: {err}", program.display()));
        Some(RealRebuild {
            root,
            world_root: self.root().to_owned(),
            before,
        })
    }

    /// The configuration of a fake NixOS system whose `/etc/marker` is
    /// `marker` (letters, digits and dots): one system per marker.
    fn real_configuration(&self, marker: &str) -> PathBuf {
        assert!(
            marker
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.'),
            "bad marker {marker:?}"
        );
        self.write(
            &format!("rr-config/{marker}.nix"),
            format!(
                "{{ config, pkgs, ... }}:\n{{\n  networking.hostName = \"fakenixos\";\n  \
                 environment.etc.\"marker\".text = \"{marker}\";\n}}\n"
            ),
        )
    }

    /// Sources for a deploy with the real program: `nixpkgs` (a symlink to
    /// the fake nixpkgs) and `nixos-config` (the configuration of `marker`).
    pub fn real_sources(&self, rr: &RealRebuild, marker: &str) -> Value {
        let config = self.real_configuration(marker);
        json!({
            "nixpkgs": {"symlink": rr.nixpkgs().to_str().expect("UTF-8 path")},
            // Configurations of one size, written within a second: rsync's
            // quick check (size and mtime) would take them for one.
            "nixos-config": {"file": {"path": config.to_str().expect("UTF-8 path"), "useChecksum": true}},
        })
    }

    /// Builds, with the real nix-build, the system a deploy of
    /// [`World::real_sources`] with `marker` builds, and returns it.
    #[track_caller]
    pub fn real_system(&self, rr: &RealRebuild, marker: &str) -> PathBuf {
        let config = self.real_configuration(marker);
        let out = self.checked(
            self.command("nix-build")
                .arg(rr.nixpkgs().join("nixos"))
                .args(["-A", "system", "--no-out-link", "--arg", "configuration"])
                .arg(&config),
        );
        PathBuf::from(out.trim())
    }

    /// Makes the local machine a NixOS machine named `alias` for
    /// [`World::run_local_nixos`]: its own `/run` and system profile in
    /// `hosts/ALIAS/`, as for a NixOS host, with no sshd.
    #[track_caller]
    pub fn add_local_nixos(&self, alias: &str) {
        self.make_nixos_dirs(alias);
    }

    /// Files laid over the `/etc` of the NixOS machine `alias` (before it
    /// starts): `rel` is a path below `/etc`, such as `nixos/flake.nix`.
    #[track_caller]
    pub fn nixos_etc_file(&self, alias: &str, rel: &str, content: &str) -> PathBuf {
        self.write(&format!("hosts/{alias}/etc/{rel}"), content)
    }

    /// Runs the built `tool` with `args` as [`World::run`] does, inside the
    /// mount namespace of the local NixOS machine `alias`
    /// ([`World::add_local_nixos`]): a local target's nixos-rebuild moves
    /// that machine's profile and `/run/current-system`, not this one's.
    pub fn run_local_nixos(&self, alias: &str, tool: &str, args: &[&str], stdin: &[u8]) -> Output {
        let dir = self.path(&format!("hosts/{alias}"));
        let mut cmd = crate::nixos::namespaced(&dir, self.tool(tool));
        cmd.args(args)
            .env_clear()
            .envs(self.env())
            .current_dir(self.root());
        self.run_command(&mut cmd, stdin)
    }
}
