//! The git source (SPEC §3): a script run on the target that clones or
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
use mktarget::shell::quote;
use mktarget::target::{shown, PATH_MAX_BYTES};
use mktarget::Session;
use serde_json::Value;

use super::fields::Fields;
use crate::step::{claim_line, Makes, Work};

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
        Ok(Work::Alone {
            body: format!(
                "{}{}",
                claim_line(session, p, Makes::Dir),
                git_script(p, &session.display_path(p), self)
            ),
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

/// The variables that tell git which repository, or which part of one, to
/// use (`git rev-parse --local-env-vars` but for the `-c` settings
/// `GIT_CONFIG_PARAMETERS` and `GIT_CONFIG_COUNT`, which a user may set on
/// purpose, e.g. credentials in CI), and `GIT_NAMESPACE`; a git hook sets
/// several.
const REPOSITORY_VARIABLES: &str = "GIT_DIR GIT_WORK_TREE GIT_IMPLICIT_WORK_TREE \
     GIT_COMMON_DIR GIT_INDEX_FILE GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES \
     GIT_GRAFT_FILE GIT_SHALLOW_FILE GIT_NO_REPLACE_OBJECTS GIT_REPLACE_REF_BASE \
     GIT_PREFIX GIT_CONFIG GIT_NAMESPACE";

/// The git step's body, run on the target after [`PRELUDE`] (which defines
/// `run`) and the claim of its place (see `sync.rs`); `shown` is the path
/// as messages name it.
pub fn git_script(path: &str, shown: &str, git: &GitSource) -> String {
    let p = quote(path);
    let shown = quote(shown);
    let url = quote(&git.url);
    let create = if git.shallow {
        format!("git init {p}")
    } else {
        format!("git clone --recurse-submodules {url} {p}")
    };
    // git finds a repository by looking up from where it runs: from a `.git`
    // that is no repository (an empty one, a skeleton a file source left) it
    // would find one around the target path (an etckeeper /etc, a home in
    // git) and reset and clean that. So no variable from the caller may
    // name a repository (a git hook sets GIT_DIR), git never looks above
    // P, P counts as a checkout only when git finds its repository at
    // exactly P/.git (a `.git` symlink or `gitdir:` file leads elsewhere)
    // and P is its work tree (`core.worktree` may name another), and from
    // then on every git command is told its repository and work
    // tree. `git config --get` exits 1 for a key that is not set: any other
    // failure is its own, not `git remote add`'s.
    let git_dir = quote(&format!("{path}/.git"));
    let ceiling = quote(
        std::path::Path::new(path)
            .parent()
            .and_then(|parent| parent.to_str())
            .unwrap_or("/"),
    );
    let mut script = format!(
        "unset {REPOSITORY_VARIABLES}\n\
         GIT_CEILING_DIRECTORIES={ceiling}\n\
         export GIT_CEILING_DIRECTORIES\n\
         if ! {{ test -d {p}/.git && ! test -L {p}/.git &&\n  \
         krops_checkout=$(cd -P {p}/.git && pwd -P && cd .. && pwd -P) &&\n  \
         test \"$(cd {p} && git rev-parse --absolute-git-dir --show-toplevel)\" = \"$krops_checkout\"; }}; then\n  \
         if test -e {p}; then\n    \
         printf 'populate: replacing %s: it is not a git checkout of its own\\n' {shown} >&2\n  \
         fi\n  \
         run rm -fR {p}\n\
         fi\n\
         if ! test -e {p}; then\n  run {create} >&2\nfi\n\
         run cd {p}\n\
         GIT_DIR={git_dir}\n\
         GIT_WORK_TREE={p}\n\
         export GIT_DIR GIT_WORK_TREE\n\
         krops_status=0\n\
         krops_url=$(git config --get remote.origin.url) || krops_status=$?\n\
         if test \"$krops_status\" = 1; then\n  \
         run git remote add origin {url}\n\
         elif test \"$krops_status\" != 0; then\n  \
         failed \"$krops_status\" 'git config --get remote.origin.url'\n\
         elif test \"$krops_url\" != {url}; then\n  \
         run git remote set-url origin {url}\n\
         fi\n"
    );
    if git.shallow {
        if let Some(why) = shallow_refusal(&git.git_ref) {
            // Refused when the sources are read; never run.
            script.push_str(&format!(
                "printf 'populate: %s\\n' {} >&2\nexit 1\n",
                quote(&why)
            ));
            return script;
        }
    }
    if !git.shallow {
        // A checkout an earlier deploy fetched shallow has one commit:
        // `main~1` and friends need the history shallow = false promises.
        script.push_str(
            "krops_shallow=$(run git rev-parse --is-shallow-repository)\n\
             if test \"$krops_shallow\" = true; then\n  \
             run git fetch --unshallow origin >&2\n\
             fi\n",
        );
    }
    script.push_str(&resolve_script(git));
    // The source owns P: what was changed, added or left there since (an
    // edit, a build's output, a repository cloned into it, a submodule's
    // own) goes, in the submodules too, before they move (their update
    // would refuse to overwrite an edit). A checkout with nothing to reset
    // is left alone, so that a deploy with nothing to do writes nothing
    // (`git reset` logs every run in the reflog). Without `.gitmodules`
    // there is no submodule to update, and git's submodule commands take
    // 30 ms each to find that out.
    let unchanged = "git diff-files --quiet --ignore-submodules && \
         git diff-index --quiet --cached --ignore-submodules HEAD --";
    script.push_str(&format!(
        "if ! test \"$(git log --format=%H -1 2>/dev/null)\" = \"$hash\"; then\n  \
         run git reset --hard \"$hash\" >&2\n\
         elif ! {{ {unchanged}; }}; then\n  \
         run git reset -q --hard >&2\n\
         fi\n\
         if test -f .gitmodules; then\n  \
         run git submodule foreach --quiet --recursive {} >&2\n  \
         run git submodule update --init --recursive >&2\n\
         fi\n",
        quote(&format!(
            "{unchanged} || git reset -q --hard && git clean -q -dffx"
        )),
    ));
    script.push_str("run git clean -dffx");
    for pattern in &git.clean_exclude {
        script.push_str(&format!(" -e {}", quote(pattern)));
    }
    script.push_str(" >&2\n");
    script
}

/// The lines that set `$hash` to the commit to check out, fetching as needed.
fn resolve_script(git: &GitSource) -> String {
    let git_ref = quote(&git.git_ref);
    // krops's fetch, for commit hashes: `git fetch --depth=1 origin $hash`
    // when shallow, else everything.
    let fetch = if git.shallow {
        "run git fetch --depth=1 origin \"$hash\" >&2\n"
    } else {
        "run git fetch origin >&2\n"
    };
    let depth = if git.shallow { "--depth=1 " } else { "" };
    let commit = quote(&format!("{}^{{commit}}", git.git_ref));
    match resolve(&git.git_ref) {
        Resolve::Hash => {
            let fetch = if git.fetch_always {
                fetch.to_owned()
            } else {
                format!(
                    "if ! git log -1 \"$hash\" >/dev/null 2>&1; then\n{}fi\n",
                    indent(fetch)
                )
            };
            format!(
                "hash={git_ref}\n\
                 if ! test \"$(git log --format=%H -1 2>/dev/null)\" = \"$hash\"; then\n{}fi\n",
                indent(&fetch)
            )
        }
        Resolve::Origin {
            name,
            suffix,
            or_hash,
        } => {
            let name = quote(&name);
            let from_origin = format!(
                "hash=$(run git rev-parse --verify {})\n",
                quote(&format!("FETCH_HEAD{suffix}^{{commit}}"))
            );
            if !or_hash {
                return format!("run git fetch {depth}origin {name} >&2\n{from_origin}");
            }
            // Not on origin: an abbreviated hash, looked up in the checkout
            // and fetched as krops fetches a hash. A shallow fetch cannot ask
            // for one, so that asks origin again by name for git's own error.
            let present = format!("git rev-parse --quiet --verify {commit} >/dev/null");
            let fetch = match (git.shallow, git.fetch_always) {
                (false, true) => fetch.to_owned(),
                (false, false) => format!("if ! {present}; then\n  {fetch}fi\n"),
                (true, _) => format!(
                    "if ! {present}; then\n  run git fetch --depth=1 origin {name} >&2\nfi\n"
                ),
            };
            format!(
                "if git fetch {depth}origin {name} >/dev/null 2>&1; then\n{}else\n{}{}fi\n",
                indent(&from_origin),
                indent(&fetch),
                indent(&format!("hash=$(run git rev-parse --verify {commit})\n"))
            )
        }
        // Not `REF^{commit}` in one: `:/REGEX` would take the peel into its
        // regex.
        Resolve::Checkout => format!(
            "{fetch}hash=$(run git rev-parse --verify {git_ref})\n\
             hash=$(run git rev-parse --verify \"$hash^{{commit}}\")\n"
        ),
    }
}

fn indent(lines: &str) -> String {
    lines.lines().map(|line| format!("  {line}\n")).collect()
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
                let script = format!(
                    "{PRELUDE}{}",
                    git_script("/var/src/a b", "/var/src/a b", &git)
                );
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
        let unset: Vec<&str> = REPOSITORY_VARIABLES.split_whitespace().collect();
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
        let script = format!("{PRELUDE}{stand_in}{}", git_script(p, p, &git));
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
        let git = GitSource {
            url: "u".into(),
            git_ref: "main~1".into(),
            shallow: false,
            fetch_always: false,
            clean_exclude: vec![],
        };
        let script = git_script("/p", "/p", &git);
        for line in script.lines() {
            let line = line.trim_start();
            if line.starts_with("git ") || line.starts_with("hash=$(git") {
                panic!("a git command that must succeed is not run: {line}\n{script}");
            }
        }
        assert!(
            script.contains("run git fetch origin main >&2\n"),
            "{script}"
        );
        assert!(
            script.contains("hash=$(run git rev-parse --verify 'FETCH_HEAD~1^{commit}')"),
            "{script}"
        );
    }
}
