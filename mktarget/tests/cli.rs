//! The `mktarget` binary as a user runs it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn mktarget(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mktarget"));
    cmd.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (name, value) in env {
        cmd.env(name, value);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mktarget");
    // A tool may refuse its arguments and exit before reading stdin.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn json(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let out = mktarget(args, env, "");
    assert!(out.status.success(), "mktarget {args:?} failed: {out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

const ENV: &[(&str, &str)] = &[("LOGNAME", "alice"), ("HOSTNAME", "laptop")];

#[test]
fn prints_every_field_as_json() {
    assert_eq!(
        json(&["root@server01:4444/etc/krops"], ENV),
        serde_json::json!({
            "user": "root", "host": "server01", "port": "4444",
            "path": "/etc/krops", "sudo": false, "extraOptions": []
        })
    );
}

#[test]
fn defaults_come_from_the_environment() {
    let t = json(&[], ENV);
    assert_eq!(
        (t["user"].as_str(), t["host"].as_str()),
        (Some("alice"), Some("laptop"))
    );
    assert_eq!(t["port"], serde_json::Value::Null);
    let t = json(&["server01"], &[("HOSTNAME", "laptop")]);
    assert_eq!(t["user"], serde_json::Value::Null);
    let t = json(&["server01"], &[("LOGNAME", ""), ("HOSTNAME", "laptop")]);
    assert_eq!(t["user"], serde_json::Value::Null);
}

#[test]
fn options_override_fields() {
    let t = json(
        &[
            "u@h/p",
            "--port",
            "2222",
            "--sudo",
            "--extra-option",
            "-o",
            "--extra-option=LogLevel=DEBUG",
        ],
        ENV,
    );
    assert_eq!(t["port"], "2222");
    assert_eq!(t["sudo"], true);
    assert_eq!(
        t["extraOptions"],
        serde_json::json!(["-o", "LogLevel=DEBUG"])
    );
    // An override may repair what the string form got wrong: validation comes last.
    let t = json(&["u@h/p", "--user", ""], ENV);
    assert_eq!(t["user"], "");
}

#[test]
fn reads_string_or_json_from_stdin() {
    let out = mktarget(&["-"], ENV, "@h:22\n");
    assert!(out.status.success(), "{out:?}");
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (t["user"].as_str(), t["port"].as_str()),
        (Some(""), Some("22"))
    );
    let out = mktarget(&["-"], ENV, r#"{"host": "h", "sudo": true}"#);
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (t["host"].as_str(), t["sudo"].as_bool()),
        (Some("h"), Some(true))
    );
}

#[test]
fn bad_targets_are_refused_with_the_field_named() {
    for (args, field) in [
        (&["-oProxyCommand=touch /tmp/pwned"][..], "target.host"),
        (&["--host", "-oProxyCommand=x", "h"][..], "target.host"),
        (&["h:99999"][..], "target.port"),
        (&["h", "--path", "var/src"][..], "target.path"),
        (&[r#"{"host": "h", "prot": 1}"#][..], "target.prot"),
        (&["-x@h"][..], "target.user"),
    ] {
        let out = mktarget(args, ENV, "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        assert!(
            stderr.starts_with("mktarget: error: "),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(field),
            "{args:?} should name {field}: {stderr}"
        );
    }
}
