//! End-to-end: a git source owns `PATH/NAME` and nothing else (README:
//! Sources, git): git never finds a repository above it, whatever stands there
//! becomes a fresh checkout, a deploy leaves the checkout and its submodules
//! exactly at the commit, and a failure names the command that failed. On a
//! local target, over ssh and with sudo, against the real git.

use std::path::{Path, PathBuf};

use krops_tests::{git_head, GitRepo, Tree, World};
use serde_json::{json, Value};

/// Runs `git ARGS…` in `dir` (a checkout a tool made) and returns its stdout,
/// trimmed.
#[track_caller]
fn git_in(world: &World, dir: &Path, args: &[&str]) -> String {
    let mut cmd = world.command("git");
    cmd.args(["-c", "safe.directory=*", "-C"])
        .arg(dir)
        .args(args);
    let out = world.run_command(&mut cmd, b"");
    out.assert_success();
    out.stdout_str().trim_end().to_owned()
}

/// The three ways to reach the target: `(how, target)`, where `path_of(how)`
/// is the target path of each.
fn targets(world: &World, path_of: impl Fn(&str) -> PathBuf) -> Vec<(&'static str, String)> {
    let alpha = world.add_host("alpha");
    ["local", "ssh", "sudo"]
        .into_iter()
        .map(|how| {
            let path = path_of(how);
            let target = match how {
                "local" => path.to_str().unwrap().to_owned(),
                "ssh" => alpha.target("root", &path),
                _ => json!({"user": world.sudo_user(), "host": "alpha",
                            "path": path.to_str().unwrap(), "sudo": true})
                .to_string(),
            };
            (how, target)
        })
        .collect()
}

/// Runs `git ARGS…` with the world's environment, panicking unless it succeeds.
#[track_caller]
fn git(world: &World, args: &[&str], dir: &Path) {
    world
        .run_command(world.command("git").args(args).arg(dir), b"")
        .assert_success();
}

/// Asserts that `dir` is a fresh checkout of its own at `commit`: its git dir
/// is exactly `dir/.git`, nothing modified, nothing untracked.
#[track_caller]
fn assert_fresh_checkout(world: &World, dir: &Path, commit: &str, what: &str) {
    let git_dir = dir.join(".git");
    let meta = std::fs::symlink_metadata(&git_dir)
        .unwrap_or_else(|err| panic!("{what}: no {}: {err}", git_dir.display()));
    assert!(meta.is_dir(), "{what}: .git is not a directory");
    assert_eq!(
        git_in(world, dir, &["rev-parse", "--absolute-git-dir"]),
        git_dir.canonicalize().unwrap().to_str().unwrap(),
        "{what}: git finds another repository"
    );
    assert_eq!(git_head(dir), commit, "{what}: not at the commit");
    assert_eq!(
        git_in(
            world,
            dir,
            &[
                "status",
                "--porcelain",
                "--ignored",
                "--ignore-submodules=none"
            ]
        ),
        "",
        "{what}: the checkout is not clean"
    );
}

/// A git work tree around the target path, as an etckeeper `/etc` around
/// `/etc/krops` or a home directory in git: tracked files, an edit not yet
/// committed, one staged, an untracked file. Returns it and its target path
/// `srv/src` (untracked in it).
fn outer_repo(world: &World, name: &str) -> (GitRepo, PathBuf) {
    let outer = world.git_repo(name);
    outer.write("fstab", "tracked\n");
    outer.write("hosts", "tracked too\n");
    outer.commit("etckeeper");
    outer.write("fstab", "tracked, edited, not committed\n");
    outer.write("hosts", "staged\n");
    outer.git(&["add", "hosts"]);
    outer.write("untracked.conf", "untracked\n");
    outer.git(&["remote", "add", "backup", "/nowhere"]);
    let path = outer.path().join("srv/src");
    std::fs::create_dir_all(&path).unwrap();
    (outer, path)
}

/// Everything of the outer repo but its target path, bytes, modes and owners:
/// HEAD, index, refs, config, objects, work tree.
fn outside_path(outer: &GitRepo) -> Tree {
    let mut tree = Tree::snapshot(outer.path());
    tree.0
        .retain(|path, _| path != "srv" && !path.starts_with("srv/"));
    tree
}

/// The three ways to reach the target (as [`targets`]), each with its target
/// path in an outer repo `etc-HOW` of its own: `(how, target, outer, path)`.
fn targets_in_outer_repos(world: &World) -> Vec<(&'static str, String, GitRepo, PathBuf)> {
    let outers: Vec<(GitRepo, PathBuf)> = ["local", "ssh", "sudo"]
        .iter()
        .map(|how| outer_repo(world, &format!("etc-{how}")))
        .collect();
    let path_of = |how: &str| {
        let at = ["local", "ssh", "sudo"]
            .iter()
            .position(|h| *h == how)
            .unwrap();
        outers[at].1.clone()
    };
    let targets = targets(world, path_of);
    targets
        .into_iter()
        .zip(outers)
        .map(|((how, target), (outer, path))| (how, target, outer, path))
        .collect()
}

/// The README's filter example (`*.nix`, `*/`, nothing else) of a directory
/// that is a git checkout: the directories of its `.git`, empty.
fn filter_example(dir: &Path) -> Value {
    json!({"file": {"path": dir.to_str().unwrap(), "filters": [
        {"type": "include", "pattern": "*.nix"}, {"type": "include", "pattern": "*/"},
        {"type": "exclude", "pattern": "*"}]}})
}

/// Reliability (Interrupt): a clone cut short, an empty `.git`, the `.git` skeleton a filtered file source leaves, inside a git work tree around PATH (local, ssh, sudo) → each replaced by a fresh checkout; the outer repo's HEAD, index, refs, config and files byte-identical
#[test]
fn a_dot_git_that_is_no_repository_never_leads_git_to_a_parent_repository() {
    let world = World::new();
    let origin = world.git_repo("origin");
    origin.write("default.nix", "{ }\n");
    origin.write(".gitignore", "result\n");
    let commit = origin.commit("first");
    let other = world.git_repo("other-origin");
    other.write("other.nix", "{ other = true; }\n");
    other.commit("another origin's");
    let modules = world.git_repo("modules");
    modules.write("module.nix", "{ }\n");
    modules.commit("a local checkout a file source syncs");
    // Every shape at PATH/NAME, each a name of its own in one run.
    let shapes = [
        "empty-dot-git",
        "junk-in-dot-git",
        "half-cloned",
        "filter-skeleton",
        "work-tree-elsewhere",
        "empty-repository",
        "other-origin",
    ];
    let git_source = json!({"git": {"url": origin.url(), "ref": "main"}});
    for (how, target, outer, path) in targets_in_outer_repos(&world) {
        let (outer, path) = (&outer, &path);
        let before = outside_path(outer);
        let p = |shape: &str| path.join(shape);
        std::fs::create_dir_all(p("empty-dot-git").join(".git")).unwrap();
        std::fs::create_dir_all(p("junk-in-dot-git").join(".git/objects")).unwrap();
        std::fs::write(p("junk-in-dot-git").join(".git/junk"), "junk\n").unwrap();
        // A clone cut short before it wrote HEAD and its refs: config and
        // objects, no repository git accepts.
        let half = p("half-cloned");
        git(&world, &["clone", "-q", &origin.url()], &half);
        std::fs::remove_file(half.join(".git/HEAD")).unwrap();
        std::fs::remove_dir_all(half.join(".git/refs")).unwrap();
        git(&world, &["init", "-q"], &p("empty-repository"));
        git(&world, &["clone", "-q", &other.url()], &p("other-origin"));
        // A repository whose work tree is the one around PATH.
        let elsewhere = p("work-tree-elsewhere");
        git(&world, &["clone", "-q", &origin.url()], &elsewhere);
        git_in(
            &world,
            &elsewhere,
            &["config", "core.worktree", outer.path().to_str().unwrap()],
        );
        world
            .populate(
                &target,
                &["--force"],
                &json!({"filter-skeleton": filter_example(modules.path())}),
            )
            .assert_success();
        assert!(
            p("filter-skeleton/.git/refs").is_dir(),
            "{how}: no skeleton"
        );
        assert!(
            !p("filter-skeleton/.git/HEAD").exists(),
            "{how}: not a skeleton"
        );

        let sources: serde_json::Map<String, Value> = shapes
            .iter()
            .map(|shape| (shape.to_string(), git_source.clone()))
            .collect();
        let out = world.populate(&target, &[], &Value::Object(sources.clone()));
        before.assert_unchanged(&outside_path(outer));
        out.assert_success();
        let stderr = out.stderr_str();
        // The first five are no checkout of their own; the other two are
        // reused.
        assert_eq!(
            stderr
                .matches("it is not a git checkout of its own")
                .count(),
            5,
            "{how}: {stderr}"
        );
        for shape in shapes {
            assert_fresh_checkout(&world, &p(shape), &commit, &format!("{how}: {shape}"));
            assert!(!p(shape).join("other.nix").exists(), "{how}: {shape}");
        }
        // Deployed again, nothing is replaced and nothing outside changes.
        let out = world.populate(&target, &[], &Value::Object(sources));
        out.assert_success();
        assert!(
            !out.stderr_str().contains("replacing"),
            "{}",
            out.stderr_str()
        );
        before.assert_unchanged(&outside_path(outer));
    }
}

#[test]
fn a_git_dir_in_the_environment_never_leads_git_to_another_repository() {
    // populate run from a git hook (or `git rebase --exec`) of the outer
    // repo inherits GIT_DIR, GIT_WORK_TREE and GIT_INDEX_FILE; on a local
    // target its script would hand them to every git command it runs. What
    // a user configures through the environment (here a URL rewrite, as CI
    // passes credentials) still reaches git.
    let world = World::new();
    let origin = world.git_repo("origin");
    origin.write("default.nix", "{ }\n");
    let commit = origin.commit("first");
    let (outer, path) = outer_repo(&world, "etc");
    let before = outside_path(&outer);
    let git_dir = outer.path().join(".git");
    let url = "https://git.example.invalid/origin";
    let sources = json!({"n": {"git": {"url": url, "ref": "main"}}});
    for run in ["first", "again"] {
        let mut cmd = world.command(world.tool("populate"));
        cmd.args(["--target", path.to_str().unwrap(), "--force"])
            .env("GIT_DIR", &git_dir)
            .env("GIT_WORK_TREE", outer.path())
            .env("GIT_INDEX_FILE", git_dir.join("index"))
            .env("GIT_CONFIG_COUNT", "1")
            .env(
                "GIT_CONFIG_KEY_0",
                format!("url.{}.insteadOf", origin.url()),
            )
            .env("GIT_CONFIG_VALUE_0", url);
        let out = world.run_command(&mut cmd, sources.to_string().as_bytes());
        before.assert_unchanged(&outside_path(&outer));
        out.assert_success();
        assert_fresh_checkout(&world, &path.join("n"), &commit, run);
    }
}

#[test]
fn a_checkout_git_refuses_for_its_owner_is_replaced_or_the_failing_command_named() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let user = world.sudo_user();
    let origin = world.git_repo("origin");
    origin.write("default.nix", "{ }\n");
    let commit = origin.commit("first");
    let sources = json!({"n": {"git": {"url": origin.url(), "ref": "main"}}});

    // The checkout is the sudo test user's, and root deploys: git refuses
    // it (dubious ownership), so root replaces it with a checkout of its own
    // (the claim of PATH/NAME does, as for any directory of another user).
    let path = world.mkdir("users-then-roots");
    world.chown_to_sudo_user(&path);
    world
        .populate(&alpha.target(user, &path), &["--force"], &sources)
        .assert_success();
    let out = world.populate(&alpha.target("root", &path), &[], &sources);
    out.assert_success()
        .assert_stderr_contains("it belongs to another user");
    assert!(!out.stderr_str().contains("git remote add"), "{out}");
    assert_fresh_checkout(&world, &path.join("n"), &commit, "root's");
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path.join("n/.git/HEAD")).unwrap());
    assert_eq!(owner, 0, "not root's own checkout");

    // root's checkout, and the user deploys without sudo: it cannot replace
    // it, and the error names what failed, not `git remote add`.
    let path = world.mkdir("roots-then-users");
    world.chown_to_sudo_user(&path);
    world
        .populate(&alpha.target("root", &path), &["--force"], &sources)
        .assert_success();
    world.chown_to_sudo_user(&path.join(".populate-lock"));
    let before = Tree::snapshot(&path.join("n"));
    let out = world.populate(&alpha.target(user, &path), &[], &sources);
    out.assert_failure()
        .assert_stderr_contains("source n (git)")
        .assert_stderr_contains("it belongs to another user")
        .assert_stderr_contains(&format!("`rm -fR {}/n` failed", path.display()));
    assert!(!out.stderr_str().contains("git remote add"), "{out}");
    before.assert_unchanged(&Tree::snapshot(&path.join("n")));
}

#[test]
fn turning_shallow_off_deepens_the_checkout() {
    let world = World::new();
    let origin = world.git_repo("origin");
    for n in 1..=3 {
        origin.write("n", format!("{n}\n"));
        origin.commit(&format!("commit {n}"));
    }
    let parent = origin.git(&["rev-parse", "main~1"]);
    // A shallow fetch needs a URL git fetches over a protocol.
    let source = |git_ref: &str, shallow: bool| json!({"n": {"git": {"url": origin.file_url(), "ref": git_ref, "shallow": shallow}}});
    for (how, target) in targets(&world, |how| world.path(&format!("{how}/src"))) {
        let dest = world.path(&format!("{how}/src/n"));
        world
            .populate(&target, &["--force"], &source("main", true))
            .assert_success();
        assert_eq!(
            git_in(&world, &dest, &["rev-parse", "--is-shallow-repository"]),
            "true",
            "{how}: the first deploy is shallow"
        );
        world
            .populate(&target, &[], &source("main~1", false))
            .assert_success();
        assert_fresh_checkout(&world, &dest, &parent, how);
        assert_eq!(
            git_in(&world, &dest, &["rev-parse", "--is-shallow-repository"]),
            "false",
            "{how}: shallow is off"
        );
        // A ref beyond origin's history names the source and the command.
        let out = world.populate(&target, &[], &source("main~9", false));
        out.assert_failure()
            .assert_stderr_contains("source n (git)")
            .assert_stderr_contains("`git rev-parse --verify FETCH_HEAD~9^{commit}` failed");
    }
}

/// Asserts that the (sub)module checkout at `dir` is at `commit` with nothing
/// modified, staged, untracked or ignored in it.
#[track_caller]
fn assert_clean(world: &World, dir: &Path, commit: &str, what: &str) {
    assert_eq!(git_head(dir), commit, "{what}: not at the commit");
    assert_eq!(
        git_in(
            world,
            dir,
            &[
                "status",
                "--porcelain",
                "--ignored",
                "--ignore-submodules=none"
            ]
        ),
        "",
        "{what}: not clean"
    );
}

#[test]
fn local_changes_in_a_checkout_and_its_submodules_do_not_survive_a_deploy() {
    let world = World::new();
    let inner = world.git_repo("inner");
    inner.write("inner.nix", "{ inner = 1; }\n");
    let inner_commit = inner.commit("inner");
    let lib = world.git_repo("lib");
    lib.write("lib.nix", "{ v = 1; }\n");
    lib.write(".gitignore", "result\n");
    lib.add_submodule(&inner, "inner");
    let lib_v1 = lib.commit("lib v1 with inner");
    let repo = world.git_repo("main-repo");
    repo.write("default.nix", "import ./lib/lib.nix\n");
    repo.add_submodule(&lib, "lib");
    let first = repo.commit("with lib v1");
    // Origin moves lib on, changing the file the target has edited.
    lib.write("lib.nix", "{ v = 2; }\n");
    let lib_v2 = lib.commit("lib v2");
    repo.git(&["-C", "lib", "pull", "-q", "origin", "main"]);
    repo.git(&["add", "lib"]);
    let second = repo.commit("with lib v2");
    // And then drops it.
    repo.git(&["rm", "-q", "lib"]);
    let third = repo.commit("without lib");
    let source = |commit: &str| json!({"n": {"git": {"url": repo.url(), "ref": commit}}});

    for (how, target) in targets(&world, |how| world.path(&format!("{how}/src"))) {
        let p = world.path(&format!("{how}/src/n"));
        world
            .populate(&target, &["--force"], &source(&first))
            .assert_success();
        let mess = |first_edit: &str| {
            std::fs::write(p.join("default.nix"), first_edit).unwrap();
            std::fs::write(p.join("untracked"), "x\n").unwrap();
            git(&world, &["init", "-q"], &p.join("stray-repo"));
            std::fs::write(p.join("lib/lib.nix"), "{ v = \"local\"; }\n").unwrap();
            std::fs::write(p.join("lib/staged"), "x\n").unwrap();
            git_in(&world, &p.join("lib"), &["add", "staged"]);
            std::fs::write(p.join("lib/untracked"), "x\n").unwrap();
            std::fs::write(p.join("lib/result"), "ignored\n").unwrap();
            std::fs::write(p.join("lib/inner/inner.nix"), "{ }\n").unwrap();
            std::fs::write(p.join("lib/inner/untracked"), "x\n").unwrap();
        };

        // The same commit again: everything is reset and cleaned.
        mess("edited on the target\n");
        world
            .populate(&target, &[], &source(&first))
            .assert_success();
        assert_clean(&world, &p, &first, &format!("{how}: checkout"));
        assert!(!p.join("stray-repo").exists(), "{how}: an untracked repo");
        assert_clean(&world, &p.join("lib"), &lib_v1, &format!("{how}: lib"));
        assert_clean(&world, &p.join("lib/inner"), &inner_commit, how);
        // Nothing to do: nothing written, .git and the submodules' included.
        let before = Tree::snapshot(&p);
        world
            .populate(&target, &[], &source(&first))
            .assert_success();
        before.assert_unchanged(&Tree::snapshot(&p));

        // A new commit that moves lib over its local edits.
        mess("edited again\n");
        world
            .populate(&target, &[], &source(&second))
            .assert_success();
        assert_clean(&world, &p, &second, &format!("{how}: checkout"));
        assert_clean(&world, &p.join("lib"), &lib_v2, &format!("{how}: lib v2"));
        assert_eq!(
            std::fs::read_to_string(p.join("lib/lib.nix")).unwrap(),
            "{ v = 2; }\n"
        );
        assert_clean(&world, &p.join("lib/inner"), &inner_commit, how);

        // A commit without lib: its checkout goes with it.
        world
            .populate(&target, &[], &source(&third))
            .assert_success();
        assert_clean(&world, &p, &third, &format!("{how}: without lib"));
        assert!(
            !p.join("lib").exists(),
            "{how}: the dropped submodule stays"
        );
    }
}

#[test]
fn a_broken_checkout_is_replaced_or_fails_naming_the_source_and_the_command() {
    let world = World::new();
    let origin = world.git_repo("origin");
    origin.write("default.nix", "{ }\n");
    let commit = origin.commit("first");
    let git_source = json!({"git": {"url": origin.url(), "ref": "main"}});
    for (how, target, outer, path) in targets_in_outer_repos(&world) {
        let (outer, path) = (&outer, &path);
        let before = outside_path(outer);
        let names = ["bad-head", "bad-config", "bad-ref", "bad-index"];
        let all: serde_json::Map<String, Value> = names
            .iter()
            .map(|name| (name.to_string(), git_source.clone()))
            .collect();
        world
            .populate(&target, &["--force"], &Value::Object(all))
            .assert_success();
        let p = |name: &str| path.join(name);
        std::fs::write(p("bad-head/.git/HEAD"), "garbage\n").unwrap();
        std::fs::write(p("bad-config/.git/config"), "[[[\n").unwrap();
        std::fs::write(p("bad-ref/.git/refs/heads/main"), "garbage\n").unwrap();
        std::fs::write(p("bad-index/.git/index"), "garbage\n").unwrap();

        // git no longer sees a repository there: a fresh checkout.
        let sources = json!({"bad-head": git_source, "bad-config": git_source});
        let out = world.populate(&target, &[], &sources);
        before.assert_unchanged(&outside_path(outer));
        out.assert_success();
        for name in ["bad-head", "bad-config"] {
            assert_fresh_checkout(&world, &p(name), &commit, &format!("{how}: {name}"));
        }
        // A repository git sees, but cannot use: the error says which source
        // and which command.
        for (name, command) in [
            ("bad-ref", "git fetch origin main"),
            ("bad-index", "git fetch origin main"),
        ] {
            let out = world.populate(&target, &[], &json!({name: git_source}));
            before.assert_unchanged(&outside_path(outer));
            out.assert_failure()
                .assert_stderr_contains(&format!("source {name} (git)"))
                .assert_stderr_contains(&format!("`{command}` failed"));
        }
    }
}

/// A shallow clone of one branch at `PATH/NAME` (`git clone --depth 1
/// --branch old`, as a user or another tool leaves it) fetches only that
/// branch: a full git source of a commit on another branch must still get
/// it, as a fresh deploy does.
#[test]
fn a_single_branch_shallow_clone_gets_a_full_sources_commit_of_another_branch() {
    let world = World::new();
    let repo = world.git_repo("repo");
    repo.write("a", "old\n");
    repo.commit("old");
    repo.git(&["branch", "old"]);
    repo.write("a", "main 1\n");
    repo.commit("main 1");
    repo.write("a", "main 2\n");
    let wanted = repo.commit("main 2");
    let dest = world.mkdir("dest");
    world.write("dest/.populate", "");
    let at = dest.join("src");
    world
        .sh(&format!(
            "git clone -q --depth 1 --branch old {} {}",
            krops_tests::quote(repo.file_url().as_ref() as &std::ffi::OsStr),
            krops_tests::quote(at.as_os_str()),
        ))
        .assert_success();
    for git_ref in [wanted.as_str(), "main~1", "main"] {
        let sources = json!({"src": {"git": {"url": repo.url(), "ref": git_ref}}});
        world
            .run(
                "populate",
                &["--target", dest.to_str().unwrap()],
                sources.to_string().as_bytes(),
            )
            .assert_success();
        let origin = repo.git(&["rev-parse", "--verify", &format!("{git_ref}^{{commit}}")]);
        assert_eq!(git_head(&at), origin, "ref {git_ref}");
    }
}
