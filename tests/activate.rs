//! End-to-end: safe activation (README: See what a deploy changes). `krops-deploy --preview` and
//! `--ask` build without activating and show what changes;
//! `--confirm-timeout` has the target roll back a deploy that no new ssh
//! connection confirms. The targets are the world's NixOS hosts (sshd in a
//! mount namespace with its own `/run/current-system` and system profile),
//! the systems tiny derivations built with the real nix-build, whose
//! activation may lock new logins out (tests/world/nixos.rs). Also what
//! `--json` and `--quiet` say of a rolled-back deploy, and the preview and
//! confirm options' mistakes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use krops_tests::{argvs, forced_args, Output, World};
use serde_json::{json, Value};

fn deploy(world: &World, args: &[&str]) -> Output {
    world.run(
        "krops-deploy",
        args,
        world.nixos_config().to_string().as_bytes(),
    )
}

fn system_name(system: &Path) -> String {
    let name = system.file_name().unwrap().to_str().unwrap();
    name.split_once('-').unwrap().1.to_owned()
}

/// Waits, a bounded number of times, until `done` says so (what a
/// detached watchdog does happens after the tool has exited).
#[track_caller]
fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never happened: {what}");
}

/// The watchdogs' log on host `alias` (one line per deploy).
fn watchdog_log(world: &World, alias: &str) -> String {
    fs::read_to_string(world.nixos_run_dir(alias).join("krops/log")).unwrap_or_default()
}

/// The per-deploy directories the watchdogs left on `alias`.
fn watchdog_dirs(world: &World, alias: &str) -> Vec<PathBuf> {
    match fs::read_dir(world.nixos_run_dir(alias).join("krops")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(_) => vec![],
    }
}

#[test]
fn a_good_switch_is_confirmed_over_a_new_connection_and_kept() {
    // Timeouts where a confirmation is expected are long: they only bound
    // how long a login may take on a busy machine; the test never waits them out.
    let world = World::new();
    let (_, target, _, new) = world.nixos_deploy_host("alpha", false);
    let before = world.handshakes("alpha");
    let out = deploy(&world, &forced_args(&target, &["--confirm-timeout", "30"]));
    out.assert_success()
        .assert_stderr_contains("confirmed over a new ssh connection to root@alpha");
    // One connection for the deploy, one of its own for the confirmation.
    assert_eq!(world.handshakes("alpha") - before, 2, "{out}");
    assert_eq!(world.current_system("alpha"), Some(new.clone()));
    assert_eq!(world.profile_system("alpha"), Some(new.clone()));
    assert!(world.logins_work());
    // The watchdog recorded the confirmation, removed its directory and
    // ended without rolling back.
    eventually("the watchdog finished", || {
        watchdog_log(&world, "alpha").contains(" confirmed")
            && watchdog_dirs(&world, "alpha").is_empty()
    });
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [["switch", "--no-flake"]]
    );
    assert_eq!(
        world.activations(),
        [format!("{} switch", system_name(&new))]
    );
    let state = world.nixos_run_dir("alpha").join("krops");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(state).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn a_switch_that_locks_out_new_logins_is_rolled_back() {
    let world = World::new();
    let (_, target, old, new) = world.nixos_deploy_host("alpha", true);
    let out = deploy(&world, &forced_args(&target, &["--confirm-timeout", "2"]));
    out.assert_code(1)
        .assert_stderr_contains("not confirmed (no new ssh connection to root@alpha within 2 s)")
        .assert_stderr_contains(
            "root@alpha rolled back to the previous system (nixos-rebuild switch --rollback)",
        );
    // ssh's refusal is shown once, however often it was retried.
    assert_eq!(
        out.stderr_str().matches("Permission denied").count(),
        1,
        "{out}"
    );
    assert!(world.logins_work(), "the rollback let logins in again");
    assert_eq!(world.current_system("alpha"), Some(old.clone()));
    assert_eq!(world.profile_system("alpha"), Some(old.clone()));
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [
            vec!["switch", "--no-flake"],
            vec!["switch", "--rollback", "--no-flake"]
        ]
    );
    assert_eq!(
        world.activations(),
        [
            format!("{} switch", system_name(&new)),
            format!("{} switch", system_name(&old))
        ]
    );
    assert!(watchdog_log(&world, "alpha").contains(" rolled-back nixos-rebuild switch --rollback"));
    // Its record stays, with what it did.
    let dirs = watchdog_dirs(&world, "alpha");
    assert_eq!(dirs.len(), 1);
    let log = fs::read_to_string(dirs[0].join("log")).unwrap();
    assert!(log.contains("no confirmation: rolling back"), "{log}");
}

#[test]
fn a_failing_check_withholds_the_confirmation_and_rolls_back() {
    let world = World::new();
    let (_, target, old, _) = world.nixos_deploy_host("alpha", false);
    // A timeout far longer than the test: the failed check rolls back now.
    let out = deploy(
        &world,
        &[
            "--target",
            &target,
            "--force",
            "--nom",
            "false",
            "--confirm-timeout",
            "600",
            "--check",
            "echo \"checking $(readlink /run/current-system)\"; test -e /run/current-system/healthy",
        ],
    );
    out.assert_code(1)
        .assert_stderr_contains("checking /nix/store/")
        .assert_stderr_contains("not confirmed (the check failed)")
        .assert_stderr_contains("rolled back to the previous system");
    // A failing check is not retried.
    assert_eq!(
        out.stderr_str().matches("checking /nix/store/").count(),
        1,
        "{out}"
    );
    assert_eq!(world.current_system("alpha"), Some(old));
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [
            vec!["switch", "--no-flake"],
            vec!["switch", "--rollback", "--no-flake"]
        ]
    );
    // The check's output is a log, not data.
    assert!(!out.stdout_str().contains("checking"), "{out}");
}

#[test]
fn a_check_that_outlasts_the_timeout_is_not_a_lost_connection() {
    let world = World::new();
    let (_, target, old, _) = world.nixos_deploy_host("alpha", false);
    // The check is still running when the timeout ends: the watchdog rolls
    // back, and the reason says the confirmation did not finish in time
    // (a new connection was made).
    let out = deploy(
        &world,
        &forced_args(&target, &["--confirm-timeout", "2", "--check", "sleep 8"]),
    );
    out.assert_code(1)
        .assert_stderr_contains(
            "not confirmed (the confirmation over a new ssh connection to root@alpha, with its \
             check, did not finish within 2 s)",
        )
        .assert_stderr_contains("rolled back to the previous system");
    assert!(!out.stderr_str().contains("no new ssh connection"), "{out}");
    assert_eq!(world.current_system("alpha"), Some(old));
}

#[test]
fn a_passing_check_confirms() {
    let world = World::new();
    let (_, target, _, new) = world.nixos_deploy_host("alpha", false);
    let out = deploy(
        &world,
        &[
            "--target",
            &target,
            "--force",
            "--nom",
            "false",
            "--confirm-timeout",
            "30",
            "--check",
            &format!(
                "test \"$(readlink /run/current-system)\" = {}",
                new.display()
            ),
        ],
    );
    out.assert_success();
    assert_eq!(world.current_system("alpha"), Some(new));
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [["switch", "--no-flake"]]
    );
}

#[test]
fn the_watchdog_survives_the_deployer_and_its_ssh_session() {
    let world = World::new();
    let (_, target, old, new) = world.nixos_deploy_host("alpha", true);
    let sources = world.write("sources.json", world.nixos_config().to_string());
    // The deployer is killed as soon as the activation locked logins out;
    // with `test`, the watchdog activates the previous system again.
    let broken = world.path("ssh/authorized_keys.broken");
    let (code, stderr) = world.signal_when(
        "krops-deploy",
        &[
            "--target",
            &target,
            "--sources",
            sources.to_str().unwrap(),
            "--force",
            "--nom",
            "false",
            "--operation",
            "test",
            "--confirm-timeout",
            "1",
        ],
        &broken,
        "TERM",
    );
    assert_eq!(code, Some(143), "{stderr}");
    // Stopped during the activation or the confirmation, it says what the
    // target does next.
    assert!(
        stderr.contains(
            "the deploy is not confirmed: unless it already was, the watchdog on root@alpha \
             rolls it back 1 s after the activation ends"
        ),
        "{stderr}"
    );
    eventually("the watchdog rolled back", || {
        watchdog_log(&world, "alpha").contains(" rolled-back ")
    });
    assert!(world.logins_work());
    assert_eq!(world.current_system("alpha"), Some(old.clone()));
    // `test` leaves the profile alone, and so does its rollback.
    assert_eq!(world.profile_system("alpha"), Some(old.clone()));
    assert_eq!(
        world.activations(),
        [
            format!("{} test", system_name(&new)),
            format!("{} test", system_name(&old))
        ]
    );
    assert!(watchdog_log(&world, "alpha").contains(&format!(
        "rolled-back {}/bin/switch-to-configuration test",
        old.display()
    )));
}

#[test]
fn ctrl_c_while_confirming_says_that_the_target_rolls_back() {
    let world = World::new();
    let (_, target, old, _) = world.nixos_deploy_host("alpha", false);
    let sources = world.write("sources.json", world.nixos_config().to_string());
    // The check outlasts the timeout: nothing confirms, whenever the
    // signal comes.
    let checking = world.path("checking");
    let check = format!(
        "touch {}; sleep 5",
        krops_tests::quote(checking.as_os_str())
    );
    let (code, stderr) = world.signal_when(
        "krops-deploy",
        &[
            "--target",
            &target,
            "--sources",
            sources.to_str().unwrap(),
            "--force",
            "--nom",
            "false",
            "--confirm-timeout",
            "3",
            "--check",
            &check,
        ],
        &checking,
        "INT",
    );
    assert_eq!(code, Some(130), "{stderr}");
    // Not "during nixos-rebuild switch", which had ended, and no reason
    // made up for the missing confirmation.
    assert!(
        stderr.contains(
            "interrupted by SIGINT during the confirmation of the deploy over a new ssh \
             connection to root@alpha"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("the watchdog on root@alpha rolls it back 3 s after the activation ends"),
        "{stderr}"
    );
    assert!(!stderr.contains("not confirmed ("), "{stderr}");
    eventually("the watchdog rolled back", || {
        watchdog_log(&world, "alpha").contains(" rolled-back ")
    });
    assert_eq!(world.current_system("alpha"), Some(old));
}

#[test]
fn a_failed_activation_is_not_confirmed() {
    let world = World::new();
    let (_, target, old, _) = world.nixos_deploy_host("alpha", false);
    world.set_rebuild_exit(4);
    let out = deploy(&world, &forced_args(&target, &["--confirm-timeout", "600"]));
    // nixos-rebuild's status; the running system never changed.
    out.assert_code(4)
        .assert_stderr_contains("not confirmed (the activation failed): nothing was rolled back");
    assert_eq!(world.current_system("alpha"), Some(old));
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [["switch", "--no-flake"]]
    );
}

#[test]
fn preview_prints_what_changes_and_activates_nothing() {
    let world = World::new();
    let (_, target, old, new) = world.nixos_deploy_host("alpha", false);
    let out = deploy(&world, &forced_args(&target, &["--preview"]));
    out.assert_success();
    let stdout = out.stdout_str();
    assert_eq!(
        stdout,
        format!(
            "running system: {}\nnew system:     {}\nchanges (nix store diff-closures):\n\
             krops-test-dep: 1.0 → 2.0\nnixos-system-test: 1.0 → 2.0\n",
            old.display(),
            new.display()
        ),
        "{out}"
    );
    // Built, in a private directory that is gone; nothing activated.
    let records = world.records("nixos-rebuild");
    assert_eq!(argvs(&records), [["build", "--no-flake"]]);
    let cwd = records[0].cwd.to_str().unwrap();
    assert!(cwd.starts_with("/tmp/krops-build."), "{cwd}");
    assert!(!records[0].cwd.exists());
    assert_eq!(world.current_system("alpha"), Some(old));
    assert!(world.activations().is_empty());
    assert!(world.path("alpha/src/nixos-config").is_file(), "populated");
}

#[test]
fn preview_with_json_puts_the_preview_in_the_results_and_nothing_else_on_stdout() {
    let world = World::new();
    let (_, target, old, new) = world.nixos_deploy_host("alpha", false);
    let out = deploy(&world, &forced_args(&target, &["--preview", "--json"]));
    out.assert_success();
    let doc: serde_json::Value =
        serde_json::from_str(&out.stdout_str()).expect("one JSON document");
    let preview = &doc["preview"];
    assert_eq!(preview["running"], old.display().to_string(), "{doc}");
    assert_eq!(preview["new"], new.display().to_string());
    assert_eq!(preview["differ"], true);
    assert_eq!(preview["diff"]["tool"], "nix store diff-closures");
    assert!(preview["diff"]["text"]
        .as_str()
        .unwrap()
        .contains("nixos-system-test: 1.0 → 2.0"));
    // What a person reads went to stderr.
    out.assert_stderr_contains("changes (nix store diff-closures):");
    assert!(world.activations().is_empty());
}

#[test]
fn preview_of_the_running_system_says_nothing_changes() {
    let world = World::new();
    let (_, target, old, _) = world.nixos_deploy_host("alpha", false);
    world.set_rebuild_system(&old);
    let out = deploy(&world, &forced_args(&target, &["--preview"]));
    out.assert_success()
        .assert_stdout_contains("no changes: the new system is the running system\n");
}

#[test]
fn ask_without_a_terminal_refuses_before_anything_runs() {
    let world = World::new();
    let (_, target, _, _) = world.nixos_deploy_host("alpha", false);
    let sources = world.write("sources.json", world.nixos_config().to_string());
    // setsid: no controlling terminal, even when the tests run in one.
    let mut cmd = world.command("setsid");
    cmd.arg("-w")
        .arg(world.tool("krops-deploy"))
        .args(["--target", &target, "--force", "--ask", "--sources"])
        .arg(&sources);
    let out = world.run_command(&mut cmd, b"y\n");
    out.assert_code(2)
        .assert_stderr_contains("krops-deploy: error: --ask needs a terminal to ask on");
    assert!(!world.path("alpha/src").exists());
    assert!(world.records("nixos-rebuild").is_empty());
}

/// Runs krops-deploy with a terminal (util-linux `script`), typing `answer`.
fn with_terminal(world: &World, args: &[&str], answer: &str) -> Output {
    world.deploy_on_a_terminal(args, &world.nixos_config(), answer)
}

/// Like [`with_terminal`], but types `keys` only once the terminal shows
/// `Activate?` (bounded: after a minute without it, nothing is typed).
fn with_terminal_at_the_question(world: &World, args: &[&str], keys: &str) -> Output {
    let typescript = world.path("typescript");
    let script = "(i=0\n\
         until grep -q 'Activate?' \"$1\" 2>/dev/null; do\n\
         \x20 i=$((i + 1)); [ \"$i\" -lt 600 ] || exit 0; sleep 0.1\n\
         done\n\
         printf %s \"$3\") | setsid -w script -qefc \"$2\" \"$1\"";
    let mut cmd = world.command("/bin/sh");
    cmd.args(["-c", script, "sh"])
        .arg(&typescript)
        .arg(world.deploy_line(args, &world.nixos_config()))
        .arg(keys);
    world.run_command(&mut cmd, b"")
}

#[test]
fn ctrl_c_at_the_question_activates_nothing_and_names_what_stays() {
    let world = World::new();
    let (_, target, old, _) = world.nixos_deploy_host("alpha", false);
    let args = forced_args(target.as_str(), &["--ask"]);
    // ^C on the terminal: SIGINT to the tool, waiting for the answer.
    let out = with_terminal_at_the_question(&world, &args, "\x03");
    out.assert_code(130)
        .assert_stdout_contains("Activate? [y/N]")
        .assert_stdout_contains("interrupted by SIGINT during asking whether to activate")
        .assert_stdout_contains("nothing was activated; the built system's directory /");
    // No command runs while the question waits (the build ended before it).
    assert!(!out.stdout_str().contains("may still be running"), "{out}");
    let dir = out
        .stdout_str()
        .split("the built system's directory ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(dir.contains("krops-build."), "{dir}\n{out}");
    // As the message says; a test leaves nothing behind.
    assert!(Path::new(&dir).join("result").is_symlink(), "{dir}");
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(world.current_system("alpha"), Some(old));
    assert!(world.activations().is_empty());
}

#[test]
fn ask_activates_the_system_it_built_on_yes_only() {
    let world = World::new();
    let (_, target, old, new) = world.nixos_deploy_host("alpha", false);
    let args = forced_args(target.as_str(), &["--ask"]);
    let out = with_terminal(&world, &args, "n\n");
    out.assert_code(1)
        .assert_stdout_contains("Activate? [y/N]")
        .assert_stdout_contains("not activated");
    assert_eq!(world.current_system("alpha"), Some(old.clone()));
    assert!(world.activations().is_empty());

    let out = with_terminal(&world, &args, "y\n");
    out.assert_success()
        .assert_stdout_contains("nixos-system-test: 1.0 → 2.0")
        .assert_stdout_contains("Activate? [y/N]");
    // Built twice (once per run), never rebuilt to activate: the built
    // system was activated itself.
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [["build", "--no-flake"], ["build", "--no-flake"]]
    );
    assert_eq!(
        world.activations(),
        [format!("{} switch", system_name(&new))]
    );
    assert_eq!(world.current_system("alpha"), Some(new.clone()));
    assert_eq!(world.profile_system("alpha"), Some(new));
}

#[test]
fn ask_with_a_confirm_timeout_rolls_back_a_lockout() {
    let world = World::new();
    let (_, target, old, _) = world.nixos_deploy_host("alpha", true);
    let args = forced_args(target.as_str(), &["--ask", "--confirm-timeout", "2"]);
    let out = with_terminal(&world, &args, "y\n");
    out.assert_code(1)
        .assert_stdout_contains("rolled back to the previous system");
    assert!(world.logins_work());
    assert_eq!(world.current_system("alpha"), Some(old.clone()));
    assert_eq!(world.profile_system("alpha"), Some(old));
}

#[test]
fn a_build_target_builds_and_the_target_activates_under_its_watchdog() {
    let world = World::new();
    let (_, target, _, new) = world.nixos_deploy_host("alpha", false);
    let beta = world.add_nixos_host("beta");
    let build = beta.target("root", &world.path("beta/src"));
    let out = deploy(
        &world,
        &forced_args(
            &target,
            &["--build-target", &build, "--confirm-timeout", "30"],
        ),
    );
    out.assert_success()
        .assert_stderr_contains("confirmed over a new ssh connection to root@alpha");
    let records = world.records("nixos-rebuild");
    assert_eq!(argvs(&records), [["build", "--no-flake"]]);
    assert_eq!(
        records[0].env["NIX_PATH"],
        world.path("beta/src").to_str().unwrap()
    );
    assert_eq!(world.current_system("alpha"), Some(new.clone()));
    assert_eq!(world.current_system("beta"), None, "beta only built");
    assert_eq!(
        world.activations(),
        [format!("{} switch", system_name(&new))]
    );
}

#[test]
fn a_sudo_target_runs_the_watchdog_as_root() {
    let world = World::new();
    world.add_nixos_host("alpha");
    let target = world.sudo_user_target("alpha", true);
    let out = deploy(&world, &forced_args(&target, &["--confirm-timeout", "30"]));
    out.assert_success()
        .assert_stderr_contains("confirmed over a new ssh connection");
    let rebuilds = world.records("nixos-rebuild");
    assert_eq!(
        argvs(&rebuilds),
        [["switch", "--no-flake", "--use-remote-sudo"]]
    );
    assert_eq!(rebuilds[0].uid, 0);
    eventually("the watchdog finished", || {
        watchdog_log(&world, "alpha").contains(" confirmed")
    });
    use std::os::unix::fs::MetadataExt;
    let state = fs::metadata(world.nixos_run_dir("alpha").join("krops")).unwrap();
    assert_eq!(state.uid(), 0);
}

#[test]
fn confirm_options_are_checked_and_shown_by_dry_run() {
    let world = World::new();
    let (_, target, _, _) = world.nixos_deploy_host("alpha", false);
    for (args, needle) in [
        (
            vec!["--confirm-timeout", "5", "--operation", "boot"],
            "--confirm-timeout works with --operation switch or test",
        ),
        (vec!["--check", "true"], "--check needs --confirm-timeout"),
        (vec!["--confirm-timeout", "0"], "--confirm-timeout"),
        (
            vec!["--ask", "--operation", "build"],
            "--ask activates the built system",
        ),
        (vec!["--ask", "--preview"], "cannot be used with"),
    ] {
        let mut all = vec!["--target", &target, "--force"];
        all.extend(args);
        let out = deploy(&world, &all);
        out.assert_failure().assert_stderr_contains(needle);
    }
    assert!(
        !world.path("alpha/src").exists(),
        "refused before anything ran"
    );
    let out = deploy(
        &world,
        &[
            "--target",
            &target,
            "--force",
            "--dry-run",
            "--confirm-timeout",
            "30",
            "--check",
            "curl -f localhost",
        ],
    );
    out.assert_success()
        .assert_stdout_contains("# then nixos-rebuild switch on root@alpha (the target)\n")
        .assert_stdout_contains("setsid")
        .assert_stdout_contains("# then confirm over a new ssh connection")
        .assert_stdout_contains(" -S none alpha ");
    // The dry run's script is a real sh script.
    let script = world.write("plan.sh", out.stdout.clone());
    let check = world.run_command(world.command("/bin/sh").arg("-n").arg(&script), b"");
    check.assert_success();
    assert!(world.records("nixos-rebuild").is_empty());
}

#[test]
fn fleets_preview_per_host_and_take_confirm_timeout() {
    let world = World::new();
    let (_, alpha, old, _) = world.nixos_deploy_host("alpha", false);
    let beta = world.add_nixos_host("beta");
    world.boot_nixos_host("beta", &old);
    let beta = beta.target("root", &world.path("beta/src"));
    let source = world.nixos_config();
    let fleet = json!({
        "alpha": {"target": alpha, "source": source, "force": true,
                  "useNixOutputMonitor": false, "confirmTimeout": 30},
        "beta": {"target": beta, "source": source, "force": true,
                 "useNixOutputMonitor": false},
    });
    let out = world.run(
        "krops-deploy",
        &["--fleet", "-", "--preview"],
        fleet.to_string().as_bytes(),
    );
    out.assert_success()
        .assert_stdout_contains("alpha | changes (nix store diff-closures):\n")
        .assert_stdout_contains("beta | nixos-system-test: 1.0 → 2.0\n");
    assert!(world.activations().is_empty());

    let out = world.run(
        "krops-deploy",
        &["--fleet", "-"],
        fleet.to_string().as_bytes(),
    );
    out.assert_success()
        .assert_stderr_contains("alpha | krops-deploy: confirmed over a new ssh connection");
    assert!(!out.stderr_str().contains("beta | krops-deploy: confirmed"));

    let mut bad = fleet.clone();
    bad["beta"]["confirmTimeout"] = json!("5");
    let out = world.run(
        "krops-deploy",
        &["--fleet", "-"],
        bad.to_string().as_bytes(),
    );
    out.assert_failure()
        .assert_stderr_contains("fleet.beta.confirmTimeout: expected a whole number");
}

#[test]
fn write_deploy_takes_confirm_timeout() {
    let world = World::new();
    let (writers, krops_rs) = world.nix_fixtures();
    let nix_str = |p: &Path| format!("\"{}\"", p.display());
    let expr = |extra: &str| {
        format!(
            r#"let
  lib = import (krops + "/lib");
  k = import (krops + "/pkgs/krops") {{ writers = import {writers}; krops-rs = {krops_rs}; }};
in (k.writeDeploy "d" {{ source = lib.evalSource {{ l.symlink = "x"; }}; target = "h"; {extra} }}).drvPath"#,
            writers = nix_str(&writers),
            krops_rs = nix_str(&krops_rs),
        )
    };
    for (extra, needle) in [
        (
            "confirmTimeout = \"30\";",
            "confirmTimeout: expected a whole number of seconds",
        ),
        (
            "confirmTimeout = 0;",
            "confirmTimeout: expected a whole number of seconds",
        ),
    ] {
        world
            .nix_eval(&expr(extra))
            .assert_failure()
            .assert_stderr_contains(needle);
    }
    let file = world.write(
        "deploy.nix",
        format!(
            "let krops = {}; in {{ d = {}; }}",
            nix_str(&krops_tests::nix::krops_dir()),
            expr("confirmTimeout = 30;").replace(".drvPath", "")
        ),
    );
    let built = world.nix_build(&file, "d");
    let script = fs::read_to_string(&built).unwrap();
    assert!(script.contains("--confirm-timeout"), "{script}");
    // ./result --preview leaves it out: a preview has nothing to confirm.
    let mut words = Vec::new();
    for args in [&["--dry-run"][..], &["--dry-run", "--preview"]] {
        let out = world.run_command(world.command(&built).args(args), b"");
        out.assert_success();
        words.push(
            out.stdout_str()
                .contains("# then confirm over a new ssh connection"),
        );
    }
    assert_eq!(words, [true, false]);
}

#[test]
fn a_watchdog_that_cannot_start_is_not_waited_for() {
    // A user who may not write /run/krops, without sudo: the watchdog
    // cannot start and nothing is activated. The deployer then has no
    // watchdog to withhold the confirmation from or to hear from.
    let world = World::new();
    let (_, _, old, _) = world.nixos_deploy_host("alpha", false);
    let target = world.sudo_user_target("alpha", false);
    let out = deploy(&world, &forced_args(&target, &["--confirm-timeout", "20"]));
    out.assert_code(1);
    // One error line, with mkdir's reason in it: not mkdir's line, the
    // script's and the failed rebuild's apart, nor a withheld confirmation.
    let stderr = out.stderr_str();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("error") || line.contains("mkdir") || line.contains("confirm"))
        .collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(
        errors[0].starts_with("krops-deploy: error: cannot start the confirmation watchdog in ")
            && errors[0].contains("(it needs root: mkdir: ")
            && errors[0].contains("Permission denied")
            && errors[0].ends_with("): nothing was activated"),
        "{out}"
    );
    // Before, it asked again every second for the whole timeout, then said
    // that the host could not be reached.
    assert!(!out.stderr_str().contains("could not be reached"), "{out}");
    assert_eq!(world.current_system("alpha"), Some(old));
    assert!(world.activations().is_empty(), "{out}");
}

/// A rolled-back deploy's document says what its exit status says.
#[track_caller]
fn assert_rolled_back(doc: &Value, out: &Output) {
    assert_eq!(doc["ok"], false, "{doc}\n{out}");
    let error = doc["error"].as_str().unwrap_or_else(|| panic!("{doc}"));
    assert!(
        error.contains("not confirmed (no new ssh connection to root@alpha within 2 s)")
            && error.contains("rolled back to the previous system"),
        "{error}"
    );
    assert_eq!(doc["final"]["ok"], false, "{doc}");
    // nixos-rebuild itself succeeded: its exit code says so.
    assert_eq!(doc["final"]["exitCode"], 0, "{doc}");
    assert_eq!(doc["targets"][0]["ok"], true, "{doc}");
}

#[test]
fn json_after_a_rollback_says_not_ok_and_why() {
    let world = World::new();
    let (_, target, old, _) = world.nixos_deploy_host("alpha", true);
    let args = forced_args(target.as_str(), &["--confirm-timeout", "2", "--json"]);
    let out = world.run(
        "krops-deploy",
        &args,
        world.nixos_config().to_string().as_bytes(),
    );
    out.assert_code(1)
        .assert_stderr_contains("rolled back to the previous system");
    assert_eq!(world.current_system("alpha"), Some(old));
    assert_rolled_back(&out.document(), &out);
}

#[test]
fn a_fleets_json_after_a_rollback_says_the_host_is_not_ok_and_why() {
    let world = World::new();
    let (_, target, old, _) = world.nixos_deploy_host("alpha", true);
    let fleet = json!({
        "alpha": {"target": target, "source": world.nixos_config(), "force": true,
                  "useNixOutputMonitor": false, "confirmTimeout": 2},
    });
    let out = world.run(
        "krops-deploy",
        &["--fleet", "-", "--json"],
        fleet.to_string().as_bytes(),
    );
    out.assert_code(1)
        .assert_stderr_contains("alpha | krops-deploy: error: not confirmed");
    assert_eq!(world.current_system("alpha"), Some(old));
    let doc = out.document();
    assert_eq!(doc["ok"], false, "{doc}");
    let host = &doc["hosts"]["alpha"];
    assert_eq!(host["ok"], false, "{doc}");
    assert_eq!(host["exitCode"], 1, "{doc}");
    assert_rolled_back(&host["results"], &out);
}

#[test]
fn ask_without_a_terminal_is_a_usage_error() {
    let world = World::new();
    let (_, target, _, _) = world.nixos_deploy_host("alpha", false);
    let sources = world.write("sources.json", world.nixos_config().to_string());
    // setsid: no controlling terminal, even when the tests run in one.
    let mut cmd = world.command("setsid");
    cmd.arg("-w")
        .arg(world.tool("krops-deploy"))
        .args(["--target", &target, "--force", "--ask", "--sources"])
        .arg(&sources);
    let out = world.run_command(&mut cmd, b"y\n");
    out.assert_code(2)
        .assert_stderr_contains("krops-deploy: error: --ask needs a terminal to ask on");
    assert!(!world.path("alpha/src").exists());
}

/// `--preview` of a fleet leaves a host's `confirmTimeout` out: a preview
/// activates nothing, so there is nothing to confirm.
#[test]
fn a_fleet_previews_hosts_that_have_a_confirm_timeout() {
    let world = World::new();
    let (_, target, old, _) = world.nixos_deploy_host("alpha", false);
    let fleet = json!({
        "alpha": {"target": target, "source": world.nixos_config(), "force": true,
                  "useNixOutputMonitor": false, "confirmTimeout": 30},
    });
    let out = world.run(
        "krops-deploy",
        &["--fleet", "-", "--preview"],
        fleet.to_string().as_bytes(),
    );
    out.assert_success()
        .assert_stdout_contains("alpha | nixos-system-test: 1.0 → 2.0\n");
    assert_eq!(world.current_system("alpha"), Some(old));
}

/// `-q` prints errors only: a deploy that succeeds says nothing on
/// stderr, also when it previews or is confirmed over a new connection.
#[test]
fn quiet_is_quiet_in_the_preview_and_confirm_paths() {
    let world = World::new();
    let (_, target, _, _) = world.nixos_deploy_host("alpha", false);
    let base = forced_args(target.as_str(), &["-q"]);
    for extra in [
        &[][..],
        &["--preview"],
        &["--preview", "--json"],
        &["--confirm-timeout", "30"],
    ] {
        let out = world.run(
            "krops-deploy",
            &[&base[..], extra].concat(),
            world.nixos_config().to_string().as_bytes(),
        );
        out.assert_success();
        assert_eq!(out.stderr_str(), "", "{extra:?}: not quiet\n{out}");
    }
}
