//! Every driver mode's `--dry-run` script, compared with the one checked in
//! under `tests/expected/dry_run/` (one file per mode): a refactor of how
//! the drivers assemble their runs must print the same scripts.
//!
//! Targets are fixed strings (a dry run connects to nothing), and the
//! world's own directory is written `$WORLD` so that the files do not
//! depend on where a test runs; a watchdog's fresh id is `WATCHDOG-ID`.
//! `KROPS_BLESS=1` rewrites the files from what the tools print now (then
//! review the diff).

use std::fs;
use std::path::PathBuf;

use krops_tests::World;
use serde_json::json;

/// The expected script of `mode`.
fn expected_path(mode: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("expected/dry_run")
        .join(format!("{mode}.sh"))
}

/// Runs `tool ARGS --dry-run` with `stdin` and compares its stdout, the
/// world's directory written `$WORLD`, with the expected script of `mode`.
fn check(world: &World, mode: &str, tool: &str, args: &[&str], stdin: &[u8]) {
    let mut all = args.to_vec();
    all.push("--dry-run");
    let out = world.run(tool, &all, stdin);
    out.assert_success();
    let root = world.root().to_str().unwrap();
    let script = fresh_ids_named(&out.stdout_str().replace(root, "$WORLD"));
    assert!(script.contains("rsync"), "{mode}: {script}");
    let path = expected_path(mode);
    if std::env::var_os("KROPS_BLESS").is_some() {
        fs::write(&path, &script).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("{}: {err} (KROPS_BLESS=1 writes it)", path.display()));
    if script != expected {
        let (n, (now, was)) = script
            .lines()
            .zip(expected.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((0, ("(a line more or less)", "")));
        panic!(
            "{mode}: the dry-run script changed ({}), first at line {}:\n  now: {now}\n  was: {was}",
            path.display(),
            n + 1
        );
    }
}

/// `text` with each watchdog id (32 lowercase hex digits, fresh each run)
/// written `WATCHDOG-ID`.
fn fresh_ids_named(text: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in text.chars().chain(['\n']) {
        if c.is_ascii_digit() || ('a'..='f').contains(&c) {
            run.push(c);
            continue;
        }
        out.push_str(if run.len() == 32 { "WATCHDOG-ID" } else { &run });
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// Sources of two kinds: a symlink and a file from the world.
fn sources(world: &World) -> Vec<u8> {
    let file = world.write("files/motd", "hello\n");
    json!({
        "l": {"symlink": "x"},
        "motd": {"file": file.to_str().unwrap()},
    })
    .to_string()
    .into_bytes()
}

const TARGET: &str = "root@alpha/var/src";
const BUILD: &str = "root@builder:2222/var/build-src";

#[test]
fn every_deploy_mode_prints_the_script_it_printed() {
    let world = World::new();
    let sources = sources(&world);
    let deploy = |mode: &str, args: &[&str]| {
        let mut all = vec!["--target", TARGET, "--nom", "false"];
        all.extend(args);
        check(&world, mode, "krops-deploy", &all, &sources);
    };
    deploy("deploy_plain", &[]);
    deploy("deploy_boot", &["--operation", "boot", "--force"]);
    deploy("deploy_preview", &["--preview"]);
    deploy("deploy_ask", &["--ask"]);
    deploy("deploy_confirm", &["--confirm-timeout", "30"]);
    deploy(
        "deploy_confirm_check",
        &["--confirm-timeout", "30", "--check", "curl -f localhost"],
    );
    deploy(
        "deploy_ask_confirm",
        &["--ask", "--confirm-timeout", "30", "--check", "true"],
    );
    deploy("deploy_build_target", &["--build-target", BUILD]);
    deploy(
        "deploy_build_target_confirm",
        &["--build-target", BUILD, "--confirm-timeout", "30"],
    );
    deploy(
        "deploy_build_target_preview",
        &["--build-target", BUILD, "--preview"],
    );
    deploy("deploy_no_lock", &["--no-lock"]);
    deploy(
        "deploy_reboot",
        &[
            "--operation",
            "boot",
            "--reboot",
            "--reboot-timeout",
            "300",
            "--check",
            "systemctl is-system-running --wait",
        ],
    );
    deploy(
        "deploy_confirm_reboot",
        &["--confirm-timeout", "30", "--check", "true", "--reboot"],
    );
    let key = world.write("files/tls.key", "not shown\n");
    world.write_executable("bin/print-token", "#!/bin/sh\necho not shown\n");
    let keys = world.write(
        "keys.json",
        json!({
            "tls": {"keyFile": key, "user": "nginx", "permissions": "0400"},
            "token": {"keyCommand": ["print-token", "--host", "alpha"], "destDir": "/run/keys/app",
                      "uploadAt": "post-activation"},
        })
        .to_string(),
    );
    deploy("deploy_keys", &["--keys", keys.to_str().unwrap()]);
    let sudo = json!({"user": "deploy", "host": "alpha", "port": "2222",
                      "path": "/var/src", "sudo": true})
    .to_string();
    let mut all = vec!["--target", &sudo, "--nom", "false"];
    check(&world, "deploy_sudo", "krops-deploy", &all, &sources);
    all.extend(["--confirm-timeout", "30"]);
    check(
        &world,
        "deploy_sudo_confirm",
        "krops-deploy",
        &all,
        &sources,
    );
}

#[test]
fn krops_command_and_krops_test_print_the_scripts_they_printed() {
    let world = World::new();
    let sources = sources(&world);
    check(
        &world,
        "command",
        "krops-command",
        &["--target", TARGET, "df -h \"$1\""],
        &sources,
    );
    check(
        &world,
        "command_default",
        "krops-command",
        &["--target", TARGET],
        &sources,
    );
    let local = world.path("local-src");
    check(
        &world,
        "test",
        "krops-test",
        &["--target", local.to_str().unwrap(), "--trace"],
        &sources,
    );
    check(
        &world,
        "populate",
        "populate",
        &["--target", TARGET, "--backup"],
        &sources,
    );
}

#[test]
fn fleets_print_the_scripts_they_printed() {
    let world = World::new();
    let file = world.write("files/motd", "hello\n");
    let source = json!({"l": {"symlink": "x"}, "motd": {"file": file.to_str().unwrap()}});
    let fleet = json!({
        "alpha": {"target": TARGET, "source": source, "useNixOutputMonitor": false,
                  "confirmTimeout": 30},
        "beta": {"target": "root@beta/etc/krops", "source": source, "force": true,
                 "useNixOutputMonitor": false, "operation": "boot"},
    });
    let path = world.write("fleet.json", fleet.to_string());
    let path = path.to_str().unwrap();
    check(
        &world,
        "fleet_deploy",
        "krops-deploy",
        &["--fleet", path],
        b"",
    );
    check(
        &world,
        "fleet_deploy_preview",
        "krops-deploy",
        &["--fleet", path, "--preview"],
        b"",
    );
    // A rolling deploy that reboots: batches, tags and the reboot's stages.
    let rolling = json!({
        "alpha": {"target": TARGET, "source": source, "useNixOutputMonitor": false,
                  "tags": ["web", "eu"], "reboot": true, "rebootTimeout": 300},
        "beta": {"target": "root@beta/etc/krops", "source": source, "force": true,
                 "useNixOutputMonitor": false, "operation": "boot", "tags": ["db"],
                 "reboot": true},
    });
    let rolling = world.write("rolling.json", rolling.to_string());
    check(
        &world,
        "fleet_deploy_rolling",
        "krops-deploy",
        &[
            "--fleet",
            rolling.to_str().unwrap(),
            "--jobs",
            "1",
            "--max-failures",
            "1",
        ],
        b"",
    );
    let commands = json!({
        "alpha": {"target": TARGET, "source": source, "command": "uptime"},
        "beta": {"target": "root@beta/etc/krops", "source": source},
    });
    let path = world.write("commands.json", commands.to_string());
    check(
        &world,
        "fleet_command",
        "krops-command",
        &["--fleet", path.to_str().unwrap()],
        b"",
    );
}

#[test]
fn flake_modes_print_the_scripts_they_printed() {
    let world = World::new();
    let config = world.write("machines/flake.nix", "{ outputs = _: { }; }\n");
    let sources = json!({
        "config": {"file": config.parent().unwrap().to_str().unwrap()},
        "nixpkgs": {"git": {"url": "https://github.com/NixOS/nixpkgs", "ref": "nixos-24.05"}},
    })
    .to_string();
    let sources = sources.as_bytes();
    let flake = ["--flake", "config#web1", "--flake-input", "nixpkgs=nixpkgs"];
    let deploy = |mode: &str, args: &[&str]| {
        let mut all = vec!["--target", TARGET, "--nom", "false"];
        all.extend(args);
        check(&world, mode, "krops-deploy", &all, sources);
    };
    deploy("deploy_flake", &flake);
    deploy(
        "deploy_flake_confirm",
        &[&flake[..], &["--confirm-timeout", "30"]].concat(),
    );
    // No #ATTR with a build target: the target's host name is read first.
    deploy(
        "deploy_flake_build_target_preview",
        &["--flake", "config", "--build-target", BUILD, "--preview"],
    );
    let local = world.path("local-src");
    let mut test = vec!["--target", local.to_str().unwrap()];
    test.extend(flake);
    check(&world, "test_flake", "krops-test", &test, sources);
}
