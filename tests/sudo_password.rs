//! A sudo password (README: A sudo password): `--ask-sudo-password` and
//! `--sudo-password-file` on a target whose sudo rule asks for one (the
//! test user `krops-sudo-pw`, made by `scripts/test`), over real sshd with
//! the real sudo: every step that needs root gets it, a wrong one fails
//! once with sudo's message, and it never shows in any process's argv or
//! environment, the log, `--dry-run` or `--json`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krops_tests::{Output, World, SUDO_PASSWORD};
use serde_json::{json, Value};

/// A password file of the test's own, 0600, holding `password`.
fn password_file(world: &World, password: &str) -> PathBuf {
    let name = format!("secret/sudo-password-{}", password.len());
    let file = world.write(&name, format!("{password}\n"));
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    file
}

/// A target for the password user on `alias`, with sudo, at a directory
/// only root may write (so every write needs sudo).
fn root_only_target(world: &World, alias: &str) -> (String, PathBuf) {
    let user = world.sudo_password_user();
    let dest = world.mkdir(&format!("root-only-{alias}")).join("src");
    let target = json!({"user": user, "host": alias, "path": dest.to_str().unwrap(), "sudo": true});
    (target.to_string(), dest)
}

/// Sources of every kind that syncs differently: a file tree, a git
/// checkout, a pass store, a pipe and a symlink.
fn sources(world: &World) -> Value {
    world.write("cfg/configuration.nix", "{ }\n");
    let repo = world.git_repo("repo");
    repo.write("default.nix", "{ }\n");
    let commit = repo.commit("first");
    let pipe = world.write_executable("bin-gen/gen", "#!/bin/sh\necho generated\n");
    let pass = world.pass_store();
    pass.insert("hosts/alpha/key", "pass-secret");
    json!({
        "cfg": {"file": world.path("cfg").to_str().unwrap()},
        "repo": {"git": {"url": repo.url(), "ref": commit}},
        "secrets": {"pass": {"dir": pass.dir().to_str().unwrap(), "name": "hosts/alpha"}},
        "version": {"pipe": pipe.to_str().unwrap()},
        "link": {"symlink": "cfg"},
    })
}

/// What the sampler saw: processes whose argv or environment held the
/// password.
#[derive(Debug, Default)]
struct Seen {
    samples: usize,
    leaks: Vec<String>,
}

/// Reads every process's cmdline and environ, again and again, until
/// `stop`; notes each that holds `needle`.
fn sample(needle: &str, stop: &AtomicBool, seen: &Mutex<Seen>) {
    while !stop.load(Ordering::SeqCst) {
        let mut leaks = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            for what in ["cmdline", "environ"] {
                let Ok(bytes) = fs::read(entry.path().join(what)) else {
                    continue;
                };
                if String::from_utf8_lossy(&bytes).contains(needle) {
                    let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
                    // A test of the terminal question, running alongside,
                    // types the password with `tmux send-keys`: the test's
                    // own hands, not the tools.
                    if cmdline.starts_with(b"tmux\0") && find(&cmdline, b"\0send-keys\0") {
                        continue;
                    }
                    leaks.push(format!(
                        "{what} of {}: {}",
                        entry.path().display(),
                        String::from_utf8_lossy(&cmdline).replace('\0', " ")
                    ));
                }
            }
        }
        let mut seen = seen.lock().unwrap();
        seen.samples += 1;
        seen.leaks.extend(leaks);
        drop(seen);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `needle` is in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Runs `tool ARGS` while sampling every process for the password.
fn run_sampled(world: &World, tool: &str, args: &[&str]) -> (Output, Seen) {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sampler = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        std::thread::spawn(move || sample(SUDO_PASSWORD, &stop, &seen))
    };
    let out = world.run(tool, args, b"");
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (out, seen)
}

#[track_caller]
fn assert_no_password_in(out: &Output) {
    assert!(
        !out.stdout_str().contains(SUDO_PASSWORD) && !out.stderr_str().contains(SUDO_PASSWORD),
        "the password reached the output:\n{out}"
    );
}

/// Owner uid of `path` (not following a symlink).
fn owner(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .uid()
}

/// Reliability (Secrets): a sudo target whose sudo asks for a password, a file, git, pass, pipe and symlink source, the lock and the final command, `/proc/*/cmdline` and `environ` of every process sampled → every step ran as root with the password from `--sudo-password-file`; it is in no argv, environment, log or `--json`
#[test]
fn every_step_gets_the_password_and_no_process_shows_it() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let (target, dest) = root_only_target(&world, "alpha");
    let sources = world.write("sources.json", sources(&world).to_string());
    let file = password_file(&world, SUDO_PASSWORD);
    let results = world.path("results.json");
    let (out, seen) = run_sampled(
        &world,
        "krops-command",
        &[
            "--target",
            &target,
            "--force",
            "--sudo-password-file",
            file.to_str().unwrap(),
            "--sources",
            sources.to_str().unwrap(),
            "--json-file",
            results.to_str().unwrap(),
            // Root's, under the lock the run holds.
            "id -u; test -e \"$1/.populate-lock\" && echo locked; cat \"$1/version\"",
        ],
    );
    out.assert_success();
    assert_eq!(out.stdout_str(), "0\nlocked\ngenerated\n", "{out}");
    assert!(seen.samples > 10, "the sampler hardly ran: {seen:?}");
    assert!(seen.leaks.is_empty(), "{:#?}", seen.leaks);
    assert_no_password_in(&out);
    let document = fs::read_to_string(&results).unwrap();
    assert!(!document.contains(SUDO_PASSWORD), "{document}");
    // Everything arrived, and is root's: it went through sudo.
    for name in [
        "cfg/configuration.nix",
        "repo/default.nix",
        "secrets/key",
        "version",
        "link",
        ".populate-lock",
    ] {
        assert_eq!(owner(&dest.join(name)), 0, "{name}");
    }
    assert_eq!(
        fs::read_to_string(dest.join("secrets/key")).unwrap(),
        "pass-secret"
    );
    assert_eq!(fs::read_link(dest.join("link")).unwrap(), Path::new("cfg"));
    // rsync's remote shell took its FIFO's dir with it, and no relay runs.
    world.assert_nothing_left();
    // A second run over the synced tree (rsync's no-op, git already there).
    world
        .run(
            "populate",
            &[
                "--target",
                &target,
                "--sudo-password-file",
                file.to_str().unwrap(),
                "--sources",
                sources.to_str().unwrap(),
            ],
            b"",
        )
        .assert_success();
}

/// Reliability (Secrets): a wrong sudo password in `--sudo-password-file` → the run fails at once, sudo's own message said once, no hang; nothing is written on the target
#[test]
fn a_wrong_password_fails_once_with_sudo_s_message() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let (target, dest) = root_only_target(&world, "alpha");
    let sources = world.write("sources.json", sources(&world).to_string());
    let file = password_file(&world, "not the password");
    let started = Instant::now();
    let out = world.run(
        "krops-deploy",
        &[
            "--target",
            &target,
            "--force",
            "--nom",
            "false",
            "--sudo-password-file",
            file.to_str().unwrap(),
            "--sources",
            sources.to_str().unwrap(),
        ],
        b"",
    );
    out.assert_failure();
    assert!(started.elapsed() < Duration::from_secs(30), "{out}");
    let stderr = out.stderr_str();
    assert_eq!(
        stderr.matches("incorrect password attempt").count(),
        1,
        "{out}"
    );
    assert!(
        stderr.contains("refused the password of krops-sudo-pw"),
        "{out}"
    );
    assert!(!stderr.contains("not the password"), "{out}");
    assert!(!dest.exists(), "{out}");
    assert!(world.records("nixos-rebuild").is_empty());
}

/// `--ask-sudo-password` without a terminal, and password files that are
/// not one's own and private: refused before anything connects (exit 2).
#[test]
fn a_password_that_cannot_be_had_safely_is_refused_before_anything_runs() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let (target, dest) = root_only_target(&world, "alpha");
    let sources = world.write("sources.json", sources(&world).to_string());
    let before = world.handshakes("alpha");
    let base = [
        "--target",
        &target,
        "--force",
        "--sources",
        sources.to_str().unwrap(),
    ];
    // No controlling terminal: setsid.
    let mut cmd = world.command("setsid");
    cmd.arg("-w")
        .arg(world.tool("krops-command"))
        .args(base)
        .arg("--ask-sudo-password");
    let out = world.run_command(&mut cmd, b"");
    out.assert_code(2)
        .assert_stderr_contains("--ask-sudo-password: there is no terminal to ask on");
    // Readable by others.
    let file = password_file(&world, SUDO_PASSWORD);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let file_arg = file.to_str().unwrap();
    let out = world.run(
        "populate",
        &[&base[..], &["--sudo-password-file", file_arg]].concat(),
        b"",
    );
    out.assert_code(2)
        .assert_stderr_contains("--sudo-password-file")
        .assert_stderr_contains("others may read or write it (mode 0644): refused");
    // Another user's.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let user = world.sudo_password_user();
    let chown = Command::new("chown").arg(user).arg(&file).status().unwrap();
    assert!(chown.success());
    let out = world.run(
        "krops-deploy",
        &[&base[..], &["--sudo-password-file", file_arg]].concat(),
        b"",
    );
    out.assert_code(2)
        .assert_stderr_contains("not to you (uid 0): refused");
    // Missing, and empty.
    let out = world.run(
        "krops-command",
        &[&base[..], &["--sudo-password-file", "/nonexistent/pw"]].concat(),
        b"",
    );
    out.assert_code(2)
        .assert_stderr_contains("--sudo-password-file /nonexistent/pw: cannot open it");
    let empty = password_file(&world, "");
    let out = world.run(
        "populate",
        &[
            &base[..],
            &["--sudo-password-file", empty.to_str().unwrap()],
        ]
        .concat(),
        b"",
    );
    out.assert_code(2)
        .assert_stderr_contains("the password is empty");
    assert_eq!(world.handshakes("alpha"), before, "something connected");
    assert!(!dest.exists());
}

/// `--sudo-password-file /dev/stdin` where stdin already carries the
/// sources or the fleet (`--fleet -`), or is a terminal: a usage error
/// saying so, before anything connects, instead of a password read from
/// the sources' text, an empty one, or one echoed as it is typed.
#[test]
fn a_password_on_stdin_shares_it_with_no_sources_and_no_fleet() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let (target, dest) = root_only_target(&world, "alpha");
    let sources = sources(&world);
    let before = world.handshakes("alpha");
    let input = format!("{SUDO_PASSWORD}\n{sources}");
    for stdin in ["/dev/stdin", "/proc/self/fd/0"] {
        let out = world.run(
            "krops-command",
            &[
                "--target",
                &target,
                "--force",
                "--sudo-password-file",
                stdin,
                "id -u",
            ],
            input.as_bytes(),
        );
        out.assert_code(2).assert_stderr_contains(&format!(
            "--sudo-password-file {stdin}: stdin carries the sources here; give them with \
             --sources FILE"
        ));
        assert_no_password_in(&out);
    }
    let fleet = json!({"alpha": {"target": serde_json::from_str::<Value>(&target).unwrap(),
                                 "source": sources, "force": true}});
    let out = world.run(
        "krops-deploy",
        &["--fleet", "-", "--sudo-password-file", "/dev/stdin"],
        fleet.to_string().as_bytes(),
    );
    out.assert_code(2).assert_stderr_contains(
        "--sudo-password-file /dev/stdin: stdin carries the fleet here (--fleet -); give the \
         fleet as a file",
    );
    assert_eq!(world.handshakes("alpha"), before, "something connected");
    assert!(!dest.exists());
    // /dev/stdin on a terminal (util-linux `script` gives one): read as a
    // file, the password would show as typed.
    let file = world.write("sources.json", sources.to_string());
    let line = [
        world.tool("krops-command").to_str().unwrap(),
        "--target",
        &target,
        "--force",
        "--sources",
        file.to_str().unwrap(),
        "--sudo-password-file",
        "/dev/stdin",
        "id -u",
    ]
    .map(|word| krops_tests::quote(std::ffi::OsStr::new(word)))
    .join(" ");
    let mut cmd = world.command("script");
    cmd.args(["-qec", &line, "/dev/null"]);
    let out = world.run_command(&mut cmd, b"");
    // The terminal has the tool's stderr too; script copies it to stdout.
    out.assert_code(2);
    assert!(
        out.stdout_str().contains(
            "--sudo-password-file /dev/stdin: it is a terminal, which would show the password as \
             it is typed: use --ask-sudo-password, which asks without echo"
        ),
        "{out}"
    );
    assert_eq!(world.handshakes("alpha"), before, "something connected");
    // With the sources in a file, /dev/stdin is the password's alone (a
    // CRLF line end too).
    let out = world.run(
        "krops-command",
        &[
            "--target",
            &target,
            "--force",
            "--sources",
            file.to_str().unwrap(),
            "--sudo-password-file",
            "/dev/stdin",
            "id -u",
        ],
        format!("{SUDO_PASSWORD}\r\n").as_bytes(),
    );
    out.assert_success();
    assert_eq!(out.stdout_str(), "0\n", "{out}");
    assert!(dest.exists());
}

/// Reliability (Secrets): a fleet given a sudo password, one host a root target with no sudo whose script reads its stdin, and one host alone with the password on /dev/stdin → the password reaches no target that needs none, nor the output
#[test]
fn a_target_without_sudo_never_gets_the_password() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let _beta = world.add_host("beta");
    let source = sources(&world);
    let (sudo_target, _) = root_only_target(&world, "alpha");
    let root_target = json!({"user": "root", "host": "beta",
                             "path": world.path("beta/src").to_str().unwrap()});
    let fleet = json!({
        "alpha": {"target": serde_json::from_str::<Value>(&sudo_target).unwrap(),
                  "source": source, "force": true},
        "beta": {"target": root_target, "source": source, "force": true},
    });
    let fleet = world.write("fleet.json", fleet.to_string());
    let file = password_file(&world, SUDO_PASSWORD);
    // The script shows whatever reaches its stdin.
    let script = "timeout 10 cat; echo end of stdin";
    let out = world.run(
        "krops-command",
        &[
            "--fleet",
            fleet.to_str().unwrap(),
            "--sudo-password-file",
            file.to_str().unwrap(),
            script,
        ],
        b"",
    );
    out.assert_success();
    assert_no_password_in(&out);
    let stdout = out.stdout_str();
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["alpha | end of stdin", "beta | end of stdin"],
        "{out}"
    );
    // Alone, with the password on stdin.
    let sources = world.write("sources.json", source.to_string());
    let out = world.run(
        "krops-command",
        &[
            "--target",
            &root_target.to_string(),
            "--force",
            "--sources",
            sources.to_str().unwrap(),
            "--sudo-password-file",
            "/dev/stdin",
            script,
        ],
        format!("{SUDO_PASSWORD}\n").as_bytes(),
    );
    out.assert_success();
    assert_no_password_in(&out);
    assert_eq!(out.stdout_str(), "end of stdin\n", "{out}");
}

/// `--dry-run` shows where the password is given (`sudo_password |`, and
/// sudo.sh on the target), never its value, and asks for none.
#[test]
fn dry_run_shows_where_the_password_goes_and_not_the_password() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let (target, _dest) = root_only_target(&world, "alpha");
    let sources = world.write("sources.json", sources(&world).to_string());
    let file = password_file(&world, SUDO_PASSWORD);
    for how in [
        vec!["--ask-sudo-password"],
        vec!["--sudo-password-file", file.to_str().unwrap()],
    ] {
        let args = [
            &[
                "--target",
                &target,
                "--dry-run",
                "--sources",
                sources.to_str().unwrap(),
            ][..],
            &how,
        ]
        .concat();
        let out = world.run("krops-command", &args, b"");
        out.assert_success();
        let script = out.stdout_str();
        assert_no_password_in(&out);
        // Every step, rsync's remote shell, the pipe and the final command.
        assert!(script.contains("sudo_password | ssh "), "{script}");
        assert!(script.contains("krops_rsh"), "{script}");
        assert!(script.contains("{ sudo_password; "), "{script}");
        assert!(script.contains("sudo -S -p "), "{script}");
        let shell = Command::new("/bin/sh")
            .arg("-n")
            .arg("-c")
            .arg(&script)
            .status();
        assert!(shell.unwrap().success(), "{script}");
    }
}

/// A fleet asks once and gives the password to every host's run (on its
/// stdin: never in an argv); the nixos-rebuild it runs reads nothing of it.
#[test]
fn a_fleet_gives_the_password_to_every_host() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let _beta = world.add_host("beta");
    let source = sources(&world);
    let mut fleet = serde_json::Map::new();
    for alias in ["alpha", "beta"] {
        let (target, _) = root_only_target(&world, alias);
        fleet.insert(
            alias.to_owned(),
            json!({"target": serde_json::from_str::<Value>(&target).unwrap(), "source": source, "force": true}),
        );
    }
    let fleet = world.write("fleet.json", Value::Object(fleet).to_string());
    let file = password_file(&world, SUDO_PASSWORD);
    let (out, seen) = run_sampled(
        &world,
        "krops-deploy",
        &[
            "--fleet",
            fleet.to_str().unwrap(),
            "--nom",
            "false",
            "--sudo-password-file",
            file.to_str().unwrap(),
        ],
    );
    out.assert_success();
    assert!(seen.leaks.is_empty(), "{:#?}", seen.leaks);
    assert_no_password_in(&out);
    let records = world.records("nixos-rebuild");
    assert_eq!(records.len(), 2, "{out}");
    for record in records {
        assert_eq!(record.uid, 0);
        assert!(record.stdin.is_empty(), "{:?}", record.stdin);
    }
}

/// A target on a world NixOS machine for the password user, with sudo,
/// reached with the world's ssh config also by nixos-rebuild's own ssh.
fn nixos_password_target(world: &World, alias: &str) -> String {
    json!({
        "user": world.sudo_password_user(), "host": alias,
        "path": world.path(&format!("{alias}/src")).to_str().unwrap(), "sudo": true,
        "extraOptions": ["-F", world.ssh_config().to_str().unwrap()],
    })
    .to_string()
}

/// The real nixos-rebuild switches a sudo target whose sudo wants a
/// password: as root, through krops's sudo with the password, which its
/// own `--use-remote-sudo` (root's sudo) then needs no more.
#[test]
fn the_real_nixos_rebuild_switches_a_sudo_target_with_a_password() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    world.add_nixos_host("alpha");
    world.boot_nixos_host("alpha", &world.real_system(&rr, "v1"));
    let v2 = world.real_system(&rr, "v2");
    let sources = world.write("sources.json", world.real_sources(&rr, "v2").to_string());
    let target = nixos_password_target(&world, "alpha");
    let file = password_file(&world, SUDO_PASSWORD);
    let (out, seen) = run_sampled(
        &world,
        "krops-deploy",
        &[
            "--target",
            &target,
            "--force",
            "--nom",
            "false",
            "--cross-deploy",
            "--sudo-password-file",
            file.to_str().unwrap(),
            "--sources",
            sources.to_str().unwrap(),
        ],
    );
    out.assert_success();
    assert!(seen.leaks.is_empty(), "{:#?}", seen.leaks);
    assert_no_password_in(&out);
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2));
    let log = fs::read_to_string(rr.root().join("log/activations.log")).unwrap();
    assert!(log.contains(" uid=0 "), "{log}");
    rr.assert_machine_untouched();
}

/// With a separate build target, nixos-rebuild would run sudo on the
/// target over its own `ssh -t`, where no password can reach it: the
/// deploy builds there, copies the system, and activates it on the target
/// through krops's sudo with the password.
#[test]
fn a_build_target_deploys_to_a_sudo_target_with_a_password() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    world.add_nixos_host("alpha");
    world.boot_nixos_host("alpha", &world.real_system(&rr, "v1"));
    let beta = world.add_nixos_host("beta");
    let v2 = world.real_system(&rr, "v2");
    let sources = world.write("sources.json", world.real_sources(&rr, "v2").to_string());
    let target = nixos_password_target(&world, "alpha");
    let file = password_file(&world, SUDO_PASSWORD);
    let (out, seen) = run_sampled(
        &world,
        "krops-deploy",
        &[
            "--target",
            &target,
            "--build-target",
            &beta.target("root", &world.path("beta/src")),
            "--force",
            "--nom",
            "false",
            "--sudo-password-file",
            file.to_str().unwrap(),
            "--sources",
            sources.to_str().unwrap(),
        ],
    );
    out.assert_success();
    assert!(seen.leaks.is_empty(), "{:#?}", seen.leaks);
    assert_no_password_in(&out);
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2));
    assert_eq!(world.current_system("beta"), None);
    // nixos-rebuild only built, on beta; alpha was activated as root.
    let records = world.records("nixos-rebuild");
    let argvs: Vec<Vec<String>> = records.iter().map(|r| r.argv.clone()).collect();
    assert!(
        argvs
            .iter()
            .all(|argv| !argv.iter().any(|a| a == "--target-host")),
        "{argvs:?}"
    );
    let log = fs::read_to_string(rr.root().join("log/activations.log")).unwrap();
    assert!(log.contains(" uid=0 "), "{log}");
    rr.assert_machine_untouched();
}

/// Runs `tool ARGS` on a terminal of tmux's (stdout to a
/// file) and types `keys` once the password prompt shows (`WAIT:TEXT`
/// waits until the screen shows TEXT); returns the screen, the exit
/// status and stdout.
fn typed_on_terminal(
    world: &World,
    tool: &str,
    args: &[&str],
    keys: &[&str],
) -> (String, i32, String) {
    let dir = world.mkdir("tty");
    let mut line = String::from("env -i");
    for (key, value) in world.env() {
        line.push(' ');
        line.push_str(&krops_tests::quote(std::ffi::OsStr::new(&format!(
            "{key}={value}"
        ))));
    }
    line.push(' ');
    line.push_str(&krops_tests::quote(world.tool(tool).as_os_str()));
    for arg in args {
        line.push(' ');
        line.push_str(&krops_tests::quote(std::ffi::OsStr::new(arg)));
    }
    let q = |path: &Path| krops_tests::quote(path.as_os_str());
    let script = world.write_executable(
        "tty/run",
        format!(
            "#!/bin/sh\ncd {root}\n{line} >{out}\necho $? >{code}.tmp\nmv {code}.tmp {code}\necho KROPS-TTY-DONE\n",
            root = q(world.root()),
            out = q(&dir.join("stdout")),
            code = q(&dir.join("code")),
        ),
    );
    let config = world.write(
        "tty/tmux.conf",
        "set -g remain-on-exit on\nset -g status off\n",
    );
    let socket = dir.join("tmux.sock");
    let tmux = |args: &[&str]| {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&socket).arg("-f").arg(&config).args(args);
        cmd.env("TERM", "xterm-256color");
        cmd
    };
    world
        .run_command(
            tmux(&["new-session", "-d", "-x", "200", "-y", "50"]).arg(&script),
            b"",
        )
        .assert_success();
    let capture = || {
        world
            .run_command(&mut tmux(&["capture-pane", "-p", "-J", "-S", "-"]), b"")
            .stdout_str()
    };
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // What the target's terminal shows goes to ssh's stdout.
            let shown = fs::read_to_string(dir.join("stdout")).unwrap_or_default();
            let text = capture();
            if text.contains(what) || shown.contains(what) {
                return text;
            }
            if Instant::now() > deadline {
                let _ = world.run_command(&mut tmux(&["kill-server"]), b"");
                panic!("{tool} never showed {what:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("password for the targets:");
    for key in keys {
        if let Some(what) = key.strip_prefix("WAIT:") {
            wait_for(what);
            continue;
        }
        let mut args = vec!["send-keys", "-t", "0"];
        if !key.starts_with("C-") && *key != "Enter" {
            args.push("-l");
        }
        args.push(key);
        world.run_command(&mut tmux(&args), b"").assert_success();
    }
    let text = wait_for("KROPS-TTY-DONE");
    let _ = world.run_command(&mut tmux(&["kill-server"]), b"");
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
    (text, read("code").trim().parse().unwrap(), read("stdout"))
}

/// `--ask-sudo-password` asks once on the terminal, without echo, for a
/// whole fleet; Ctrl-C at the question ends the run before anything ran.
#[test]
fn the_password_is_asked_once_on_the_terminal_without_echo() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let _beta = world.add_host("beta");
    let source = sources(&world);
    let mut fleet = serde_json::Map::new();
    for alias in ["alpha", "beta"] {
        let (target, _) = root_only_target(&world, alias);
        fleet.insert(
            alias.to_owned(),
            json!({"target": serde_json::from_str::<Value>(&target).unwrap(), "source": source,
                   "force": true, "command": "id -u"}),
        );
    }
    let fleet = world.write("fleet.json", Value::Object(fleet).to_string());
    let args = ["--fleet", fleet.to_str().unwrap(), "--ask-sudo-password"];
    let (screen, code, stdout) =
        typed_on_terminal(&world, "krops-command", &args, &[SUDO_PASSWORD, "Enter"]);
    assert_eq!(code, 0, "{screen}");
    assert_eq!(
        screen.matches("password for the targets:").count(),
        1,
        "{screen}"
    );
    assert!(!screen.contains(SUDO_PASSWORD), "echoed:\n{screen}");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, ["alpha | 0", "beta | 0"], "{screen}");
    // Ctrl-C at the question: nothing runs.
    let before = world.handshakes("alpha");
    fs::remove_dir_all(world.path("tty")).unwrap();
    let (screen, code, _) = typed_on_terminal(&world, "krops-command", &args, &["abc", "C-c"]);
    assert_eq!(code, 130, "{screen}");
    assert!(screen.contains("interrupted: nothing was done"), "{screen}");
    assert_eq!(world.handshakes("alpha"), before);
}

/// A confirmed switch on a sudo target with a password: the watchdog
/// starts through sudo with it, and the confirmation over a new
/// connection gets it too.
#[test]
fn a_confirmed_switch_on_a_sudo_target_with_a_password() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    world.add_nixos_host("alpha");
    world.boot_nixos_host("alpha", &world.real_system(&rr, "v1"));
    let v2 = world.real_system(&rr, "v2");
    let sources = world.write("sources.json", world.real_sources(&rr, "v2").to_string());
    let target = nixos_password_target(&world, "alpha");
    let file = password_file(&world, SUDO_PASSWORD);
    let out = world.run(
        "krops-deploy",
        &[
            "--target",
            &target,
            "--force",
            "--nom",
            "false",
            "--cross-deploy",
            "--confirm-timeout",
            "30",
            "--check",
            "id -u",
            "--sudo-password-file",
            file.to_str().unwrap(),
            "--sources",
            sources.to_str().unwrap(),
        ],
        b"",
    );
    out.assert_success();
    assert_no_password_in(&out);
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2));
    rr.assert_machine_untouched();
}

/// With `--allocate-tty`, the populate steps get the password and the
/// script's own sudo asks on the terminal itself.
#[test]
fn with_a_terminal_for_the_script_its_sudo_asks_there() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let (target, dest) = root_only_target(&world, "alpha");
    let sources = world.write("sources.json", sources(&world).to_string());
    let args = [
        "--target",
        &target,
        "--force",
        "--sources",
        sources.to_str().unwrap(),
        "--ask-sudo-password",
        "--allocate-tty",
        "id -u > \"$1/who\"",
    ];
    let keys = [
        SUDO_PASSWORD,
        "Enter",
        "WAIT:password for krops-sudo-pw",
        SUDO_PASSWORD,
        "Enter",
    ];
    let (screen, code, stdout) = typed_on_terminal(&world, "krops-command", &args, &keys);
    assert_eq!(code, 0, "{screen}");
    assert!(!screen.contains(SUDO_PASSWORD), "echoed:\n{screen}");
    assert!(!stdout.contains(SUDO_PASSWORD), "echoed:\n{stdout}");
    assert_eq!(fs::read_to_string(dest.join("who")).unwrap(), "0\n");
    assert_eq!(owner(&dest.join("repo/default.nix")), 0);
}

/// Reliability (Interrupt): SIGINT, then SIGTERM, during an rsync to a sudo target with a password → exit 130 / 143; rsync, its remote shell's relay and ssh stopped, its FIFO's dir gone, TMPDIR empty; a rerun syncs all of it
#[test]
fn signals_during_an_rsync_with_a_password_leave_nothing_behind() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let flag = world.slow_rsync();
    world.write("tree/small", "small\n");
    world
        .sh(&format!(
            "head -c 20000000 /dev/urandom > {}",
            world.path("tree/big").display()
        ))
        .assert_success();
    let sources = world.write(
        "sources.json",
        json!({"tree": {"file": world.path("tree").to_str().unwrap()}}).to_string(),
    );
    let (target, dest) = root_only_target(&world, "alpha");
    let file = password_file(&world, SUDO_PASSWORD);
    let args = [
        "--target",
        &target,
        "--force",
        "--sudo-password-file",
        file.to_str().unwrap(),
        "--sources",
        sources.to_str().unwrap(),
    ];
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let (status, stderr) = world.signal_once(
            "populate",
            &args,
            || krops_tests::receiving_big(&dest.join("tree")),
            signal,
        );
        assert_eq!(status, Some(code), "SIG{signal}: {stderr}");
        world.assert_nothing_left();
    }
    fs::remove_file(flag).unwrap();
    world.run("populate", &args, b"").assert_success();
    world.assert_nothing_left();
    assert_eq!(
        fs::metadata(dest.join("tree/big")).unwrap().len(),
        20_000_000
    );
    assert_eq!(owner(&dest.join("tree/big")), 0);
}
