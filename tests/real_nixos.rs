//! End-to-end: krops-deploy against the REAL nixos-rebuild (NixOS's own bash
//! program, tests/world/real_rebuild.rs) on the world's NixOS machines: it
//! builds real systems from the synced sources, moves the system profile
//! with nix-env and `/run/current-system` with the systems'
//! `switch-to-configuration`, each machine in a mount namespace of its own.
//! Also: which nixos-rebuild the build target runs (the bash program or
//! nixos-rebuild-ng, whose options differ), with the real bash program and
//! with the stand-in playing nixos-rebuild-ng. Without the real program
//! (`$KROPS_NIXOS_REBUILD`), each test says `skipped:` and returns.

use std::fs;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use krops_tests::nix::nix_str;
use krops_tests::{argvs, forced_args, Host, Output, RealRebuild, World, REBUILD_VARIANT_FILE};
use serde_json::{json, Value};

fn deploy(world: &World, args: &[&str], sources: &Value) -> Output {
    world.run("krops-deploy", args, sources.to_string().as_bytes())
}

/// A NixOS host `alias` booted into the real program's system `v1`, and a
/// target on it.
fn booted_host(world: &World, rr: &RealRebuild, alias: &str) -> (Host, String) {
    let host = world.add_nixos_host(alias);
    world.boot_nixos_host(alias, &world.real_system(rr, "v1"));
    let target = host.target("root", &world.path(&format!("{alias}/src")));
    (host, target)
}

/// The arguments of a forced deploy to `target` built on `build`, once a
/// preview with them has shown the real program's system `v2` as the new one.
fn previewed_on<'a>(
    world: &World,
    rr: &RealRebuild,
    target: &'a str,
    build: &'a str,
) -> Vec<&'a str> {
    let args = forced_args(target, &["--build-target", build]);
    let mut preview = args.clone();
    preview.push("--preview");
    let v2 = world.real_system(rr, "v2");
    deploy(world, &preview, &world.real_sources(rr, "v2"))
        .assert_success()
        .assert_stdout_contains(&format!("new system:     {}", v2.display()));
    args
}

/// A host running `v1` through dry-activate (says what it would do,
/// changes nothing), test (runs `v2`, the profile keeps `v1`) and boot (the
/// profile gets `v3`, the running one stays): `run` deploys an operation
/// with the real program's sources of a system, `state` is the running and
/// the profile's system.
fn dry_activate_test_and_boot(
    run: impl Fn(&str, &str) -> Output,
    state: impl Fn() -> (Option<PathBuf>, Option<PathBuf>),
    [v1, v2, v3]: [&Path; 3],
) {
    run("dry-activate", "v2")
        .assert_success()
        .assert_stderr_contains(&format!("would activate {}", v2.display()));
    assert_eq!(state(), (Some(v1.into()), Some(v1.into())));
    run("test", "v2").assert_success();
    assert_eq!(state(), (Some(v2.into()), Some(v1.into())));
    run("boot", "v3").assert_success();
    assert_eq!(state(), (Some(v2.into()), Some(v3.into())));
}

/// `ACTION SYSTEM`, as [`RealRebuild::activations`] lists them.
fn activation(action: &str, system: &Path) -> String {
    format!("{action} {}", system.display())
}

#[test]
fn a_switch_builds_the_synced_sources_and_activates_them_on_a_remote_host() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let (_, target) = booted_host(&world, &rr, "alpha");
    let (v1, v2) = (world.real_system(&rr, "v1"), world.real_system(&rr, "v2"));
    let out = deploy(
        &world,
        &forced_args(&target, &[]),
        &world.real_sources(&rr, "v2"),
    );
    out.assert_success()
        .assert_stderr_contains("building the system configuration...");
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2.clone()));
    assert_eq!(rr.activations(), [activation("switch", &v2)]);
    // The first generation stays, for a rollback.
    let first = world.nixos_profiles_dir("alpha").join("system-1-link");
    assert_eq!(fs::canonicalize(first).ok(), Some(v1));
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [["switch", "--no-flake"]]
    );
    rr.assert_machine_untouched();
}

#[test]
fn every_operation_on_a_local_target_does_what_nixos_rebuild_does() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    // The local machine, as a NixOS machine of its own: the tool runs in
    // its mount namespace.
    world.add_local_nixos("local");
    let v1 = world.real_system(&rr, "v1");
    world.boot_nixos_host("local", &v1);
    let (v2, v3) = (world.real_system(&rr, "v2"), world.real_system(&rr, "v3"));
    let dest = world.path("local/src");
    let dest = dest.to_str().unwrap();
    let run = |operation: &str, marker: &str| {
        let sources = world.real_sources(&rr, marker).to_string();
        let args = forced_args(dest, &["--operation", operation]);
        world.run_local_nixos("local", "krops-deploy", &args, sources.as_bytes())
    };
    let state = || (world.current_system("local"), world.profile_system("local"));

    // build: the system, as ./result where nixos-rebuild ran; nothing activated.
    run("build", "v2").assert_success();
    assert_eq!(
        fs::canonicalize(world.path("result")).ok(),
        Some(v2.clone())
    );
    fs::remove_file(world.path("result")).unwrap();
    assert_eq!(state(), (Some(v1.clone()), Some(v1.clone())));
    assert!(rr.activations().is_empty());
    dry_activate_test_and_boot(run, state, [&v1, &v2, &v3]);
    // switch: both.
    run("switch", "v2").assert_success();
    assert_eq!(state(), (Some(v2.clone()), Some(v2.clone())));
    assert_eq!(
        rr.activations(),
        [
            activation("dry-activate", &v2),
            activation("test", &v2),
            activation("boot", &v3),
            activation("switch", &v2),
        ]
    );
    // A failing activation reaches the user as nixos-rebuild's failure.
    fs::write(rr.root().join("log/fail-next"), "").unwrap();
    let out = run("switch", "v3");
    out.assert_code(1)
        .assert_stderr_contains("fake activation failure (fail-next)")
        .assert_stderr_contains("nixos-rebuild switch on");
    fs::remove_file(rr.root().join("log/fail-next")).unwrap();
    rr.assert_machine_untouched();
}

/// A flake of the machine's own that nixos-rebuild must never build in
/// NIX_PATH mode: evaluating it fails, saying so.
const OWN_FLAKE: &str = "{\n  outputs = { self }: throw \"the machine's own /etc/nixos/flake.nix was built instead of the synced sources\";\n}\n";

/// Reliability (Real nixos-rebuild): a target with its own `/etc/nixos/flake.nix` → the deploy and the preview's build use the synced sources, never that flake
#[test]
fn a_target_with_its_own_flake_gets_the_synced_sources() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    world.nixos_etc_file("alpha", "nixos/flake.nix", OWN_FLAKE);
    let (_, target) = booted_host(&world, &rr, "alpha");
    let v2 = world.real_system(&rr, "v2");
    let sources = world.real_sources(&rr, "v2");
    // It is there, for every session on alpha.
    world
        .ssh("root@alpha", "test -f /etc/nixos/flake.nix")
        .assert_success();

    let out = deploy(&world, &forced_args(&target, &["--preview"]), &sources);
    out.assert_success()
        .assert_stdout_contains(&format!("new system:     {}", v2.display()));
    let out = deploy(&world, &["--target", &target, "--nom", "false"], &sources);
    out.assert_success();
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2.clone()));
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [["build", "--no-flake"], ["switch", "--no-flake"]]
    );
    rr.assert_machine_untouched();
}

/// Reliability (Real nixos-rebuild): a confirmed switch whose check fails, on a target with its own flake → the real `nixos-rebuild switch --rollback` moves the system profile and `/run/current-system` back; exit 1
#[test]
fn a_confirmed_switch_is_kept_or_really_rolled_back() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    // The rollback is nixos-rebuild's too: the machine's own flake must not
    // have a say there either.
    world.nixos_etc_file("alpha", "nixos/flake.nix", OWN_FLAKE);
    let (_, target) = booted_host(&world, &rr, "alpha");
    let (v2, v3) = (world.real_system(&rr, "v2"), world.real_system(&rr, "v3"));
    let profiles = world.nixos_profiles_dir("alpha");
    let generation = || fs::read_link(profiles.join("system")).unwrap();

    let confirmed = forced_args(&target, &["--confirm-timeout", "30"]);
    deploy(&world, &confirmed, &world.real_sources(&rr, "v2"))
        .assert_success()
        .assert_stderr_contains("confirmed over a new ssh connection to root@alpha");
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(generation(), Path::new("system-2-link"));
    // Its watchdog ends once it has recorded the confirmation.
    let log = world.nixos_run_dir("alpha").join("krops/log");
    for _ in 0..600 {
        if fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(" confirmed")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // A failing check: the watchdog rolls back at once, with nixos-rebuild
    // switch --rollback, to the generation before.
    let mut failing = confirmed.to_vec();
    failing.extend(["--check", "false"]);
    let out = deploy(&world, &failing, &world.real_sources(&rr, "v3"));
    out.assert_code(1)
        .assert_stderr_contains("not confirmed (the check failed)")
        .assert_stderr_contains("root@alpha rolled back to the previous system");
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2.clone()));
    assert_eq!(generation(), Path::new("system-2-link"));
    assert_eq!(
        rr.activations(),
        [
            activation("switch", &v2),
            activation("switch", &v3),
            // The rollback: generation 2 again.
            activation("switch", &v2),
        ]
    );
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [
            vec!["switch", "--no-flake"],
            vec!["switch", "--no-flake"],
            vec!["switch", "--rollback", "--no-flake"]
        ]
    );
    rr.assert_machine_untouched();
}

/// An ssh config with every host of the world's and `hidden`, an alias
/// only it knows for the host `alias`: a target named `hidden` is reached
/// only through the `-F` option that names this file.
fn config_knowing_hidden(world: &World, alias: &str) -> PathBuf {
    let config = fs::read_to_string(world.ssh_config()).unwrap();
    let start = config
        .find(&format!("Host {alias}\n"))
        .unwrap_or_else(|| panic!("no block for {alias}:\n{config}"));
    let block = &config[start..];
    let end = block[1..].find("\nHost ").map_or(block.len(), |i| i + 2);
    let hidden = block[..end].replacen(&format!("Host {alias}\n"), "Host hidden\n", 1);
    world.write("ssh/config-with-hidden", format!("{config}{hidden}"))
}

/// Reliability (Real nixos-rebuild): a target the build target reaches only through the target's ssh options → built where nixos-rebuild runs, copied and activated with them (`NIX_SSHOPTS`)
#[test]
fn a_build_target_builds_and_reaches_the_target_through_its_options() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    booted_host(&world, &rr, "alpha");
    let beta = world.add_nixos_host("beta");
    let v2 = world.real_system(&rr, "v2");
    let config = config_knowing_hidden(&world, "alpha");
    // Only the target's own options say where `hidden` is.
    let target = json!({
        "user": "root", "host": "hidden", "path": world.path("alpha/src").to_str().unwrap(),
        "extraOptions": ["-F", config.to_str().unwrap()],
    });
    world
        .ssh("root@beta", "ssh -T root@hidden true")
        .assert_failure();
    let target = target.to_string();
    let build = beta.target("root", &world.path("beta/src"));
    // The preview builds there too, and copies to the target to compare.
    let args = previewed_on(&world, &rr, &target, &build);
    assert!(rr.activations().is_empty());
    let out = deploy(&world, &args, &world.real_sources(&rr, "v2"));
    out.assert_success();
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2.clone()));
    assert_eq!(world.current_system("beta"), None, "beta only built");
    assert_eq!(world.profile_system("beta"), None);
    let rebuild = world.records("nixos-rebuild").pop().unwrap();
    assert_eq!(
        rebuild.argv,
        ["switch", "--no-flake", "--target-host", "root@hidden"]
    );
    assert_eq!(
        rebuild.var("NIX_PATH"),
        world.path("beta/src").to_str(),
        "built from the build target's sources"
    );
    rr.assert_machine_untouched();
}

#[test]
fn a_sudo_target_is_rebuilt_with_the_option_the_bash_program_knows() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    booted_host(&world, &rr, "alpha");
    let v2 = world.real_system(&rr, "v2");
    // The rebuild runs as root through sudo (the bash program's
    // --use-remote-sudo then prefixes root's own commands with sudo).
    let target = world.sudo_user_target("alpha", true);
    let out = deploy(
        &world,
        &forced_args(&target, &["--cross-deploy"]),
        &world.real_sources(&rr, "v2"),
    );
    out.assert_success();
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2));
    // Asked once which program it is: the real bash program refused
    // --sudo, so it got --use-remote-sudo and --no-build-nix.
    let records = world.records("nixos-rebuild");
    assert_eq!(
        argvs(&records),
        [
            vec!["--sudo", "--krops-probe"],
            vec![
                "switch",
                "--no-flake",
                "--no-build-nix",
                "--use-remote-sudo"
            ]
        ]
    );
    assert_eq!(records[0].exit, Some(1));
    assert_eq!((records[1].uid, records[1].exit), (0, Some(0)));
    rr.assert_machine_untouched();
}

#[test]
fn nixos_rebuild_ng_gets_sudo_and_no_no_build_nix() {
    // The stand-in, reading options as nixos-rebuild-ng does: it knows
    // --sudo, and warns about --use-remote-sudo and --no-build-nix.
    let world = World::new();
    world.add_host("alpha");
    let beta = world.add_host("beta");
    let user = world.sudo_user();
    let dest = world.mkdir("root-owned").join("src");
    let target =
        json!({"user": user, "host": "alpha", "path": dest.to_str().unwrap(), "sudo": true})
            .to_string();
    world.write(&format!("records/{REBUILD_VARIANT_FILE}"), "ng\n");
    world.write("cfg/configuration.nix", "{ }\n");
    let sources =
        json!({"nixos-config": {"file": world.path("cfg/configuration.nix").to_str().unwrap()}});
    let build = beta.target("root", &world.path("beta/src"));
    let args = forced_args(&target, &["--cross-deploy"]);
    let mut with_build = args.to_vec();
    with_build.extend(["--build-target", &build]);
    for args in [&args[..], &with_build] {
        let out = deploy(&world, args, &sources);
        out.assert_success();
        assert!(!out.stderr_str().contains("deprecated"), "{out}");
    }
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [
            vec!["switch", "--no-flake", "--sudo"],
            vec![
                "switch",
                "--no-flake",
                "--target-host",
                &format!("{user}@alpha"),
                "--sudo"
            ]
        ]
    );
}

/// Runs krops-deploy with `args` and `sources` (a file) on a terminal
/// (util-linux `script`), typing `answer`.

#[test]
fn preview_and_ask_build_with_the_real_program_and_activate_what_was_shown() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let (_, target) = booted_host(&world, &rr, "alpha");
    let (v1, v2) = (world.real_system(&rr, "v1"), world.real_system(&rr, "v2"));
    let sources = world.real_sources(&rr, "v2");
    let out = deploy(&world, &forced_args(&target, &["--preview"]), &sources);
    out.assert_success();
    assert!(
        out.stdout_str().starts_with(&format!(
            "running system: {}\nnew system:     {}\n",
            v1.display(),
            v2.display()
        )),
        "{out}"
    );
    assert_eq!(world.current_system("alpha"), Some(v1.clone()));
    assert!(rr.activations().is_empty());

    let ask = ["--target", &target, "--nom", "false", "--ask"];
    world
        .deploy_on_a_terminal(&ask, &sources, "n\n")
        .assert_code(1);
    assert_eq!(world.current_system("alpha"), Some(v1.clone()));
    world
        .deploy_on_a_terminal(&ask, &sources, "y\n")
        .assert_success()
        .assert_stdout_contains("Activate? [y/N]");
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2.clone()));
    assert_eq!(rr.activations(), [activation("switch", &v2)]);
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [
            ["build", "--no-flake"],
            ["build", "--no-flake"],
            ["build", "--no-flake"]
        ]
    );
    rr.assert_machine_untouched();
}

#[test]
fn a_world_leaves_no_gc_roots_of_its_builds_behind() {
    // nix-build -o LINK (a result link, a derivation source) registers an
    // indirect root in this machine's /nix/var/nix/gcroots/auto.
    let roots = |link: &Path| -> Vec<PathBuf> {
        fs::read_dir("/nix/var/nix/gcroots/auto")
            .unwrap()
            .flatten()
            .map(|entry| entry.path())
            .filter(|root| fs::read_link(root).is_ok_and(|to| to == link))
            .collect()
    };
    let world = World::new();
    let expr = world.write(
        "trivial.nix",
        "derivation { name = \"krops-test-root\"; system = builtins.currentSystem; \
         builder = \"/bin/sh\"; args = [ \"-c\" \"echo > $out\" ]; }",
    );
    let link = world.path("result");
    world
        .run_command(
            world.command("nix-build").arg(&expr).arg("-o").arg(&link),
            b"",
        )
        .assert_success();
    assert_eq!(roots(&link).len(), 1);
    drop(world);
    assert_eq!(roots(&link), Vec::<PathBuf>::new());
}

#[test]
fn a_build_target_deploys_to_a_sudo_user_through_the_nix_daemon() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let user = world.sudo_user();
    booted_host(&world, &rr, "alpha");
    let beta = world.add_nixos_host("beta");
    let v2 = world.real_system(&rr, "v2");
    // The copy to alpha logs in as the sudo test user, whose nix-store
    // works through the nix-daemon (scripts/test starts it).
    let daemon = world.run_command(
        world
            .command("sudo")
            .args(["-u", user, "nix-store", "-q", "--hash"])
            .arg(&v2),
        b"",
    );
    assert!(
        daemon.success(),
        "{user} cannot use the nix store: scripts/test adds it to nix-users and starts \
         nix-daemon\n{daemon}"
    );
    // nixos-rebuild puts its own PATH first, so its ssh is /usr/bin/ssh,
    // not the world's wrapper: the world's ssh config comes with the target.
    let target = json!({
        "user": user, "host": "alpha", "path": world.path("alpha/src").to_str().unwrap(),
        "sudo": true, "extraOptions": ["-F", world.ssh_config().to_str().unwrap()],
    });
    let out = deploy(
        &world,
        &[
            "--target",
            &target.to_string(),
            "--build-target",
            &beta.target("root", &world.path("beta/src")),
            "--force",
            "--nom",
            "false",
        ],
        &world.real_sources(&rr, "v2"),
    );
    out.assert_success();
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2.clone()));
    assert_eq!(world.current_system("beta"), None);
    let records = world.records("nixos-rebuild");
    assert_eq!(
        argvs(&records),
        [
            vec!["--sudo", "--krops-probe"],
            vec![
                "switch",
                "--no-flake",
                "--target-host",
                &format!("{user}@alpha"),
                "--use-remote-sudo"
            ]
        ]
    );
    // Activated as root, through sudo on alpha.
    let log = fs::read_to_string(rr.root().join("log/activations.log")).unwrap();
    assert!(log.contains(" uid=0 "), "{log}");
    rr.assert_machine_untouched();
}

#[test]
fn the_real_program_never_runs_outside_a_world_nixos_machine() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    // alpha is no NixOS machine: its profile would be this machine's.
    let alpha = world.add_host("alpha");
    let out = deploy(
        &world,
        &[
            "--target",
            &alpha.target("root", &world.path("alpha/src")),
            "--force",
            "--nom",
            "false",
        ],
        &world.real_sources(&rr, "v2"),
    );
    out.assert_code(125).assert_stderr_contains(
        "refusing to run the real nixos-rebuild outside a world NixOS machine",
    );
    assert!(rr.activations().is_empty());
    rr.assert_machine_untouched();
}

/// The real bash nixos-rebuild passes `--target-host` to ssh as it is:
/// given `root@[::1]`, ssh looks up the host name `[::1]` and fails. The
/// recorder had accepted the brackets.
#[test]
fn a_build_target_reaches_an_ipv6_target_with_the_real_program() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let six = world.add_nixos_host_at("six", IpAddr::V6(Ipv6Addr::LOCALHOST));
    world.boot_nixos_host("six", &world.real_system(&rr, "v1"));
    let beta = world.add_nixos_host("beta");
    let v2 = world.real_system(&rr, "v2");
    // nixos-rebuild puts /usr/bin first on its PATH, so its ssh is not the
    // world's wrapper: the world's ssh config comes with the target.
    let target = json!({
        "user": "root", "host": six.address().to_string(), "port": six.port(),
        "path": world.path("six/src").to_str().unwrap(),
        "extraOptions": ["-F", world.ssh_config().to_str().unwrap()],
    })
    .to_string();
    let build = beta.target("root", &world.path("beta/src"));
    let args = previewed_on(&world, &rr, &target, &build);
    deploy(&world, &args, &world.real_sources(&rr, "v2")).assert_success();
    assert_eq!(world.current_system("six"), Some(v2.clone()));
    assert_eq!(world.profile_system("six"), Some(v2));
    assert_eq!(world.current_system("beta"), None, "beta only built");
    rr.assert_machine_untouched();
}

/// A target path with a space, non-ASCII letters and a trailing slash goes
/// through NIX_PATH, the shell text and the real nixos-rebuild intact.
#[test]
fn a_target_path_with_a_space_unicode_and_a_trailing_slash_deploys_with_the_real_program() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let host = world.add_nixos_host("alpha");
    world.boot_nixos_host("alpha", &world.real_system(&rr, "v1"));
    let v2 = world.real_system(&rr, "v2");
    let dir = world.path("alpha/my src ü");
    let target = format!("{}/", host.target("root", &dir));
    for operation in ["dry-activate", "test", "switch"] {
        deploy(
            &world,
            &forced_args(&target, &["--operation", operation]),
            &world.real_sources(&rr, "v2"),
        )
        .assert_success();
    }
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2));
    assert!(dir.join("nixos-config").is_file());
    rr.assert_machine_untouched();
}

/// A sudo target (a non-root login with `sudo: true`) through every
/// operation with the real program, and a preview there.
#[test]
fn every_operation_on_a_sudo_target_with_the_real_program() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    world.add_nixos_host("alpha");
    let v1 = world.real_system(&rr, "v1");
    world.boot_nixos_host("alpha", &v1);
    let (v2, v3) = (world.real_system(&rr, "v2"), world.real_system(&rr, "v3"));
    let target = world.sudo_user_target("alpha", true);
    let run = |extra: &[&str], marker: &str| {
        deploy(
            &world,
            &forced_args(&target, extra),
            &world.real_sources(&rr, marker),
        )
    };
    let state = || (world.current_system("alpha"), world.profile_system("alpha"));
    dry_activate_test_and_boot(
        |op, marker| run(&["--operation", op], marker),
        state,
        [&v1, &v2, &v3],
    );
    run(&["--preview"], "v3")
        .assert_success()
        .assert_stdout_contains(&format!("new system:     {}", v3.display()));
    assert_eq!(state(), (Some(v2.clone()), Some(v3.clone())));
    run(&[], "v3").assert_success();
    assert_eq!(state(), (Some(v3.clone()), Some(v3)));
    rr.assert_machine_untouched();
}

/// A krops.nix as the krops README writes one: several sources (nixpkgs
/// from git, the configuration as a file, a symlink) through `lib` and
/// `pkgs.krops.writeDeploy` with a `buildTarget`, its script run as a user
/// runs it, against the real nixos-rebuild.
#[test]
fn a_krops_nix_with_a_build_target_deploys_through_the_writers_with_the_real_program() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    world.add_nixos_host("alpha");
    world.boot_nixos_host("alpha", &world.real_system(&rr, "v1"));
    world.add_nixos_host("beta");
    let v2 = world.real_system(&rr, "v2");
    // nixpkgs from git: the real program's nixpkgs, committed.
    let nixpkgs = world.git_repo("nixpkgs");
    let copy = world
        .command("cp")
        .arg("-a")
        .arg(rr.nixpkgs().join("."))
        .arg(nixpkgs.path())
        .output()
        .unwrap();
    assert!(copy.status.success(), "{copy:?}");
    let commit = nixpkgs.commit("nixpkgs");
    let config = world.real_sources(&rr, "v2")["nixos-config"]["file"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    let (writers, krops_rs) = world.nix_fixtures();
    let file = world.write(
        "krops.nix",
        format!(
            r#"let
  krops = {krops};
  lib = import "${{krops}}/lib";
  writers = import {writers};
  pkgs.krops = import "${{krops}}/pkgs/krops" {{ inherit writers; krops-rs = {krops_rs}; }};
  source = lib.evalSource [{{
    nixpkgs.git = {{ url = {url}; ref = {commit}; }};
    nixos-config.file = {{ path = {config}; useChecksum = true; }};
    "hello.txt".symlink = "nixos-config";
  }}];
in pkgs.krops.writeDeploy "deploy-alpha" {{
  inherit source;
  target = lib.mkTarget "root@alpha{alpha}" // {{ extraOptions = [ "-F" {ssh_config} ]; }};
  buildTarget = "root@beta{beta}";
  force = true;
  useNixOutputMonitor = false;
}}
"#,
            krops = nix_str(krops_tests::nix::krops_dir().to_str().unwrap()),
            writers = nix_str(writers.to_str().unwrap()),
            krops_rs = nix_str(krops_rs.to_str().unwrap()),
            url = nix_str(&nixpkgs.url()),
            commit = nix_str(&commit),
            config = nix_str(&config),
            alpha = world.path("alpha/src").display(),
            beta = world.path("beta/src").display(),
            ssh_config = nix_str(world.ssh_config().to_str().unwrap()),
        ),
    );
    let script = world.nix_build(&file, "");
    world
        .run_command(&mut world.command(&script), b"")
        .assert_success();
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2));
    assert_eq!(world.current_system("beta"), None, "beta only built");
    for host in ["alpha", "beta"] {
        let dest = world.path(&format!("{host}/src"));
        assert_eq!(
            krops_tests::git_head(&dest.join("nixpkgs")),
            commit,
            "{host}"
        );
        assert_eq!(
            std::fs::read_link(dest.join("hello.txt")).unwrap(),
            Path::new("nixos-config")
        );
    }
    rr.assert_machine_untouched();
}

/// `--ask` together with `--confirm-timeout` on a target with its own
/// `/etc/nixos/flake.nix`, with the real program: what was shown is
/// activated and confirmed; then a failing check rolls the asked-for
/// system back with the real `nixos-rebuild switch --rollback`, which the
/// machine's flake has no say in either.
/// Reliability (Real nixos-rebuild): `--ask` with `--confirm-timeout` on a target with its own flake, the check failing → the system asked for is activated, then the real `nixos-rebuild switch --rollback` moves the profile and `/run/current-system` back; exit 1
#[test]
fn ask_with_a_confirm_timeout_on_a_flake_target_is_kept_or_rolled_back() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    world.nixos_etc_file(
        "alpha",
        "nixos/flake.nix",
        "{\n  outputs = { self }: throw \"the machine's own flake was built\";\n}\n",
    );
    let host = world.add_nixos_host("alpha");
    world.boot_nixos_host("alpha", &world.real_system(&rr, "v1"));
    let target = host.target("root", &world.path("alpha/src"));
    let (v2, v3) = (world.real_system(&rr, "v2"), world.real_system(&rr, "v3"));
    let ask = forced_args(&target, &["--ask", "--confirm-timeout", "30"]);
    world
        .deploy_on_a_terminal(&ask, &world.real_sources(&rr, "v2"), "y\n")
        .assert_success()
        .assert_stdout_contains("Activate? [y/N]")
        .assert_stdout_contains("the new system stays");
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2.clone()));
    // Its watchdog ends once it has recorded the confirmation.
    let log = world.nixos_run_dir("alpha").join("krops/log");
    for _ in 0..600 {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(" confirmed")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut failing = ask.to_vec();
    failing.extend(["--check", "false"]);
    world
        .deploy_on_a_terminal(&failing, &world.real_sources(&rr, "v3"), "y\n")
        .assert_code(1)
        .assert_stdout_contains("rolled back to the previous system");
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2.clone()));
    let activations = rr.activations();
    assert_eq!(
        activations.last().map(String::as_str),
        Some(format!("switch {}", v2.display()).as_str()),
        "{activations:?}"
    );
    assert!(
        activations.contains(&format!("switch {}", v3.display())),
        "{activations:?}"
    );
    rr.assert_machine_untouched();
}
