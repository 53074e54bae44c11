//! End-to-end: what a demanding user tried of the day's work that nobody
//! had tried before (the lock through the final command, `--check`, the
//! lived-target claim and the git source), and what it found.

use std::fs;
use std::time::Duration;

use krops_tests::{git_head, World};
use serde_json::json;

/// The processes whose command line contains `needle`, as `PID CMDLINE`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{} {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
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

/// Reliability (Connection fault): a `--check` that ignores SIGTERM (it and the child it waits for) and hangs past `--confirm-timeout` → the deploy is rolled back and the check is still stopped on the target (SIGKILL after SIGTERM)
#[test]
fn a_check_that_ignores_sigterm_is_still_stopped_on_the_target() {
    let world = World::new();
    let host = world.add_nixos_host("alpha");
    let old = world.nixos_system("1.0", false);
    let new = world.nixos_system("2.0", false);
    world.boot_nixos_host("alpha", &old);
    world.set_rebuild_system(&new);
    let target = host.target("root", &world.path("alpha/src"));
    world.write("cfg/configuration.nix", "{ }\n");
    let sources = world.write(
        "sources.json",
        json!({"nixos-config": {"file": world.path("cfg/configuration.nix").to_str().unwrap()}})
            .to_string(),
    );
    let marker = format!("krops-stubborn-check-{}", std::process::id());
    let nap = format!("1001{}", std::process::id());
    let check = format!("trap '' TERM; echo '{marker}: checking'; sleep {nap}; : {marker}");
    let out = world.run(
        "krops-deploy",
        &[
            "--target",
            &target,
            "--force",
            "--nom",
            "false",
            "--sources",
            sources.to_str().unwrap(),
            "--confirm-timeout",
            "5",
            "--check",
            &check,
        ],
        b"",
    );
    out.assert_code(1)
        .assert_stderr_contains(&format!("{marker}: checking\n"))
        .assert_stderr_contains("rolled back");
    let left = || {
        let mut left = processes_with(&marker);
        left.extend(processes_with(&format!("sleep {nap}")));
        left
    };
    for _ in 0..200 {
        if left().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let still = left();
    for line in &still {
        let pid = line.split(' ').next().unwrap();
        world.sh(&format!("kill -KILL {pid}"));
    }
    assert!(still.is_empty(), "the check still runs: {still:?}\n{out}");
}
