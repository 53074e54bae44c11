//! End-to-end: hostile and malformed input (README: Reliability, Bad input). A table of bad
//! inputs to `mktarget`, `populate` and the drivers (`krops-deploy`,
//! `krops-test`, `krops-command`, their `--fleet` files included), each
//! run against a real sshd target of the test world, and for the drivers
//! the `nixos-rebuild` stand-in. Every row must be refused with a message
//! that names the field, a non-zero exit status that is not a panic's
//! (101), no panic message and no backtrace (the tools run with
//! `RUST_BACKTRACE=1`), and the canary must show that nothing ran: the
//! target's sshd log is unchanged (no connection, not even a refused one),
//! the stand-in recorded no call, the target directories are unchanged to
//! the modification time, and no temp file is left here.
//!
//! Which control characters are refused, and which are not (see also
//! `control_characters_that_may_be_meant_arrive_as_given`): a NUL byte
//! everywhere, as no argument, file name or file holds one; any control
//! character in what is one line (a source or host name, a path, a URL, a
//! ref, a program, a target field, an ssh option, an option's value),
//! where it is a mistake. Free text keeps them: a symlink's text, a file
//! filter or `clean.exclude` pattern (file names may hold a newline, a tab
//! or an escape, and links and patterns may name them), a Nix expression
//! and a `krops-command` script (both span lines).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use krops_tests::{Host, Output, Tree, World};
use serde_json::{json, Value};

/// What kind of bad input a row is, for the count by class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    MalformedJson,
    WrongType,
    UnknownField,
    DuplicateKey,
    Name,
    RelativePath,
    NixPath,
    LeadingDash,
    ControlCharacter,
    Port,
    TargetExtraField,
    GitOption,
    Size,
    Nesting,
    Keys,
}

impl Class {
    const ALL: [Class; 15] = [
        Class::MalformedJson,
        Class::WrongType,
        Class::UnknownField,
        Class::DuplicateKey,
        Class::Name,
        Class::RelativePath,
        Class::NixPath,
        Class::LeadingDash,
        Class::ControlCharacter,
        Class::Port,
        Class::TargetExtraField,
        Class::GitOption,
        Class::Size,
        Class::Nesting,
        Class::Keys,
    ];

    fn label(self) -> &'static str {
        match self {
            Class::MalformedJson => "malformed or truncated JSON",
            Class::WrongType => "wrong types",
            Class::UnknownField => "unknown fields",
            Class::DuplicateKey => "duplicate keys",
            Class::Name => "bad source and host names",
            Class::RelativePath => "relative paths",
            Class::NixPath => "target paths with : or = (NIX_PATH would misread them)",
            Class::LeadingDash => "hosts and users starting with -",
            Class::ControlCharacter => "NUL, newline and control characters",
            Class::Port => "bad ports",
            Class::TargetExtraField => "--target JSON with extra fields",
            Class::GitOption => "git URLs and refs read as options",
            Class::Size => "oversized input (50 MB, too long fields)",
            Class::Nesting => "deeply nested JSON",
            Class::Keys => "bad keys (--keys FILE, a fleet's keys)",
        }
    }
}

/// One bad input: which tool, its arguments and stdin, and the words its
/// error must contain.
struct Row {
    class: Class,
    tool: &'static str,
    args: Vec<String>,
    stdin: Vec<u8>,
    expect: Vec<String>,
}

/// The world the rows run against: host alpha with a populated target,
/// and a local target for krops-test.
struct Setup {
    world: World,
    /// alpha's target path, with a sentinel and a file.
    remote: PathBuf,
    /// `root@alpha/…`.
    target: String,
    /// A local target (krops-test builds here), with a sentinel.
    local: PathBuf,
    /// An existing file for file sources.
    cfg: String,
}

impl Setup {
    fn new() -> (Setup, Host) {
        let world = World::new();
        let alpha = world.add_host("alpha");
        let remote = world.mkdir("alpha/src");
        world.write("alpha/src/.populate", "");
        world.write("alpha/src/keep", "kept\n");
        let local = world.mkdir("local/src");
        world.write("local/src/.populate", "");
        let cfg = world.write("cfg/configuration.nix", "{ }\n");
        let setup = Setup {
            target: alpha.target("root", &remote),
            cfg: cfg.to_str().unwrap().to_owned(),
            world,
            remote,
            local,
        };
        (setup, alpha)
    }

    /// A good source, for fleets and for rows that break something else.
    fn good_sources(&self) -> Value {
        json!({"nixos-config": {"file": self.cfg}})
    }

    /// A fleet file with one host `web` deploying to alpha, `extra`
    /// merged into its entry.
    fn fleet(&self, extra: Value) -> Vec<u8> {
        let mut entry = json!({"target": self.target, "source": self.good_sources()});
        for (key, value) in extra.as_object().unwrap() {
            entry[key] = value.clone();
        }
        json!({ "web": entry }).to_string().into_bytes()
    }

    fn local_target(&self) -> String {
        self.local.to_str().unwrap().to_owned()
    }
}

fn words(expect: &[&str]) -> Vec<String> {
    expect.iter().map(|word| (*word).to_owned()).collect()
}

/// A row of `tool ARGS` with `stdin`.
fn row(class: Class, tool: &'static str, args: &[&str], stdin: &[u8], expect: &[&str]) -> Row {
    Row {
        class,
        tool,
        args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        stdin: stdin.to_vec(),
        expect: words(expect),
    }
}

/// `populate --target root@alpha/… --force` with `sources` on stdin: had
/// the input been taken, --force would sync it.
fn populate(s: &Setup, class: Class, sources: impl Into<Vec<u8>>, expect: &[&str]) -> Row {
    Row {
        class,
        tool: "populate",
        args: vec!["--target".into(), s.target.clone(), "--force".into()],
        stdin: sources.into(),
        expect: words(expect),
    }
}

/// `populate` with a bad source `a` of `value`.
fn source(s: &Setup, class: Class, value: Value, expect: &[&str]) -> Row {
    populate(s, class, json!({ "a": value }).to_string(), expect)
}

/// `TOOL --target TARGET` (a driver: nothing after it) with good sources.
fn with_target(s: &Setup, class: Class, tool: &'static str, target: &str, expect: &[&str]) -> Row {
    Row {
        class,
        tool,
        args: vec!["--target".into(), target.to_owned()],
        stdin: s.good_sources().to_string().into_bytes(),
        expect: words(expect),
    }
}

/// `TOOL --fleet -` with `fleet` on stdin.
fn fleet(class: Class, tool: &'static str, fleet: Vec<u8>, expect: &[&str]) -> Row {
    Row {
        class,
        tool,
        args: vec!["--fleet".into(), "-".into()],
        stdin: fleet,
        expect: words(expect),
    }
}

/// `TOOL --target TARGET --keys FILE` with good sources, FILE holding
/// `keys` (`text` when it is not JSON).
fn keys(s: &Setup, tool: &'static str, keys: Result<Value, &str>, expect: &[&str]) -> Row {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, Ordering::SeqCst);
    let text = match keys {
        Ok(keys) => keys.to_string(),
        Err(text) => text.to_owned(),
    };
    let file = s.world.write(&format!("keys/{n}.json"), text);
    Row {
        class: Class::Keys,
        tool,
        args: vec![
            "--target".into(),
            s.target.clone(),
            "--keys".into(),
            file.display().to_string(),
        ],
        stdin: s.good_sources().to_string().into_bytes(),
        expect: words(expect),
    }
}

/// A target object naming alpha and its path, `extra` merged in.
fn target_json(s: &Setup, extra: Value) -> String {
    let mut target = json!({"user": "root", "host": "alpha", "path": s.remote});
    for (key, value) in extra.as_object().unwrap() {
        target[key] = value.clone();
    }
    target.to_string()
}

/// About 50 MB of sources.json: `count` good symlink sources, then `last`.
fn fifty_megabytes(last: &str) -> Vec<u8> {
    let mut text = String::from("{");
    let mut i = 0;
    while text.len() < 50 * 1024 * 1024 {
        text.push_str(&format!(
            "\"s{i:07}\": {{\"symlink\": \"to/some/where/{i:07}\"}}, "
        ));
        i += 1;
    }
    text.push_str(last);
    text.push('}');
    text.into_bytes()
}

/// The table, one row a line.
#[rustfmt::skip]
fn rows(s: &Setup) -> Vec<Row> {
    use Class::*;
    let t = s.target.as_str();
    let cfg = s.cfg.as_str();
    let remote = s.remote.to_str().unwrap();
    let good = s.good_sources().to_string();
    let deep_list = "[".repeat(100_000);
    let deep_objects = "{\"a\": ".repeat(100_000);
    let long_quotes = "'".repeat(100_000);
    let mut rows = vec![
        // Malformed and truncated JSON.
        populate(s, MalformedJson, r#"{"a": {"symlink": "x"}"#, &["sources: malformed JSON", "EOF"]),
        populate(s, MalformedJson, "", &["sources: malformed JSON"]),
        populate(s, MalformedJson, r#"{"a": {"symlink": "x"}} {"#, &["sources: malformed JSON", "trailing"]),
        populate(s, MalformedJson, b"{\"a\": {\"symlink\": \"\xff\"}}".to_vec(), &["cannot read sources from stdin: it is not UTF-8 text (byte 19"]),
        populate(s, MalformedJson, r#"{"a": {"symlink": "\ud800x"}}"#, &["sources: malformed JSON", "hex escape"]),
        populate(s, MalformedJson, r#"{'a': {'symlink': 'x'}}"#, &["sources: malformed JSON", "line 1 column 2"]),
        row(MalformedJson, "mktarget", &["-"], br#"{"host": "alpha","#, &["target: malformed JSON object"]),
        row(MalformedJson, "populate", &["--target", r#"{"host": "alpha""#], good.as_bytes(), &["target: malformed JSON object"]),
        fleet(MalformedJson, "krops-deploy", br#"{"web": {"target": "root@alpha""#.to_vec(), &["fleet: malformed JSON"]),
        fleet(MalformedJson, "krops-command", b"".to_vec(), &["fleet: malformed JSON"]),
        // Wrong types.
        populate(s, WrongType, "[]", &["sources: expected an object", "got a list"]),
        source(s, WrongType, json!("x"), &["a: expected an object", "got a string"]),
        source(s, WrongType, json!({"git": {"url": 1, "ref": "main"}}), &["a.git.url: expected a string, got a number"]),
        source(s, WrongType, json!({"file": {"path": cfg, "useChecksum": "yes"}}), &["a.file.useChecksum: expected a boolean"]),
        source(s, WrongType, json!({"file": {"path": cfg, "filters": {"type": "include"}}}), &["a.file.filters: expected a list"]),
        row(WrongType, "mktarget", &[r#"{"host": "alpha", "sudo": "yes"}"#], b"", &["target.sudo: expected a boolean"]),
        row(WrongType, "mktarget", &[r#"{"extraOptions": "-v"}"#], b"", &["target.extraOptions: expected a list"]),
        fleet(WrongType, "krops-deploy", s.fleet(json!({"target": 5})), &["fleet.web.target: expected a target string or object, got a number"]),
        fleet(WrongType, "krops-command", s.fleet(json!({"allocateTTY": "yes"})), &["fleet.web.allocateTTY: expected a boolean"]),
        fleet(WrongType, "krops-deploy", s.fleet(json!({"useNixOutputMonitor": "maybe"})), &["fleet.web.useNixOutputMonitor", "\"maybe\""]),
        fleet(WrongType, "krops-deploy", br#"[{"target": "root@alpha"}]"#.to_vec(), &["fleet: expected an object", "got a list"]),
        // Unknown fields.
        source(s, UnknownField, json!({"git": {"url": "https://example.org/r", "ref": "main", "depth": 1}}), &["a.git.depth: unknown field"]),
        source(s, UnknownField, json!({"rsync": cfg}), &["a.rsync: unknown field"]),
        source(s, UnknownField, json!({"type": "git", "file": cfg}), &["a.type: says \"git\" but the source gives \"file\""]),
        fleet(UnknownField, "krops-command", s.fleet(json!({"comand": "true"})), &["fleet.web.comand: unknown field"]),
        fleet(UnknownField, "krops-deploy", s.fleet(json!({"allocateTTY": true})), &["fleet.web.allocateTTY: unknown field"]),
        // Duplicate keys: refused, never the last one winning.
        populate(s, DuplicateKey, r#"{"a": {"symlink": "x"}, "a": {"symlink": "y"}}"#, &["duplicate key \"a\""]),
        populate(s, DuplicateKey, r#"{"a": {"git": {"url": "https://example.org/r", "ref": "main", "ref": "v1"}}}"#, &["duplicate key \"ref\" in a.git"]),
        populate(s, DuplicateKey, r#"{"a": {"symlink": "x", "symlink": "y"}}"#, &["duplicate key \"symlink\" in a"]),
        row(DuplicateKey, "populate", &["--target", r#"{"host": "alpha", "host": "beta"}"#], good.as_bytes(), &["duplicate key \"host\""]),
        fleet(DuplicateKey, "krops-deploy", format!(r#"{{"web": {{"target": "{t}", "source": {good}}}, "web": {{"target": "{t}", "source": {good}}}}}"#).into_bytes(), &["fleet: malformed JSON", "duplicate key \"web\""]),
        fleet(DuplicateKey, "krops-command", format!(r#"{{"web": {{"target": "{t}", "source": {good}, "command": "true", "command": "reboot"}}}}"#).into_bytes(), &["duplicate key \"command\" in web"]),
        // Source and host names.
        populate(s, Name, json!({"..": {"symlink": "x"}}).to_string(), &["sources.\"..\": a source name"]),
        populate(s, Name, json!({".": {"symlink": "x"}}).to_string(), &["sources.\".\": a source name"]),
        populate(s, Name, json!({"a/b": {"symlink": "x"}}).to_string(), &["sources.\"a/b\": a source name"]),
        populate(s, Name, json!({"-x": {"symlink": "x"}}).to_string(), &["sources.\"-x\": a source name"]),
        populate(s, Name, json!({"": {"symlink": "x"}}).to_string(), &["sources.\"\": a source name"]),
        populate(s, Name, json!({".populate": {"symlink": "x"}}).to_string(), &["sources.\".populate\": names starting with .populate"]),
        populate(s, Name, json!({ "n".repeat(256): {"symlink": "x"}}).to_string(), &["at most 255 bytes long"]),
        fleet(Name, "krops-deploy", json!({"..": {"target": t, "source": {}}}).to_string().into_bytes(), &["fleet.\"..\": a host name"]),
        fleet(Name, "krops-command", json!({"-web": {"target": t, "source": {}}}).to_string().into_bytes(), &["fleet.\"-web\": a host name"]),
        fleet(Name, "krops-deploy", json!({"web": {"target": t, "source": {"../x": {"symlink": "y"}}}}).to_string().into_bytes(), &["fleet.web.source", "sources.\"../x\""]),
        fleet(Name, "krops-deploy", json!({"": {"target": t, "source": {}}}).to_string().into_bytes(), &["fleet.\"\": a host name"]),
        fleet(Name, "krops-command", json!({"a/b": {"target": t, "source": {}}}).to_string().into_bytes(), &["fleet.\"a/b\": a host name"]),
        // Relative paths.
        source(s, RelativePath, json!({"file": "cfg/configuration.nix"}), &["a.file: \"cfg/configuration.nix\" is not an absolute path"]),
        source(s, RelativePath, json!({"pipe": "date"}), &["a.pipe: \"date\" is not an absolute path"]),
        source(s, RelativePath, json!({"pass": {"dir": "store", "name": "host"}}), &["a.pass.dir: \"store\" is not an absolute path"]),
        source(s, RelativePath, json!({"pass": {"dir": "/store", "name": "../etc"}}), &["a.pass.name: \"../etc\" must be a relative path inside"]),
        source(s, RelativePath, json!({"passage": {"dir": "/store", "identities_file": "ids"}}), &["a.passage.identities_file: \"ids\" is not an absolute path"]),
        row(RelativePath, "populate", &["--target", &target_json(s, json!({"path": "var/src"}))], good.as_bytes(), &["target.path: \"var/src\" is not an absolute path"]),
        row(RelativePath, "krops-test", &["--target", &json!({"path": "local/src"}).to_string()], good.as_bytes(), &["target.path: \"local/src\" is not an absolute path"]),
        // Target paths NIX_PATH would misread: ':' separates its entries,
        // '=' makes a prefix (NIX_PATH=/srv/a=b names b as /srv/a).
        row(NixPath, "mktarget", &["root@alpha/srv/a=b"], b"", &["target.path: \"/srv/a=b\" contains '='", "NIX_PATH"]),
        row(NixPath, "mktarget", &["root@alpha/srv/a:b"], b"", &["target.path: \"/srv/a:b\" contains ':'", "NIX_PATH"]),
        row(NixPath, "populate", &["--target", &target_json(s, json!({"path": format!("{remote}=x")})), "--force"], good.as_bytes(), &["target.path:", "contains '='"]),
        with_target(s, NixPath, "krops-deploy", &format!("{t}=x"), &["target.path:", "contains '='"]),
        with_target(s, NixPath, "krops-command", &format!("{t}:x"), &["target.path:", "contains ':'"]),
        fleet(NixPath, "krops-deploy", s.fleet(json!({"target": format!("{t}=x")})), &["fleet.web.target", "contains '='"]),
        fleet(NixPath, "krops-deploy", s.fleet(json!({"buildTarget": {"host": "alpha", "path": "/srv/a=b"}})), &["fleet.web.buildTarget", "contains '='"]),
        // Hosts and users that ssh would read as options.
        with_target(s, LeadingDash, "populate", "-oProxyCommand=touch /tmp/PWNED", &["target.host: \"-oProxyCommand=touch \" begins with '-'"]),
        with_target(s, LeadingDash, "krops-command", &format!("-oProxyCommand=x@alpha{remote}"), &["target.user: \"-oProxyCommand=x\" begins with '-'"]),
        row(LeadingDash, "krops-deploy", &["--target", t, "--build-target", "-oProxyCommand=x"], good.as_bytes(), &["--build-target", "target.host: \"-oProxyCommand=x\" begins with '-'"]),
        fleet(LeadingDash, "krops-deploy", s.fleet(json!({"buildTarget": {"user": "-l", "host": "alpha"}})), &["fleet.web.buildTarget", "target.user: \"-l\" begins with '-'"]),
        row(LeadingDash, "mktarget", &["alpha", "--user=-oProxyCommand=x"], b"", &["target.user"]),
        fleet(LeadingDash, "krops-command", s.fleet(json!({"target": "-oProxyCommand=x"})), &["fleet.web.target: target.host: \"-oProxyCommand=x\" begins with '-'"]),
        row(LeadingDash, "mktarget", &["-"], b"-J evil@alpha", &["target.user: \"-J evil\" begins with '-'"]),
        // NUL, newlines and other control characters in every string field.
        populate(s, ControlCharacter, json!({"a\nb": {"symlink": "x"}}).to_string(), &["sources.\"a\\nb\": a source name"]),
        source(s, ControlCharacter, json!({"file": format!("{cfg}\0")}), &["a.file:", "contains a control character"]),
        source(s, ControlCharacter, json!({"file": {"path": format!("{cfg}\n")}}), &["a.file.path:", "contains a control character"]),
        source(s, ControlCharacter, json!({"file": {"path": cfg, "filters": [{"type": "exclude", "pattern": "a\0b"}]}}), &["a.file.filters[0].pattern: \"a\\0b\" contains a NUL byte"]),
        source(s, ControlCharacter, json!({"file": {"path": cfg, "exclude": ["\0"]}}), &["a.file.exclude[0]: \"\\0\" contains a NUL byte"]),
        source(s, ControlCharacter, json!({"git": {"url": "https://example.org/r\nx", "ref": "main"}}), &["a.git.url: \"https://example.org/r\\nx\" contains a control character"]),
        source(s, ControlCharacter, json!({"git": {"url": "https://example.org/r\0", "ref": "main"}}), &["a.git.url:", "contains a control character"]),
        source(s, ControlCharacter, json!({"git": {"url": "https://example.org/r", "ref": "main\t"}}), &["a.git.ref: \"main\\t\" contains a control character"]),
        source(s, ControlCharacter, json!({"git": {"url": "https://example.org/r", "ref": "main", "clean": {"exclude": ["x\0"]}}}), &["a.git.clean.exclude[0]:", "contains a NUL byte"]),
        source(s, ControlCharacter, json!({"symlink": "x\0y"}), &["a.symlink.target: \"x\\0y\" contains a NUL byte"]),
        source(s, ControlCharacter, json!({"derivation": "with import <nixpkgs> {};\0hello"}), &["a.derivation.text:", "contains a NUL byte"]),
        source(s, ControlCharacter, json!({"pass": {"dir": "/store", "name": "host\nx"}}), &["a.pass.name:", "contains a control character"]),
        source(s, ControlCharacter, json!({"passage": {"dir": "/store\u{1b}[2J"}}), &["a.passage.dir:", "contains a control character"]),
        source(s, ControlCharacter, json!({"passage": {"dir": "/store", "age": "age\n-d"}}), &["a.passage.age:", "contains a control character"]),
        source(s, ControlCharacter, json!({"pipe": {"command": "/bin/date\r"}}), &["a.pipe.command:", "contains a control character"]),
        populate(s, ControlCharacter, json!({"a": {"symlink\n": "x"}}).to_string(), &["a.\"symlink\\n\": unknown field"]),
        with_target(s, ControlCharacter, "populate", &target_json(s, json!({"user": "ro\not"})), &["target.user: \"ro\\not\" contains whitespace or control characters"]),
        with_target(s, ControlCharacter, "krops-deploy", &target_json(s, json!({"host": "alpha\0"})), &["target.host:", "control characters"]),
        with_target(s, ControlCharacter, "krops-command", &format!("root@al\tpha{remote}"), &["target.host: \"al\\tpha\""]),
        with_target(s, ControlCharacter, "populate", &target_json(s, json!({"path": format!("{remote}\n/etc")})), &["target.path:", "contains a control character"]),
        with_target(s, ControlCharacter, "krops-test", &json!({"path": format!("{}\0", s.local_target())}).to_string(), &["target.path:", "contains a control character"]),
        with_target(s, ControlCharacter, "populate", &target_json(s, json!({"extraOptions": ["-o", "LogLevel=ERROR\nProxyCommand=x"]})), &["target.extraOptions[1]:", "contains a control character"]),
        with_target(s, ControlCharacter, "krops-deploy", &target_json(s, json!({"extraOptions": ["-v\0"]})), &["target.extraOptions[0]:", "contains a control character"]),
        fleet(ControlCharacter, "krops-deploy", s.fleet(json!({"operation": "switch\0"})), &["fleet.web.operation:", "contains a control character"]),
        fleet(ControlCharacter, "krops-command", s.fleet(json!({"command": "echo a\0b"})), &["fleet.web.command:", "contains a NUL byte"]),
        row(ControlCharacter, "krops-deploy", &["--target", t, "--operation", "switch\n--rollback"], good.as_bytes(), &["--operation \"switch\\n--rollback\""]),
        // Ports.
        with_target(s, Port, "populate", &format!("root@alpha:0{remote}"), &["target.port: \"0\" is not a port number"]),
        with_target(s, Port, "krops-deploy", &format!("root@alpha:65536{remote}"), &["target.port: \"65536\" is not a port number"]),
        with_target(s, Port, "krops-command", &target_json(s, json!({"port": -1})), &["target.port: \"-1\" is not a port number"]),
        with_target(s, Port, "populate", &format!("root@alpha:22abc{remote}"), &["target.port: \"22abc\" is not a port number"]),
        with_target(s, Port, "populate", &format!("root@alpha:18446744073709551616{remote}"), &["target.port: \"18446744073709551616\" is not a port number"]),
        with_target(s, Port, "populate", &target_json(s, json!({"port": 18446744073709551616.0})), &["target.port:", "is not a port number"]),
        row(Port, "populate", &["--target", &format!("{{\"host\": \"alpha\", \"port\": 18446744073709551616, \"path\": \"{remote}\"}}")], good.as_bytes(), &["target.port:", "is not a port number"]),
        with_target(s, Port, "populate", &target_json(s, json!({"port": "22\n"})), &["target.port: \"22\\n\" is not a port number"]),
        with_target(s, Port, "populate", &target_json(s, json!({"port": 22.5})), &["target.port: \"22.5\" is not a port number"]),
        row(Port, "mktarget", &["alpha", "--port", ""], b"", &["target.port: \"\" is not a port number"]),
        fleet(Port, "krops-deploy", s.fleet(json!({"target": {"host": "alpha", "port": 0, "path": remote}})), &["fleet.web.target: target.port: \"0\" is not a port number"]),
        // --target JSON with extra fields.
        row(TargetExtraField, "mktarget", &[r#"{"host": "alpha", "password": "hunter2"}"#], b"", &["target.password: unknown field"]),
        with_target(s, TargetExtraField, "populate", &target_json(s, json!({"sduo": true})), &["target.sduo: unknown field"]),
        with_target(s, TargetExtraField, "krops-deploy", &target_json(s, json!({"buildTarget": "root@alpha"})), &["target.buildTarget: unknown field"]),
        with_target(s, TargetExtraField, "krops-command", &target_json(s, json!({"command": "reboot"})), &["target.command: unknown field"]),
        with_target(s, TargetExtraField, "krops-test", &json!({"path": s.local_target(), "trace": true}).to_string(), &["target.trace: unknown field"]),
        fleet(TargetExtraField, "krops-deploy", s.fleet(json!({"target": {"host": "alpha", "path": remote, "sduo": true}})), &["fleet.web.target", "target.sduo: unknown field"]),
        // Git URLs and refs that git would read as options.
        source(s, GitOption, json!({"git": {"url": "--upload-pack=touch /tmp/PWNED", "ref": "main"}}), &["a.git.url: \"--upload-pack=touch /tmp/PWNED\" must be non-empty and must not begin with '-'"]),
        source(s, GitOption, json!({"git": {"url": "-cprotocol.ext.allow=always", "ref": "main"}}), &["a.git.url: \"-cprotocol.ext.allow=always\""]),
        source(s, GitOption, json!({"git": {"url": "https://example.org/r", "ref": "-cfoo=bar"}}), &["a.git.ref: \"-cfoo=bar\" must be non-empty and must not begin with '-'"]),
        source(s, GitOption, json!({"git": {"url": "https://example.org/r", "ref": "--output=/tmp/PWNED"}}), &["a.git.ref: \"--output=/tmp/PWNED\""]),
        source(s, GitOption, json!({"git": {"url": "ssh://-oProxyCommand=touch%20PWNED/r", "ref": "main"}}), &["a.git.url:", "names a user or host beginning with '-'"]),
        source(s, GitOption, json!({"git": {"url": "ssh://git@-oProxyCommand=x/r", "ref": "main"}}), &["a.git.url:", "names a user or host beginning with '-'"]),
        source(s, GitOption, json!({"git": {"url": "https://example.org/r", "ref": ""}}), &["a.git.ref: \"\" must be non-empty"]),
        // Oversized input: 50 MB, and fields longer than a program takes.
        populate(s, Size, format!("{{\"a\": {{\"symlink\": \"{}\"}}}}", "x".repeat(50 * 1024 * 1024)), &["a.symlink.target:", "(52428800 bytes) is too long"]),
        populate(s, Size, fifty_megabytes(r#""zzz": {"symlink": "x", "oops": 1}"#), &["zzz.oops: unknown field"]),
        source(s, Size, json!({"derivation": "x".repeat(200_000)}), &["source a (derivation): what it runs on the target would be", "too long"]),
        source(s, Size, json!({"derivation": long_quotes}), &["source a (derivation):", "too long"]),
        source(s, Size, json!({"file": format!("/{}", "d/".repeat(3000))}), &["a.file:", "is too long (a path has at most 4095 bytes)"]),
        source(s, Size, json!({"git": {"url": format!("https://example.org/{}", "r".repeat(5000)), "ref": "main"}}), &["a.git.url:", "is too long"]),
        with_target(s, Size, "populate", &target_json(s, json!({"path": format!("/{}", "p".repeat(5000))})), &["target.path:", "is too long"]),
        with_target(s, Size, "krops-deploy", &target_json(s, json!({"host": "h".repeat(2000)})), &["target.host:", "is too long"]),
        row(Size, "krops-command", &["--target", t, &"'".repeat(100_000)], good.as_bytes(), &["the command on root@alpha: it would be", "the script is too long"]),
        row(Size, "populate", &["--target", t, "--sources", "/dev/zero"], b"", &["cannot read sources from /dev/zero: more than 64 MiB"]),
        row(Size, "krops-deploy", &["--fleet", "/dev/zero"], b"", &["cannot read the fleet from /dev/zero: more than 64 MiB"]),
        // Deeply nested JSON.
        populate(s, Nesting, deep_list.clone(), &["sources: malformed JSON", "recursion limit exceeded"]),
        populate(s, Nesting, format!("{{\"a\": {deep_objects}"), &["sources: malformed JSON", "recursion limit exceeded"]),
        row(Nesting, "mktarget", &["-"], deep_objects.as_bytes(), &["target: malformed JSON object", "recursion limit exceeded"]),
        row(Nesting, "krops-deploy", &["--target", &format!("{{\"host\": {deep_list}")], good.as_bytes(), &["target: malformed JSON object", "recursion limit exceeded"]),
        fleet(Nesting, "krops-command", format!("{{\"web\": {deep_list}").into_bytes(), &["fleet: malformed JSON", "recursion limit exceeded"]),
        row(Nesting, "krops-test", &["--target", &s.local_target()], deep_list.as_bytes(), &["sources: malformed JSON", "recursion limit exceeded"]),
        // Keys: the content, the place, the owner and the mode.
        keys(s, "krops-deploy", Err(r#"{"db": {"keyFile": "/x"}"#), &["keys: malformed JSON"]),
        keys(s, "krops-deploy", Ok(json!([])), &["keys: expected an object", "got a list"]),
        keys(s, "krops-command", Ok(json!({"db": {"keyFile": cfg, "colour": "red"}})), &["keys.db.colour: unknown field"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyFile": cfg, "keyCommand": ["/bin/true"]}})), &["keys.db: more than one content source"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"user": "root"}})), &["keys.db: no content"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyFile": cfg, "permissions": "0999"}})), &["keys.db.permissions: \"0999\" is not an octal mode"]),
        keys(s, "krops-command", Ok(json!({"db": {"keyFile": cfg, "permissions": "u=rw"}})), &["keys.db.permissions: \"u=rw\" is not an octal mode"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyFile": cfg, "name": "../../etc/shadow"}})), &["keys.db.name: a key's file name must be one path component"]),
        keys(s, "krops-deploy", Ok(json!({"a/b": {"keyFile": cfg}})), &["keys.\"a/b\": a key name must be one path component"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyFile": cfg, "destDir": "run/keys"}})), &["keys.db.destDir: \"run/keys\" is not an absolute path"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyFile": "secrets/db"}})), &["keys.db.keyFile: \"secrets/db\" is not an absolute path"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyFile": cfg, "user": "-oops"}})), &["keys.db.user: \"-oops\" is not a user or group name"]),
        keys(s, "krops-command", Ok(json!({"db": {"keyFile": cfg, "group": "--reference=/etc/shadow"}})), &["keys.db.group:", "is not a user or group name"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyFile": cfg, "user": "ro ot"}})), &["keys.db.user: \"ro ot\" is not a user or group name"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyFile": cfg, "uploadAt": "whenever"}})), &["keys.db.uploadAt: \"whenever\" is not"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyCommand": "cat /x"}})), &["keys.db.keyCommand: expected a list"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyCommand": ["-x"]}})), &["keys.db.keyCommand[0]: \"-x\" is not a program"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyFile": "/nonexistent/db.key"}})), &["keys.db.keyFile: /nonexistent/db.key is not a file"]),
        keys(s, "krops-command", Ok(json!({"db": {"keyCommand": ["/nonexistent/print-key"]}})), &["keys.db.keyCommand[0]: \"/nonexistent/print-key\" is not an executable file"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyFile": cfg, "destDir": remote}})), &["keys.db.destDir:", "keys go outside the sources"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"pass": {"dir": "/nonexistent", "name": "db"}}})), &["keys.db.pass: \"db\" is not an entry of the password store"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyFile": cfg}, "db2": {"keyFile": cfg, "name": "db"}})), &["keys.db2: goes to /run/keys/db, as key \"db\" does"]),
        keys(s, "krops-deploy", Ok(json!({"db": {"keyFile": cfg}, "db2": {"keyFile": cfg, "name": "db", "destDir": "/run//keys/"}})), &["keys.db2: goes to /run/keys/db, as key \"db\" does"]),
        row(Keys, "krops-deploy", &["--target", t, "--keys", "/dev/stdin"], good.as_bytes(), &["--keys /dev/stdin: stdin carries the sources; give them with --sources FILE"]),
        row(Keys, "krops-command", &["--target", t, "--keys", "/dev/stdin", "true"], good.as_bytes(), &["--keys /dev/stdin: stdin carries the sources"]),
        row(Keys, "krops-deploy", &["--target", t, "--keys", "/", "--keys-only"], b"", &["krops-deploy: error: --keys: cannot read keys from /: Is a directory"]),
        fleet(Class::Keys, "krops-deploy", s.fleet(json!({"keys": {"db": {"keyFile": cfg, "permissions": "9"}}})), &["fleet.web.keys: keys.db.permissions"]),
        fleet(Class::Keys, "krops-command", s.fleet(json!({"keys": ["db"]})), &["fleet.web.keys: keys: expected an object"]),
    ];
    // krops-test takes only local targets; its sources are checked alike.
    rows.push(Row {
        class: Name,
        tool: "krops-test",
        args: vec!["--target".into(), s.local_target()],
        stdin: json!({"nixpkgs/lib": {"symlink": "x"}}).to_string().into_bytes(),
        expect: words(&["sources.\"nixpkgs/lib\": a source name"]),
    });
    rows
}

/// What the canary looks at: everything a run could have touched.
#[derive(Debug, PartialEq, Eq)]
struct Canary {
    sshd_log: String,
    handshakes: usize,
    rebuilds: usize,
    remote: Tree,
    local: Tree,
    tmp: Vec<PathBuf>,
}

fn canary(s: &Setup) -> Canary {
    let world = &s.world;
    let mut tmp: Vec<PathBuf> = std::fs::read_dir(world.tmp_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    tmp.sort();
    Canary {
        sshd_log: world.sshd_log("alpha"),
        handshakes: world.handshakes("alpha"),
        rebuilds: world.records("nixos-rebuild").len(),
        remote: world.tree_with_mtimes(&s.remote),
        local: world.tree_with_mtimes(&s.local),
        tmp,
    }
}

/// Runs `row`'s tool with `RUST_BACKTRACE=1`.
fn run(s: &Setup, row: &Row) -> Output {
    let mut cmd = s.world.command(s.world.tool(row.tool));
    cmd.args(&row.args).env("RUST_BACKTRACE", "1");
    s.world.run_command(&mut cmd, &row.stdin)
}

/// What is wrong with how `row` ended, if anything.
fn problems(row: &Row, out: &Output, before: &Canary, after: &Canary) -> Vec<String> {
    let mut problems = Vec::new();
    let all = format!("{}{}", out.stdout_str(), out.stderr_str());
    if out.timed_out {
        problems.push("timed out".to_owned());
    }
    match out.code() {
        None => problems.push(format!("killed by a signal: {}", out.status)),
        Some(0) => problems.push("exit status 0: the input was taken".to_owned()),
        Some(101) => problems.push("exit status 101: a panic".to_owned()),
        Some(_) => {}
    }
    for sign in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
        if all.contains(sign) {
            problems.push(format!("the output has {sign:?}"));
        }
    }
    let stderr = out.stderr_str();
    if !stderr.contains(&format!("{}: error: ", row.tool)) {
        problems.push(format!("no `{}: error: ` line", row.tool));
    }
    for word in &row.expect {
        if !stderr.contains(word.as_str()) {
            problems.push(format!("the error lacks {word:?}"));
        }
    }
    if stderr.len() > 4096 {
        problems.push(format!("the error is {} bytes long", stderr.len()));
    }
    if after.handshakes != before.handshakes || after.sshd_log != before.sshd_log {
        problems.push(format!(
            "the target's sshd saw a connection:\n{}",
            &after.sshd_log[before.sshd_log.len().min(after.sshd_log.len())..]
        ));
    }
    if after.rebuilds != before.rebuilds {
        problems.push("nixos-rebuild ran".to_owned());
    }
    if after.remote != before.remote {
        problems.push("the remote target changed".to_owned());
    }
    if after.local != before.local {
        problems.push("the local target changed".to_owned());
    }
    if after.tmp != before.tmp {
        problems.push(format!("temp files left: {:?}", after.tmp));
    }
    problems
}

/// How a row shows in a failure: the tool, the arguments and the start of
/// stdin, each cut short.
fn describe(row: &Row) -> String {
    let cut = |text: &str| -> String {
        if text.chars().count() > 120 {
            format!(
                "{}… ({} bytes)",
                text.chars().take(120).collect::<String>(),
                text.len()
            )
        } else {
            text.to_owned()
        }
    };
    let args: Vec<String> = row
        .args
        .iter()
        .map(|arg| format!("{:?}", cut(arg)))
        .collect();
    format!(
        "[{}] {} {} < {:?}",
        row.class.label(),
        row.tool,
        args.join(" "),
        cut(&String::from_utf8_lossy(&row.stdin))
    )
}

#[test]
fn hostile_input_is_refused_naming_the_field_and_nothing_runs() {
    let (s, _alpha) = Setup::new();
    let rows = rows(&s);
    let mut failures = Vec::new();
    let mut count: BTreeMap<Class, usize> = BTreeMap::new();
    let mut tools: BTreeMap<&str, usize> = BTreeMap::new();
    for row in &rows {
        *count.entry(row.class).or_default() += 1;
        *tools.entry(row.tool).or_default() += 1;
        let before = canary(&s);
        let out = run(&s, row);
        let after = canary(&s);
        let problems = problems(row, &out, &before, &after);
        if !problems.is_empty() {
            let shown: String = out.to_string().chars().take(3000).collect();
            failures.push(format!(
                "{}\n  - {}\n{shown}",
                describe(row),
                problems.join("\n  - ")
            ));
        }
    }
    // The figures for the README's "Reliability" table.
    println!("bad inputs by class ({} in all):", rows.len());
    for (class, n) in &count {
        println!("  {:>3}  {}", n, class.label());
    }
    let fleets = rows
        .iter()
        .filter(|row| row.args.iter().any(|arg| arg == "--fleet"))
        .count();
    println!("by tool: {tools:?}, {fleets} of them --fleet files");
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not refused as they should be:\n\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n\n")
    );
    assert!(rows.len() >= 40, "only {} rows", rows.len());
    // README's count by class is this table's.
    let mut table = String::from("| Class of bad input | Cases |\n|---|---|\n");
    for (class, n) in &count {
        table.push_str(&format!("| {} | {n} |\n", class.label()));
    }
    table.push_str(&format!("| **all** | **{}** |\n", rows.len()));
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let start = "<!-- hostile-counts -->\n";
    let shown = readme
        .split_once(start)
        .and_then(|(_, rest)| rest.split_once("<!-- hostile-counts: end -->"))
        .map(|(block, _)| block);
    assert_eq!(
        shown,
        Some(table.as_str()),
        "README.md's counts of bad inputs are stale; between its hostile-counts markers put:\n{table}"
    );
    for class in Class::ALL {
        assert!(count.contains_key(&class), "no row of class {class:?}");
    }
    for tool in [
        "mktarget",
        "populate",
        "krops-deploy",
        "krops-test",
        "krops-command",
    ] {
        assert!(tools.contains_key(tool), "no row for {tool}");
    }
    // The canary itself works: a good input does reach the target.
    let out = run(
        &s,
        &populate(&s, Class::Name, s.good_sources().to_string(), &[]),
    );
    out.assert_success();
    assert!(
        s.world.handshakes("alpha") > 0,
        "the canary saw no connection"
    );
    assert!(s.remote.join("nixos-config").is_file());
}

/// Control characters where a user may mean them arrive as given: a
/// symlink's text and a file filter's pattern name file names, which may
/// hold a newline, a tab or an escape.
#[test]
fn control_characters_that_may_be_meant_arrive_as_given() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("alpha/src");
    let tree = world.mkdir("tree");
    world.write("tree/keep", "kept\n");
    world.write("tree/skip\nme", "skipped\n");
    let link_text = "line one\nline\ttwo \u{1b}[0m";
    let sources = json!({
        "link": {"symlink": link_text},
        "tree": {"file": {"path": tree.to_str().unwrap(),
                          "filters": [{"type": "exclude", "pattern": "skip\nme"}]}},
    });
    let out = world.run(
        "populate",
        &["--target", &alpha.target("root", &dest), "--force"],
        sources.to_string().as_bytes(),
    );
    out.assert_success();
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new(link_text)
    );
    assert!(dest.join("tree/keep").is_file());
    assert!(
        !dest.join("tree/skip\nme").exists(),
        "the filter was not applied"
    );
}

#[test]
fn malformed_input_is_refused_before_anything_runs() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    let passage = world.passage_store();
    passage.insert("k", "v");
    let dir = passage.dir().to_str().unwrap().to_owned();
    let cases: Vec<(String, &str)> = vec![
        (
            r#"{"a": {"symlink": "x"}, "a": {"symlink": "y"}}"#.to_owned(),
            "duplicate key \"a\"",
        ),
        (
            r#"{"a": {"git": {"url": "u", "ref": "r", "ref": "s"}}}"#.to_owned(),
            "duplicate key \"ref\"",
        ),
        (
            json!({"k": {"passage": {"dir": dir, "identities_file": "/nonexistent/ids"}}})
                .to_string(),
            "source k (passage): passage.identities_file: /nonexistent/ids does not exist",
        ),
    ];
    for (input, expected) in cases {
        let out = world.run(
            "populate",
            &["--target", &target, "--force"],
            input.as_bytes(),
        );
        out.assert_failure().assert_stderr_contains(expected);
        assert!(!dest.exists(), "{input}: the target was touched");
    }
    let out = world.run(
        "krops-deploy",
        &["--target", &target, "--force", "--operation", ""],
        br#"{"l": {"symlink": "x"}}"#,
    );
    out.assert_failure()
        .assert_stderr_contains("krops-deploy: error: --operation \"\"");
    assert!(!dest.exists());
    assert!(world.records("nixos-rebuild").is_empty());
}

#[test]
fn command_line_mistakes_start_with_the_tool_s_name() {
    let world = World::new();
    for tool in [
        "mktarget",
        "populate",
        "krops-deploy",
        "krops-test",
        "krops-command",
    ] {
        let out = world.run(tool, &["--path"], b"");
        let out = if tool == "mktarget" {
            out
        } else {
            world.run(tool, &["--target", "h", "--no-such-flag"], b"")
        };
        out.assert_code(2);
        let stderr = out.stderr_str();
        let first = stderr.lines().next().unwrap_or("");
        assert!(first.starts_with(&format!("{tool}: error: ")), "{out:?}");
        assert!(
            first.contains("'--no-such-flag'") || first.contains("'--path <PATH>'"),
            "{out:?}"
        );
    }
    let out = world.run("populate", &["--help"], b"");
    out.assert_success()
        .assert_stdout_contains("Usage: populate");
}

/// Every mistake on the command line exits 2, as clap's own do, also those
/// found after parsing; nothing runs.
#[test]
fn command_line_mistakes_found_after_parsing_exit_2() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("alpha/src");
    let target = alpha.target("root", &dest);
    let local = world.mkdir("local/src");
    let local = local.to_str().unwrap();
    let dir = world.mkdir("results");
    let dir = dir.to_str().unwrap();
    let missing = world.path("no/such/dir/results.json");
    let missing = missing.to_str().unwrap();
    let t = target.as_str();
    let fleet = |extra: Value| {
        let mut host = json!({"target": t, "source": world.nixos_config(), "force": true});
        for (key, value) in extra.as_object().unwrap() {
            host[key] = value.clone();
        }
        json!({ "web": host }).to_string()
    };
    let good = world.nixos_config().to_string();
    let rows: Vec<(&str, Vec<&str>, String, &str)> = vec![
        (
            "krops-deploy",
            vec!["--target", t, "--check", "true"],
            good.clone(),
            "--check needs --confirm-timeout",
        ),
        (
            "krops-deploy",
            vec![
                "--target",
                t,
                "--confirm-timeout",
                "5",
                "--operation",
                "boot",
            ],
            good.clone(),
            "--confirm-timeout works with --operation switch or test",
        ),
        (
            "krops-deploy",
            vec!["--target", t, "--ask", "--operation", "build"],
            good.clone(),
            "--ask activates the built system",
        ),
        (
            "krops-deploy",
            vec!["--target", t, "--operation", ""],
            good.clone(),
            "--operation \"\": expected a nixos-rebuild operation",
        ),
        (
            "krops-deploy",
            vec!["--target", t, "--preview", "--confirm-timeout", "5"],
            good.clone(),
            "'--preview' cannot be used with '--confirm-timeout <SECONDS>'",
        ),
        (
            "krops-command",
            vec!["--target", t, "--json"],
            good.clone(),
            "--json: stdout carries the command's own output",
        ),
        (
            "krops-test",
            vec!["--target", local, "--json"],
            good.clone(),
            "--json: stdout carries",
        ),
        (
            "populate",
            vec!["--target", t, "--json-file", dir],
            good.clone(),
            "is a directory",
        ),
        (
            "krops-deploy",
            vec!["--target", t, "--json-file", missing],
            good.clone(),
            "is not a directory: the results could not be written",
        ),
        (
            "krops-command",
            vec!["--fleet", "-"],
            fleet(json!({"allocateTTY": true})),
            "fleet.web.allocateTTY: true does not go with --fleet",
        ),
        (
            "krops-command",
            vec!["--fleet", "-", "--allocate-tty"],
            fleet(json!({})),
            "'--fleet <FILE>' cannot be used with '--allocate-tty'",
        ),
    ];
    // The world's own `ssh root@alpha true` that found sshd ready is in
    // its log, maybe only now.
    for _ in 0..100 {
        if world.handshakes("alpha") > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut wrong = Vec::new();
    for (tool, args, stdin, needle) in &rows {
        let before = world.handshakes("alpha");
        let out = world.run(tool, &[&["--force"][..], args].concat(), stdin.as_bytes());
        if out.code() != Some(2)
            || !out.stderr_str().contains(&format!("{tool}: error: "))
            || !out.stderr_str().contains(needle)
        {
            wrong.push(format!(
                "{tool} {args:?}: want exit 2 and {needle:?}\n{out}"
            ));
        }
        if world.handshakes("alpha") != before {
            wrong.push(format!("{tool} {args:?}: it reached the target\n{out}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    assert!(!dest.exists());
    assert!(world.records("nixos-rebuild").is_empty());
}

/// README: command-line mistakes exit 2, also those found after parsing.
/// A `--target` (or `--build-target`) the tools refuse is one, as
/// `--operation ''` and `--confirm-timeout 0` are; it exited 1, like a
/// failed deploy, so a script could not tell the two apart.
#[test]
fn a_bad_target_on_the_command_line_exits_2() {
    let world = World::new();
    let host = world.add_host("alpha");
    let good = host.target("root", &world.path("alpha/src"));
    world.write("cfg/configuration.nix", "{ }\n");
    let sources = json!({"cfg": {"file": world.path("cfg").to_str().unwrap()}});
    let bad = [
        ("/srv/a=b", "contains '='"),
        ("/srv/a:b", "target"),
        ("-oProxyCommand=x/srv", "begins with '-'"),
        ("alpha:0/srv", "not a port number"),
        (r#"{"path": "relative"}"#, "target.path"),
    ];
    for (target, says) in bad {
        for tool in ["populate", "krops-deploy", "krops-command", "krops-test"] {
            let out = world.run(
                tool,
                &["--target", target, "--force"],
                sources.to_string().as_bytes(),
            );
            out.assert_code(2)
                .assert_stderr_contains(&format!("{tool}: error:"))
                .assert_stderr_contains(says);
        }
        let out = world.run_with_sources(
            "krops-deploy",
            &["--target", &good, "--build-target", target, "--force"],
            &sources,
        );
        out.assert_code(2)
            .assert_stderr_contains("krops-deploy: error: --build-target: ")
            .assert_stderr_contains(says);
        // With --json, the document says so too.
        let out = world.run_with_sources("krops-deploy", &["--target", target, "--json"], &sources);
        out.assert_code(2);
        assert!(out.document()["error"].as_str().unwrap().contains(says));
    }
    // krops-test builds here: a remote target is a mistake of the same kind.
    world
        .run(
            "krops-test",
            &["--target", &good],
            sources.to_string().as_bytes(),
        )
        .assert_code(2)
        .assert_stderr_contains("the target must be local");
    assert!(!world.path("alpha/src").exists(), "nothing was synced");
}
