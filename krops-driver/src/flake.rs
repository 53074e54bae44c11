//! Flake mode (README: Flakes): `--flake NAME[/DIR][#ATTR]` names a synced
//! source holding `flake.nix`, and `--flake-input INPUT=SOURCE` overrides
//! the flake's input with another synced source, so that the build target
//! builds the pinned sources it was given and reaches for no network. The
//! options are checked against the sources before anything runs; what
//! they become on nixos-rebuild's and nix's command lines is built here,
//! once, for krops-deploy and krops-test.

use std::path::Path;

use anyhow::Result;
use clap::Args;
use mktarget::json::shown;
use mktarget::tool::usage;
use populate::source::{is_portable, Source, Sources};

/// The flake options krops-deploy and krops-test share.
#[derive(Clone, Debug, Default, Args)]
pub struct FlakeArgs {
    /// Build the flake in the synced source NAME (or its sub-directory DIR) instead of <nixpkgs/nixos>: its nixosConfigurations.ATTR (default: the target's host name, as nixos-rebuild)
    #[arg(long, value_name = "NAME[/DIR][#ATTR]", allow_hyphen_values = true)]
    pub flake: Option<String>,
    /// With --flake: override the flake's input INPUT with the synced source SOURCE (repeatable); a git source is read as a git checkout, a file tree as a path
    #[arg(long, value_name = "INPUT=SOURCE")]
    pub flake_input: Vec<String>,
}

impl FlakeArgs {
    /// The flake these options name, checked against `sources`; `None`
    /// without `--flake`. Mistakes are usage errors naming the option.
    pub fn flake(&self, sources: &Sources) -> Result<Option<Flake>> {
        match &self.flake {
            Some(flake) => Flake::parse(flake, &self.flake_input, sources).map(Some),
            // Checked here, not by clap: with --fleet, a host's own flake
            // may take the inputs of the command line.
            None if !self.flake_input.is_empty() => Err(usage(format!(
                "--flake-input {}: needs --flake (the source holding flake.nix)",
                shown(&self.flake_input[0])
            ))),
            None => Ok(None),
        }
    }
}

/// How a synced source reaches nix: a git checkout as git (its tracked
/// files at its commit), a file tree as a path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tree {
    Git { shallow: bool },
    Path,
}

/// A synced source nix reads as a flake or an input: its name (below the
/// target path) and how nix reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Synced {
    name: String,
    tree: Tree,
}

impl Synced {
    /// The source `name` of `sources`, if it is a file tree or a checkout.
    fn new(name: &str, sources: &Sources, option: &str) -> Result<Synced> {
        let tree = match sources.get(name) {
            Some(Source::Git(git)) => Tree::Git {
                shallow: git.shallow,
            },
            Some(Source::File(_)) => Tree::Path,
            Some(other) => {
                return Err(usage(format!(
                    "{option}: the source {} is a {} source, not a file tree or a git checkout \
                     that nix could read as a flake",
                    shown(name),
                    other.type_name()
                )))
            }
            None => {
                let names: Vec<&str> = sources.keys().map(String::as_str).collect();
                return Err(usage(format!(
                    "{option}: {} is none of the sources ({})",
                    shown(name),
                    if names.is_empty() {
                        "there are none".to_owned()
                    } else {
                        names.join(", ")
                    }
                )));
            }
        };
        Ok(Synced {
            name: name.to_owned(),
            tree,
        })
    }

    /// Its flake reference at `path` (the target path), with `dir` below it.
    fn url(&self, path: &str, dir: Option<&str>) -> String {
        let at = format!("{}/{}", path.trim_end_matches('/'), self.name);
        match self.tree {
            Tree::Path => match dir {
                Some(dir) => format!("path:{at}/{dir}"),
                None => format!("path:{at}"),
            },
            Tree::Git { shallow } => {
                let mut query = Vec::new();
                if let Some(dir) = dir {
                    query.push(format!("dir={dir}"));
                }
                // nix refuses a shallow clone unless told it is one.
                if shallow {
                    query.push("shallow=1".to_owned());
                }
                let mut url = format!("git+file://{at}");
                if !query.is_empty() {
                    url.push('?');
                    url.push_str(&query.join("&"));
                }
                url
            }
        }
    }
}

/// A flake deploy's flake, checked: the source holding it, the directory
/// of `flake.nix` in it, the configuration's attribute and the inputs
/// overridden with synced sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flake {
    source: Synced,
    dir: Option<String>,
    attr: Option<String>,
    inputs: Vec<(String, Synced)>,
}

impl Flake {
    /// `--flake FLAKE` and each `--flake-input INPUT=SOURCE`, checked
    /// against `sources`.
    pub fn parse(flake: &str, inputs: &[String], sources: &Sources) -> Result<Flake> {
        let option = format!("--flake {}", shown(flake));
        let (place, attr) = match flake.split_once('#') {
            Some((place, attr)) => (place, Some(attr)),
            None => (flake, None),
        };
        if let Some(attr) = attr {
            check_attr(attr).map_err(|why| usage(format!("{option}: {why}")))?;
        }
        let (name, dir) = match place.split_once('/') {
            Some((name, dir)) => (name, Some(dir)),
            None => (place, None),
        };
        if let Some(dir) = dir {
            check_dir(dir).map_err(|why| usage(format!("{option}: {why}")))?;
        }
        let source = Synced::new(name, sources, &option)?;
        if let Some(Source::File(file)) = sources.get(name) {
            let here = Path::new(&file.path).join(dir.unwrap_or(""));
            if !here.join("flake.nix").is_file() {
                return Err(usage(format!(
                    "{option}: the file source {} has no {}flake.nix (at {})",
                    shown(name),
                    dir.map(|dir| format!("{dir}/")).unwrap_or_default(),
                    here.display()
                )));
            }
        }
        let mut overridden: Vec<(String, Synced)> = Vec::new();
        for input in inputs {
            let option = format!("--flake-input {}", shown(input));
            let Some((name, source)) = input.split_once('=') else {
                return Err(usage(format!(
                    "{option}: expected INPUT=SOURCE (the flake's input, then the source \
                     that replaces it)"
                )));
            };
            check_input(name).map_err(|why| usage(format!("{option}: {why}")))?;
            if overridden.iter().any(|(seen, _)| seen == name) {
                return Err(usage(format!(
                    "{option}: the input {} is overridden twice",
                    shown(name)
                )));
            }
            overridden.push((name.to_owned(), Synced::new(source, sources, &option)?));
        }
        Ok(Flake {
            source,
            dir: dir.map(str::to_owned),
            attr: attr.map(str::to_owned),
            inputs: overridden,
        })
    }

    /// The configuration's attribute (`ATTR` of `NAME#ATTR`), if given.
    pub fn attr(&self) -> Option<&str> {
        self.attr.as_deref()
    }

    /// The same flake with the attribute `attr`.
    pub fn with_attr(&self, attr: &str) -> Flake {
        Flake {
            attr: Some(attr.to_owned()),
            ..self.clone()
        }
    }

    /// The flake's reference with the sources at `path` (the target path),
    /// without the attribute; refused when `path` holds characters a flake
    /// reference reads as its own.
    pub fn reference(&self, path: &str) -> Result<String> {
        if let Some(c) = path.chars().find(|c| {
            "#?&%\"'\\".contains(*c)
                || NOT_IN_URL.contains(*c)
                || c.is_whitespace()
                || c.is_control()
        }) {
            return Err(usage(format!(
                "--flake: the target path {} holds {c:?}, which a flake reference cannot \
                 carry as it is",
                shown(path)
            )));
        }
        Ok(self.source.url(path, self.dir.as_deref()))
    }

    /// `--override-input INPUT URL` for each input, then
    /// `--no-write-lock-file`: the synced lock file stays as it was.
    pub fn lock_args(&self, path: &str) -> Vec<String> {
        let mut args = Vec::new();
        for (name, source) in &self.inputs {
            args.extend([
                "--override-input".to_owned(),
                name.clone(),
                source.url(path, None),
            ]);
        }
        args.push("--no-write-lock-file".to_owned());
        args
    }

    /// nixos-rebuild's flake arguments with the sources at `path`:
    /// `--flake REF[#ATTR]`, then [`Flake::lock_args`].
    pub fn rebuild_args(&self, path: &str) -> Result<Vec<String>> {
        let mut flake = self.reference(path)?;
        if let Some(attr) = &self.attr {
            flake.push('#');
            flake.push_str(attr);
        }
        let mut args = vec!["--flake".to_owned(), flake];
        args.extend(self.lock_args(path));
        Ok(args)
    }

    /// What nix builds for the system of `attr`, as nixos-rebuild does:
    /// `REF#nixosConfigurations."ATTR".config.system.build.toplevel`.
    pub fn toplevel(&self, path: &str, attr: &str) -> Result<String> {
        Ok(format!(
            "{}#nixosConfigurations.\"{attr}\".config.system.build.toplevel",
            self.reference(path)?
        ))
    }
}

/// What nix's flake reference parser refuses anywhere in its URL
/// (`'path:/a{b' is not a valid URL`).
const NOT_IN_URL: &str = "<>^{}|[]`";

/// What nixos-rebuild does without `#ATTR`: the host name, or `default`
/// when it is empty (both programs read it so).
pub fn attr_of_host_name(host_name: &str) -> String {
    match host_name.trim() {
        "" => "default".to_owned(),
        name => name.to_owned(),
    }
}

/// An attribute nixos-rebuild quotes as `nixosConfigurations."ATTR"`.
pub fn check_attr(attr: &str) -> Result<(), String> {
    if attr.is_empty() {
        return Err(
            "'#' with no attribute after it (write NAME#ATTR, or NAME for the \
                    target's host name)"
                .to_owned(),
        );
    }
    if let Some(c) = attr
        .chars()
        .find(|c| "\"\\$#".contains(*c) || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "the attribute {} holds {c:?}, which nixos-rebuild cannot quote",
            shown(attr)
        ));
    }
    // The attribute is the reference's URL fragment: nix decodes `%41`
    // there (`web%31` would build `web1`) and refuses what a URL cannot
    // hold, which would fail only after populating.
    if let Some(c) = attr.chars().find(|c| *c == '%' || NOT_IN_URL.contains(*c)) {
        return Err(format!(
            "the attribute {} holds {c:?}, which a flake reference cannot carry as it is \
             (nix reads '%' as an escape, and refuses <>^{{}}|[]` in its URL)",
            shown(attr)
        ));
    }
    Ok(())
}

/// A directory below the source: path components of portable characters.
fn check_dir(dir: &str) -> Result<(), String> {
    let bad = |part: &str| part.is_empty() || part == "." || part == ".." || !is_portable(part);
    if dir.split('/').any(bad) {
        return Err(format!(
            "the directory {} below the source must be path components of the characters \
             A-Z a-z 0-9 . _ - (no empty, . or .. components)",
            shown(dir)
        ));
    }
    Ok(())
}

/// A flake input's name, or a path of them (`home-manager/nixpkgs`).
fn check_input(name: &str) -> Result<(), String> {
    let bad = |part: &str| {
        !part.starts_with(|c: char| c.is_ascii_alphabetic())
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    };
    if name.split('/').any(bad) {
        return Err(format!(
            "{} is not a flake input's name (a letter, then letters, digits, _ and -; \
             nested inputs joined by /)",
            shown(name)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &Path) -> Sources {
        std::fs::write(dir.join("flake.nix"), "{ outputs = _: { }; }\n").unwrap();
        std::fs::create_dir_all(dir.join("sub/dir")).unwrap();
        std::fs::write(dir.join("sub/dir/flake.nix"), "{ outputs = _: { }; }\n").unwrap();
        let json = serde_json::json!({
            "config": {"file": dir.to_str().unwrap()},
            "repo": {"git": {"url": "https://example.org/repo", "ref": "main"}},
            "shallow": {"git": {"url": "https://example.org/s", "ref": "main", "shallow": true}},
            "nixpkgs": {"git": {"url": "https://github.com/NixOS/nixpkgs", "ref": "nixos-24.05"}},
            "tree": {"file": "/nonexistent-tree"},
            "l": {"symlink": "x"},
        });
        populate::source::from_json(&json, None).unwrap()
    }

    fn parse(flake: &str, inputs: &[&str]) -> Result<Flake> {
        let dir = tempfile::tempdir().unwrap();
        let inputs: Vec<String> = inputs.iter().map(|s| s.to_string()).collect();
        Flake::parse(flake, &inputs, &sources(dir.path()))
    }

    #[test]
    fn a_flake_becomes_nixos_rebuilds_flake_arguments() {
        let flake = parse(
            "repo#server01",
            &["nixpkgs=nixpkgs", "home-manager/nixpkgs=tree"],
        )
        .unwrap();
        assert_eq!(
            flake.rebuild_args("/var/src").unwrap(),
            [
                "--flake",
                "git+file:///var/src/repo#server01",
                "--override-input",
                "nixpkgs",
                "git+file:///var/src/nixpkgs",
                "--override-input",
                "home-manager/nixpkgs",
                "path:/var/src/tree",
                "--no-write-lock-file"
            ]
        );
        let flake = parse("config/sub/dir", &[]).unwrap();
        assert_eq!(flake.attr(), None);
        assert_eq!(
            flake.rebuild_args("/var/src/").unwrap(),
            [
                "--flake",
                "path:/var/src/config/sub/dir",
                "--no-write-lock-file"
            ]
        );
        let flake = parse("shallow/nixos#a.b", &[]).unwrap();
        assert_eq!(
            flake.rebuild_args("/v").unwrap()[1],
            "git+file:///v/shallow?dir=nixos&shallow=1#a.b"
        );
        assert_eq!(
            flake.with_attr("web1").toplevel("/v", "web1").unwrap(),
            "git+file:///v/shallow?dir=nixos&shallow=1#nixosConfigurations.\"web1\".config.system.build.toplevel"
        );
    }

    #[test]
    fn bad_flake_options_are_usage_errors_naming_them() {
        for (flake, inputs, says) in [
            (
                "nope#a",
                &[][..],
                "--flake \"nope#a\": \"nope\" is none of the sources",
            ),
            ("l#a", &[], "the source \"l\" is a symlink source"),
            ("repo#", &[], "'#' with no attribute"),
            ("repo#a\"b", &[], "cannot quote"),
            ("repo/../x#a", &[], "the directory \"../x\""),
            ("repo//x", &[], "no empty"),
            ("config/nothere", &[], "has no nothere/flake.nix"),
            ("tree", &[], "has no flake.nix"),
            (
                "repo",
                &["nixpkgs"],
                "--flake-input \"nixpkgs\": expected INPUT=SOURCE",
            ),
            ("repo", &["nixpkgs=l"], "\"l\" is a symlink source"),
            ("repo", &["nixpkgs=gone"], "\"gone\" is none of the sources"),
            ("repo", &["=nixpkgs"], "is not a flake input's name"),
            ("repo", &["a b=nixpkgs"], "is not a flake input's name"),
            ("repo", &["n=nixpkgs", "n=repo"], "overridden twice"),
        ] {
            let err = parse(flake, inputs).unwrap_err();
            assert!(mktarget::tool::is_usage(&err), "{flake}: {err}");
            assert!(err.to_string().contains(says), "{flake} {inputs:?}: {err}");
        }
        let flake = parse("repo", &[]).unwrap();
        for path in ["/var/src#x", "/a b", "/q?x"] {
            let err = flake.reference(path).unwrap_err();
            assert!(err.to_string().contains("flake reference"), "{err}");
        }
    }

    #[test]
    fn no_attribute_is_the_host_name_or_default() {
        assert_eq!(attr_of_host_name("web1\n"), "web1");
        assert_eq!(attr_of_host_name("\n"), "default");
    }
}
