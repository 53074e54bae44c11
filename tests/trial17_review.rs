//! End-to-end: a review of issue 17's changes as a demanding krops user
//! would try them, with inputs the first round of tests did not write,
//! against the real programs (real sshd, the real nixos-rebuild where
//! `$KROPS_NIXOS_REBUILD` names it; each test says `skipped:` otherwise).

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use krops_tests::{Output, World};
use serde_json::{json, Value};

fn deploy(world: &World, args: &[&str], sources: &Value) -> Output {
    world.run("krops-deploy", args, sources.to_string().as_bytes())
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
    let args = [
        "--target",
        &target,
        "--build-target",
        &build,
        "--force",
        "--nom",
        "false",
    ];
    let mut preview = args.to_vec();
    preview.push("--preview");
    deploy(&world, &preview, &world.real_sources(&rr, "v2"))
        .assert_success()
        .assert_stdout_contains(&format!("new system:     {}", v2.display()));
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
            &[
                "--target",
                &target,
                "--force",
                "--nom",
                "false",
                "--operation",
                operation,
            ],
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
    let user = world.sudo_user();
    world.add_nixos_host("alpha");
    let v1 = world.real_system(&rr, "v1");
    world.boot_nixos_host("alpha", &v1);
    let (v2, v3) = (world.real_system(&rr, "v2"), world.real_system(&rr, "v3"));
    let dest = world.path("alpha/src");
    std::fs::create_dir_all(&dest).unwrap();
    world.chown_to_sudo_user(&dest);
    let target =
        json!({"user": user, "host": "alpha", "path": dest.to_str().unwrap(), "sudo": true})
            .to_string();
    let run = |extra: &[&str], marker: &str| {
        let mut args = vec!["--target", &target, "--force", "--nom", "false"];
        args.extend(extra);
        deploy(&world, &args, &world.real_sources(&rr, marker))
    };
    let state = || (world.current_system("alpha"), world.profile_system("alpha"));
    run(&["--operation", "dry-activate"], "v2")
        .assert_success()
        .assert_stderr_contains(&format!("would activate {}", v2.display()));
    assert_eq!(state(), (Some(v1.clone()), Some(v1.clone())));
    run(&["--operation", "test"], "v2").assert_success();
    assert_eq!(state(), (Some(v2.clone()), Some(v1.clone())));
    run(&["--operation", "boot"], "v3").assert_success();
    assert_eq!(state(), (Some(v2.clone()), Some(v3.clone())));
    run(&["--preview"], "v3")
        .assert_success()
        .assert_stdout_contains(&format!("new system:     {}", v3.display()));
    assert_eq!(state(), (Some(v2.clone()), Some(v3.clone())));
    run(&[], "v3").assert_success();
    assert_eq!(state(), (Some(v3.clone()), Some(v3)));
    rr.assert_machine_untouched();
}

fn document(out: &Output) -> Value {
    serde_json::from_str(out.stdout_str().trim_end())
        .unwrap_or_else(|err| panic!("stdout is not one JSON document ({err}):\n{out}"))
}

/// README: when the run failed, `ok` is false "and `error` says why". A
/// failed activation said `error: null`, while stderr said
/// `krops-deploy: error: nixos-rebuild switch … failed: exit status 1`.
#[test]
fn json_after_a_failed_rebuild_says_why_as_stderr_does() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let host = world.add_nixos_host("alpha");
    let v1 = world.real_system(&rr, "v1");
    world.boot_nixos_host("alpha", &v1);
    let target = host.target("root", &world.path("alpha/src"));
    // The next switch-to-configuration fails (exit 4), as an activation
    // that a broken unit stops does.
    world.write("rr/log/fail-next", "");
    let out = deploy(
        &world,
        &["--target", &target, "--force", "--nom", "false", "--json"],
        &world.real_sources(&rr, "v2"),
    );
    let code = out.code().expect("an exit code");
    assert_ne!(code, 0, "{out}");
    let why = format!("nixos-rebuild switch on root@alpha (the target) failed: exit status {code}");
    out.assert_stderr_contains(&format!("krops-deploy: error: {why}"));
    let doc = document(&out);
    assert_eq!(doc["ok"], false, "{doc}");
    assert_eq!(doc["error"], why.as_str(), "{doc}");
    assert_eq!(doc["final"]["ok"], false, "{doc}");
    assert_eq!(doc["final"]["exitCode"], code, "{doc}");
    assert_eq!(doc["targets"][0]["ok"], true, "{doc}");
    rr.assert_machine_untouched();
}

/// README: command-line mistakes exit 2, also those found after parsing.
/// A `--target` (or `--build-target`) the tools refuse is one, as
/// `--operation ''` and `--confirm-timeout 0` are; it exited 1, like a
/// failed deploy, so a script could not tell the two apart.
#[test]
fn a_bad_target_on_the_command_line_exits_2() {
    let world = World::new();
    let host = world.add_host("alpha");
    let good = host.target("root", &world.path("alpha/src"));
    world.write("cfg/configuration.nix", "{ }\n");
    let sources = json!({"cfg": {"file": world.path("cfg").to_str().unwrap()}});
    let bad = [
        ("/srv/a=b", "contains '='"),
        ("/srv/a:b", "target"),
        ("-oProxyCommand=x/srv", "begins with '-'"),
        ("alpha:0/srv", "not a port number"),
        (r#"{"path": "relative"}"#, "target.path"),
    ];
    for (target, says) in bad {
        for tool in ["populate", "krops-deploy", "krops-command", "krops-test"] {
            let out = world.run(
                tool,
                &["--target", target, "--force"],
                sources.to_string().as_bytes(),
            );
            out.assert_code(2)
                .assert_stderr_contains(&format!("{tool}: error:"))
                .assert_stderr_contains(says);
        }
        let out = deploy(
            &world,
            &["--target", &good, "--build-target", target, "--force"],
            &sources,
        );
        out.assert_code(2)
            .assert_stderr_contains("krops-deploy: error: --build-target: ")
            .assert_stderr_contains(says);
        // With --json, the document says so too.
        let out = deploy(&world, &["--target", target, "--json"], &sources);
        out.assert_code(2);
        assert!(document(&out)["error"].as_str().unwrap().contains(says));
    }
    // krops-test builds here: a remote target is a mistake of the same kind.
    world
        .run(
            "krops-test",
            &["--target", &good],
            sources.to_string().as_bytes(),
        )
        .assert_code(2)
        .assert_stderr_contains("the target must be local");
    assert!(!world.path("alpha/src").exists(), "nothing was synced");
}

fn nix_str(s: &str) -> String {
    serde_json::to_string(s).unwrap().replace("${", "\\${")
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

/// Runs krops-deploy with `args` on a terminal (util-linux `script`),
/// typing `answer`.
fn deploy_on_a_terminal(world: &World, args: &[&str], sources: &Value, answer: &str) -> Output {
    let file = world.write("sources.json", sources.to_string());
    let mut line = vec![world.tool("krops-deploy").display().to_string()];
    line.extend(args.iter().map(|a| a.to_string()));
    line.extend(["--sources".to_owned(), file.display().to_string()]);
    let line = line
        .iter()
        .map(|w| krops_tests::quote(std::ffi::OsStr::new(w)))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = world.command("setsid");
    cmd.args(["-w", "script", "-qefc", &line, "/dev/null"]);
    world.run_command(&mut cmd, answer.as_bytes())
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
    let ask = [
        "--target",
        &target,
        "--force",
        "--nom",
        "false",
        "--ask",
        "--confirm-timeout",
        "30",
    ];
    deploy_on_a_terminal(&world, &ask, &world.real_sources(&rr, "v2"), "y\n")
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
    deploy_on_a_terminal(&world, &failing, &world.real_sources(&rr, "v3"), "y\n")
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

/// A build target that names the target's own path with a trailing slash
/// (or `//`) is the target: it was taken for another machine, so the one
/// path was populated twice, under two locks on one lock file, and
/// nixos-rebuild got `--target-host` naming the machine it ran on.
#[test]
fn a_build_target_that_is_the_target_but_for_a_trailing_slash_is_the_target() {
    let world = World::new();
    let host = world.add_host("alpha");
    world.write("cfg/configuration.nix", "{ }\n");
    let sources =
        json!({"nixos-config": {"file": world.path("cfg/configuration.nix").to_str().unwrap()}});
    let dest = world.path("alpha/src");
    let target = host.target("root", &dest);
    for build in [
        format!("{target}/"),
        host.target("root", &world.path("alpha//src")),
    ] {
        let out = deploy(
            &world,
            &[
                "--target",
                &target,
                "--build-target",
                &build,
                "--force",
                "--nom",
                "false",
            ],
            &sources,
        );
        out.assert_success();
        assert_eq!(
            out.stderr_str()
                .matches("populate: sentinel check →")
                .count(),
            1,
            "populated once\n{out}"
        );
    }
    let records = world.records("nixos-rebuild");
    assert_eq!(records.len(), 2, "{records:?}");
    for record in records {
        assert_eq!(record.argv, ["switch", "--no-flake"]);
    }
}
