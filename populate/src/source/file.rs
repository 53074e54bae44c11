//! The file source: a file or tree here, synced to P with rsync.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use mktarget::json::shown;
use mktarget::{Cmd, Session};
use serde_json::Value;


use super::fields::{absolute, Fields};
use crate::script::{Function, Script};
use crate::step::{claim, Makes, Work};

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
    let exclude = fields.texts("exclude")?;
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
            bail!(
                "{path}.type: unknown filter type {} (expected include or exclude)",
                shown(other)
            )
        }
    };
    let pattern = fields.text("pattern")?;
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
            Makes::Tree
        } else {
            Makes::File
        };
        Ok(rsync_work(session, self, &rsync_source(local), p, makes))
    }
}

/// The step that claims `p` for what `makes` says and rsyncs `source`
/// there. On a remote target the claim runs in rsync's own session, before
/// the remote rsync starts (its `--rsync-path`): one session a source, not
/// two. A local rsync starts no shell, so there the claim runs first.
pub(crate) fn rsync_work(
    session: &Session,
    file: &FileSource,
    source: &str,
    p: &str,
    makes: Makes,
) -> Work {
    let claim = claim(session, p, makes);
    if session.is_local() {
        Work::Rsync {
            claim: Some(claim),
            rsync: rsync(session, file, source, p, None),
            joinable: None,
        }
    } else {
        Work::Rsync {
            claim: None,
            rsync: rsync(session, file, source, p, Some(&claim)),
            joinable: joinable(file, makes, p, claim).map(Box::new),
        }
    }
}

/// A tree synced to a remote target, as one of several trees that one
/// rsync syncs (see [`crate::together`]); `None` when it syncs alone.
#[derive(Clone, Debug)]
pub(crate) struct Joinable {
    /// P's last component: the tree syncs to P/NAME.
    pub(crate) name: String,
    /// The tree here.
    pub(crate) local: PathBuf,
    /// The claim of P/NAME, which the shared rsync's remote shell runs.
    pub(crate) claim: Script,
    /// The options it syncs with: trees sync together only with trees
    /// of the same options.
    pub(crate) options: JoinOptions,
}

/// The rsync options of a [`Joinable`] tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct JoinOptions {
    pub(crate) use_checksum: bool,
    pub(crate) delete_excluded: bool,
}

/// `file` as a [`Joinable`] tree at `p`: a directory without filters of
/// its own and without `.rsync-filter` files, in it or above it (`-F`
/// reads those above what rsync syncs, and a pattern with a `/` in one in
/// it would match the tree's name too when rsync sends NAME/…), its name a
/// plain one (source names are).
fn joinable(file: &FileSource, makes: Makes, p: &str, claim: Script) -> Option<Joinable> {
    if makes != Makes::Tree || !file.exclude.is_empty() || !file.filters.is_empty() {
        return None;
    }
    let (_, name) = p.rsplit_once('/')?;
    let plain = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    let local = PathBuf::from(&file.path);
    // Whether one is in the tree is asked when it would join others
    // ([`Joinable::holds_filter_file`]): a walk of the tree.
    if !plain(name) || !local.is_absolute() || filter_file_above(&local) {
        return None;
    }
    Some(Joinable {
        name: name.to_owned(),
        local,
        claim,
        options: JoinOptions {
            use_checksum: file.use_checksum,
            delete_excluded: file.delete_excluded,
        },
    })
}

impl Joinable {
    /// Whether the tree holds a `.rsync-filter` (or may: see
    /// [`holds_filter_file`]), and so must sync alone.
    pub(crate) fn holds_filter_file(&self) -> bool {
        holds_filter_file(&self.local)
    }
}

/// Whether `dir` or a directory in it holds a `.rsync-filter`, or one
/// cannot be read (it may): symlinks are not followed, as rsync follows
/// none in a tree.
fn holds_filter_file(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return true;
    };
    for entry in entries {
        let Ok(entry) = entry else {
            return true;
        };
        if entry.file_name() == ".rsync-filter" {
            return true;
        }
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if is_dir && holds_filter_file(&entry.path()) {
            return true;
        }
    }
    false
}

/// Whether a directory above `dir` (up to `/`) holds a `.rsync-filter`,
/// which `-F` makes rsync read.
pub(crate) fn filter_file_above(dir: &Path) -> bool {
    dir.ancestors()
        .skip(1)
        .any(|parent| parent.join(".rsync-filter").symlink_metadata().is_ok())
}

/// The one rsync that syncs every tree of `trees` (at least one, all of
/// the same options) to its P/NAME: `rsync … -R STAGE/./NAME/… HOST:P/`,
/// where STAGE holds a symlink NAME to each tree here (rsync follows a
/// symlink given with a trailing `/`, and keeps the ones inside), and the
/// remote shell claims every P/NAME first. `-R` keeps NAME in the names
/// rsync sends; deletions stay within each P/NAME.
pub(crate) fn rsync_together(session: &Session, trees: &[&Joinable], stage: &Path, p: &str) -> Cmd {
    let options = trees[0].options;
    let file = FileSource {
        use_checksum: options.use_checksum,
        delete_excluded: options.delete_excluded,
        ..default_file_options()
    };
    let check = Script::call(&FILTERS_ABOVE, &[p, &session.display_path(p)]);
    let claims = trees
        .iter()
        .fold(check, |claims, tree| claims.then(tree.claim.clone()));
    let sources: Vec<String> = trees
        .iter()
        .map(|tree| format!("{}/./{}/", stage.display(), tree.name))
        .collect();
    rsync_command(session, &file, &sources, &format!("{p}/"), Some(&claims), Some(trees))
}

/// `krops_filters_above P SHOWN` (`filters-above.sh`), which the remote
/// shell of an rsync of several trees runs first: that rsync reads no
/// `.rsync-filter` in P or above it, where an rsync of one tree alone does
/// (`-F`), so with one there the trees sync alone.
static FILTERS_ABOVE: Function = Function {
    name: "krops_filters_above",
    text: include_str!("filters-above.sh"),
};

/// rsync copies a directory's contents when its name ends in `/`.
fn rsync_source(path: &Path) -> String {
    let mut source = path.to_string_lossy().into_owned();
    if path.is_dir() && !source.ends_with('/') {
        source.push('/');
    }
    source
}

/// `rsync [--checksum] [--rsync-path=RSYNC] [--exclude|--include PAT]…
/// -e SSH -vFrlptD --itemize-changes [--delete-excluded] SRC DEST`: krops's,
/// with each change itemized (`>f.st...... a.nix`), which the log shows and
/// the results count. RSYNC is `sudo rsync` with sudo, as in krops; with a
/// `claim` (a call of [`claim`]), `[sudo] /bin/sh -c 'PRELUDE CLAIM exec "$0"
/// "$@"' rsync`: the target's shell runs it with rsync's own arguments
/// after it.
pub(crate) fn rsync(
    session: &Session,
    file: &FileSource,
    source: &str,
    path: &str,
    claim: Option<&Script>,
) -> Cmd {
    rsync_command(session, file, &[source.to_owned()], path, claim, None)
}

/// [`rsync`] of several `sources` to `path`; with `trees`, the sources are
/// those trees' in a stage ([`rsync_together`]).
fn rsync_command(
    session: &Session,
    file: &FileSource,
    sources: &[String],
    path: &str,
    claim: Option<&Script>,
    trees: Option<&[&Joinable]>,
) -> Cmd {
    let mut cmd = Cmd::new("rsync");
    if file.use_checksum {
        cmd = cmd.arg("--checksum");
    }
    let mut rsync_path: Vec<String> = Vec::new();
    if session.target().sudo {
        rsync_path.push("sudo".to_owned());
    }
    match claim {
        Some(claim) => {
            let script = format!("{}exec \"$0\" \"$@\"\n", claim.whole());
            rsync_path.extend(["/bin/sh".to_owned(), "-c".to_owned(), script]);
            rsync_path.push("rsync".to_owned());
        }
        None if session.target().sudo => rsync_path.push("rsync".to_owned()),
        None => {}
    }
    if !rsync_path.is_empty() {
        // With a sudo password, rsync also carries it to its remote shell.
        let (path, with_password) = session.rsync_path(rsync_path, cmd);
        cmd = with_password.arg(format!("--rsync-path={path}"));
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
    let Some(trees) = trees else {
        cmd = cmd.args(["-e", &session.rsync_shell(), "-vFrlptD", "--itemize-changes"]);
        if file.delete_excluded {
            cmd = cmd.arg("--delete-excluded");
        }
        return cmd.args(sources).arg(session.rsync_destination(path));
    };
    // Trees synced together hold no `.rsync-filter` ([`joinable`]), nor
    // does the target above them (the claims check), and rsync's `-F`
    // would read one above the stage (in TMPDIR, `/tmp`): their rsync
    // reads those in the trees only. Only the trees, as directories, are
    // sent at the top: when a tree here is gone, rsync would send the
    // stage's dangling symlink in its place, and put it there instead.
    cmd = cmd.args(["-e", &session.rsync_shell(), "-vrlptD"]);
    for tree in trees {
        cmd = cmd.arg(format!("--filter=+ /{}/", tree.name));
    }
    cmd = cmd.args([
        "--filter=- /*",
        "--filter=dir-merge .rsync-filter",
        "--itemize-changes",
    ]);
    if file.delete_excluded {
        cmd = cmd.arg("--delete-excluded");
    }
    cmd.arg("--relative")
        .args(sources)
        .arg(session.rsync_destination(path))
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

    use mktarget::testing::{session, target};

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
            rsync(&session(&t), &file, "/src/", "/var/src/cfg", None).argv(),
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
                "--itemize-changes",
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
            None,
        )
        .argv();
        assert_eq!(
            argv,
            [
                "rsync",
                "-e",
                "'ssh' '-l' 'alice' '-T'",
                "-vFrlptD",
                "--itemize-changes",
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
            None,
        )
        .argv();
        assert_eq!(
            argv,
            [
                "rsync",
                "-e",
                "'ssh' '-l' 'root' '-p' '2222' '-T'",
                "-vFrlptD",
                "--itemize-changes",
                "--delete-excluded",
                "/src/",
                "root@[::1]:/var/src/cfg",
            ]
        );
    }

    /// A tree gone here between the plan and the shared rsync: its
    /// stage's symlink dangles, and rsync sends nothing in its place (a
    /// local rsync: the same filters, no remote shell).
    #[test]
    fn trees_together_send_only_their_directories_at_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mkdir = |rel: &str| std::fs::create_dir_all(root.join(rel)).unwrap();
        mkdir("here/a");
        mkdir("stage");
        mkdir("there/b/important");
        std::fs::write(root.join("here/a/f"), "f\n").unwrap();
        std::fs::write(root.join("there/b/important/x"), "x\n").unwrap();
        std::os::unix::fs::symlink(root.join("here/a"), root.join("stage/a")).unwrap();
        std::os::unix::fs::symlink(root.join("here/gone"), root.join("stage/b")).unwrap();
        let local = session(&target(root.join("there").to_str().unwrap()));
        let tree = |name: &str| Joinable {
            name: name.to_owned(),
            local: root.join("here").join(name),
            claim: Script::default(),
            options: JoinOptions {
                use_checksum: false,
                delete_excluded: true,
            },
        };
        let (a, b) = (tree("a"), tree("b"));
        let there = root.join("there");
        let cmd = rsync_together(&local, &[&a, &b], &root.join("stage"), there.to_str().unwrap());
        let ran = cmd.run(mktarget::command::Stdio::capture()).unwrap();
        assert!(ran.success(), "{}", String::from_utf8_lossy(&ran.stderr));
        assert_eq!(std::fs::read_to_string(there.join("a/f")).unwrap(), "f\n");
        assert!(there.join("b").symlink_metadata().unwrap().is_dir());
        assert!(there.join("b/important/x").exists());
    }

    /// The `--rsync-path` as the target's shell runs it: rsync appends its
    /// own arguments, so here `--version` stands in for `--server …`.
    #[test]
    fn a_claim_in_the_rsync_path_runs_before_rsync() {
        let dir = tempfile::tempdir().unwrap();
        let place = dir.path().join("it's here");
        std::os::unix::fs::symlink("/etc", &place).unwrap();
        let p = place.to_str().unwrap();
        let remote = session(&target("root@h/var/src"));
        let claim = claim(&remote, p, Makes::Tree);
        let argv = rsync(&remote, &default_file_options(), "/src/", p, Some(&claim)).argv();
        let rsync_path = argv[1].strip_prefix("--rsync-path=").unwrap();
        let output = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("{rsync_path} --version")])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("rsync  version"));
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("replacing the symlink at h:"), "{said}");
        assert!(!place.exists() && place.symlink_metadata().is_err());
        // With sudo, the whole of it runs as root.
        let mut t = target("root@h/var/src");
        t.sudo = true;
        let argv = rsync(
            &session(&t),
            &default_file_options(),
            "/src/",
            p,
            Some(&claim),
        )
        .argv();
        assert!(
            argv[1].starts_with("--rsync-path=sudo /bin/sh -c 'set -efu"),
            "{argv:?}"
        );
    }
}
