//! End-to-end: two runs against one target path never write at the same
//! time (README: Sources, the lock). A run holds `flock` on `PATH/.populate-lock` through a
//! process on the target from its first write to the end of its final
//! command; a second run waits and says for whom, gives up after
//! `--lock-timeout`, or takes no lock with `--no-lock`; a killed holder's
//! lock goes with it.
//!
//! No test here depends on timing: a run that must be holding the lock
//! while another tries is kept busy by a pipe source that waits for a file
//! the test (or the other run's log) provides.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use krops_tests::{file_text, finish, Output, World};
use serde_json::{json, Value};

/// How long a pipe command waits for what it waits for before giving up
/// (a failing test then fails instead of hanging).
const PATIENCE_TENTHS: u32 = 900;

/// A pipe command that records when it started and ended into `events`
/// (`NAME start NANOS`, `NAME end NANOS`), touches `started`, waits until
/// the file `wait_for` exists (with `""`) or contains the text given,
/// then prints `output`.
fn pipe_command(
    world: &World,
    name: &str,
    started: &Path,
    wait_for: Option<(&Path, &str)>,
    output: &str,
) -> PathBuf {
    let events = world.path("events");
    let wait = match wait_for {
        Some((file, containing)) => {
            let test = if containing.is_empty() {
                format!("test -e '{}'", file.display())
            } else {
                format!(
                    "grep -qF -- '{containing}' '{}' 2>/dev/null",
                    file.display()
                )
            };
            format!(
                "i=0\nuntil {test}; do\n  \
                 i=$((i + 1)); test $i -lt {PATIENCE_TENTHS} || break; sleep 0.1\ndone\n"
            )
        }
        None => String::new(),
    };
    world.write_executable(
        &format!("gen/{name}"),
        format!(
            "#!/bin/sh\necho \"{name} start $(date +%s%N)\" >>'{events}'\ntouch '{started}'\n{wait}\
             echo '{output}'\necho \"{name} end $(date +%s%N)\" >>'{events}'\n",
            events = events.display(),
            started = started.display(),
        ),
    )
}

/// The sources of one run: a file tree with a file named after `run`, a
/// pipe, and a link to the file.
fn sources(world: &World, run: &str, pipe: &Path) -> PathBuf {
    world.write(&format!("trees/{run}/sub/{run}.nix"), "{ }\n");
    world.write(
        &format!("sources-{run}.json"),
        json!({
            "cfg": {"file": world.path(&format!("trees/{run}")).to_str().unwrap()},
            "gen": {"pipe": pipe.to_str().unwrap()},
            "link": {"symlink": format!("cfg/sub/{run}.nix")},
        })
        .to_string(),
    )
}

#[track_caller]
fn wait_for_file(path: &Path) {
    for _ in 0..1200 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} never appeared", path.display());
}

/// Reliability (Concurrent runs): two deploys to one target at once → the second says what it waits for and since when, then runs; the nixos-rebuild calls never overlap and the tree is the second's
#[test]
fn a_second_deploy_waits_for_the_first_and_they_never_overlap() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    let (a_err, b_err) = (world.path("a.err"), world.path("b.err"));
    // A's pipe holds A's run until B says it waits for the lock.
    let a_started = world.path("a-started");
    let a_pipe = pipe_command(
        &world,
        "A",
        &a_started,
        Some((&b_err, "waiting for the lock")),
        "A",
    );
    let b_pipe = pipe_command(&world, "B", &world.path("b-started"), None, "B");
    let a_sources = sources(&world, "a", &a_pipe);
    let b_sources = sources(&world, "b", &b_pipe);
    let deploy = |sources: &Path, force: bool| {
        let mut args = vec![
            "--target".to_owned(),
            target.clone(),
            "--nom".to_owned(),
            "false".to_owned(),
            "--sources".to_owned(),
            sources.display().to_string(),
        ];
        if force {
            args.push("--force".to_owned());
        }
        args
    };
    let a_args = deploy(&a_sources, true);
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let a = world.spawn("krops-deploy", &a_args, &a_err);
    wait_for_file(&a_started);
    let b_args = deploy(&b_sources, false);
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let b = world.spawn("krops-deploy", &b_args, &b_err);
    let (a_code, b_code) = (finish(a, &a_err), finish(b, &b_err));
    let (a_log, b_log) = (file_text(&a_err), file_text(&b_err));
    assert_eq!(a_code, Some(0), "A failed:\n{a_log}");
    assert_eq!(b_code, Some(0), "B failed:\n{b_log}");
    // B said what it waited for, and for whom.
    let waiting = b_log
        .lines()
        .find(|line| line.contains("waiting for the lock"))
        .unwrap_or_else(|| panic!("B never waited:\n{b_log}"));
    assert!(
        waiting.starts_with(&format!(
            "populate: waiting for the lock on alpha:{}, held by root@origin (pid ",
            dest.display(),
        )) && waiting.contains(" since "),
        "{waiting}"
    );
    assert!(
        b_log.contains("populate: got the lock on alpha:"),
        "{b_log}"
    );
    // One after the other: A's populate and rebuild, then B's.
    assert_eq!(
        world.timeline(),
        [
            "A start",
            "A end",
            "rebuild start",
            "rebuild end",
            "B start",
            "B end",
            "rebuild start",
            "rebuild end"
        ],
        "A:\n{a_log}\nB:\n{b_log}"
    );
    // The target holds B's sources, none of A's.
    assert_eq!(file_text(&dest.join("gen")), "B\n");
    assert!(dest.join("cfg/sub/b.nix").exists());
    assert!(!dest.join("cfg/sub/a.nix").exists());
    assert_eq!(
        fs::read_link(dest.join("link")).unwrap(),
        Path::new("cfg/sub/b.nix")
    );
    // The lock file names the last holder, in one line of fixed width.
    let holder = file_text(&dest.join(".populate-lock"));
    assert!(holder.starts_with("root@origin (pid "), "{holder:?}");
    assert_eq!(holder.len(), 200, "{holder:?}");
}

/// Reliability (Concurrent runs): `--lock-timeout` while another run holds the lock → a clear error naming the holder, non-zero exit, nothing changed
#[test]
fn lock_timeout_gives_up_with_a_clear_error_and_changes_nothing() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    let release = world.path("release");
    let started = world.path("a-started");
    let a_pipe = pipe_command(&world, "A", &started, Some((&release, "")), "A");
    let a_sources = sources(&world, "a", &a_pipe);
    let b_pipe = pipe_command(&world, "B", &world.path("b-started"), None, "B");
    let b_sources = sources(&world, "b", &b_pipe);
    // A first run, so that B would have something to change.
    fs::write(&release, "").unwrap();
    let first = world.run(
        "populate",
        &[
            "--target",
            &target,
            "--force",
            "--sources",
            a_sources.to_str().unwrap(),
        ],
        b"",
    );
    first.assert_success();
    fs::remove_file(&release).unwrap();
    fs::remove_file(&started).unwrap();
    let a_err = world.path("a.err");
    let a = world.spawn(
        "populate",
        &[
            "--target",
            &target,
            "--sources",
            a_sources.to_str().unwrap(),
        ],
        &a_err,
    );
    wait_for_file(&started);
    let before = world.tree_with_mtimes(&dest);
    for driver in ["populate", "krops-deploy"] {
        let out: Output = world.run(
            driver,
            &[
                "--target",
                &target,
                "--lock-timeout",
                "1",
                "--sources",
                b_sources.to_str().unwrap(),
            ],
            b"",
        );
        out.assert_code(1);
        let stderr = out.stderr_str();
        let error = stderr
            .lines()
            .find(|line| line.starts_with(&format!("{driver}: error:")))
            .unwrap_or_else(|| panic!("no error line:\n{out}"));
        assert!(
            error.contains(&format!("lock on alpha:{}", dest.display()))
                && error.contains("another run holds it (root@origin (pid ")
                && error.contains("gave up after")
                && error.contains("(--lock-timeout 1)")
                && error.contains("nothing was synced"),
            "{error}"
        );
        assert!(
            !stderr.contains("populate: source "),
            "a step ran:\n{stderr}"
        );
    }
    // -q prints errors only: no "waiting for the lock" line, just the error.
    let out = world.run(
        "populate",
        &[
            "--target",
            &target,
            "--lock-timeout",
            "0",
            "--quiet",
            "--sources",
            b_sources.to_str().unwrap(),
        ],
        b"",
    );
    out.assert_code(1);
    let stderr = out.stderr_str();
    assert!(
        stderr.starts_with("populate: error: lock on ") && stderr.lines().count() == 1,
        "{out}"
    );
    // --json names the target and says why nothing ran.
    let out = world.run(
        "populate",
        &[
            "--target",
            &target,
            "--lock-timeout",
            "0",
            "--json",
            "--sources",
            b_sources.to_str().unwrap(),
        ],
        b"",
    );
    out.assert_code(1);
    let doc: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|err| panic!("{err}: {out}"));
    let targets = doc["targets"].as_array().unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(targets.len(), 1, "{doc}");
    assert_eq!(targets[0]["address"], target.as_str(), "{doc}");
    assert_eq!(targets[0]["ok"], false, "{doc}");
    let error = targets[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("another run holds it") && doc["error"] == error,
        "{doc}"
    );
    assert!(
        targets[0]["sources"]
            .as_array()
            .is_some_and(|sources| sources.iter().all(|s| s["status"] == "not-run")),
        "{doc}"
    );
    world.tree_with_mtimes(&dest).assert_unchanged(&before);
    assert!(!world.path("b-started").exists(), "B's pipe ran");
    assert!(world.records("nixos-rebuild").is_empty());
    fs::write(&release, "").unwrap();
    assert_eq!(finish(a, &a_err), Some(0), "{}", file_text(&a_err));
}

/// Our processes (ssh masters, clients) still running for the world.
fn our_processes(world: &World) -> Vec<(String, String)> {
    let out = std::process::Command::new("pgrep")
        .args(["-af", world.tmp_dir().to_str().unwrap()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.contains("pgrep"))
        .filter_map(|line| line.split_once(' '))
        .map(|(pid, rest)| (pid.to_owned(), rest.to_owned()))
        .collect()
}

/// Reliability (Concurrent runs): the holder is killed with SIGKILL → the lock goes with its process, and so does its ssh master; the waiting run proceeds
#[test]
fn a_killed_holder_releases_the_lock() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    for (how, target_path) in [("remote", "remote/src"), ("local", "local/src")] {
        let dest = world.path(target_path);
        let target = if how == "remote" {
            alpha.target("root", &dest)
        } else {
            dest.display().to_string()
        };
        let release = world.path(&format!("release-{how}"));
        let started = world.path(&format!("a-started-{how}"));
        let a_pipe = pipe_command(
            &world,
            &format!("A-{how}"),
            &started,
            Some((&release, "")),
            "A",
        );
        let a_sources = sources(&world, "a", &a_pipe);
        let b_pipe = pipe_command(
            &world,
            &format!("B-{how}"),
            &world.path("b-started"),
            None,
            "B",
        );
        let b_sources = sources(&world, "b", &b_pipe);
        let a_err = world.path(&format!("a-{how}.err"));
        let mut a = world.spawn(
            "populate",
            &[
                "--target",
                &target,
                "--force",
                "--sources",
                a_sources.to_str().unwrap(),
            ],
            &a_err,
        );
        wait_for_file(&started);
        // SIGKILL: no handler runs, nothing is cleaned up by the tool.
        a.kill().unwrap();
        a.wait().unwrap();
        // Its ssh master goes with it (the kernel's parent-death signal),
        // rather than holding a connection to the target for ever.
        let masters = || -> Vec<String> {
            our_processes(&world)
                .into_iter()
                .filter(|(_, line)| line.contains("ssh") && line.contains(" -M "))
                .map(|(pid, line)| format!("{pid} {line}"))
                .collect()
        };
        for _ in 0..100 {
            if masters().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(masters().is_empty(), "{how}: {:?}", masters());
        let out = world.run(
            "populate",
            &[
                "--target",
                &target,
                "--lock-timeout",
                "60",
                "--sources",
                b_sources.to_str().unwrap(),
            ],
            b"",
        );
        out.assert_success();
        assert_eq!(file_text(&dest.join("gen")), "B\n", "{how}");
        assert!(dest.join("cfg/sub/b.nix").exists(), "{how}");
        assert!(!dest.join("cfg/sub/a.nix").exists(), "{how}");
        // The killed run's orphan: its pipe command.
        fs::write(&release, "").unwrap();
    }
}

/// Reliability (Concurrent runs): `--no-lock` → no lock taken (two runs may overlap, as in krops)
#[test]
fn no_lock_lets_two_runs_overlap() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    // Each run's pipe waits for the other's to start: only runs at the
    // same time both get through.
    let (a_started, b_started) = (world.path("a-started"), world.path("b-started"));
    let a_pipe = pipe_command(&world, "A", &a_started, Some((&b_started, "")), "A");
    let b_pipe = pipe_command(&world, "B", &b_started, Some((&a_started, "")), "B");
    let a_sources = sources(&world, "a", &a_pipe);
    let b_sources = sources(&world, "b", &b_pipe);
    world
        .run(
            "populate",
            &["--target", &target, "--force", "--no-lock"],
            b"{}",
        )
        .assert_success();
    let (a_err, b_err) = (world.path("a.err"), world.path("b.err"));
    let args = |sources: &Path| {
        vec![
            "--target".to_owned(),
            target.clone(),
            "--no-lock".to_owned(),
            "--sources".to_owned(),
            sources.display().to_string(),
        ]
    };
    let a_args = args(&a_sources);
    let b_args = args(&b_sources);
    let a = world.spawn(
        "populate",
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &a_err,
    );
    let b = world.spawn(
        "populate",
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &b_err,
    );
    assert_eq!(finish(a, &a_err), Some(0), "{}", file_text(&a_err));
    assert_eq!(finish(b, &b_err), Some(0), "{}", file_text(&b_err));
    let events = world.timeline();
    let first_end = events.iter().position(|e| e.ends_with(" end")).unwrap();
    assert_eq!(
        first_end, 2,
        "both pipes started before either ended: {events:?}"
    );
    assert!(
        !dest.join(".populate-lock").exists(),
        "--no-lock made a lock file"
    );
    for log in [&a_err, &b_err] {
        assert!(
            !file_text(log).contains("waiting for the lock"),
            "{}",
            file_text(log)
        );
    }
}

#[test]
fn a_build_target_that_is_the_target_under_another_name_does_not_wait_for_itself() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    // The same sshd and path, with the port spelt out: another target.
    let build = json!({"user": "root", "host": "alpha", "port": alpha.port().to_string(),
                       "path": dest.to_str().unwrap()})
    .to_string();
    let out = world.run(
        "krops-deploy",
        &[
            "--target",
            &target,
            "--build-target",
            &build,
            "--force",
            "--nom",
            "false",
            "--lock-timeout",
            "20",
        ],
        json!({"l": {"symlink": "x"}}).to_string().as_bytes(),
    );
    out.assert_success();
    assert!(!out.stderr_str().contains("waiting"), "{out}");
    assert_eq!(world.records("nixos-rebuild").len(), 1);
}

/// Reliability (Concurrent runs): a symlinked lock file, or no sentinel → never followed; the sentinel check's error is the one shown
#[test]
fn the_lock_file_is_never_followed_and_needs_the_sentinel() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.mkdir("src");
    let target = alpha.target("root", &dest);
    let sources = json!({"l": {"symlink": "x"}}).to_string();
    // A directory populate does not own (no sentinel) gets no lock file,
    // and the sentinel check's error is the one shown.
    let out = world.run("populate", &["--target", &target], sources.as_bytes());
    out.assert_failure()
        .assert_stderr_contains("error: missing sentinel file: alpha:");
    assert!(!dest.join(".populate-lock").exists());
    let missing = world.path("missing/src");
    let out = world.run(
        "populate",
        &["--target", &alpha.target("root", &missing)],
        sources.as_bytes(),
    );
    out.assert_failure()
        .assert_stderr_contains("error: missing sentinel file: alpha:");
    assert!(!world.path("missing").exists());
    // A symlink at the lock file's place is replaced, never written through.
    let canary = world.write("canary", "untouched\n");
    fs::write(dest.join(".populate"), "").unwrap();
    std::os::unix::fs::symlink(&canary, dest.join(".populate-lock")).unwrap();
    let out = world.run("populate", &["--target", &target], sources.as_bytes());
    out.assert_success().assert_stderr_contains(&format!(
        "populate: replacing the symlink at alpha:{}/.populate-lock",
        dest.display()
    ));
    assert_eq!(file_text(&canary), "untouched\n");
    let lock = fs::symlink_metadata(dest.join(".populate-lock")).unwrap();
    assert!(lock.file_type().is_file());
    // Something else there is refused, named.
    fs::remove_file(dest.join(".populate-lock")).unwrap();
    fs::create_dir(dest.join(".populate-lock")).unwrap();
    let out = world.run("populate", &["--target", &target], sources.as_bytes());
    out.assert_failure().assert_stderr_contains(&format!(
        "populate: error: lock on alpha:{}: alpha:{}/.populate-lock is not a regular file",
        dest.display(),
        dest.display()
    ));
}

/// Reliability (Concurrent runs): a sudo target → the lock is taken as root there
#[test]
fn the_lock_is_taken_under_sudo_too() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let user = world.sudo_user();
    let dest = world.mkdir("root-owned").join("src");
    let target =
        json!({"user": user, "host": "alpha", "path": dest.to_str().unwrap(), "sudo": true})
            .to_string();
    let release = world.path("release");
    let started = world.path("a-started");
    let a_pipe = pipe_command(&world, "A", &started, Some((&release, "")), "A");
    let a_sources = sources(&world, "a", &a_pipe);
    let a_err = world.path("a.err");
    let a = world.spawn(
        "populate",
        &[
            "--target",
            &target,
            "--force",
            "--sources",
            a_sources.to_str().unwrap(),
        ],
        &a_err,
    );
    wait_for_file(&started);
    let lock = fs::metadata(dest.join(".populate-lock")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&lock),
        0,
        "taken without sudo"
    );
    let out = world.run(
        "populate",
        &["--target", &target, "--lock-timeout", "0"],
        b"{}",
    );
    out.assert_failure()
        .assert_stderr_contains("another run holds it (root@origin (pid ");
    fs::write(&release, "").unwrap();
    assert_eq!(finish(a, &a_err), Some(0), "{}", file_text(&a_err));
    assert_eq!(file_text(&dest.join("gen")), "A\n");
}

#[test]
fn a_dry_run_says_what_the_real_run_locks_and_takes_nothing() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.mkdir("src");
    fs::write(dest.join(".populate"), "").unwrap();
    let target = alpha.target("root", &dest);
    let sources = json!({"l": {"symlink": "x"}});
    let handshakes = world.handshakes("alpha");
    let out = world.run(
        "krops-deploy",
        &["--target", &target, "--dry-run", "--lock-timeout", "7"],
        sources.to_string().as_bytes(),
    );
    out.assert_success().assert_stdout_contains(&format!(
        "# The real run first takes the lock on alpha:{}/.populate-lock (flock, held until the \
         run and its final command end; waiting at most 7 s for it). This script takes none.",
        dest.display()
    ));
    assert!(!dest.join(".populate-lock").exists());
    assert_eq!(
        world.handshakes("alpha"),
        handshakes,
        "the dry run connected"
    );
    let out = world.run(
        "populate",
        &["--target", &target, "--dry-run", "--no-lock"],
        sources.to_string().as_bytes(),
    );
    out.assert_success()
        .assert_stdout_contains("# --no-lock: the real run takes no lock on the target");
}

#[test]
fn a_fleet_passes_the_lock_options_to_every_host() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let fleet: Value = json!({
        "one": {"target": format!("root@alpha{}", world.path("one").display()),
                "source": {"l": {"symlink": "x"}}},
        "two": {"target": format!("root@alpha{}", world.path("two").display()),
                "source": {"l": {"symlink": "x"}}},
    });
    let file = world.write("fleet.json", fleet.to_string());
    let out = world.run(
        "krops-deploy",
        &[
            "--fleet",
            file.to_str().unwrap(),
            "--dry-run",
            "--lock-timeout",
            "3",
        ],
        b"",
    );
    out.assert_success();
    assert_eq!(
        out.stdout_str()
            .matches("waiting at most 3 s for it")
            .count(),
        2,
        "{out}"
    );
    let out = world.run(
        "krops-command",
        &["--fleet", file.to_str().unwrap(), "--dry-run", "--no-lock"],
        b"",
    );
    out.assert_success();
    assert_eq!(
        out.stdout_str()
            .matches("--no-lock: the real run takes no lock")
            .count(),
        2,
        "{out}"
    );
}
