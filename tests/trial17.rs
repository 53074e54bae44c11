//! End-to-end: what a trial of the tools as a demanding krops user found
//! (issue 17), for the smaller items: the results of a deploy that was
//! rolled back, command-line mistakes found after parsing, and messages.
//! The NixOS hosts are tests/world/nixos.rs's (see tests/activate.rs).

use std::path::PathBuf;

use krops_tests::{Host, Output, World};
use serde_json::{json, Value};

fn sources(world: &World) -> Value {
    world.write("cfg/configuration.nix", "{ }\n");
    json!({"nixos-config": {"file": world.path("cfg/configuration.nix").to_str().unwrap()}})
}

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
        sources(&world).to_string().as_bytes(),
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
        "alpha": {"target": target, "source": sources(&world), "force": true,
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
