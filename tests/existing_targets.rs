//! End-to-end: populate and the drivers on targets that already hold an
//! earlier deploy (README: Differences from krops): nothing is written outside the target path
//! (symlinks, `.git` links, backups and sentinels are replaced, never
//! followed), pipes replace their file only when complete and keep its mode
//! and owner, populate's own names are refused, and krops's file sentinels
//! are explained. What a signal leaves is in `interrupts`, messages in
//! `output`, bad input in `hostile`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use krops_tests::{file_text, Tree, World};
use serde_json::{json, Value};

/// A directory outside every target path, with something precious in it
/// and a git checkout, that no run may touch.
struct Canary {
    dir: PathBuf,
    before: Tree,
}

impl Canary {
    fn new(world: &World) -> Canary {
        let dir = world.mkdir("outside");
        world.write("outside/precious.txt", "keep me\n");
        let repo = world.git_repo("outside-repo");
        repo.write("kept.txt", "checkout outside PATH\n");
        repo.commit("outside");
        std::fs::rename(repo.path(), dir.join("checkout")).unwrap();
        let before = Tree::snapshot(&dir);
        Canary { dir, before }
    }

    fn assert_untouched(&self) {
        self.before.assert_unchanged(&Tree::snapshot(&self.dir));
    }
}

/// The sources of each type that make a directory or a file, aimed at a
/// place where an earlier deploy left a symlink to outside PATH.
fn tree_sources(world: &World, run: &str) -> Vec<(&'static str, Value)> {
    world.write("cfg/configuration.nix", "{ }\n");
    let repo = world.git_repo(&format!("nixpkgs-{run}"));
    repo.write("default.nix", "{ }\n");
    let commit = repo.commit("first");
    let pipe = world.write_executable("gen/version", "#!/bin/sh\necho 24.05\n");
    let single = world.write("single/hosts.nix", "{ hosts = 1; }\n");
    vec![
        ("file", json!({"file": world.path("cfg").to_str().unwrap()})),
        ("git", json!({"git": {"url": repo.url(), "ref": commit}})),
        ("pipe", json!({"pipe": pipe.to_str().unwrap()})),
        ("single file", json!({"file": single.to_str().unwrap()})),
    ]
}

#[test]
fn a_symlink_to_outside_is_replaced_not_followed() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    for (local, target_of) in [
        (true, world.path("local/src")),
        (false, world.path("remote/src")),
    ] {
        for (kind, source) in tree_sources(&world, if local { "local" } else { "remote" }) {
            let canary = Canary::new(&world);
            let target = if local {
                target_of.to_str().unwrap().to_owned()
            } else {
                alpha.target("root", &target_of)
            };
            // An earlier deploy: nixos-config was a symlink to outside PATH.
            let first = json!({"nixos-config": {"symlink": canary.dir.to_str().unwrap()}});
            world
                .populate(&target, &["--force"], &first)
                .assert_success();
            let link = target_of.join("nixos-config");
            assert!(link.is_symlink());
            let out = world.populate(&target, &[], &json!({"nixos-config": source}));
            out.assert_success()
                .assert_stderr_contains("replacing the symlink at");
            canary.assert_untouched();
            assert!(
                !link.is_symlink(),
                "{kind}: the symlink is still there (local: {local})"
            );
            std::fs::remove_dir_all(&canary.dir).unwrap();
        }
    }
}

#[test]
fn a_symlink_within_path_is_replaced_and_its_target_kept() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    world.write("a-src/a.txt", "a\n");
    world.write("b-src/b.txt", "b\n");
    let a = json!({"file": world.path("a-src").to_str().unwrap()});
    world
        .populate(
            &target,
            &["--force"],
            &json!({"a": a, "b": {"symlink": "a"}}),
        )
        .assert_success();
    let b = json!({"file": world.path("b-src").to_str().unwrap()});
    world
        .populate(&target, &[], &json!({"a": a, "b": b}))
        .assert_success();
    assert_eq!(file_text(&dest.join("a/a.txt")), "a\n", "b wiped a");
    assert_eq!(file_text(&dest.join("b/b.txt")), "b\n");
    assert!(!dest.join("a/b.txt").exists(), "b was written into a");
}

#[test]
fn a_directory_where_a_link_or_file_goes_is_replaced() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    world.write("tree/x.nix", "{ }\n");
    let tree = json!({"file": world.path("tree").to_str().unwrap()});
    let pipe = world.write_executable("gen/out", "#!/bin/sh\necho piped\n");
    world
        .populate(&target, &["--force"], &json!({"l": tree, "p": tree}))
        .assert_success();
    let out = world.populate(
        &target,
        &[],
        &json!({"l": {"symlink": "elsewhere"}, "p": {"pipe": pipe.to_str().unwrap()}}),
    );
    out.assert_success()
        .assert_stderr_contains("replacing the directory at alpha:");
    assert_eq!(
        std::fs::read_link(dest.join("l")).unwrap(),
        Path::new("elsewhere")
    );
    assert_eq!(file_text(&dest.join("p")), "piped\n");
}

#[test]
fn a_failing_pipe_leaves_the_previous_file() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    for dest in [world.path("local/src"), world.path("remote/src")] {
        let target = if dest.ends_with("local/src") {
            dest.to_str().unwrap().to_owned()
        } else {
            alpha.target("root", &dest)
        };
        let good = world.write_executable("gen/good", "#!/bin/sh\necho complete output\n");
        world
            .populate(
                &target,
                &["--force"],
                &json!({"version": {"pipe": good.to_str().unwrap()}}),
            )
            .assert_success();
        let bad = world.write_executable(
            "gen/bad",
            "#!/bin/sh\necho partial\necho 'generator broke' >&2\nexit 3\n",
        );
        let out = world.populate(
            &target,
            &[],
            &json!({"version": {"pipe": bad.to_str().unwrap()}}),
        );
        out.assert_failure()
            .assert_stderr_contains("source version (pipe)")
            .assert_stderr_contains("generator broke")
            .assert_stderr_contains("exit status 3");
        assert_eq!(file_text(&dest.join("version")), "complete output\n");
        let leftovers: Vec<_> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.contains("pipe"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }
    let tmp: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
    assert!(tmp.is_empty(), "local temp files left: {tmp:?}");
}

#[test]
fn populate_s_own_names_are_refused() {
    let world = World::new();
    let dest = world.mkdir("src");
    world.write("src/.populate", "");
    world.write("cfg/x", "x\n");
    let before = Tree::snapshot(&dest);
    for name in [".populate", ".populate-pipe.x"] {
        let out = world.populate(
            dest.to_str().unwrap(),
            &[],
            &json!({name: {"file": world.path("cfg").to_str().unwrap()}}),
        );
        out.assert_failure()
            .assert_stderr_contains(&format!("sources.{name:?}"));
    }
    before.assert_unchanged(&Tree::snapshot(&dest));
}

#[test]
fn force_backup_turns_krops_s_file_sentinel_into_a_directory() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    // A krops-managed host: an empty file sentinel and an earlier deploy.
    world.write("remote/src/.populate", "");
    world.write("remote/src/old/config.nix", "old\n");
    world.write("cfg/config.nix", "new, longer\n");
    let sources = json!({"old": {"file": world.path("cfg").to_str().unwrap()}});
    let out = world.populate(&target, &["--backup"], &sources);
    out.assert_failure()
        .assert_stderr_contains("is a file")
        .assert_stderr_contains("--force --backup");
    assert_eq!(file_text(&dest.join("old/config.nix")), "old\n");
    let out = world.populate(&target, &["--force", "--backup"], &sources);
    out.assert_success();
    assert!(dest.join(".populate").is_dir());
    assert_eq!(
        file_text(&dest.join(".populate/backup/old/config.nix")),
        "old\n"
    );
    assert_eq!(file_text(&dest.join("old/config.nix")), "new, longer\n");
    // A sentinel file with content is not thrown away.
    world.write("other/.populate", "notes\n");
    let other = world.path("other");
    let out = world.populate(
        &alpha.target("root", &other),
        &["--force", "--backup"],
        &sources,
    );
    out.assert_failure().assert_stderr_contains("is not empty");
    assert_eq!(file_text(&other.join(".populate")), "notes\n");
}

#[test]
fn a_dry_run_plan_prints_krops_s_line_for_a_missing_sentinel() {
    let world = World::new();
    let dest = world.mkdir("src");
    let out = world.populate(
        dest.to_str().unwrap(),
        &["--dry-run"],
        &json!({"l": {"symlink": "x"}}),
    );
    out.assert_success();
    let plan = world.write("plan.sh", out.stdout_str());
    let out = world.sh(&format!("sh {}", plan.display()));
    out.assert_failure().assert_stderr_contains(&format!(
        "error: missing sentinel file: {}/.populate",
        dest.display()
    ));
    assert!(!dest.join("l").exists());
}

#[test]
fn a_git_source_never_follows_a_dot_git_link_or_gitdir_file() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let repo = world.git_repo("nixpkgs");
    repo.write("default.nix", "{ }\n");
    let commit = repo.commit("first");
    let source = json!({"nixpkgs": {"git": {"url": repo.url(), "ref": commit}}});
    let cases = [("symlink", true), ("gitdir file", true), ("symlink", false)];
    for (i, (kind, local)) in cases.into_iter().enumerate() {
        let canary = Canary::new(&world);
        let dest = world.path(&format!("src-{i}"));
        let target = if local {
            dest.to_str().unwrap().to_owned()
        } else {
            alpha.target("root", &dest)
        };
        std::fs::create_dir_all(dest.join("nixpkgs")).unwrap();
        std::fs::write(dest.join(".populate"), "").unwrap();
        let outside_git = canary.dir.join("checkout/.git");
        if kind == "symlink" {
            std::os::unix::fs::symlink(&outside_git, dest.join("nixpkgs/.git")).unwrap();
        } else {
            let gitdir = format!("gitdir: {}\n", outside_git.display());
            std::fs::write(dest.join("nixpkgs/.git"), gitdir).unwrap();
        }
        world
            .populate(&target, &[], &source)
            .assert_success()
            .assert_stderr_contains("it is not a git checkout of its own");
        canary.assert_untouched();
        let git = dest.join("nixpkgs/.git");
        assert!(git.is_dir() && !git.is_symlink(), "{kind}: no checkout");
        assert_eq!(file_text(&dest.join("nixpkgs/default.nix")), "{ }\n");
        std::fs::remove_dir_all(&canary.dir).unwrap();
    }
}

#[test]
fn a_symlinked_sentinel_is_never_followed() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let link = json!({"l": {"symlink": "x"}});
    for (i, flags) in [
        &[][..],
        &["--backup"],
        &["--force"],
        &["--force", "--backup"],
    ]
    .into_iter()
    .enumerate()
    {
        for dangling in [false, true] {
            let canary = Canary::new(&world);
            let dest = world.path(&format!("src-{i}-{dangling}"));
            std::fs::create_dir_all(&dest).unwrap();
            let pointee = if dangling {
                canary.dir.join("not-yet")
            } else {
                canary.dir.clone()
            };
            std::os::unix::fs::symlink(&pointee, dest.join(".populate")).unwrap();
            let out = world.populate(&alpha.target("root", &dest), flags, &link);
            canary.assert_untouched();
            assert!(!pointee.exists() || !dangling, "{flags:?}: written through");
            let sentinel = std::fs::symlink_metadata(dest.join(".populate")).unwrap();
            if flags.contains(&"--force") {
                out.assert_success()
                    .assert_stderr_contains("replacing the symlink at alpha:");
                assert!(!sentinel.is_symlink(), "{flags:?}: still a symlink");
                assert_eq!(sentinel.is_dir(), flags.contains(&"--backup"));
                assert!(dest.join("l").is_symlink());
            } else {
                out.assert_failure();
                let stderr = out.stderr_str();
                assert_eq!(
                    stderr
                        .matches("is a symlink, which populate does not follow")
                        .count(),
                    1,
                    "{flags:?}: {stderr}"
                );
                assert!(stderr.contains("nothing was synced"), "{stderr}");
                assert!(sentinel.is_symlink());
                assert!(!dest.join("l").exists());
            }
            std::fs::remove_dir_all(&canary.dir).unwrap();
        }
    }
}

#[test]
fn a_backup_never_follows_a_symlinked_backup_dir() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let canary = Canary::new(&world);
    let dest = world.path("src");
    std::fs::create_dir_all(dest.join(".populate")).unwrap();
    std::os::unix::fs::symlink(&canary.dir, dest.join(".populate/backup")).unwrap();
    world.write("src/old.txt", "old\n");
    world
        .populate(
            &alpha.target("root", &dest),
            &["--backup"],
            &json!({"l": {"symlink": "x"}}),
        )
        .assert_success();
    canary.assert_untouched();
    assert_eq!(file_text(&dest.join(".populate/backup/old.txt")), "old\n");
}

#[test]
fn a_derivation_replaces_a_symlink_that_leads_out_of_the_store() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let canary = Canary::new(&world);
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    let derivation = r#"builtins.derivation {
  name = "krops-fixture";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo built by nix > $out" ];
}"#;
    let first = json!({"result": {"symlink": canary.dir.to_str().unwrap()}});
    world
        .populate(&target, &["--force"], &first)
        .assert_success();
    let second = json!({"result": {"derivation": derivation}});
    world
        .populate(&target, &[], &second)
        .assert_success()
        .assert_stderr_contains("replacing the symlink at alpha:");
    canary.assert_untouched();
    let out_link = std::fs::read_link(dest.join("result")).unwrap();
    assert!(
        out_link.starts_with("/nix/store/"),
        "{}",
        out_link.display()
    );
    assert_eq!(file_text(&dest.join("result")), "built by nix\n");
    // A second run keeps its own out link without a word.
    let out = world.populate(&target, &[], &second);
    out.assert_success();
    assert!(!out.stderr_str().contains("replacing"), "{out:?}");
}

#[test]
fn a_pipe_keeps_the_mode_and_owner_of_the_file_it_replaces() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let user = world.sudo_user();
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    let first = world.write_executable("gen/one", "#!/bin/sh\necho one\n");
    let second = world.write_executable("gen/two", "#!/bin/sh\necho two\n");
    let sources = |cmd: &Path| json!({"version": {"pipe": cmd.to_str().unwrap()}});
    world
        .populate(&target, &["--force"], &sources(&first))
        .assert_success();
    let file = dest.join("version");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    world
        .sh(&format!("chown {user}:{user} {}", file.display()))
        .assert_success();
    let before = std::fs::metadata(&file).unwrap();
    world
        .populate(&target, &[], &sources(&second))
        .assert_success();
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!(file_text(&file), "two\n");
    assert_eq!(after.mode() & 0o7777, 0o640);
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));

    // A new file gets the same mode from a run and from its dry-run plan.
    let real = world.path("real");
    let planned = world.path("planned");
    world
        .populate(real.to_str().unwrap(), &["--force"], &sources(&first))
        .assert_success();
    let plan = world.populate(
        planned.to_str().unwrap(),
        &["--force", "--dry-run"],
        &sources(&first),
    );
    plan.assert_success();
    let script = world.write("plan.sh", plan.stdout_str());
    world
        .sh(&format!("sh {}", script.display()))
        .assert_success();
    let mode = |dir: &Path| std::fs::metadata(dir.join("version")).unwrap().mode() & 0o777;
    assert_eq!(file_text(&planned.join("version")), "one\n");
    assert_eq!(mode(&planned), mode(&real));
}

#[test]
fn a_pipe_source_with_a_name_of_255_bytes_lands() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let name = "v".repeat(255);
    let cmd = world.write_executable("gen/v", "#!/bin/sh\necho long\n");
    world
        .populate(
            &alpha.target("root", &dest),
            &["--force"],
            &json!({ name.clone(): {"pipe": cmd.to_str().unwrap()} }),
        )
        .assert_success();
    assert_eq!(file_text(&dest.join(&name)), "long\n");
}

#[test]
fn missing_and_file_sentinels_are_explained_once() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.mkdir("src");
    let target = alpha.target("root", &dest);
    let link = json!({"l": {"symlink": "x"}});
    let out = world.populate(&target, &[], &link);
    out.assert_failure()
        .assert_stderr_contains("or run with --force");
    assert_eq!(
        out.stderr_str().matches("sentinel file").count(),
        1,
        "{out:?}"
    );
    std::fs::write(dest.join(".populate"), "").unwrap();
    let out = world.populate(&target, &["--backup"], &link);
    out.assert_failure();
    assert_eq!(
        out.stderr_str()
            .matches("--backup needs a directory")
            .count(),
        1,
        "{out:?}"
    );
    assert!(!dest.join("l").exists());
}

/// A file system mounted at `PATH/NAME` (another user's, or of no use to a
/// git source) is never replaced: `rm -fR` emptied it, then failed on the
/// busy mount point. The run fails saying so and leaves what is in it.
#[test]
fn a_mount_point_at_a_sources_place_is_never_emptied() {
    let world = World::new();
    world.write("dest/.populate", "");
    world.write("tree/a", "a\n");
    let origin = world.git_repo("origin");
    origin.write("default.nix", "{ }\n");
    origin.commit("first");
    let pipe = world.write_executable("gen", "#!/bin/sh\necho hi\n");
    let cases = [
        (
            "foreign",
            json!({"file": world.path("tree").to_str().unwrap()}),
        ),
        ("file", json!({"pipe": pipe.to_str().unwrap()})),
        ("git", json!({"git": {"url": origin.url(), "ref": "main"}})),
    ];
    for (name, source) in cases {
        let at = world.mkdir(&format!("dest/{name}"));
        let _mount = world.mount_tmpfs(&at);
        fs::write(at.join("precious"), "precious\n").unwrap();
        if name == "foreign" {
            world.chown_to_sudo_user(&at);
        }
        let out = world.run(
            "populate",
            &["--target", world.path("dest").to_str().unwrap()],
            json!({ name: source }).to_string().as_bytes(),
        );
        out.assert_failure()
            .assert_stderr_contains(&format!("{} is a mount point", at.display()));
        assert_eq!(
            fs::read_to_string(at.join("precious")).ok().as_deref(),
            Some("precious\n"),
            "{name}: {out}"
        );
    }
}
