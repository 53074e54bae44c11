//! What a source is (README: Sources): parsed once from JSON into
//! validated types, every refusal naming the JSON path of what is wrong;
//! and what each does on the target ([`Work`]). One module a source type,
//! each with its fields, its parser and its work.

pub(crate) mod fields;
pub(crate) mod store;

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use mktarget::json::{kind, shown, shown_key};
use mktarget::Session;
use serde_json::Value;

use crate::step::Work;

pub use file::Filter;

/// All sources of a run, in byte order of their names.
pub type Sources = BTreeMap<String, Source>;

/// Declares the source types, one line each: `Variant(module::Type) =
/// "name"`, where `name` is the key that names it in sources.json and
/// `module` (a file of this directory) has `parse(path, value)` and
/// `Type::work(session, p)`; `with PARSE` gives a parse of its own
/// (`|path, value, home|`). From it come [`Source`], [`Kind`], `Kind::ALL`,
/// the names and the dispatch to each module. Adding a source type is a
/// line here, its module, its entry in `lib/default.nix`'s `sourceTypes`
/// and its row in the README (tests/contract.rs checks those two).
macro_rules! source_types {
    ($($variant:ident($module:ident::$type:ident) = $name:literal $(with $parse:expr)?,)*) => {
        $(
            pub(crate) mod $module;
            pub use $module::$type;
        )*

        /// One source, parsed and checked: a variant a source type.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Source {
            $($variant($type),)*
        }

        /// A source type: the key that names it in sources.json.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Kind {
            $($variant,)*
        }

        impl Kind {
            pub const ALL: [Kind; [$($name),*].len()] = [$(Kind::$variant),*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Kind::$variant => $name,)*
                }
            }
        }

        impl Source {
            pub fn kind(&self) -> Kind {
                match self {
                    $(Source::$variant(_) => Kind::$variant,)*
                }
            }

            /// What the source does at `p` on the target; refuses what is
            /// missing here (a file, a store, a command).
            pub(crate) fn work(&self, session: &Session, p: &str) -> Result<Work> {
                match self {
                    $(Source::$variant(source) => source.work(session, p),)*
                }
            }
        }

        /// `value`, at `path` in sources.json, as a source of type `kind`.
        fn parse_as(kind: Kind, path: &str, value: &Value, home: Option<&str>) -> Result<Source> {
            match kind {
                $(Kind::$variant => {
                    source_types!(@parse $module $($parse)?)(path, value, home).map(Source::$variant)
                })*
            }
        }
    };
    (@parse $module:ident) => {
        |path, value, _home| $module::parse(path, value)
    };
    (@parse $module:ident $parse:expr) => {
        $parse
    };
}

source_types! {
    Derivation(derivation::DerivationSource) = "derivation",
    File(file::FileSource) = "file",
    Git(git::GitSource) = "git",
    Pass(pass::PassSource) = "pass",
    // `~/` in its paths is the home directory.
    Passage(passage::PassageSource) = "passage" with passage::parse,
    Pipe(pipe::PipeSource) = "pipe",
    Symlink(symlink::SymlinkSource) = "symlink",
}

impl Kind {
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// `derivation, file, …`, for messages.
    fn list() -> String {
        Kind::ALL.map(Kind::name).join(", ")
    }
}

impl Source {
    pub fn type_name(&self) -> &'static str {
        self.kind().name()
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
    let shown = shown(name);
    if name.is_empty() || name == "." || name == ".." || name.starts_with('-') || !is_portable(name)
    {
        bail!(
            "sources.{shown}: a source name must be one path component of the characters \
             A-Z a-z 0-9 . _ - (not \".\", \"..\", nor starting with '-')"
        );
    }
    if name.len() > 255 {
        bail!(
            "sources.{shown}: a source name is a file name on the target, and those are at most 255 bytes long; this one has {}",
            name.len()
        );
    }
    if name.starts_with(".populate") {
        bail!(
            "sources.{shown}: names starting with .populate are populate's own on the target \
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
    let mut declared = None;
    let mut present = Vec::new();
    for (key, field) in object {
        if key == "type" {
            match field {
                Value::String(t) => match Kind::from_name(t) {
                    Some(kind) => declared = Some(kind),
                    None => bail!(
                        "{name}.type: unknown source type {} (expected one of {})",
                        shown(t),
                        Kind::list()
                    ),
                },
                _ => bail!("{name}.type: expected a string, got {}", kind(field)),
            }
        } else if let Some(kind) = Kind::from_name(key) {
            if !field.is_null() {
                present.push((kind, field));
            }
        } else {
            bail!(
                "{name}.{}: unknown field (expected one of type, {})",
                shown_key(key),
                Kind::list()
            );
        }
    }
    let (given, field) = match present.as_slice() {
        [] => bail!(
            "{name}: no source type given (expected one of {})",
            Kind::list()
        ),
        [one] => *one,
        several => bail!(
            "{name}: several source types given ({}); a source has exactly one",
            several
                .iter()
                .map(|(kind, _)| kind.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if let Some(declared) = declared {
        if declared != given {
            bail!(
                "{name}.type: says {:?} but the source gives {:?}",
                declared.name(),
                given.name()
            );
        }
    }
    parse_as(given, &format!("{name}.{}", given.name()), field, home)
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
            Source::Derivation(DerivationSource {
                text: "with import <nixpkgs> {}; hello".into()
            })
        );
        assert_eq!(
            sources["secrets"],
            Source::Passage(PassageSource {
                dir: "/home/alice/.passage/store/host".into(),
                identities_file: "/home/alice/.passage/identities".into(),
                age: "age".into()
            })
        );
        assert_eq!(
            sources["out"],
            Source::Pipe(PipeSource {
                command: "/bin/date".into()
            })
        );
        assert_eq!(
            sources["link"],
            Source::Symlink(SymlinkSource {
                target: "nixpkgs/lib".into()
            })
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
            (
                json!({"x": {"git": {"url": "u\nv", "ref": "r"}}}),
                "x.git.url: \"u\\nv\" contains a control character",
            ),
            (
                json!({"x": {"git": {"url": "ssh://-oProxyCommand=x/r", "ref": "r"}}}),
                "x.git.url: \"ssh://-oProxyCommand=x/r\" names a user or host beginning with '-'",
            ),
            (
                json!({"x": {"git": {"url": "u", "ref": "r", "clean": {"exclude": ["\0"]}}}}),
                "x.git.clean.exclude[0]: \"\\0\" contains a NUL byte",
            ),
            (
                json!({"x": {"file": "/a\tb"}}),
                "x.file: \"/a\\tb\" contains a control",
            ),
            (
                json!({"x": {"file": {"path": "/a", "filters": [{"pattern": "\0"}]}}}),
                "x.file.filters[0].pattern: \"\\0\" contains a NUL byte",
            ),
            (
                json!({"x": {"symlink": "\0"}}),
                "x.symlink.target: \"\\0\" contains a NUL",
            ),
            (json!({"x": {"derivation": "\0"}}), "x.derivation.text"),
            (
                json!({"x": {"derivation": " \n"}}),
                "x.derivation.text: must be a Nix",
            ),
            (
                json!({"x": {"pass": {"dir": "/p", "name": "a\rb"}}}),
                "x.pass.name: \"a\\rb\" contains a control character",
            ),
            (
                json!({"x": {"passage": {"dir": "/d", "age": "a\u{1b}"}}}),
                "x.passage.age",
            ),
            (
                json!({"x": {"pipe": {"command": "/bin/\u{7f}"}}}),
                "x.pipe.command",
            ),
            (
                json!({"x": {"symlink": "l".repeat(4096)}}),
                "(4096 bytes) is too long (a symlink's text has at most 4095 bytes)",
            ),
            (
                json!({"x": {"file": format!("/{}", "f".repeat(4095))}}),
                "x.file: \"/fff",
            ),
            (
                json!({"x": {"s\u{1b}": "x"}}),
                "x.\"s\\u{1b}\": unknown field",
            ),
        ];
        let long = "n".repeat(256);
        let err = refused(json!({ long.clone(): {"symlink": "x"} }));
        assert!(
            err.contains("at most 255 bytes long; this one has 256"),
            "{err}"
        );
        assert!(parse(&json!({ &long[1..]: {"symlink": "x"} }).to_string(), None).is_ok());
        // What may be meant: control characters in a link's text, a pattern,
        // a Nix expression; the longest link text.
        assert!(parse_json(json!({
            "l": {"symlink": "a\nb\tc"},
            "m": {"symlink": "m".repeat(4095)},
            "f": {"file": {"path": "/a", "filters": [{"pattern": "x\ny"}]}},
            "d": {"derivation": "let\n\tx = 1;\nin x"},
        }))
        .is_ok());
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
