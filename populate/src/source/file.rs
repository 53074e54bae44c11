//! The file source: a file or tree here, synced to P with rsync.

use std::path::Path;

use anyhow::{bail, Result};
use mktarget::{Cmd, Session};
use serde_json::Value;

use super::fields::{absolute, Fields};
use crate::step::{claim_line, Makes, Work};

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

/// `"PATH"` or `{"path": PATH, "useChecksum", "exclude", "filters", "deleteExcluded"}`.
pub(super) fn parse(path: &str, value: &Value) -> Result<FileSource> {
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
) -> Result<FileSource> {
    // Store paths have mangled timestamps: compare contents instead.
    let use_checksum = use_checksum.unwrap_or_else(|| path.starts_with("/nix/store/"));
    Ok(FileSource {
        path,
        use_checksum,
        exclude,
        filters,
        delete_excluded,
    })
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

impl FileSource {
    pub(super) fn work(&self, session: &Session, p: &str) -> Result<Work> {
        let local = Path::new(&self.path);
        if !local.exists() {
            bail!("file.path: {} does not exist", self.path);
        }
        let makes = if local.is_dir() {
            Makes::Dir
        } else {
            Makes::File
        };
        Ok(Work::Rsync {
            claim: claim_line(session, p, makes),
            rsync: rsync(session, self, &rsync_source(local), p),
        })
    }
}

/// rsync copies a directory's contents when its name ends in `/`.
fn rsync_source(path: &Path) -> String {
    let mut source = path.to_string_lossy().into_owned();
    if path.is_dir() && !source.ends_with('/') {
        source.push('/');
    }
    source
}

/// `rsync [--checksum] [--rsync-path="sudo rsync"] [--exclude|--include PAT]…
/// -e SSH -vFrlptD [--delete-excluded] SRC DEST`
pub(crate) fn rsync(session: &Session, file: &FileSource, source: &str, path: &str) -> Cmd {
    let mut cmd = Cmd::new("rsync");
    if file.use_checksum {
        cmd = cmd.arg("--checksum");
    }
    if session.target().sudo {
        cmd = cmd.arg("--rsync-path=sudo rsync");
    }
    for pattern in &file.exclude {
        cmd = cmd.args(["--exclude", pattern]);
    }
    for filter in &file.filters {
        let option = if filter.include {
            "--include"
        } else {
            "--exclude"
        };
        cmd = cmd.args([option, &filter.pattern]);
    }
    cmd = cmd.args(["-e", &session.rsync_shell(), "-vFrlptD"]);
    if file.delete_excluded {
        cmd = cmd.arg("--delete-excluded");
    }
    cmd.args([source.to_owned(), session.rsync_destination(path)])
}

/// rsync's defaults in krops, which pass and passage trees are synced with
/// (plus `--checksum`: see `store.rs`).
pub(crate) fn default_file_options() -> FileSource {
    FileSource {
        // rsync() takes the source path separately.
        path: String::new(),
        use_checksum: false,
        exclude: Vec::new(),
        filters: Vec::new(),
        delete_excluded: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mktarget::{Origin, Target};

    fn origin() -> Origin {
        Origin {
            user: Some("alice".into()),
            host: "laptop".into(),
        }
    }

    fn target(s: &str) -> Target {
        Target::parse(s, &origin()).unwrap()
    }

    fn session(target: &Target) -> Session {
        Session::open(target, &origin(), mktarget::Multiplex::Off).unwrap()
    }

    #[test]
    fn rsync_argv_follows_krops() {
        let mut t = target("root@h:22/var/src");
        t.sudo = true;
        t.extra_options = vec!["-o".into(), "ProxyCommand=nc %h %p".into()];
        let file = FileSource {
            path: "/src".into(),
            use_checksum: true,
            exclude: vec![".git".into()],
            filters: vec![
                Filter {
                    include: true,
                    pattern: "*.nix".into(),
                },
                Filter {
                    include: false,
                    pattern: "*".into(),
                },
            ],
            delete_excluded: true,
        };
        assert_eq!(
            rsync(&session(&t), &file, "/src/", "/var/src/cfg").argv(),
            [
                "rsync",
                "--checksum",
                "--rsync-path=sudo rsync",
                "--exclude",
                ".git",
                "--include",
                "*.nix",
                "--exclude",
                "*",
                "-e",
                "'ssh' '-l' 'root' '-p' '22' '-T' '-o' 'ProxyCommand=nc %h %p'",
                "-vFrlptD",
                "--delete-excluded",
                "/src/",
                "root@h:/var/src/cfg",
            ]
        );
        let plain = default_file_options();
        let argv = rsync(
            &session(&target("/var/src")),
            &FileSource {
                delete_excluded: false,
                ..plain
            },
            "/x",
            "/var/src/x",
        )
        .argv();
        assert_eq!(
            argv,
            [
                "rsync",
                "-e",
                "'ssh' '-l' 'alice' '-T'",
                "-vFrlptD",
                "/x",
                "/var/src/x"
            ]
        );
    }

    #[test]
    fn rsync_names_an_ipv6_host_in_brackets_and_ssh_gets_no_host() {
        let argv = rsync(
            &session(&target("root@[::1]:2222/var/src")),
            &default_file_options(),
            "/src/",
            "/var/src/cfg",
        )
        .argv();
        assert_eq!(
            argv,
            [
                "rsync",
                "-e",
                "'ssh' '-l' 'root' '-p' '2222' '-T'",
                "-vFrlptD",
                "--delete-excluded",
                "/src/",
                "root@[::1]:/var/src/cfg",
            ]
        );
    }
}
