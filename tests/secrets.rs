//! End-to-end: what happens to secrets (README: Reliability, Secrets). Decrypted content never
//! appears in any process's argv, in the log, in `--dry-run`'s script or in
//! an error message; the local temp dirs are 0700 (their files 0600) and
//! gone afterwards; on the target the files are 0600 in 0700 dirs, also
//! under sudo; `.pass_info` holds only a name and commit hashes; and an
//! edit that keeps a secret's size and time still arrives.
//!
//! (tests/sources.rs checks the modes of a few secrets on local and
//! remote targets and that they stay out of the log; this file checks the
//! rest, and all of it with a store of 200.)

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use krops_tests::{Output, World};
use serde_json::{json, Value};

/// A marker no process of this machine has unless our secrets leaked: the
/// start of every secret value of one test.
fn secret_marker() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3cret-{nanos:x}-")
}

/// What a sampler saw while a run went on.
#[derive(Debug, Default)]
struct Seen {
    samples: usize,
    /// Command lines that held the marker.
    leaks: BTreeSet<String>,
    /// Paths below TMPDIR with a mode other than 0700 (dirs) or 0600 (files).
    loose: BTreeSet<String>,
    /// Whether TMPDIR held anything while it was sampled.
    saw_temp_files: bool,
}

/// Samples every process's command line and the world's TMPDIR again and
/// again until `stop` is set.
fn sample(marker: &str, tmp: &Path, stop: &AtomicBool, seen: &Mutex<Seen>) {
    while !stop.load(Ordering::SeqCst) {
        let mut leaks = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if line.contains(marker) {
                leaks.push(line);
            }
        }
        let mut loose = Vec::new();
        let mut any = false;
        for entry in walk(tmp) {
            any = true;
            let Ok(meta) = fs::symlink_metadata(&entry) else {
                continue; // gone meanwhile
            };
            let mode = meta.permissions().mode() & 0o7777;
            let ok = if meta.is_dir() {
                mode == 0o700
            } else if meta.is_file() {
                mode == 0o600
            } else {
                true // ssh's control socket, in a 0700 dir
            };
            if !ok {
                loose.push(format!("{} {mode:o}", entry.display()));
            }
        }
        let mut seen = seen.lock().unwrap();
        seen.samples += 1;
        seen.leaks.extend(leaks);
        seen.loose.extend(loose);
        seen.saw_temp_files |= any;
        drop(seen);
        // Not a busy loop: the run needs the machine's cores.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Everything below `dir`, not `dir` itself; entries that vanish while it
/// looks are skipped.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

/// Runs `tool ARGS` with `stdin` while sampling; returns its output and
/// what the sampler saw.
fn run_sampled(
    world: &World,
    marker: &str,
    tool: &str,
    args: &[&str],
    stdin: &[u8],
) -> (Output, Seen) {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sampler = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        let (marker, tmp) = (marker.to_owned(), world.tmp_dir());
        std::thread::spawn(move || sample(&marker, &tmp, &stop, &seen))
    };
    let out = world.run(tool, args, stdin);
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (out, seen)
}

#[track_caller]
fn assert_no_secret_in(marker: &str, out: &Output) {
    assert!(
        !out.stdout_str().contains(marker) && !out.stderr_str().contains(marker),
        "a secret reached the output:\n{out}"
    );
}

#[track_caller]
fn assert_temp_dir_empty(world: &World) {
    let left = walk(&world.tmp_dir());
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// Every file below `dir` is 0600 and every directory (`dir` too) 0700,
/// owned by `uid`.
#[track_caller]
fn assert_private_tree(dir: &Path, uid: u32) {
    let mut paths = walk(dir);
    paths.push(dir.to_owned());
    for path in paths {
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
        assert_eq!(
            meta.uid(),
            uid,
            "{} is owned by {}",
            path.display(),
            meta.uid()
        );
    }
}

/// `.pass_info` is the entry's name and 40-hex-digit commit hashes only.
#[track_caller]
fn assert_pass_info_is_names_and_hashes(path: &Path, name: &str) {
    let text = fs::read_to_string(path).unwrap();
    let mut words = text.split_whitespace();
    assert_eq!(words.next(), Some(name), "{text:?}");
    let hashes: Vec<&str> = words.collect();
    assert!(!hashes.is_empty(), "{text:?}");
    for hash in hashes {
        assert!(
            hash.len() == 40 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "not a commit hash in .pass_info: {hash:?} ({text:?})"
        );
    }
}

/// A pass store with `count` secrets below `hosts/alpha`, a passage store
/// with 20, and a pipe that prints one: the sources, and every secret.
fn many_secrets(world: &World, marker: &str, count: usize) -> (Value, Vec<String>) {
    let pass = world.pass_store();
    let names: Vec<String> = (0..count)
        .map(|i| format!("hosts/alpha/group{}/key{i:03}", i % 7))
        .collect();
    let values: Vec<String> = (0..count).map(|i| format!("{marker}pass-{i:03}")).collect();
    let entries: Vec<(&str, &str)> = names
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(String::as_str))
        .collect();
    pass.insert_many(&entries, None);
    let passage = world.passage_store();
    let mut secrets = values;
    for i in 0..20 {
        let value = format!("{marker}passage-{i:02}");
        passage.insert(&format!("dir{}/k{i:02}", i % 3), &value);
        secrets.push(value);
    }
    let pipe_value = format!("{marker}pipe");
    let pipe = world.write_executable("gen/secret", format!("#!/bin/sh\necho '{pipe_value}'\n"));
    secrets.push(pipe_value);
    let sources = json!({
        "secrets": {"pass": {"dir": pass.dir().to_str().unwrap(), "name": "hosts/alpha"}},
        "keys": {"passage": passage.dir().to_str().unwrap()},
        "token": {"pipe": pipe.to_str().unwrap()},
    });
    (sources, secrets)
}

/// Reliability (Secrets): a 200-secret pass store, `/proc/*/cmdline` of every process sampled during the run → no secret in any argv, in the log or in a temp file; temp dirs 0700 and gone afterwards
#[test]
fn a_200_secret_run_leaks_nothing_into_argv_logs_or_temp_files() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let marker = secret_marker();
    let (sources, secrets) = many_secrets(&world, &marker, 200);
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    let input = sources.to_string();
    let (out, seen) = run_sampled(
        &world,
        &marker,
        "populate",
        &["--target", &target, "--force"],
        input.as_bytes(),
    );
    out.assert_success();
    assert!(seen.samples > 0, "never sampled");
    assert!(
        seen.saw_temp_files,
        "the decrypted secrets' dir was never seen"
    );
    assert!(
        seen.leaks.is_empty(),
        "secrets in command lines: {:?}",
        seen.leaks
    );
    assert!(
        seen.loose.is_empty(),
        "temp files not private: {:?}",
        seen.loose
    );
    assert_no_secret_in(&marker, &out);
    assert_temp_dir_empty(&world);
    // Every secret arrived, private.
    for i in [0, 99, 199] {
        let file = dest.join(format!("secrets/group{}/key{i:03}", i % 7));
        assert_eq!(fs::read_to_string(&file).unwrap().trim_end(), secrets[i]);
    }
    assert_eq!(
        walk(&dest.join("secrets"))
            .iter()
            .filter(|p| p.is_file())
            .count(),
        201
    );
    assert_private_tree(&dest.join("secrets"), 0);
    assert_private_tree(&dest.join("keys"), 0);
    assert_pass_info_is_names_and_hashes(&dest.join("secrets/.pass_info"), "hosts/alpha");
    // The dry run's script names no secret either, and leaves nothing.
    let (out, seen) = run_sampled(
        &world,
        &marker,
        "populate",
        &["--target", &target, "--dry-run"],
        input.as_bytes(),
    );
    out.assert_success();
    assert!(seen.leaks.is_empty(), "{:?}", seen.leaks);
    assert_no_secret_in(&marker, &out);
    assert_temp_dir_empty(&world);
}

/// Reliability (Secrets): a sudo target → the secrets are root's, files 0600 in 0700 dirs
#[test]
fn secrets_on_a_sudo_target_are_root_s_0600_in_0700_dirs() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let user = world.sudo_user();
    let marker = secret_marker();
    let (sources, _) = many_secrets(&world, &marker, 10);
    let dest = world.mkdir("root-owned").join("src");
    let target =
        json!({"user": user, "host": "alpha", "path": dest.to_str().unwrap(), "sudo": true})
            .to_string();
    let (out, seen) = run_sampled(
        &world,
        &marker,
        "krops-deploy",
        &["--target", &target, "--force", "--nom", "false"],
        sources.to_string().as_bytes(),
    );
    out.assert_success();
    assert!(seen.leaks.is_empty(), "{:?}", seen.leaks);
    assert!(seen.loose.is_empty(), "{:?}", seen.loose);
    assert_no_secret_in(&marker, &out);
    assert_temp_dir_empty(&world);
    assert_private_tree(&dest.join("secrets"), 0);
    assert_private_tree(&dest.join("keys"), 0);
    assert_pass_info_is_names_and_hashes(&dest.join("secrets/.pass_info"), "hosts/alpha");
}

/// Reliability (Secrets): a failure after decryption → the error names no secret
#[test]
fn errors_after_decryption_name_no_secret() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let marker = secret_marker();
    let (sources, _) = many_secrets(&world, &marker, 5);
    let pass = world.pass_store();
    // An entry gpg cannot decrypt, after others that it did.
    fs::write(
        pass.dir().join("hosts/alpha/zz-broken.gpg"),
        b"not gpg at all",
    )
    .unwrap();
    pass.commit("a broken entry");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    let (out, seen) = run_sampled(
        &world,
        &marker,
        "populate",
        &["--target", &target, "--force"],
        sources.to_string().as_bytes(),
    );
    out.assert_failure()
        .assert_stderr_contains("populate: error: source secrets (pass)");
    assert!(seen.leaks.is_empty(), "{:?}", seen.leaks);
    assert_no_secret_in(&marker, &out);
    assert_temp_dir_empty(&world);

    // rsync fails on the target after every secret was decrypted: a
    // directory of the store the login user may not write.
    fs::remove_file(pass.dir().join("hosts/alpha/zz-broken.gpg")).unwrap();
    pass.commit("fixed");
    let user = world.sudo_user();
    let dest = world.mkdir("user-owned/src");
    fs::write(dest.join(".populate"), "").unwrap();
    world.chown_to_sudo_user(&world.path("user-owned"));
    fs::create_dir_all(dest.join("secrets/group1")).unwrap();
    world.chown_to_sudo_user(&dest.join("secrets"));
    fs::set_permissions(
        dest.join("secrets/group1"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::chown(dest.join("secrets/group1"), Some(0), Some(0)).unwrap();
    let target = alpha.target(user, &dest);
    let (out, seen) = run_sampled(
        &world,
        &marker,
        "populate",
        &["--target", &target],
        sources.to_string().as_bytes(),
    );
    out.assert_failure()
        .assert_stderr_contains("populate: error: source secrets (pass)")
        .assert_stderr_contains("rsync failed");
    assert!(seen.leaks.is_empty(), "{:?}", seen.leaks);
    assert_no_secret_in(&marker, &out);
    assert_temp_dir_empty(&world);
}

/// Two edits of a secret that keep its size, committed within the same
/// second (pass) or with the same mtime (passage), both reach the target:
/// rsync's quick check (size and mtime) would skip the second.
/// Reliability (Secrets): two same-size edits of a secret committed within the same second → both reach the target (pass and passage sync with `--checksum`)
#[test]
fn a_same_size_edit_within_the_same_second_arrives() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    let pass = world.pass_store();
    let passage = world.passage_store();
    let date = "@1700000000 +0000";
    pass.insert_many(&[("host/key", "aaaa")], Some(date));
    passage.insert("key", "aaaa");
    let age_file = passage.dir().join("key.age");
    let mtime = fs::metadata(&age_file).unwrap().modified().unwrap();
    let sources = json!({
        "secrets": {"pass": {"dir": pass.dir().to_str().unwrap(), "name": "host"}},
        "keys": {"passage": passage.dir().to_str().unwrap()},
    });
    let populate = || {
        world.run(
            "populate",
            &["--target", &target, "--force"],
            sources.to_string().as_bytes(),
        )
    };
    populate().assert_success();
    assert_eq!(
        fs::read_to_string(dest.join("secrets/key")).unwrap(),
        "aaaa\n"
    );
    assert_eq!(fs::read_to_string(dest.join("keys/key")).unwrap(), "aaaa");
    pass.insert_many(&[("host/key", "bbbb")], Some(date));
    passage.insert("key", "bbbb");
    fs::File::options()
        .write(true)
        .open(&age_file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let out = populate();
    out.assert_success();
    assert_eq!(
        fs::read_to_string(dest.join("secrets/key")).unwrap(),
        "bbbb\n",
        "pass's edit did not arrive\n{out}"
    );
    assert_eq!(
        fs::read_to_string(dest.join("keys/key")).unwrap(),
        "bbbb",
        "passage's edit did not arrive\n{out}"
    );
}
