//! The Nix side of the test world: evaluating expressions over this
//! workspace's `lib/` and `pkgs/` with the real `nix-instantiate`, and
//! building krops scripts with the real `nix-build`, without nixpkgs.
//!
//! nixpkgs's `writers.writeDash` is replaced by a stand-in ([`WRITERS_NIX`]):
//! a `derivation` whose builder is `/bin/sh`, writing an executable `#!/bin/sh`
//! script. `krops-rs` is a directory whose `bin/` links to the built tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{Output, World};

/// A stand-in for nixpkgs's `writers`: `writeDash NAME TEXT` is an executable
/// `#!/bin/sh` script in the store, built with `/bin/sh` alone.
pub const WRITERS_NIX: &str = r#"# writers.writeDash of the krops test world (tests/world/nix.rs).
{
  writeDash = name: text: derivation {
    inherit name text;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "printf '#!/bin/sh\\n%s' \"$text\" > \"$out\" && /bin/chmod +x \"$out\"" ];
  };
}
"#;

/// `s` as a Nix string literal (JSON's escapes are Nix's, but `$` is not).
pub fn nix_str(s: &str) -> String {
    serde_json::to_string(s).unwrap().replace("${", "\\${")
}

/// The workspace's own directory, which holds `lib/`, `pkgs/` and `flake.nix`.
pub fn krops_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize()
        .unwrap_or_else(|err| panic!("cannot resolve {}: {err}", dir.display()))
}

impl World {
    /// `nix-instantiate --eval --strict --json` of `expr`, in which `krops` is
    /// the workspace's directory (a string) and `lib` its `lib/`. Runs with the
    /// world's environment (no NIX_PATH: no `<nixpkgs>`).
    pub fn nix_eval(&self, expr: &str) -> Output {
        self.run_command(&mut self.nix_eval_command(expr), b"")
    }

    /// The command [`World::nix_eval`] runs, to change its environment first.
    pub fn nix_eval_command(&self, expr: &str) -> Command {
        let mut cmd = self.command("nix-instantiate");
        cmd.args(["--eval", "--strict", "--json", "--read-write-mode"])
            .arg("--argstr")
            .arg("krops")
            .arg(krops_dir())
            .arg("-E")
            .arg(format!(
                "{{ krops }}: let lib = import (krops + \"/lib\"); in\n{expr}"
            ));
        cmd
    }

    /// [`World::nix_eval`], which must succeed; its JSON value.
    #[track_caller]
    pub fn nix_eval_json(&self, expr: &str) -> Value {
        let out = self.nix_eval(expr);
        out.assert_success();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|err| panic!("nix-instantiate printed no JSON ({err})\n{out}"))
    }

    /// Writes the stand-in `writers.nix` ([`WRITERS_NIX`]) and a `krops-rs/bin/`
    /// linking to the built tools into `root/nix/`; returns `(writers.nix,
    /// krops-rs dir)`, for `import WRITERS` and `krops-rs = "DIR"`.
    #[track_caller]
    pub fn nix_fixtures(&self) -> (PathBuf, PathBuf) {
        let writers = self.write("nix/writers.nix", WRITERS_NIX);
        let bin = self.mkdir("nix/krops-rs/bin");
        for tool in [
            "mktarget",
            "populate",
            "krops-deploy",
            "krops-test",
            "krops-command",
        ] {
            let link = bin.join(tool);
            if !link.exists() {
                std::os::unix::fs::symlink(self.tool(tool), &link)
                    .unwrap_or_else(|err| panic!("cannot link {}: {err}", link.display()));
            }
        }
        (writers, self.path("nix/krops-rs"))
    }

    /// `nix-build --no-out-link FILE -A ATTR`, which must succeed; the store
    /// path it printed.
    #[track_caller]
    pub fn nix_build(&self, file: &Path, attr: &str) -> PathBuf {
        self.nix_build_in(&mut self.command("nix-build"), file, attr)
    }

    /// [`World::nix_build`] with `NIX_PATH` set to `nix_path`.
    #[track_caller]
    pub fn nix_build_with_path(&self, nix_path: &str, file: &Path, attr: &str) -> PathBuf {
        let mut cmd = self.command("nix-build");
        cmd.env("NIX_PATH", nix_path);
        self.nix_build_in(&mut cmd, file, attr)
    }

    #[track_caller]
    fn nix_build_in(&self, cmd: &mut Command, file: &Path, attr: &str) -> PathBuf {
        cmd.arg("--no-out-link").arg(file).args(["-A", attr]);
        let out = self.run_command(cmd, b"");
        out.assert_success();
        let stdout = out.stdout_str();
        let path = stdout.trim_end();
        assert!(
            path.starts_with("/nix/store/") && !path.contains('\n'),
            "nix-build printed no single store path\n{out}"
        );
        PathBuf::from(path)
    }
}
