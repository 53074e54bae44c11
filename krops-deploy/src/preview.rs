//! Building a system without activating it, and what it would change
//! (`--preview`, `--ask`; README: See what a deploy changes): the shell text each step runs, and the
//! preview as a plain value that a report can carry.
//!
//! The new system is built with `nixos-rebuild build` in a private
//! directory on the build target (its `result` link keeps it from the
//! garbage collector until the directory goes), copied to the target when
//! that is another machine, compared there with the running system, and,
//! when asked to, activated there as nixos-rebuild activates a system it
//! built: `nix-env --profile … --set` for switch and boot, then the
//! system's own `bin/switch-to-configuration OPERATION`.

use anyhow::{bail, Result};
use mktarget::shell::quote;

use crate::watchdog::Paths;

/// What a deploy would change on a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preview {
    /// The running system (`/run/current-system`), when the target has one.
    pub running: Option<String>,
    /// The new system's store path.
    pub new: String,
    /// Whether the new system is not the running one.
    pub differ: bool,
    /// What changes between them, when a tool on the target could say.
    pub diff: Option<Diff>,
}

impl Preview {
    /// The preview as the `--json` results carry it: `{"running", "new",
    /// "differ", "diff": {"tool", "text"} | null}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "running": self.running,
            "new": self.new,
            "differ": self.differ,
            "diff": self.diff.as_ref().map(|diff| serde_json::json!({
                "tool": diff.tool.command(),
                "text": diff.text,
            })),
        })
    }
}

/// What changes, as `tool` printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    pub tool: DiffTool,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffTool {
    /// `nvd diff`
    Nvd,
    /// `nix store diff-closures`
    DiffClosures,
}

impl DiffTool {
    pub fn command(self) -> &'static str {
        match self {
            DiffTool::Nvd => "nvd diff",
            DiffTool::DiffClosures => "nix store diff-closures",
        }
    }
}

/// What a build left on the build target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    /// The private directory holding the `result` link.
    pub dir: String,
    /// The new system's store path.
    pub system: String,
}

/// The build step's script on the build target: `rebuild`, a script that
/// runs `nixos-rebuild build …` (see [`crate::rebuild_script`]), in a new
/// private directory, its output on stderr; stdout gets the directory and
/// the built system, one per line. The directory is removed when the build
/// fails.
pub fn build_script(rebuild: &str) -> String {
    format!(
        "dir=$(mktemp -d \"${{TMPDIR:-/tmp}}/krops-build.XXXXXX\") || exit 1\n\
         cd \"$dir\" || exit 1\n\
         (\n{rebuild}\n) >&2\n\
         status=$?\n\
         if [ \"$status\" = 0 ] && [ -L result ]; then\n\
         \x20 printf '%s\\n' \"$dir\" \"$(readlink -f result)\"\n\
         \x20 exit 0\n\
         fi\n\
         cd / && rm -rf \"$dir\"\n\
         if [ \"$status\" = 0 ]; then\n\
         \x20 echo 'krops-deploy: nixos-rebuild build made no ./result link' >&2\n\
         \x20 exit 1\n\
         fi\n\
         exit \"$status\"\n"
    )
}

/// Reads what [`build_script`] printed.
pub fn parse_built(stdout: &str) -> Result<Built> {
    let mut lines = stdout.lines();
    match (lines.next(), lines.next(), lines.next()) {
        (Some(dir), Some(system), None)
            if dir.starts_with('/') && system.starts_with('/') && dir.contains("krops-build.") =>
        {
            Ok(Built {
                dir: dir.to_owned(),
                system: system.to_owned(),
            })
        }
        _ => bail!("the build printed {stdout:?}, not its directory and the built system"),
    }
}

/// Removes the build's directory (and so its `result` link).
pub fn cleanup_script(built: &Built) -> String {
    format!("rm -rf {}", quote(&built.dir))
}

/// Copies the built system from the build target to the target, as
/// nixos-rebuild's `--target-host` does.
pub fn copy_script(sshopts: Option<&str>, destination: &str, system: &str) -> String {
    let mut script = String::new();
    if let Some(opts) = sshopts {
        script.push_str(&format!("NIX_SSHOPTS={} ", quote(opts)));
    }
    script.push_str(&format!(
        "nix-copy-closure --to {} {}",
        quote(destination),
        quote(system)
    ));
    script
}

/// Runs on the target: prints the running system (an empty line when
/// there is none), then how they compare (`none`, `same`, `differ`, or
/// `nvd`/`nix` followed by that tool's diff). nvd when the target has it,
/// else `nix store diff-closures`.
pub fn diff_script(paths: &Paths, system: &str) -> String {
    format!(
        "new={new} current={current}\n\
         if [ -e \"$current\" ]; then running=$(readlink -f \"$current\"); else running=; fi\n\
         printf '%s\\n' \"$running\"\n\
         if [ -z \"$running\" ]; then echo none; exit 0; fi\n\
         if [ \"$running\" = \"$new\" ]; then echo same; exit 0; fi\n\
         if command -v nvd >/dev/null 2>&1 && text=$(nvd diff \"$running\" \"$new\"); then\n\
         \x20 printf 'nvd\\n%s\\n' \"$text\"\n\
         elif text=$(nix --extra-experimental-features nix-command store diff-closures \"$running\" \"$new\"); then\n\
         \x20 printf 'nix\\n%s\\n' \"$text\"\n\
         else\n\
         \x20 echo differ\n\
         fi\n",
        new = quote(system),
        current = quote(&paths.current_system),
    )
}

/// Reads what [`diff_script`] printed about `system`.
pub fn parse_diff(system: &str, stdout: &str) -> Result<Preview> {
    let mut lines = stdout.splitn(3, '\n');
    let running = lines.next().unwrap_or("");
    let kind = lines.next().unwrap_or("");
    let text = lines.next().unwrap_or("").trim_end().to_owned();
    let running = (!running.is_empty()).then(|| running.to_owned());
    let tool = match kind {
        "none" | "same" | "differ" => None,
        "nvd" => Some(DiffTool::Nvd),
        "nix" => Some(DiffTool::DiffClosures),
        _ => bail!("comparing the systems printed {stdout:?}"),
    };
    Ok(Preview {
        running,
        new: system.to_owned(),
        differ: kind != "same",
        diff: tool.map(|tool| Diff { tool, text }),
    })
}

/// The preview as printed on stdout.
pub fn render(preview: &Preview, on: &str) -> String {
    let mut out = format!(
        "running system: {}\nnew system:     {}\n",
        preview
            .running
            .as_deref()
            .unwrap_or("none (no /run/current-system)"),
        preview.new
    );
    match (&preview.diff, preview.differ, &preview.running) {
        (_, false, _) => out.push_str("no changes: the new system is the running system\n"),
        (Some(diff), true, _) => {
            out.push_str(&format!("changes ({}):\n", diff.tool.command()));
            if !diff.text.is_empty() {
                out.push_str(&diff.text);
                out.push('\n');
            }
        }
        (None, true, Some(_)) => out.push_str(&format!(
            "changes: not shown (neither nvd nor nix store diff-closures worked on {on}); the \
             systems differ\n"
        )),
        (None, true, None) => {}
    }
    out
}

/// Activates `system` on the target as nixos-rebuild would after building
/// it: the system profile gets it for switch and boot, then its
/// `switch-to-configuration` does `operation`.
pub fn activate_script(paths: &Paths, operation: &str, system: &str) -> String {
    let profile = if matches!(operation, "switch" | "boot") {
        format!(
            "nix-env --profile {} --set \"$new\" || exit\n",
            quote(&paths.profile)
        )
    } else {
        String::new()
    };
    format!(
        "new={}\n{profile}\"$new/bin/switch-to-configuration\" {}\n",
        quote(system),
        quote(operation)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::{Command, Output};

    fn sh(script: &str, path: &Path) -> Output {
        Command::new("/bin/sh")
            .args(["-c", script])
            .env("PATH", format!("{}:/usr/bin:/bin", path.display()))
            .output()
            .unwrap()
    }

    use crate::testing::write_executable as write_x;

    fn paths(root: &Path) -> Paths {
        Paths {
            current_system: root.join("current-system").display().to_string(),
            profile: root.join("profiles/system").display().to_string(),
            ..Paths::nixos()
        }
    }

    #[test]
    fn the_build_runs_in_a_private_dir_and_prints_it_and_the_system() {
        let root = tempfile::tempdir().unwrap();
        let out = Command::new("/bin/sh")
            .args(["-c", &build_script("pwd >&2; ln -s /nix/store result")])
            .env("TMPDIR", root.path())
            .current_dir("/")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let built = parse_built(&String::from_utf8(out.stdout).unwrap()).unwrap();
        assert!(built.dir.starts_with(&root.path().display().to_string()));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim_end(),
            Path::new(&built.dir)
                .canonicalize()
                .unwrap()
                .display()
                .to_string()
        );
        assert_eq!(built.system, "/nix/store");
        let removed = sh(&cleanup_script(&built), root.path());
        assert!(removed.status.success() && !Path::new(&built.dir).exists());
        // A failed build leaves nothing behind and keeps its status.
        for (body, code) in [("echo out; exit 3", 3), ("true", 1)] {
            let out = Command::new("/bin/sh")
                .args(["-c", &build_script(body)])
                .env("TMPDIR", root.path())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(code), "{out:?}");
            assert!(out.stdout.is_empty(), "{out:?}");
        }
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
        assert!(parse_built("/tmp/x\n").is_err());
    }

    #[test]
    fn the_diff_compares_with_the_running_system() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let p = paths(root);
        let (old, new) = (root.join("old"), root.join("new"));
        std::fs::create_dir_all(&old).unwrap();
        std::fs::create_dir_all(&new).unwrap();
        let (old, new) = (old.display().to_string(), new.display().to_string());
        let preview = |system: &str| {
            let out = sh(&diff_script(&p, system), &bin);
            assert!(out.status.success(), "{out:?}");
            parse_diff(system, &String::from_utf8(out.stdout).unwrap()).unwrap()
        };
        // No running system.
        let none = preview(&new);
        assert_eq!((none.running.as_deref(), none.differ), (None, true));
        std::os::unix::fs::symlink(&old, &p.current_system).unwrap();
        // The same system.
        let same = preview(&old);
        assert_eq!(
            (same.running.as_deref(), same.differ),
            (Some(old.as_str()), false)
        );
        assert_eq!(same.diff, None);
        // nvd first, when there.
        write_x(
            &bin.join("nvd"),
            "#!/bin/sh\necho \"nvd $1: $2 → $3\"\necho \"<<< $2\"\n",
        );
        let nvd = preview(&new);
        assert_eq!(
            nvd.diff,
            Some(Diff {
                tool: DiffTool::Nvd,
                text: format!("nvd diff: {old} → {new}\n<<< {old}")
            })
        );
        assert!(nvd.differ);
        // Without it, nix's (which fails here: these are not store paths).
        std::fs::remove_file(bin.join("nvd")).unwrap();
        let plain = preview(&new);
        assert_eq!((plain.differ, &plain.diff), (true, &None));
        let text = render(&plain, "alpha");
        assert!(text.contains("not shown"), "{text}");
        assert!(text.starts_with(&format!("running system: {old}\nnew system:     {new}\n")));
    }

    #[test]
    fn activation_sets_the_profile_for_switch_and_boot_only() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        write_x(
            &bin.join("nix-env"),
            "#!/bin/sh\necho \"nix-env $*\" >>\"$LOG\"\n",
        );
        let system = root.join("it's new");
        std::fs::create_dir_all(system.join("bin")).unwrap();
        write_x(
            &system.join("bin/switch-to-configuration"),
            "#!/bin/sh\necho \"switch-to-configuration $*\" >>\"$LOG\"\n",
        );
        let system = system.display().to_string();
        let p = paths(root);
        let log = root.join("log");
        for op in ["switch", "boot", "test", "dry-activate"] {
            let out = Command::new("/bin/sh")
                .args(["-c", &activate_script(&p, op, &system)])
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .env("LOG", &log)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            format!(
                "nix-env --profile {profile} --set {system}\nswitch-to-configuration switch\n\
                 nix-env --profile {profile} --set {system}\nswitch-to-configuration boot\n\
                 switch-to-configuration test\nswitch-to-configuration dry-activate\n",
                profile = p.profile
            )
        );
    }

    #[test]
    fn copy_goes_with_the_targets_ssh_options() {
        assert_eq!(
            copy_script(Some("-p 2222"), "root@[::1]", "/nix/store/x-system"),
            "NIX_SSHOPTS='-p 2222' nix-copy-closure --to 'root@[::1]' /nix/store/x-system"
        );
        assert_eq!(
            copy_script(None, "t", "/nix/store/x"),
            "nix-copy-closure --to t /nix/store/x"
        );
    }

    #[test]
    fn render_says_what_changes() {
        let preview = Preview {
            running: Some("/nix/store/a".into()),
            new: "/nix/store/b".into(),
            differ: true,
            diff: Some(Diff {
                tool: DiffTool::DiffClosures,
                text: "hello: 1.0 → 2.0".into(),
            }),
        };
        assert_eq!(
            render(&preview, "alpha"),
            "running system: /nix/store/a\nnew system:     /nix/store/b\n\
             changes (nix store diff-closures):\nhello: 1.0 → 2.0\n"
        );
        let same = Preview {
            differ: false,
            diff: None,
            new: "/nix/store/a".into(),
            ..preview
        };
        assert!(
            render(&same, "alpha").ends_with("no changes: the new system is the running system\n")
        );
    }
}
