//! End-to-end: `krops-deploy --fleet` and `krops-command --fleet` against
//! three real sshd hosts (README: Many hosts at once), with the world's
//! stand-ins for nixos-rebuild and nom.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use krops_tests::{Host, Output, World};
use serde_json::{json, Value};

const HOSTS: [&str; 3] = ["alpha", "beta", "gamma"];

/// A world with the three hosts; each host's target path is `NAME/src`.
pub(crate) fn three_hosts() -> (World, Vec<Host>) {
    let world = World::new();
    let hosts = HOSTS.iter().map(|name| world.add_host(name)).collect();
    (world, hosts)
}

pub(crate) fn dest(world: &World, name: &str) -> PathBuf {
    world.path(&format!("{name}/src"))
}

/// A host's writeDeploy attributes: its own configuration file, forced.
pub(crate) fn deploy_entry(world: &World, host: &Host) -> Value {
    let name = host.alias();
    let config = world.write(
        &format!("cfg/{name}/configuration.nix"),
        format!("{{ networking.hostName = \"{name}\"; }}\n"),
    );
    json!({
        "target": host.target("root", &dest(world, name)),
        "source": {"nixos-config": {"file": config.to_str().unwrap()}},
        "force": true,
        "useNixOutputMonitor": false,
    })
}

pub(crate) fn fleet_of(world: &World, hosts: &[Host]) -> serde_json::Map<String, Value> {
    hosts
        .iter()
        .map(|host| (host.alias().to_owned(), deploy_entry(world, host)))
        .collect()
}

/// Runs `tool --fleet - ARGS` with `fleet` on stdin.
pub(crate) fn run_fleet(world: &World, tool: &str, args: &[&str], fleet: &Value) -> Output {
    let args = [&["--fleet", "-"], args].concat();
    world.run(tool, &args, fleet.to_string().as_bytes())
}

/// The target paths nixos-rebuild switched, sorted.
pub(crate) fn rebuilt(world: &World) -> Vec<String> {
    let mut paths: Vec<String> = world
        .records("nixos-rebuild")
        .iter()
        .map(|record| record.env["NIX_PATH"].clone())
        .collect();
    paths.sort();
    paths
}

pub(crate) fn paths(world: &World, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|name| dest(world, name).display().to_string())
        .collect()
}

/// The summary row of `host` on stderr.
#[track_caller]
pub(crate) fn summary_row(out: &Output, host: &str) -> String {
    let stderr = out.stderr_str();
    let rows: Vec<&str> = stderr
        .lines()
        .filter(|line| line.split_whitespace().next() == Some(host) && line.starts_with("  "))
        .collect();
    assert_eq!(rows.len(), 1, "one summary row for {host}\n{out}");
    rows[0].to_owned()
}

/// An executable script at `rel` in the world.
pub(crate) fn script(world: &World, rel: &str, body: &str) -> PathBuf {
    world.write_executable(rel, format!("#!/bin/sh\n{body}"))
}

/// A pipe source command for `host` that marks that it started, then waits
/// until all `count` hosts did: it only finishes when the hosts run at once.
fn barrier(world: &World, host: &str, count: usize) -> PathBuf {
    let markers = world.mkdir("markers");
    script(
        world,
        &format!("barrier/{host}"),
        &format!(
            "touch {markers}/{host}\n\
             i=0\n\
             while [ \"$(ls {markers} | wc -l)\" -lt {count} ]; do\n\
             \x20 i=$((i + 1))\n\
             \x20 if [ $i -gt 300 ]; then echo \"{host}: the other hosts never started: $(ls {markers})\" >&2; exit 1; fi\n\
             \x20 sleep 0.1\n\
             done\n\
             echo {host} waited for all\n",
            markers = markers.display()
        ),
    )
}

#[test]
fn fleet_deploys_every_host_at_once() {
    let (world, hosts) = three_hosts();
    let mut fleet = fleet_of(&world, &hosts);
    for name in HOSTS {
        let barrier = barrier(&world, name, HOSTS.len());
        fleet[name]["source"]["barrier"] = json!({"pipe": barrier.to_str().unwrap()});
    }
    let out = run_fleet(&world, "krops-deploy", &[], &Value::Object(fleet));
    out.assert_success();
    assert_eq!(rebuilt(&world), paths(&world, &HOSTS));
    for name in HOSTS {
        let dest = dest(&world, name);
        let config = std::fs::read_to_string(dest.join("nixos-config")).unwrap();
        assert!(config.contains(name), "{name} got {config}");
        assert_eq!(
            std::fs::read_to_string(dest.join("barrier")).unwrap(),
            format!("{name} waited for all\n")
        );
        out.assert_stdout_contains(&format!(
            "{name} | nixos-rebuild stand-in: switch --no-flake\n"
        ));
        assert!(summary_row(&out, name).contains(" ok "), "{out}");
    }
    out.assert_stderr_contains("krops-deploy: fleet: 3 of 3 hosts ok\n");
    // No temp files left: the hosts' sources files are removed.
    let leftovers: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn jobs_limits_how_many_hosts_run_at_once() {
    // Each host's pipe source waits until two hosts started (so two run at
    // once), then counts the hosts running: never more than --jobs.
    let (world, hosts) = three_hosts();
    let mut fleet = fleet_of(&world, &hosts);
    let started = world.mkdir("started");
    let running = world.mkdir("running");
    for name in HOSTS {
        let count = script(
            &world,
            &format!("count/{name}"),
            &format!(
                "touch {started}/{name} {running}/{name}\n\
                 i=0\n\
                 while [ \"$(ls {started} | wc -l)\" -lt 2 ]; do\n\
                 \x20 i=$((i + 1)); if [ $i -gt 300 ]; then echo no second host >&2; exit 1; fi\n\
                 \x20 sleep 0.1\n\
                 done\n\
                 sleep 0.5\n\
                 ls {running} | wc -l\n\
                 rm {running}/{name}\n",
                started = started.display(),
                running = running.display()
            ),
        );
        fleet[name]["source"]["count"] = json!({"pipe": count.to_str().unwrap()});
    }
    let out = run_fleet(
        &world,
        "krops-deploy",
        &["--jobs", "2"],
        &Value::Object(fleet),
    );
    out.assert_success();
    assert_eq!(rebuilt(&world), paths(&world, &HOSTS));
    for name in HOSTS {
        let count = std::fs::read_to_string(dest(&world, name).join("count")).unwrap();
        let count: usize = count.trim().parse().unwrap();
        assert!(
            (1..=2).contains(&count),
            "{name} saw {count} hosts running at once\n{out}"
        );
    }
}

#[test]
fn on_selects_hosts_by_name_and_pattern() {
    let (world, hosts) = three_hosts();
    let fleet = Value::Object(fleet_of(&world, &hosts));
    run_fleet(&world, "krops-deploy", &["--on", "g*,a?pha"], &fleet).assert_success();
    assert_eq!(rebuilt(&world), paths(&world, &["alpha", "gamma"]));
    assert!(!dest(&world, "beta").exists(), "beta was not selected");

    // A pattern that matches nothing stops the run before any host starts.
    let before = world.records("nixos-rebuild").len();
    let out = run_fleet(&world, "krops-deploy", &["--on", "beta,delta*"], &fleet);
    out.assert_code(1)
        .assert_stderr_contains("--on \"delta*\" matches no host of the fleet");
    assert_eq!(world.records("nixos-rebuild").len(), before);
    assert!(!dest(&world, "beta").exists());

    run_fleet(&world, "krops-deploy", &["--on", "beta"], &fleet).assert_success();
    assert_eq!(rebuilt(&world), paths(&world, &["alpha", "beta", "gamma"]));
}

#[test]
fn a_failing_host_leaves_the_others_deployed() {
    let (world, hosts) = three_hosts();
    let mut fleet = fleet_of(&world, &hosts);
    // beta has no sentinel and may not create it; gamma is down.
    fleet["beta"]["force"] = json!(false);
    world.stop_host("gamma");
    let out = run_fleet(&world, "krops-deploy", &[], &Value::Object(fleet));
    out.assert_code(1);
    assert_eq!(rebuilt(&world), paths(&world, &["alpha"]));
    assert!(dest(&world, "alpha").join("nixos-config").is_file());
    assert!(!dest(&world, "beta").join("nixos-config").exists());
    assert!(summary_row(&out, "alpha").contains(" ok "), "{out}");
    assert!(
        summary_row(&out, "beta").contains(" failed (exit status 1) "),
        "{out}"
    );
    assert!(
        summary_row(&out, "gamma").contains(" failed (exit status 1) "),
        "{out}"
    );
    out.assert_stderr_contains("krops-deploy: fleet: 1 of 3 hosts ok, 2 failed\n")
        .assert_stderr_contains("beta | krops-deploy: error: sentinel check → beta:")
        .assert_stderr_contains("gamma | krops-deploy: error: sentinel check → gamma:")
        .assert_stderr_contains("the ssh connection to root@gamma failed: ")
        .assert_stderr_contains("Connection refused");
}

#[test]
fn bad_fleet_files_are_refused_before_anything_runs() {
    let (world, hosts) = three_hosts();
    let good = fleet_of(&world, &hosts);
    for name in HOSTS {
        world.write(&format!("{name}/src/.populate"), "");
        world.write(&format!("{name}/src/old"), "from before\n");
    }
    let trees: Vec<_> = HOSTS
        .iter()
        .map(|name| world.tree_with_mtimes(&dest(&world, name)))
        .collect();
    let with = |host: &str, key: &str, value: Value| {
        let mut fleet = good.clone();
        fleet[host][key] = value;
        Value::Object(fleet).to_string()
    };
    let alpha = good["alpha"].to_string();
    let cases = [
        (
            "krops-deploy",
            with("beta", "sorce", json!({})),
            "fleet.beta.sorce: unknown field",
        ),
        (
            "krops-deploy",
            with("gamma", "force", json!("yes")),
            "fleet.gamma.force: expected a boolean, got a string",
        ),
        (
            "krops-deploy",
            with("beta", "target", json!({"host": "beta", "prot": 22})),
            "fleet.beta.target: target.prot: unknown field",
        ),
        (
            "krops-deploy",
            with("beta", "source", json!({"x": {"git": {"url": "u"}}})),
            "fleet.beta.source: x.git.ref: missing field",
        ),
        (
            "krops-deploy",
            format!(r#"{{"alpha": {alpha}, "alpha": {alpha}}}"#),
            "duplicate key \"alpha\"",
        ),
        (
            "krops-deploy",
            format!(r#"{{"alpha": {alpha}, "be ta": {alpha}}}"#),
            "fleet.\"be ta\": a host name must be",
        ),
        (
            "krops-command",
            with("alpha", "operation", json!("boot")),
            "fleet.alpha.operation: unknown field",
        ),
        // What only the tool itself checks, each host's run refuses before
        // any host starts: a file source that does not exist, a bad operation.
        (
            "krops-deploy",
            with(
                "beta",
                "source",
                json!({"nixos-config": {"file": world.path("missing").to_str().unwrap()}}),
            ),
            "beta | krops-deploy: error: ",
        ),
        (
            "krops-deploy",
            with("gamma", "operation", json!("-rf")),
            "gamma | krops-deploy: error: --operation \"-rf\"",
        ),
    ];
    for (tool, fleet, expected) in cases {
        let out = world.run(tool, &["--fleet", "-"], fleet.as_bytes());
        out.assert_code(1).assert_stderr_contains(expected);
        assert!(out.stdout.is_empty(), "nothing ran, nothing printed\n{out}");
        assert!(world.records("nixos-rebuild").is_empty(), "{fleet}\n{out}");
        for (name, tree) in HOSTS.iter().zip(&trees) {
            assert_eq!(
                &world.tree_with_mtimes(&dest(&world, name)),
                tree,
                "{name} changed by the refused fleet {fleet}\n{out}"
            );
        }
    }
    let out = world.run("krops-deploy", &["--fleet", "-"], b"");
    out.assert_failure()
        .assert_stderr_contains("fleet: malformed JSON");
}

#[test]
fn prefixes_keep_stdout_and_stderr_apart() {
    let (world, hosts) = three_hosts();
    let fleet = Value::Object(fleet_of(&world, &hosts[..2]));
    let out = run_fleet(&world, "krops-deploy", &[], &fleet);
    out.assert_success();
    let stdout = out.stdout_str();
    for line in stdout.lines() {
        assert!(
            line.starts_with("alpha | ") || line.starts_with("beta | "),
            "unprefixed stdout line {line:?}\n{out}"
        );
    }
    let stderr = out.stderr_str();
    for name in ["alpha", "beta"] {
        let prefix = format!("{name} | ");
        assert!(stdout.contains(&format!(
            "{prefix}nixos-rebuild stand-in: switch --no-flake\n"
        )));
        assert!(stderr.contains(&format!(
            "{prefix}nixos-rebuild stand-in: this line goes to stderr\n"
        )));
        assert!(stderr.contains(&format!("{prefix}# use nix-output-monitor: false\n")));
        assert!(stderr.contains(&format!(" populate: source nixos-config (file) → {name}:")));
        assert!(stderr.lines().any(|line| line.starts_with(&prefix)
            && line.contains(" populate: source nixos-config (file) → ")));
    }
    assert!(!stdout.contains("goes to stderr"), "{out}");
    assert!(!stderr.contains("stand-in: switch --no-flake\n"), "{out}");
    // Every other stderr line is the fleet's own summary.
    for line in stderr.lines() {
        assert!(
            line.starts_with("alpha | ")
                || line.starts_with("beta | ")
                || line.starts_with("krops-deploy: fleet: ")
                || line.starts_with("  "),
            "stray stderr line {line:?}\n{out}"
        );
    }
}

#[test]
fn options_reach_every_host_and_win_over_the_file() {
    let (world, hosts) = three_hosts();
    let mut fleet = fleet_of(&world, &hosts[..2]);
    fleet["alpha"]["operation"] = json!("boot");
    fleet["beta"]["operation"] = json!("test");
    fleet["beta"]["crossDeploy"] = json!(true);
    let fleet = Value::Object(fleet);
    run_fleet(&world, "krops-deploy", &[], &fleet).assert_success();
    let mut argvs: Vec<(String, Vec<String>)> = world
        .records("nixos-rebuild")
        .into_iter()
        .map(|r| (r.env["NIX_PATH"].clone(), r.argv))
        .collect();
    argvs.sort();
    let words = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let [alpha_path, beta_path] = [0, 1].map(|i| paths(&world, &["alpha", "beta"])[i].clone());
    assert_eq!(
        argvs,
        [
            (alpha_path.clone(), words(&["boot", "--no-flake"])),
            (beta_path, words(&["test", "--no-flake", "--no-build-nix"])),
        ]
    );
    // The command line's --operation wins; --dry-run reaches every host.
    let out = run_fleet(
        &world,
        "krops-deploy",
        &["--operation", "dry-activate", "--dry-run"],
        &fleet,
    );
    out.assert_success();
    assert_eq!(
        world.records("nixos-rebuild").len(),
        2,
        "a dry run ran nothing"
    );
    let stdout = out.stdout_str();
    let alpha_plan = stdout
        .split("# ---- fleet host alpha ----\n")
        .nth(1)
        .expect("alpha's plan")
        .split("# ---- fleet host beta ----\n")
        .collect::<Vec<_>>();
    assert_eq!(alpha_plan.len(), 2, "alpha's plan, then beta's\n{out}");
    for plan in &alpha_plan {
        assert!(plan.starts_with("#!/bin/sh\n"), "{out}");
        assert!(plan.contains("nixos-rebuild dry-activate"), "{out}");
    }
    assert!(alpha_plan[0].contains(&alpha_path), "{out}");
    assert!(alpha_plan[1].contains("--no-build-nix"), "{out}");
}

#[test]
fn command_fleet_runs_a_script_on_each_host() {
    let (world, hosts) = three_hosts();
    let src = world.write("files/motd", "hello\n");
    let fleet: serde_json::Map<String, Value> = hosts
        .iter()
        .map(|host| {
            let name = host.alias();
            let mut entry = json!({
                "target": host.target("root", &dest(&world, name)),
                "source": {"motd": {"file": src.to_str().unwrap()}},
                "force": true,
            });
            if name != "gamma" {
                entry["command"] =
                    json!(format!("cat \"$1/motd\"; echo {name} ran; echo oops >&2"));
            }
            (name.to_owned(), entry)
        })
        .collect();
    let fleet = Value::Object(fleet);
    let out = run_fleet(&world, "krops-command", &[], &fleet);
    out.assert_success();
    for name in ["alpha", "beta"] {
        out.assert_stdout_contains(&format!("{name} | hello\n{name} | {name} ran\n"))
            .assert_stderr_contains(&format!("{name} | oops\n"));
    }
    // Without a command, the target path is printed, as krops-command does.
    out.assert_stdout_contains(&format!("gamma | {}\n", dest(&world, "gamma").display()));

    // A SCRIPT on the command line runs on every host instead.
    let out = run_fleet(
        &world,
        "krops-command",
        &[
            "--on",
            "alpha,gamma",
            "test -f \"$1/motd\" && echo found in $1",
        ],
        &fleet,
    );
    out.assert_success();
    for name in ["alpha", "gamma"] {
        out.assert_stdout_contains(&format!(
            "{name} | found in {}\n",
            dest(&world, name).display()
        ));
    }
    assert!(!out.stdout_str().contains("beta"), "{out}");

    // A failing script fails its host only, with its status in the summary.
    let beta = dest(&world, "beta").display().to_string();
    let script = format!(
        "[ \"$1\" != {} ] || exit 7",
        krops_tests::quote(beta.as_ref())
    );
    let out = run_fleet(&world, "krops-command", &[&script], &fleet);
    out.assert_code(1);
    assert!(summary_row(&out, "alpha").contains(" ok "), "{out}");
    assert!(
        summary_row(&out, "beta").contains(" failed (exit status 7) "),
        "{out}"
    );
}

#[test]
fn sigterm_stops_every_host_and_removes_temp_files() {
    let (world, hosts) = three_hosts();
    let mut fleet = fleet_of(&world, &hosts);
    let markers = world.mkdir("started");
    for name in HOSTS {
        // Each host's pipe source marks that it runs, then hangs.
        let hang = script(
            &world,
            &format!("hang/{name}"),
            &format!("echo $$ >{}/{name}\nexec sleep 120\n", markers.display()),
        );
        fleet[name]["source"]["hang"] = json!({"pipe": hang.to_str().unwrap()});
    }
    let mut child = world
        .command(world.tool("krops-deploy"))
        .args(["--fleet", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(Value::Object(fleet).to_string().as_bytes())
            .unwrap();
    }
    let started = || std::fs::read_dir(&markers).unwrap().count();
    for _ in 0..600 {
        if started() == HOSTS.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(started(), HOSTS.len(), "every host's pipe started");
    let pids: Vec<String> = HOSTS
        .iter()
        .map(|name| {
            std::fs::read_to_string(markers.join(name))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("krops-deploy: interrupted by SIGTERM"),
        "{stderr}"
    );
    for (name, pid) in HOSTS.iter().zip(&pids) {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name}'s pipe command {pid} still runs\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("{name} | krops-deploy: interrupted by SIGTERM")),
            "{name} stopped on its own terms\n{stderr}"
        );
    }
    assert!(world.records("nixos-rebuild").is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}
