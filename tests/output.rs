//! End-to-end: how the tools show a run (README: Progress and results): live lines on a
//! terminal (a real pseudo-terminal, tmux's), plain timestamped lines
//! otherwise, `--quiet`, `--verbose`, `NO_COLOR`, `TERM=dumb`, and the
//! results as JSON (`--json`, `--json-file`), read back with the schema
//! README documents and nothing more (`deny_unknown_fields`).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use krops_tests::{quote, Host, World, RUN_TIMEOUT};
use serde::Deserialize;
use serde_json::{json, Value};

// ---- the results' schema, as README "Machine-readable results" has it ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Results {
    version: u64,
    tool: String,
    ok: bool,
    seconds: f64,
    targets: Vec<TargetResults>,
    #[serde(rename = "final")]
    final_command: Option<FinalResult>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TargetResults {
    target: String,
    address: String,
    ok: bool,
    seconds: f64,
    sources: Vec<SourceResult>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SourceResult {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    status: String,
    seconds: f64,
    bytes_sent: Option<u64>,
    files_changed: Option<u64>,
    changes: Option<Vec<String>>,
    error: Option<SourceError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceError {
    message: String,
    command: Option<String>,
    status: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FinalResult {
    what: String,
    ok: bool,
    exit_code: Option<i32>,
    seconds: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FleetResults {
    version: u64,
    tool: String,
    ok: bool,
    seconds: f64,
    hosts: BTreeMap<String, HostResult>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HostResult {
    ok: bool,
    exit_code: Option<i32>,
    seconds: f64,
    results: Option<Results>,
    tags: Vec<String>,
    batch: Option<u64>,
    not_started: Option<String>,
    rebooted: bool,
    boot_id_before: Option<String>,
    boot_id_after: Option<String>,
}

/// The one JSON document `text` is, read as `T`; every field present.
#[track_caller]
fn parse<T: serde::de::DeserializeOwned>(text: &str, context: &dyn std::fmt::Display) -> T {
    let mut documents = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let value = match documents.next() {
        Some(Ok(value)) => value,
        other => panic!("no JSON document ({other:?}) in {text:?}\n{context}"),
    };
    assert!(
        documents.next().is_none(),
        "more than one document\n{context}"
    );
    assert_every_field_present(&value);
    serde_json::from_value(value.clone())
        .unwrap_or_else(|err| panic!("{err}: {value:#}\n{context}"))
}

/// The schema writes every field, null when it has no value: readers never
/// need to tell a missing field from a null.
#[track_caller]
fn assert_every_field_present(value: &Value) {
    let expected: &[(&str, &[&str])] = &[
        (
            "source",
            &[
                "name",
                "type",
                "status",
                "seconds",
                "bytesSent",
                "filesChanged",
                "changes",
                "error",
            ],
        ),
        ("target", &["target", "ok", "seconds", "sources", "error"]),
        (
            "single",
            &[
                "version", "tool", "ok", "seconds", "targets", "final", "error",
            ],
        ),
        (
            "fleet",
            &["version", "tool", "ok", "seconds", "hosts", "error"],
        ),
        (
            "host",
            &[
                "ok",
                "exitCode",
                "seconds",
                "results",
                "tags",
                "batch",
                "notStarted",
                "rebooted",
                "bootIdBefore",
                "bootIdAfter",
            ],
        ),
    ];
    let check = |what: &str, object: &serde_json::Map<String, Value>| {
        let fields = expected.iter().find(|(name, _)| *name == what).unwrap().1;
        for field in fields {
            assert!(
                object.contains_key(*field),
                "{what} without {field}: {object:?}"
            );
        }
    };
    let Value::Object(doc) = value else {
        panic!("not an object: {value}");
    };
    if let Some(Value::Object(hosts)) = doc.get("hosts") {
        check("fleet", doc);
        for host in hosts.values() {
            check("host", host.as_object().unwrap());
            if let Some(results) = host.get("results").filter(|r| !r.is_null()) {
                assert_every_field_present(results);
            }
        }
        return;
    }
    check("single", doc);
    for target in doc["targets"].as_array().unwrap() {
        check("target", target.as_object().unwrap());
        for source in target["sources"].as_array().unwrap() {
            check("source", source.as_object().unwrap());
        }
    }
}

// ---- fixtures ----

/// A file tree, a symlink and a pipe.
fn sources(world: &World) -> Value {
    world.write("cfg/configuration.nix", "{ }\n");
    world.write("cfg/modules/a.nix", "{ a = 1; }\n");
    let pipe = world.write_executable("bin/gen-version", "#!/bin/sh\necho 24.05\n");
    json!({
        "nixos-config": {"file": world.path("cfg").to_str().unwrap()},
        "current": {"symlink": "nixos-config/configuration.nix"},
        "version": {"pipe": pipe.to_str().unwrap()},
    })
}

/// A git source whose URL is not a repository: fails at its clone.
fn broken_git(world: &World) -> Value {
    json!({"git": {"url": world.path("no-such-repo").to_str().unwrap(), "ref": "main"}})
}

fn target(host: &Host, world: &World) -> String {
    host.target("root", &world.path("alpha/src"))
}

/// Lines with a `2024-05-01T12:00:03Z ` timestamp, without it.
fn stamped_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| {
            let (stamp, rest) = line.split_once(' ')?;
            let shape = stamp.len() == 20
                && stamp.as_bytes()[4] == b'-'
                && stamp.as_bytes()[10] == b'T'
                && stamp.ends_with('Z')
                && stamp.bytes().filter(u8::is_ascii_digit).count() == 14;
            shape.then_some(rest)
        })
        .collect()
}

// ---- a pseudo-terminal ----

/// What a tool left on a terminal, and how it ended.
struct Screen {
    /// The terminal's lines (wrapped lines joined), history included.
    text: String,
    /// The same with colours and attributes as escape sequences.
    styled: String,
    code: i32,
    stdout: String,
}

impl std::fmt::Display for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit status {}\n--- screen ---\n{}\n--- stdout ---\n{}--- end ---",
            self.code, self.text, self.stdout
        )
    }
}

/// The line the terminal shows once the tool is done.
const DONE: &str = "KROPS-TTY-DONE";

/// Runs `tool ARGS < stdin` with its stderr on a terminal of tmux's (200
/// columns), its stdout to a file, in the world's environment plus `env`.
fn on_terminal(
    world: &World,
    tool: &str,
    args: &[&str],
    stdin: &Value,
    env: &[(&str, &str)],
) -> Screen {
    let dir = world.mkdir("tty");
    let input = world.write("tty/stdin.json", stdin.to_string());
    let mut vars = world.env();
    vars.insert("TERM".into(), "tmux-256color".into());
    for (key, value) in env {
        vars.insert((*key).into(), (*value).into());
    }
    let mut line = String::from("env -i");
    for (key, value) in &vars {
        line.push(' ');
        line.push_str(&quote(OsStr::new(&format!("{key}={value}"))));
    }
    line.push(' ');
    line.push_str(&quote(world.tool(tool).as_os_str()));
    for arg in args {
        line.push(' ');
        line.push_str(&quote(OsStr::new(arg)));
    }
    let q = |path: &Path| quote(path.as_os_str());
    let script = world.write_executable(
        "tty/run",
        format!(
            "#!/bin/sh\ncd {root}\n{line} <{input} >{out}\necho $? >{code}.tmp\nmv {code}.tmp {code}\necho {DONE}\n",
            root = q(world.root()),
            input = q(&input),
            out = q(&dir.join("stdout")),
            code = q(&dir.join("code")),
        ),
    );
    let config = world.write(
        "tty/tmux.conf",
        "set -g remain-on-exit on\nset -g history-limit 50000\nset -g status off\n",
    );
    let socket = dir.join("tmux.sock");
    let tmux = |args: &[&str]| {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&socket).arg("-f").arg(&config).args(args);
        cmd.env("TERM", "xterm-256color");
        cmd
    };
    let started = world.run_command(
        tmux(&["new-session", "-d", "-x", "200", "-y", "50"]).arg(&script),
        b"",
    );
    started.assert_success();
    let capture = |styled: bool| {
        let mut args = vec!["capture-pane", "-p", "-J", "-S", "-"];
        if styled {
            args.push("-e");
        }
        let out = world.run_command(&mut tmux(&args), b"");
        out.assert_success();
        out.stdout_str()
    };
    let deadline = Instant::now() + RUN_TIMEOUT;
    let text = loop {
        let text = capture(false);
        if text.lines().any(|line| line == DONE) {
            break text;
        }
        if Instant::now() > deadline {
            let _ = world.run_command(&mut tmux(&["kill-server"]), b"");
            panic!("{tool} did not finish on the terminal in time:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let styled = capture(true);
    world
        .run_command(&mut tmux(&["kill-server"]), b"")
        .assert_success();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let text = text
        .lines()
        .take_while(|line| *line != DONE)
        .collect::<Vec<_>>()
        .join("\n");
    Screen {
        text,
        styled,
        code: read("code").trim().parse().expect("an exit status"),
        stdout: read("stdout"),
    }
}

/// The screen's line that shows `source` (its name as a column), exactly one.
#[track_caller]
fn line_of<'a>(screen: &'a Screen, source: &str) -> &'a str {
    let lines: Vec<&str> = screen
        .text
        .lines()
        .filter(|line| line.split_whitespace().nth(2) == Some(source))
        .collect();
    assert_eq!(lines.len(), 1, "one line for {source}\n{screen}");
    lines[0]
}

// ---- on a terminal ----

#[test]
fn a_terminal_shows_a_line_per_source_ending_with_a_check_mark() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let sources = sources(&world);
    let screen = on_terminal(
        &world,
        "populate",
        &["--target", &target(&alpha, &world), "--force"],
        &sources,
        &[],
    );
    assert_eq!(screen.code, 0, "{screen}");
    for (name, kind) in [
        ("current", "symlink"),
        ("nixos-config", "file"),
        ("version", "pipe"),
    ] {
        let line = line_of(&screen, name);
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&words[..4], ["✓", "alpha", name, kind], "{screen}");
        assert!(
            words[4].parse::<f64>().is_ok() && words[5] == "s",
            "{screen}"
        );
    }
    assert!(
        line_of(&screen, "nixos-config").contains(" files changed, "),
        "{screen}"
    );
    // The steps' own output is hidden when nothing failed.
    assert!(
        !screen.text.contains("sending incremental file list"),
        "{screen}"
    );
    assert!(stamped_lines(&screen.text).is_empty(), "{screen}");
    // Colours, unless NO_COLOR says otherwise.
    assert!(screen.styled.contains("\x1b["), "{screen}");
    assert_eq!(screen.stdout, "", "stdout carries only data");
}

#[test]
fn a_failure_on_a_terminal_shows_the_childs_output_under_its_line() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let mut sources = sources(&world);
    sources["broken"] = broken_git(&world);
    let screen = on_terminal(
        &world,
        "populate",
        &["--target", &target(&alpha, &world), "--force"],
        &sources,
        &[],
    );
    assert_eq!(screen.code, 1, "{screen}");
    let lines: Vec<&str> = screen.text.lines().collect();
    let at = lines
        .iter()
        .position(|line| line.split_whitespace().nth(2) == Some("broken"))
        .unwrap_or_else(|| panic!("no line for broken\n{screen}"));
    assert!(
        lines[at].starts_with("✗ alpha") && lines[at].ends_with("failed"),
        "{screen}"
    );
    // git's own message, then the failed command `run` named, under it.
    assert!(lines[at + 1].starts_with("fatal: "), "{screen}");
    assert!(
        lines[at + 1..]
            .iter()
            .take_while(|line| !line.starts_with('✓') && !line.starts_with('-'))
            .any(|line| line.starts_with("populate: failed: git clone")),
        "{screen}"
    );
    // The other sources' output stays hidden.
    assert!(
        !screen.text.contains("sending incremental file list"),
        "{screen}"
    );
    assert!(
        screen
            .text
            .contains("populate: error: source broken (git) → alpha:"),
        "{screen}"
    );
}

#[test]
fn a_deploy_on_a_terminal_shows_the_rebuilds_output_after_the_sources() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let screen = on_terminal(
        &world,
        "krops-deploy",
        &[
            "--target",
            &target(&alpha, &world),
            "--force",
            "--nom",
            "false",
        ],
        &sources(&world),
        &[],
    );
    assert_eq!(screen.code, 0, "{screen}");
    let lines: Vec<&str> = screen.text.lines().collect();
    let position = |what: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .position(|line| what(line))
            .unwrap_or_else(|| panic!("no such line\n{screen}"))
    };
    let sources = position(&|line| line.starts_with("✓ alpha  version"));
    let rebuild = position(&|line| line == "nixos-rebuild stand-in: this line goes to stderr");
    let done = position(&|line| line.starts_with("✓ nixos-rebuild switch on root@alpha"));
    assert!(sources < rebuild && rebuild < done, "{screen}");
    assert_eq!(
        screen.stdout, "nixos-rebuild stand-in: switch --no-flake\n",
        "{screen}"
    );
}

#[test]
fn verbose_shows_the_steps_own_output_on_a_terminal() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let sources = sources(&world);
    let screen = on_terminal(
        &world,
        "populate",
        &["--target", &target(&alpha, &world), "--force", "-v"],
        &sources,
        &[],
    );
    assert_eq!(screen.code, 0, "{screen}");
    // rsync's own output, with what it changed.
    assert!(
        screen.text.contains("sending incremental file list"),
        "{screen}"
    );
    assert!(
        screen
            .text
            .lines()
            .any(|line| line == "<f+++++++++ configuration.nix"),
        "{screen}"
    );
    assert!(
        line_of(&screen, "nixos-config").starts_with("✓ alpha"),
        "{screen}"
    );
}

#[test]
fn no_color_and_a_dumb_terminal_are_respected() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let sources = sources(&world);
    let args = ["--target", &target(&alpha, &world), "--force"];
    let screen = on_terminal(&world, "populate", &args, &sources, &[("NO_COLOR", "1")]);
    assert_eq!(screen.code, 0, "{screen}");
    assert!(
        line_of(&screen, "nixos-config").starts_with("✓ alpha"),
        "{screen}"
    );
    assert!(
        !screen.styled.contains("\x1b["),
        "NO_COLOR: no colours or attributes\n{}",
        screen.styled
    );
    // A dumb terminal gets the plain lines a log gets.
    let screen = on_terminal(&world, "populate", &args, &sources, &[("TERM", "dumb")]);
    assert_eq!(screen.code, 0, "{screen}");
    let stamped = stamped_lines(&screen.text);
    assert!(
        stamped.contains(&"populate: source version (pipe): done in 0.0 s")
            || stamped
                .iter()
                .any(|line| line.starts_with("populate: source version (pipe): done in ")),
        "{screen}"
    );
    assert!(!screen.text.contains('✓'), "{screen}");
}

#[test]
fn a_fleet_on_a_terminal_ends_with_the_failed_hosts_output_and_the_summary() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let beta = world.add_host("beta");
    let fleet = json!({
        "alpha": {"target": alpha.target("root", &world.path("alpha/src")),
                  "source": sources(&world), "force": true, "useNixOutputMonitor": false},
        "beta": {"target": beta.target("root", &world.path("beta/src")),
                 "source": {"broken": broken_git(&world)}, "force": true},
    });
    let screen = on_terminal(&world, "krops-deploy", &["--fleet", "-"], &fleet, &[]);
    assert_eq!(screen.code, 1, "{screen}");
    let lines: Vec<&str> = screen.text.lines().collect();
    let at = lines
        .iter()
        .position(|line| line.starts_with("✗ beta"))
        .unwrap_or_else(|| panic!("no ✗ line for beta\n{screen}"));
    assert!(
        lines[at + 1..]
            .iter()
            .any(|l| l.starts_with("beta | fatal: ")),
        "{screen}"
    );
    assert!(
        lines[at..]
            .iter()
            .any(|l| l.starts_with("krops-deploy: fleet: 1 of 2 hosts ok, 1 failed")),
        "{screen}"
    );
    // alpha went well: its output stays hidden.
    assert!(!screen.text.contains("alpha | "), "{screen}");
    assert!(
        screen
            .stdout
            .contains("alpha | nixos-rebuild stand-in: switch"),
        "{screen}"
    );
}

#[test]
fn a_fleet_on_a_terminal_names_the_hosts_max_failures_kept_from_starting() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let beta = world.add_host("beta");
    let gamma = world.add_host("gamma");
    let entry = |host: &krops_tests::Host, source: Value| {
        json!({"target": host.target("root", &world.path(&format!("{}/src", host.alias()))),
               "source": source, "force": true, "useNixOutputMonitor": false, "tags": ["web"]})
    };
    let fleet = json!({
        "alpha": entry(&alpha, json!({"broken": broken_git(&world)})),
        "beta": entry(&beta, sources(&world)),
        "gamma": entry(&gamma, sources(&world)),
    });
    let args = [
        "--fleet",
        "-",
        "--on",
        "@web",
        "--jobs",
        "1",
        "--max-failures",
        "1",
    ];
    let screen = on_terminal(&world, "krops-deploy", &args, &fleet, &[]);
    assert_eq!(screen.code, 1, "{screen}");
    let lines: Vec<&str> = screen.text.lines().collect();
    let at = lines
        .iter()
        .position(|line| line.starts_with("✗ alpha"))
        .unwrap_or_else(|| panic!("no ✗ line for alpha\n{screen}"));
    for name in ["beta", "gamma"] {
        assert!(
            lines[at..]
                .iter()
                .any(|l| l.starts_with(&format!("- {name} "))
                    && l.ends_with("  not started (--max-failures 1: 1 host failed)")),
            "{screen}"
        );
    }
    assert!(
        lines[at..].iter().any(|l| l.starts_with(
            "krops-deploy: fleet: stopped starting hosts (--max-failures 1: 1 host failed); not \
             started: beta, gamma"
        )),
        "{screen}"
    );
    assert!(!world.path("beta/src").exists(), "{screen}");
}

// ---- plain lines ----

#[test]
fn plain_lines_with_timestamps_when_stderr_is_not_a_terminal() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let out = world.run_with_sources(
        "populate",
        &["--target", &target(&alpha, &world), "--force"],
        &sources(&world),
    );
    out.assert_success();
    let stderr = out.stderr_str();
    let stamped = stamped_lines(&stderr);
    for (name, kind) in [
        ("current", "symlink"),
        ("nixos-config", "file"),
        ("version", "pipe"),
    ] {
        let start = format!("populate: source {name} ({kind}) → alpha:");
        let end = format!("populate: source {name} ({kind}): done in ");
        let starts = stamped.iter().filter(|l| l.starts_with(&start)).count();
        let ends = stamped.iter().filter(|l| l.starts_with(&end)).count();
        assert_eq!((starts, ends), (1, 1), "{name}\n{out}");
    }
    // The children's output as it comes, between its step's lines, with
    // what rsync changed.
    let start = stderr
        .find("populate: source nixos-config (file) →")
        .unwrap();
    let end = stderr
        .find("populate: source nixos-config (file): done in")
        .unwrap();
    let between = &stderr[start..end];
    assert!(
        between.contains("\n<f+++++++++ configuration.nix\n"),
        "{out}"
    );
    assert!(between.contains("\nsent "), "{out}");
    assert!(
        stamped.iter().any(
            |l| l.starts_with("populate: source nixos-config (file): done in ")
                && l.contains(" files changed, ")
                && l.ends_with(" bytes sent)")
        ),
        "{out}"
    );
    assert!(!stderr.contains('✓') && !stderr.contains('\x1b'), "{out}");
}

#[test]
fn quiet_prints_errors_only() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let args = ["--target", &target(&alpha, &world), "--force", "--quiet"];
    let out = world.run_with_sources("populate", &args, &sources(&world));
    out.assert_success();
    assert_eq!(out.stderr_str(), "", "{out}");
    // A deploy's rebuild output too, while it succeeds.
    let out = world.run_with_sources(
        "krops-deploy",
        &[&args[..], &["--nom", "false"]].concat(),
        &sources(&world),
    );
    out.assert_success();
    assert_eq!(out.stderr_str(), "", "{out}");
    out.assert_stdout_contains("nixos-rebuild stand-in: switch");

    let mut failing = sources(&world);
    failing["broken"] = broken_git(&world);
    let out = world.run_with_sources("populate", &args, &failing);
    out.assert_failure();
    let stderr = out.stderr_str();
    // The failed step's output, then the error; nothing of the rest.
    assert!(stderr.starts_with("fatal: "), "{out}");
    assert!(
        stderr.contains("\npopulate: error: source broken (git) → alpha:"),
        "{out}"
    );
    assert!(stamped_lines(&stderr).is_empty(), "{out}");
    assert!(!stderr.contains("sending incremental file list"), "{out}");

    // A failing rebuild's own output comes with its error.
    std::fs::write(
        world.records_dir().join(krops_tests::REBUILD_EXIT_FILE),
        "3",
    )
    .unwrap();
    let out = world.run_with_sources(
        "krops-deploy",
        &[&args[..], &["--nom", "false"]].concat(),
        &sources(&world),
    );
    out.assert_code(3);
    let stderr = out.stderr_str();
    assert!(
        stderr.starts_with("# use nix-output-monitor: false\n")
            && stderr.contains("nixos-rebuild stand-in: this line goes to stderr\n")
            && stderr.contains("krops-deploy: error: nixos-rebuild switch on "),
        "{out}"
    );
}

// ---- results as JSON ----

#[test]
fn json_for_a_populate_and_its_no_op_repeat() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let mut sources = sources(&world);
    let pass = world.pass_store();
    pass.insert("hosts/alpha/token", "s3cret");
    sources["secrets"] =
        json!({"pass": {"dir": pass.dir().to_str().unwrap(), "name": "hosts/alpha"}});
    let args = ["--target", &target(&alpha, &world), "--force", "--json"];
    let out = world.run_with_sources("populate", &args, &sources);
    out.assert_success();
    let results: Results = parse(&out.stdout_str(), &out);
    assert_eq!((results.version, results.tool.as_str()), (1, "populate"));
    assert!(results.ok && results.error.is_none() && results.final_command.is_none());
    assert!(results.seconds >= 0.0);
    assert_eq!(results.targets.len(), 1);
    let target = &results.targets[0];
    assert_eq!(
        target.target,
        format!("alpha:{}", world.path("alpha/src").display())
    );
    assert_eq!(target.address, self::target(&alpha, &world));
    assert!(target.ok && target.error.is_none() && target.seconds >= 0.0);
    let names: Vec<(&str, &str, &str)> = target
        .sources
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("current", "symlink", "synced"),
            ("nixos-config", "file", "synced"),
            ("secrets", "pass", "synced"),
            ("version", "pipe", "synced"),
        ]
    );
    let config = &target.sources[1];
    let changes = config.changes.as_ref().unwrap();
    assert!(
        changes.contains(&"<f+++++++++ configuration.nix".to_owned()),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"<f+++++++++ modules/a.nix".to_owned()),
        "{changes:?}"
    );
    assert_eq!(config.files_changed, Some(changes.len() as u64));
    assert!(config.bytes_sent.unwrap() > 0 && config.seconds >= 0.0);
    assert!(target.sources[2].files_changed.unwrap() > 0);
    let link = &target.sources[0];
    assert_eq!(
        (link.bytes_sent, link.files_changed, &link.changes),
        (None, None, &None)
    );
    assert!(link.error.is_none());
    assert!(
        !out.stdout_str().contains("s3cret"),
        "a secret in the results"
    );

    // Again, nothing changed: rsync says so, and the pass store is skipped.
    let again = world.run_with_sources("populate", &args, &sources);
    again.assert_success();
    let results: Results = parse(&again.stdout_str(), &again);
    let target = &results.targets[0];
    assert_eq!(target.sources[1].files_changed, Some(0), "{again}");
    assert_eq!(target.sources[1].changes.as_deref(), Some(&[][..]));
    assert_eq!(target.sources[2].status, "unchanged", "{again}");
    assert_eq!(target.sources[2].files_changed, None);
    // The log goes on as without --json.
    again.assert_stderr_contains("populate: source nixos-config (file): done in");
}

#[test]
fn json_for_a_failed_source() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let sources = json!({
        "a-broken": broken_git(&world),
        "b-config": {"file": world.write("cfg/configuration.nix", "{ }\n").to_str().unwrap()},
        "c-link": {"symlink": "b-config"},
        "z-built": {"derivation": "builtins.derivation { name = \"x\"; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [\"-c\" \"echo > $out\"]; }"},
    });
    // One source at a time: the failure stops the next from starting.
    let args = [
        "--target",
        &target(&alpha, &world),
        "--force",
        "--json",
        "--source-jobs",
        "1",
    ];
    let out = world.run_with_sources("populate", &args, &sources);
    out.assert_failure();
    let results: Results = parse(&out.stdout_str(), &out);
    assert!(!results.ok);
    let error = results.error.as_deref().unwrap();
    assert!(
        error.starts_with("source a-broken (git) → alpha:"),
        "{error}"
    );
    let target = &results.targets[0];
    assert!(!target.ok);
    assert_eq!(target.error.as_deref(), Some(error));
    let broken = &target.sources[0];
    assert_eq!(broken.status, "failed");
    let failure = broken.error.as_ref().unwrap();
    assert!(
        failure
            .command
            .as_deref()
            .unwrap()
            .starts_with("git clone --recurse-submodules "),
        "{failure:?}"
    );
    assert_eq!(failure.status.as_deref(), Some("exit status 128"));
    assert!(error.ends_with(&failure.message), "{error} / {failure:?}");
    // The symlink ran first, in one remote script with the sentinel check.
    let statuses: Vec<&str> = target.sources.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["failed", "not-run", "synced", "not-run"],
        "{out}"
    );
    assert_eq!(target.sources[1].seconds, 0.0);
    assert!(target.sources[1].error.is_none());
    // Bad input: nothing ran, and the document says why.
    let out = world.run_with_sources(
        "populate",
        &["--target", args[1], "--json"],
        &json!({"x": {"nope": 1}}),
    );
    out.assert_failure();
    let results: Results = parse(&out.stdout_str(), &out);
    assert!(!results.ok && results.targets.is_empty());
    assert!(results.error.unwrap().contains("x.nope"), "{out}");
}

#[test]
fn json_for_a_deploy_keeps_stdout_for_the_document() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let out = world.run_with_sources(
        "krops-deploy",
        &[
            "--target",
            &target(&alpha, &world),
            "--force",
            "--nom",
            "false",
            "--json",
        ],
        &sources(&world),
    );
    out.assert_success();
    let results: Results = parse(&out.stdout_str(), &out);
    assert_eq!(results.tool, "krops-deploy");
    assert!(results.ok);
    let last = results.final_command.unwrap();
    assert!(
        last.what.starts_with("nixos-rebuild switch on root@alpha"),
        "{last:?}"
    );
    assert_eq!((last.ok, last.exit_code), (true, Some(0)));
    assert!(last.seconds >= 0.0);
    // nixos-rebuild's stdout went to stderr.
    out.assert_stderr_contains("nixos-rebuild stand-in: switch");

    std::fs::write(
        world.records_dir().join(krops_tests::REBUILD_EXIT_FILE),
        "4",
    )
    .unwrap();
    let out = world.run_with_sources(
        "krops-deploy",
        &[
            "--target",
            &target(&alpha, &world),
            "--nom",
            "false",
            "--json",
        ],
        &sources(&world),
    );
    out.assert_code(4);
    let results: Results = parse(&out.stdout_str(), &out);
    assert!(!results.ok && results.targets[0].ok);
    // Why, as the log's last line says it.
    let why = results.error.as_deref().unwrap_or_default();
    assert!(
        why.starts_with("nixos-rebuild switch on root@alpha")
            && why.ends_with("failed: exit status 4"),
        "{why:?}"
    );
    out.assert_stderr_contains(&format!("krops-deploy: error: {why}"));
    let last = results.final_command.unwrap();
    assert_eq!((last.ok, last.exit_code), (false, Some(4)));
}

#[test]
fn json_for_krops_command_and_krops_test_goes_to_a_file() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("alpha/src");
    let target = alpha.target("root", &dest);
    for tool in ["krops-command", "krops-test"] {
        for json_args in [&["--json"][..], &["--json-file", "-"][..]] {
            let args = [&["--target", &target, "--force"][..], json_args].concat();
            let out = world.run_with_sources(tool, &args, &sources(&world));
            out.assert_code(2);
            out.assert_stderr_contains(&format!("{tool}: error: --json: stdout carries "));
            out.assert_stderr_contains("--json-file FILE");
            assert!(!dest.exists(), "nothing ran\n{out}");
        }
    }
    let file = world.path("results.json");
    let out = world.run_with_sources(
        "krops-command",
        &[
            "--target",
            &target,
            "--force",
            "--json-file",
            file.to_str().unwrap(),
            "echo the command says hi; exit 3",
        ],
        &sources(&world),
    );
    out.assert_code(3);
    assert_eq!(out.stdout_str(), "the command says hi\n", "{out}");
    let results: Results = parse(&std::fs::read_to_string(&file).unwrap(), &out);
    assert_eq!(results.tool, "krops-command");
    let last = results.final_command.unwrap();
    assert_eq!((last.ok, last.exit_code), (false, Some(3)));
    assert!(
        last.what.starts_with("the command on root@alpha"),
        "{last:?}"
    );
    assert_eq!(results.targets[0].sources.len(), 3);
}

#[test]
fn json_for_a_fleet_has_each_hosts_results() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let beta = world.add_host("beta");
    let fleet = json!({
        "alpha": {"target": alpha.target("root", &world.path("alpha/src")),
                  "source": sources(&world), "force": true, "useNixOutputMonitor": false},
        "beta": {"target": beta.target("root", &world.path("beta/src")),
                 "source": {"broken": broken_git(&world)}, "force": true},
    });
    let out = world.run_with_sources("krops-deploy", &["--fleet", "-", "--json"], &fleet);
    out.assert_code(1);
    // stdout is the document alone: the hosts' prefixed stdout went to stderr.
    let results: FleetResults = parse(&out.stdout_str(), &out);
    assert_eq!(
        (results.version, results.tool.as_str()),
        (1, "krops-deploy")
    );
    assert!(!results.ok && results.error.is_none() && results.seconds >= 0.0);
    assert_eq!(results.hosts.keys().collect::<Vec<_>>(), ["alpha", "beta"]);
    let alpha = &results.hosts["alpha"];
    assert_eq!((alpha.ok, alpha.exit_code), (true, Some(0)));
    assert!(alpha.seconds >= 0.0);
    let alpha_results = alpha.results.as_ref().unwrap();
    assert!(alpha_results.ok);
    assert_eq!(alpha_results.targets[0].sources.len(), 3);
    assert_eq!(
        alpha_results.final_command.as_ref().unwrap().exit_code,
        Some(0)
    );
    let beta = &results.hosts["beta"];
    assert_eq!((beta.ok, beta.exit_code), (false, Some(1)));
    for host in [alpha, beta] {
        assert!(host.tags.is_empty());
        assert_eq!(host.batch, Some(1));
        assert_eq!(host.not_started, None);
        assert!(!host.rebooted);
        assert_eq!((&host.boot_id_before, &host.boot_id_after), (&None, &None));
    }
    let beta_results = beta.results.as_ref().unwrap();
    assert_eq!(beta_results.targets[0].sources[0].status, "failed");
    assert!(beta_results.final_command.is_none());
    out.assert_stderr_contains("alpha | nixos-rebuild stand-in: switch");
    out.assert_stderr_contains("krops-deploy: fleet: 1 of 2 hosts ok, 1 failed");
}

/// A run whose target has no sentinel file (or cannot be reached) has
/// nothing to lock: its sentinel check runs alone, before the lock. It
/// must still honour `--quiet` and land in the results, as with
/// `--no-lock`.
#[test]
fn a_failed_sentinel_check_is_quiet_with_quiet_and_in_the_json() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let target = target(&alpha, &world);
    for lock in [&[][..], &["--no-lock"][..]] {
        let args = [&["--target", &target, "--quiet"][..], lock].concat();
        let out = world.run_with_sources("populate", &args, &sources(&world));
        out.assert_failure();
        let stderr = out.stderr_str();
        assert!(stamped_lines(&stderr).is_empty(), "{out}");
        assert!(
            stderr.contains("populate: error: sentinel check → alpha:"),
            "{out}"
        );
        for tool in ["populate", "krops-deploy"] {
            let args = [&["--target", &target, "--json"][..], lock].concat();
            let out = world.run_with_sources(tool, &args, &sources(&world));
            out.assert_failure();
            let results: Results = parse(&out.stdout_str(), &out);
            let error = results.error.as_deref().unwrap();
            assert!(error.starts_with("sentinel check → alpha:"), "{out}");
            assert_eq!(results.targets.len(), 1, "{out}");
            assert_eq!(results.targets[0].error.as_deref(), Some(error), "{out}");
            let statuses: Vec<&str> = results.targets[0]
                .sources
                .iter()
                .map(|s| s.status.as_str())
                .collect();
            assert_eq!(statuses, ["not-run"; 3], "{out}");
        }
    }
    assert!(!world.path("alpha/src").exists());
}

/// Populates `dest` (in the world) on a new host `alpha` with a source
/// `broken` of the failing derivation `expr`: the target path and the
/// failed run's stderr.
fn populate_broken(world: &World, dest: &str, expr: &str) -> (PathBuf, String) {
    let alpha = world.add_host("alpha");
    let dest = world.path(dest);
    let out = world.populate(
        &alpha.target("root", &dest),
        &["--force"],
        &json!({"broken": {"derivation": expr}}),
    );
    out.assert_failure();
    (dest, out.stderr_str())
}

#[test]
fn a_failed_step_names_the_command_and_shows_its_output_once() {
    let world = World::new();
    let (_, stderr) = populate_broken(&world, "remote/src", "builtins.derivation { name = 1; }");
    assert!(
        stderr.contains("populate: error: source broken (derivation) → alpha:"),
        "{stderr}"
    );
    assert!(stderr.contains("`nix-build -E "), "{stderr}");
    assert!(stderr.contains("failed: exit status 1"), "{stderr}");
    assert!(
        !stderr.contains("set -efu"),
        "the script was printed: {stderr}"
    );
    assert!(
        !stderr.contains("--- its output ends with ---"),
        "output repeated: {stderr}"
    );
    assert_eq!(
        stderr
            .matches("value is an integer while a string was expected")
            .count(),
        1,
        "the child's error shown more than once: {stderr}"
    );
}

#[test]
fn a_failed_multi_line_derivation_is_named_whole() {
    let world = World::new();
    let (dest, stderr) = populate_broken(&world, "src", "builtins.derivation {\n  name = 1;\n}");
    let error = &stderr[stderr.find("populate: error:").expect("no error line")..];
    assert!(
        error.contains(&format!(
            "}} -o {}/broken` failed: exit status 1",
            dest.display()
        )),
        "{error}"
    );
}

/// README: when the run failed, `ok` is false "and `error` says why". A
/// failed activation said `error: null`, while stderr said
/// `krops-deploy: error: nixos-rebuild switch … failed: exit status 1`.
#[test]
fn json_after_a_failed_rebuild_says_why_as_stderr_does() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let host = world.add_nixos_host("alpha");
    let v1 = world.real_system(&rr, "v1");
    world.boot_nixos_host("alpha", &v1);
    let target = host.target("root", &world.path("alpha/src"));
    // The next switch-to-configuration fails (exit 4), as an activation
    // that a broken unit stops does.
    world.write("rr/log/fail-next", "");
    let out = world.run_with_sources(
        "krops-deploy",
        &["--target", &target, "--force", "--nom", "false", "--json"],
        &world.real_sources(&rr, "v2"),
    );
    let code = out.code().expect("an exit code");
    assert_ne!(code, 0, "{out}");
    let why = format!("nixos-rebuild switch on root@alpha (the target) failed: exit status {code}");
    out.assert_stderr_contains(&format!("krops-deploy: error: {why}"));
    let doc = out.document();
    assert_eq!(doc["ok"], false, "{doc}");
    assert_eq!(doc["error"], why.as_str(), "{doc}");
    assert_eq!(doc["final"]["ok"], false, "{doc}");
    assert_eq!(doc["final"]["exitCode"], code, "{doc}");
    assert_eq!(doc["targets"][0]["ok"], true, "{doc}");
    rr.assert_machine_untouched();
}
