//! The git source (SPEC §3): a script run on the target that clones or
//! fetches and checks out the source's ref.

use mktarget::shell::quote;

use crate::source::GitSource;

/// How a git source's `ref` is resolved on the target.
#[derive(Debug, PartialEq, Eq)]
enum RefKind {
    /// A full commit hash: used exactly as krops uses it.
    Hash,
    /// Hex digits only, shorter than a hash: a tag or branch such as
    /// `20240115`, or an abbreviated hash (which krops accepts). Asked of
    /// origin first, used as a hash when origin has no such ref.
    HexName,
    /// A branch or tag: followed on origin.
    Name,
}

fn ref_kind(git_ref: &str) -> RefKind {
    let hex = git_ref.bytes().all(|b| b.is_ascii_hexdigit());
    match git_ref.len() {
        40 | 64 if hex => RefKind::Hash,
        _ if hex => RefKind::HexName,
        _ => RefKind::Name,
    }
}

/// The git step, run on the target with `set -efu`.
pub fn git_script(path: &str, git: &GitSource) -> String {
    let p = quote(path);
    let url = quote(&git.url);
    let git_ref = quote(&git.git_ref);
    let depth = if git.shallow { "--depth=1 " } else { "" };
    let create = if git.shallow {
        format!("git init {p}")
    } else {
        format!("git clone --recurse-submodules {url} {p}")
    };
    let mut script = format!(
        "set -efu\n\
         if ! test -e {p}/.git; then\n  rm -fR {p}\nfi\n\
         if ! test -e {p}; then\n  {create} >&2\nfi\n\
         cd {p}\n\
         if ! url=$(git config remote.origin.url); then\n  git remote add origin {url}\n\
         elif test \"$url\" != {url}; then\n  git remote set-url origin {url}\nfi\n"
    );
    // krops's fetch for a commit hash in $hash.
    let fetch = if git.shallow {
        "git fetch --depth=1 origin \"$hash\" >&2"
    } else {
        "git fetch origin >&2"
    };
    let fetch_for_hash = if git.fetch_always {
        format!("{fetch}\n")
    } else {
        format!("if ! git log -1 \"$hash\" >/dev/null 2>&1; then\n  {fetch}\nfi\n")
    };
    let from_origin = "hash=$(git rev-parse --verify 'FETCH_HEAD^{commit}')\n";
    let head_differs = "if ! test \"$(git log --format=%H -1 2>/dev/null)\" = \"$hash\"; then\n";
    match ref_kind(&git.git_ref) {
        RefKind::Hash => {
            script.push_str(&format!("hash={git_ref}\n{head_differs}"));
            script.push_str(&indent(&fetch_for_hash));
        }
        RefKind::HexName => {
            script.push_str(&format!(
                "if git fetch {depth}origin {git_ref} 2>/dev/null; then\n  {from_origin}else\n  hash={git_ref}\n{}fi\n{head_differs}",
                indent(&fetch_for_hash)
            ));
        }
        RefKind::Name => {
            script.push_str(&format!(
                "git fetch {depth}origin {git_ref} >&2\n{from_origin}{head_differs}"
            ));
        }
    }
    script.push_str(
        "  git reset --hard \"$hash\" >&2\n  git submodule update --init --recursive >&2\nfi\n",
    );
    script.push_str("git clean -dfx");
    for pattern in &git.clean_exclude {
        script.push_str(&format!(" -e {}", quote(pattern)));
    }
    script.push_str(" >&2\n");
    script
}

fn indent(lines: &str) -> String {
    lines.lines().map(|line| format!("  {line}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_hashes_are_told_from_names() {
        assert_eq!(
            ref_kind("4b4bbce199d3b3a8001ee93495604289b01aaad3"),
            RefKind::Hash
        );
        assert_eq!(ref_kind(&"a".repeat(64)), RefKind::Hash);
        assert_eq!(ref_kind("4b4bbce"), RefKind::HexName);
        assert_eq!(ref_kind("20240115"), RefKind::HexName);
        assert_eq!(ref_kind("main"), RefKind::Name);
        assert_eq!(ref_kind("v1.25.0"), RefKind::Name);
    }

    #[test]
    fn git_script_parses_as_sh() {
        for git_ref in [
            "4b4bbce199d3b3a8001ee93495604289b01aaad3",
            "20240115",
            "main",
        ] {
            for shallow in [false, true] {
                let git = GitSource {
                    url: "https://example.org/it's.git".into(),
                    git_ref: git_ref.into(),
                    shallow,
                    fetch_always: shallow,
                    clean_exclude: vec!["/.version-suffix".into(), "a b".into()],
                };
                let script = git_script("/var/src/a b", &git);
                let out = std::process::Command::new("/bin/sh")
                    .args(["-n", "-c", &script])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{script}\n{out:?}");
            }
        }
    }
}
