//! The fleet file: host names, their settings as a driver's options, and
//! `--on`'s selection of hosts.

use std::path::Path;

use anyhow::{bail, Context, Result};
use mktarget::json::{kind, shown, shown_key};
use mktarget::tool::usage;
use mktarget::{Origin, Target};
use populate::source::is_portable;
use serde_json::Value;

/// What a fleet host may set besides `target` and `source`: a writer's
/// attribute and the option of the driver it becomes.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The attribute, in krops's words (`crossDeploy`).
    pub key: &'static str,
    /// The driver's option (`--cross-deploy`); unused for [`SettingKind::Script`].
    pub option: &'static str,
    pub kind: SettingKind,
    /// Options of the command line that make this setting moot: with one
    /// of them, the host runs without it (`--preview` activates nothing,
    /// so a `confirmTimeout` has nothing to confirm).
    pub unless: &'static [&'static str],
}

#[derive(Clone, Copy, Debug)]
pub enum SettingKind {
    /// A boolean: the option (a flag) when true.
    Flag,
    /// A string, the option's value.
    Text,
    /// A target as `--target` takes it (a string or an object), or null.
    Target,
    /// A boolean or one of these strings (the option's values, as
    /// [`choices`] reads them from clap), the option's value.
    Choice(fn() -> Vec<String>),
    /// A string, the driver's SCRIPT argument.
    Script,
    /// A whole number of at least 1, the option's value (seconds), or null (none).
    Count,
    /// A JSON object a host's run reads from a file of the fleet's (the
    /// option's value is its path), checked by the function given: `keys`.
    JsonFile(fn(&Value) -> Result<()>),
    /// A boolean that only a host's run alone can have true (the option,
    /// a terminal's): true is a usage error, saying why.
    NotInFleet(&'static str),
    /// An object of names to strings, or null (none): the option once a
    /// pair, its value `NAME=STRING` (`flakeInputs`: `--flake-input`).
    Pairs,
}

/// The values of an option whose values are `E`'s, as its `--help` lists
/// them: for [`SettingKind::Choice`].
pub fn choices<E: clap::ValueEnum>() -> Vec<String> {
    E::value_variants()
        .iter()
        .filter_map(E::to_possible_value)
        .filter(|value| !value.is_hide_set())
        .map(|value| value.get_name().to_owned())
        .collect()
}

/// One host of the fleet, checked.
#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub target: Target,
    /// Its sources, as the JSON `populate --sources` reads.
    pub sources: Value,
    /// Each setting it makes: the setting and the words it becomes.
    pub settings: Vec<(Setting, Vec<String>)>,
    /// Its `tags`, which `--on @TAG` picks it by (README: Many hosts at once).
    pub tags: Vec<String>,
}

/// What a host has besides its settings: the fleet's own attributes.
const HOST_KEYS: [&str; 3] = ["target", "source", "tags"];

/// Host names: portable characters only (they prefix output lines and name
/// files), not starting with `-`, not `.` or `..`.
pub(crate) fn check_host_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('-')
        || name == "."
        || name == ".."
        || !is_portable(name)
        || name.len() > 255
    {
        bail!(
            "fleet.{}: a host name must be 1 to 255 of the characters A-Z a-z 0-9 . _ - \
             and not start with '-' (nor be \".\" or \"..\")",
            shown(name)
        );
    }
    Ok(())
}

/// Parses and checks a fleet file; `settings` are the driver's.
pub fn parse(
    text: &str,
    settings: &[Setting],
    origin: &Origin,
    home: Option<&str>,
) -> Result<Vec<Host>> {
    let value = match mktarget::json::parse(text) {
        Ok(value) => value,
        Err(err) => bail!("fleet: malformed JSON: {err}"),
    };
    let Value::Object(object) = value else {
        bail!(
            "fleet: expected an object of host name → {{target, source, …}}, got {}",
            kind(&value)
        );
    };
    if object.is_empty() {
        bail!("fleet: no hosts: the object names none");
    }
    object
        .iter()
        .map(|(name, value)| host(name, value, settings, origin, home))
        .collect()
}

pub(crate) fn host(
    name: &str,
    value: &Value,
    settings: &[Setting],
    origin: &Origin,
    home: Option<&str>,
) -> Result<Host> {
    check_host_name(name)?;
    let path = format!("fleet.{name}");
    let Value::Object(object) = value else {
        bail!(
            "{path}: expected an object with target and source, got {}",
            kind(value)
        );
    };
    let expected = || {
        HOST_KEYS
            .into_iter()
            .chain(settings.iter().map(|s| s.key))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for key in object.keys() {
        if !HOST_KEYS.contains(&key.as_str()) && !settings.iter().any(|s| s.key == key) {
            bail!(
                "{path}.{}: unknown field (expected {})",
                shown_key(key),
                expected()
            );
        }
    }
    let required = |key: &str| {
        object
            .get(key)
            .with_context(|| format!("{path}.{key}: missing field"))
    };
    let target = target(required("target")?, origin)
        .with_context(|| format!("{path}.target"))?
        .with_context(|| format!("{path}.target: must not be null"))?;
    let sources = required("source")?.clone();
    populate::source::from_json(&sources, home).with_context(|| format!("{path}.source"))?;
    let tags = match object.get("tags") {
        None => Vec::new(),
        Some(value) => tags(value).with_context(|| format!("{path}.tags"))?,
    };
    let mut made = Vec::new();
    for setting in settings {
        if let Some(value) = object.get(setting.key) {
            let words =
                words(setting, value, origin).with_context(|| format!("{path}.{}", setting.key))?;
            made.push((*setting, words));
        }
    }
    Ok(Host {
        name: name.to_owned(),
        target,
        sources,
        settings: made,
        tags,
    })
}

/// A host's `tags`: a list of names of the characters of host names (they
/// follow `@` in `--on`, which a comma would split), each once.
fn tags(value: &Value) -> Result<Vec<String>> {
    let Value::Array(list) = value else {
        bail!("expected a list of tags (strings), got {}", kind(value));
    };
    let mut tags: Vec<String> = Vec::new();
    for (i, tag) in list.iter().enumerate() {
        let Value::String(tag) = tag else {
            bail!("[{i}]: expected a tag (a string), got {}", kind(tag));
        };
        if tag.is_empty() || tag.starts_with('-') || !is_portable(tag) || tag.len() > 255 {
            bail!(
                "[{i}]: {}: a tag must be 1 to 255 of the characters A-Z a-z 0-9 . _ - and not \
                 start with '-'",
                shown(tag)
            );
        }
        if tags.contains(tag) {
            bail!("[{i}]: {} is given twice", shown(tag));
        }
        tags.push(tag.clone());
    }
    Ok(tags)
}

/// A target as a writer takes it: a string, an object, or null (none).
pub(crate) fn target(value: &Value, origin: &Origin) -> Result<Option<Target>> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Target::parse(s, origin).map(Some),
        Value::Object(_) => Target::from_json(value, origin).map(Some),
        _ => bail!("expected a target string or object, got {}", kind(value)),
    }
}

/// The words a setting becomes on the host's command line (none when off).
/// A value is joined to its option (`--operation=VALUE`), so that one
/// starting with `-` is read as the value and checked by the tool.
pub(crate) fn words(setting: &Setting, value: &Value, origin: &Origin) -> Result<Vec<String>> {
    let option = setting.option.to_owned();
    let valued = |value: &str| vec![format!("{option}={value}")];
    Ok(match (setting.kind, value) {
        (SettingKind::Flag, Value::Bool(on)) => {
            if *on {
                vec![option]
            } else {
                vec![]
            }
        }
        (SettingKind::Flag | SettingKind::NotInFleet(_), _) if !value.is_boolean() => {
            bail!("expected a boolean, got {}", kind(value))
        }
        (SettingKind::NotInFleet(why), Value::Bool(true)) => {
            return Err(usage(format!("true does not go with --fleet: {why}")))
        }
        (SettingKind::Flag | SettingKind::NotInFleet(_), _) => vec![],
        // An option's value is one line; a script may span lines, but no
        // argument holds a NUL byte.
        (SettingKind::Text, Value::String(s)) if s.contains(char::is_control) => bail!(
            "{} contains a control character (a newline, a tab, a NUL byte)",
            shown(s)
        ),
        (SettingKind::Text, Value::String(s)) => valued(s),
        (SettingKind::Text, _) => bail!("expected a string, got {}", kind(value)),
        (SettingKind::Script, Value::String(s)) if s.contains('\0') => {
            bail!("{} contains a NUL byte", shown(s))
        }
        (SettingKind::Script, Value::String(s)) => vec![s.clone()],
        (SettingKind::Script, _) => bail!("expected a script (a string), got {}", kind(value)),
        (SettingKind::Target, _) => match target(value, origin)? {
            Some(target) => valued(&serde_json::to_string(&target)?),
            None => vec![],
        },
        (SettingKind::JsonFile(_), Value::Null) => vec![],
        (SettingKind::JsonFile(check), _) => {
            check(value)?;
            vec![serde_json::to_string(value)?]
        }
        (SettingKind::Count, Value::Null) => vec![],
        (SettingKind::Count, Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {
            valued(&n.to_string())
        }
        (SettingKind::Count, _) => bail!("expected a whole number of at least 1, got {value}"),
        (SettingKind::Pairs, Value::Null) => vec![],
        (SettingKind::Pairs, Value::Object(pairs)) => {
            let mut words = Vec::new();
            for (name, value) in pairs {
                let Value::String(s) = value else {
                    bail!(
                        "{}: expected a string, got {}",
                        shown_key(name),
                        kind(value)
                    );
                };
                if name.contains('=') || name.contains(char::is_control) {
                    bail!(
                        "{}: a name holds no '=' and no control character",
                        shown_key(name)
                    );
                }
                if s.contains(char::is_control) {
                    bail!(
                        "{}: {} contains a control character",
                        shown_key(name),
                        shown(s)
                    );
                }
                words.extend(valued(&format!("{name}={s}")));
            }
            words
        }
        (SettingKind::Pairs, _) => bail!(
            "expected an object of names to strings, got {}",
            kind(value)
        ),
        (SettingKind::Choice(_), Value::Bool(b)) => valued(&b.to_string()),
        (SettingKind::Choice(choices), Value::String(s)) if choices().contains(s) => valued(s),
        (SettingKind::Choice(choices), Value::String(s)) => bail!(
            "expected a boolean or one of {}, got {}",
            choices().join(", "),
            shown(s)
        ),
        (SettingKind::Choice(choices), _) => bail!(
            "expected a boolean or one of {}, got {}",
            choices().join(", "),
            kind(value)
        ),
    })
}

/// Whether `name` matches `pattern`, where `*` matches any characters and
/// `?` one (nothing else is special, as `wildmatch` has it).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    wildmatch::WildMatch::new(pattern).matches(name)
}

/// Whether `host` is what one word of `--on` names: `@TAG` a host with a
/// tag `TAG` matches (a pattern too), else a name or a pattern of names.
fn picks(word: &str, host: &Host) -> bool {
    match word.strip_prefix('@') {
        Some(tag) => host.tags.iter().any(|t| glob_match(tag, t)),
        None => glob_match(word, &host.name),
    }
}

/// The hosts `--on` picks (all when it is empty), in name order; a name,
/// pattern or `@TAG` that picks no host is an error naming it.
pub fn select(hosts: Vec<Host>, on: &[String]) -> Result<Vec<Host>> {
    if on.is_empty() {
        return Ok(hosts);
    }
    for word in on {
        if word == "@" {
            bail!("--on \"@\": expected a tag after @ (--on @web)");
        }
        if hosts.iter().any(|host| picks(word, host)) {
            continue;
        }
        if let Some(tag) = word.strip_prefix('@') {
            let mut known: Vec<&str> = hosts
                .iter()
                .flat_map(|host| host.tags.iter().map(String::as_str))
                .collect();
            known.sort_unstable();
            known.dedup();
            let known = if known.is_empty() {
                "no host has a tag".to_owned()
            } else {
                format!("the tags are {}", known.join(", "))
            };
            bail!("--on {word:?}: no host of the fleet has the tag {tag:?} ({known})");
        }
        let names: Vec<&str> = hosts.iter().map(|host| host.name.as_str()).collect();
        let tagged = hosts
            .iter()
            .any(|host| host.tags.iter().any(|tag| glob_match(word, tag)));
        let hint = if tagged {
            format!("; hosts with such a tag are picked with @{word}")
        } else {
            String::new()
        };
        bail!(
            "--on {word:?} matches no host of the fleet ({}){hint}",
            names.join(", ")
        );
    }
    Ok(hosts
        .into_iter()
        .filter(|host| on.iter().any(|word| picks(word, host)))
        .collect())
}

/// Reads the fleet file (`-`: stdin).
pub(crate) fn read(file: &Path) -> Result<String> {
    if file == Path::new("-") {
        mktarget::json::read(std::io::stdin(), "the fleet from stdin")
    } else {
        let what = format!("the fleet from {}", file.display());
        let file = std::fs::File::open(file).with_context(|| format!("cannot read {what}"))?;
        mktarget::json::read(file, &what)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{json, Value};

    use super::*;
    use mktarget::testing::origin;

    pub(crate) const SETTINGS: &[Setting] = &[
        Setting {
            key: "operation",
            option: "--operation",
            kind: SettingKind::Text,
            unless: &[],
        },
        Setting {
            key: "force",
            option: "--force",
            kind: SettingKind::Flag,
            unless: &[],
        },
        Setting {
            key: "buildTarget",
            option: "--build-target",
            kind: SettingKind::Target,
            unless: &[],
        },
        Setting {
            key: "useNixOutputMonitor",
            option: "--nom",
            kind: SettingKind::Choice(|| vec!["opportunistic".into(), "false".into()]),
            unless: &[],
        },
        Setting {
            key: "command",
            option: "",
            kind: SettingKind::Script,
            unless: &[],
        },
        Setting {
            key: "confirmTimeout",
            option: "--confirm-timeout",
            kind: SettingKind::Count,
            unless: &["--preview"],
        },
        Setting {
            key: "allocateTTY",
            option: "--allocate-tty",
            kind: SettingKind::NotInFleet("no terminal"),
            unless: &[],
        },
    ];

    fn parse_err(fleet: Value) -> String {
        format!(
            "{:#}",
            parse(&fleet.to_string(), SETTINGS, &origin(), None).unwrap_err()
        )
    }

    pub(crate) fn host(value: Value) -> Host {
        let fleet = json!({ "web1": value });
        parse(&fleet.to_string(), SETTINGS, &origin(), None)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn errors_name_the_path() {
        let good = json!({"target": "root@web1", "source": {}});
        let with = |key: &str, value: Value| {
            let mut host = good.clone();
            host[key] = value;
            json!({ "web1": host })
        };
        for (fleet, expected) in [
            (json!([]), "fleet: expected an object"),
            (json!({}), "fleet: no hosts"),
            (json!({"web 1": good}), "fleet.\"web 1\": a host name"),
            (json!({"-web": good}), "fleet.\"-web\": a host name"),
            (json!({"web1": 3}), "fleet.web1: expected an object"),
            (
                with("targte", json!("x")),
                "fleet.web1.targte: unknown field",
            ),
            (
                json!({"web1": {"source": {}}}),
                "fleet.web1.target: missing field",
            ),
            (
                json!({"web1": {"target": "root@web1"}}),
                "fleet.web1.source: missing field",
            ),
            (
                with("target", json!(7)),
                "fleet.web1.target: expected a target",
            ),
            (
                with("target", json!(null)),
                "fleet.web1.target: must not be null",
            ),
            (
                with("target", json!({"host": "h", "prot": 1})),
                "fleet.web1.target: target.prot: unknown field",
            ),
            (
                with("source", json!({"x": {"nope": 1}})),
                "fleet.web1.source: x.nope: unknown field",
            ),
            (
                with("force", json!("yes")),
                "fleet.web1.force: expected a boolean",
            ),
            (
                with("operation", json!(1)),
                "fleet.web1.operation: expected a string",
            ),
            (
                with("useNixOutputMonitor", json!("sometimes")),
                "fleet.web1.useNixOutputMonitor: expected a boolean or one of",
            ),
            (
                with("buildTarget", json!("-oops")),
                "fleet.web1.buildTarget: ",
            ),
            (
                with("confirmTimeout", json!(0)),
                "fleet.web1.confirmTimeout: expected a whole number of at least 1, got 0",
            ),
            (
                with("confirmTimeout", json!(2.5)),
                "fleet.web1.confirmTimeout: expected a whole number",
            ),
            (
                with("confirmTimeout", json!("30")),
                "fleet.web1.confirmTimeout: expected a whole number",
            ),
            (json!({"..": good}), "fleet.\"..\": a host name"),
            (json!({".": good}), "fleet.\".\": a host name"),
            (
                with("operation", json!("boot\n--rollback")),
                "fleet.web1.operation: \"boot\\n--rollback\" contains a control character",
            ),
            (
                with("command", json!("true\0")),
                "fleet.web1.command: \"true\\0\" contains a NUL byte",
            ),
            (
                with("useNixOutputMonitor", json!(["x".repeat(1000)])),
                "fleet.web1.useNixOutputMonitor: expected a boolean or one of opportunistic, false, got a list",
            ),
        ] {
            let err = parse_err(fleet.clone());
            assert!(err.contains(expected), "{fleet}: {err}");
        }
        let err = format!(
            "{:#}",
            parse(
                r#"{"a": {"target": "t", "source": {}}, "a": {}}"#,
                SETTINGS,
                &origin(),
                None
            )
            .unwrap_err()
        );
        assert!(err.contains("duplicate key \"a\""), "{err}");
    }

    #[test]
    fn settings_become_options() {
        let web1 = host(json!({
            "target": {"host": "web1", "user": "root"},
            "source": {"s": {"symlink": "x"}},
            "operation": "boot", "force": true, "buildTarget": "b",
            "useNixOutputMonitor": false, "command": "echo hi", "confirmTimeout": 30,
        }));
        let words: Vec<Vec<String>> = web1.settings.iter().map(|(_, w)| w.clone()).collect();
        assert_eq!(words[0], ["--operation=boot"]);
        assert_eq!(words[1], ["--force"]);
        assert!(words[2][0].starts_with("--build-target={"));
        assert!(words[2][0].contains("\"host\":\"b\""));
        assert_eq!(words[3], ["--nom=false"]);
        assert_eq!(words[4], ["echo hi"]);
        assert_eq!(words[5], ["--confirm-timeout=30"]);
        assert!(
            host(json!({"target": "t", "source": {}, "confirmTimeout": null})).settings[0]
                .1
                .is_empty()
        );
        assert!(
            host(json!({"target": "t", "source": {}, "force": false})).settings[0]
                .1
                .is_empty()
        );
    }

    #[test]
    fn on_picks_hosts_by_tag_mixed_with_names_and_patterns() {
        let fleet = json!({
            "web1": {"target": "a", "source": {}, "tags": ["web", "eu"]},
            "web2": {"target": "b", "source": {}, "tags": ["web", "us"]},
            "db1": {"target": "c", "source": {}, "tags": ["db", "eu"]},
            "mail": {"target": "d", "source": {}},
        });
        let hosts = || parse(&fleet.to_string(), SETTINGS, &origin(), None).unwrap();
        let names = |on: &[&str]| -> Result<Vec<String>> {
            let on: Vec<String> = on.iter().map(|s| s.to_string()).collect();
            Ok(select(hosts(), &on)?.into_iter().map(|h| h.name).collect())
        };
        assert_eq!(names(&["@web"]).unwrap(), ["web1", "web2"]);
        assert_eq!(names(&["@web", "db1"]).unwrap(), ["db1", "web1", "web2"]);
        assert_eq!(names(&["@eu", "m*"]).unwrap(), ["db1", "mail", "web1"]);
        assert_eq!(names(&["@u*"]).unwrap(), ["web2"]);
        let err = format!("{:#}", names(&["@web", "@asia"]).unwrap_err());
        assert_eq!(
            err,
            "--on \"@asia\": no host of the fleet has the tag \"asia\" (the tags are db, eu, \
             us, web)"
        );
        let err = format!("{:#}", names(&["@"]).unwrap_err());
        assert!(err.contains("expected a tag after @"), "{err}");
        // A tag without its @ is a name, which the error says.
        let err = format!("{:#}", names(&["web"]).unwrap_err());
        assert_eq!(
            err,
            "--on \"web\" matches no host of the fleet (db1, mail, web1, web2); hosts with such a \
             tag are picked with @web"
        );
        // A host named like a tag is not a tag.
        let err = format!("{:#}", names(&["@mail"]).unwrap_err());
        assert!(err.contains("has the tag \"mail\""), "{err}");
    }

    #[test]
    fn tags_are_checked() {
        let with = |tags: Value| json!({"web1": {"target": "a", "source": {}, "tags": tags}});
        for (tags, expected) in [
            (
                json!("web"),
                "fleet.web1.tags: expected a list of tags (strings), got a string",
            ),
            (
                json!([1]),
                "fleet.web1.tags: [0]: expected a tag (a string), got a number",
            ),
            (
                json!(["web", ""]),
                "fleet.web1.tags: [1]: \"\": a tag must be",
            ),
            (
                json!(["a,b"]),
                "fleet.web1.tags: [0]: \"a,b\": a tag must be",
            ),
            (json!(["-x"]), "fleet.web1.tags: [0]: \"-x\": a tag must be"),
            (
                json!(["web", "web"]),
                "fleet.web1.tags: [1]: \"web\" is given twice",
            ),
        ] {
            let err = parse_err(with(tags.clone()));
            assert!(err.contains(expected), "{tags}: {err}");
        }
        assert_eq!(
            host(json!({"target": "a", "source": {}, "tags": ["x", "y"]})).tags,
            ["x", "y"]
        );
        assert!(host(json!({"target": "a", "source": {}})).tags.is_empty());
    }

    #[test]
    fn globs_match_like_the_shell() {
        for (pattern, name, matches) in [
            ("web*", "web1", true),
            ("web*", "web", true),
            ("web*", "db1", false),
            ("w?b1", "web1", true),
            ("w?b1", "wb1", false),
            ("*", "anything", true),
            ("*1", "web1", true),
            ("*b*1", "web21", true),
            ("web1", "web1", true),
            ("web1", "web10", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("web[1]", "web[1]", true),
            ("web[1]", "web1", false),
        ] {
            assert_eq!(glob_match(pattern, name), matches, "{pattern} {name}");
        }
    }

    #[test]
    fn on_selects_and_names_patterns_matching_nothing() {
        let fleet = json!({
            "web1": {"target": "a", "source": {}},
            "web2": {"target": "b", "source": {}},
            "db1": {"target": "c", "source": {}},
        });
        let hosts = || parse(&fleet.to_string(), SETTINGS, &origin(), None).unwrap();
        let names = |on: &[&str]| -> Vec<String> {
            let on: Vec<String> = on.iter().map(|s| s.to_string()).collect();
            select(hosts(), &on)
                .unwrap()
                .into_iter()
                .map(|h| h.name)
                .collect()
        };
        assert_eq!(names(&[]), ["db1", "web1", "web2"]);
        assert_eq!(names(&["web*"]), ["web1", "web2"]);
        assert_eq!(names(&["db1", "web2"]), ["db1", "web2"]);
        let err = select(hosts(), &["web*".into(), "mail*".into()]).unwrap_err();

        assert!(
            err.to_string().contains("--on \"mail*\" matches no host"),
            "{err}"
        );
    }

    #[test]
    fn pairs_become_one_option_each_and_bad_ones_name_their_key() {
        const FLAKE: &[Setting] = &[Setting {
            key: "flakeInputs",
            option: "--flake-input",
            kind: SettingKind::Pairs,
            unless: &[],
        }];
        let run = |inputs: Value| {
            let fleet =
                json!({"web1": {"target": "root@web1", "source": {}, "flakeInputs": inputs}});
            parse(&fleet.to_string(), FLAKE, &origin(), None)
                .map(|mut hosts| hosts.remove(0).settings.remove(0).1)
                .map_err(|err| format!("{err:#}"))
        };
        assert_eq!(
            run(json!({"nixpkgs": "nixpkgs", "home-manager/nixpkgs": "np"})).unwrap(),
            [
                "--flake-input=home-manager/nixpkgs=np",
                "--flake-input=nixpkgs=nixpkgs"
            ]
        );
        assert_eq!(run(json!(null)).unwrap(), Vec::<String>::new());
        for (inputs, says) in [
            (
                json!(["nixpkgs"]),
                "fleet.web1.flakeInputs: expected an object",
            ),
            (
                json!({"nixpkgs": 1}),
                "fleet.web1.flakeInputs: nixpkgs: expected a string",
            ),
            (
                json!({"a=b": "c"}),
                "fleet.web1.flakeInputs: \"a=b\": a name holds no '='",
            ),
            (json!({"n": "a\nb"}), "contains a control character"),
        ] {
            let err = run(inputs).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }
}
