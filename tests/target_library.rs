//! End-to-end: the target library (`mktarget`) runs scripts on a real sshd,
//! plain, with extraOptions, and with sudo (README: Targets).

use krops_tests::World;
use mktarget::command::Stdio;
use mktarget::{Cmd, Multiplex, Origin, Session, Target};

/// The world's view of this machine: root on `origin`.
fn origin() -> Origin {
    Origin {
        user: Some("root".into()),
        host: "origin".into(),
    }
}

/// How the tools reach `target`, each ssh on its own (README: Targets).
fn session(target: &Target) -> Session {
    Session::open(target, &origin(), Multiplex::Off).unwrap()
}

/// The world's PATH, so that `ssh` is the world's wrapper with its config.
fn in_world(world: &World, cmd: Cmd) -> Cmd {
    cmd.env("PATH", world.env()["PATH"].clone())
}

/// What `$(CMD)` reads, or its error with its whole context.
fn read(cmd: Cmd) -> Result<String, String> {
    cmd.run(Stdio::read())
        .and_then(|ran| ran.text())
        .map_err(|err| format!("{err:#}"))
}

const SCRIPT: &str = "printf '%s|' \"$(id -un)\" \"it's\" '$(not run)' \"$0\"";

#[test]
fn populate_style_scripts_run_on_a_remote_target() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let target = Target::parse("root@alpha/srv", &origin()).unwrap();
    assert!(!target.is_local(&origin()));
    let out = read(in_world(&world, session(&target).shell(SCRIPT))).unwrap();
    assert!(out.starts_with("root|it's|$(not run)|"), "{out}");
}

#[test]
fn extra_options_reach_ssh() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    // The real ssh, told about the world only through extraOptions.
    let mut target = Target::parse("root@alpha/srv", &origin()).unwrap();
    target.extra_options = vec![
        "-F".into(),
        world.ssh_config().to_str().unwrap().into(),
        "-o".into(),
        "ServerAliveInterval 30".into(),
    ];
    let cmd = session(&target).shell("echo reached");
    assert_eq!(cmd.program(), "ssh");
    let out = read(cmd.env("PATH", "/usr/bin:/bin")).unwrap();
    assert_eq!(out, "reached\n");
    // A broken option must fail loudly, naming the command and ssh's words.
    target.extra_options.push("-oNoSuchOption=1".into());
    let err = format!(
        "{:#}",
        read(session(&target).shell("true").env("PATH", "/usr/bin:/bin")).unwrap_err()
    );
    assert!(
        err.contains("exit status 255") && err.contains("NoSuchOption"),
        "{err}"
    );
}

#[test]
fn sudo_runs_populate_steps_and_commands_as_root() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let user = world.sudo_user();
    let mut target = Target::parse(&format!("{user}@alpha/srv"), &origin()).unwrap();
    let plain = read(in_world(&world, session(&target).shell("id -u"))).unwrap();
    assert_ne!(plain.trim(), "0");
    target.sudo = true;
    let step = read(in_world(&world, session(&target).shell(SCRIPT))).unwrap();
    assert!(step.starts_with("root|it's|$(not run)|"), "{step}");
    let args = vec!["krops-command".to_owned(), "/path with 'quotes'".to_owned()];
    let command = session(&target).command("printf '%s:%s' \"$(id -u)\" \"$1\"", &args, false);
    assert_eq!(
        read(in_world(&world, command)).unwrap(),
        "0:/path with 'quotes'"
    );
}

#[test]
fn local_targets_run_without_ssh() {
    let world = World::new();
    let target = Target::parse("/srv", &origin()).unwrap();
    assert!(target.is_local(&origin()));
    let cmd = session(&target).shell("echo local");
    assert_eq!(cmd.argv(), ["/bin/sh", "-c", "echo local"]);
    assert_eq!(read(in_world(&world, cmd)).unwrap(), "local\n");
}
