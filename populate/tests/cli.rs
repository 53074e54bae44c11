//! The `populate` binary on a local target: refusals and --dry-run change
//! nothing; a plain run syncs. Remote targets are covered by the end-to-end
//! suite in the workspace's tests/.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn populate(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_populate"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LOGNAME", "tester")
        .env("HOSTNAME", "origin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run populate");
    // A tool may refuse its arguments and exit before reading stdin.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    names.sort();
    names
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.is_symlink() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn refused_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("src");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join(".populate"), "").unwrap();
    let before = listing(dir.path());
    let t = target.to_str().unwrap();
    for (sources, expected) in [
        ("{", "sources: malformed JSON"),
        (
            r#"{"a": {"symlink": "x"}, "..": {"symlink": "x"}}"#,
            "sources.\"..\"",
        ),
        (
            r#"{"a": {"symlink": "x"}, "b": {"ftp": "x"}}"#,
            "b.ftp: unknown field",
        ),
        (
            r#"{"a": {"symlink": "x"}, "b": {"file": "relative"}}"#,
            "b.file",
        ),
        (
            r#"{"a": {"symlink": "x"}, "b": {"git": {"url": "u"}}}"#,
            "b.git.ref: missing field",
        ),
        (
            r#"{"a": {"symlink": "x"}, "b": {"file": "/does/not/exist"}}"#,
            "/does/not/exist does not exist",
        ),
    ] {
        let out = populate(&["--target", t, "--force"], sources);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sources}: {out:?}");
        assert!(
            stderr.contains(expected),
            "{sources}: expected {expected:?} in {stderr}"
        );
        assert!(stderr.starts_with("populate: error: "), "{stderr}");
        assert_eq!(listing(dir.path()), before, "{sources} changed the target");
    }
    let out = populate(&["--target", "-oProxyCommand=touch /tmp/x"], "{}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("target.host"),
        "{out:?}"
    );
}

#[test]
fn dry_run_prints_a_script_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("it's here");
    let t = target.to_str().unwrap();
    let out = populate(
        &["--target", t, "--force", "--dry-run"],
        r#"{"link": {"symlink": "$(touch pwned)"}}"#,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(!target.exists(), "dry run created the target");
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("ln -fnsT"), "{script}");
    // The script is what would run: running it does the same as populate.
    let run = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}\n{script}");
    assert_eq!(
        std::fs::read_link(target.join("link")).unwrap().to_str(),
        Some("$(touch pwned)")
    );
    assert!(!dir.path().join("pwned").exists());
}

#[test]
fn missing_sentinel_is_an_error_with_krops_message() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("src");
    let out = populate(
        &["--target", t.to_str().unwrap()],
        r#"{"link": {"symlink": "x"}}"#,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "error: missing sentinel file: {}/.populate",
            t.display()
        )),
        "{stderr}"
    );
    assert!(!t.exists());
}

/// `--json-file` where no file can be written is refused before anything
/// runs, not after the whole sync.
#[test]
fn a_json_file_that_cannot_be_written_is_refused_first() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("src");
    let t = target.to_str().unwrap();
    let sources = r#"{"a": {"symlink": "x"}}"#;
    let missing = dir.path().join("no/such/dir/results.json");
    for (file, expected) in [
        (dir.path().to_path_buf(), "is a directory"),
        (missing, "is not a directory"),
    ] {
        let file = file.to_str().unwrap();
        let out = populate(&["--target", t, "--force", "--json-file", file], sources);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(stderr.contains("--json-file: "), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!target.exists(), "{file}: the run went ahead: {stderr}");
    }
}

/// `--sources -` is stdin, as `--fleet -` is and `--json-file -` is stdout.
#[test]
fn sources_dash_is_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("src");
    let t = target.to_str().unwrap();
    let out = populate(
        &["--target", t, "--force", "--sources", "-"],
        r#"{"a": {"symlink": "b"}}"#,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_link(target.join("a")).unwrap(),
        Path::new("b")
    );
}
