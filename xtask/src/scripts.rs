//! `cargo xtask scripts`: every shell script the tools include (their
//! `include_str!` of a `.sh` file), one path a line, for `.ci/run` to give
//! `shellcheck -s sh`. Found by reading the sources, so a new script is
//! checked without a list to keep; a file included in a way this cannot
//! read, or that is neither a script nor documentation, is an error, so
//! none is missed silently.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The macro, written so that this file does not name a file to include.
const MACRO: &str = concat!("include_str", "!(");

/// The workspace this xtask was built in.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is a member directory of the workspace")
        .to_owned()
}

/// Every script below `root` that a `.rs` file includes, relative to
/// `root`, sorted and each once.
pub fn included(root: &Path) -> Result<Vec<PathBuf>> {
    let mut sources = Vec::new();
    rust_files(root, &mut sources)?;
    let mut scripts = Vec::new();
    for source in sources {
        let text = fs::read_to_string(&source)
            .with_context(|| format!("cannot read {}", source.display()))?;
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            let at = |rest: &str| format!("{}:{}: {rest}", source.display(), number + 1);
            for (start, _) in line.match_indices(MACRO) {
                let rest = line[start + MACRO.len()..].trim_start();
                let name = rest
                    .strip_prefix('"')
                    .and_then(|rest| rest.split_once('"'))
                    .map(|(name, _)| name)
                    .filter(|name| !name.contains('\\'))
                    .with_context(|| {
                        at("cannot read the file's name: write it as one plain string literal")
                    })?;
                let dir = source.parent().expect("a file has a directory");
                let file = dir.join(name);
                if !file.is_file() {
                    bail!(at(&format!("{} does not exist", file.display())));
                }
                if name.ends_with(".md") {
                    continue;
                }
                if !name.ends_with(".sh") {
                    bail!(at(&format!(
                        "includes {name}, which is neither a shell script (.sh, which \
                         shellcheck reads) nor documentation (.md)"
                    )));
                }
                let file = fs::canonicalize(&file)?;
                let relative = file
                    .strip_prefix(fs::canonicalize(root)?)
                    .with_context(|| at(&format!("{name} is outside the workspace")))?
                    .to_owned();
                scripts.push(relative);
            }
        }
    }
    scripts.sort();
    scripts.dedup();
    Ok(scripts)
}

/// The `.rs` files below `dir`, but in build outputs and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_included_script_passes_sh_n() {
        let root = workspace();
        let scripts = included(&root).unwrap();
        // The scan finds what it must: populate's prelude and git update.
        for known in [
            "populate/src/scripts/prelude.sh",
            "populate/src/source/git.sh",
        ] {
            assert!(
                scripts.contains(&PathBuf::from(known)),
                "{known} not in {scripts:?}"
            );
        }
        for script in &scripts {
            let out = std::process::Command::new("/bin/sh")
                .arg("-n")
                .arg(root.join(script))
                .output()
                .unwrap();
            assert!(out.status.success(), "sh -n {}: {out:?}", script.display());
        }
    }

    /// A workspace below a temp dir with `src/lib.rs` holding `text`.
    fn scan(text: &str) -> Result<Vec<PathBuf>> {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("crate/src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("lib.rs"), text).unwrap();
        for file in ["a.sh", "b.txt", "README.md"] {
            fs::write(src.join(file), "").unwrap();
        }
        included(dir.path())
    }

    #[test]
    fn a_script_is_found_and_what_is_not_one_is_refused() {
        let include = |name: &str| format!("const A: &str = {MACRO}{name});\n");
        assert_eq!(
            scan(&include("\"a.sh\"")).unwrap(),
            [PathBuf::from("crate/src/a.sh")]
        );
        assert_eq!(
            scan(&include("\"README.md\"")).unwrap(),
            Vec::<PathBuf>::new()
        );
        for (name, error) in [
            ("\"b.txt\"", "neither a shell script"),
            ("concat!(\"a\", \".sh\")", "cannot read the file's name"),
            ("\"c.sh\"", "does not exist"),
        ] {
            let err = format!("{:#}", scan(&include(name)).unwrap_err());
            assert!(err.contains(error), "{name}: {err}");
        }
    }
}
