//! What a source is (SPEC §3, "Source input"), parsed once from JSON into
//! validated types. Every refusal names the JSON path of what is wrong.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use mktarget::target::kind;
use serde_json::{Map, Value};

/// All sources of a run, in byte order of their names.
pub type Sources = BTreeMap<String, Source>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Derivation {
        text: String,
    },
    File(FileSource),
    Git(GitSource),
    Pass {
        dir: String,
        name: String,
    },
    Passage {
        dir: String,
        identities_file: String,
        age: String,
    },
    Pipe {
        command: String,
    },
    Symlink {
        target: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSource {
    pub path: String,
    pub use_checksum: bool,
    /// Deprecated in krops in favour of `filters`; still honoured, first.
    pub exclude: Vec<String>,
    pub filters: Vec<Filter>,
    pub delete_excluded: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub include: bool,
    pub pattern: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitSource {
    pub url: String,
    pub git_ref: String,
    pub shallow: bool,
    pub fetch_always: bool,
    pub clean_exclude: Vec<String>,
}

pub const TYPES: [&str; 7] = [
    "derivation",
    "file",
    "git",
    "pass",
    "passage",
    "pipe",
    "symlink",
];

impl Source {
    pub fn type_name(&self) -> &'static str {
        match self {
            Source::Derivation { .. } => "derivation",
            Source::File(_) => "file",
            Source::Git(_) => "git",
            Source::Pass { .. } => "pass",
            Source::Passage { .. } => "passage",
            Source::Pipe { .. } => "pipe",
            Source::Symlink { .. } => "symlink",
        }
    }
}

/// Parses sources.json text. `home` expands `~/` in passage identity paths.
pub fn parse(text: &str, home: Option<&str>) -> Result<Sources> {
    let value = match mktarget::json::parse(text) {
        Ok(value) => value,
        Err(err) => bail!("sources: malformed JSON: {err}"),
    };
    from_json(&value, home)
}

pub fn from_json(value: &Value, home: Option<&str>) -> Result<Sources> {
    let Value::Object(object) = value else {
        bail!(
            "sources: expected an object of name → source, got {}",
            kind(value)
        );
    };
    let mut sources = Sources::new();
    for (name, value) in object {
        check_name(name)?;
        sources.insert(name.clone(), source(name, value, home)?);
    }
    Ok(sources)
}

/// A source name becomes one path component below the target path; names
/// starting with `.populate` are populate's own (the sentinel, its backup,
/// a pipe's temp file).
/// Whether `name` has only portable filename characters: `A-Z a-z 0-9 . _ -`.
pub fn is_portable(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.starts_with('-') || !is_portable(name)
    {
        bail!(
            "sources.{name:?}: a source name must be one path component of the characters \
             A-Z a-z 0-9 . _ - (not \".\", \"..\", nor starting with '-')"
        );
    }
    if name.len() > 255 {
        bail!(
            "sources.{name:?}: a source name is a file name on the target, and those are at most 255 bytes long; this one has {}",
            name.len()
        );
    }
    if name.starts_with(".populate") {
        bail!(
            "sources.{name:?}: names starting with .populate are populate's own on the target \
             (the sentinel PATH/.populate and what it keeps there): choose another name"
        );
    }
    Ok(())
}

fn source(name: &str, value: &Value, home: Option<&str>) -> Result<Source> {
    let Value::Object(object) = value else {
        bail!(
            "{name}: expected an object naming one source type, got {}",
            kind(value)
        );
    };
    let mut declared_type = None;
    let mut present = Vec::new();
    for (key, field) in object {
        if key == "type" {
            match field {
                Value::String(t) if TYPES.contains(&t.as_str()) => declared_type = Some(t.as_str()),
                Value::String(t) => bail!(
                    "{name}.type: unknown source type {t:?} (expected one of {})",
                    TYPES.join(", ")
                ),
                _ => bail!("{name}.type: expected a string, got {}", kind(field)),
            }
        } else if !TYPES.contains(&key.as_str()) {
            bail!(
                "{name}.{key}: unknown field (expected one of type, {})",
                TYPES.join(", ")
            );
        } else if !field.is_null() {
            present.push((key.as_str(), field));
        }
    }
    let (type_name, field) = match present.as_slice() {
        [] => bail!(
            "{name}: no source type given (expected one of {})",
            TYPES.join(", ")
        ),
        [one] => *one,
        several => bail!(
            "{name}: several source types given ({}); a source has exactly one",
            several
                .iter()
                .map(|(t, _)| *t)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if let Some(declared) = declared_type {
        if declared != type_name {
            bail!("{name}.type: says {declared:?} but the source gives {type_name:?}");
        }
    }
    let path = format!("{name}.{type_name}");
    match type_name {
        "derivation" => derivation(&path, field),
        "file" => file(&path, field),
        "git" => git(&path, field),
        "pass" => pass(&path, field),
        "passage" => passage(&path, field, home),
        "pipe" => pipe(&path, field),
        "symlink" => symlink(&path, field),
        _ => unreachable!("type names come from TYPES"),
    }
}

fn derivation(path: &str, value: &Value) -> Result<Source> {
    if let Value::String(text) = value {
        return Ok(Source::Derivation { text: text.clone() });
    }
    let mut fields = Fields::new(path, value)?;
    let text = fields.string("text")?;
    fields.finish()?;
    Ok(Source::Derivation { text })
}

fn file(path: &str, value: &Value) -> Result<Source> {
    let mut fields = match value {
        Value::String(_) => {
            return file_source(absolute(path, value)?, None, Vec::new(), Vec::new(), true)
        }
        _ => Fields::new(path, value)?,
    };
    let local = fields.absolute("path")?;
    let use_checksum = fields.opt_bool("useChecksum")?;
    let exclude = fields.strings("exclude")?;
    let filters = fields.list("filters", filter)?;
    let delete_excluded = fields.opt_bool("deleteExcluded")?.unwrap_or(true);
    fields.finish()?;
    if !exclude.is_empty() {
        eprintln!("populate: warning: {path}.exclude is deprecated, use {path}.filters");
    }
    file_source(local, use_checksum, exclude, filters, delete_excluded)
}

fn file_source(
    path: String,
    use_checksum: Option<bool>,
    exclude: Vec<String>,
    filters: Vec<Filter>,
    delete_excluded: bool,
) -> Result<Source> {
    // Store paths have mangled timestamps: compare contents instead.
    let use_checksum = use_checksum.unwrap_or_else(|| path.starts_with("/nix/store/"));
    Ok(Source::File(FileSource {
        path,
        use_checksum,
        exclude,
        filters,
        delete_excluded,
    }))
}

fn filter(path: &str, value: &Value) -> Result<Filter> {
    let mut fields = Fields::new(path, value)?;
    let include = match fields.opt_string("type")?.as_deref() {
        None | Some("exclude") => false,
        Some("include") => true,
        Some(other) => {
            bail!("{path}.type: unknown filter type {other:?} (expected include or exclude)")
        }
    };
    let pattern = fields.string("pattern")?;
    fields.finish()?;
    Ok(Filter { include, pattern })
}

fn git(path: &str, value: &Value) -> Result<Source> {
    let mut fields = Fields::new(path, value)?;
    let url = fields.string("url")?;
    let git_ref = fields.string("ref")?;
    let shallow = fields.opt_bool("shallow")?.unwrap_or(false);
    let fetch_always = fields.opt_bool("fetchAlways")?.unwrap_or(false);
    let clean_exclude = match fields.take("clean") {
        None => Vec::new(),
        Some(clean) => {
            let mut clean = Fields::new(&format!("{path}.clean"), clean)?;
            let exclude = clean.strings("exclude")?;
            clean.finish()?;
            exclude
        }
    };
    fields.finish()?;
    // git would read these as options: `git clone --upload-pack=…`.
    for (field, value) in [("url", &url), ("ref", &git_ref)] {
        if value.is_empty() || value.starts_with('-') {
            bail!("{path}.{field}: {value:?} must be non-empty and must not begin with '-'");
        }
    }
    if let Some(why) = shallow
        .then(|| crate::git::shallow_refusal(&git_ref))
        .flatten()
    {
        bail!("{path}.ref: {why}");
    }
    Ok(Source::Git(GitSource {
        url,
        git_ref,
        shallow,
        fetch_always,
        clean_exclude,
    }))
}

fn pass(path: &str, value: &Value) -> Result<Source> {
    let mut fields = Fields::new(path, value)?;
    let dir = fields.absolute("dir")?;
    let name = fields.string("name")?;
    fields.finish()?;
    let components: Vec<&str> = name.split('/').filter(|c| !c.is_empty()).collect();
    if name.starts_with('/') || components.is_empty() || components.contains(&"..") {
        bail!("{path}.name: {name:?} must be a relative path inside the password store");
    }
    Ok(Source::Pass { dir, name })
}

fn passage(path: &str, value: &Value, home: Option<&str>) -> Result<Source> {
    let expand = |field: &str, p: String| -> Result<String> {
        let expanded = match (p.strip_prefix("~/"), home) {
            (Some(rest), Some(home)) => format!("{home}/{rest}"),
            (Some(_), None) => bail!("{path}.{field}: {p:?} starts with ~/ but HOME is not set"),
            (None, _) => p,
        };
        if !expanded.starts_with('/') {
            bail!("{path}.{field}: {expanded:?} is not an absolute path");
        }
        Ok(expanded)
    };
    let (dir, identities_file, age) = match value {
        Value::String(dir) => (dir.clone(), None, None),
        _ => {
            let mut fields = Fields::new(path, value)?;
            let dir = fields.string("dir")?;
            let identities = fields.opt_string("identities_file")?;
            let age = fields.opt_string("age")?;
            fields.finish()?;
            (dir, identities, age)
        }
    };
    let dir = expand("dir", dir)?;
    let identities_file = expand(
        "identities_file",
        identities_file.unwrap_or_else(|| "~/.passage/identities".to_owned()),
    )?;
    let age = age.unwrap_or_else(|| "age".to_owned());
    if age.is_empty() || age.starts_with('-') {
        bail!("{path}.age: {age:?} is not a program name or path");
    }
    Ok(Source::Passage {
        dir,
        identities_file,
        age,
    })
}

fn pipe(path: &str, value: &Value) -> Result<Source> {
    if let Value::String(_) = value {
        return Ok(Source::Pipe {
            command: absolute(path, value)?,
        });
    }
    let mut fields = Fields::new(path, value)?;
    let command = fields.absolute("command")?;
    fields.finish()?;
    Ok(Source::Pipe { command })
}

fn symlink(path: &str, value: &Value) -> Result<Source> {
    let target = match value {
        Value::String(target) => target.clone(),
        _ => {
            let mut fields = Fields::new(path, value)?;
            let target = fields.string("target")?;
            fields.finish()?;
            target
        }
    };
    if target.is_empty() {
        bail!("{path}.target: must not be empty");
    }
    Ok(Source::Symlink { target })
}

fn absolute(path: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) if s.starts_with('/') => Ok(s.clone()),
        Value::String(s) => bail!("{path}: {s:?} is not an absolute path"),
        _ => bail!("{path}: expected a string, got {}", kind(value)),
    }
}

/// The fields of one JSON object, taken one by one; what is left over is an
/// unknown field. A null field counts as absent, as in krops's evaluated form.
struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
    taken: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    fn new(path: &str, value: &'a Value) -> Result<Fields<'a>> {
        let Value::Object(map) = value else {
            bail!("{path}: expected an object, got {}", kind(value));
        };
        Ok(Fields {
            path: path.to_owned(),
            map,
            taken: Vec::new(),
        })
    }

    fn take(&mut self, key: &str) -> Option<&'a Value> {
        let (key, value) = self.map.get_key_value(key)?;
        self.taken.push(key);
        Some(value).filter(|v| !v.is_null())
    }

    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn string(&mut self, key: &str) -> Result<String> {
        match self.opt_string(key)? {
            Some(s) => Ok(s),
            None => bail!("{}: missing field", self.field(key)),
        }
    }

    fn opt_string(&mut self, key: &str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => bail!(
                "{}: expected a string, got {}",
                self.field(key),
                kind(other)
            ),
        }
    }

    fn absolute(&mut self, key: &str) -> Result<String> {
        let field = self.field(key);
        match self.take(key) {
            None => bail!("{field}: missing field"),
            Some(value) => absolute(&field, value),
        }
    }

    fn opt_bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => bail!(
                "{}: expected a boolean, got {}",
                self.field(key),
                kind(other)
            ),
        }
    }

    fn list<T>(&mut self, key: &str, item: impl Fn(&str, &Value) -> Result<T>) -> Result<Vec<T>> {
        let field = self.field(key);
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| item(&format!("{field}[{i}]"), v))
                .collect(),
            Some(other) => bail!("{field}: expected a list, got {}", kind(other)),
        }
    }

    fn strings(&mut self, key: &str) -> Result<Vec<String>> {
        self.list(key, |path, value| match value {
            Value::String(s) => Ok(s.clone()),
            other => bail!("{path}: expected a string, got {}", kind(other)),
        })
    }

    fn finish(self) -> Result<()> {
        match self
            .map
            .keys()
            .find(|key| !self.taken.contains(&key.as_str()))
        {
            None => Ok(()),
            Some(key) => bail!("{}.{key}: unknown field", self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(value: Value) -> Result<Sources> {
        from_json(&value, Some("/home/alice"))
    }

    fn refused(value: Value) -> String {
        format!(
            "{:#}",
            parse_json(value.clone()).expect_err(&value.to_string())
        )
    }

    #[test]
    fn short_forms_get_every_default() {
        let sources = parse_json(json!({
            "nixos-config": {"file": "/etc/cfg"},
            "store": {"file": "/nix/store/abc-cfg"},
            "drv": {"derivation": "with import <nixpkgs> {}; hello"},
            "secrets": {"passage": "~/.passage/store/host"},
            "out": {"pipe": "/bin/date"},
            "link": {"symlink": "nixpkgs/lib"},
        }))
        .unwrap();
        assert_eq!(
            sources["nixos-config"],
            Source::File(FileSource {
                path: "/etc/cfg".into(),
                use_checksum: false,
                exclude: vec![],
                filters: vec![],
                delete_excluded: true
            })
        );
        assert!(matches!(&sources["store"], Source::File(f) if f.use_checksum));
        assert_eq!(
            sources["drv"],
            Source::Derivation {
                text: "with import <nixpkgs> {}; hello".into()
            }
        );
        assert_eq!(
            sources["secrets"],
            Source::Passage {
                dir: "/home/alice/.passage/store/host".into(),
                identities_file: "/home/alice/.passage/identities".into(),
                age: "age".into()
            }
        );
        assert_eq!(
            sources["out"],
            Source::Pipe {
                command: "/bin/date".into()
            }
        );
        assert_eq!(
            sources["link"],
            Source::Symlink {
                target: "nixpkgs/lib".into()
            }
        );
    }

    #[test]
    fn krops_evaluated_form_is_accepted() {
        // What `builtins.toJSON (lib.evalSource [...])` prints, with null keys.
        let sources = parse_json(json!({
            "nixpkgs": {
                "derivation": null, "file": null, "pass": null, "passage": null,
                "pipe": null, "symlink": null, "type": "git",
                "git": {
                    "clean": {"exclude": ["/.version-suffix"]}, "fetchAlways": false,
                    "ref": "4b4bbce199d3b3a8001ee93495604289b01aaad3",
                    "shallow": true, "url": "https://github.com/NixOS/nixpkgs"
                }
            },
            "nixos-config": {
                "type": "file",
                "file": {"deleteExcluded": true, "exclude": [], "filters": [{"pattern": "*.nix", "type": "include"}],
                         "path": "/nix/store/x-nixos-config", "useChecksum": false}
            }
        }))
        .unwrap();
        let Source::Git(git) = &sources["nixpkgs"] else {
            panic!()
        };
        assert!(git.shallow && !git.fetch_always);
        assert_eq!(git.clean_exclude, ["/.version-suffix"]);
        let Source::File(file) = &sources["nixos-config"] else {
            panic!()
        };
        assert!(!file.use_checksum, "an explicit useChecksum wins");
        assert_eq!(
            file.filters,
            [Filter {
                include: true,
                pattern: "*.nix".into()
            }]
        );
    }

    #[test]
    fn sources_are_in_byte_order() {
        let sources = parse_json(
            json!({"b": {"symlink": "x"}, "B": {"symlink": "x"}, "a": {"symlink": "x"}}),
        )
        .unwrap();
        assert_eq!(sources.keys().collect::<Vec<_>>(), ["B", "a", "b"]);
    }

    #[test]
    fn refusals_name_the_json_path() {
        let cases = [
            (
                json!({"nixpkgs": {"git": {"url": "u"}}}),
                "nixpkgs.git.ref: missing field",
            ),
            (
                json!({"x": {"git": {"url": "u", "ref": "r", "shalow": true}}}),
                "x.git.shalow: unknown field",
            ),
            (
                json!({"x": {"git": {"url": "u", "ref": 1}}}),
                "x.git.ref: expected a string, got a number",
            ),
            (
                json!({"x": {"git": {"url": "--upload-pack=touch /tmp/x", "ref": "r"}}}),
                "x.git.url",
            ),
            (
                json!({"x": {"git": {"url": "u", "ref": "-r"}}}),
                "x.git.ref",
            ),
            (
                json!({"x": {"git": {"url": "u", "ref": "r", "clean": {"exclude": [1]}}}}),
                "x.git.clean.exclude[0]",
            ),
            (
                json!({"x": {"file": "etc/cfg"}}),
                "x.file: \"etc/cfg\" is not an absolute path",
            ),
            (
                json!({"x": {"file": {"path": "/a", "filters": [{"type": "maybe", "pattern": "*"}]}}}),
                "x.file.filters[0].type: unknown filter type",
            ),
            (
                json!({"x": {"file": {"path": "/a", "useChecksum": "yes"}}}),
                "x.file.useChecksum: expected a boolean",
            ),
            (
                json!({"x": {"pass": {"dir": "/p", "name": "../etc"}}}),
                "x.pass.name",
            ),
            (
                json!({"x": {"pass": {"dir": "p", "name": "n"}}}),
                "x.pass.dir",
            ),
            (json!({"x": {"pipe": "date"}}), "x.pipe"),
            (
                json!({"x": {"passage": {"dir": "/d", "identities_file": "ids"}}}),
                "x.passage.identities_file",
            ),
            (json!({"x": {"rsync": "/a"}}), "x.rsync: unknown field"),
            (
                json!({"x": {"type": "ftp", "file": "/a"}}),
                "x.type: unknown source type \"ftp\"",
            ),
            (
                json!({"x": {"type": "git", "file": "/a"}}),
                "x.type: says \"git\"",
            ),
            (
                json!({"x": {"file": "/a", "symlink": "b"}}),
                "x: several source types given (file, symlink)",
            ),
            (json!({"x": {}}), "x: no source type given"),
            (json!({"x": "/a"}), "x: expected an object"),
            (
                json!({"..": {"symlink": "x"}}),
                "sources.\"..\": a source name",
            ),
            (json!({".": {"symlink": "x"}}), "sources.\".\""),
            (json!({"a/b": {"symlink": "x"}}), "sources.\"a/b\""),
            (json!({"-x": {"symlink": "x"}}), "sources.\"-x\""),
            (json!({"": {"symlink": "x"}}), "sources.\"\""),
            (
                json!({".populate": {"file": "/a"}}),
                "sources.\".populate\": names starting with .populate",
            ),
            (
                json!({".populate-pipe.x": {"symlink": "x"}}),
                "sources.\".populate-pipe.x\"",
            ),
            (json!(["x"]), "sources: expected an object"),
        ];
        let long = "n".repeat(256);
        let err = refused(json!({ long.clone(): {"symlink": "x"} }));
        assert!(
            err.contains("at most 255 bytes long; this one has 256"),
            "{err}"
        );
        assert!(parse(&json!({ &long[1..]: {"symlink": "x"} }).to_string(), None).is_ok());
        for (input, expected) in cases {
            let err = refused(input.clone());
            assert!(
                err.contains(expected),
                "{input}: expected {expected:?} in {err:?}"
            );
        }
        let err = format!("{:#}", parse("{", None).unwrap_err());
        assert!(err.contains("sources: malformed JSON"), "{err}");
    }
}
