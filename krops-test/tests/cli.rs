//! The `krops-test` binary refuses remote targets before anything runs.

use std::process::{Command, Stdio};

#[test]
fn remote_targets_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_krops-test"))
        .args([
            "--target",
            "root@elsewhere/var/src",
            "--sources",
            "/nonexistent",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LOGNAME", "tester")
        .env("HOSTNAME", "origin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("krops-test: error: --target root@elsewhere/var/src"),
        "{stderr}"
    );
    assert!(stderr.contains("must be local"), "{stderr}");
}
