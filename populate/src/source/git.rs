//! The git source (README: Sources): a script run on the target that clones or
//! fetches and checks out the source's ref.
//!
//! How a ref is resolved (README, "Sources"): a full commit hash exactly as
//! krops does; a ref that starts with a name (`main`, `v1`, `main~1`,
//! `v1^{}`, `origin/main`) at origin's ref of that name, fetched by name, so
//! a stale local branch or tag in the checkout never shadows it (`git reset
//! --hard` moves whichever local branch is checked out, so local `main` soon
//! differs from origin's); a hex name origin does not have, as an
//! abbreviated hash; anything else (`:/message`, `@{…}`) in the checkout
//! after `git fetch origin`.

use anyhow::{bail, Result};
use mktarget::json::shown;
use mktarget::target::PATH_MAX_BYTES;
use mktarget::Session;
use serde_json::Value;

use super::fields::Fields;
use crate::script::{Function, Script};
use crate::step::{claim, Makes, Work};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitSource {
    pub url: String,
    pub git_ref: String,
    pub shallow: bool,
    pub fetch_always: bool,
    pub clean_exclude: Vec<String>,
}

/// `{"url": URL, "ref": REF, "shallow", "fetchAlways", "clean": {"exclude"}}`.
pub(super) fn parse(path: &str, value: &Value) -> Result<GitSource> {
    let mut fields = Fields::new(path, value)?;
    let url = fields.line("url")?;
    let git_ref = fields.line("ref")?;
    let shallow = fields.opt_bool("shallow")?.unwrap_or(false);
    let fetch_always = fields.opt_bool("fetchAlways")?.unwrap_or(false);
    let clean_exclude = match fields.take("clean") {
        None => Vec::new(),
        Some(clean) => {
            let mut clean = Fields::new(&format!("{path}.clean"), clean)?;
            let exclude = clean.texts("exclude")?;
            clean.finish()?;
            exclude
        }
    };
    fields.finish()?;
    // git would read these as options: `git clone --upload-pack=…`.
    for (field, value) in [("url", &url), ("ref", &git_ref)] {
        if value.is_empty() || value.starts_with('-') {
            bail!(
                "{path}.{field}: {} must be non-empty and must not begin with '-'",
                shown(value)
            );
        }
        if value.len() > PATH_MAX_BYTES {
            bail!(
                "{path}.{field}: {} is too long (at most {PATH_MAX_BYTES} bytes)",
                shown(value)
            );
        }
    }
    if let Some(why) = url_refusal(&url) {
        bail!("{path}.url: {} {why}", shown(&url));
    }
    if let Some(why) = shallow.then(|| shallow_refusal(&git_ref)).flatten() {
        bail!("{path}.ref: {why}");
    }
    Ok(GitSource {
        url,
        git_ref,
        shallow,
        fetch_always,
        clean_exclude,
    })
}

impl GitSource {
    pub(super) fn work(&self, session: &Session, p: &str) -> Result<Work> {
        let shown = session.display_path(p);
        Ok(Work::Alone {
            script: claim(session, p, Makes::Dir).then(git_script(p, &shown, self)?),
            late: false,
        })
    }
}

/// Why git would misread `url`, if it would: a host or user that ssh
/// would take for an option (`ssh://-oProxyCommand=…/x`); git itself
/// refuses these too, but only on the target, after the run began.
fn url_refusal(url: &str) -> Option<&'static str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if authority.starts_with('-') || host.starts_with('-') {
        return Some("names a user or host beginning with '-', which ssh would read as an option");
    }
    None
}

/// Which way the script resolves a git source's `ref`.
#[derive(Debug, PartialEq, Eq)]
enum Resolve<'a> {
    /// A full commit hash: fetched and checked out exactly as krops does.
    Hash,
    /// Starts with a name: `git fetch origin NAME`, then SUFFIX applied to
    /// what origin sent (`FETCH_HEAD~1`, `FETCH_HEAD^{}`).
    Origin {
        /// What origin is asked for: the ref's leading name, or for
        /// `origin/X` origin's branch `refs/heads/X`.
        name: String,
        /// The rest of the ref from its first `~` or `^`.
        suffix: &'a str,
        /// The name is hex digits only (`20240115`, `4b4bbce`): when origin
        /// has no such ref, it is an abbreviated hash, as krops accepts.
        or_hash: bool,
    },
    /// Anything else `git rev-parse` understands: resolved in the checkout
    /// after `git fetch origin`.
    Checkout,
}

fn resolve(git_ref: &str) -> Resolve<'_> {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    if matches!(git_ref.len(), 40 | 64) && hex(git_ref) {
        return Resolve::Hash;
    }
    let split = git_ref.find(['~', '^']).unwrap_or(git_ref.len());
    let (base, suffix) = git_ref.split_at(split);
    if !is_ref_name(base) {
        return Resolve::Checkout;
    }
    // After `git fetch origin`, `origin/X` is origin's branch X.
    let tracking = ["origin/", "remotes/origin/", "refs/remotes/origin/"]
        .iter()
        .find_map(|prefix| base.strip_prefix(prefix));
    let name = match tracking {
        Some("HEAD") => "HEAD".to_owned(),
        Some(branch) => format!("refs/heads/{branch}"),
        None => base.to_owned(),
    };
    Resolve::Origin {
        name,
        suffix,
        or_hash: tracking.is_none() && hex(base),
    }
}

/// Whether `name` is a ref name git accepts (`git check-ref-format
/// --allow-onelevel`), so that origin can be asked for it and it cannot be
/// read as a refspec `SRC:DST`.
fn is_ref_name(name: &str) -> bool {
    let bad_byte = |b: u8| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b);
    !name.is_empty()
        && name != "@"
        && !name.contains("@{")
        && !name.contains("..")
        && !name.ends_with('.')
        && !name.bytes().any(bad_byte)
        && name
            .split('/')
            .all(|c| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock"))
}

/// Why a shallow fetch cannot check out `git_ref`, if it cannot: a shallow
/// fetch brings one commit, so the ref must name it (a name or a hash,
/// optionally peeled with `^{}`), not walk history (`main~1`) nor be
/// resolved in a full clone (`:/message`).
pub fn shallow_refusal(git_ref: &str) -> Option<String> {
    let peels_only = |mut suffix: &str| {
        while !suffix.is_empty() {
            match ["^{}", "^{commit}", "^0"]
                .iter()
                .find_map(|peel| suffix.strip_prefix(peel))
            {
                Some(rest) => suffix = rest,
                None => return false,
            }
        }
        true
    };
    let ok = match resolve(git_ref) {
        Resolve::Hash => true,
        Resolve::Origin { suffix, .. } => peels_only(suffix),
        Resolve::Checkout => false,
    };
    (!ok).then(|| {
        format!(
            "{git_ref:?} needs history that shallow = true does not fetch (one commit): \
             with shallow, use a branch or tag name or a commit hash (optionally with ^{{}}), \
             or set shallow to false"
        )
    })
}

/// `krops_git P SHOWN URL CEILING DEPTH FETCH RESOLVE REF NAME SUFFIX
/// [EXCLUDE…]` (`git.sh`).
static GIT: Function = Function {
    name: "krops_git",
    text: include_str!("git.sh"),
};

/// The git step's script, run on the target after the prelude (which
/// defines `run`) and the claim of its place; `shown` is the path as
/// messages name it.
fn git_script(path: &str, shown: &str, git: &GitSource) -> Result<Script> {
    if let Some(why) = git.shallow.then(|| shallow_refusal(&git.git_ref)).flatten() {
        // Refused when the sources are read already.
        bail!("ref: {why}");
    }
    // git looks for a repository no higher than P's parent.
    let ceiling = std::path::Path::new(path)
        .parent()
        .and_then(|parent| parent.to_str())
        .unwrap_or("/");
    let depth = if git.shallow { "shallow" } else { "full" };
    let fetch = if git.fetch_always {
        "always"
    } else {
        "if-missing"
    };
    let (resolve, name, suffix) = match resolve(&git.git_ref) {
        Resolve::Hash => ("hash", String::new(), ""),
        Resolve::Origin {
            name,
            suffix,
            or_hash,
        } => {
            let how = if or_hash { "origin-or-hash" } else { "origin" };
            (how, name, suffix)
        }
        Resolve::Checkout => ("checkout", String::new(), ""),
    };
    let mut args = vec![
        path,
        shown,
        &git.url,
        ceiling,
        depth,
        fetch,
        resolve,
        &git.git_ref,
        &name,
        suffix,
    ];
    args.extend(git.clean_exclude.iter().map(String::as_str));
    Ok(Script::call(&GIT, &args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::PRELUDE;

    const HASH: &str = "4b4bbce199d3b3a8001ee93495604289b01aaad3";

    fn origin(name: &str, suffix: &'static str, or_hash: bool) -> Resolve<'static> {
        Resolve::Origin {
            name: name.to_owned(),
            suffix,
            or_hash,
        }
    }

    #[test]
    fn each_ref_form_takes_its_path() {
        let sha256 = "a".repeat(64);
        let hash_parent = format!("{HASH}~1");
        let table: [(&str, Resolve); 22] = [
            (HASH, Resolve::Hash),
            (&sha256, Resolve::Hash),
            ("main", origin("main", "", false)),
            ("v1.25.0", origin("v1.25.0", "", false)),
            ("release/24.05", origin("release/24.05", "", false)),
            ("HEAD", origin("HEAD", "", false)),
            ("refs/tags/v1", origin("refs/tags/v1", "", false)),
            ("main~1", origin("main", "~1", false)),
            ("main^2~3", origin("main", "^2~3", false)),
            ("v1^{}", origin("v1", "^{}", false)),
            ("origin/main", origin("refs/heads/main", "", false)),
            ("origin/main~2", origin("refs/heads/main", "~2", false)),
            ("remotes/origin/main", origin("refs/heads/main", "", false)),
            (
                "refs/remotes/origin/a/b",
                origin("refs/heads/a/b", "", false),
            ),
            ("origin/HEAD", origin("HEAD", "", false)),
            ("20240115", origin("20240115", "", true)),
            ("4b4bbce", origin("4b4bbce", "", true)),
            ("4b4bbce^{}", origin("4b4bbce", "^{}", true)),
            (&hash_parent, origin(HASH, "~1", true)),
            (":/fix the build", Resolve::Checkout),
            ("main@{upstream}", Resolve::Checkout),
            ("main:README", Resolve::Checkout),
        ];
        for (git_ref, path) in table {
            assert_eq!(resolve(git_ref), path, "{git_ref}");
        }
    }

    #[test]
    fn names_that_git_would_not_accept_are_not_asked_of_origin() {
        for name in [
            "", "@", "a..b", "a.", ".a", "a/.b", "a//b", "a.lock", "a b", "a:b", "a@{1}",
        ] {
            assert!(!is_ref_name(name), "{name:?}");
        }
        for name in ["a", "a/b", "v1.2", "a@b", "a.lock.b", "20240115"] {
            assert!(is_ref_name(name), "{name:?}");
        }
    }

    #[test]
    fn shallow_takes_names_hashes_and_peels_only() {
        for git_ref in [
            HASH,
            "main",
            "v1",
            "v1^{}",
            "v1^{commit}^0",
            "origin/main",
            "4b4bbce",
        ] {
            assert_eq!(shallow_refusal(git_ref), None, "{git_ref}");
        }
        for git_ref in ["main~1", "main^", "v1^{}~1", "v1^{/fix}", ":/fix", "@{-1}"] {
            let why = shallow_refusal(git_ref).unwrap_or_else(|| panic!("{git_ref} accepted"));
            assert!(why.contains("set shallow to false"), "{why}");
        }
    }

    fn refs() -> Vec<String> {
        [
            HASH,
            "20240115",
            "4b4bbce",
            "main",
            "main~1",
            "v1^{}",
            "origin/main",
            "it's",
            ":/fix the build",
            "main@{upstream}",
        ]
        .map(String::from)
        .into()
    }

    #[test]
    fn git_script_parses_as_sh_for_every_ref_form() {
        for git_ref in refs() {
            for (shallow, fetch_always) in
                [(false, false), (false, true), (true, false), (true, true)]
            {
                let git = GitSource {
                    url: "https://example.org/it's.git".into(),
                    git_ref: git_ref.clone(),
                    shallow,
                    fetch_always,
                    clean_exclude: vec!["/.version-suffix".into(), "a b".into()],
                };
                if shallow && shallow_refusal(&git_ref).is_some() {
                    continue;
                }
                let script = git_script("/var/src/a b", "/var/src/a b", &git)
                    .unwrap()
                    .whole();
                let out = std::process::Command::new("/bin/sh")
                    .args(["-n", "-c", &script])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{script}\n{out:?}");
            }
        }
    }

    #[test]
    fn every_variable_that_names_a_repository_is_unset() {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--local-env-vars"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let unset: Vec<&str> = GIT
            .text
            .lines()
            .find_map(|line| line.trim().strip_prefix("unset "))
            .expect("git.sh unsets the variables")
            .split_whitespace()
            .collect();
        for var in String::from_utf8(out.stdout).unwrap().lines() {
            if !["GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT"].contains(&var) {
                assert!(unset.contains(&var), "{var} is not unset");
            }
        }
    }

    #[test]
    fn a_failing_git_config_is_named_not_git_remote_add() {
        // Real git fails `git config --get` this way only on a repository
        // the check before it refuses (dubious ownership, a broken config):
        // a stand-in says so after the check passed.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n");
        std::fs::create_dir_all(p.join(".git")).unwrap();
        let p = p.canonicalize().unwrap();
        let p = p.to_str().unwrap();
        let stand_in = r#"git() {
  case "$*" in
    'rev-parse --absolute-git-dir --show-toplevel') pwd -P | sed 's|$|/.git|'; pwd -P ;;
    config*) echo 'fatal: unable to read config' >&2; return 3 ;;
    *) echo "unexpected: git $*" >&2; return 99 ;;
  esac
}
"#;
        let git = GitSource {
            url: "u".into(),
            git_ref: "main".into(),
            shallow: false,
            fetch_always: false,
            clean_exclude: vec![],
        };
        let script = format!(
            "{PRELUDE}{stand_in}{}",
            git_script(p, p, &git).unwrap().text()
        );
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert_eq!(
            crate::script::failed_command(&stderr),
            Some("git config --get remote.origin.url"),
            "{stderr}"
        );
    }

    #[test]
    fn steps_that_must_succeed_are_run() {
        for line in GIT.text.lines() {
            let line = line.trim_start();
            if line.starts_with("git ") || line.contains("=$(git") {
                assert!(
                    line.starts_with("krops_origin=$(git config --get remote.origin.url) ||"),
                    "a git command that must succeed is not run: {line}"
                );
            }
        }
    }

    #[test]
    fn a_ref_with_a_suffix_is_fetched_by_name_from_origin() {
        let git = GitSource {
            url: "u".into(),
            git_ref: "main~1".into(),
            shallow: false,
            fetch_always: false,
            clean_exclude: vec!["a b".into()],
        };
        let text = git_script("/p", "h:/p", &git).unwrap().text();
        assert_eq!(
            text.strip_prefix(GIT.text),
            Some("krops_git /p h:/p u / full if-missing origin 'main~1' main '~1' 'a b'\n")
        );
    }

    #[test]
    fn a_shallow_ref_that_needs_history_is_refused() {
        let git = GitSource {
            url: "u".into(),
            git_ref: "main~1".into(),
            shallow: true,
            fetch_always: false,
            clean_exclude: vec![],
        };
        let err = git_script("/p", "/p", &git).unwrap_err();
        assert!(
            format!("{err:#}").contains("set shallow to false"),
            "{err:#}"
        );
    }
}
