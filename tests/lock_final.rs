//! End-to-end: the lock on a target lasts as long as the final command it
//! guards, on the target (README: Sources, the lock). A run stopped (Ctrl-C) or killed
//! (`kill -9`) during its final command leaves that command running there;
//! the next run waits for it, says that it does, and populates only once
//! the command has ended.
//!
//! No test here depends on timing: the first run's final command waits for
//! a file the test writes once the second run said that it waits, and the
//! order of what ran is read from the times the commands themselves wrote.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use krops_tests::{finish, processes_with, World};
use serde_json::json;

/// How long a command of a test waits for what it waits for before giving
/// up (a failing test then fails instead of hanging), in tenths of seconds.
const PATIENCE_TENTHS: u32 = 900;

/// Shell text that appends `NAME NANOS` to the world's events file.
fn event(world: &World, name: &str) -> String {
    format!(
        "echo \"{name} $(date +%s%N)\" >>'{}'",
        world.path("events").display()
    )
}

/// Shell text that waits (bounded) until `file` exists.
fn wait_until(file: &Path) -> String {
    format!(
        "i=0; until test -e '{}'; do i=$((i + 1)); test $i -lt {PATIENCE_TENTHS} || break; \
         sleep 0.1; done",
        file.display()
    )
}

fn text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Waits (up to two minutes) until `ready()`, or panics saying `what`.
#[track_caller]
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}");
}

/// Sends `signal` (`KILL`, `INT`) to `child` and waits for it.
fn signal(child: &mut Child, signal: &str) {
    let kill = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    child.wait().unwrap();
}

/// A pipe source that records `NAME populate` when the run syncs it.
fn recording_sources(world: &World, name: &str) -> PathBuf {
    let pipe = world.write_executable(
        &format!("gen/{name}"),
        format!(
            "#!/bin/sh\n{}\necho {name}\n",
            event(world, &format!("{name} populate"))
        ),
    );
    world.write(
        &format!("sources-{name}.json"),
        json!({"gen": {"pipe": pipe.to_str().unwrap()}}).to_string(),
    )
}

/// Run A, stopped by `how` while its final command runs; run B, started
/// then, must wait until that command ended and say what it waits for.
/// `args` are each run's options (target, sources) before its own;
/// `a_final` the shell text of A's final command.
struct Case<'w> {
    world: &'w World,
    tool: &'static str,
    target: String,
    /// What the waiting message calls the target path.
    place: String,
    how: &'static str,
    /// Appears once A's final command runs.
    started: PathBuf,
    /// Ends A's final command.
    release: PathBuf,
}

impl Case<'_> {
    fn run(&self, a_args: &[String], b_args: &[String]) -> String {
        let world = self.world;
        let (a_err, b_err) = (world.path("a.err"), world.path("b.err"));
        let mut a = world.spawn(self.tool, a_args, &a_err);
        wait_for(
            &format!("A's final command never started:\n{}", text(&a_err)),
            || self.started.exists(),
        );
        let a_pid = a.id();
        signal(&mut a, self.how);
        if self.how == "INT" {
            // Its message says what goes on, and that it keeps the lock.
            let a_log = text(&a_err);
            assert!(
                a_log.contains("may still be running there")
                    && a_log.contains(&format!(
                        "and keeps the lock on {} until it ends",
                        self.place
                    )),
                "{a_log}"
            );
        }
        let mut b = world.spawn(self.tool, b_args, &b_err);
        // B waits, and says for what: A's final command, which runs on.
        let waiting = format!(
            "populate: waiting for the lock on {}, held by root@origin (pid {a_pid}, run ",
            self.place
        );
        wait_for(
            &format!("{}: B never said it waits:\n{}", self.how, text(&b_err)),
            || {
                let said = text(&b_err).lines().any(|line| {
                    line.starts_with(&waiting) && line.contains("running its final command since ")
                });
                if !said && b.try_wait().unwrap().is_some() {
                    panic!(
                        "{}: B ended without waiting for A's final command:\n{}\nA:\n{}\n{:?}",
                        self.how,
                        text(&b_err),
                        text(&a_err),
                        world.timeline()
                    );
                }
                said
            },
        );
        fs::write(&self.release, "").unwrap();
        let code = finish(b, &b_err);
        let b_log = text(&b_err);
        assert_eq!(code, Some(0), "{}: B failed:\n{b_log}", self.how);
        assert!(b_log.contains("populate: got the lock on "), "{b_log}");
        b_log
    }
}

/// Reliability (Interrupt): krops-command killed (SIGKILL, SIGINT) during its script, remote, local and under sudo → the script keeps the lock on the target until it ends; the next run waits, says it waits for that run's final command, and populates only after it
#[test]
fn a_stopped_command_run_keeps_the_lock_until_its_script_ends() {
    for (where_, how) in [
        ("remote", "KILL"),
        ("remote", "INT"),
        ("local", "KILL"),
        ("sudo", "KILL"),
    ] {
        let world = World::new();
        let alpha = world.add_host("alpha");
        let (target, dest) = match where_ {
            "remote" => {
                let dest = world.path("src");
                (alpha.target("root", &dest), dest)
            }
            "local" => {
                let dest = world.path("src");
                (dest.display().to_string(), dest)
            }
            _ => {
                let dest = world.mkdir("root-owned").join("src");
                let target = json!({"user": world.sudo_user(), "host": "alpha",
                                    "path": dest.to_str().unwrap(), "sudo": true});
                (target.to_string(), dest)
            }
        };
        let place = if where_ == "local" {
            dest.display().to_string()
        } else {
            format!("alpha:{}", dest.display())
        };
        let case = Case {
            world: &world,
            tool: "krops-command",
            target: target.clone(),
            place,
            how,
            started: world.path("a-started"),
            release: world.path("release"),
        };
        // A's script prints after the kill too, when nobody reads its
        // output any more: that must not kill it (SIGPIPE).
        let a_script = format!(
            "{}; touch '{}'; {}; echo 'A prints on'; echo 'A says more' >&2; {}",
            event(&world, "A final start"),
            case.started.display(),
            wait_until(&case.release),
            event(&world, "A final end")
        );
        let b_script = event(&world, "B final");
        let a_sources = world.write("sources-a.json", json!({"l": {"symlink": "x"}}).to_string());
        let b_sources = recording_sources(&world, "B");
        let args = |sources: &Path, more: &[&str], script: &str| -> Vec<String> {
            let mut args = vec![
                "--target".to_owned(),
                case.target.clone(),
                "--sources".to_owned(),
                sources.display().to_string(),
            ];
            args.extend(more.iter().map(|s| s.to_string()));
            args.push(script.to_owned());
            args
        };
        case.run(
            &args(&a_sources, &["--force"], &a_script),
            &args(&b_sources, &["--lock-timeout", "120"], &b_script),
        );
        assert_eq!(
            world.timeline(),
            ["A final start", "A final end", "B populate", "B final"],
            "{where_}, SIG{how}"
        );
        assert_eq!(text(&dest.join("gen")), "B\n");
        world.assert_no_processes_left();
    }
}

/// Reliability (Interrupt): krops-deploy stopped (SIGINT, SIGKILL) while nixos-rebuild runs → the rebuild keeps the lock on the target until it ends; the next deploy waits for it and never rebuilds or populates at the same time
#[test]
fn a_stopped_deploy_keeps_the_lock_until_its_rebuild_ends() {
    for how in ["INT", "KILL"] {
        let world = World::new();
        let alpha = world.add_host("alpha");
        let dest = world.path("src");
        let target = alpha.target("root", &dest);
        let (started, release) = (world.path("a-started"), world.path("release"));
        // A system whose activation waits for the test: the recorder's
        // nixos-rebuild runs its switch-to-configuration.
        world.write_executable(
            "slow-system/bin/switch-to-configuration",
            format!(
                "#!/bin/sh\n{}\ntouch '{}'\n{}\n{}\n",
                event(&world, "activation start"),
                started.display(),
                wait_until(&release),
                event(&world, "activation end")
            ),
        );
        world.set_rebuild_system(&world.path("slow-system"));
        let case = Case {
            world: &world,
            tool: "krops-deploy",
            target: target.clone(),
            place: format!("alpha:{}", dest.display()),
            how,
            started,
            release,
        };
        let a_sources = world.write("sources-a.json", json!({"l": {"symlink": "x"}}).to_string());
        let b_sources = recording_sources(&world, "B");
        let args = |sources: &Path, more: &[&str]| -> Vec<String> {
            let mut args = vec![
                "--target".to_owned(),
                target.clone(),
                "--nom".to_owned(),
                "false".to_owned(),
                "--sources".to_owned(),
                sources.display().to_string(),
            ];
            args.extend(more.iter().map(|s| s.to_string()));
            args
        };
        case.run(
            &args(&a_sources, &["--force"]),
            &args(&b_sources, &["--lock-timeout", "120"]),
        );
        assert_eq!(
            world.timeline(),
            [
                "rebuild start",
                "activation start",
                "activation end",
                "rebuild end",
                "B populate",
                "rebuild start",
                "activation start",
                "activation end",
                "rebuild end",
            ],
            "SIG{how}"
        );
        world.assert_no_processes_left();
    }
}

/// A run's lock goes with its end, final command included, and
/// `--no-lock` runs the final command under no lock: the next run never
/// waits.
#[test]
fn a_finished_run_lets_go_and_no_lock_takes_none() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    for extra in [&["--force"][..], &[][..]] {
        let mut args = vec!["--target", &target, "--lock-timeout", "0"];
        args.extend(extra);
        args.push("printf '%s\\n' \"$1\"");
        let out = world.run("krops-command", &args, b"{}");
        out.assert_success();
        assert_eq!(out.stdout_str(), format!("{}\n", dest.display()));
        assert!(!out.stderr_str().contains("waiting"), "{out}");
    }
    let holder = text(&dest.join(".populate-lock"));
    assert!(
        holder.starts_with("root@origin (pid ")
            && holder.contains("; running its final command since "),
        "{holder:?}"
    );
    assert_eq!(holder.len(), 200, "{holder:?}");
    let fresh = world.path("fresh");
    let out = world.run(
        "krops-command",
        &[
            "--target",
            &alpha.target("root", &fresh),
            "--force",
            "--no-lock",
            "ls -A \"$1\"",
        ],
        b"{}",
    );
    out.assert_success();
    assert_eq!(out.stdout_str(), ".populate\n", "{out}");
}

/// A final command that starts a daemon with its output redirected (as a
/// daemon must be started over ssh anyway) ends, and with it the lock: the
/// daemon holds nothing of it, and the next run goes through while the
/// daemon still runs, over ssh and on a path with spaces.
#[test]
fn a_daemon_the_final_command_leaves_holds_no_lock() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("with space/src");
    let target = alpha.target("root", &dest);
    let pid_file = world.path("daemon.pid");
    let nap = format!("1002{}", std::process::id());
    let script = format!(
        "sleep {nap} >/dev/null 2>&1 </dev/null & echo $! >{}",
        krops_tests::quote(pid_file.as_os_str())
    );
    world
        .run(
            "krops-command",
            &["--target", &target, "--force", &script],
            b"{}",
        )
        .assert_success();
    let daemon = fs::read_to_string(&pid_file).unwrap();
    let daemon = daemon.trim();
    let alive = world.sh(&format!("kill -0 {daemon}")).success();
    let second = world.run(
        "krops-command",
        &["--target", &target, "--lock-timeout", "0", "echo second"],
        b"{}",
    );
    for line in processes_with(&format!("sleep {nap}")) {
        let pid = line.split(' ').next().unwrap();
        world.sh(&format!("kill -KILL {pid}"));
    }
    assert!(alive, "the daemon ended with the run");
    second.assert_success();
    assert_eq!(second.stdout_str(), "second\n");
}

/// What a final command prints and how it ends pass through the guard's
/// relays unchanged over ssh: binary output without a trailing newline on
/// stdout and stderr, exit status 3, and death by a signal (which ssh
/// reports as 255).
#[test]
fn a_final_commands_bytes_and_status_pass_the_guard_unchanged() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("src"));
    let bytes = world.path("bytes");
    let script = format!(
        "head -c 300000 /dev/urandom >{b}; cat {b}; printf x; cat {b} >&2; exit 3",
        b = krops_tests::quote(bytes.as_os_str())
    );
    let out = world.run(
        "krops-command",
        &["--target", &target, "--force", &script],
        b"{}",
    );
    out.assert_code(3);
    let mut want = fs::read(&bytes).unwrap();
    let printed = want.clone();
    want.push(b'x');
    assert!(out.stdout == want, "stdout changed on the way");
    assert!(
        out.stderr.windows(printed.len()).any(|w| w == printed),
        "stderr changed on the way"
    );
    let out = world.run(
        "krops-command",
        &["--target", &target, "kill -TERM $$"],
        b"{}",
    );
    // ssh itself exits 255 for a command killed by a signal, as without
    // the guard: the guard kills itself with the same signal.
    out.assert_code(255)
        .assert_stderr_contains("or the command was killed by a signal on the target");
}

/// `krops-command --allocate-tty` in a terminal (util-linux `script` makes
/// one): the command on the target has a terminal on stdin and stdout, reads
/// what is typed, and its exit status comes back, through the guard.
#[test]
fn a_final_command_with_a_tty_reads_the_terminal() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = alpha.target("root", &world.path("src"));
    let sources = world.write("sources.json", "{}");
    let inner = format!(
        "{} --target {} --force --sources {} --allocate-tty {}",
        krops_tests::quote(world.tool("krops-command").as_os_str()),
        krops_tests::quote(target.as_ref() as &std::ffi::OsStr),
        krops_tests::quote(sources.as_os_str()),
        krops_tests::quote(
            "test -t 0 && test -t 1 && echo has-a-tty; read x; echo got:$x; exit 4".as_ref()
                as &std::ffi::OsStr
        ),
    );
    let mut cmd = world.command("script");
    cmd.args(["-qec", &inner, "/dev/null"]);
    let out = world.run_command(&mut cmd, b"typed\n");
    out.assert_code(4);
    assert!(out.stdout_str().contains("has-a-tty"), "{out}");
    assert!(out.stdout_str().contains("got:typed"), "{out}");
}
