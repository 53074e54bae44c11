//! The `krops-command` binary on a local target.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn krops_command(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_krops-command"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LOGNAME", "tester")
        .env("HOSTNAME", "origin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run krops-command");
    // A tool may refuse its arguments and exit before reading stdin.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

#[test]
fn prints_the_target_path_by_default_and_passes_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("src dir");
    let t = t.to_str().unwrap();
    let out = krops_command(&["--target", t, "--force"], "{}");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{t}\n"));
    let out = krops_command(&["--target", t, "echo \"in $1\"; exit 42"], "{}");
    assert_eq!(out.status.code(), Some(42), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("in {t}\n"));
}

#[test]
fn a_failed_populate_names_the_step_and_skips_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("src");
    let marker = dir.path().join("ran");
    let script = format!("touch {}", marker.display());
    let out = krops_command(&["--target", t.to_str().unwrap(), &script], "{}");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("krops-command: error: sentinel check → "),
        "{out:?}"
    );
    assert!(!marker.exists());
}
