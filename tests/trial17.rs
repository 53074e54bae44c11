//! End-to-end: what a trial of the tools as a demanding krops user found
//! (issue 17), for the smaller items: the results of a deploy that was
//! rolled back, command-line mistakes found after parsing, and messages.
//! The NixOS hosts are tests/world/nixos.rs's (see tests/activate.rs).

use std::path::PathBuf;

use krops_tests::{Host, Output, World};
use serde_json::{json, Value};

/// A NixOS host `alias` running system 1.0, the rebuild set to build 2.0,
/// which locks new logins out with `breaking`; the target string.
fn nixos(world: &World, alias: &str, breaking: bool) -> (Host, String, PathBuf) {
    let host = world.add_nixos_host(alias);
    let old = world.nixos_system("1.0", false);
    let new = world.nixos_system("2.0", breaking);
    world.boot_nixos_host(alias, &old);
    world.set_rebuild_system(&new);
    let target = host.target("root", &world.path(&format!("{alias}/src")));
    (host, target, old)
}

fn document(out: &Output) -> Value {
    serde_json::from_str(out.stdout_str().trim_end())
        .unwrap_or_else(|err| panic!("stdout is not one JSON document ({err}):\n{out}"))
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
    let (_, target, old) = nixos(&world, "alpha", true);
    let args = [
        "--target",
        target.as_str(),
        "--force",
        "--nom",
        "false",
        "--confirm-timeout",
        "2",
        "--json",
    ];
    let out = world.run(
        "krops-deploy",
        &args,
        world.nixos_config().to_string().as_bytes(),
    );
    out.assert_code(1)
        .assert_stderr_contains("rolled back to the previous system");
    assert_eq!(world.current_system("alpha"), Some(old));
    assert_rolled_back(&document(&out), &out);
}

#[test]
fn a_fleets_json_after_a_rollback_says_the_host_is_not_ok_and_why() {
    let world = World::new();
    let (_, target, old) = nixos(&world, "alpha", true);
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
    let doc = document(&out);
    assert_eq!(doc["ok"], false, "{doc}");
    let host = &doc["hosts"]["alpha"];
    assert_eq!(host["ok"], false, "{doc}");
    assert_eq!(host["exitCode"], 1, "{doc}");
    assert_rolled_back(&host["results"], &out);
}

/// Every mistake on the command line exits 2, as clap's own do, also those
/// found after parsing; nothing runs.
#[test]
fn command_line_mistakes_found_after_parsing_exit_2() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("alpha/src");
    let target = alpha.target("root", &dest);
    let local = world.mkdir("local/src");
    let local = local.to_str().unwrap();
    let dir = world.mkdir("results");
    let dir = dir.to_str().unwrap();
    let missing = world.path("no/such/dir/results.json");
    let missing = missing.to_str().unwrap();
    let t = target.as_str();
    let fleet = |extra: Value| {
        let mut host = json!({"target": t, "source": world.nixos_config(), "force": true});
        for (key, value) in extra.as_object().unwrap() {
            host[key] = value.clone();
        }
        json!({ "web": host }).to_string()
    };
    let good = world.nixos_config().to_string();
    let rows: Vec<(&str, Vec<&str>, String, &str)> = vec![
        (
            "krops-deploy",
            vec!["--target", t, "--check", "true"],
            good.clone(),
            "--check needs --confirm-timeout",
        ),
        (
            "krops-deploy",
            vec![
                "--target",
                t,
                "--confirm-timeout",
                "5",
                "--operation",
                "boot",
            ],
            good.clone(),
            "--confirm-timeout works with --operation switch or test",
        ),
        (
            "krops-deploy",
            vec!["--target", t, "--ask", "--operation", "build"],
            good.clone(),
            "--ask activates the built system",
        ),
        (
            "krops-deploy",
            vec!["--target", t, "--operation", ""],
            good.clone(),
            "--operation \"\": expected a nixos-rebuild operation",
        ),
        (
            "krops-deploy",
            vec!["--target", t, "--preview", "--confirm-timeout", "5"],
            good.clone(),
            "'--preview' cannot be used with '--confirm-timeout <SECONDS>'",
        ),
        (
            "krops-command",
            vec!["--target", t, "--json"],
            good.clone(),
            "--json: stdout carries the command's own output",
        ),
        (
            "krops-test",
            vec!["--target", local, "--json"],
            good.clone(),
            "--json: stdout carries",
        ),
        (
            "populate",
            vec!["--target", t, "--json-file", dir],
            good.clone(),
            "is a directory",
        ),
        (
            "krops-deploy",
            vec!["--target", t, "--json-file", missing],
            good.clone(),
            "is not a directory: the results could not be written",
        ),
        (
            "krops-command",
            vec!["--fleet", "-"],
            fleet(json!({"allocateTTY": true})),
            "fleet.web.allocateTTY: true does not go with --fleet",
        ),
        (
            "krops-command",
            vec!["--fleet", "-", "--allocate-tty"],
            fleet(json!({})),
            "'--fleet <FILE>' cannot be used with '--allocate-tty'",
        ),
    ];
    // The world's own `ssh root@alpha true` that found sshd ready is in
    // its log, maybe only now.
    for _ in 0..100 {
        if world.handshakes("alpha") > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut wrong = Vec::new();
    for (tool, args, stdin, needle) in &rows {
        let before = world.handshakes("alpha");
        let out = world.run(tool, &[&["--force"][..], args].concat(), stdin.as_bytes());
        if out.code() != Some(2)
            || !out.stderr_str().contains(&format!("{tool}: error: "))
            || !out.stderr_str().contains(needle)
        {
            wrong.push(format!(
                "{tool} {args:?}: want exit 2 and {needle:?}\n{out}"
            ));
        }
        if world.handshakes("alpha") != before {
            wrong.push(format!("{tool} {args:?}: it reached the target\n{out}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    assert!(!dest.exists());
    assert!(world.records("nixos-rebuild").is_empty());
}

#[test]
fn ask_without_a_terminal_is_a_usage_error() {
    let world = World::new();
    let (_, target, _) = nixos(&world, "alpha", false);
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
    let (_, target, old) = nixos(&world, "alpha", false);
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

/// `s` as a Nix string literal (JSON's escapes are Nix's, but `$` is not).
fn nix_str(s: &str) -> String {
    serde_json::to_string(s).unwrap().replace("${", "\\${")
}

/// nix-bitcoin's wrapper, as it calls krops: `pkgs.callPackage
/// "${krops}/pkgs/krops" { inherit populate; }` and
/// `pkgs.callPackage "${krops}/pkgs/populate" {}` from plain nixpkgs,
/// without krops-rs's overlay (krops's own flake calls it the same way).
/// The nixpkgs is a stand-in: `callPackage`, `writers`, and what
/// pkgs/krops-rs takes, its `rustPlatform.buildRustPackage` giving the
/// tools as built here.
#[test]
fn nix_bitcoins_call_package_of_pkgs_krops_works_unchanged() {
    let world = World::new();
    let (writers, krops_rs) = world.nix_fixtures();
    world.write(
        "plain-nixpkgs/default.nix",
        format!(
            r#"{{ ... }}:
let
  callPackageWith = set: f: args:
    let fn = if builtins.isFunction f then f else import f;
    in fn (builtins.intersectAttrs (builtins.functionArgs fn) set // args);
  pkgs = {{
    callPackage = callPackageWith pkgs;
    writers = import {writers};
    lib = {{ }};
    rustPlatform.buildRustPackage = attrs: {krops_rs};
    makeWrapper = null; git = null; gnupg = null; openssh = null; rsync = null;
    nix = null;
  }};
in pkgs
"#,
            writers = nix_str(writers.to_str().unwrap()),
            krops_rs = nix_str(krops_rs.to_str().unwrap()),
        ),
    );
    let dest = world.path("local/src");
    let file = world.write(
        "krops.nix",
        format!(
            r#"let
  src = {krops};
  pkgs = import <nixpkgs> {{ }};
  krops = {{
    lib = import "${{src}}/lib";
    pkgs = rec {{
      krops = pkgs.callPackage "${{src}}/pkgs/krops" {{ inherit populate; }};
      populate = pkgs.callPackage "${{src}}/pkgs/populate" {{ }};
    }};
  }};
  source = krops.lib.evalSource [ {{ link.symlink = "there"; }} ];
  target = {dest};
in {{
  populate = krops.pkgs.populate {{ inherit source target; force = true; }};
  command = krops.pkgs.krops.writeCommand "command" {{ inherit source target; }};
  deploy = krops.pkgs.krops.writeDeploy "deploy" {{ inherit source target; }};
}}
"#,
            krops = nix_str(krops_tests::nix::krops_dir().to_str().unwrap()),
            dest = nix_str(dest.to_str().unwrap()),
        ),
    );
    let nix_path = format!("nixpkgs={}", world.path("plain-nixpkgs").display());
    let build = |attr: &str| {
        let mut cmd = world.command("nix-build");
        cmd.env("NIX_PATH", &nix_path)
            .arg("--no-out-link")
            .arg(&file)
            .args(["-A", attr]);
        let out = world.run_command(&mut cmd, b"");
        out.assert_success();
        out.stdout_str().trim_end().to_owned()
    };
    let populate = build("populate");
    world
        .run_command(&mut world.command(&populate), b"")
        .assert_success();
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        std::path::Path::new("there")
    );
    let command = build("command");
    let out = world.run_command(&mut world.command(&command), b"");
    out.assert_success();
    assert_eq!(out.stdout_str(), format!("{}\n", dest.display()));
    let deploy = build("deploy");
    let out = world.run_command(world.command(&deploy).arg("--dry-run"), b"");
    out.assert_success()
        .assert_stdout_contains("nixos-rebuild switch");
}

/// `-q` prints errors only: a deploy that succeeds says nothing on
/// stderr, also when it previews or is confirmed over a new connection.
#[test]
fn quiet_is_quiet_in_the_preview_and_confirm_paths() {
    let world = World::new();
    let (_, target, _) = nixos(&world, "alpha", false);
    let base = [
        "--target",
        target.as_str(),
        "--force",
        "--nom",
        "false",
        "-q",
    ];
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
