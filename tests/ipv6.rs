//! End-to-end: targets that name an IPv6 literal (`root@[::1]:PORT/…`, or a
//! JSON host `"::1"`) reach a real sshd on `[::1]` with ssh, rsync and git,
//! and nixos-rebuild is told the host in brackets; a target path with ':' is
//! refused before anything runs (README: Targets).

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use krops_tests::{file_text, git_head, Host, World, REBUILD_VARIANT_FILE};
use serde_json::{json, Value};

/// A host whose sshd listens on `[::1]` only.
fn ipv6_host(world: &World) -> Host {
    world.add_host_at("six", IpAddr::V6(Ipv6Addr::LOCALHOST))
}

/// `root@[::1]:PORT/PATH`, the string form with the address in brackets.
fn string_target(host: &Host, path: &Path) -> String {
    format!(
        "root@[{}]:{}{}",
        host.address(),
        host.port(),
        path.display()
    )
}

/// The same target as a JSON object: the address without brackets.
fn json_target(host: &Host, path: &Path) -> String {
    json!({
        "user": "root",
        "host": host.address().to_string(),
        "port": host.port(),
        "path": path.to_str().unwrap(),
    })
    .to_string()
}

/// A file source (a directory), a symlink and a git source.
fn sources(world: &World) -> (Value, String) {
    world.write("cfg/configuration.nix", "{ }\n");
    world.write("cfg/modules/a.nix", "{ a = 1; }\n");
    let repo = world.git_repo("nixpkgs");
    repo.write("default.nix", "{ }\n");
    let commit = repo.commit("first");
    let sources = json!({
        "nixos-config": {"file": world.path("cfg").to_str().unwrap()},
        "link": {"symlink": "nixos-config/configuration.nix"},
        "nixpkgs": {"git": {"url": repo.url(), "ref": commit}},
    });
    (sources, commit)
}

fn assert_arrived(dest: &Path, commit: &str) {
    assert_eq!(
        file_text(&dest.join("nixos-config/configuration.nix")),
        "{ }\n"
    );
    assert_eq!(
        file_text(&dest.join("nixos-config/modules/a.nix")),
        "{ a = 1; }\n"
    );
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("nixos-config/configuration.nix")
    );
    assert_eq!(git_head(&dest.join("nixpkgs")), commit);
    assert!(dest.join(".populate").exists(), "no sentinel");
}

#[test]
fn populate_reaches_an_ipv6_host_in_string_and_json_form() {
    let world = World::new();
    let six = ipv6_host(&world);
    let (sources, commit) = sources(&world);

    let by_string = world.path("six/string");
    let target = string_target(&six, &by_string);
    world
        .run_with_sources("populate", &["--target", &target, "--force"], &sources)
        .assert_success();
    assert_arrived(&by_string, &commit);

    let by_json = world.path("six/json");
    let target = json_target(&six, &by_json);
    world
        .run_with_sources("populate", &["--target", &target, "--force"], &sources)
        .assert_success();
    assert_arrived(&by_json, &commit);

    // A second run over the same connection settings finds the sentinel and
    // changes the file that changed.
    world.write("cfg/configuration.nix", "{ changed = true; }\n");
    world
        .run_with_sources("populate", &["--target", &target], &sources)
        .assert_success();
    assert_eq!(
        file_text(&by_json.join("nixos-config/configuration.nix")),
        "{ changed = true; }\n"
    );
}

#[test]
fn messages_name_an_ipv6_place_unambiguously() {
    let world = World::new();
    let six = ipv6_host(&world);
    let dest = world.mkdir("six/src");
    let sources = json!({"l": {"symlink": "x"}});
    let out = world.run_with_sources(
        "populate",
        &["--target", &string_target(&six, &dest)],
        &sources,
    );
    out.assert_failure();
    let line = format!(
        "error: missing sentinel file: [::1]:{}/.populate",
        dest.display()
    );
    assert!(
        out.stderr_str().lines().any(|l| l == line),
        "no line {line:?} in\n{}",
        out.stderr_str()
    );
    assert!(
        !dest.join("l").exists(),
        "populate went on without a sentinel"
    );
}

#[test]
fn deploy_names_an_ipv6_target_host_as_each_program_wants_it() {
    // The bash program hands --target-host to ssh as it is (ssh would look
    // up the name `[::1]`); nixos-rebuild-ng reads it as a URL's authority.
    for (form, variant, expected) in [
        ("string", "bash", "root@::1"),
        ("json", "bash", "root@::1"),
        ("string", "ng", "root@[::1]"),
        ("json", "ng", "root@[::1]"),
    ] {
        let world = World::new();
        world.write(
            &format!("records/{REBUILD_VARIANT_FILE}"),
            format!("{variant}\n"),
        );
        let alpha = world.add_host("alpha");
        let six = ipv6_host(&world);
        let (sources, commit) = sources(&world);
        let build_dir = world.path("alpha/src");
        let target_dir = world.path("six/src");
        let target = match form {
            "string" => string_target(&six, &target_dir),
            _ => json_target(&six, &target_dir),
        };
        let args = [
            "--target",
            &target,
            "--build-target",
            &alpha.target("root", &build_dir),
            "--force",
            "--nom",
            "false",
        ];
        let out = world.run_with_sources("krops-deploy", &args, &sources);
        out.assert_success();
        assert_arrived(&build_dir, &commit);
        assert_arrived(&target_dir, &commit);
        let rebuild = world.only_rebuild();
        assert_eq!(
            rebuild.argv,
            ["switch", "--no-flake", "--target-host", expected],
            "{form} form, {variant}"
        );
        assert_eq!(
            rebuild.server_port(),
            alpha.port().to_string(),
            "ran on the build target"
        );
        assert_eq!(rebuild.env["NIX_SSHOPTS"], format!("-p {}", six.port()));
        assert_eq!(rebuild.env["NIX_PATH"], build_dir.to_str().unwrap());
    }
}

#[test]
fn a_target_path_with_a_colon_is_refused_before_anything_runs() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let (sources, _) = sources(&world);
    let parent = world.mkdir("alpha");
    let colon = world.path("alpha/a:b");
    let string = alpha.target("root", &colon);
    let json = json!({"host": "alpha", "path": colon.to_str().unwrap()}).to_string();
    let good = alpha.target("root", &world.path("alpha/good"));
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("populate", vec!["--target", &string, "--force"]),
        ("populate", vec!["--target", &json, "--force"]),
        ("krops-deploy", vec!["--target", &string, "--force"]),
        (
            "krops-deploy",
            vec!["--target", &good, "--build-target", &json, "--force"],
        ),
        ("krops-command", vec!["--target", &string, "--force"]),
    ];
    for (tool, args) in runs {
        let out = world.run_with_sources(tool, &args, &sources);
        out.assert_failure();
        out.assert_stderr_contains(&format!("{tool}: error:"));
        out.assert_stderr_contains("target.path");
        out.assert_stderr_contains("NIX_PATH");
        assert!(
            std::fs::read_dir(&parent).unwrap().next().is_none(),
            "{tool} {args:?} created something in {}",
            parent.display()
        );
        assert!(out.stdout_str().is_empty(), "{}", out.stdout_str());
    }
    assert!(world.records("nixos-rebuild").is_empty());
}

#[test]
fn a_host_with_a_colon_must_be_an_ipv6_literal() {
    let world = World::new();
    let dest = world.path("never");
    let sources = json!({"l": {"symlink": "x"}});
    let cases = [
        (
            format!("root@::1{}", dest.display()),
            "an IPv6 address must be written in brackets",
        ),
        (format!("root@[::1:22{}", dest.display()), "'[' without ']'"),
        (
            json!({"host": "alpha:22", "path": dest.to_str().unwrap()}).to_string(),
            "target.host: \"alpha:22\" contains ':' but is not an IPv6 address",
        ),
        (
            json!({"host": "[::1]", "path": dest.to_str().unwrap()}).to_string(),
            "target.host: \"[::1]\" has brackets",
        ),
    ];
    for (target, message) in cases {
        let out = world.run_with_sources("populate", &["--target", &target, "--force"], &sources);
        out.assert_failure();
        out.assert_stderr_contains(message);
        assert!(!dest.exists(), "{target}: something ran");
    }
}
