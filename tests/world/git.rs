//! Throwaway git repositories for git sources. Every host is this machine, so a
//! repo's plain path is a URL that `git clone` understands on any target.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run::{self, RUN_TIMEOUT};
use crate::World;

/// A git repository in the world, on branch `main`, with a local author.
#[derive(Clone, Debug)]
pub struct GitRepo {
    path: PathBuf,
    env: BTreeMap<String, String>,
}

/// The commit checked out in `dir` (a checkout a tool made, perhaps owned by
/// another user, hence `safe.directory=*`).
#[track_caller]
pub fn git_head(dir: &Path) -> String {
    let out = Command::new("git")
        .args(["-c", "safe.directory=*", "-C"])
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap_or_else(|err| panic!("cannot run git: {err}"));
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl World {
    /// `git init -b main` a new repo `root/git/NAME` with user.name and
    /// user.email set locally.
    #[track_caller]
    pub fn git_repo(&self, name: &str) -> GitRepo {
        let path = self.root.join("git").join(name);
        assert!(!path.exists(), "the world already has a git repo {name:?}");
        let repo = GitRepo {
            path,
            env: self.env(),
        };
        repo.run(
            Command::new("git")
                .args(["init", "-q", "-b", "main"])
                .arg(&repo.path),
        );
        repo.git(&["config", "user.name", "krops test"]);
        repo.git(&["config", "user.email", "krops-test@example.invalid"]);
        repo.git(&["config", "commit.gpgsign", "false"]);
        repo
    }
}

impl GitRepo {
    #[track_caller]
    fn run(&self, cmd: &mut Command) -> String {
        cmd.env_clear().envs(&self.env);
        let out = run::run(cmd, b"", RUN_TIMEOUT);
        out.assert_success();
        out.stdout_str()
    }

    /// Runs `git -C REPO ARGS…`, panicking with its output unless it succeeds;
    /// returns stdout without the trailing newline.
    #[track_caller]
    pub fn git(&self, args: &[&str]) -> String {
        let stdout = self.run(Command::new("git").arg("-C").arg(&self.path).args(args));
        stdout.trim_end_matches('\n').to_owned()
    }

    /// The working tree.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A URL for `git clone` on any world host: the repo's absolute path.
    pub fn url(&self) -> String {
        self.path.display().to_string()
    }

    /// The same repo as a `file://` URL.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// Writes `content` to `rel` in the working tree, creating directories.
    #[track_caller]
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        let path = self.path.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|err| panic!("cannot create {}: {err}", parent.display()));
        }
        fs::write(&path, content)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        self
    }

    /// Removes `rel` (a file or a directory tree) from the working tree.
    #[track_caller]
    pub fn remove(&self, rel: &str) -> &Self {
        let path = self.path.join(rel);
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.unwrap_or_else(|err| panic!("cannot remove {}: {err}", path.display()));
        self
    }

    /// Commits everything in the working tree (`git add -A`), even when nothing
    /// changed; returns the new commit's hash.
    #[track_caller]
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    /// The hash of HEAD.
    #[track_caller]
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// A lightweight tag `name` on HEAD.
    #[track_caller]
    pub fn tag(&self, name: &str) {
        self.git(&["tag", name]);
    }

    /// Creates branch `name` at HEAD and checks it out.
    #[track_caller]
    pub fn branch(&self, name: &str) {
        self.git(&["checkout", "-q", "-b", name]);
    }

    /// Checks out an existing branch, tag or commit.
    #[track_caller]
    pub fn checkout(&self, rev: &str) {
        self.git(&["checkout", "-q", rev]);
    }

    /// Adds `sub` as a submodule at `rel` (not committed: call [`GitRepo::commit`]).
    #[track_caller]
    pub fn add_submodule(&self, sub: &GitRepo, rel: &str) {
        self.git(&[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            &sub.url(),
            rel,
        ]);
    }
}
