//! End-to-end: the shell examples in `scripts/examples/` (README: Examples), run as
//! a user would run them, with the built tools on PATH, against the test
//! world's sshd hosts and its nixos-rebuild stand-in.

use std::path::{Path, PathBuf};

use krops_tests::{Host, Output, Tree, World};
use serde_json::json;

/// Runs `scripts/examples/NAME ARGS` in the world root with the built tools
/// first on PATH, and `env` set on top of the world's environment.
fn example(world: &World, name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/examples")
        .join(name);
    let bin = world.tool("krops-deploy").parent().unwrap().to_owned();
    let mut cmd = world.command(script);
    cmd.args(args)
        .env("PATH", format!("{}:{}", bin.display(), world.env()["PATH"]))
        .envs(env.iter().copied());
    world.run_command(&mut cmd, b"")
}

/// `host`'s target path in the world, `NAME/src`.
fn dest(world: &World, host: &Host) -> PathBuf {
    world.path(&format!("{}/src", host.alias()))
}

/// A sources file with `host`'s own configuration.nix; returns its path.
fn sources_file(world: &World, rel: &str, host: &str) -> PathBuf {
    let config = world.write(
        &format!("cfg/{host}/configuration.nix"),
        format!("{{ networking.hostName = \"{host}\"; }}\n"),
    );
    let sources = json!({"nixos-config": {"file": config.to_str().unwrap()}});
    world.write(rel, sources.to_string())
}

/// The argv of each nixos-rebuild run, oldest first.
fn rebuilds(world: &World) -> Vec<Vec<String>> {
    world
        .records("nixos-rebuild")
        .into_iter()
        .map(|record| record.argv)
        .collect()
}

#[test]
fn list_targets_prints_each_targets_destination_port_path_and_sudo() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &dest(&world, &alpha));
    let out = example(
        &world,
        "list-targets",
        &[
            &target,
            r#"{"host": "beta", "port": 2222, "sudo": true}"#,
            "@gamma",
        ],
        &[],
    );
    out.assert_success();
    assert_eq!(
        out.stdout_str(),
        format!(
            "root@alpha\t-\t{}\t-\nroot@beta\t2222\t/var/src\tsudo\ngamma\t-\t/var/src\t-\n",
            dest(&world, &alpha).display()
        )
    );
}

#[test]
fn list_targets_stops_at_a_bad_target_with_mktargets_error() {
    let world = World::new();
    let out = example(
        &world,
        "list-targets",
        &["root@alpha", "root@-oProxyCommand=x"],
        &[],
    );
    out.assert_failure()
        .assert_stderr_contains("mktarget: error: target.host");
    assert_eq!(out.stdout_str(), "", "nothing listed");
}

#[test]
fn deploy_fleet_deploys_every_host_of_a_directory() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let beta = world.add_host("beta");
    for host in [&alpha, &beta] {
        let name = host.alias();
        sources_file(&world, &format!("hosts/{name}.json"), name);
        // The default target, root@NAME, would be /var/src of this machine.
        let target = host.target("root", &dest(&world, host));
        world.write(&format!("hosts/{name}.target"), format!("{target}\n"));
    }
    let out = example(
        &world,
        "deploy-fleet",
        &["hosts", "--force", "--nom", "false"],
        &[],
    );
    out.assert_success()
        .assert_stderr_contains("fleet: 2 of 2 hosts ok");
    out.assert_stdout_contains("alpha | nixos-rebuild stand-in: switch");
    out.assert_stdout_contains("beta | nixos-rebuild stand-in: switch");
    for host in [&alpha, &beta] {
        let config = std::fs::read_to_string(dest(&world, host).join("nixos-config")).unwrap();
        assert!(config.contains(host.alias()), "{config}");
    }
    let mut nix_paths: Vec<String> = world
        .records("nixos-rebuild")
        .iter()
        .map(|record| record.env["NIX_PATH"].clone())
        .collect();
    nix_paths.sort();
    assert_eq!(
        nix_paths,
        [dest(&world, &alpha), dest(&world, &beta)].map(|p| p.display().to_string())
    );
}

#[test]
fn deploy_fleet_takes_a_json_target_and_passes_options_to_krops_deploy() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    sources_file(&world, "hosts/alpha.json", "alpha");
    sources_file(&world, "hosts/beta.json", "beta");
    let target = json!({"host": "alpha", "user": "root", "path": dest(&world, &alpha)});
    world.write("hosts/alpha.target", target.to_string());
    // --on: beta (no such host in the world) is left out.
    let out = example(
        &world,
        "deploy-fleet",
        &["hosts", "--on", "alpha", "--force", "--operation", "boot"],
        &[],
    );
    out.assert_success();
    assert_eq!(rebuilds(&world), [["boot", "--no-flake"]]);
    assert!(dest(&world, &alpha).join("nixos-config").is_file());
}

#[test]
fn deploy_fleet_runs_nothing_when_a_sources_file_is_malformed() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    sources_file(&world, "hosts/alpha.json", "alpha");
    world.write(
        "hosts/alpha.target",
        alpha.target("root", &dest(&world, &alpha)),
    );
    world.write("hosts/beta.json", "{\"nixos-config\": ");
    let out = example(&world, "deploy-fleet", &["hosts", "--force"], &[]);
    out.assert_failure();
    assert!(rebuilds(&world).is_empty());
    assert!(!dest(&world, &alpha).exists(), "alpha was not populated");

    let empty = world.mkdir("empty");
    let out = example(&world, "deploy-fleet", &[empty.to_str().unwrap()], &[]);
    out.assert_failure()
        .assert_stderr_contains("no NAME.json in");
}

/// alpha with its sentinel, and a sources file for it.
fn hooked(world: &World) -> (Host, String, PathBuf) {
    let alpha = world.add_host("alpha");
    world.write("alpha/src/.populate", "");
    let target = alpha.target("root", &dest(world, &alpha));
    let sources = sources_file(world, "alpha.json", "alpha");
    (alpha, target, sources)
}

#[test]
fn deploy_with_hooks_checks_before_and_after_the_deploy() {
    let world = World::new();
    let (alpha, target, sources) = hooked(&world);
    let path = dest(&world, &alpha).display().to_string();
    // The default pre-deploy hook (a dry-build); the world has no systemd.
    let post = r#"test -f "$1/nixos-config" && echo "post: $1 ok""#;
    let out = example(
        &world,
        "deploy-with-hooks",
        &[&target, sources.to_str().unwrap(), "--nom", "false"],
        &[("POST_HOOK", post)],
    );
    out.assert_success();
    out.assert_stdout_contains(&format!("post: {path} ok"));
    assert_eq!(
        rebuilds(&world),
        [vec!["dry-build", "-I", &path], vec!["switch", "--no-flake"]]
    );
}

#[test]
fn deploy_with_hooks_activates_nothing_when_the_pre_hook_fails() {
    let world = World::new();
    let (_alpha, target, sources) = hooked(&world);
    let out = example(
        &world,
        "deploy-with-hooks",
        &[&target, sources.to_str().unwrap()],
        &[("PRE_HOOK", "echo not today >&2; exit 3")],
    );
    out.assert_failure()
        .assert_stderr_contains("not today")
        .assert_stderr_contains("pre-deploy hook failed on");
    assert!(rebuilds(&world).is_empty(), "nothing activated");
}

#[test]
fn deploy_with_hooks_fails_when_the_post_hook_fails() {
    let world = World::new();
    let (_alpha, target, sources) = hooked(&world);
    let out = example(
        &world,
        "deploy-with-hooks",
        &[&target, sources.to_str().unwrap()],
        &[("PRE_HOOK", "true"), ("POST_HOOK", "exit 4")],
    );
    out.assert_failure()
        .assert_stderr_contains("is deployed, but its post-deploy hook failed");
    assert_eq!(rebuilds(&world), [["switch", "--no-flake"]]);
}

#[test]
fn deploy_with_hooks_dry_run_runs_no_hook_and_changes_nothing() {
    let world = World::new();
    let (alpha, target, sources) = hooked(&world);
    let before = Tree::snapshot(&dest(&world, &alpha));
    let out = example(
        &world,
        "deploy-with-hooks",
        &[&target, sources.to_str().unwrap(), "--dry-run"],
        &[
            ("PRE_HOOK", "touch \"$1/pre-ran\""),
            ("POST_HOOK", "touch \"$1/post-ran\""),
        ],
    );
    out.assert_success();
    assert!(rebuilds(&world).is_empty(), "nothing activated");
    before.assert_unchanged(&Tree::snapshot(&dest(&world, &alpha)));
}

#[test]
fn check_plan_prints_a_valid_plan_and_runs_nothing() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &dest(&world, &alpha));
    let sources = sources_file(&world, "alpha.json", "alpha");
    let out = example(
        &world,
        "check-plan",
        &[&target, sources.to_str().unwrap()],
        &[],
    );
    out.assert_success()
        .assert_stderr_contains("is valid sh; nothing ran");
    out.assert_stdout_contains("# sentinel check")
        .assert_stdout_contains(&format!("{}/nixos-config", dest(&world, &alpha).display()));
    assert!(!dest(&world, &alpha).exists(), "nothing ran on alpha");
}

#[test]
fn check_plan_fails_with_populates_error_for_a_bad_source() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &dest(&world, &alpha));
    let missing = world.path("missing/configuration.nix");
    let sources = json!({"nixos-config": {"file": missing.to_str().unwrap()}});
    let file = world.write("alpha.json", sources.to_string());
    let out = example(
        &world,
        "check-plan",
        &[&target, file.to_str().unwrap()],
        &[],
    );
    out.assert_failure()
        .assert_stderr_contains("populate: error:")
        .assert_stderr_contains("nixos-config");
    assert_eq!(out.stdout_str(), "", "no plan printed");
}
