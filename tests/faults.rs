//! End-to-end: connection faults (README: Reliability). The target's sshd refuses,
//! rejects the host key or the login, accepts and never answers, dies or
//! freezes in the middle of a populate; a fleet has a hanging host or is
//! interrupted (signals to a single run are in `interrupts`). Each time the
//! tool must end within a bounded time with an error that says the
//! connection failed and why (ssh's own words), leave nothing behind here
//! (temp dirs, control sockets, ssh masters, children), and a rerun must
//! complete and leave the same tree as an uninterrupted run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use krops_tests::{receiving_big, sources_tree, Host, Output, World, RUN_TIMEOUT};
use serde_json::{json, Value};

/// A port nothing listens on: connections to it are refused.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A port whose listener accepts every connection and never sends a byte,
/// like a host whose sshd hangs (or a firewall that swallows the banner).
fn silent_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    port
}

/// The target `root@alpha` (the host's ssh config entry) on `port`.
fn on_port(dest: &Path, port: u16) -> String {
    json!({"user": "root", "host": "alpha", "port": port.to_string(), "path": dest}).to_string()
}

/// The last line of stderr that starts with `TOOL: error:`.
#[track_caller]
fn error_line(out: &Output, tool: &str) -> String {
    let stderr = out.stderr_str();
    stderr
        .lines()
        .rev()
        .find(|line| line.starts_with(&format!("{tool}: error:")))
        .unwrap_or_else(|| panic!("no `{tool}: error:` line\n{out}"))
        .to_owned()
}

/// The world's ssh config with another client key, which the hosts do not
/// accept; for a target's `-F`.
fn config_with_a_wrong_key(world: &World) -> PathBuf {
    let key = world.path("ssh/wrong_key");
    let keygen = world.run_command(
        world
            .command("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
        b"",
    );
    keygen.assert_success();
    let config = std::fs::read_to_string(world.ssh_config()).unwrap();
    let client_key = world.client_key().display().to_string();
    assert!(config.contains(&client_key));
    world.write(
        "ssh/wrong_key_config",
        config.replace(&client_key, key.to_str().unwrap()),
    )
}

/// Reliability (Connection fault): target port refuses (shared connection and `--no-multiplex`), unknown host key under `StrictHostKeyChecking=yes`, login rejected → exit 1 at once, the error quotes ssh once (`Connection refused`, `Host key verification failed.`, `Permission denied (publickey).`); nothing written, nothing left here, no rebuild
#[test]
fn a_target_that_cannot_be_reached_fails_once_with_ssh_s_reason() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let empty_known_hosts = world.write("ssh/empty_known_hosts", "");
    let wrong_key = config_with_a_wrong_key(&world);
    let with_options = |options: &[&str]| {
        json!({"user": "root", "host": "alpha", "path": dest, "extraOptions": options}).to_string()
    };
    let faults = [
        (
            "refused (wrong port)",
            on_port(&dest, closed_port()),
            "Connection refused",
        ),
        (
            "unknown host key",
            with_options(&[
                "-o",
                &format!("UserKnownHostsFile={}", empty_known_hosts.display()),
                "-o",
                "StrictHostKeyChecking=yes",
            ]),
            "Host key verification failed.",
        ),
        (
            "login rejected (wrong key)",
            with_options(&["-F", wrong_key.to_str().unwrap()]),
            "Permission denied (publickey)",
        ),
    ];
    let sources = json!({
        "link": {"symlink": "x"},
        "cfg": {"file": world.write("cfg/a.nix", "{ }\n").parent().unwrap()},
    });
    for (fault, target, reason) in &faults {
        for flags in [&["--force"][..], &["--force", "--no-multiplex"]] {
            let out = world.populate(target, flags, &sources);
            out.assert_code(1);
            let error = error_line(&out, "populate");
            assert!(
                error.starts_with(&format!(
                    "populate: error: sentinel check → alpha:{}/.populate: \
                     the ssh connection to root@alpha failed: ",
                    dest.display()
                )) && error.contains(reason),
                "{fault} {flags:?}: {error}\n{out}"
            );
            if flags.len() == 1 {
                // With a shared connection, ssh's message is the error's
                // alone: it failed once, and nothing tried again.
                assert_eq!(
                    out.stderr_str().matches(reason).count(),
                    1,
                    "{fault}: ssh's message more than once\n{out}"
                );
                assert!(!out.stderr_str().contains("warning"), "{fault}\n{out}");
            }
            assert!(!dest.exists(), "{fault}: something was written");
            world.assert_nothing_left();
        }
    }
    // A driver stops there too: no nixos-rebuild.
    let (_, target, reason) = &faults[0];
    let out = world.run(
        "krops-deploy",
        &["--target", target, "--force", "--nom", "false"],
        sources.to_string().as_bytes(),
    );
    out.assert_code(1);
    let error = error_line(&out, "krops-deploy");
    assert!(
        error.contains("the ssh connection to root@alpha failed: ") && error.contains(reason),
        "{error}"
    );
    assert!(world.records("nixos-rebuild").is_empty());
    world.assert_nothing_left();
}

/// Reliability (Connection fault): host accepts TCP and never answers → exit 1 after the default 30 s `ConnectTimeout` (a user's `-o ConnectTimeout=2` wins), quoting `Connection timed out during banner exchange`, waited once
#[test]
fn a_host_that_accepts_but_never_answers_times_out() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let port = silent_port();
    let sources = json!({"link": {"symlink": "x"}});
    // The default connect timeout ends it.
    let out = world.populate(&on_port(&dest, port), &["--force"], &sources);
    out.assert_code(1);
    let error = error_line(&out, "populate");
    assert!(
        error.contains("the ssh connection to root@alpha failed: ")
            && error.contains("Connection timed out during banner exchange"),
        "{error}\n{out}"
    );
    assert_eq!(
        out.stderr_str()
            .matches("Connection timed out during banner exchange")
            .count(),
        1,
        "waited more than once\n{out}"
    );
    // The wait is told while it lasts, and the failure takes its time.
    let stderr = out.stderr_str();
    assert!(
        stderr.contains(
            "populate: still connecting to root@alpha: no answer for 3 s (ssh gives up after 30 s)"
        ),
        "{out}"
    );
    let failed = stderr
        .lines()
        .find(|line| line.contains("populate: sentinel check: failed in "))
        .unwrap_or_else(|| panic!("no failed sentinel check\n{out}"));
    assert!(!failed.ends_with("failed in 0.0 s"), "{failed}\n{out}");
    world.assert_nothing_left();
    // The user's ConnectTimeout wins over the default: 2 s, not 30 (a
    // generous bound: it proves that the default was not waited for).
    for flags in [&["--force"][..], &["--force", "--no-multiplex"]] {
        let target = json!({"user": "root", "host": "alpha", "port": port.to_string(),
                            "path": dest, "extraOptions": ["-o", "ConnectTimeout=2"]});
        let out = world.populate(&target.to_string(), flags, &sources);
        out.assert_code(1);
        assert!(
            out.elapsed < Duration::from_secs(25),
            "the user's ConnectTimeout=2 was not what ssh used\n{out}"
        );
        assert!(
            error_line(&out, "populate").contains("Connection timed out during banner exchange"),
            "{out}"
        );
        world.assert_nothing_left();
    }
}

/// Reliability (Connection fault): a host that never answers, with and without the lock → the log says `still connecting` while it waits, the failed sentinel check and `--json` count the wait, and the log's timestamps never go back
#[test]
fn a_host_that_never_answers_is_told_the_same_with_or_without_the_lock() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let port = silent_port();
    let sources = json!({"link": {"symlink": "x"}});
    // Longer than the 3 s before the note, far shorter than the default.
    let target = json!({"user": "root", "host": "alpha", "port": port.to_string(),
                        "path": dest, "extraOptions": ["-o", "ConnectTimeout=5"]});
    for flags in [
        &["--force", "--json"][..],
        &["--force", "--json", "--no-lock"],
    ] {
        let out = world.populate(&target.to_string(), flags, &sources);
        out.assert_code(1);
        let stderr = out.stderr_str();
        assert!(
            stderr.contains(
                "populate: still connecting to root@alpha: no answer for 3 s (ssh gives up after \
                 the ConnectTimeout you set)"
            ),
            "{flags:?}\n{out}"
        );
        let failed = stderr
            .lines()
            .find(|line| line.contains("populate: sentinel check: failed in "))
            .unwrap_or_else(|| panic!("{flags:?}: no failed sentinel check\n{out}"));
        assert!(
            !failed.ends_with("failed in 0.0 s"),
            "{flags:?}: {failed}\n{out}"
        );
        let doc: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|err| panic!("{err}: {out}"));
        // The note came after 3 s without an answer: the target's time holds them.
        let seconds = doc["targets"][0]["seconds"].as_f64().unwrap_or_default();
        assert!(seconds >= 3.0, "{flags:?}: {doc}\n{out}");
        // Lines stamped in the order they were written.
        let stamps: Vec<&str> = stderr
            .lines()
            .filter(|line| line.contains(" populate: "))
            .filter_map(|line| line.split(' ').next())
            .collect();
        let mut sorted = stamps.clone();
        sorted.sort_unstable();
        assert_eq!(stamps, sorted, "{flags:?}: a timestamp goes back\n{out}");
        world.assert_nothing_left();
    }
}

/// Waits (up to two minutes) until `ready()`; returns whether it came.
fn wait_until(mut ready: impl FnMut() -> bool) -> bool {
    for _ in 0..2400 {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Where a fault strikes in the middle of a populate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum During {
    /// rsync sending a 20 MB file.
    Rsync,
    /// A remote step that takes long (a derivation building on the target).
    RemoteStep,
    /// A local step that takes long (a pipe's command) while the
    /// connection is idle.
    LocalStep,
}

/// Sources of several types: a file tree with a 20 MB file, a symlink, a
/// pipe, a pass store and a derivation. The pipe's command takes long
/// while the world's file `slow-pipe` exists, the derivation's build while
/// `slow-build` does; each then first creates `pipe-started` or
/// `build-started`.
fn sources_with_slow_steps(world: &World) -> Value {
    world.write("tree/small.nix", "{ }\n");
    world.write("tree/sub/deeper.txt", "deeper\n");
    std::os::unix::fs::symlink("sub/deeper.txt", world.path("tree/link")).unwrap();
    let big = world.path("tree/big");
    world
        .sh(&format!(
            "head -c 20000000 /dev/urandom > {}",
            big.display()
        ))
        .assert_success();
    let pipe = world.write_executable(
        "gen/version",
        format!(
            "#!/bin/sh\nif [ -e {flag} ]; then touch {marker}; sleep 5; fi\necho generated\n",
            flag = world.path("slow-pipe").display(),
            marker = world.path("pipe-started").display()
        ),
    );
    let pass = world.pass_store();
    pass.insert("hosts/alpha/token", "pass-fault-secret");
    let derivation = format!(
        r#"builtins.derivation {{
  name = "krops-fault-fixture";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "if [ -e {flag} ]; then : > {marker}; exec /bin/sleep 63; fi; echo built > $out" ];
}}"#,
        flag = world.path("slow-build").display(),
        marker = world.path("build-started").display(),
    );
    json!({
        "tree": {"file": world.path("tree").to_str().unwrap()},
        "link": {"symlink": "tree/small.nix"},
        "gen": {"pipe": pipe.to_str().unwrap()},
        "secrets": {"pass": {"dir": pass.dir().to_str().unwrap(), "name": "hosts/alpha"}},
        "fixture": {"derivation": derivation},
    })
}

/// Kills the target's sshd and its sessions while `during` runs, checks
/// the error and that nothing is left here, brings the host back, reruns,
/// and compares the tree with an uninterrupted run's.
fn connection_lost(during: During, flags: &[&str]) {
    let world = World::new();
    let alpha = world.add_host("alpha");
    // The derivation's builder writes its marker as a build user.
    std::fs::set_permissions(
        world.root(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let dest = world.path("remote/src");
    // ssh's messages at its default level (the world's config makes ssh
    // quiet): a connection reset is told at INFO only.
    let target = json!({"user": "root", "host": alpha.alias(), "path": dest,
                        "extraOptions": ["-o", "LogLevel=INFO"]})
    .to_string();
    let sources = sources_with_slow_steps(&world);
    let slow_rsync = world.slow_rsync();
    let marker = match during {
        During::Rsync => None,
        During::RemoteStep => Some(world.path("build-started")),
        During::LocalStep => Some(world.path("pipe-started")),
    };
    let slow = match during {
        During::Rsync => slow_rsync.clone(),
        During::RemoteStep => world.write("slow-build", ""),
        During::LocalStep => world.write("slow-pipe", ""),
    };
    if during != During::Rsync {
        std::fs::remove_file(&slow_rsync).unwrap();
    }
    let mut args = vec!["--target", &target];
    args.extend_from_slice(flags);
    let mut command = world.command(world.tool("populate"));
    command.args(&args);
    let input = sources.to_string();
    let (reached, out) = std::thread::scope(|scope| {
        let run = scope.spawn(|| world.run_command(&mut command, input.as_bytes()));
        let reached = match &marker {
            None => wait_until(|| receiving_big(&dest.join("tree"))),
            Some(marker) => wait_until(|| marker.exists()),
        };
        world.kill_host("alpha");
        (reached, run.join().unwrap())
    });
    assert!(reached, "{during:?} never came\n{out}");
    out.assert_code(1);
    let error = error_line(&out, "populate");
    assert!(
        error.contains(": the ssh connection to root@alpha ")
            && [
                "closed by remote host",
                "Connection refused",
                "Connection reset"
            ]
            .iter()
            .any(|reason| error.contains(reason)),
        "{during:?}: {error}\n{out}"
    );
    world.assert_nothing_left();

    std::fs::remove_file(&slow).unwrap();
    let alpha = world.restart_host(&alpha);
    let rerun = world.populate(&target, flags, &sources);
    rerun.assert_success();
    world.assert_nothing_left();
    let reference = world.path("reference/src");
    world
        .populate(&alpha.target("root", &reference), flags, &sources)
        .assert_success();
    let expected = sources_tree(&reference);
    assert!(expected.get("tree/big").is_some() && expected.get("fixture").is_some());
    expected.assert_unchanged(&sources_tree(&dest));
}

/// Reliability (Connection fault): sshd killed with its sessions during a 20 MB rsync → exit 1, "the ssh connection to … was lost"; nothing left here; a rerun leaves the same tree as an uninterrupted run
#[test]
fn a_connection_lost_during_an_rsync_fails_and_a_rerun_leaves_the_same_tree() {
    connection_lost(During::Rsync, &["--force"]);
}

/// Reliability (Connection fault): sshd killed during a remote step (a derivation build) → same
#[test]
fn a_connection_lost_during_a_remote_step_fails_and_a_rerun_leaves_the_same_tree() {
    connection_lost(During::RemoteStep, &["--force"]);
}

/// Reliability (Connection fault): the same with `--no-multiplex` → same
#[test]
fn a_connection_lost_without_multiplexing_fails_and_a_rerun_leaves_the_same_tree() {
    connection_lost(During::RemoteStep, &["--force", "--no-multiplex"]);
}

/// Reliability (Connection fault): sshd killed while a local step runs (a slow pipe; the connection idle) → exit 1 quoting `Connection refused`; the rerun leaves the same tree
#[test]
fn a_connection_lost_during_a_local_step_fails_and_a_rerun_leaves_the_same_tree() {
    connection_lost(During::LocalStep, &["--force"]);
}

/// Reliability (Connection fault): host frozen mid-rsync (connection open, silent) → noticed by the default keepalives in 60–75 s, exit 1 quoting `Timeout, server … not responding.`; nothing left here
#[test]
fn a_connection_that_stops_answering_is_noticed_by_default() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let _flag = world.slow_rsync();
    world.write("tree/small", "small\n");
    world
        .sh(&format!(
            "head -c 20000000 /dev/urandom > {}",
            world.path("tree/big").display()
        ))
        .assert_success();
    // The defaults' keepalives, with ssh's messages at its default level
    // (the world's config makes ssh quiet).
    let target = json!({"user": "root", "host": "alpha", "path": dest,
                        "extraOptions": ["-o", "LogLevel=INFO"]});
    let sources = json!({"tree": {"file": world.path("tree").to_str().unwrap()}});
    let mut command = world.command(world.tool("populate"));
    command.args(["--target", &target.to_string(), "--force"]);
    let input = sources.to_string();
    let (reached, out) = std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            // Keepalives every 15 s, 4 unanswered: a minute, and the rest.
            world.run_command_with_timeout(&mut command, input.as_bytes(), 3 * RUN_TIMEOUT)
        });
        let reached = wait_until(|| receiving_big(&dest.join("tree")));
        world.freeze_host("alpha");
        (reached, run.join().unwrap())
    });
    assert!(reached, "rsync never sent\n{out}");
    out.assert_code(1);
    let error = error_line(&out, "populate");
    assert!(
        error.contains("source tree (file) → alpha:")
            && error.contains("the ssh connection to root@alpha was lost")
            && error.contains("Timeout, server 127.0.0.1 not responding."),
        "{error}\n{out}"
    );
    world.assert_nothing_left();
    world.kill_host("alpha");
}

/// A host's krops-deploy attributes: a file, forced, without nom.
fn deploy_entry(world: &World, target: Value, name: &str) -> Value {
    let config = world.write(&format!("cfg/{name}.nix"), format!("# {name}\n"));
    json!({
        "target": target,
        "source": {"nixos-config": {"file": config.to_str().unwrap()}},
        "force": true,
        "useNixOutputMonitor": false,
    })
}

/// The summary row of `host` on stderr.
#[track_caller]
fn summary_row(stderr: &str, host: &str) -> String {
    let rows: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("  ") && line.split_whitespace().next() == Some(host))
        .collect();
    assert_eq!(rows.len(), 1, "one summary row for {host}\n{stderr}");
    rows[0].to_owned()
}

fn fleet_target(world: &World, host: &Host) -> Value {
    let dest = world.path(&format!("{}/src", host.alias()));
    Value::String(host.target("root", &dest))
}

/// Reliability (Connection fault): fleet of 3, one host never answers → the other 2 deployed, the hanging one reported failed with the timeout message, exit 1
#[test]
fn a_fleet_with_a_hanging_host_finishes_the_others() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let beta = world.add_host("beta");
    let hung = on_port(&world.path("hung/src"), silent_port());
    let fleet = json!({
        "alpha": deploy_entry(&world, fleet_target(&world, &alpha), "alpha"),
        "beta": deploy_entry(&world, fleet_target(&world, &beta), "beta"),
        "hung": deploy_entry(&world, serde_json::from_str(&hung).unwrap(), "hung"),
    });
    // With the default connect timeout, well within the run's deadline.
    let out = world.run(
        "krops-deploy",
        &["--fleet", "-"],
        fleet.to_string().as_bytes(),
    );
    out.assert_code(1);
    let stderr = out.stderr_str();
    assert!(
        stderr.contains("krops-deploy: fleet: 2 of 3 hosts ok, 1 failed\n"),
        "{out}"
    );
    assert!(summary_row(&stderr, "alpha").contains(" ok "), "{out}");
    assert!(summary_row(&stderr, "beta").contains(" ok "), "{out}");
    assert!(
        summary_row(&stderr, "hung").contains(" failed (exit status 1) "),
        "{out}"
    );
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with("hung | krops-deploy: error: ")
                && line.contains("the ssh connection to root@alpha failed: ")
                && line.contains("Connection timed out during banner exchange")),
        "{out}"
    );
    assert_eq!(world.records("nixos-rebuild").len(), 2, "{out}");
    world.assert_nothing_left();
}

/// Reliability (Interrupt): SIGINT to a fleet mid-host → exit 130, summary "1 of 3 hosts ok, 1 interrupted, 1 not started"; nothing left here
#[test]
fn an_interrupted_fleet_says_which_hosts_finished() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let beta = world.add_host("beta");
    let gamma = world.add_host("gamma");
    let marker = world.path("beta-started");
    let slow = world.write_executable(
        "gen/slow",
        format!("#!/bin/sh\ntouch {}\nsleep 60\n", marker.display()),
    );
    let mut beta_entry = deploy_entry(&world, fleet_target(&world, &beta), "beta");
    beta_entry["source"]["slow"] = json!({"pipe": slow.to_str().unwrap()});
    let fleet = json!({
        "alpha": deploy_entry(&world, fleet_target(&world, &alpha), "alpha"),
        "beta": beta_entry,
        "gamma": deploy_entry(&world, fleet_target(&world, &gamma), "gamma"),
    });
    let file = world.write("fleet.json", fleet.to_string());
    // One host at a time: alpha finishes, beta is interrupted, gamma never
    // starts.
    let (status, stderr) = world.signal_once(
        "krops-deploy",
        &["--fleet", file.to_str().unwrap(), "--jobs", "1"],
        || marker.exists(),
        "INT",
    );
    assert_eq!(status, Some(130), "{stderr}");
    assert!(
        stderr.contains("krops-deploy: interrupted by SIGINT"),
        "{stderr}"
    );
    assert!(
        stderr.contains("krops-deploy: fleet: 1 of 3 hosts ok, 1 interrupted, 1 not started\n"),
        "{stderr}"
    );
    assert!(summary_row(&stderr, "alpha").contains(" ok "), "{stderr}");
    assert!(
        summary_row(&stderr, "beta").contains(" interrupted "),
        "{stderr}"
    );
    assert!(
        summary_row(&stderr, "gamma").contains(" not started "),
        "{stderr}"
    );
    assert_eq!(world.records("nixos-rebuild").len(), 1);
    world.assert_nothing_left();
}

#[test]
fn an_unreachable_target_says_the_connection_failed() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    world.stop_host("alpha");
    let out = world.populate(&target, &["--force"], &json!({"l": {"symlink": "x"}}));
    out.assert_failure()
        .assert_stderr_contains("populate: error: sentinel check → alpha:")
        .assert_stderr_contains("the ssh connection to root@alpha failed: ssh: connect to host")
        .assert_stderr_contains("Connection refused");
}
