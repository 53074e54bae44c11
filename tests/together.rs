//! End-to-end: file trees synced together (README: Sources, trees in one
//! rsync). The trees of a remote run without filters of their own sync in
//! one rsync, one session for all; what lands, what each source's result
//! says, and what fails must be what an rsync of each tree alone gives.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use krops_tests::{Tree, World};
use serde_json::{json, Value};

/// Sessions host `alias`'s sshd started so far (its log is at VERBOSE).
fn sessions(world: &World, alias: &str) -> usize {
    world.sshd_log(alias).matches("Starting session: ").count()
}

/// Three trees with what rsync keeps (nested directories, a symlink to a
/// directory inside, modes) and one with filters of its own.
fn trees(world: &World) -> Value {
    world.write("t/alpha/a.nix", "{ a = 1; }\n");
    world.write("t/alpha/sub/deeper.nix", "{ }\n");
    std::os::unix::fs::symlink("sub", world.path("t/alpha/dirlink")).unwrap();
    world.write("t/beta/b.nix", "{ b = 2; }\n");
    let run = world.write("t/beta/bin/run", "#!/bin/sh\n");
    fs::set_permissions(&run, fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(world.path("t/beta"), fs::Permissions::from_mode(0o700)).unwrap();
    world.write("t/gamma/c.nix", "{ }\n");
    world.write("t/filtered/keep.nix", "{ }\n");
    world.write("t/filtered/drop.swp", "x\n");
    let at = |name: &str| {
        world
            .path(&format!("t/{name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    json!({
        "alpha": {"file": at("alpha")},
        "beta": {"file": at("beta")},
        "gamma": {"file": at("gamma")},
        "filtered": {"file": {"path": at("filtered"),
                              "filters": [{"type": "exclude", "pattern": "*.swp"}]}},
    })
}

/// File sources of one file each, `t/NAME/NAME.nix`, named `names`.
fn plain_trees(world: &World, names: &[&str]) -> Value {
    let mut sources = serde_json::Map::new();
    for name in names {
        world.write(&format!("t/{name}/{name}.nix"), "{ }\n");
        let path = world.path(&format!("t/{name}"));
        sources.insert((*name).to_owned(), json!({"file": path.to_str().unwrap()}));
    }
    Value::Object(sources)
}

/// Each source's (name, status, changes) in a `--json` run's output.
fn changes(out: &krops_tests::Output) -> Vec<(String, String, Vec<String>)> {
    let results: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    results["targets"][0]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let changes = s["changes"]
                .as_array()
                .map(|c| c.iter().map(|l| l.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            (
                s["name"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
                changes,
            )
        })
        .collect()
}

#[test]
fn trees_synced_together_land_as_each_alone_would_in_one_session() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let sources = trees(&world);
    // The reference: one source at a time, each its own rsync.
    let alone = world.path("alone/src");
    world
        .populate(
            &alpha.target("root", &alone),
            &["--force", "--source-jobs", "1"],
            &sources,
        )
        .assert_success();
    let dest = world.path("together/src");
    world.write("together/src/.populate", "");
    world.write("together/src/other/kept", "not a source's\n");
    world.write("together/src/alpha/stale.nix", "old\n");
    let target = alpha.target("root", &dest);
    let before = sessions(&world, "alpha");
    let out = world.populate(&target, &["--json"], &sources);
    out.assert_success();
    // The lock's session, one rsync for the three trees, one for the
    // filtered one.
    assert_eq!(sessions(&world, "alpha") - before, 3, "{out}");
    for name in ["alpha", "beta", "gamma", "filtered"] {
        Tree::snapshot(&alone.join(name)).assert_unchanged(&Tree::snapshot(&dest.join(name)));
    }
    assert!(!dest.join("filtered/drop.swp").exists());
    assert_eq!(
        fs::read_to_string(dest.join("other/kept")).unwrap(),
        "not a source's\n"
    );
    // Each source says what changed in its own tree, named as an rsync
    // of it alone names it.
    let results = changes(&out);
    let of = |name: &str| {
        results
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in {results:?}"))
            .clone()
    };
    let (_, status, alpha_changes) = of("alpha");
    assert_eq!(status, "synced");
    assert!(
        alpha_changes.contains(&"*deleting   stale.nix".to_owned())
            && alpha_changes.contains(&"<f+++++++++ a.nix".to_owned())
            && alpha_changes.contains(&"cL+++++++++ dirlink -> sub".to_owned())
            && alpha_changes.iter().all(|c| !c.contains("alpha/")),
        "{alpha_changes:?}"
    );
    let (_, _, beta_changes) = of("beta");
    assert!(
        beta_changes.contains(&"cd+++++++++ ./".to_owned())
            && beta_changes.contains(&"<f+++++++++ bin/run".to_owned())
            && !beta_changes.iter().any(|c| c.contains("a.nix")),
        "{beta_changes:?}"
    );
    // A second run changes nothing, and says so for each.
    let again = world.populate(&target, &["--json"], &sources);
    again.assert_success();
    for (name, status, changed) in changes(&again) {
        assert_eq!((status.as_str(), changed.len()), ("synced", 0), "{name}");
    }
}

#[test]
fn a_rsync_filter_above_a_tree_is_read_as_an_rsync_of_it_alone_reads_it() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    // rsync's -F reads .rsync-filter in the directories above a tree it
    // syncs; one rsync of several trees would not: this one syncs alone.
    world.write("repo/.rsync-filter", "- *.swp\n");
    world.write("repo/hosts/one/a.nix", "{ }\n");
    world.write("repo/hosts/one/a.nix.swp", "x\n");
    world.write("plain/b/b.nix", "{ }\n");
    world.write("plain/b/b.nix.swp", "x\n");
    world.write("plain/c/c.nix", "{ }\n");
    let sources = json!({
        "one": {"file": world.path("repo/hosts/one").to_str().unwrap()},
        "b": {"file": world.path("plain/b").to_str().unwrap()},
        "c": {"file": world.path("plain/c").to_str().unwrap()},
    });
    let dest = world.path("src");
    world
        .populate(&alpha.target("root", &dest), &["--force"], &sources)
        .assert_success();
    assert!(dest.join("one/a.nix").exists() && !dest.join("one/a.nix.swp").exists());
    assert!(dest.join("b/b.nix.swp").exists() && dest.join("c/c.nix").exists());
}

#[test]
fn when_the_shared_rsync_fails_each_tree_syncs_alone_and_fails_on_its_own() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let sources = plain_trees(&world, &["a", "b", "c"]);
    let dest = world.path("src");
    world.write("src/.populate", "");
    // b's place is another user's mount point, which is never replaced:
    // its claim in the shared rsync's shell refuses, and so does b's own.
    let at = world.mkdir("src/b");
    let _mount = world.mount_tmpfs(&at);
    fs::write(at.join("precious"), "precious\n").unwrap();
    world.chown_to_sudo_user(&at);
    let out = world.populate(
        &alpha.target("root", &dest),
        &["--json", "--source-jobs", "2"],
        &sources,
    );
    out.assert_failure()
        .assert_stderr_contains("trees together failed")
        .assert_stderr_contains(&format!("{} is a mount point", at.display()));
    assert_eq!(
        fs::read_to_string(at.join("precious")).unwrap(),
        "precious\n"
    );
    let results = changes(&out);
    let status = |name: &str| {
        results
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, s, _)| s.clone())
    };
    // Each alone, whatever the others did: c too, after b failed.
    assert_eq!(status("a").as_deref(), Some("synced"), "{out}");
    assert_eq!(status("b").as_deref(), Some("failed"), "{out}");
    assert_eq!(status("c").as_deref(), Some("synced"), "{out}");
    assert!(
        dest.join("a/a.nix").exists() && dest.join("c/c.nix").exists(),
        "{out}"
    );
}

#[test]
fn a_tree_holding_a_rsync_filter_syncs_alone_as_its_patterns_mean() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    // `*/secret` matches a/secret only when rsync sends the tree as a/…:
    // in an rsync of the tree alone it matches nothing at its top.
    world.write("t/a/.rsync-filter", "- */secret\n");
    world.write("t/a/secret", "kept\n");
    world.write("t/a/sub/secret", "dropped\n");
    world.write("t/b/b.nix", "{ }\n");
    world.write("t/c/c.nix", "{ }\n");
    let sources = json!({
        "a": {"file": world.path("t/a").to_str().unwrap()},
        "b": {"file": world.path("t/b").to_str().unwrap()},
        "c": {"file": world.path("t/c").to_str().unwrap()},
    });
    let dest = world.path("src");
    let before = sessions(&world, "alpha");
    world
        .populate(&alpha.target("root", &dest), &["--force"], &sources)
        .assert_success();
    assert_eq!(fs::read_to_string(dest.join("a/secret")).unwrap(), "kept\n");
    assert!(!dest.join("a/sub/secret").exists());
    // The lock's session, a alone, b and c together.
    assert_eq!(sessions(&world, "alpha") - before, 3);
}

#[test]
fn a_rsync_filter_in_tmpdir_is_never_read() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let sources = plain_trees(&world, &["a", "b"]);
    // Where the trees' names are staged: anyone may write in /tmp.
    world.write("tmp/.rsync-filter", "- *\n");
    let dest = world.path("src");
    let mut command = world.command(world.tool("populate"));
    command
        .args(["--target", &alpha.target("root", &dest), "--force"])
        .env("TMPDIR", world.path("tmp"));
    world
        .run_command(&mut command, sources.to_string().as_bytes())
        .assert_success();
    assert!(dest.join("a/a.nix").exists() && dest.join("b/b.nix").exists());
}

#[test]
fn a_tmpdir_with_dots_and_symlinks_in_its_path_changes_nothing_of_where_trees_land() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let sources = plain_trees(&world, &["a", "b"]);
    // rsync -R names what it sends after the first `/./` of a source.
    world.mkdir("tmp/real");
    std::os::unix::fs::symlink(world.path("tmp/real"), world.path("tmp/link")).unwrap();
    let tmpdir = format!("{}/./link/.", world.path("tmp").display());
    let dest = world.path("src");
    let mut command = world.command(world.tool("populate"));
    command
        .args(["--target", &alpha.target("root", &dest), "--force"])
        .env("TMPDIR", &tmpdir);
    world
        .run_command(&mut command, sources.to_string().as_bytes())
        .assert_success();
    let landed = Tree::snapshot(&dest);
    assert_eq!(
        landed.paths(),
        [
            ".",
            ".populate",
            ".populate-lock",
            ".populate-lock-final",
            "a",
            "a/a.nix",
            "b",
            "b/b.nix"
        ],
        "{landed:?}"
    );
}

#[test]
fn a_rsync_filter_at_the_target_path_is_read_as_for_each_tree_alone() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let sources = plain_trees(&world, &["a", "b"]);
    // rsync's -F reads the target's .rsync-filter above P/NAME for a tree
    // synced alone: `P keepme` protects P/a/keepme from its deletion.
    let dest = world.path("src");
    world.write("src/.populate", "");
    world.write("src/.rsync-filter", "P keepme\n");
    world.write("src/a/keepme", "kept\n");
    let out = world.populate(&alpha.target("root", &dest), &[], &sources);
    out.assert_success()
        .assert_stderr_contains("holds a .rsync-filter");
    assert_eq!(fs::read_to_string(dest.join("a/keepme")).unwrap(), "kept\n");
    assert!(dest.join("a/a.nix").exists() && dest.join("b/b.nix").exists());
}

#[test]
fn each_tree_s_messages_are_told_with_its_own_step() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let sources = plain_trees(&world, &["a", "ab", "x"]);
    let dest = world.path("src");
    world.write("src/.populate", "");
    world.write("src/x", "a file where a tree goes\n");
    std::os::unix::fs::symlink("/tmp", dest.join("ab")).unwrap();
    let out = world.populate(&alpha.target("root", &dest), &[], &sources);
    out.assert_success();
    let stderr = out.stderr_str();
    // A step's output is printed whole, between its first and last lines.
    let block = |name: &str| {
        let start = stderr
            .find(&format!("populate: source {name} (file) →"))
            .unwrap_or_else(|| panic!("no {name}\n{out}"));
        let end = stderr[start..]
            .find(&format!("populate: source {name} (file): done"))
            .unwrap_or_else(|| panic!("no end of {name}\n{out}"));
        stderr[start..start + end].to_owned()
    };
    assert!(block("ab").contains("replacing the symlink at"), "{out}");
    assert!(block("x").contains("replacing the file at"), "{out}");
    assert!(!block("a").contains("replacing"), "{out}");
    // The shared totals are said to be of all the trees.
    assert!(
        block("a").contains("populate: the rsync of 3 trees together: sent "),
        "{out}"
    );
    assert!(!stderr.contains("krops-together."), "{out}");
}
