//! The `krops-deploy` binary: what it plans, without a NixOS machine.

use std::process::{Command, Output, Stdio};

fn krops_deploy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_krops-deploy"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LOGNAME", "tester")
        .env("HOSTNAME", "origin")
        .stdin(Stdio::null())
        .output()
        .expect("run krops-deploy")
}

#[test]
fn dry_run_shows_both_populates_and_the_rebuild_on_the_build_target() {
    let out = krops_deploy(&[
        "--target",
        "root@t:2222/var/src",
        "--build-target",
        "builder@b/srv/src",
        "--sources",
        "/dev/null",
        "--dry-run",
        "--nom",
        "false",
        "--fast",
    ]);
    // /dev/null is no JSON object: refused before anything.
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sources: malformed JSON"),
        "{out:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let sources = dir.path().join("sources.json");
    std::fs::write(&sources, r#"{"link": {"symlink": "x"}}"#).unwrap();
    let out = krops_deploy(&[
        "--target",
        "root@t:2222/var/src",
        "--build-target",
        "builder@b/srv/src",
        "--sources",
        sources.to_str().unwrap(),
        "--dry-run",
        "--nom",
        "false",
        "--fast",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fast is deprecated"));
    let script = String::from_utf8(out.stdout).unwrap();
    let b = script.find("# populate builder@b/srv/src").expect(&script);
    let t = script
        .find("# populate root@t:2222/var/src")
        .expect(&script);
    assert!(b < t, "build target first:\n{script}");
    // Built where nixos-rebuild runs: no --build-host naming itself.
    assert!(
        script.contains("nixos-rebuild switch --no-flake --target-host root@t"),
        "{script}"
    );
    assert!(!script.contains("--build-host"), "{script}");
    // The rebuild runs on the build target, quoted once more for ssh.
    let label = "# then nixos-rebuild switch on builder@b (the build target)\n";
    assert!(script.contains(label), "{script}");
    let rebuild = script.rsplit(label).next().unwrap();
    // (After ssh's options: the connect timeout and keepalives sessions add.)
    assert!(
        rebuild.starts_with("ssh -l builder -T ") && rebuild.contains(" b '/bin/sh -c "),
        "{rebuild}"
    );
    assert!(
        rebuild.contains("NIX_PATH=/srv/src NIX_SSHOPTS="),
        "{rebuild}"
    );
    assert!(rebuild.contains("-p 2222"), "{rebuild}");
}
