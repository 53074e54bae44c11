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

/// A final command that starts a daemon with its output redirected (as a
/// daemon must be started over ssh anyway) ends, and with it the lock: the
/// daemon holds nothing of it, and the next run goes through while the
/// daemon still runs, over ssh and on a path with spaces.
#[test]
fn a_daemon_the_final_command_leaves_holds_no_lock() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("with space/src");
    let target = alpha.target("root", &dest);
    let pid_file = world.path("daemon.pid");
    let nap = format!("1002{}", std::process::id());
    let script = format!(
        "sleep {nap} >/dev/null 2>&1 </dev/null & echo $! >{}",
        krops_tests::quote(pid_file.as_os_str())
    );
    world
        .run(
            "krops-command",
            &["--target", &target, "--force", &script],
            b"{}",
        )
        .assert_success();
    let daemon = fs::read_to_string(&pid_file).unwrap();
    let daemon = daemon.trim();
    let alive = world.sh(&format!("kill -0 {daemon}")).success();
    let second = world.run(
        "krops-command",
        &["--target", &target, "--lock-timeout", "0", "echo second"],
        b"{}",
    );
    for line in processes_with(&format!("sleep {nap}")) {
        let pid = line.split(' ').next().unwrap();
        world.sh(&format!("kill -KILL {pid}"));
    }
    assert!(alive, "the daemon ended with the run");
    second.assert_success();
    assert_eq!(second.stdout_str(), "second\n");
}

/// Unmounts its path when dropped, also when the test fails.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
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
        world
            .sh(&format!(
                "mount -t tmpfs tmpfs {}",
                krops_tests::quote(at.as_os_str())
            ))
            .assert_success();
        let _mount = Mount(at.clone());
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

/// A `--check` that leaves a child running in the background (its output
/// still the check's): the check itself succeeded, so the deploy is
/// confirmed, and the child is stopped with the rest of the check.
#[test]
fn a_check_that_leaves_a_child_running_confirms() {
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
    let nap = format!("1003{}", std::process::id());
    let check = format!("sleep {nap} & echo checked");
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
            "8",
            "--check",
            &check,
        ],
        b"",
    );
    let still = processes_with(&format!("sleep {nap}"));
    for line in &still {
        let pid = line.split(' ').next().unwrap();
        world.sh(&format!("kill -KILL {pid}"));
    }
    out.assert_success().assert_stderr_contains("checked\n");
    assert!(!out.stderr_str().contains("not confirmed"), "{out}");
    assert!(
        still.is_empty(),
        "the check's child still runs: {still:?}\n{out}"
    );
}

/// What a final command prints and how it ends pass through the guard's
/// relays unchanged over ssh: binary output without a trailing newline on
/// stdout and stderr, exit status 3, and death by a signal (which ssh
/// reports as 255).
#[test]
fn a_final_commands_bytes_and_status_pass_the_guard_unchanged() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("src"));
    let bytes = world.path("bytes");
    let script = format!(
        "head -c 300000 /dev/urandom >{b}; cat {b}; printf x; cat {b} >&2; exit 3",
        b = krops_tests::quote(bytes.as_os_str())
    );
    let out = world.run(
        "krops-command",
        &["--target", &target, "--force", &script],
        b"{}",
    );
    out.assert_code(3);
    let mut want = fs::read(&bytes).unwrap();
    let printed = want.clone();
    want.push(b'x');
    assert!(out.stdout == want, "stdout changed on the way");
    assert!(
        out.stderr.windows(printed.len()).any(|w| w == printed),
        "stderr changed on the way"
    );
    let out = world.run(
        "krops-command",
        &["--target", &target, "kill -TERM $$"],
        b"{}",
    );
    // ssh itself exits 255 for a command killed by a signal, as without
    // the guard: the guard kills itself with the same signal.
    out.assert_code(255)
        .assert_stderr_contains("or the command was killed by a signal on the target");
}

/// `krops-command --allocate-tty` in a terminal (util-linux `script` makes
/// one): the command on the target has a terminal on stdin and stdout, reads
/// what is typed, and its exit status comes back, through the guard.
#[test]
fn a_final_command_with_a_tty_reads_the_terminal() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("src"));
    let sources = world.write("sources.json", "{}");
    let inner = format!(
        "{} --target {} --force --sources {} --allocate-tty {}",
        krops_tests::quote(world.tool("krops-command").as_os_str()),
        krops_tests::quote(target.as_ref() as &std::ffi::OsStr),
        krops_tests::quote(sources.as_os_str()),
        krops_tests::quote(
            "test -t 0 && test -t 1 && echo has-a-tty; read x; echo got:$x; exit 4".as_ref()
                as &std::ffi::OsStr
        ),
    );
    let mut cmd = world.command("script");
    cmd.args(["-qec", &inner, "/dev/null"]);
    let out = world.run_command(&mut cmd, b"typed\n");
    out.assert_code(4);
    assert!(out.stdout_str().contains("has-a-tty"), "{out}");
    assert!(out.stdout_str().contains("got:typed"), "{out}");
}
