//! End-to-end: the output of `krops-deploy --check` streams to stderr as it
//! comes, is never kept whole in memory, shows also when the check runs past
//! `--confirm-timeout`, and a check given up on is stopped on the target
//! (README: See what a deploy changes). The targets are the world's NixOS hosts (tests/world/nixos.rs).

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use krops_tests::{forced_args, processes_with, World};
use serde_json::json;

fn sources(world: &World) -> String {
    world.write("cfg/configuration.nix", "{ }\n");
    let file = world.write(
        "sources.json",
        json!({"nixos-config": {"file": world.path("cfg/configuration.nix").to_str().unwrap()}})
            .to_string(),
    );
    file.display().to_string()
}

/// The arguments of a forced deploy to `target` with `sources`, confirmed
/// within `timeout` seconds only if `check` passes.
fn checked_args<'a>(
    target: &'a str,
    sources: &'a str,
    timeout: &'a str,
    check: &'a str,
) -> Vec<&'a str> {
    forced_args(
        target,
        &[
            "--sources",
            sources,
            "--confirm-timeout",
            timeout,
            "--check",
            check,
        ],
    )
}

/// Kills the processes that [`processes_with`] listed as `lines`.
fn kill(world: &World, lines: &[String]) {
    for line in lines {
        let pid = line.split(' ').next().unwrap();
        world.sh(&format!("kill -KILL {pid}"));
    }
}

/// Reliability (Resources): a `--check` that prints 50 MB → all of it reaches stderr as it comes, the deploy is confirmed, and the tool's peak memory stays under 40 MB
#[test]
fn a_chatty_check_streams_to_stderr_and_memory_stays_small() {
    let world = World::new();
    let target = world.nixos_deploy_host("alpha", false).1;
    let sources = sources(&world);
    let (stderr, rss) = (world.path("deploy.err"), world.path("maxrss"));
    let check =
        "yes 'a chatty check says this line again' | head -c 50000000; echo; echo check-done";
    let status = world
        .command("/usr/bin/time")
        .args(["-o", rss.to_str().unwrap(), "-f", "%M"])
        .arg(world.tool("krops-deploy"))
        .args(checked_args(&target, &sources, "120", check))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap())
        .status()
        .unwrap();
    let size = fs::metadata(&stderr).unwrap().len();
    let tail = {
        let text = fs::read(&stderr).unwrap();
        String::from_utf8_lossy(&text[text.len().saturating_sub(2000)..]).into_owned()
    };
    assert!(status.success(), "{status}:\n…{tail}");
    assert!(size > 50_000_000, "only {size} bytes on stderr:\n…{tail}");
    assert!(
        tail.contains("check-done\n") && tail.contains("confirmed over a new ssh connection"),
        "{tail}"
    );
    // Kept whole, 50 MB would be in memory at once (more, as a Vec grows).
    let kib: u64 = fs::read_to_string(&rss).unwrap().trim().parse().unwrap();
    eprintln!("peak RSS {kib} KiB");
    assert!(kib < 40 * 1024, "peak RSS {kib} KiB");
}

/// Reliability (Connection fault): a `--check` that prints, then hangs past `--confirm-timeout`, as root and under sudo → what it printed is on stderr, the deploy is not confirmed and rolled back, and the check is stopped on the target
#[test]
fn a_check_past_the_timeout_is_shown_and_stopped_on_the_target() {
    for how in ["root", "sudo"] {
        let world = World::new();
        let root_target = world.nixos_deploy_host("alpha", false).1;
        let target = if how == "root" {
            root_target
        } else {
            world.sudo_user_target("alpha", true)
        };
        let sources = sources(&world);
        // Unique to this test: what its check's processes are found by.
        let marker = format!("krops-hanging-check-{how}-{}", std::process::id());
        let nap = format!("1000{}", std::process::id());
        let check = format!("echo '{marker}: checking'; sleep {nap}; : {marker}");
        let out = world.run(
            "krops-deploy",
            &checked_args(&target, &sources, "5", &check),
            b"",
        );
        out.assert_code(1)
            .assert_stderr_contains(&format!("{marker}: checking\n"))
            .assert_stderr_contains("with its check, did not finish within 5 s")
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
        assert!(
            left().is_empty(),
            "{how}: the check still runs: {:?}\n{out}",
            left()
        );
        assert!(Path::new(&world.path("alpha/src")).exists());
    }
}

/// Reliability (Connection fault): a `--check` that ignores SIGTERM (it and the child it waits for) and hangs past `--confirm-timeout` → the deploy is rolled back and the check is still stopped on the target (SIGKILL after SIGTERM)
#[test]
fn a_check_that_ignores_sigterm_is_still_stopped_on_the_target() {
    let world = World::new();
    let target = world.nixos_deploy_host("alpha", false).1;
    let sources = sources(&world);
    let marker = format!("krops-stubborn-check-{}", std::process::id());
    let nap = format!("1001{}", std::process::id());
    let check = format!("trap '' TERM; echo '{marker}: checking'; sleep {nap}; : {marker}");
    let out = world.run(
        "krops-deploy",
        &checked_args(&target, &sources, "5", &check),
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
    kill(&world, &still);
    assert!(still.is_empty(), "the check still runs: {still:?}\n{out}");
}

/// A `--check` that leaves a child running in the background (its output
/// still the check's): the check itself succeeded, so the deploy is
/// confirmed, and the child is stopped with the rest of the check.
#[test]
fn a_check_that_leaves_a_child_running_confirms() {
    let world = World::new();
    let target = world.nixos_deploy_host("alpha", false).1;
    let sources = sources(&world);
    let nap = format!("1003{}", std::process::id());
    let check = format!("sleep {nap} & echo checked");
    let out = world.run(
        "krops-deploy",
        &checked_args(&target, &sources, "8", &check),
        b"",
    );
    let still = processes_with(&format!("sleep {nap}"));
    kill(&world, &still);
    out.assert_success().assert_stderr_contains("checked\n");
    assert!(!out.stderr_str().contains("not confirmed"), "{out}");
    assert!(
        still.is_empty(),
        "the check's child still runs: {still:?}\n{out}"
    );
}
