//! End-to-end: running a fleet (README: Many hosts at once): picking hosts
//! by tag, rolling deploys that stop starting hosts after failures, and
//! reboots the deploy waits through and checks, against real sshd hosts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use krops_tests::{forced_args, Comeback, Output, World};
use serde_json::{json, Value};

use crate::fleet::{dest, fleet_of, paths, rebuilt, run_fleet, script, summary_row, three_hosts};

#[test]
fn on_picks_hosts_by_tag_mixed_with_names() {
    let (world, hosts) = three_hosts();
    let mut fleet = fleet_of(&world, &hosts);
    fleet["alpha"]["tags"] = json!(["web", "eu"]);
    fleet["beta"]["tags"] = json!(["db"]);
    fleet["gamma"]["tags"] = json!(["web"]);
    let fleet = Value::Object(fleet);

    let out = run_fleet(&world, "krops-deploy", &["--on", "@web", "--json"], &fleet);
    out.assert_success();
    assert_eq!(rebuilt(&world), paths(&world, &["alpha", "gamma"]));
    assert!(!dest(&world, "beta").exists(), "beta is not tagged web");
    let doc = out.document();
    let hosts = doc["hosts"].as_object().unwrap();
    assert_eq!(
        hosts.keys().collect::<Vec<_>>(),
        ["alpha", "gamma"],
        "{doc}"
    );
    assert_eq!(hosts["alpha"]["tags"], json!(["web", "eu"]), "{doc}");
    assert_eq!(hosts["gamma"]["tags"], json!(["web"]), "{doc}");
    assert_eq!(hosts["alpha"]["batch"], json!(1), "{doc}");
    assert_eq!(hosts["alpha"]["notStarted"], Value::Null, "{doc}");
    assert_eq!(hosts["alpha"]["rebooted"], json!(false), "{doc}");

    // A tag that no host has stops the run before any host starts, like a
    // pattern that matches none.
    let before = world.records("nixos-rebuild").len();
    let out = run_fleet(&world, "krops-deploy", &["--on", "beta,@mail"], &fleet);
    out.assert_code(1).assert_stderr_contains(
        "--on \"@mail\": no host of the fleet has the tag \"mail\" (the tags are db, eu, web)",
    );
    assert_eq!(world.records("nixos-rebuild").len(), before);
    assert!(!dest(&world, "beta").exists());

    // A tag, mixed with a name.
    run_fleet(&world, "krops-deploy", &["--on", "@db,gamma"], &fleet).assert_success();
    assert_eq!(
        rebuilt(&world),
        paths(&world, &["alpha", "beta", "gamma", "gamma"])
    );

    // A bad tag in the file is refused, naming its place.
    let mut bad = fleet.clone();
    bad["beta"]["tags"] = json!(["db", "a b"]);
    let out = run_fleet(&world, "krops-deploy", &["--on", "@web"], &bad);
    out.assert_code(1)
        .assert_stderr_contains("fleet.beta.tags: [1]: \"a b\": a tag must be");
    assert_eq!(world.records("nixos-rebuild").len(), before + 2);
}

/// Without `--jobs`, every host starts at once: `--max-failures` then
/// holds back none, and rebooting hosts are all down together. The run
/// says so before it starts (README: Many hosts at once); with `--jobs`,
/// it does not.
#[test]
fn max_failures_and_reboots_without_jobs_say_that_all_hosts_start_at_once() {
    let (world, hosts) = three_hosts();
    let mut fleet = fleet_of(&world, &hosts);
    for name in ["alpha", "beta"] {
        fleet[name]["reboot"] = json!(true);
        fleet[name]["operation"] = json!("boot");
    }
    let fleet = Value::Object(fleet);
    let out = run_fleet(
        &world,
        "krops-deploy",
        &["--dry-run", "--max-failures", "1"],
        &fleet,
    );
    out.assert_success().assert_stderr_contains(
        "krops-deploy: warning: --max-failures 1: all 3 hosts start at once (no --jobs), so no \
         host is held back when one fails; give --jobs N to roll out N hosts at a time\n",
    );
    out.assert_stderr_contains(
        "krops-deploy: warning: 2 hosts reboot, all at once (no --jobs): give --jobs N to have \
         at most N down at a time\n",
    );
    let out = run_fleet(
        &world,
        "krops-deploy",
        &["--dry-run", "--max-failures", "1", "--jobs", "3"],
        &fleet,
    );
    out.assert_success();
    assert!(!out.stderr_str().contains("warning"), "{out}");
}

/// Without `--jobs`, at most 8 hosts start at once (a stock bastion's
/// `MaxStartups` drops new connections from 10 not yet logged in); a
/// larger `--jobs` is taken as asked.
#[test]
fn without_jobs_at_most_eight_hosts_start_at_once() {
    let world = World::new();
    let file = world.write("files/motd", "hello\n");
    let source = json!({"motd": {"file": file.to_str().unwrap()}});
    let fleet: serde_json::Map<String, Value> = (0..10)
        .map(|i| {
            let host = format!("h{i:02}");
            let target = json!({"host": host, "path": "/var/src"});
            (
                host,
                json!({"target": target, "source": source, "useNixOutputMonitor": false}),
            )
        })
        .collect();
    let path = world.write("fleet.json", Value::Object(fleet).to_string());
    let path = path.to_str().unwrap();
    let out = world.run("krops-deploy", &["--fleet", path, "--dry-run"], b"");
    out.assert_success();
    let script = out.stdout_str();
    assert!(
        script.contains("# batch 1 of 2 (hosts start in name order, 8 at once)"),
        "{script}"
    );
    assert!(
        script.contains("# ---- fleet host h08 ----\n# batch 2 of 2"),
        "{script}"
    );
    let out = world.run(
        "krops-deploy",
        &["--fleet", path, "--dry-run", "--jobs", "10"],
        b"",
    );
    out.assert_success();
    assert!(!out.stdout_str().contains("batch 2"), "{out}");
}

/// A pipe source that fails once `mark` exists after writing it; for
/// `waits`, one that waits (at most 30 s) until `mark` exists.
fn pipe(world: &World, name: &str, body: &str) -> PathBuf {
    script(world, &format!("pipes/{name}"), body)
}

/// Reliability (Fleet): the second host of a fleet fails with --max-failures 1 → the running host finishes, the later ones are not started, and the run exits 1 naming them
#[test]
fn max_failures_stops_starting_hosts_and_lets_the_running_ones_finish() {
    let world = World::new();
    let names = ["alpha", "beta", "delta", "gamma"];
    let hosts: Vec<_> = names.iter().map(|name| world.add_host(name)).collect();
    let mut fleet = fleet_of(&world, &hosts);
    let failed = world.path("beta-failed");
    let failed = failed.display();
    // alpha runs beside beta and finishes only after beta has failed.
    let waits = pipe(
        &world,
        "alpha",
        &format!(
            "i=0\n\
             while [ ! -e {failed} ]; do\n\
             \x20 i=$((i + 1)); if [ $i -gt 300 ]; then echo beta never failed >&2; exit 1; fi\n\
             \x20 sleep 0.1\n\
             done\n\
             echo alpha finished after beta failed\n"
        ),
    );
    let fails = pipe(
        &world,
        "beta",
        &format!("echo beta breaks >&2\ntouch {failed}\nexit 3\n"),
    );
    fleet["alpha"]["source"]["wait"] = json!({"pipe": waits.to_str().unwrap()});
    fleet["beta"]["source"]["wait"] = json!({"pipe": fails.to_str().unwrap()});
    let fleet = Value::Object(fleet);
    let out = run_fleet(
        &world,
        "krops-deploy",
        &["--jobs", "2", "--max-failures", "1", "--json"],
        &fleet,
    );
    out.assert_code(1);
    assert_eq!(rebuilt(&world), paths(&world, &["alpha"]), "{out}");
    assert_eq!(
        std::fs::read_to_string(dest(&world, "alpha").join("wait")).unwrap(),
        "alpha finished after beta failed\n"
    );
    for name in ["delta", "gamma"] {
        assert!(
            !dest(&world, name).exists(),
            "{name} was not started\n{out}"
        );
        assert!(
            summary_row(&out, name).contains(" not started (--max-failures 1: 1 host failed) "),
            "{out}"
        );
    }
    assert!(summary_row(&out, "alpha").contains(" ok "), "{out}");
    assert!(
        summary_row(&out, "beta").contains(" failed (exit status 1) "),
        "{out}"
    );
    out.assert_stderr_contains("krops-deploy: fleet: 1 of 4 hosts ok, 1 failed, 2 not started\n")
        .assert_stderr_contains(
            "krops-deploy: fleet: stopped starting hosts (--max-failures 1: 1 host failed); \
             not started: delta, gamma\n",
        );
    let doc = out.document();
    assert_eq!(doc["ok"], json!(false));
    let host = |name: &str| doc["hosts"][name].clone();
    assert_eq!(host("alpha")["batch"], json!(1), "{doc}");
    assert_eq!(host("beta")["batch"], json!(1), "{doc}");
    assert_eq!(host("beta")["ok"], json!(false), "{doc}");
    for name in ["delta", "gamma"] {
        assert_eq!(host(name)["batch"], Value::Null, "{doc}");
        assert_eq!(host(name)["exitCode"], Value::Null, "{doc}");
        assert_eq!(
            host(name)["notStarted"],
            json!("--max-failures 1: 1 host failed"),
            "{doc}"
        );
    }

    // Without --max-failures, every host runs, as before.
    std::fs::remove_file(world.path("beta-failed")).unwrap();
    let out = run_fleet(&world, "krops-deploy", &["--jobs", "2"], &fleet);
    out.assert_code(1);
    assert_eq!(
        rebuilt(&world),
        paths(&world, &["alpha", "alpha", "delta", "gamma"])
    );
}

/// `krops-deploy --reboot` with `args` to `target` (forced, no nom, with
/// `--json`), while the host `alias` reboots as `comeback` says.
fn deploy_rebooting(
    world: &World,
    host: &krops_tests::Host,
    comeback: Comeback,
    target: &str,
    args: &[&str],
    sources: &Value,
) -> Output {
    let mut more = vec!["--reboot", "--json"];
    more.extend_from_slice(args);
    let args = forced_args(target, &more);
    world.reboot_when_asked(host, comeback, || {
        world.run_with_sources("krops-deploy", &args, sources)
    })
}

/// Reliability (Connection fault): a boot, then a reboot that drops the host's sshd and brings it back 2 s later with a new boot id → the deploy waits, saying for what, sees the new boot id and the system just built running, runs the check after it, and --json says so
#[test]
fn a_reboot_is_waited_for_and_checked() {
    let world = World::new();
    let (host, target, old, new) = world.nixos_deploy_host("alpha", false);
    let before = world.boot_id("alpha");
    let checked = world.path("checked");
    let check = format!(
        "cat /proc/sys/kernel/random/boot_id > {}; readlink -f /run/current-system >> {}",
        checked.display(),
        checked.display()
    );
    let out = deploy_rebooting(
        &world,
        &host,
        Comeback::After(Duration::from_secs(2)),
        &target,
        &[
            "--operation",
            "boot",
            "--reboot-timeout",
            "120",
            "--check",
            &check,
        ],
        &world.nixos_config(),
    );
    out.assert_success()
        .assert_stderr_contains("krops-deploy: rebooting root@alpha\n")
        .assert_stderr_contains(
            "krops-deploy: waiting for root@alpha to go down and come back with a new boot id \
             (up to ",
        )
        .assert_stderr_contains("krops-deploy: root@alpha is down; waiting for it to come back")
        .assert_stderr_contains("running the system just built")
        .assert_stderr_contains("krops-deploy: running the check on root@alpha after the reboot");
    let after = world.boot_id("alpha");
    assert_ne!(before, after);
    assert_eq!(world.current_system("alpha"), Some(new.clone()));
    assert_ne!(old, new);
    // The check ran once the host was back, on the new boot and system.
    assert_eq!(
        std::fs::read_to_string(&checked).unwrap(),
        format!("{after}\n{}\n", new.display())
    );
    assert_eq!(world.records("reboot").len(), 1);
    let reboot = &out.document()["reboot"];
    assert_eq!(reboot["rebooted"], json!(true), "{reboot}");
    assert_eq!(reboot["bootIdBefore"], json!(before), "{reboot}");
    assert_eq!(reboot["bootIdAfter"], json!(after), "{reboot}");
    assert_eq!(
        reboot["system"],
        json!(new.display().to_string()),
        "{reboot}"
    );
    assert_eq!(
        reboot["running"],
        json!(new.display().to_string()),
        "{reboot}"
    );
    assert!(reboot["seconds"].as_f64().unwrap() >= 2.0, "{reboot}");
}

/// `--quiet`: a deploy that reboots and succeeds prints nothing on stderr
/// (not even ssh's word on the connection the reboot cuts).
#[test]
fn a_quiet_reboot_that_succeeds_prints_nothing() {
    let world = World::new();
    let (host, target, _, new) = world.nixos_deploy_host("alpha", false);
    let out = deploy_rebooting(
        &world,
        &host,
        Comeback::After(Duration::from_secs(1)),
        &target,
        &["--quiet", "--operation", "boot"],
        &world.nixos_config(),
    );
    out.assert_success();
    assert_eq!(out.stderr_str(), "", "{out}");
    assert_eq!(world.current_system("alpha"), Some(new));
    assert_eq!(out.document()["reboot"]["rebooted"], json!(true));
}

#[test]
fn a_sudo_target_is_rebooted_under_sudo() {
    let world = World::new();
    let (host, _, _, new) = world.nixos_deploy_host("alpha", false);
    let target = world.sudo_user_target("alpha", true);
    let before = world.boot_id("alpha");
    let out = deploy_rebooting(
        &world,
        &host,
        Comeback::After(Duration::from_secs(1)),
        &target,
        &["--operation", "boot", "--reboot-timeout", "120"],
        &world.nixos_config(),
    );
    out.assert_success();
    assert_ne!(world.boot_id("alpha"), before);
    assert_eq!(world.current_system("alpha"), Some(new));
    let reboots = world.records("reboot");
    assert_eq!(reboots.len(), 1);
    assert_eq!(reboots[0].uid, 0, "reboot ran as root, under sudo");
}

/// Reliability (Connection fault): a rebooted host that never comes back, --reboot-timeout 4 → exit 1 after about 4 s, naming the time it had and that it went down; --json: not rebooted
#[test]
fn a_host_that_never_comes_back_fails_naming_its_time() {
    let world = World::new();
    let (host, target, _, _) = world.nixos_deploy_host("alpha", false);
    let began = Instant::now();
    let out = deploy_rebooting(
        &world,
        &host,
        Comeback::Never,
        &target,
        &["--reboot-timeout", "4"],
        &world.nixos_config(),
    );
    let took = began.elapsed();
    out.assert_code(1).assert_stderr_contains(
        "krops-deploy: error: root@alpha did not come back with a new boot id within 4 s \
         (--reboot-timeout): it went down and has not answered since",
    );
    assert!(took < Duration::from_secs(40), "it took {took:?}\n{out}");
    let doc = out.document();
    assert_eq!(doc["ok"], json!(false));
    assert_eq!(doc["reboot"]["rebooted"], json!(false), "{doc}");
    assert_eq!(doc["reboot"]["bootIdAfter"], Value::Null, "{doc}");
    assert!(
        doc["error"].as_str().unwrap().contains("within 4 s"),
        "{doc}"
    );
}

/// Reliability (Connection fault): a rebooted host that comes back running the old system (its boot loader picked another generation) → exit 1 naming both systems and its new boot id
#[test]
fn a_host_back_on_the_old_system_fails() {
    let world = World::new();
    let (host, target, old, new) = world.nixos_deploy_host("alpha", false);
    let out = deploy_rebooting(
        &world,
        &host,
        Comeback::OnTheOldSystem(Duration::from_secs(1)),
        &target,
        &["--operation", "boot", "--reboot-timeout", "120"],
        &world.nixos_config(),
    );
    let after = world.boot_id("alpha");
    out.assert_code(1).assert_stderr_contains(&format!(
        "krops-deploy: error: root@alpha came back (boot id {after}) running {}, not the system \
         just built {}: its boot loader started another generation",
        old.display(),
        new.display()
    ));
    assert_eq!(world.current_system("alpha"), Some(old));
    let reboot = &out.document()["reboot"];
    assert_eq!(reboot["rebooted"], json!(true), "{reboot}");
    assert_eq!(reboot["bootIdAfter"], json!(after), "{reboot}");
}

/// Reliability (Connection fault): a host whose reboot returns and that never goes down (the same boot id), --reboot-timeout 30 → exit 1 saying it still answered with its old boot id
#[test]
fn a_host_that_never_goes_down_fails_saying_so() {
    let world = World::new();
    let (_, target, _, new) = world.nixos_deploy_host("alpha", false);
    let before = world.boot_id("alpha");
    // Nobody plays the machine: the stand-in's request is never served.
    // Long enough for a poll's new connection to answer on a loaded machine.
    let args = forced_args(&target, &["--reboot", "--reboot-timeout", "30", "--json"]);
    let out = world.run_with_sources("krops-deploy", &args, &world.nixos_config());
    out.assert_code(1).assert_stderr_contains(
        "krops-deploy: error: root@alpha did not come back with a new boot id within 30 s \
         (--reboot-timeout): it still answered with the boot id it had before the reboot",
    );
    assert_eq!(world.boot_id("alpha"), before);
    assert_eq!(world.current_system("alpha"), Some(new));
    let reboot = &out.document()["reboot"];
    assert_eq!(reboot["bootIdBefore"], json!(before), "{reboot}");
    assert_eq!(reboot["rebooted"], json!(false), "{reboot}");
}

#[test]
fn a_reboot_that_fails_is_an_error_and_nothing_is_waited_for() {
    // A plain world host: the reboot stand-in refuses to play a NixOS one.
    let world = World::new();
    let host = world.add_host("alpha");
    let target = host.target("root", &world.path("alpha/src"));
    let args = forced_args(&target, &["--reboot"]);
    let began = Instant::now();
    let out = world.run_with_sources("krops-deploy", &args, &world.nixos_config());
    out.assert_code(1).assert_stderr_contains(
        "krops-deploy: error: reboot on root@alpha failed (exit status 1): reboot stand-in: not \
         a world NixOS host: refusing",
    );
    assert!(!out.stderr_str().contains("waiting for"), "{out}");
    assert!(began.elapsed() < Duration::from_secs(30), "{out}");
}

#[test]
fn reboot_options_that_cannot_work_are_usage_errors_before_anything_runs() {
    let world = World::new();
    let host = world.add_host("alpha");
    let target = host.target("root", &world.path("alpha/src"));
    for (args, needle) in [
        (
            &["--reboot", "--operation", "test"][..],
            "--reboot reboots into the system just built: --operation must be one of switch, \
             boot, not test",
        ),
        (
            &["--reboot-timeout", "9"],
            "--reboot-timeout needs --reboot",
        ),
        (
            &["--reboot", "--preview"],
            "'--reboot' cannot be used with '--preview'",
        ),
        (&["--reboot", "--reboot-timeout", "0"], "--reboot-timeout"),
        (&["--check", "true"], "--check needs --confirm-timeout"),
    ] {
        let args = forced_args(&target, args);
        world
            .run_with_sources("krops-deploy", &args, &world.nixos_config())
            .assert_code(2)
            .assert_stderr_contains(needle);
        assert!(
            !world.path("alpha/src").exists(),
            "{args:?} changed the target"
        );
    }
    assert!(world.records("nixos-rebuild").is_empty());
    assert!(world.records("reboot").is_empty());
    // A fleet host's too: nothing runs on any host.
    let fleet = json!({
        "alpha": {"target": target, "source": world.nixos_config(), "force": true,
                  "rebootTimeout": 30},
    });
    let out = run_fleet(&world, "krops-deploy", &[], &fleet);
    out.assert_code(1)
        .assert_stderr_contains("alpha | krops-deploy: error: --reboot-timeout needs --reboot");
    let out = run_fleet(
        &world,
        "krops-deploy",
        &["--on", "alpha"],
        &json!({
            "alpha": {"target": target, "source": {}, "reboot": "yes"},
        }),
    );
    out.assert_code(1)
        .assert_stderr_contains("fleet.alpha.reboot: expected a boolean, got a string");
    assert!(world.records("nixos-rebuild").is_empty());
    assert!(!world.path("alpha/src").exists());
}

/// Reliability (Interrupt): SIGTERM while waiting for a rebooted host that is down → exit 143 at once, saying what it waited for and that the host may be rebooting; nothing of the run is left running
#[test]
fn sigterm_while_waiting_for_a_reboot_stops_at_once() {
    let world = World::new();
    let (host, target, _, _) = world.nixos_deploy_host("alpha", false);
    let sources = world.write("sources.json", world.nixos_config().to_string());
    let mut args = forced_args(&target, &["--reboot", "--reboot-timeout", "600"]);
    args.extend(["--sources", sources.to_str().unwrap()]);
    let request = world.nixos_run_dir("alpha").join("krops-test-reboot");
    let mut asked = None;
    let (code, stderr) = world.reboot_when_asked(&host, Comeback::Never, || {
        world.signal_once(
            "krops-deploy",
            &args,
            || {
                // Once the host went down, a moment into the wait.
                let rebooted = std::fs::read_dir(world.records_dir())
                    .unwrap()
                    .flatten()
                    .any(|entry| entry.file_name().to_string_lossy().starts_with("reboot."));
                if asked.is_none() && rebooted && !request.exists() {
                    asked = Some(Instant::now());
                }
                asked.is_some_and(|at| at.elapsed() > Duration::from_millis(1500))
            },
            "TERM",
        )
    });
    let waited = asked.unwrap().elapsed();
    assert_eq!(code, Some(143), "{stderr}");
    assert!(
        waited < Duration::from_secs(20),
        "it took {waited:?} to stop\n{stderr}"
    );
    assert!(
        stderr.contains("root@alpha is down; waiting for it to come back"),
        "{stderr}"
    );
    assert!(stderr.contains("root@alpha may be rebooting"), "{stderr}");
    world.assert_no_processes_left();
}

/// With the real nixos-rebuild: a boot, then the reboot into it → the host
/// comes back running the system nixos-rebuild built from the synced
/// sources, which is what the deploy checked.
#[test]
fn a_reboot_after_a_real_boot_comes_back_on_the_system_it_built() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let host = world.add_nixos_host("alpha");
    let v1 = world.real_system(&rr, "v1");
    world.boot_nixos_host("alpha", &v1);
    let target = host.target("root", &world.path("alpha/src"));
    let v2 = world.real_system(&rr, "v2");
    let out = deploy_rebooting(
        &world,
        &host,
        Comeback::After(Duration::from_secs(1)),
        &target,
        &["--operation", "boot", "--reboot-timeout", "120"],
        &world.real_sources(&rr, "v2"),
    );
    out.assert_success()
        .assert_stderr_contains("building the system configuration...")
        .assert_stderr_contains("running the system just built");
    assert_eq!(world.profile_system("alpha"), Some(v2.clone()));
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(rr.activations(), [format!("boot {}", v2.display())]);
    let reboot = &out.document()["reboot"];
    assert_eq!(
        reboot["system"],
        json!(v2.display().to_string()),
        "{reboot}"
    );
    assert_eq!(
        reboot["running"],
        json!(v2.display().to_string()),
        "{reboot}"
    );
    assert_eq!(reboot["rebooted"], json!(true), "{reboot}");
    rr.assert_machine_untouched();
}

/// Three world NixOS hosts running system 1.0, the rebuild set to build
/// 2.0, and a fleet of them (forced, no nom): the hosts, the fleet, the old
/// and the new system.
fn nixos_fleet(
    world: &World,
) -> (
    Vec<krops_tests::Host>,
    serde_json::Map<String, Value>,
    PathBuf,
    PathBuf,
) {
    let old = world.nixos_system("1.0", false);
    let new = world.nixos_system("2.0", false);
    world.set_rebuild_system(&new);
    let sources = world.nixos_config();
    let mut fleet = serde_json::Map::new();
    let hosts = ["alpha", "beta", "gamma"]
        .iter()
        .map(|alias| {
            let host = world.add_nixos_host(alias);
            world.boot_nixos_host(alias, &old);
            fleet.insert(
                (*alias).to_owned(),
                json!({
                    "target": host.target("root", &world.path(&format!("{alias}/src"))),
                    "source": sources,
                    "force": true,
                    "useNixOutputMonitor": false,
                }),
            );
            host
        })
        .collect();
    (hosts, fleet, old, new)
}

/// Reliability (Fleet): a fleet rebooting one host at a time whose second host never comes back, with --max-failures 1 → the first is back on the new system, the second fails naming its time, the third is not started (nor rebooted); --json has each host's boot ids
#[test]
fn a_fleet_reboots_within_jobs_and_max_failures() {
    let world = World::new();
    let (hosts, mut fleet, old, new) = nixos_fleet(&world);
    for alias in ["alpha", "beta", "gamma"] {
        fleet[alias]["reboot"] = json!(true);
        fleet[alias]["operation"] = json!("boot");
    }
    fleet["beta"]["rebootTimeout"] = json!(3);
    let before: Vec<String> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|alias| world.boot_id(alias))
        .collect();
    let back = Comeback::After(Duration::from_secs(1));
    let out = world.reboot_when_asked(&hosts[0], back, || {
        world.reboot_when_asked(&hosts[1], Comeback::Never, || {
            run_fleet(
                &world,
                "krops-deploy",
                &["--jobs", "1", "--max-failures", "1", "--json"],
                &Value::Object(fleet),
            )
        })
    });
    out.assert_code(1);
    assert!(summary_row(&out, "alpha").contains(" ok "), "{out}");
    assert!(
        summary_row(&out, "beta").contains(" failed (exit status 1) "),
        "{out}"
    );
    assert!(
        summary_row(&out, "gamma").contains(" not started "),
        "{out}"
    );
    out.assert_stderr_contains(
        "beta | krops-deploy: error: root@beta did not come back with a new boot id within 3 s \
         (--reboot-timeout)",
    );
    assert_eq!(world.current_system("alpha"), Some(new));
    assert_eq!(world.current_system("gamma"), Some(old));
    // One host at a time: beta's reboot came after alpha was back.
    let mut reboots = world.records("reboot");
    assert_eq!(reboots.len(), 2, "alpha and beta rebooted");
    reboots.sort_by_key(|record| record.time);
    let alpha_back = std::fs::metadata(world.path("hosts/alpha/boot_id"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert!(
        reboots[0].time < alpha_back && alpha_back < reboots[1].time,
        "beta rebooted while alpha was down\n{out}"
    );
    let doc = out.document();
    let host = |alias: &str| doc["hosts"][alias].clone();
    assert_eq!(host("alpha")["rebooted"], json!(true), "{doc}");
    assert_eq!(host("alpha")["bootIdBefore"], json!(before[0]), "{doc}");
    assert_eq!(
        host("alpha")["bootIdAfter"],
        json!(world.boot_id("alpha")),
        "{doc}"
    );
    assert_ne!(host("alpha")["bootIdAfter"], json!(before[0]), "{doc}");
    assert_eq!(host("beta")["rebooted"], json!(false), "{doc}");
    assert_eq!(host("beta")["bootIdBefore"], json!(before[1]), "{doc}");
    assert_eq!(host("beta")["bootIdAfter"], Value::Null, "{doc}");
    assert_eq!(host("beta")["batch"], json!(2), "{doc}");
    assert_eq!(host("gamma")["rebooted"], json!(false), "{doc}");
    assert_eq!(host("gamma")["bootIdBefore"], Value::Null, "{doc}");
    assert_eq!(
        host("gamma")["notStarted"],
        json!("--max-failures 1: 1 host failed"),
        "{doc}"
    );
    assert_eq!(world.boot_id("gamma"), before[2]);
}

/// Reliability (Fleet): a confirmed fleet deploy whose check fails on the first host, --jobs 1 --max-failures 1 → that host rolls back and counts as failed, the others are never deployed
#[test]
fn a_deploy_that_was_not_confirmed_counts_as_failed() {
    let world = World::new();
    let (_, fleet, old, _) = nixos_fleet(&world);
    let out = run_fleet(
        &world,
        "krops-deploy",
        &[
            "--jobs",
            "1",
            "--max-failures",
            "1",
            "--confirm-timeout",
            "600",
            "--check",
            "test -e /run/current-system/healthy",
        ],
        &Value::Object(fleet),
    );
    out.assert_code(1)
        .assert_stderr_contains("alpha | krops-deploy: error: not confirmed (the check failed)");
    assert!(
        summary_row(&out, "alpha").contains(" failed (exit status 1) "),
        "{out}"
    );
    for alias in ["beta", "gamma"] {
        assert!(summary_row(&out, alias).contains(" not started "), "{out}");
        assert_eq!(world.current_system(alias), Some(old.clone()));
    }
    assert_eq!(world.current_system("alpha"), Some(old));
    // Only alpha's switch and its rollback.
    assert_eq!(world.records("nixos-rebuild").len(), 2);
}

/// writeDeploy's `reboot` and `rebootTimeout` become `--reboot` and
/// `--reboot-timeout`, left out when the script is run with `--preview`
/// (there is nothing to reboot into); its `tags` reach no option.
#[test]
fn write_deploy_takes_reboot_and_tags() {
    let world = World::new();
    let (writers, krops_rs) = world.nix_fixtures();
    let file = world.write(
        "deploy.nix",
        format!(
            r#"let
  krops = {krops};
  lib = import (krops + "/lib");
  k = import (krops + "/pkgs/krops") {{ writers = import {writers}; krops-rs = {krops_rs}; }};
in {{
  d = k.writeDeploy "d" {{ source = lib.evalSource {{ l.symlink = "x"; }}; target = "h";
    reboot = true; rebootTimeout = 77; tags = [ "web" ]; }};
}}"#,
            krops = krops_tests::nix::nix_str(krops_tests::nix::krops_dir().to_str().unwrap()),
            writers = krops_tests::nix::nix_str(writers.to_str().unwrap()),
            krops_rs = krops_tests::nix::nix_str(krops_rs.to_str().unwrap()),
        ),
    );
    let built = world.nix_build(&file, "d");
    let script = std::fs::read_to_string(&built).unwrap();
    assert!(!script.contains("web"), "{script}");
    let out = world.run_command(world.command(&built).arg("--dry-run"), b"");
    out.assert_success()
        .assert_stdout_contains("# then reboot root@h; it prints its boot id")
        .assert_stdout_contains("for up to 77 s after the reboot");
    let out = world.run_command(world.command(&built).args(["--dry-run", "--preview"]), b"");
    out.assert_success();
    assert!(!out.stdout_str().contains("reboot"), "{out}");
}
