//! End-to-end: signals (SIGINT, SIGTERM) to a tool while it works: while
//! secrets are decrypted, while rsync runs, during a remote step or a
//! remote final command, to the tool alone or to its process group. The
//! tool stops its children, leaves nothing behind here (temp dirs, ssh
//! masters, plaintext), says what may still run on the target, and a rerun
//! completes with the same tree. Connection faults are in `faults`, a
//! stopped run's lock in `lock_final`, a fleet's interrupts in `fleet` and
//! `faults`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use krops_tests::{receiving_big, sources_tree, World};
use serde_json::{json, Value};

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-af", needle])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_signal_to_the_tool_alone_stops_its_children() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    for (signal, code) in [("TERM", 143), ("HUP", 129), ("INT", 130)] {
        // A pipe command that hangs: populate's child, in its own group.
        let marker = world.path(&format!("started-{signal}"));
        let slow = world.write_executable(
            &format!("gen/slow-{signal}"),
            format!(
                "#!/bin/sh\necho partial\ntouch {}\nsleep 60\n",
                marker.display()
            ),
        );
        let sources = world.write(
            &format!("sources-{signal}.json"),
            json!({"slow": {"pipe": slow.to_str().unwrap()}}).to_string(),
        );
        let dest = world.path(&format!("remote-{signal}"));
        let target = alpha.target("root", &dest);
        let args = [
            "--target",
            &target,
            "--force",
            "--sources",
            sources.to_str().unwrap(),
        ];
        let (status, stderr) = world.signal_when("populate", &args, &marker, signal);
        assert_eq!(status, Some(code), "SIG{signal}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "interrupted by SIG{signal} during source slow (pipe)"
            )),
            "{stderr}"
        );
        assert!(
            !stderr.contains("decrypted secrets"),
            "no secrets were involved: {stderr}"
        );
        let left = processes_with(slow.to_str().unwrap());
        assert!(left.is_empty(), "children still running: {left:?}");
        assert!(!dest.join("slow").exists());
        let tmp: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
        assert!(tmp.is_empty(), "local temp files left: {tmp:?}");
    }
}

#[test]
fn a_signal_during_a_remote_step_stops_ssh_and_a_rerun_works() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    let marker = world.path("remote-step-started");
    // A derivation whose build hangs on the target, so ssh is busy.
    let derivation = format!(
        r#"builtins.derivation {{
  name = "krops-slow";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo started > {}; exec /bin/sleep 61" ];
}}"#,
        marker.display()
    );
    let _ = std::fs::set_permissions(world.root(), std::fs::Permissions::from_mode(0o777));
    let sources = world.write(
        "sources.json",
        json!({"slow": {"derivation": derivation}}).to_string(),
    );
    let args = [
        "--target",
        &target,
        "--force",
        "--sources",
        sources.to_str().unwrap(),
    ];
    let (status, stderr) = world.signal_when("populate", &args, &marker, "TERM");
    assert_eq!(status, Some(143), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGTERM during source slow (derivation)"),
        "{stderr}"
    );
    let left = processes_with(&format!("{} -T alpha", alpha.port()));
    let left: Vec<_> = left
        .into_iter()
        .filter(|line| line.contains("ssh") && !line.contains("sshd"))
        .collect();
    assert!(left.is_empty(), "ssh still running: {left:?}");
    let _ = std::process::Command::new("pkill")
        .args(["-f", "/bin/sleep 61"])
        .status();
    let out = world.populate(&target, &[], &json!({"l": {"symlink": "x"}}));
    out.assert_success();
}

#[test]
fn a_signal_says_a_remote_final_command_may_still_run() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let marker = world.path("script-started");
    let sources = world.write("sources.json", json!({"l": {"symlink": "x"}}).to_string());
    let script = format!("touch {}; exec /bin/sleep 62", marker.display());
    let target = alpha.target("root", &dest);
    let args = [
        "--target",
        &target,
        "--force",
        "--sources",
        sources.to_str().unwrap(),
        &script,
    ];
    let (status, stderr) = world.signal_when("krops-command", &args, &marker, "TERM");
    // What the message says is true: the script goes on there.
    let still = processes_with("/bin/sleep 62");
    let _ = std::process::Command::new("pkill")
        .args(["-f", "/bin/sleep 62"])
        .status();
    assert_eq!(status, Some(143), "{stderr}");
    assert!(
        stderr.contains("during the command on root@alpha")
            && stderr.contains("the command on root@alpha may still be running there"),
        "{stderr}"
    );
    assert!(!still.is_empty(), "the remote script stopped after all");
}

/// How many files lie below `dir`.
fn files_below(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                files_below(&path)
            } else {
                1
            }
        })
        .sum()
}

/// The files below `dir` (not following links, smaller than 1 MB) whose
/// content contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if meta.is_file() && meta.len() < 1_000_000 {
            let content = std::fs::read(&path).unwrap_or_default();
            if content
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
            {
                found.push(path);
            }
        }
    }
    found
}

/// How many secrets the large stores hold.
const SECRETS: usize = 200;

/// SIGINT, then SIGTERM, while `SECRETS` secrets are being decrypted for
/// `sources` (whose plaintexts contain `needle`): the tool stops its
/// children, removes every decrypted file, exits 130 or 143; then a run
/// without a signal brings all of them to the target.
fn interrupted_decryption(world: &World, sources: &Value, needle: &str, check: impl Fn(&Path)) {
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    let file = world.write("sources.json", sources.to_string());
    let args = [
        "--target",
        &target,
        "--force",
        "--sources",
        file.to_str().unwrap(),
    ];
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let (status, stderr) = world.signal_once(
            "populate",
            &args,
            || files_below(&world.tmp_dir()) >= 20,
            signal,
        );
        assert_eq!(status, Some(code), "SIG{signal}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by SIG{signal} during source keys"))
                && stderr.contains("decrypted secrets"),
            "SIG{signal}: {stderr}"
        );
        world.assert_nothing_left();
        let leaked = files_containing(world.root(), needle);
        assert!(
            leaked.is_empty(),
            "SIG{signal}: plaintext left in {leaked:?}"
        );
        assert!(
            !dest.join("keys").exists(),
            "SIG{signal}: something was sent"
        );
    }
    let out = world.run("populate", &args, b"");
    out.assert_success();
    world.assert_nothing_left();
    check(&dest.join("keys"));
}

/// Reliability (Interrupt): SIGINT, then SIGTERM, while 200 pass secrets decrypt → exit 130 / 143, children stopped, TMPDIR empty, no plaintext in any local file; the next run syncs all 200
#[test]
fn signals_while_200_pass_secrets_are_decrypted_leave_nothing_behind() {
    let world = World::new();
    let pass = world.pass_store();
    let entries: Vec<(String, String)> = (0..SECRETS)
        .map(|i| {
            (
                format!("hosts/alpha/{}/s{i:03}", i % 7),
                format!("pass-plaintext-{i:03}"),
            )
        })
        .collect();
    pass.insert_all(&entries);
    let sources =
        json!({"keys": {"pass": {"dir": pass.dir().to_str().unwrap(), "name": "hosts/alpha"}}});
    interrupted_decryption(&world, &sources, "pass-plaintext-", |keys| {
        for (i, _) in entries.iter().enumerate() {
            let file = keys.join(format!("{}/s{i:03}", i % 7));
            assert_eq!(
                std::fs::read_to_string(&file).unwrap(),
                format!("pass-plaintext-{i:03}")
            );
        }
        assert_eq!(files_below(keys), SECRETS + 1, "the secrets and .pass_info");
    });
}

/// Reliability (Interrupt): the same for 200 passage (age) secrets → same
#[test]
fn signals_while_200_passage_secrets_are_decrypted_leave_nothing_behind() {
    let world = World::new();
    let passage = world.passage_store();
    for i in 0..SECRETS {
        passage.insert(
            &format!("{}/s{i:03}", i % 7),
            &format!("passage-plaintext-{i:03}"),
        );
    }
    let sources = json!({"keys": {"passage": passage.dir().to_str().unwrap()}});
    interrupted_decryption(&world, &sources, "passage-plaintext-", |keys| {
        for i in 0..SECRETS {
            let file = keys.join(format!("{}/s{i:03}", i % 7));
            assert_eq!(
                std::fs::read_to_string(&file).unwrap(),
                format!("passage-plaintext-{i:03}")
            );
        }
        assert_eq!(files_below(keys), SECRETS);
    });
}

/// Reliability (Interrupt): SIGINT, then SIGTERM, during an rsync → exit 130 / 143, rsync and ssh stopped, TMPDIR empty; a rerun leaves the same tree
#[test]
fn signals_during_an_rsync_stop_it_and_a_rerun_leaves_the_same_tree() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let flag = world.slow_rsync();
    world.write("tree/small", "small\n");
    world
        .sh(&format!(
            "head -c 20000000 /dev/urandom > {}",
            world.path("tree/big").display()
        ))
        .assert_success();
    let file = world.write(
        "sources.json",
        json!({"tree": {"file": world.path("tree").to_str().unwrap()}}).to_string(),
    );
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    let results = world.path("results.json");
    let args = [
        "--target",
        &target,
        "--force",
        "--sources",
        file.to_str().unwrap(),
        "--json-file",
        results.to_str().unwrap(),
    ];
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        // No partial file of an earlier run must look like this one's.
        let _ = std::fs::remove_dir_all(&dest);
        let (status, stderr) = world.signal_once(
            "populate",
            &args,
            || receiving_big(&dest.join("tree")),
            signal,
        );
        assert_eq!(status, Some(code), "SIG{signal}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "interrupted by SIG{signal} during source tree (file); its commands were stopped"
            )),
            "SIG{signal}: {stderr}"
        );
        // A signal ends the run without a document: the steps its
        // stopping failed are no results.
        assert!(!results.exists(), "SIG{signal}: {stderr}");
        world.assert_nothing_left();
    }
    std::fs::remove_file(flag).unwrap();
    let out = world.run("populate", &args, b"");
    out.assert_success();
    world.assert_nothing_left();
    let reference = world.path("reference/src");
    let args = [
        "--target",
        &alpha.target("root", &reference),
        "--force",
        "--sources",
        file.to_str().unwrap(),
    ];
    world.run("populate", &args, b"").assert_success();
    sources_tree(&reference).assert_unchanged(&sources_tree(&dest));
}
