//! Proves that the test world works before any tool is tested in it: real sshd
//! hosts reached through the `ssh` wrapper, the remote PATH, the sudo test user,
//! the stand-ins and their records, the pass and passage stores, git repos and
//! tree snapshots. Each test has its own [`World`].

use std::fs;
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread;

use krops_tests::{EntryKind, Tree, World, FIXED_STANDIN_DIR, SUDO_USER};

/// Runs `script` on `dest` through the world's `ssh` wrapper found on PATH, as
/// the tools do; returns stdout after asserting success.
#[track_caller]
fn ssh_ok(world: &World, dest: &str, script: &str) -> String {
    let out = world.run_command(world.command("ssh").arg(dest).arg(script), b"");
    out.assert_success();
    out.stdout_str()
}

#[test]
fn two_hosts_answer_through_the_ssh_wrapper() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let beta = world.add_host("beta");
    assert_ne!(alpha.port(), beta.port());

    for host in [&alpha, &beta] {
        let said = ssh_ok(
            &world,
            &host.dest("root"),
            &format!("echo hello {}; id -u", host.alias()),
        );
        assert_eq!(said, format!("hello {}\n0\n", host.alias()));
    }
    // A bare alias logs in as the local user (root), as ssh's config decides.
    assert_eq!(ssh_ok(&world, "alpha", "id -un"), "root\n");

    // The same with an explicit `-F CONFIG`, as a target's extraOptions would pass.
    let out = world.run_command(
        world
            .command("/usr/bin/ssh")
            .arg("-F")
            .arg(world.ssh_config())
            .args(["root@beta", "echo via -F"]),
        b"",
    );
    out.assert_success().assert_stdout_contains("via -F");

    // Each alias reaches its own sshd: stopping beta leaves alpha up.
    world.stop_host("beta");
    world.ssh("root@beta", "true").assert_failure();
    world.ssh("root@alpha", "true").assert_success();
}

#[test]
fn a_killed_host_drops_its_sessions_and_comes_back_with_its_key() {
    use std::io::BufRead;
    let world = World::new();
    let alpha = world.add_host("alpha");
    let mut session = world
        .command("ssh")
        .args(["root@alpha", "echo up; exec sleep 61"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(session.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "up\n");
    // The local ssh runs in the world's environment.
    let ours = world.processes();
    assert!(ours.iter().any(|p| p.contains("exec sleep 61")), "{ours:?}");
    world.kill_host("alpha");
    // Its connection is gone with the session: ssh ends at once.
    assert_eq!(session.wait().unwrap().code(), Some(255));
    world.assert_no_processes_left();
    world.ssh("root@alpha", "true").assert_failure();
    let _alpha = world.restart_host(&alpha);
    // The same host key: strict checking still passes.
    assert_eq!(ssh_ok(&world, "root@alpha", "echo back"), "back\n");
}

#[test]
fn a_frozen_host_accepts_connections_and_never_answers() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    world.freeze_host("alpha");
    let out = world.run_command_with_timeout(
        world
            .command("ssh")
            .args(["-o", "ConnectTimeout=2", "root@alpha", "true"]),
        b"",
        std::time::Duration::from_secs(60),
    );
    out.assert_code(255)
        .assert_stderr_contains("Connection timed out during banner exchange");
    world.kill_host("alpha");
}

#[test]
fn rsync_reaches_a_host_through_the_wrapper() {
    let world = World::new();
    world.add_host("alpha");
    world.write("src/dir/file", "content");
    let dest = world.path("dest");
    let out = world.run_command(
        world
            .command("rsync")
            .args(["-a", "-e", "ssh", "src/"])
            .arg(format!("root@alpha:{}/", dest.display())),
        b"",
    );
    out.assert_success();
    assert_eq!(
        fs::read_to_string(dest.join("dir/file")).unwrap(),
        "content"
    );
}

#[test]
fn a_host_on_ipv6_answers_by_alias_and_by_its_literal_with_host_keys_checked() {
    let world = World::new();
    let six = world.add_host_at("six", IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(six.address(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    // SSH_CONNECTION = client_ip client_port server_ip server_port
    let expected = format!("::1 {}", six.port());
    let by_alias = ssh_ok(&world, "root@six", "echo $SSH_CONNECTION");
    assert!(by_alias.trim_end().ends_with(&expected), "{by_alias}");
    let port = six.port().to_string();
    let by_literal = world.run_command(
        world
            .command("ssh")
            .args(["-p", &port, "-l", "root", "::1", "echo $SSH_CONNECTION"]),
        b"",
    );
    by_literal.assert_success();
    assert!(
        by_literal.stdout_str().trim_end().ends_with(&expected),
        "{}",
        by_literal.stdout_str()
    );
    // rsync takes the literal in brackets and gives ssh the bare address.
    world.write("src/file", "content");
    let dest = world.path("dest");
    let out = world.run_command(
        world
            .command("rsync")
            .args(["-a", "-e", &format!("ssh -p {port}"), "src/"])
            .arg(format!("root@[::1]:{}/", dest.display())),
        b"",
    );
    out.assert_success();
    assert_eq!(fs::read_to_string(dest.join("file")).unwrap(), "content");
    // The host key is checked: a port the known hosts do not list is refused.
    let other = world.add_host_at("seven", IpAddr::V6(Ipv6Addr::LOCALHOST));
    let known = world.ssh_config().with_file_name("known_hosts");
    let text = fs::read_to_string(&known).unwrap();
    let seven_line = format!("[::1]:{} ", other.port());
    let kept: String = text
        .lines()
        .filter(|line| !line.starts_with(&seven_line))
        .map(|line| format!("{line}\n"))
        .collect();
    fs::write(&known, kept).unwrap();
    let seven_port = other.port().to_string();
    let unknown = world.run_command(
        world
            .command("ssh")
            .args(["-p", &seven_port, "-l", "root", "::1", "true"]),
        b"",
    );
    unknown.assert_failure();
    unknown.assert_stderr_contains("Host key verification failed");
}

#[test]
fn remote_sessions_find_the_world_bin_first() {
    let world = World::new();
    world.add_host("alpha");
    let bin = world.bin_dir();
    for user in ["root", world.sudo_user()] {
        let dest = format!("{user}@alpha");
        let found = ssh_ok(&world, &dest, "command -v nixos-rebuild nom passage ssh");
        let expected: String = ["nixos-rebuild", "nom", "passage", "ssh"]
            .iter()
            .map(|name| format!("{}\n", bin.join(name).display()))
            .collect();
        assert_eq!(found, expected, "as {user}");
        let env = ssh_ok(
            &world,
            &dest,
            "printf '%s|' \"$KROPS_STANDIN_LOG\" \"$NIX_CONFIG\" \"$(git config protocol.file.allow)\"",
        );
        assert_eq!(
            env,
            format!("{}|substituters =|always|", world.records_dir().display()),
            "as {user}"
        );
    }
}

#[test]
fn the_sudo_user_logs_in_and_sudo_finds_the_fixed_standins() {
    let world = World::new();
    world.add_host("alpha");
    let user = world.sudo_user();
    assert_eq!(user, SUDO_USER);
    let dest = format!("{user}@alpha");
    let uid = ssh_ok(&world, &dest, "id -u");
    assert_ne!(uid, "0\n", "the sudo test user must not be root");
    assert_eq!(ssh_ok(&world, &dest, "sudo -n id -u"), "0\n");
    let under_sudo = ssh_ok(
        &world,
        &dest,
        "sudo -n sh -c 'command -v nixos-rebuild; echo \"$KROPS_STANDIN_LOG\"; echo \"$NIX_CONFIG\"; \
         git config protocol.file.allow; git config safe.directory'",
    );
    assert_eq!(
        under_sudo,
        format!(
            "{FIXED_STANDIN_DIR}/nixos-rebuild\n{}\nsubstituters =\nalways\n{}/git/*\n",
            world.records_dir().display(),
            world.root().display()
        )
    );

    // The stand-in in the fixed dir records into this world, as root.
    ssh_ok(&world, &dest, "sudo -n nixos-rebuild switch --fast");
    let records = world.records("nixos-rebuild");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].argv, ["switch", "--fast"]);
    assert_eq!(records[0].uid, 0);
    assert_eq!(records[0].var("SUDO_USER"), Some(user));

    // The fixed dir holds exactly the world's stand-ins.
    for name in ["nixos-rebuild", "nom", "passage"] {
        let fixed = fs::read(Path::new(FIXED_STANDIN_DIR).join(name)).unwrap();
        assert_eq!(
            fixed,
            fs::read(world.bin_dir().join(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn root_sudo_never_finds_the_standins() {
    // The stand-ins are on the sudo test user's secure_path only: on a
    // developer's machine, root's `sudo nixos-rebuild` stays the real one.
    let world = World::new();
    world.sudo_user();
    let out = world.sh("sudo -n sh -c 'command -v nixos-rebuild || echo none' </dev/null");
    let found = out.assert_success().stdout_str();
    assert!(
        !found.contains(FIXED_STANDIN_DIR),
        "root's sudo finds the stand-in: {found}"
    );
}

#[test]
fn the_rebuild_standin_records_argv_env_stdin_and_honours_the_exit_file() {
    let world = World::new();
    let out = world.sh("printf 'some input' | nixos-rebuild switch --flake 'a b' ''");
    out.assert_success()
        .assert_stdout_contains("nixos-rebuild stand-in: switch --flake a b")
        .assert_stderr_contains("nixos-rebuild stand-in");

    world.set_rebuild_exit(3);
    world.sh("nixos-rebuild test </dev/null").assert_code(3);
    world.set_rebuild_exit(0);
    world.sh("nixos-rebuild boot </dev/null").assert_success();

    let records = world.records("nixos-rebuild");
    let argvs: Vec<_> = records.iter().map(|r| r.argv.clone()).collect();
    assert_eq!(
        argvs,
        [
            vec!["switch", "--flake", "a b", ""],
            vec!["test"],
            vec!["boot"]
        ]
    );
    let first = &records[0];
    assert_eq!(first.stdin_str(), "some input");
    assert_eq!(first.uid, 0);
    assert_eq!(first.cwd, world.root());
    assert_eq!(first.var("HOSTNAME"), Some("origin"));
    assert_eq!(first.var("NIX_CONFIG"), Some("substituters ="));
    assert_eq!(first.exit, Some(0));
    assert_eq!(records[1].exit, Some(3));
    assert!(records[1].stdin.is_empty());

    // Over ssh with stdin from /dev/null, it records the remote session's view.
    world.add_host("alpha");
    ssh_ok(
        &world,
        "root@alpha",
        "cd / && nixos-rebuild dry-build </dev/null",
    );
    let last = world.records("nixos-rebuild").pop().unwrap();
    assert_eq!(last.argv, ["dry-build"]);
    assert_eq!(last.cwd, Path::new("/"));
    assert!(last.var("SSH_CONNECTION").is_some(), "{last:?}");
}

#[test]
fn nom_prefixes_every_line_and_records_its_input() {
    let world = World::new();
    let out = world.sh("printf 'building\\nlast line' | nom");
    out.assert_success();
    assert_eq!(out.stdout_str(), "nom: building\nnom: last line");
    let records = world.records("nom");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].stdin_str(), "building\nlast line");
    assert!(world.records("nixos-rebuild").is_empty());
}

#[test]
fn the_pass_store_round_trips_a_secret_with_the_real_pass() {
    let world = World::new();
    let store = world.pass_store();
    assert!(world.env().contains_key("GNUPGHOME"));
    assert_eq!(
        world.env().get("PASSWORD_STORE_DIR").map(String::as_str),
        store.dir().to_str()
    );
    store.insert("hosts/alpha/ssh.key", "very secret\nsecond line");
    assert!(store.dir().join("hosts/alpha/ssh.key.gpg").is_file());
    // Encrypted at rest.
    let raw = fs::read(store.dir().join("hosts/alpha/ssh.key.gpg")).unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("very secret"));

    // `pass show` as a tool would run it, with the world's environment.
    let out = world.run_command(
        world.command("pass").args(["show", "hosts/alpha/ssh.key"]),
        b"",
    );
    // pass stores exactly what it was given (`insert -m`), no newline added.
    assert_eq!(
        out.assert_success().stdout_str(),
        "very secret\nsecond line"
    );

    // Every change is a commit; a symlink is one too.
    store.symlink("hosts/beta", "alpha");
    assert_eq!(store.show("hosts/beta/ssh.key"), "very secret\nsecond line");
    let log = store.git(&["log", "--format=%s"]);
    assert_eq!(log.lines().count(), 4, "{log}");
    assert!(log.contains("hosts/alpha/ssh.key"), "{log}");
    assert_eq!(store.git(&["status", "--porcelain"]), "");
    assert_eq!(store.fingerprint().len(), 40, "{}", store.fingerprint());
}

#[test]
fn the_passage_standin_decrypts_with_the_real_age() {
    let world = World::new();
    let store = world.passage_store();
    assert_eq!(store.dir(), world.home().join(".passage/store"));
    assert_eq!(store.identities(), world.home().join(".passage/identities"));
    assert!(
        store.recipient().starts_with("age1"),
        "{}",
        store.recipient()
    );
    store.insert("hosts/alpha/secret", "age secret");
    let raw = fs::read(store.dir().join("hosts/alpha/secret.age")).unwrap();
    assert!(raw.starts_with(b"age-encryption.org/v1"));

    assert_eq!(store.show("hosts/alpha/secret"), "age secret");
    let out = world.sh("passage hosts/alpha/secret");
    assert_eq!(out.assert_success().stdout_str(), "age secret");

    // passage's variables move the store and the identities.
    let moved = world.mkdir("elsewhere");
    fs::rename(store.dir().join("hosts"), moved.join("hosts")).unwrap();
    fs::rename(store.identities(), world.path("ids")).unwrap();
    let out = world.sh(&format!(
        "PASSAGE_DIR={} PASSAGE_IDENTITIES_FILE={} PASSAGE_AGE=age passage show hosts/alpha/secret",
        moved.display(),
        world.path("ids").display()
    ));
    assert_eq!(out.assert_success().stdout_str(), "age secret");

    let missing = world.sh("passage show hosts/nope");
    missing
        .assert_code(1)
        .assert_stderr_contains("Error: hosts/nope is not in the password store.");
    assert!(missing.stdout.is_empty());

    let records = world.records("passage");
    assert_eq!(records.len(), 4);
    assert_eq!(records[0].argv, ["show", "hosts/alpha/secret"]);
    assert_eq!(records[3].exit, Some(1));
    for record in &records {
        for entry in fs::read_dir(&record.dir).unwrap() {
            let content = fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !String::from_utf8_lossy(&content).contains("age secret"),
                "a record holds the secret: {}",
                record.dir.display()
            );
        }
    }
}

#[test]
fn a_git_repo_commits_and_clones_locally_over_ssh_and_with_submodules() {
    let world = World::new();
    world.add_host("alpha");
    let lib = world.git_repo("lib");
    lib.write("lib.nix", "{ }\n");
    let lib_commit = lib.commit("lib");

    let repo = world.git_repo("config");
    repo.write("configuration.nix", "{ }\n")
        .write("modules/a.nix", "a\n");
    let first = repo.commit("first");
    assert_eq!(first.len(), 40);
    repo.tag("v1");
    repo.add_submodule(&lib, "lib");
    repo.write("modules/a.nix", "b\n");
    let second = repo.commit("second");
    assert_ne!(first, second);
    assert_eq!(repo.git(&["rev-parse", "v1"]), first);
    assert_eq!(repo.git(&["rev-parse", "HEAD:lib"]), lib_commit);

    // Locally, with the world's environment.
    let local = world.path("clone-local");
    world
        .run_command(
            world
                .command("git")
                .args(["clone", "-q", &repo.file_url()])
                .arg(&local),
            b"",
        )
        .assert_success();
    assert_eq!(
        fs::read_to_string(local.join("modules/a.nix")).unwrap(),
        "b\n"
    );

    // On a host, as root and as the sudo test user, with submodules from file
    // URLs and root-owned repos (allowed by the world's GIT_CONFIG_GLOBAL).
    let sudo_dir = world.mkdir("sudo-user-dir");
    world.chown_to_sudo_user(&sudo_dir);
    for (dest, dir) in [
        ("root@alpha".to_owned(), world.path("clone-root")),
        (
            format!("{}@alpha", world.sudo_user()),
            sudo_dir.join("clone"),
        ),
    ] {
        ssh_ok(
            &world,
            &dest,
            &format!(
                "git clone -q --recurse-submodules {} {} && git -C {} log --format=%H -1",
                repo.url(),
                dir.display(),
                dir.display()
            ),
        );
        assert_eq!(
            fs::read_to_string(dir.join("lib/lib.nix")).unwrap(),
            "{ }\n",
            "{dest}"
        );
        let head = ssh_ok(
            &world,
            &dest,
            &format!("git -C {} rev-parse HEAD", dir.display()),
        );
        assert_eq!(head.trim(), second, "{dest}");
    }
}

#[test]
fn tree_snapshots_show_what_changed() {
    let world = World::new();
    let root = world.mkdir("target");
    world.write("target/a/file", "one");
    std::os::unix::fs::symlink("a/file", root.join("link")).unwrap();
    let before = world.tree(&root);
    assert_eq!(before.paths(), [".", "a", "a/file", "link"]);
    assert_eq!(
        before.get("a/file").unwrap().kind,
        EntryKind::File(b"one".to_vec())
    );
    assert_eq!(
        before.get("link").unwrap().kind,
        EntryKind::Symlink("a/file".into())
    );
    assert_eq!(before, world.tree(&root));
    before.assert_unchanged(&world.tree(&root));

    world.write("target/a/file", "two");
    fs::set_permissions(root.join("a"), fs::Permissions::from_mode(0o700)).unwrap();
    world.write("target/new", "");
    let after = world.tree(&root);
    let diff = before.diff(&after);
    assert_eq!(diff.len(), 3, "{diff:#?}");
    assert!(diff[0].starts_with("changed a:"), "{diff:#?}");
    assert!(
        diff[1].starts_with("changed a/file: file \"one\""),
        "{diff:#?}"
    );
    assert!(diff[1].contains("=> file \"two\""), "{diff:#?}");
    assert!(diff[2].starts_with("added new:"), "{diff:#?}");
    let unchanged = std::panic::catch_unwind(|| before.assert_unchanged(&after));
    assert!(unchanged.is_err());

    // Touching a file shows only with modification times.
    let stamped = world.tree_with_mtimes(&root);
    thread::sleep(std::time::Duration::from_millis(20));
    world.write("target/a/file", "two");
    assert_eq!(world.tree(&root), after);
    assert_ne!(world.tree_with_mtimes(&root), stamped);

    assert!(Tree::snapshot(&world.path("nothing-here")).is_empty());
}

#[test]
fn the_world_is_gone_after_drop() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    world.pass_store();
    let root = world.root().to_owned();
    let port = alpha.port();
    drop(world);
    assert!(!root.exists(), "{} still exists", root.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "sshd still listens on {port}"
    );
}

#[test]
fn many_worlds_with_hosts_start_in_parallel() {
    let workers: Vec<_> = (0..4)
        .map(|i| {
            thread::spawn(move || {
                let world = World::new();
                let host = world.add_host(&format!("host{i}"));
                ssh_ok(&world, &host.dest("root"), "echo up")
                    .trim()
                    .to_owned()
            })
        })
        .collect();
    for worker in workers {
        assert_eq!(worker.join().unwrap(), "up");
    }
}

#[test]
fn the_tool_environment_is_fixed() {
    let world = World::new();
    let env = world.env();
    let path = format!("{}:", world.bin_dir().display());
    assert!(env["PATH"].starts_with(&path), "{env:?}");
    assert_eq!(env["HOME"], world.home().display().to_string());
    assert_eq!(env["LOGNAME"], "root");
    assert_eq!(env["USER"], "root");
    assert_eq!(env["HOSTNAME"], "origin");
    assert_eq!(env["TMPDIR"], world.tmp_dir().display().to_string());
    assert!(!env.contains_key("GNUPGHOME"));
    let printed = world.sh("env").assert_success().stdout_str();
    let mut seen: Vec<&str> = printed
        .lines()
        .filter_map(|line| line.split_once('=').map(|(key, _)| key))
        .filter(|key| !["PWD", "SHLVL", "_"].contains(key))
        .collect();
    seen.sort_unstable();
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(seen, keys);
}

#[test]
#[should_panic(expected = "binary no-such-tool not built")]
fn a_missing_tool_is_a_clear_panic() {
    World::new().tool("no-such-tool");
}
