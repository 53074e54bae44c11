//! End-to-end: keys (README: Keys), delivered over real sshd from real
//! pass+gpg, age (passage), files and commands, into keys directories in
//! the test's own temp dir (on disk: the warning) and below `/dev/shm` (a
//! tmpfs), never this machine's `/run/keys`: their owner, group and mode, a
//! second deploy that writes nothing (same inodes), a changed key replaced
//! and an undeclared one removed; post-activation keys only after a
//! successful activation; a key for a user the activation creates;
//! `--keys-only`, alone and for a fleet; a sudo target; no key in any argv,
//! log, `--dry-run` or `--json`; a signal removes the local copies.
//! (Bad keys files are rows of tests/hostile.rs.)

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use krops_tests::{processes_with, Output, World};
use serde_json::{json, Value};

/// A marker no process or file of this machine holds unless a key leaked:
/// the start of every key of one test.
fn marker() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("k3y-{nanos:x}-")
}

/// A directory below `/dev/shm` (a tmpfs), removed when dropped.
struct Shm(PathBuf);

impl Shm {
    fn new() -> Shm {
        let dir = tempfile::Builder::new()
            .prefix("krops-keys-test.")
            .tempdir_in("/dev/shm")
            .expect("a dir in /dev/shm")
            .keep();
        Shm(dir)
    }

    fn keys(&self) -> String {
        self.0.join("keys").display().to_string()
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A user this test makes (or lets the activation make), removed when
/// dropped.
struct TestUser(String);

impl TestUser {
    fn name(tag: &str) -> TestUser {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        TestUser(format!("kk{tag}{}{nanos:x}", std::process::id() % 10000))
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).output();
        let _ = Command::new("groupdel").arg(&self.0).output();
    }
}

fn id(what: &str, name: &str) -> u32 {
    let out = Command::new("id").args([what, name]).output().unwrap();
    assert!(out.status.success(), "id {what} {name}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The gid of group `keys`, else root's: what a new keys directory gets.
fn keys_group() -> u32 {
    let out = Command::new("getent")
        .args(["group", "keys"])
        .output()
        .unwrap();
    if !out.status.success() {
        return 0;
    }
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// (uid, gid, mode, inode) of a file.
fn owner_mode_inode(path: &str) -> (u32, u32, u32, u64) {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    (meta.uid(), meta.gid(), meta.mode() & 0o7777, meta.ino())
}

/// Each key's status in the results' `keys`, by name (a removed file by path).
fn statuses(doc: &Value) -> Vec<(String, String)> {
    doc["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no keys in {doc}"))
        .iter()
        .map(|k| {
            let name = k["name"]
                .as_str()
                .map_or_else(|| k["path"].as_str().unwrap().to_owned(), str::to_owned);
            (name, k["status"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[track_caller]
fn assert_no_key_in(marker: &str, out: &Output) {
    assert!(
        !out.stdout_str().contains(marker) && !out.stderr_str().contains(marker),
        "a key reached the output:\n{out}"
    );
}

/// A keyCommand that prints `content` from a file, so that its argv holds
/// no key.
fn key_command(world: &World, name: &str, content: &str) -> Value {
    let file = world.write(&format!("key-commands/{name}.txt"), content);
    json!(["/bin/cat", file])
}

/// Reliability (Secrets): keys from pass, passage, a file and a command, to a keys directory on disk and one on a tmpfs → each arrives with its owner, group and mode and nowhere under the target path, the directories 0750 root:keys, a warning for the one on disk; a second deploy writes none (same inodes); a changed key is replaced, an undeclared one removed; no key in the log or `--json`
#[test]
fn keys_arrive_with_their_owner_and_mode_and_only_what_changed_is_written() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let mark = marker();
    let pass = world.pass_store();
    pass.insert("hosts/alpha/db", &format!("{mark}db"));
    let passage = world.passage_store();
    passage.insert("alpha/api", &format!("{mark}api"));
    let tls = world.write("local/tls.key", format!("{mark}tls"));
    let on_disk = world.path("keys").display().to_string();
    let shm = Shm::new();
    let sudo = world.sudo_user();
    let keys = |with_cmd: bool| {
        let mut keys = json!({
            "db": {"pass": {"dir": pass.dir(), "name": "hosts/alpha/db"},
                   "user": sudo, "group": sudo, "permissions": "0400", "destDir": on_disk},
            "api": {"passage": {"dir": passage.dir(), "name": "alpha/api"},
                    "group": sudo, "permissions": "440", "destDir": on_disk, "name": "api.token"},
            "tls": {"keyFile": tls, "permissions": "0640", "destDir": shm.keys()},
        });
        if with_cmd {
            keys["cmd"] = json!({"keyCommand": key_command(&world, "cmd", &format!("{mark}cmd")),
                                 "destDir": shm.keys()});
        }
        world.write("keys.json", keys.to_string())
    };
    let file = keys(true);
    let file = file.to_str().unwrap();
    let deploy = |more: &[&str]| {
        let mut args = vec!["--target", &target, "--force", "--keys", file, "--json"];
        args.extend(more);
        let out = world.run_with_sources("krops-deploy", &args, &world.nixos_config());
        out.assert_success();
        assert_no_key_in(&mark, &out);
        out
    };

    let first = deploy(&[]);
    assert_eq!(
        statuses(&first.document()),
        pairs(&[
            ("api", "installed"),
            ("cmd", "installed"),
            ("db", "installed"),
            ("tls", "installed")
        ])
    );
    let sudo_uid = id("-u", sudo);
    let sudo_gid = id("-g", sudo);
    let db = format!("{on_disk}/db");
    let api = format!("{on_disk}/api.token");
    let tls_key = format!("{}/tls", shm.keys());
    let cmd = format!("{}/cmd", shm.keys());
    for (path, content, uid, gid, mode) in [
        (&db, "db", sudo_uid, sudo_gid, 0o400),
        (&api, "api", 0, sudo_gid, 0o440),
        (&tls_key, "tls", 0, 0, 0o640),
        (&cmd, "cmd", 0, 0, 0o600),
    ] {
        assert_eq!(
            fs::read_to_string(path).unwrap(),
            format!("{mark}{content}"),
            "{path}"
        );
        let (u, g, m, _) = owner_mode_inode(path);
        assert_eq!((u, g, m), (uid, gid, mode), "{path}: owner, group, mode");
    }
    for dir in [&on_disk, &shm.keys()] {
        let (u, g, m, _) = owner_mode_inode(dir);
        assert_eq!((u, g, m), (0, keys_group(), 0o750), "{dir}");
    }
    // The keys are nowhere under the target path.
    let grep = Command::new("grep")
        .args(["-rl", &mark])
        .arg(world.path("alpha/src"))
        .output()
        .unwrap();
    assert!(grep.stdout.is_empty(), "{grep:?}");
    let stderr = first.stderr_str();
    assert!(
        stderr.contains(&format!(
            "krops: warning: the keys directory alpha:{on_disk} is not on a tmpfs or ramfs"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&format!("{} is not on a tmpfs", shm.keys())),
        "{stderr}"
    );
    assert!(
        stderr.contains("krops-deploy: key db (") && stderr.contains("): installed"),
        "{stderr}"
    );

    // Again: nothing is written.
    let inodes: Vec<u64> = [&db, &api, &tls_key, &cmd]
        .iter()
        .map(|p| owner_mode_inode(p).3)
        .collect();
    let second = deploy(&[]);
    assert_eq!(
        statuses(&second.document()),
        pairs(&[
            ("api", "unchanged"),
            ("cmd", "unchanged"),
            ("db", "unchanged"),
            ("tls", "unchanged")
        ])
    );
    let again: Vec<u64> = [&db, &api, &tls_key, &cmd]
        .iter()
        .map(|p| owner_mode_inode(p).3)
        .collect();
    assert_eq!(inodes, again, "a second deploy wrote a key again");

    // A changed key is replaced, one no longer declared removed.
    fs::write(&tls, format!("{mark}tls2")).unwrap();
    keys(false);
    let third = deploy(&[]);
    assert_eq!(
        statuses(&third.document()),
        pairs(&[
            (cmd.as_str(), "removed"),
            ("api", "unchanged"),
            ("db", "unchanged"),
            ("tls", "installed")
        ])
    );
    assert_eq!(fs::read_to_string(&tls_key).unwrap(), format!("{mark}tls2"));
    assert_ne!(owner_mode_inode(&tls_key).3, inodes[2]);
    assert_eq!(owner_mode_inode(&db).3, inodes[0]);
    assert!(
        !Path::new(&cmd).exists(),
        "the undeclared key is still there"
    );
    assert!(
        third
            .stderr_str()
            .contains(&format!("key file {cmd}: removed")),
        "{third}"
    );
    world.assert_nothing_left();
}

/// A krops-command whose script (the activation) exits with 7 when the
/// post-activation key is already there or the pre-activation one is not.
#[test]
fn a_post_activation_key_arrives_only_after_a_successful_activation() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let dir = world.path("keys").display().to_string();
    let keys = world.write(
        "keys.json",
        json!({
            "pre": {"keyCommand": key_command(&world, "pre", "before"), "destDir": dir},
            "post": {"keyCommand": key_command(&world, "post", "after"), "destDir": dir,
                     "uploadAt": "post-activation"},
        })
        .to_string(),
    );
    let keys = keys.to_str().unwrap();
    let checks = format!("test -f {dir}/pre && test ! -e {dir}/post || exit 7");
    let out = world.run_with_sources(
        "krops-command",
        &["--target", &target, "--force", "--keys", keys, &checks],
        &json!({}),
    );
    out.assert_success();
    assert_eq!(fs::read_to_string(format!("{dir}/post")).unwrap(), "after");

    // A failed activation: no post-activation key.
    fs::remove_file(format!("{dir}/post")).unwrap();
    let out = world.run_with_sources(
        "krops-command",
        &["--target", &target, "--keys", keys, "exit 5"],
        &json!({}),
    );
    out.assert_code(5);
    assert!(!Path::new(&format!("{dir}/post")).exists());

    // krops-deploy: nixos-rebuild (the stand-in) failing, then not.
    world.set_rebuild_exit(1);
    let deploy = |code: i32| {
        world
            .run_with_sources(
                "krops-deploy",
                &["--target", &target, "--keys", keys],
                &world.nixos_config(),
            )
            .assert_code(code)
            .stderr_str()
    };
    let stderr = deploy(1);
    assert!(!Path::new(&format!("{dir}/post")).exists(), "{stderr}");
    assert!(!stderr.contains("post-activation keys to"), "{stderr}");
    world.set_rebuild_exit(0);
    deploy(0);
    assert_eq!(fs::read_to_string(format!("{dir}/post")).unwrap(), "after");
}

#[test]
fn a_key_for_a_user_the_activation_creates_is_chowned_right_after_it() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let dir = world.path("keys").display().to_string();
    let user = TestUser::name("a");
    let keys = world.write(
        "keys.json",
        json!({
            "svc": {"keyCommand": key_command(&world, "svc", "s"), "destDir": dir,
                    "user": user.0, "permissions": "0400"},
        })
        .to_string(),
    );
    let keys = keys.to_str().unwrap();
    // While the activation runs, the key is there, root's.
    let activation = format!(
        "test \"$(stat -c %u:%a {dir}/svc)\" = 0:400 || exit 7; useradd -M -r -s /bin/false {}",
        user.0
    );
    let results = world.path("results.json");
    let results = results.to_str().unwrap();
    let out = world.run_with_sources(
        "krops-command",
        &[
            "--target",
            &target,
            "--force",
            "--keys",
            keys,
            "--json-file",
            results,
            &activation,
        ],
        &json!({}),
    );
    out.assert_success();
    let (uid, _, mode, _) = owner_mode_inode(&format!("{dir}/svc"));
    assert_eq!((uid, mode), (id("-u", &user.0), 0o400));
    let doc: Value = serde_json::from_str(&fs::read_to_string(results).unwrap()).unwrap();
    assert_eq!(
        statuses(&doc),
        pairs(&[("svc", "pending"), ("svc", "installed")])
    );

    // A user no activation creates: an error naming the key.
    let ghost = TestUser::name("g");
    let keys = world.write(
        "ghost.json",
        json!({"ghost": {"keyCommand": ["/bin/echo"], "destDir": dir, "user": ghost.0}})
            .to_string(),
    );
    let out = world.run_with_sources(
        "krops-command",
        &[
            "--target",
            &target,
            "--keys",
            keys.to_str().unwrap(),
            "true",
        ],
        &json!({}),
    );
    out.assert_code(1).assert_stderr_contains(&format!(
        "key ghost: the user {} does not exist on root@alpha",
        ghost.0
    ));
}

#[test]
fn a_sudo_target_gets_the_keys_as_root_would() {
    let world = World::new();
    world.add_host("alpha");
    let target = world.sudo_user_target("alpha", true);
    let sudo = world.sudo_user();
    let dir = world.path("keys").display().to_string();
    let keys = world.write(
        "keys.json",
        json!({
            "mine": {"keyCommand": key_command(&world, "mine", "m"), "destDir": dir,
                     "user": sudo, "permissions": "0400"},
            "roots": {"keyCommand": key_command(&world, "roots", "r"), "destDir": dir},
        })
        .to_string(),
    );
    world
        .run_with_sources(
            "krops-deploy",
            &[
                "--target",
                &target,
                "--force",
                "--keys",
                keys.to_str().unwrap(),
            ],
            &world.nixos_config(),
        )
        .assert_success();
    let (u, _, m, _) = owner_mode_inode(&format!("{dir}/mine"));
    assert_eq!((u, m), (id("-u", sudo), 0o400));
    let (u, g, m, _) = owner_mode_inode(&format!("{dir}/roots"));
    assert_eq!((u, g, m), (0, 0, 0o600));
    let (u, _, m, _) = owner_mode_inode(&dir);
    assert_eq!((u, m), (0, 0o750));
}

#[test]
fn keys_only_sends_the_keys_and_nothing_else_for_a_host_and_a_fleet() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    // No sentinel, not even the path: nothing is populated.
    let path = world.path("alpha/src");
    let target = alpha.target("root", &path);
    let shm = Shm::new();
    let keys = json!({
        "a": {"keyCommand": key_command(&world, "a", "a1"), "destDir": shm.keys()},
        "b": {"keyCommand": key_command(&world, "b", "b1"), "destDir": shm.keys(),
              "uploadAt": "post-activation"},
    });
    let file = world.write("keys.json", keys.to_string());
    let file = file.to_str().unwrap();
    let dry = world.run(
        "krops-deploy",
        &[
            "--target",
            &target,
            "--keys",
            file,
            "--keys-only",
            "--dry-run",
        ],
        b"",
    );
    dry.assert_success();
    assert!(
        dry.stdout_str()
            .contains("# then sending the keys to root@alpha"),
        "{dry}"
    );
    assert!(!dry.stdout_str().contains("a1"), "{dry}");
    assert!(!Path::new(&shm.keys()).exists());
    let out = world.run(
        "krops-deploy",
        &["--target", &target, "--keys", file, "--keys-only"],
        b"",
    );
    out.assert_success();
    assert_eq!(
        fs::read_to_string(format!("{}/b", shm.keys())).unwrap(),
        "b1"
    );
    assert!(!path.exists(), "--keys-only populated");
    assert!(
        world.records("nixos-rebuild").is_empty(),
        "--keys-only rebuilt"
    );

    // After a reboot emptied the tmpfs: one line for the whole fleet.
    fs::remove_dir_all(shm.keys()).unwrap();
    let fleet = world.write(
        "fleet.json",
        json!({"web": {"target": target, "source": world.nixos_config(), "keys": keys,
                       // What the host's deploy takes, moot with --keys-only.
                       "buildTarget": target, "confirmTimeout": 30}})
        .to_string(),
    );
    let out = world.run(
        "krops-deploy",
        &["--fleet", fleet.to_str().unwrap(), "--keys-only"],
        b"",
    );
    out.assert_success();
    assert_eq!(
        fs::read_to_string(format!("{}/a", shm.keys())).unwrap(),
        "a1"
    );
    assert_eq!(
        fs::read_to_string(format!("{}/b", shm.keys())).unwrap(),
        "b1"
    );
    assert!(!path.exists(), "--keys-only populated");
    assert!(
        world.records("nixos-rebuild").is_empty(),
        "--keys-only rebuilt"
    );
}

/// Reliability (Secrets): keys from pass, passage, a file and a command, `/proc/*/cmdline` of every process sampled during a deploy → no key in any argv (here or on the target), in the log, in `--json` or in `--dry-run`
#[test]
fn no_key_reaches_argv_logs_json_or_dry_run() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let mark = marker();
    let pass = world.pass_store();
    pass.insert("db", &format!("{mark}pass"));
    let passage = world.passage_store();
    passage.insert("api", &format!("{mark}age"));
    let file = world.write("tls.key", format!("{mark}file"));
    // A slow command, so that the sampler sees the run at every stage.
    let content = world.write("slow.txt", format!("{mark}cmd"));
    let slow = world.write_executable(
        "slow-key",
        format!("#!/bin/sh\nsleep 1\nexec cat {}\n", content.display()),
    );
    let dir = world.path("keys").display().to_string();
    let keys = world.write(
        "keys.json",
        json!({
            "p": {"pass": {"dir": pass.dir(), "name": "db"}, "destDir": dir},
            "q": {"passage": {"dir": passage.dir(), "name": "api"}, "destDir": dir,
                  "uploadAt": "post-activation"},
            "f": {"keyFile": file, "destDir": dir},
            "c": {"keyCommand": [slow], "destDir": dir},
        })
        .to_string(),
    );
    let keys = keys.to_str().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, mark) = (Arc::clone(&stop), mark.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) {
                seen.extend(processes_with(&mark));
                samples += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            (samples, seen)
        })
    };
    let out = world.run_with_sources(
        "krops-deploy",
        &[
            "--target", &target, "--force", "--keys", keys, "--json", "-v",
        ],
        &world.nixos_config(),
    );
    stop.store(true, Ordering::SeqCst);
    let (samples, seen) = sampler.join().unwrap();
    out.assert_success();
    assert!(samples > 20, "sampled only {samples} times");
    assert!(seen.is_empty(), "a key in an argv: {seen:?}");
    assert_no_key_in(&mark, &out);
    assert_eq!(
        fs::read_to_string(format!("{dir}/c")).unwrap(),
        format!("{mark}cmd")
    );
    assert_eq!(
        fs::read_to_string(format!("{dir}/q")).unwrap(),
        format!("{mark}age")
    );
    let dry = world.run_with_sources(
        "krops-deploy",
        &["--target", &target, "--keys", keys, "--dry-run"],
        &world.nixos_config(),
    );
    dry.assert_success();
    assert_no_key_in(&mark, &dry);
    let script = dry.stdout_str();
    assert!(
        script.contains("# then sending the pre-activation keys to root@alpha"),
        "{script}"
    );
    assert!(script.contains("pass show db > \"$tmp_dir\"/"), "{script}");
    let sh = Command::new("sh")
        .args(["-n", "-c", &script])
        .output()
        .unwrap();
    assert!(sh.status.success(), "{script}");
    world.assert_nothing_left();
}

/// Reliability (Interrupt): SIGINT and SIGTERM while a key is being made here → exit 130 / 143, no local copy left (TMPDIR empty), nothing installed
#[test]
fn a_signal_while_keys_are_made_removes_the_local_copies() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let dir = world.path("keys").display().to_string();
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let started = world.path(&format!("started-{signal}"));
        let slow = world.write_executable(
            &format!("slow-{signal}"),
            format!(
                "#!/bin/sh\nprintf partial-key\n: > {}\nexec sleep 30\n",
                started.display()
            ),
        );
        let keys = world.write(
            "keys.json",
            json!({"k": {"keyCommand": [slow], "destDir": dir}}).to_string(),
        );
        let sources = world.write("sources.json", world.nixos_config().to_string());
        let (status, stderr) = world.signal_when(
            "krops-deploy",
            &[
                "--target",
                &target,
                "--force",
                "--keys",
                keys.to_str().unwrap(),
                "--sources",
                sources.to_str().unwrap(),
            ],
            &started,
            signal,
        );
        assert_eq!(status, Some(code), "{stderr}");
        assert!(!stderr.contains("partial-key"), "{stderr}");
        assert!(!Path::new(&format!("{dir}/k")).exists());
        world.assert_nothing_left();
    }
}

#[test]
fn bad_keys_are_usage_errors_naming_the_field() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let handshakes = world.handshakes("alpha");
    for (keys, says) in [
        (
            json!({"a": {"keyFile": "/nonexistent/key"}}),
            "keys.a.keyFile: /nonexistent/key is not a file",
        ),
        (
            json!({"a": {"keyCommand": ["true"], "permissions": "777x"}}),
            "keys.a.permissions",
        ),
        (
            json!({"a": {"keyCommand": ["true"], "user": "--help"}}),
            "keys.a.user",
        ),
    ] {
        let file = world.write("bad.json", keys.to_string());
        for tool in ["krops-deploy", "krops-command"] {
            world
                .run_with_sources(
                    tool,
                    &["--target", &target, "--keys", file.to_str().unwrap()],
                    &json!({}),
                )
                .assert_code(2)
                .assert_stderr_contains(&format!("{tool}: error: {says}"));
        }
    }
    assert!(!world.path("alpha/src").exists());
    assert_eq!(
        world.handshakes("alpha"),
        handshakes,
        "a bad keys file connected"
    );
}

/// `writeDeploy` and `writeCommand` take `keys` as `--keys FILE`; a
/// `keyFile` that is a Nix path (which would copy the key into the store)
/// is an evaluation error.
#[test]
fn the_writers_pass_keys_and_refuse_a_nix_path_key_file() {
    let world = World::new();
    let writers = r#"
      writers = { writeDash = name: text: { inherit name text; }; };
      kropsPkgs = import (krops + "/pkgs/krops") { inherit writers; krops-rs = "/krops-rs"; };
    "#;
    for writer in ["writeDeploy", "writeCommand"] {
        let text = world.nix_eval_json(&format!(
            "let {writers} in (kropsPkgs.{writer} \"x\" {{ target = \"root@h\"; source = {{ }}; \
             keys.db = {{ keyFile = \"/home/me/db\"; user = \"postgres\"; }}; }}).text"
        ));
        let text = text.as_str().unwrap();
        let file = text
            .split("--keys ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{writer}: no --keys in\n{text}"));
        let keys: Value = serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap();
        assert_eq!(
            keys,
            json!({"db": {"keyFile": "/home/me/db", "user": "postgres"}})
        );
        world.write("db", "secret");
        world
            .nix_eval(&format!(
                "let {writers} in (kropsPkgs.{writer} \"x\" {{ target = \"root@h\"; source = {{ }}; \
                 keys.db.keyFile = {}/db; }}).text",
                world.root().display()
            ))
            .assert_failure()
            .assert_stderr_contains(&format!(
                "{writer} x: keys.db.keyFile: give the path as a string"
            ));
    }
}

/// The default `destDir`, `/run/keys`, on a NixOS machine of the world (in
/// its own mount namespace, with a tmpfs mounted there); a confirmed switch
/// (`--confirm-timeout`) sends the post-activation keys once it is
/// confirmed, and not when its check fails and the target rolls back.
#[test]
fn keys_go_to_run_keys_and_post_activation_ones_only_once_a_switch_is_confirmed() {
    let world = World::new();
    let (host, target, _, _) = world.nixos_deploy_host("alpha", false);
    world
        .ssh(
            &host.dest("root"),
            "mkdir -p /run/keys && mount -t tmpfs -o mode=0750 tmpfs /run/keys",
        )
        .assert_success();
    let run_keys = world.nixos_run_dir("alpha").join("keys");
    let keys = world.write(
        "keys.json",
        json!({
            "pre": {"keyCommand": key_command(&world, "pre", "p")},
            "post": {"keyCommand": key_command(&world, "post", "q"), "uploadAt": "post-activation"},
        })
        .to_string(),
    );
    let keys = keys.to_str().unwrap();
    let deploy = |more: &[&str]| {
        let mut args = vec!["--target", &target, "--force", "--keys", keys];
        args.extend(more);
        world.run_with_sources("krops-deploy", &args, &world.nixos_config())
    };
    let out = deploy(&["--confirm-timeout", "30", "--check", "true"]);
    out.assert_success();
    assert!(!out.stderr_str().contains("is not on a tmpfs"), "{out}");
    // Seen from the machine: its /run/keys, a tmpfs, not this machine's.
    let seen = world.ssh(
        &host.dest("root"),
        "cat /run/keys/pre /run/keys/post; stat -f -c %T /run/keys",
    );
    seen.assert_success();
    assert_eq!(seen.stdout_str(), "pqtmpfs\n");
    assert!(
        !run_keys.join("pre").exists(),
        "the tmpfs is the machine's own"
    );

    world
        .ssh(&host.dest("root"), "rm /run/keys/post")
        .assert_success();
    let out = deploy(&["--confirm-timeout", "30", "--check", "false"]);
    out.assert_code(1);
    let seen = world.ssh(&host.dest("root"), "ls /run/keys");
    assert_eq!(seen.stdout_str(), "pre\n", "{out}");
}

/// Nothing outside a key's own place is written: a symlink at the key's
/// place is replaced, never followed; a keys directory that is a symlink,
/// or inside the target path, is refused; a plain user without sudo is told
/// keys need root.
///
/// Reliability (Lived target): a symlink to a file outside at a key's place, a keys directory that is a symlink, one inside the target path, a plain user without sudo → the symlink is replaced and the file outside untouched; the others refused naming the place, nothing written
#[test]
fn keys_never_write_through_symlinks_or_into_the_target_path() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let dir = world.path("keys");
    fs::create_dir_all(&dir).unwrap();
    let outside = world.write("outside", "untouched");
    std::os::unix::fs::symlink(&outside, dir.join("k")).unwrap();
    let write_keys = |dest: &Path| {
        world.write(
            "keys.json",
            json!({"k": {"keyCommand": key_command(&world, "k", "new"), "destDir": dest}})
                .to_string(),
        )
    };
    let keys = write_keys(&dir);
    let keys = keys.to_str().unwrap();
    let run = |target: &str| {
        world.run_with_sources(
            "krops-command",
            &["--target", target, "--force", "--keys", keys, "true"],
            &json!({}),
        )
    };
    run(&target).assert_success();
    assert_eq!(fs::read_to_string(&outside).unwrap(), "untouched");
    assert!(!fs::symlink_metadata(dir.join("k")).unwrap().is_symlink());
    assert_eq!(fs::read_to_string(dir.join("k")).unwrap(), "new");

    let linked = world.path("linked-keys");
    std::os::unix::fs::symlink(world.mkdir("elsewhere"), &linked).unwrap();
    write_keys(&linked);
    run(&target).assert_code(1).assert_stderr_contains(&format!(
        "the keys directory alpha:{} is a symlink: it is never followed",
        linked.display()
    ));
    assert!(fs::read_dir(world.path("elsewhere"))
        .unwrap()
        .next()
        .is_none());

    write_keys(&world.path("alpha/src/secrets"));
    run(&target)
        .assert_code(2)
        .assert_stderr_contains("keys.k.destDir:")
        .assert_stderr_contains("keys go outside the sources");

    write_keys(&dir);
    let plain = world.sudo_user_target("alpha", false);
    run(&plain)
        .assert_code(1)
        .assert_stderr_contains(&format!("keys need root on {}@alpha", world.sudo_user()));
}

/// With the real nixos-rebuild (on a NixOS machine of the world, its own
/// `/run`): the keys arrive in `/run/keys` around a real switch; when the
/// rebuild fails (a configuration that does not evaluate), the
/// pre-activation key is there and the post-activation one is not sent.
#[test]
fn post_activation_keys_follow_a_real_switch_and_not_a_failed_one() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let host = world.add_nixos_host("alpha");
    world.boot_nixos_host("alpha", &world.real_system(&rr, "v1"));
    let target = host.target("root", &world.path("alpha/src"));
    let v2 = world.real_system(&rr, "v2");
    let keys = world.write(
        "keys.json",
        json!({
            "pre": {"keyCommand": key_command(&world, "pre", "p")},
            "post": {"keyCommand": key_command(&world, "post", "q"), "uploadAt": "post-activation"},
        })
        .to_string(),
    );
    let keys = keys.to_str().unwrap();
    let deploy = |sources: &Value| {
        world.run_with_sources(
            "krops-deploy",
            &["--target", &target, "--force", "--keys", keys],
            sources,
        )
    };
    deploy(&world.real_sources(&rr, "v2")).assert_success();
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    let ls = |host: &krops_tests::Host| world.ssh(&host.dest("root"), "ls /run/keys").stdout_str();
    assert_eq!(ls(&host), "post\npre\n");

    world
        .ssh(&host.dest("root"), "rm /run/keys/post")
        .assert_success();
    let broken = world.write(
        "broken.nix",
        "{ ... }: { environment.etc.\"marker\".text = throw \"broken on purpose\"; }\n",
    );
    let mut sources = world.real_sources(&rr, "v3");
    sources["nixos-config"]["file"]["path"] = json!(broken);
    let out = deploy(&sources);
    out.assert_code(1)
        .assert_stderr_contains("nixos-rebuild switch on root@alpha (the target) failed");
    assert_eq!(ls(&host), "pre\n", "{out}");
    assert_eq!(world.current_system("alpha"), Some(v2));
    rr.assert_machine_untouched();
}

/// Fifty keys, one of them binary and one empty, go over the run's one ssh
/// connection (colmena opens one a key), byte for byte.
#[test]
fn fifty_keys_go_in_one_stream_over_the_run_s_one_connection() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let dir = world.path("keys").display().to_string();
    let binary: Vec<u8> = (0..=255u8).chain(b"\n\0\n".iter().copied()).collect();
    let mut keys = serde_json::Map::new();
    for i in 0..48 {
        let file = world.write(&format!("many/k{i}"), format!("key {i}\n").repeat(i + 1));
        keys.insert(format!("k{i:02}"), json!({"keyFile": file, "destDir": dir}));
    }
    let file = world.write("many/binary", &binary);
    keys.insert("binary".into(), json!({"keyFile": file, "destDir": dir}));
    let file = world.write("many/empty", "");
    keys.insert("empty".into(), json!({"keyFile": file, "destDir": dir}));
    let keys = world.write("keys.json", Value::Object(keys).to_string());
    let before = world.handshakes("alpha");
    world
        .run_with_sources(
            "krops-deploy",
            &[
                "--target",
                &target,
                "--force",
                "--keys",
                keys.to_str().unwrap(),
            ],
            &world.nixos_config(),
        )
        .assert_success();
    assert_eq!(world.handshakes("alpha") - before, 1, "one connection");
    assert_eq!(fs::read(format!("{dir}/binary")).unwrap(), binary);
    assert_eq!(fs::read(format!("{dir}/empty")).unwrap(), b"");
    for i in 0..48 {
        assert_eq!(
            fs::read_to_string(format!("{dir}/k{i:02}")).unwrap(),
            format!("key {i}\n").repeat(i + 1)
        );
    }
}

/// Reliability (Concurrent runs): three `--keys-only` runs (they take no lock) to one target at once, after one changed every key → each succeeds; every key is whole, as asked, and the manifest lists them all
#[test]
fn keys_only_runs_at_once_leave_every_key_whole() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let dir = world.path("keys").display().to_string();
    let mut keys = serde_json::Map::new();
    for i in 0..20 {
        let file = world.write(&format!("many/k{i}"), format!("old {i}\n"));
        keys.insert(
            format!("k{i:02}"),
            json!({"keyFile": file, "destDir": dir, "permissions": "0440"}),
        );
    }
    let file = world.write("keys.json", Value::Object(keys).to_string());
    let args = [
        "--target",
        &target,
        "--keys",
        file.to_str().unwrap(),
        "--keys-only",
    ];
    world.run("krops-deploy", &args, b"").assert_success();
    for i in 0..20 {
        world.write(&format!("many/k{i}"), format!("new {i}\n").repeat(100));
    }
    let runs: Vec<_> = (0..3)
        .map(|n| {
            let stderr = world.path(&format!("run{n}.stderr"));
            (world.spawn("krops-deploy", &args, &stderr), stderr)
        })
        .collect();
    for (child, stderr) in runs {
        let code = krops_tests::finish(child, &stderr);
        assert_eq!(code, Some(0), "{}", fs::read_to_string(&stderr).unwrap());
    }
    for i in 0..20 {
        let path = format!("{dir}/k{i:02}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("new {i}\n").repeat(100)
        );
        assert_eq!(owner_mode_inode(&path).2, 0o440);
    }
    let manifest = fs::read_to_string(format!("{dir}/.krops-keys")).unwrap();
    assert_eq!(manifest.lines().count(), 20, "{manifest}");
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".krops-keys.tmp"))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

/// Reliability (Connection fault): a boot with keys (one post-activation) and `--reboot`, the host's tmpfs `/run/keys` gone with the reboot → once the host is back with a new boot id, every key is sent again over a new connection, before the check; `--json` lists each send
#[test]
fn after_a_reboot_every_key_is_sent_again_before_the_check() {
    let world = World::new();
    let (host, target, _, new) = world.nixos_deploy_host("alpha", false);
    world
        .ssh(
            &host.dest("root"),
            "mkdir -p /run/keys && mount -t tmpfs -o mode=0750 tmpfs /run/keys",
        )
        .assert_success();
    let mark = marker();
    let keys = world.write(
        "keys.json",
        json!({
            "pre": {"keyCommand": key_command(&world, "pre", &format!("{mark}p"))},
            "post": {"keyCommand": key_command(&world, "post", &format!("{mark}q")),
                     "uploadAt": "post-activation", "permissions": "0440"},
        })
        .to_string(),
    );
    // The check sees the keys the boot emptied /run/keys of.
    let seen = world.path("seen");
    let check = format!("cat /run/keys/pre /run/keys/post > {}", seen.display());
    let before = world.boot_id("alpha");
    let out = world.reboot_when_asked(
        &host,
        krops_tests::Comeback::After(std::time::Duration::from_secs(1)),
        || {
            world.run_with_sources(
                "krops-deploy",
                &[
                    "--target",
                    &target,
                    "--force",
                    "--keys",
                    keys.to_str().unwrap(),
                    "--operation",
                    "boot",
                    "--reboot",
                    "--reboot-timeout",
                    "120",
                    "--check",
                    &check,
                    "--json",
                ],
                &world.nixos_config(),
            )
        },
    );
    out.assert_success()
        .assert_stderr_contains("krops-deploy: sending the keys to root@alpha");
    assert_no_key_in(&mark, &out);
    assert_ne!(world.boot_id("alpha"), before);
    assert_eq!(world.current_system("alpha"), Some(new));
    assert_eq!(
        fs::read_to_string(&seen).unwrap(),
        format!("{mark}p{mark}q"),
        "{out}"
    );
    // The boot took the tmpfs: what the check saw was sent after it.
    let run_keys = world.nixos_run_dir("alpha").join("keys");
    assert_eq!(
        owner_mode_inode(run_keys.join("post").to_str().unwrap()).2,
        0o440
    );
    let doc: Value = serde_json::from_str(out.stdout_str().trim()).unwrap();
    assert_eq!(
        statuses(&doc),
        pairs(&[
            ("pre", "installed"),
            ("post", "installed"),
            // Sent again after the reboot, all at once, by name.
            ("post", "installed"),
            ("pre", "installed"),
        ]),
        "{doc}"
    );
}

/// Reliability (Secrets): keys to a sudo target whose sudo asks for a password (`--sudo-password-file`): a key of over 25 MB, one without a trailing newline, one of one byte, after the password's line on the same stdin → each arrives whole, root's as asked; no key or password in the log
#[test]
fn a_sudo_target_with_a_password_gets_every_key_whole() {
    let world = World::new();
    world.add_host("alpha");
    let user = world.sudo_password_user();
    let dest = world.mkdir("root-only").join("src");
    let target = json!({"user": user, "host": "alpha", "path": dest, "sudo": true}).to_string();
    let password = world.write(
        "secret/sudo-password",
        format!("{}\n", krops_tests::SUDO_PASSWORD),
    );
    fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mark = marker();
    let big: String = (0..800_000)
        .map(|i| format!("{mark}{i:012}\n"))
        .collect::<String>();
    assert!(big.len() > 25_000_000);
    let big_file = world.write("big.key", &big);
    let dir = world.path("keys").display().to_string();
    let keys = world.write(
        "keys.json",
        json!({
            "a-line": {"keyCommand": key_command(&world, "a", &format!("{mark}\nno newline")),
                       "destDir": dir, "user": user, "permissions": "0400"},
            "big": {"keyFile": big_file, "destDir": dir},
            "z": {"keyCommand": key_command(&world, "z", "z"), "destDir": dir},
        })
        .to_string(),
    );
    let out = world.run_with_sources(
        "krops-deploy",
        &[
            "--target",
            &target,
            "--force",
            "--keys",
            keys.to_str().unwrap(),
            "--sudo-password-file",
            password.to_str().unwrap(),
        ],
        &world.nixos_config(),
    );
    out.assert_success();
    assert_no_key_in(&mark, &out);
    assert!(
        !out.stderr_str().contains(krops_tests::SUDO_PASSWORD),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(format!("{dir}/a-line")).unwrap(),
        format!("{mark}\nno newline")
    );
    assert!(
        fs::read_to_string(format!("{dir}/big")).unwrap() == big,
        "the big key changed"
    );
    assert_eq!(fs::read_to_string(format!("{dir}/z")).unwrap(), "z");
    let (u, g, m, _) = owner_mode_inode(&format!("{dir}/a-line"));
    assert_eq!((u, g, m), (id("-u", user), 0, 0o400));
    let (u, _, m, _) = owner_mode_inode(&format!("{dir}/big"));
    assert_eq!((u, m), (0, 0o600));
    // Again: nothing changed, nothing written, the password read once more.
    let inode = owner_mode_inode(&format!("{dir}/big")).3;
    let out = world.run(
        "krops-deploy",
        &[
            "--target",
            &target,
            "--keys",
            keys.to_str().unwrap(),
            "--keys-only",
            "--sudo-password-file",
            password.to_str().unwrap(),
        ],
        b"",
    );
    out.assert_success()
        .assert_stderr_contains("key big (")
        .assert_stderr_contains("): unchanged");
    assert_eq!(owner_mode_inode(&format!("{dir}/big")).3, inode);
}

/// Reliability (Interrupt): SIGINT while a 100 MB key streams to the target, after a deploy of other contents → exit 130; each key is as it was or whole and new (never a part), no `.krops-keys.tmp.*` left in the keys directory, no local copy left
#[test]
fn ctrl_c_while_keys_stream_leaves_each_key_old_or_new_and_whole() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("alpha/src"));
    let shm = Shm::new();
    let dir = PathBuf::from(shm.keys());
    let big = shm.0.join("big.key");
    let size = 100 * 1024 * 1024;
    fs::write(&big, vec![b'o'; size]).unwrap();
    let keys = world.write(
        "keys.json",
        json!({
            "a": {"keyCommand": key_command(&world, "a", "old"), "destDir": dir},
            "big": {"keyFile": big, "destDir": dir},
            "z": {"keyCommand": key_command(&world, "z", "old"), "destDir": dir},
        })
        .to_string(),
    );
    let args = [
        "--target",
        &target,
        "--keys",
        keys.to_str().unwrap(),
        "--keys-only",
    ];
    world.run("krops-deploy", &args, b"").assert_success();
    fs::write(&big, vec![b'n'; size]).unwrap();
    key_command(&world, "a", "new");
    key_command(&world, "z", "new");
    let temps = |dir: &Path| -> Vec<(String, u64)> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                name.starts_with(".krops-keys.tmp.").then_some((name, len))
            })
            .collect()
    };
    // Once part of the big key is on the target.
    let (code, stderr) = world.signal_once(
        "krops-deploy",
        &args,
        || {
            temps(&dir)
                .iter()
                .any(|(name, len)| !name.ends_with(".manifest") && *len > 1024 * 1024)
        },
        "INT",
    );
    assert_eq!(code, Some(130), "{stderr}");
    // The target's script ends once its ssh is gone.
    let began = std::time::Instant::now();
    while !temps(&dir).is_empty() && began.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(temps(&dir), Vec::new(), "temp files left");
    for name in ["a", "z"] {
        let got = fs::read_to_string(dir.join(name)).unwrap();
        assert!(got == "old" || got == "new", "{name}: {got:?}");
    }
    let got = fs::read(dir.join("big")).unwrap();
    assert_eq!(got.len(), size, "a part of the big key");
    assert!(
        got.iter().all(|&b| b == got[0]),
        "the big key is old and new at once"
    );
    world.assert_nothing_left();
}
