//! End-to-end: `populate` against real sshd, rsync, git, pass, age and nix,
//! to a local target and to remote ones (README: Sources).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use krops_tests::{file_text, git_head, EntryKind, Tree, World};
use serde_json::{json, Value};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A derivation built by `/bin/sh` alone, so no binary cache is needed.
const DERIVATION: &str = r#"builtins.derivation {
  name = "krops-fixture";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo built by nix > $out" ];
}"#;

/// One source of every type, with the fixtures they read.
fn every_type(world: &World) -> Value {
    world.write("cfg/configuration.nix", "{ }\n");
    world.write("cfg/modules/a.nix", "{ a = 1; }\n");
    world.write("cfg/notes.txt", "not synced\n");
    world.write("cfg/.git/HEAD", "excluded\n");
    let repo = world.git_repo("nixpkgs");
    repo.write("default.nix", "{ }\n");
    let commit = repo.commit("first");
    let pipe = world.write_executable(
        "bin-gen/gen",
        "#!/bin/sh\necho 'generated at deploy time'\n",
    );
    let pass = world.pass_store();
    pass.insert("hosts/alpha/ssh-key", "pass-secret-1");
    pass.insert("hosts/alpha/sub/token", "pass-secret-2");
    let passage = world.passage_store();
    passage.insert("wifi", "passage-secret-1");
    passage.insert("deep/er/key", "passage-secret-2");
    json!({
        "config": {"file": {
            "path": world.path("cfg").to_str().unwrap(),
            "exclude": [".git"],
            "filters": [
                {"type": "include", "pattern": "*.nix"},
                {"type": "include", "pattern": "*/"},
                {"type": "exclude", "pattern": "*"}
            ]
        }},
        "nixpkgs": {"git": {"url": repo.url(), "ref": commit}},
        "link": {"symlink": "config/configuration.nix"},
        "generated": {"pipe": pipe.to_str().unwrap()},
        "secrets": {"pass": {"dir": pass.dir().to_str().unwrap(), "name": "hosts/alpha"}},
        "keys": {"passage": passage.dir().to_str().unwrap()},
        "fixture": {"derivation": DERIVATION},
    })
}

fn assert_every_type_arrived(world: &World, dest: &Path, sources: &Value) {
    let tree = Tree::snapshot(dest);
    assert_eq!(file_text(&dest.join("config/configuration.nix")), "{ }\n");
    assert_eq!(
        file_text(&dest.join("config/modules/a.nix")),
        "{ a = 1; }\n"
    );
    assert!(
        tree.get("config/notes.txt").is_none(),
        "filters let notes.txt through: {:?}",
        tree.paths()
    );
    assert!(
        tree.get("config/.git").is_none(),
        "exclude let .git through"
    );
    let commit = sources["nixpkgs"]["git"]["ref"].as_str().unwrap();
    assert_eq!(git_head(&dest.join("nixpkgs")), commit);
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("config/configuration.nix")
    );
    assert_eq!(
        file_text(&dest.join("generated")),
        "generated at deploy time\n"
    );
    for (rel, secret) in [
        ("secrets/ssh-key", "pass-secret-1"),
        ("secrets/sub/token", "pass-secret-2"),
        ("keys/wifi", "passage-secret-1"),
        ("keys/deep/er/key", "passage-secret-2"),
    ] {
        let path = dest.join(rel);
        assert_eq!(file_text(&path).trim_end(), secret, "{rel}");
        assert_eq!(mode(&path), 0o600, "{rel} must arrive with mode 0600");
    }
    assert!(
        tree.get("secrets/.gpg-id").is_none(),
        ".gpg-id must not be synced"
    );
    assert!(file_text(&dest.join("secrets/.pass_info")).starts_with("hosts/alpha "));
    let built = std::fs::read_link(dest.join("fixture")).unwrap();
    assert!(built.starts_with("/nix/store/"), "{built:?}");
    assert_eq!(file_text(&dest.join("fixture")), "built by nix\n");
    let leftovers: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "secrets left in TMPDIR: {leftovers:?}"
    );
}

#[test]
fn every_type_to_a_local_target() {
    let world = World::new();
    let sources = every_type(&world);
    let dest = world.path("local/src");
    let out = world.populate(dest.to_str().unwrap(), &["--force"], &sources);
    out.assert_success();
    assert!(
        out.stdout.is_empty(),
        "stdout carries only data: {}",
        out.stdout_str()
    );
    out.assert_stderr_contains("populate: source nixpkgs (git) → ");
    assert_every_type_arrived(&world, &dest, &sources);
    for secret in [
        "pass-secret-1",
        "pass-secret-2",
        "passage-secret-1",
        "passage-secret-2",
    ] {
        assert!(
            !out.stderr_str().contains(secret),
            "a secret reached the log"
        );
    }
}

#[test]
fn every_type_to_a_remote_target() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let sources = every_type(&world);
    let dest = world.path("remote/src");
    let out = world.populate(&alpha.target("root", &dest), &["--force"], &sources);
    out.assert_success();
    assert!(out.stdout.is_empty());
    assert_every_type_arrived(&world, &dest, &sources);
}

#[test]
fn extra_options_with_spaces_reach_ssh_and_rsync() {
    // krops's backslash quoting breaks such options for rsync only.
    let world = World::new();
    let alpha = world.add_host("alpha");
    world.write("cfg/a", "a\n");
    let dest = world.path("remote/src");
    let target = json!({
        "user": "root", "host": "alpha", "path": dest.to_str().unwrap(),
        "extraOptions": ["-o", "ServerAliveInterval 30", "-o", "SetEnv KROPS_X=\"it's a b\""]
    });
    let sources =
        json!({"cfg": {"file": world.path("cfg").to_str().unwrap()}, "l": {"symlink": "cfg/a"}});
    let out = world.populate(&target.to_string(), &["--force"], &sources);
    out.assert_success();
    assert_eq!(file_text(&dest.join("cfg/a")), "a\n");
    drop(alpha);
}

#[test]
fn missing_sentinel_is_krops_error_and_touches_nothing() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.mkdir("remote/src");
    let before = Tree::snapshot(&dest);
    let sources = json!({"l": {"symlink": "x"}});
    let out = world.populate(&alpha.target("root", &dest), &[], &sources);
    out.assert_failure();
    // krops's line, exactly, on a line of its own.
    let line = format!(
        "error: missing sentinel file: alpha:{}/.populate",
        dest.display()
    );
    assert!(
        out.stderr_str().lines().any(|l| l == line),
        "{}",
        out.stderr_str()
    );
    out.assert_stderr_contains("populate: error: sentinel check → alpha:");
    out.assert_stderr_contains("run with --force");
    before.assert_unchanged(&Tree::snapshot(&dest));

    let local = world.path("local/src");
    let out = world.populate(local.to_str().unwrap(), &[], &sources);
    out.assert_failure();
    let line = format!(
        "error: missing sentinel file: {}/.populate",
        local.display()
    );
    assert!(
        out.stderr_str().lines().any(|l| l == line),
        "{}",
        out.stderr_str()
    );
    assert!(!local.exists());

    world
        .populate(&alpha.target("root", &dest), &["--force"], &sources)
        .assert_success();
    assert!(dest.join(".populate").is_file());
    assert!(dest.join("l").is_symlink());
}

#[test]
fn backup_keeps_a_copy_of_the_previous_state() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    world.write("cfg/a", "version 1\n");
    let sources = json!({"cfg": {"file": world.path("cfg").to_str().unwrap()}});
    world
        .populate(&target, &["--force", "--backup"], &sources)
        .assert_success();
    assert!(
        dest.join(".populate").is_dir(),
        "--force --backup makes the sentinel a directory"
    );
    // Another size: without useChecksum rsync skips a file of the same size
    // and mtime second, as in krops.
    world.write("cfg/a", "version two\n");
    world
        .populate(&target, &["--backup"], &sources)
        .assert_success();
    assert_eq!(file_text(&dest.join("cfg/a")), "version two\n");
    assert_eq!(
        file_text(&dest.join(".populate/backup/cfg/a")),
        "version 1\n"
    );

    // A sentinel file (not a directory) cannot hold a backup: a clear error.
    let plain = world.path("plain/src");
    world
        .populate(plain.to_str().unwrap(), &["--force"], &sources)
        .assert_success();
    let out = world.populate(plain.to_str().unwrap(), &["--backup"], &sources);
    out.assert_failure();
    out.assert_stderr_contains(
        "is a file; --backup needs a directory to keep the backup in (--force --backup turns",
    );
}

#[test]
fn redeploys_follow_the_sources() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    let repo = world.git_repo("repo");
    repo.write("a", "1\n");
    let first = repo.commit("first");
    repo.write("a", "2\n");
    let second = repo.commit("second");
    world.write("cfg/keep", "keep\n");
    world.write("cfg/gone", "gone\n");
    let sources = |git_ref: &str| {
        json!({
            "repo": {"git": {"url": repo.url(), "ref": git_ref, "clean": {"exclude": ["/.version-suffix"]}}},
            "branch": {"git": {"url": repo.url(), "ref": "main"}},
            "cfg": {"file": world.path("cfg").to_str().unwrap()},
        })
    };
    world
        .populate(&target, &["--force"], &sources(&first))
        .assert_success();
    assert_eq!(git_head(&dest.join("repo")), first);
    assert_eq!(git_head(&dest.join("branch")), second);

    // A changed ref is applied; untracked files are cleaned but for clean.exclude.
    std::fs::write(dest.join("repo/untracked"), "x").unwrap();
    std::fs::write(dest.join("repo/.version-suffix"), "pre").unwrap();
    std::fs::remove_file(world.path("cfg/gone")).unwrap();
    world
        .populate(&target, &[], &sources(&second))
        .assert_success();
    assert_eq!(git_head(&dest.join("repo")), second);
    assert_eq!(file_text(&dest.join("repo/a")), "2\n");
    assert!(!dest.join("repo/untracked").exists(), "git clean -dfx");
    assert!(dest.join("repo/.version-suffix").exists(), "clean.exclude");
    assert!(!dest.join("cfg/gone").exists(), "a deleted file disappears");
    assert!(dest.join("cfg/keep").exists());

    // A branch moved on origin is followed (krops would stay at the first clone).
    repo.write("a", "3\n");
    let third = repo.commit("third");
    world
        .populate(&target, &[], &sources(&second))
        .assert_success();
    assert_eq!(git_head(&dest.join("branch")), third);
    assert_eq!(
        git_head(&dest.join("repo")),
        second,
        "a commit hash stays put"
    );

    // A tag, and a shallow fetch of a hash.
    repo.tag("v1");
    let tagged = json!({
        "tag": {"git": {"url": repo.url(), "ref": "v1"}},
        "shallow": {"git": {"url": repo.file_url(), "ref": first, "shallow": true}},
    });
    world.populate(&target, &[], &tagged).assert_success();
    assert_eq!(git_head(&dest.join("tag")), third);
    assert_eq!(git_head(&dest.join("shallow")), first);
}

#[test]
fn unchanged_pass_store_is_not_decrypted_again() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    let pass = world.pass_store();
    pass.insert("host/key", "one");
    let sources =
        json!({"secrets": {"pass": {"dir": pass.dir().to_str().unwrap(), "name": "host"}}});
    world
        .populate(&target, &["--force"], &sources)
        .assert_success();
    assert_eq!(file_text(&dest.join("secrets/key")).trim_end(), "one");

    // Same stamp: skipped, so a file changed on the target stays as it is.
    std::fs::write(dest.join("secrets/key"), "changed on the target").unwrap();
    world
        .populate(&target, &[], &sources)
        .assert_success()
        .assert_stderr_contains("unchanged");
    assert_eq!(
        file_text(&dest.join("secrets/key")),
        "changed on the target"
    );

    // A new commit in the store: decrypted and synced again. (Another size:
    // rsync's quick check sees size and the commit's mtime second, as in krops.)
    pass.insert("host/key", "the second value");
    world.populate(&target, &[], &sources).assert_success();
    assert_eq!(
        file_text(&dest.join("secrets/key")).trim_end(),
        "the second value"
    );
}

#[test]
fn sudo_target_writes_a_root_owned_directory() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let user = world.sudo_user();
    let root_owned = world.mkdir("root-owned");
    let dest = root_owned.join("src");
    world.write("cfg/a", "via sudo\n");
    let repo = world.git_repo("repo");
    repo.write("f", "x\n");
    let commit = repo.commit("c");
    let pass = world.pass_store();
    pass.insert("h/k", "sudo-secret");
    let sources = json!({
        "cfg": {"file": world.path("cfg").to_str().unwrap()},
        "repo": {"git": {"url": repo.url(), "ref": commit}},
        "link": {"symlink": "cfg/a"},
        "secrets": {"pass": {"dir": pass.dir().to_str().unwrap(), "name": "h"}},
    });
    // Without sudo the user cannot write there.
    let plain = json!({"user": user, "host": "alpha", "path": dest.to_str().unwrap()});
    world
        .populate(&plain.to_string(), &["--force"], &sources)
        .assert_failure();
    assert!(!dest.exists());

    let target =
        json!({"user": user, "host": "alpha", "path": dest.to_str().unwrap(), "sudo": true});
    world
        .populate(&target.to_string(), &["--force"], &sources)
        .assert_success();
    let tree = Tree::snapshot(&dest);
    for rel in ["cfg/a", "repo/f", "secrets/k", ".populate"] {
        let entry = tree
            .get(rel)
            .unwrap_or_else(|| panic!("{rel} missing: {:?}", tree.paths()));
        assert_eq!(entry.uid, 0, "{rel} must be owned by root");
    }
    assert_eq!(git_head(&dest.join("repo")), commit);
    assert_eq!(mode(&dest.join("secrets/k")), 0o600);
    assert_eq!(file_text(&dest.join("secrets/k")).trim_end(), "sudo-secret");
    drop(alpha);
}

#[test]
fn paths_and_link_texts_with_shell_syntax_arrive_byte_exact() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let nasty = "we'ird \"dir\" $(touch PWNED) `touch PWNED2` ;&|";
    let link_text = "it's $(touch PWNED3) `id` \\ \"q\"";
    world.write("cfg/a", "a\n");
    let repo = world.git_repo("r");
    repo.write("x", "x\n");
    repo.commit("c");
    let sources = json!({
        "l": {"symlink": link_text},
        "cfg": {"file": world.path("cfg").to_str().unwrap()},
        "r": {"git": {"url": repo.url(), "ref": "main"}},
    });
    for (name, remote) in [("local", false), ("remote", true)] {
        let dest = world.mkdir(name).join(nasty);
        let target = if remote {
            alpha.target("root", &dest)
        } else {
            dest.to_str().unwrap().to_owned()
        };
        world
            .populate(&target, &["--force"], &sources)
            .assert_success();
        assert_eq!(
            std::fs::read_link(dest.join("l")).unwrap().to_str(),
            Some(link_text),
            "{name}"
        );
        assert_eq!(file_text(&dest.join("cfg/a")), "a\n", "{name}");
        assert!(dest.join("r/x").is_file(), "{name}");
    }
    // Local commands run in the world root, remote ones in root's home.
    let out = world.sh("find . ~root -maxdepth 4 -name 'PWNED*'");
    assert!(
        out.stdout_str().trim().is_empty(),
        "something was executed: {}",
        out.stdout_str()
    );
}

#[test]
fn refused_input_runs_nothing_on_the_target() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    let good = json!({"ok": {"symlink": "x"}});
    let cases: Vec<(String, &str)> = vec![
        ("{".into(), "sources: malformed JSON"),
        ("[]".into(), "sources: expected an object"),
        (
            json!({"ok": {"symlink": "x"}, "b": {}}).to_string(),
            "b: no source type given",
        ),
        (
            json!({"b": {"file": "/a", "symlink": "x"}}).to_string(),
            "b: several source types",
        ),
        (
            json!({"b": {"ftp": "x"}}).to_string(),
            "b.ftp: unknown field",
        ),
        (
            json!({"b": {"type": "ftp"}}).to_string(),
            "b.type: unknown source type",
        ),
        (
            json!({"b": {"git": {"url": "u", "ref": "r", "depth": 1}}}).to_string(),
            "b.git.depth: unknown field",
        ),
        (
            json!({"b": {"git": {"url": "u", "ref": true}}}).to_string(),
            "b.git.ref: expected a string",
        ),
        (
            json!({"b": {"git": {"url": "u"}}}).to_string(),
            "b.git.ref: missing field",
        ),
        (
            json!({"b": {"file": "relative/path"}}).to_string(),
            "b.file: \"relative/path\" is not an absolute path",
        ),
        (
            json!({"b": {"file": {"path": "/tmp", "filters": [{"type": "only", "pattern": "x"}]}}})
                .to_string(),
            "b.file.filters[0].type",
        ),
        (
            json!({"..": {"symlink": "x"}}).to_string(),
            "sources.\"..\"",
        ),
        (
            json!({"a/b": {"symlink": "x"}}).to_string(),
            "sources.\"a/b\"",
        ),
        (
            json!({"-x": {"symlink": "x"}}).to_string(),
            "sources.\"-x\"",
        ),
        (
            json!({"b": {"git": {"url": "--upload-pack=touch /tmp/PWNED", "ref": "r"}}})
                .to_string(),
            "b.git.url",
        ),
    ];
    for (input, expected) in &cases {
        let out = world.run(
            "populate",
            &["--target", &target, "--force"],
            input.as_bytes(),
        );
        out.assert_failure();
        out.assert_stderr_contains(expected);
        out.assert_stderr_contains("populate: error: ");
        // --force would have created the target path had anything run there.
        assert!(!dest.exists(), "{input} ran something on the target");
    }
    for bad_target in [
        "-oProxyCommand=touch /tmp/PWNED",
        "root@alpha:0/x",
        "root@alpha:relative",
    ] {
        let out = world.populate(bad_target, &["--force"], &good);
        out.assert_failure();
        out.assert_stderr_contains("target.");
    }
    let out = world.populate(
        &json!({"host": "alpha", "path": "var/src"}).to_string(),
        &["--force"],
        &good,
    );
    out.assert_failure().assert_stderr_contains("target.path");
}

#[test]
fn krops_evaluated_json_is_accepted() {
    let world = World::new();
    let repo = world.git_repo("nixpkgs");
    repo.write("default.nix", "{ }\n");
    let commit = repo.commit("c");
    let cfg = world.write("cfg/configuration.nix", "{ }\n");
    // As `builtins.toJSON (lib.evalSource [...])` prints it, null keys included.
    let evaluated = format!(
        r#"{{"nixos-config":{{"derivation":null,"file":{{"deleteExcluded":true,"exclude":[],"filters":[],"path":"{cfg}","useChecksum":false}},"git":null,"pass":null,"passage":null,"pipe":null,"symlink":null,"type":"file"}},"nixpkgs":{{"derivation":null,"file":null,"git":{{"clean":{{"exclude":["/.version-suffix"]}},"fetchAlways":false,"ref":"{commit}","shallow":false,"url":"{url}"}},"pass":null,"passage":null,"pipe":null,"symlink":null,"type":"git"}}}}"#,
        cfg = cfg.display(),
        url = repo.url(),
    );
    let dest = world.path("local/src");
    let out = world.run(
        "populate",
        &["--target", dest.to_str().unwrap(), "--force"],
        evaluated.as_bytes(),
    );
    out.assert_success();
    assert_eq!(file_text(&dest.join("nixos-config")), "{ }\n");
    assert_eq!(git_head(&dest.join("nixpkgs")), commit);
}

#[test]
fn a_failing_step_stops_the_run_and_names_the_source() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let sources = json!({
        "a-broken": {"git": {"url": world.path("no-such-repo").to_str().unwrap(), "ref": "main"}},
        "b-later": {"symlink": "x"},
    });
    let out = world.populate(&alpha.target("root", &dest), &["--force"], &sources);
    out.assert_failure();
    out.assert_stderr_contains("populate: error: source a-broken (git) → alpha:");
    out.assert_stderr_contains("failed: exit status");
    out.assert_stderr_contains("no-such-repo");
    assert!(
        !dest.join("b-later").exists(),
        "the run must stop at the first failure"
    );
}

#[test]
fn secrets_are_removed_when_decryption_fails() {
    let world = World::new();
    let passage = world.passage_store();
    passage.insert("a-good", "fine");
    // An entry encrypted to somebody else cannot be decrypted.
    let other = world.write("other-identity", "");
    std::fs::remove_file(&other).unwrap();
    let keygen = world.run_command(world.command("age-keygen").arg("-o").arg(&other), b"");
    keygen.assert_success();
    let recipient = world.run_command(world.command("age-keygen").arg("-y").arg(&other), b"");
    let encrypted = passage.dir().join("z-foreign.age");
    let mut age = world.command("age");
    age.args(["-r", recipient.stdout_str().trim(), "-o"])
        .arg(&encrypted);
    world.run_command(&mut age, b"not yours").assert_success();
    let dest = world.path("local/src");
    let sources = json!({"keys": {"passage": passage.dir().to_str().unwrap()}});
    let out = world.populate(dest.to_str().unwrap(), &["--force"], &sources);
    out.assert_failure()
        .assert_stderr_contains("source keys (passage)");
    let leftovers: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
    assert!(leftovers.is_empty(), "secrets left behind: {leftovers:?}");
    assert!(!dest.join("keys").exists());
}

#[test]
fn secrets_are_removed_on_interrupt() {
    let world = World::new();
    let passage = world.passage_store();
    passage.insert("first", "decrypted-before-the-interrupt");
    passage.insert("second", "never");
    // An age that decrypts, then hangs: populate is interrupted while the
    // first secret sits decrypted in its temp dir.
    let slow_age = world.write_executable(
        "bin-slow/age",
        "#!/bin/sh\n/usr/bin/age \"$@\"\ntouch \"$KROPS_STANDIN_LOG/age-ran\"\nexec sleep 60\n",
    );
    let dest = world.path("local/src");
    let sources = json!({"keys": {"passage": {"dir": passage.dir().to_str().unwrap(), "age": slow_age.to_str().unwrap()}}});
    let mut child = world
        .command(world.tool("populate"))
        .args(["--target", dest.to_str().unwrap(), "--force", "--sources"])
        .arg(world.write("sources.json", sources.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let marker = world.records_dir().join("age-ran");
    for _ in 0..200 {
        if marker.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(marker.exists(), "age never ran");
    let secret_dirs: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
    assert_eq!(
        secret_dirs.len(),
        1,
        "one private temp dir while decrypting"
    );
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    let leftovers: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "secrets left behind after SIGINT: {leftovers:?}"
    );
    let _ = std::process::Command::new("pkill")
        .args(["-f", slow_age.to_str().unwrap()])
        .status();
}

#[test]
fn dry_run_prints_the_plan_without_secrets_and_runs_nothing() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let pass = world.pass_store();
    pass.insert("h/k", "dry-run-secret");
    let passage = world.passage_store();
    passage.insert("p/k", "dry-run-passage-secret");
    let dest = world.path("remote/src");
    // Two secret stores: each must get, and remove, its own temp dir.
    let sources = json!({
        "secrets": {"pass": {"dir": pass.dir().to_str().unwrap(), "name": "h"}},
        "zecrets": {"passage": passage.dir().to_str().unwrap()},
        "l": {"symlink": "x"},
    });
    let out = world.populate(
        &alpha.target("root", &dest),
        &["--force", "--dry-run"],
        &sources,
    );
    out.assert_success();
    assert!(!dest.exists());
    let script = out.stdout_str();
    for secret in ["dry-run-secret", "dry-run-passage-secret"] {
        assert!(!script.contains(secret) && !out.stderr_str().contains(secret));
    }
    assert!(script.contains("pass show h/k"), "{script}");
    // The symlink script is `symlink.sh`'s function, called with the link.
    assert!(script.contains("run ln -fnsT -- \"$3\" \"$1\""), "{script}");
    let parsed = world.run_command(world.command("/bin/sh").args(["-n", "-c", &script]), b"");
    parsed.assert_success();
    // Running the printed plan does what populate does.
    world.sh(&script).assert_success();
    assert_eq!(
        file_text(&dest.join("secrets/k")).trim_end(),
        "dry-run-secret"
    );
    assert_eq!(
        file_text(&dest.join("zecrets/p/k")),
        "dry-run-passage-secret"
    );
    assert_eq!(mode(&dest.join("zecrets/p/k")), 0o600);
    assert_eq!(
        std::fs::read_link(dest.join("l")).unwrap(),
        std::path::Path::new("x")
    );
    let leftovers: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "the printed plan left secrets behind: {leftovers:?}"
    );
    assert!(dest.join("l").is_symlink());
    assert!(matches!(
        Tree::snapshot(&dest).get("l").map(|e| &e.kind),
        Some(EntryKind::Symlink(_))
    ));
}

#[test]
fn a_failing_sentinel_check_runs_once() {
    // The target path lies below a regular file, so `mkdir -p` fails with
    // its own message: it must appear once, not again from a second run.
    let world = World::new();
    let blocker = world.write("blocker", "a file, not a directory\n");
    let dest = blocker.join("src");
    let out = world.populate(
        dest.to_str().unwrap(),
        &["--force"],
        &json!({"l": {"symlink": "x"}}),
    );
    out.assert_failure();
    let stderr = out.stderr_str();
    let starts = stderr
        .lines()
        .filter(|l| l.contains(" populate: sentinel check →"));
    assert_eq!(starts.count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches("mkdir: cannot create directory").count(),
        1,
        "shown once, as it came: {stderr}"
    );
    assert!(
        stderr.contains("populate: error: sentinel check → ") && stderr.contains(": `mkdir -p "),
        "the error names the failed command: {stderr}"
    );
    assert!(!stderr.contains("missing sentinel file"), "{stderr}");
}

#[test]
fn stdout_stays_empty_when_ssh_prints_to_it() {
    // ssh's LocalCommand writes to ssh's stdout; populate's stdout is data only.
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let target = json!({
        "user": "root", "host": "alpha", "path": dest.to_str().unwrap(),
        "extraOptions": ["-o", "PermitLocalCommand=yes", "-o", "LocalCommand=echo noise-from-ssh"]
    });
    let out = world.populate(
        &target.to_string(),
        &["--force"],
        &json!({"l": {"symlink": "x"}}),
    );
    out.assert_success();
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout_str());
    out.assert_stderr_contains("noise-from-ssh");
}

#[test]
fn git_submodules_are_checked_out_and_follow_the_ref() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let lib = world.git_repo("lib");
    lib.write("lib.nix", "{ v = 1; }\n");
    lib.commit("lib v1");
    let repo = world.git_repo("main-repo");
    repo.write("default.nix", "import ./lib/lib.nix\n");
    repo.add_submodule(&lib, "lib");
    let first = repo.commit("with lib v1");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    let sources = |git_ref: &str| json!({"repo": {"git": {"url": repo.url(), "ref": git_ref}}});
    world
        .populate(&target, &["--force"], &sources(&first))
        .assert_success();
    assert_eq!(file_text(&dest.join("repo/lib/lib.nix")), "{ v = 1; }\n");

    // A new commit that moves the submodule: update --init --recursive follows.
    lib.write("lib.nix", "{ v = 2; }\n");
    lib.commit("lib v2");
    repo.git(&["-C", "lib", "pull", "-q", "origin", "main"]);
    repo.git(&["add", "lib"]);
    let second = repo.commit("with lib v2");
    world
        .populate(&target, &[], &sources(&second))
        .assert_success();
    assert_eq!(file_text(&dest.join("repo/lib/lib.nix")), "{ v = 2; }\n");
}

#[test]
fn a_pass_store_without_git_is_synced_every_time() {
    let world = World::new();
    let gpg = world.pass_store();
    let plain = world.path("plain-store");
    let pass = |args: &[&str], stdin: &[u8]| {
        let mut cmd = world.command("pass");
        cmd.args(args).env("PASSWORD_STORE_DIR", &plain);
        world.run_command(&mut cmd, stdin).assert_success();
    };
    pass(&["init", gpg.fingerprint()], b"");
    pass(&["insert", "-m", "host/key"], b"not in git");
    assert!(!plain.join(".git").exists());
    let dest = world.path("local/src");
    let sources = json!({"secrets": {"pass": {"dir": plain.to_str().unwrap(), "name": "host"}}});
    world
        .populate(dest.to_str().unwrap(), &["--force"], &sources)
        .assert_success();
    assert_eq!(file_text(&dest.join("secrets/key")), "not in git");
    assert_eq!(mode(&dest.join("secrets/key")), 0o600);
    assert!(
        !dest.join("secrets/.pass_info").exists(),
        "no stamp without git"
    );
}

#[test]
fn hex_only_tag_names_follow_origin_and_short_hashes_still_work() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let repo = world.git_repo("repo");
    repo.write("a", "1\n");
    let first = repo.commit("first");
    repo.write("a", "22\n");
    let second = repo.commit("second");
    repo.tag("20240115");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    let sources = json!({
        "dated": {"git": {"url": repo.url(), "ref": "20240115"}},
        "dated-shallow": {"git": {"url": repo.file_url(), "ref": "20240115", "shallow": true}},
        "short": {"git": {"url": repo.url(), "ref": &first[..7]}},
    });
    world
        .populate(&target, &["--force"], &sources)
        .assert_success();
    assert_eq!(git_head(&dest.join("dated")), second);
    assert_eq!(git_head(&dest.join("dated-shallow")), second);
    assert_eq!(git_head(&dest.join("short")), first);

    // The tag moves on origin: followed, as a tag name should be.
    repo.write("a", "333\n");
    let third = repo.commit("third");
    repo.git(&["tag", "-f", "20240115"]);
    world.populate(&target, &[], &sources).assert_success();
    assert_eq!(git_head(&dest.join("dated")), third);
    assert_eq!(git_head(&dest.join("dated-shallow")), third);
    assert_eq!(git_head(&dest.join("short")), first);
}

#[test]
fn link_texts_that_look_like_options_are_link_texts() {
    // Without `--`, ln read "--help" as its option and exited 0 doing nothing.
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let sources = json!({"help": {"symlink": "--help"}, "dash": {"symlink": "-n"}});
    world
        .populate(&alpha.target("root", &dest), &["--force"], &sources)
        .assert_success();
    assert_eq!(
        std::fs::read_link(dest.join("help")).unwrap().to_str(),
        Some("--help")
    );
    assert_eq!(
        std::fs::read_link(dest.join("dash")).unwrap().to_str(),
        Some("-n")
    );
}
