//! End-to-end: krops-deploy, krops-test and krops-command against real sshd
//! hosts, with stand-ins only for nixos-rebuild and nom (README: The tools).

use std::path::Path;

use krops_tests::World;
use serde_json::{json, Value};

/// A small configuration: a file and a symlink.
fn sources(world: &World) -> Value {
    world.write("cfg/configuration.nix", "{ }\n");
    json!({
        "nixos-config": {"file": world.path("cfg/configuration.nix").to_str().unwrap()},
        "link": {"symlink": "nixos-config"},
    })
}

#[test]
fn deploy_switches_a_remote_target() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("alpha/src");
    let out = world.run_with_sources(
        "krops-deploy",
        &["--target", &alpha.target("root", &dest), "--force"],
        &sources(&world),
    );
    out.assert_success();
    out.assert_stderr_contains("# use nix-output-monitor: opportunistic");
    assert!(dest.join("nixos-config").is_file() && dest.join("link").is_symlink());
    let rebuild = world.only_rebuild();
    assert_eq!(rebuild.argv, ["switch", "--no-flake"]);
    assert_eq!(rebuild.env["NIX_PATH"], dest.to_str().unwrap());
    assert_eq!(rebuild.uid, 0);
    assert_eq!(
        rebuild.server_port(),
        alpha.port().to_string(),
        "ran over ssh on alpha"
    );
    // Opportunistic: nom is on alpha's PATH, so the output went through it.
    let nom = world.records("nom");
    assert_eq!(nom.len(), 1);
    assert!(String::from_utf8_lossy(&nom[0].stdin).contains("nixos-rebuild stand-in: switch"));
    out.assert_stdout_contains("nom: nixos-rebuild stand-in: switch");
}

#[test]
fn deploy_boot_cross_deploy() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("alpha/src");
    let target = alpha.target("root", &dest);
    let args = [
        "--target",
        &target,
        "--force",
        "--operation",
        "boot",
        "--cross-deploy",
        "--fast",
    ];
    let out = world.run_with_sources("krops-deploy", &args, &sources(&world));
    out.assert_success()
        .assert_stderr_contains("--fast is deprecated");
    assert_eq!(
        world.only_rebuild().argv,
        ["boot", "--no-flake", "--no-build-nix"]
    );
}

#[test]
fn deploy_with_a_build_target_populates_both_and_builds_there() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let beta = world.add_host("beta");
    let target_dir = world.path("alpha/src");
    let build_dir = world.path("beta/src");
    // The target has a port and an ssh option, which the build host needs too.
    let target = json!({
        "user": "root", "host": "alpha", "port": alpha.port(), "path": target_dir.to_str().unwrap(),
        "extraOptions": ["-o", "ServerAliveInterval=30"]
    });
    let args = [
        "--target",
        &target.to_string(),
        "--build-target",
        &beta.target("root", &build_dir),
        "--force",
        "--nom",
        "false",
    ];
    let out = world.run_with_sources("krops-deploy", &args, &sources(&world));
    out.assert_success();
    for dir in [&target_dir, &build_dir] {
        assert!(
            dir.join("nixos-config").is_file(),
            "{} not populated",
            dir.display()
        );
    }
    let rebuild = world.only_rebuild();
    assert_eq!(
        rebuild.argv,
        ["switch", "--no-flake", "--target-host", "root@alpha"]
    );
    assert_eq!(rebuild.env["NIX_PATH"], build_dir.to_str().unwrap());
    assert_eq!(
        rebuild.server_port(),
        beta.port().to_string(),
        "ran on the build target"
    );
    assert_eq!(
        rebuild.env["NIX_SSHOPTS"],
        format!("-p {} -o ServerAliveInterval=30", alpha.port())
    );
    assert!(world.records("nom").is_empty(), "--nom false");
    out.assert_stdout_contains("nixos-rebuild stand-in: switch");

    // An option NIX_SSHOPTS cannot carry: a warning, and none of them passed.
    let spaced = json!({
        "user": "root", "host": "alpha", "port": alpha.port(), "path": target_dir.to_str().unwrap(),
        "extraOptions": ["-o", "ServerAliveInterval 30"]
    });
    let args = [
        "--target",
        &spaced.to_string(),
        "--build-target",
        &beta.target("root", &build_dir),
        "--nom",
        "false",
    ];
    let out = world.run_with_sources("krops-deploy", &args, &sources(&world));
    out.assert_success()
        .assert_stderr_contains("cannot go through NIX_SSHOPTS");
    let last = world.records("nixos-rebuild").pop().unwrap();
    assert!(
        !last.env.contains_key("NIX_SSHOPTS"),
        "{:?}",
        last.env.get("NIX_SSHOPTS")
    );
}

#[test]
fn deploy_to_a_sudo_target_uses_remote_sudo_and_runs_as_root() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let user = world.sudo_user();
    let dest = world.mkdir("root-owned").join("src");
    let target =
        json!({"user": user, "host": "alpha", "path": dest.to_str().unwrap(), "sudo": true});
    let out = world.run_with_sources(
        "krops-deploy",
        &["--target", &target.to_string(), "--force"],
        &sources(&world),
    );
    out.assert_success();
    let rebuild = world.only_rebuild();
    assert_eq!(rebuild.argv, ["switch", "--no-flake", "--use-remote-sudo"]);
    assert_eq!(rebuild.uid, 0, "the rebuild runs under sudo");
    assert_eq!(rebuild.env["NIX_PATH"], dest.to_str().unwrap());
}

#[test]
fn nom_modes() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("alpha/src");
    let target = alpha.target("root", &dest);
    let src = sources(&world);
    let deploy = |mode: &str| {
        world.run_with_sources(
            "krops-deploy",
            &["--target", &target, "--force", "--nom", mode],
            &src,
        )
    };
    let count = || {
        (
            world.records("nixos-rebuild").len(),
            world.records("nom").len(),
        )
    };

    deploy("optimistic")
        .assert_success()
        .assert_stdout_contains("nom: nixos-rebuild stand-in");
    assert_eq!(count(), (1, 1));
    deploy("true")
        .assert_success()
        .assert_stderr_contains("# use nix-output-monitor: true");
    assert_eq!(count(), (2, 2));
    let out = deploy("false");
    assert_eq!(
        out.assert_success().stdout_str(),
        "nixos-rebuild stand-in: switch --no-flake\n"
    );
    assert_eq!(count(), (3, 2));

    // Without nom on the target: opportunistic runs plain, optimistic fails.
    std::fs::remove_file(world.bin_dir().join("nom")).unwrap();
    let out = deploy("opportunistic");
    out.assert_success();
    assert!(
        out.stdout_str()
            .starts_with("nixos-rebuild stand-in: switch"),
        "{}",
        out.stdout_str()
    );
    assert_eq!(count(), (4, 2));
    let out = deploy("optimistic");
    out.assert_code(127).assert_stderr_contains("nom");
    // Pessimistic asks nix-shell for nom; there is no nixpkgs in the sources,
    // so the real nix-shell fails before the rebuild runs.
    let out = deploy("pessimistic");
    out.assert_failure()
        .assert_stderr_contains("# use nix-output-monitor: pessimistic");
    out.assert_stderr_contains("nixpkgs");
    assert_eq!(world.records("nixos-rebuild").len(), 5);
}

#[test]
fn a_failing_rebuild_reaches_the_user() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let src = sources(&world);
    world.set_rebuild_exit(3);
    let out = world.run_with_sources(
        "krops-deploy",
        &["--target", &target, "--force", "--nom", "false"],
        &src,
    );
    out.assert_code(3);
    out.assert_stderr_contains("nixos-rebuild stand-in: this line goes to stderr");
    // Every failure starts with `TOOL: error:` and says what failed, where.
    out.assert_stderr_contains(
        "krops-deploy: error: nixos-rebuild switch on root@alpha (the target) failed: exit status 3",
    );
    // Through nom too (krops's pipe would have reported nom's success).
    let out = world.run_with_sources(
        "krops-deploy",
        &["--target", &target, "--nom", "optimistic"],
        &src,
    );
    out.assert_code(3);
}

#[test]
fn a_failing_populate_stops_the_deploy() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let out = world.run_with_sources("krops-deploy", &["--target", &target], &sources(&world));
    out.assert_failure()
        .assert_stderr_contains("\nerror: missing sentinel file: alpha:")
        .assert_stderr_contains("krops-deploy: error: sentinel check → alpha:");
    assert!(world.records("nixos-rebuild").is_empty());
}

/// A nixpkgs whose `nixos` builds a system from `<nixos-config>` with /bin/sh.
fn nixos_fixture(world: &World, message: &str) -> Value {
    world.write(
        "fixture/nixpkgs/nixos/default.nix",
        r#"{ configuration ? import <nixos-config> }:
{
  system = builtins.derivation {
    name = "nixos-system-${configuration.networking.hostName}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${configuration.message} > $out" ];
  };
}
"#,
    );
    world.write(
        "fixture/configuration.nix",
        format!("{{ networking.hostName = \"fixture\"; message = {message}; }}\n"),
    );
    json!({
        "nixpkgs": {"file": world.path("fixture/nixpkgs").to_str().unwrap()},
        "nixos-config": {"file": world.path("fixture/configuration.nix").to_str().unwrap()},
    })
}

#[test]
fn test_builds_the_system_for_real() {
    let world = World::new();
    let src = nixos_fixture(&world, "\"hello from krops-test\"");
    let dest = world.path("local/src");
    let out = world.run_with_sources(
        "krops-test",
        &["--target", dest.to_str().unwrap(), "--force"],
        &src,
    );
    out.assert_success();
    let stdout = out.stdout_str();
    let store_path = stdout.strip_suffix('\n').expect("one line");
    assert!(
        store_path.starts_with("/nix/store/") && store_path.ends_with("-nixos-system-fixture"),
        "{stdout:?}"
    );
    assert_eq!(
        std::fs::read_to_string(store_path).unwrap(),
        "hello from krops-test\n"
    );
    out.assert_stderr_contains("populate: source nixpkgs (file)");
}

#[test]
fn test_trace_reaches_nix_build() {
    let world = World::new();
    let src = nixos_fixture(&world, "builtins.throw \"krops-trace-probe\"");
    let dest = world.path("local/src");
    let out = world.run_with_sources(
        "krops-test",
        &["--target", dest.to_str().unwrap(), "--force"],
        &src,
    );
    out.assert_failure()
        .assert_stderr_contains("krops-trace-probe");
    assert!(!out.stderr_str().contains("while evaluating the attribute"));
    let out = world.run_with_sources(
        "krops-test",
        &["--target", dest.to_str().unwrap(), "--trace"],
        &src,
    );
    out.assert_failure()
        .assert_stderr_contains("while evaluating the attribute");
}

#[test]
fn test_refuses_a_remote_target_and_populates_nothing() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("alpha/src");
    let out = world.run_with_sources(
        "krops-test",
        &["--target", &alpha.target("root", &dest), "--force"],
        &sources(&world),
    );
    out.assert_failure().assert_stderr_contains("must be local");
    assert!(!dest.exists());
}

#[test]
fn command_runs_the_script_with_the_target_path() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let user = world.sudo_user();
    let dest = world.path("alpha/src");
    let src = sources(&world);
    let target = alpha.target("root", &dest);
    let out = world.run_with_sources("krops-command", &["--target", &target, "--force"], &src);
    out.assert_success();
    assert_eq!(
        out.stdout_str(),
        format!("{}\n", dest.display()),
        "default script prints $1"
    );

    let out = world.run_with_sources(
        "krops-command",
        &["--target", &target, "cat \"$1/nixos-config\"; exit 7"],
        &src,
    );
    out.assert_code(7);
    assert_eq!(out.stdout_str(), "{ }\n");

    // As the target's user, and as root under sudo.
    let user_dir = world.mkdir("user-owned");
    std::process::Command::new("chown")
        .args([user, user_dir.to_str().unwrap()])
        .status()
        .unwrap();
    let as_user = alpha.target(user, &user_dir.join("src"));
    let out = world.run_with_sources(
        "krops-command",
        &["--target", &as_user, "--force", "id -un"],
        &src,
    );
    out.assert_success();
    assert_eq!(out.stdout_str(), format!("{user}\n"));
    let sudo = json!({"user": user, "host": "alpha", "path": user_dir.join("src").to_str().unwrap(), "sudo": true});
    let out = world.run_with_sources(
        "krops-command",
        &["--target", &sudo.to_string(), "id -u"],
        &src,
    );
    assert_eq!(out.assert_success().stdout_str(), "0\n");
}

#[test]
fn command_allocate_tty_reaches_ssh() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let src = sources(&world);
    // Under `script`, ssh has a terminal to hand on: the remote side sees one.
    let sources_file = world.write("sources.json", src.to_string());
    let line = format!(
        "{} --target {} --force --sources {} --allocate-tty 'test -t 0 && echo remote-tty'",
        world.tool("krops-command").display(),
        target,
        sources_file.display()
    );
    let out = world.run_command(
        world.command("script").args(["-qec", &line, "/dev/null"]),
        b"",
    );
    out.assert_success().assert_stdout_contains("remote-tty");
    // Without --allocate-tty there is no terminal on the target.
    let out = world.run_with_sources(
        "krops-command",
        &["--target", &target, "test -t 0 || echo no-tty"],
        &src,
    );
    assert_eq!(out.assert_success().stdout_str(), "no-tty\n");
    assert!(Path::new(&world.path("alpha/src/link")).is_symlink());
}

#[test]
fn readme_two_host_example_deploys_both_hosts() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let _beta = world.add_host("beta");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("## A two-host deploy in a few lines")
        .nth(1)
        .expect("README section");
    let script = section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    // Pointed at this world: its hosts' paths and a local nixpkgs.
    let nixpkgs = world.git_repo("nixpkgs");
    nixpkgs.write("default.nix", "{ }\n");
    nixpkgs.commit("c");
    let script = script
        .replace(
            "\"root@$host\"",
            &format!("\"root@$host{}/$host/src\"", world.root().display()),
        )
        .replace(
            "https://github.com/NixOS/nixpkgs nixos-24.05",
            &format!("{} main", nixpkgs.url()),
        );
    let bin = world.tool("krops-deploy").parent().unwrap().to_owned();
    for host in ["alpha", "beta"] {
        world.write(
            &format!("fleet/machines/{host}.nix"),
            format!("{{ networking.hostName = \"{host}\"; }}\n"),
        );
        world.write(&format!("{host}/src/.populate"), "");
    }
    let mut cmd = world.command("/bin/sh");
    cmd.args(["-c", &script]).current_dir(world.path("fleet"));
    cmd.env("PATH", format!("{}:{}", bin.display(), world.env()["PATH"]));
    world.run_command(&mut cmd, b"").assert_success();
    let mut nix_paths: Vec<String> = world
        .records("nixos-rebuild")
        .iter()
        .map(|r| r.env["NIX_PATH"].clone())
        .collect();
    nix_paths.sort();
    assert_eq!(
        nix_paths,
        [world.path("alpha/src"), world.path("beta/src")].map(|p| p.display().to_string())
    );
    for host in ["alpha", "beta"] {
        let config =
            std::fs::read_to_string(world.path(&format!("{host}/src/nixos-config"))).unwrap();
        assert!(config.contains(host));
        assert!(world
            .path(&format!("{host}/src/nixpkgs/default.nix"))
            .is_file());
        assert!(
            std::fs::read_to_string(world.path(&format!("fleet/{host}.log")))
                .unwrap()
                .contains("stand-in: switch")
        );
    }
}

#[test]
fn sources_from_a_terminal_are_asked_for() {
    let world = World::new();
    let dest = world.mkdir("src");
    // `script` gives populate a terminal as stdin, which then ends.
    let out = world.run_command(
        world.command("script").args([
            "-qec",
            &format!(
                "{} --target {}",
                world.tool("populate").display(),
                dest.display()
            ),
            "/dev/null",
        ]),
        b"",
    );
    assert!(
        out.stdout_str()
            .contains("reading sources.json from the terminal"),
        "{out:?}"
    );
}

#[test]
fn krops_command_s_script_reads_stdin_with_sources_from_a_file() {
    let world = World::new();
    let dest = world.mkdir("src");
    let sources = world.write("sources.json", r#"{"l": {"symlink": "x"}}"#);
    let out = world.run(
        "krops-command",
        &[
            "--target",
            dest.to_str().unwrap(),
            "--force",
            "--sources",
            sources.to_str().unwrap(),
            "tr a-z A-Z",
        ],
        b"from the user\n",
    );
    out.assert_success().assert_stdout_contains("FROM THE USER");
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
        let out = world.run_with_sources(
            "krops-deploy",
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
