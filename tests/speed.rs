//! End-to-end: one shared ssh connection per target and run, and sources
//! synced in parallel (README: Targets), against the real sshd of the test world.
//! The sshd logs at INFO, so [`World::handshakes`] counts connections.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use krops_tests::{Tree, World};
use serde_json::{json, Value};

/// Twelve sources as `scripts/bench`'s cases have them, plus a pipe and secrets.
fn sources(world: &World) -> Value {
    let mut sources = serde_json::Map::new();
    for i in 0..8 {
        world.write(&format!("trees/t{i}/a.nix"), format!("{{ t = {i}; }}\n"));
        world.write(&format!("trees/t{i}/sub/b.nix"), "{ }\n");
        sources.insert(
            format!("tree{i}"),
            json!({"file": world.path(&format!("trees/t{i}")).to_str().unwrap()}),
        );
    }
    for i in 0..2 {
        let repo = world.git_repo(&format!("repo{i}"));
        repo.write("default.nix", format!("{{ r = {i}; }}\n"));
        let commit = repo.commit("first");
        sources.insert(
            format!("repo{i}"),
            json!({"git": {"url": repo.url(), "ref": commit}}),
        );
    }
    sources.insert("link0".into(), json!({"symlink": "tree0"}));
    sources.insert("link1".into(), json!({"symlink": "repo1/default.nix"}));
    let pipe = world.write_executable("gen/version", "#!/bin/sh\necho 24.05\n");
    sources.insert("version".into(), json!({"pipe": pipe.to_str().unwrap()}));
    let pass = world.pass_store();
    pass.insert("host/key", "secret-1");
    sources.insert(
        "secrets".into(),
        json!({"pass": {"dir": pass.dir().to_str().unwrap(), "name": "host"}}),
    );
    Value::Object(sources)
}

/// ssh processes of ours still running for the world: masters, clients.
fn our_ssh_processes(world: &World) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-af", "krops-ssh\\."])
        .output()
        .unwrap();
    let tmp = world.tmp_dir();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(tmp.to_str().unwrap()))
        .filter(|line| !line.contains("pgrep"))
        .map(str::to_owned)
        .collect()
}

fn assert_nothing_left(world: &World) {
    let left = our_ssh_processes(world);
    assert!(left.is_empty(), "ssh masters left: {left:?}");
    let tmp: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
    assert!(
        tmp.is_empty(),
        "temp files left (a control socket?): {tmp:?}"
    );
}

#[test]
fn a_run_makes_one_connection_and_leaves_no_master_behind() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    let sources = sources(&world);
    for run in ["first deploy", "no-op redeploy"] {
        let before = world.handshakes("alpha");
        world
            .populate(&target, &["--force"], &sources)
            .assert_success();
        assert_eq!(world.handshakes("alpha") - before, 1, "{run}");
        assert_nothing_left(&world);
    }
    assert_eq!(
        std::fs::read_to_string(dest.join("version")).unwrap(),
        "24.05\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("secrets/key"))
            .unwrap()
            .trim(),
        "secret-1"
    );

    // A deploy: populate and the rebuild share the one connection too.
    let before = world.handshakes("alpha");
    world
        .run(
            "krops-deploy",
            &["--target", &target],
            sources.to_string().as_bytes(),
        )
        .assert_success();
    assert_eq!(world.handshakes("alpha") - before, 1);
    assert_eq!(world.records("nixos-rebuild").len(), 1);
    assert_nothing_left(&world);
}

#[test]
fn without_multiplexing_every_step_connects_on_its_own() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    let sources = sources(&world);
    world
        .populate(&target, &["--force"], &sources)
        .assert_success();
    // The lock file names each run's holder.
    let snapshot = || {
        let mut tree = Tree::snapshot(&dest);
        tree.0.remove(".populate-lock");
        tree
    };
    let shared = snapshot();
    for how in ["flag", "env"] {
        let before = world.handshakes("alpha");
        let out = if how == "flag" {
            world.populate(&target, &["--no-multiplex"], &sources)
        } else {
            let mut cmd = world.command(world.tool("populate"));
            cmd.env("KROPS_NO_MULTIPLEX", "1")
                .args(["--target", &target]);
            world.run_command(&mut cmd, sources.to_string().as_bytes())
        };
        out.assert_success();
        // The lock with the batch (sentinel, symlinks) and the 2
        // checkouts in its session, the 8 trees (one rsync, which claims
        // their places first), the pipe and the store's claim (its stamp
        // is unchanged, so no rsync): each its own connection, as in
        // krops (which synced each tree apart, claimed apart from rsync,
        // and took no lock).
        let made = world.handshakes("alpha") - before;
        assert_eq!(made, 4, "{how}");
        assert_nothing_left(&world);
    }
    shared.assert_unchanged(&snapshot());
}

#[test]
fn parallel_sources_give_the_same_tree_as_sequential_ones() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let sources = sources(&world);
    let mut trees = Vec::new();
    for (i, jobs) in ["1", "4", "9"].into_iter().enumerate() {
        let dest = world.path(&format!("src-{i}"));
        let target = alpha.target("root", &dest);
        let out = world.populate(&target, &["--force", "--source-jobs", jobs], &sources);
        out.assert_success();
        // Each step's first log line (after its timestamp) comes before
        // its output, in source order.
        let stderr = out.stderr_str();
        let order: Vec<&str> = stderr
            .lines()
            .filter_map(|line| line.split_once(" populate: source "))
            .filter(|(_, rest)| rest.contains(" → "))
            .map(|(_, rest)| rest.split(' ').next().unwrap())
            .collect();
        assert_eq!(order.len(), 14, "{stderr}");
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "--source-jobs {jobs}: {stderr}");
        // What git keeps for itself (index, reflogs) has times in it, and
        // the lock file names each run's holder.
        let mut tree = Tree::snapshot(&dest);
        tree.0
            .retain(|path, _| !path.contains(".git/") && path != ".populate-lock");
        trees.push(tree);
    }
    trees[0].assert_unchanged(&trees[1]);
    trees[0].assert_unchanged(&trees[2]);
    for bad in ["0", "10", "x"] {
        let out = world.populate("/tmp/x", &["--source-jobs", bad], &json!({}));
        out.assert_code(2)
            .assert_stderr_contains("populate: error:");
    }
}

#[test]
fn the_first_failure_in_source_order_is_reported_after_the_running_steps() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    let slow_marker = world.path("slow-finished");
    let slow = world.write_executable(
        "gen/slow",
        format!(
            "#!/bin/sh\nsleep 1\necho slow\ntouch {}\n",
            slow_marker.display()
        ),
    );
    let fails = world.write_executable("gen/fails", "#!/bin/sh\necho 'b says no' >&2\nexit 3\n");
    let fails_too = world.write_executable("gen/fails-too", "#!/bin/sh\nexit 4\n");
    let sources = json!({
        "a-slow": {"pipe": slow.to_str().unwrap()},
        "b-fails": {"pipe": fails.to_str().unwrap()},
        "c-fails": {"pipe": fails_too.to_str().unwrap()},
        "d-link": {"symlink": "x"},
    });
    let out = world.populate(&target, &["--force", "--source-jobs", "3"], &sources);
    out.assert_failure();
    let stderr = out.stderr_str();
    // The running step finished; the error names b, the first in order.
    assert!(slow_marker.exists(), "the running step was cut short");
    assert_eq!(
        std::fs::read_to_string(dest.join("a-slow")).unwrap(),
        "slow\n"
    );
    let error = stderr
        .lines()
        .find(|line| line.starts_with("populate: error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(error.contains("source b-fails (pipe)"), "{stderr}");
    assert_eq!(stderr.matches("populate: error:").count(), 1, "{stderr}");
    // A failed pipe command's stderr is quoted in the error, once.
    assert!(
        error.contains("`") && stderr.contains("b says no"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("b says no").count(), 1, "{stderr}");
    // c failed too, but only the first failure is the error; d never ran
    // or was batched before: either way no second error line.
    assert!(!stderr.contains("source c-fails (pipe) →") || !error.contains("c-fails"));
    assert_nothing_left(&world);
}

#[test]
fn a_failing_step_or_a_signal_leaves_no_master_or_socket() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    let repo = world.git_repo("r");
    repo.write("a", "a\n");
    repo.commit("one");
    let bad = json!({"r": {"git": {"url": repo.url(), "ref": "no-such-branch"}}});
    world.populate(&target, &["--force"], &bad).assert_failure();
    assert_nothing_left(&world);

    let marker = world.path("started");
    let slow = world.write_executable(
        "gen/slow",
        format!("#!/bin/sh\ntouch {}\nexec sleep 60\n", marker.display()),
    );
    let sources = world.write(
        "sources.json",
        json!({"slow": {"pipe": slow.to_str().unwrap()}, "l": {"symlink": "x"}}).to_string(),
    );
    let args = ["--target", &target, "--sources", sources.to_str().unwrap()];
    let (status, stderr) = world.signal_when("populate", &args, &marker, "TERM");
    assert_eq!(status, Some(143), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGTERM during source slow (pipe)"),
        "{stderr}"
    );
    assert_nothing_left(&world);
}

#[test]
fn the_user_s_own_connection_sharing_is_left_alone() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let sources = json!({"a": {"symlink": "x"}, "b": {"file": world.write("f.txt", "f\n").to_str().unwrap()}});
    // ControlMaster=no: they do not want sharing; nothing of ours either.
    let dest = world.path("src-no");
    let mut target = json!({"user": "root", "host": "alpha", "path": dest.to_str().unwrap(),
        "extraOptions": ["-o", "ControlMaster=no"]});
    let before = world.handshakes("alpha");
    world
        .populate(&target.to_string(), &["--force"], &sources)
        .assert_success();
    // The lock (the batch in its session) and the file's rsync, each on
    // its own (ours would make them one).
    assert_eq!(world.handshakes("alpha") - before, 2, "ours was used");
    assert_nothing_left(&world);

    // Their own master, persisting in the background: used, not hanging.
    let socket = world.path("their-master");
    target["path"] = json!(world.path("src-own").to_str().unwrap());
    target["extraOptions"] = json!([
        "-o",
        "ControlMaster=auto",
        "-o",
        format!("ControlPath={}", socket.display()),
        "-o",
        "ControlPersist=30"
    ]);
    let before = world.handshakes("alpha");
    let mut cmd = world.command(world.tool("populate"));
    cmd.args(["--target", &target.to_string(), "--force"]);
    let out = world.run_command_with_timeout(
        &mut cmd,
        sources.to_string().as_bytes(),
        Duration::from_secs(20),
    );
    out.assert_success();
    assert_eq!(world.handshakes("alpha") - before, 1);
    assert!(socket.exists(), "their master is gone");
    let tmp: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
    assert!(tmp.is_empty(), "ours was made too: {tmp:?}");
    world.run_command(
        world.command("ssh").args([
            "-o",
            &format!("ControlPath={}", socket.display()),
            "-O",
            "exit",
            "alpha",
        ]),
        b"",
    );
}

#[test]
fn a_failing_source_leaves_the_places_of_sources_that_did_not_start() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    world.write("tree/a.nix", "{ }\n");
    let tree = json!({"file": world.path("tree").to_str().unwrap()});
    world
        .populate(&target, &["--force"], &json!({"keep": tree}))
        .assert_success();
    // An earlier deploy left a symlink where a later file source now goes.
    std::os::unix::fs::symlink("keep", dest.join("z-later")).unwrap();
    let fails = world.write_executable("gen/fails", "#!/bin/sh\nexit 7\n");
    let sources = json!({
        "a-first": tree,
        "b-fails": {"pipe": fails.to_str().unwrap()},
        "z-later": tree,
    });
    let out = world.populate(&target, &["--source-jobs", "1"], &sources);
    out.assert_failure();
    let stderr = out.stderr_str();
    assert!(dest.join("a-first/a.nix").exists(), "{stderr}");
    assert_eq!(
        std::fs::read_link(dest.join("z-later")).ok(),
        Some(PathBuf::from("keep")),
        "the later source's place was claimed though it never synced: {stderr}"
    );
    assert!(
        !stderr.contains("source z-later"),
        "logged but never started: {stderr}"
    );
}

#[test]
fn a_signal_ends_the_tool_even_when_its_stderr_is_gone() {
    let world = World::new();
    let dest = world.path("src");
    let marker = world.path("started");
    let slow = world.write_executable(
        "gen/slow",
        format!("#!/bin/sh\ntouch {}\nexec sleep 60\n", marker.display()),
    );
    let sources = world.write(
        "sources.json",
        json!({"slow": {"pipe": slow.to_str().unwrap()}}).to_string(),
    );
    let mut child: Child = world
        .command(world.tool("populate"))
        .args(["--target", dest.to_str().unwrap(), "--force"])
        .args(["--sources", sources.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Whoever read our stderr went away (a closed terminal, `| head`).
    drop(child.stderr.take());
    for _ in 0..400 {
        if marker.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(marker.exists(), "populate never started the pipe");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut status = None;
    for _ in 0..600 {
        if let Some(done) = child.try_wait().unwrap() {
            status = Some(done);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("populate did not exit after SIGTERM with its stderr gone");
    };
    assert_eq!(status.code(), Some(143));
    let tmp: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
}
