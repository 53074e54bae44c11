//! End-to-end: a review of issue 17's changes as a demanding krops user
//! would try them, with inputs the first round of tests did not write,
//! against the real programs (real sshd, the real nixos-rebuild where
//! `$KROPS_NIXOS_REBUILD` names it; each test says `skipped:` otherwise).

use std::net::{IpAddr, Ipv6Addr};

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
