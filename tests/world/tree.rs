//! Snapshots of a directory tree, so a test can say "this target is unchanged"
//! or show exactly what changed.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a path is, with its content for files and its target for symlinks.
#[derive(Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A directory.
    Dir,
    /// A symlink and where it points (not followed).
    Symlink(PathBuf),
    /// A fifo, socket or device.
    Other,
}

impl fmt::Debug for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryKind::File(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => write!(f, "file {text:?}"),
                Err(_) => write!(f, "file of {} bytes (binary)", bytes.len()),
            },
            EntryKind::Dir => write!(f, "dir"),
            EntryKind::Symlink(target) => write!(f, "symlink -> {}", target.display()),
            EntryKind::Other => write!(f, "special file"),
        }
    }
}

/// One path of a [`Tree`].
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// File, dir or symlink, with content.
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time in nanoseconds, only in [`Tree::snapshot_with_mtimes`].
    pub mtime_ns: Option<i128>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} mode {:04o} owner {}:{}",
            self.kind, self.mode, self.uid, self.gid
        )?;
        if let Some(mtime) = self.mtime_ns {
            write!(f, " mtime {mtime}ns")?;
        }
        Ok(())
    }
}

/// Every path below a root, by its path relative to the root (`.` is the root
/// itself); empty when the root does not exist.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tree(pub BTreeMap<String, Entry>);

impl Tree {
    /// Snapshot of `root` without modification times.
    #[track_caller]
    pub fn snapshot(root: &Path) -> Tree {
        Tree::take(root, false)
    }

    /// Snapshot of `root` including modification times.
    #[track_caller]
    pub fn snapshot_with_mtimes(root: &Path) -> Tree {
        Tree::take(root, true)
    }

    #[track_caller]
    fn take(root: &Path, mtimes: bool) -> Tree {
        let mut tree = Tree::default();
        if fs::symlink_metadata(root).is_ok() {
            walk(root, ".".to_owned(), mtimes, &mut tree.0);
        }
        tree
    }

    /// The entry at `rel` (relative to the root, `.` for the root).
    pub fn get(&self, rel: &str) -> Option<&Entry> {
        self.0.get(rel)
    }

    /// The relative paths, in order.
    pub fn paths(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    /// True when nothing exists at the root.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The differences from `self` to `after`, one line each.
    pub fn diff(&self, after: &Tree) -> Vec<String> {
        let mut lines = Vec::new();
        for (path, before) in &self.0 {
            match after.0.get(path) {
                None => lines.push(format!("removed {path}: {before:?}")),
                Some(now) if now != before => {
                    lines.push(format!("changed {path}: {before:?} => {now:?}"))
                }
                Some(_) => {}
            }
        }
        for (path, now) in &after.0 {
            if !self.0.contains_key(path) {
                lines.push(format!("added {path}: {now:?}"));
            }
        }
        lines
    }

    /// Panics with the list of differences unless `after` equals `self`.
    #[track_caller]
    pub fn assert_unchanged(&self, after: &Tree) {
        let diff = self.diff(after);
        if !diff.is_empty() {
            panic!("the tree changed:\n  {}", diff.join("\n  "));
        }
    }
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (path, entry) in &self.0 {
            map.entry(path, entry);
        }
        map.finish()
    }
}

#[track_caller]
fn walk(path: &Path, rel: String, mtimes: bool, out: &mut BTreeMap<String, Entry>) {
    let meta = fs::symlink_metadata(path)
        .unwrap_or_else(|err| panic!("cannot stat {}: {err}", path.display()));
    let file_type = meta.file_type();
    let kind = if file_type.is_symlink() {
        EntryKind::Symlink(
            fs::read_link(path)
                .unwrap_or_else(|err| panic!("cannot read link {}: {err}", path.display())),
        )
    } else if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_file() {
        EntryKind::File(
            fs::read(path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display())),
        )
    } else {
        EntryKind::Other
    };
    out.insert(
        rel.clone(),
        Entry {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime_ns: mtimes
                .then(|| i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())),
        },
    );
    if file_type.is_dir() {
        let entries = fs::read_dir(path)
            .unwrap_or_else(|err| panic!("cannot list {}: {err}", path.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|err| panic!("cannot list {}: {err}", path.display()));
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = if rel == "." {
                name
            } else {
                format!("{rel}/{name}")
            };
            walk(&entry.path(), child_rel, mtimes, out);
        }
    }
}
