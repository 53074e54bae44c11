//! The steps of a populate run (SPEC §3): the sentinel check, the backup,
//! and one step per source, each a command on the target or here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mktarget::command::Cmd;
use mktarget::shell::quote;
use mktarget::{Origin, Target};
use walkdir::WalkDir;

use crate::git::git_script;
use crate::secrets::SecretDir;
use crate::source::{FileSource, Source, Sources};

/// How the sentinel check reports a missing sentinel (any other failure is
/// the transport's, e.g. ssh's 255).
const MISSING_SENTINEL: i32 = 3;

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Create the sentinel file (and the target path) first.
    pub force: bool,
    /// Copy the target path to `PATH/.populate/backup/` first.
    pub backup: bool,
}

/// Everything one populate run will do to one target, decided and checked
/// before anything runs.
#[derive(Debug)]
pub struct Plan {
    target: Target,
    steps: Vec<Step>,
}

#[derive(Debug)]
struct Step {
    /// What the log calls this step: `source nixpkgs (git)`.
    label: String,
    /// Where on the target it acts: `[HOST:]PATH`.
    place: String,
    action: Action,
}

#[derive(Debug)]
enum Action {
    Sentinel {
        check: Cmd,
        sentinel: String,
    },
    Run(Cmd),
    /// A pass or passage store: decrypted here, then synced.
    Secrets(Box<Secrets>),
}

/// A pass or passage store to decrypt into a private dir and sync.
#[derive(Debug)]
struct Secrets {
    target: Target,
    origin: Origin,
    /// Where the store's files are (pass: `DIR/NAME`, passage: `DIR`).
    root: PathBuf,
    /// `pass show` or `passage show` and its environment, without the entry name.
    show: Cmd,
    /// pass only: the store dir and entry name, for the change stamp.
    pass: Option<(String, String)>,
}

impl Plan {
    pub fn new(
        target: &Target,
        sources: &Sources,
        options: Options,
        origin: &Origin,
    ) -> Result<Plan> {
        let mut steps = vec![sentinel_step(target, options, origin)];
        if options.backup {
            steps.push(Step {
                label: "backup".to_owned(),
                place: target.display_path(&format!("{}/.populate/backup", target.path), origin),
                action: Action::Run(target.shell(&backup_script(target, origin), origin)),
            });
        }
        for (name, source) in sources {
            let label = format!("source {name} ({})", source.type_name());
            let dest = target.join(name);
            let action = source_action(&dest, source, origin).with_context(|| label.clone())?;
            steps.push(Step {
                label,
                place: dest.display_path(&dest.path, origin),
                action,
            });
        }
        Ok(Plan {
            target: target.clone(),
            steps,
        })
    }

    /// Runs the steps in order; the first failure stops the run.
    pub fn run(&self) -> Result<()> {
        for step in &self.steps {
            eprintln!("populate: {} → {}", step.label, step.place);
            step.run()
                .with_context(|| format!("{} → {}", step.label, step.place))?;
        }
        Ok(())
    }

    /// The plan as a POSIX sh script, for `--dry-run`. No secret is in it:
    /// secrets are decrypted only when the script runs.
    pub fn script(&self) -> String {
        let mut script = format!("# populate {}\nset -efu\n", self.target);
        for step in &self.steps {
            script.push_str(&format!("\n# {}\n{}\n", step.label, step.script()));
        }
        script
    }
}

impl Step {
    fn run(&self) -> Result<()> {
        match &self.action {
            Action::Sentinel { check, sentinel } => {
                let (status, tail) = check.run_unchecked()?;
                match status.code() {
                    Some(0) => Ok(()),
                    Some(MISSING_SENTINEL) => {
                        // krops's own line, for whoever matches on it.
                        eprintln!("error: missing sentinel file: {sentinel}");
                        bail!(
                            "the target has no sentinel file, which guards against syncing \
                             to the wrong place: create it, or run with --force"
                        )
                    }
                    _ => Err(check.failure(status, &tail)),
                }
            }
            Action::Run(cmd) => cmd.run(),
            Action::Secrets(secrets) => secrets.run(),
        }
    }

    fn script(&self) -> String {
        match &self.action {
            Action::Sentinel { check, .. } | Action::Run(check) => check.to_string(),
            Action::Secrets(secrets) => secrets.script(),
        }
    }
}

fn sentinel_step(target: &Target, options: Options, origin: &Origin) -> Step {
    let sentinel = format!("{}/.populate", target.path);
    // A failed mkdir must be reported as itself, not as a missing sentinel.
    let mut script = String::from("set -efu\n");
    if options.force {
        // A backup needs the sentinel to be a directory; touching would make a
        // file that the backup then refuses.
        let create = if options.backup { "mkdir -p" } else { "touch" };
        script.push_str(&format!(
            "mkdir -p {} >&2\n{create} {}\n",
            quote(&target.path),
            quote(&sentinel)
        ));
    }
    script.push_str(&format!(
        "test -e {} || exit {MISSING_SENTINEL}\n",
        quote(&sentinel)
    ));
    Step {
        label: "sentinel check".to_owned(),
        place: target.display_path(&sentinel, origin),
        action: Action::Sentinel {
            check: target.shell(&script, origin),
            sentinel: target.display_path(&sentinel, origin),
        },
    }
}

fn backup_script(target: &Target, origin: &Origin) -> String {
    let path = &target.path;
    let sentinel = format!("{path}/.populate");
    format!(
        "if ! test -d {s}; then\n  printf 'error: sentinel file is not a directory: %s\\n' {shown} >&2\n  exit 1\nfi\n\
         rsync -aAXF --delete --exclude /.populate --link-dest={p} {src} {dest} >&2\n",
        s = quote(&sentinel),
        shown = quote(&target.display_path(&sentinel, origin)),
        p = quote(path),
        src = quote(&format!("{path}/")),
        dest = quote(&format!("{path}/.populate/backup/")),
    )
}

fn source_action(target: &Target, source: &Source, origin: &Origin) -> Result<Action> {
    let p = quote(&target.path);
    Ok(match source {
        Source::Derivation { text } => {
            Action::Run(target.shell(&format!("nix-build -E {} -o {p} >&2", quote(text)), origin))
        }
        Source::File(file) => {
            let path = Path::new(&file.path);
            if !path.exists() {
                bail!("file.path: {} does not exist", file.path);
            }
            Action::Run(rsync(target, file, &rsync_source(path), origin))
        }
        Source::Git(git) => Action::Run(target.shell(&git_script(&target.path, git), origin)),
        Source::Pass { dir, name } => {
            let root = Path::new(dir).join(name);
            if !root.is_dir() {
                bail!(
                    "pass: {} is not a directory in the password store",
                    root.display()
                );
            }
            Action::Secrets(Box::new(Secrets {
                target: target.clone(),
                origin: origin.clone(),
                root,
                show: Cmd::new("pass").env("PASSWORD_STORE_DIR", dir).arg("show"),
                pass: Some((dir.clone(), name.clone())),
            }))
        }
        Source::Passage {
            dir,
            identities_file,
            age,
        } => {
            if !Path::new(dir).is_dir() {
                bail!("passage.dir: {dir} is not a directory");
            }
            Action::Secrets(Box::new(Secrets {
                target: target.clone(),
                origin: origin.clone(),
                root: PathBuf::from(dir),
                show: Cmd::new("passage")
                    .env("PASSAGE_AGE", age)
                    .env("PASSAGE_DIR", dir)
                    .env("PASSAGE_IDENTITIES_FILE", identities_file)
                    .arg("show"),
                pass: None,
            }))
        }
        Source::Pipe { command } => {
            let executable = std::fs::metadata(command)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
            if !executable {
                bail!("pipe.command: {command} is not an executable file");
            }
            Action::Run(
                target
                    .shell(&format!("cat > {p}"), origin)
                    .pipe_from(Cmd::new(command.clone())),
            )
        }
        Source::Symlink { target: link } => {
            // `--`: a link text may begin with '-'.
            Action::Run(target.shell(&format!("ln -fnsT -- {} {p}", quote(link)), origin))
        }
    })
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
fn rsync(target: &Target, file: &FileSource, source: &str, origin: &Origin) -> Cmd {
    let mut cmd = Cmd::new("rsync");
    if file.use_checksum {
        cmd = cmd.arg("--checksum");
    }
    if target.sudo {
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
    cmd = cmd.args(["-e", &target.rsync_shell(), "-vFrlptD"]);
    if file.delete_excluded {
        cmd = cmd.arg("--delete-excluded");
    }
    cmd.args([source.to_owned(), target.rsync_destination(origin)])
}

/// What pass and passage trees are synced with: rsync's defaults in krops.
fn default_file_options() -> FileSource {
    FileSource {
        // rsync() takes the source path separately.
        path: String::new(),
        use_checksum: false,
        exclude: Vec::new(),
        filters: Vec::new(),
        delete_excluded: true,
    }
}

impl Secrets {
    fn kind(&self) -> &'static str {
        if self.pass.is_some() {
            "pass"
        } else {
            "passage"
        }
    }

    /// Every secret file below the store root, following symlinks, as
    /// (file, entry name relative to the root, name of the decrypted file).
    fn entries(&self) -> Result<Vec<(PathBuf, String, String)>> {
        let mut entries = Vec::new();
        for entry in WalkDir::new(&self.root)
            .follow_links(true)
            .sort_by_file_name()
        {
            let entry = entry.with_context(|| format!("reading {}", self.root.display()))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(&self.root)
                .expect("walkdir stays below its root");
            let rel = rel
                .to_str()
                .with_context(|| format!("{}: not UTF-8", entry.path().display()))?;
            let decrypted = match self.pass {
                Some(_) if entry.file_name() == ".gpg-id" => continue,
                Some(_) => rel.strip_suffix(".gpg").unwrap_or(rel),
                None => match rel.strip_suffix(".age") {
                    Some(stem) => stem,
                    None => continue,
                },
            };
            let entry_name = match &self.pass {
                Some((_, name)) => format!("{}/{decrypted}", name.trim_end_matches('/')),
                None => decrypted.to_owned(),
            };
            entries.push((entry.path().to_owned(), entry_name, decrypted.to_owned()));
        }
        Ok(entries)
    }

    fn rsync(&self, source: &str) -> Cmd {
        rsync(&self.target, &default_file_options(), source, &self.origin)
    }

    fn run(&self) -> Result<()> {
        let stamp = match &self.pass {
            Some((dir, name)) => pass_stamp(dir, name, &self.root)?,
            None => None,
        };
        if let Some(stamp) = &stamp {
            let remote = self
                .target
                .shell(
                    &format!(
                        "cat {}/.pass_info 2>/dev/null || :",
                        quote(&self.target.path)
                    ),
                    &self.origin,
                )
                .read()?;
            if remote.trim_end_matches('\n') == stamp {
                eprintln!(
                    "populate: {} is unchanged since the last run, skipping",
                    self.root.display()
                );
                return Ok(());
            }
        }
        let secrets = SecretDir::new(&format!("populate-{}.", self.kind()))?;
        for (file, entry_name, decrypted) in self.entries()? {
            let out = secrets.create_file(Path::new(&decrypted))?;
            self.show.clone().arg(&entry_name).run_to_file(out)?;
            // pass: the last commit's date, when the store is a git repo
            // (the stamp exists exactly then); passage: the .age file's.
            let mtime = match (&self.pass, &stamp) {
                (Some((dir, _)), Some(_)) => last_commit_time(dir, &file)?,
                (Some(_), None) => None,
                (None, _) => Some(
                    std::fs::metadata(&file)
                        .and_then(|meta| meta.modified())
                        .with_context(|| format!("cannot read the mtime of {}", file.display()))?,
                ),
            };
            if let Some(mtime) = mtime {
                let decrypted = secrets.path().join(&decrypted);
                std::fs::File::options()
                    .write(true)
                    .open(&decrypted)
                    .and_then(|out| out.set_modified(mtime))
                    .with_context(|| format!("cannot set the mtime of {}", decrypted.display()))?;
            }
        }
        if let Some(stamp) = &stamp {
            use std::io::Write;
            writeln!(secrets.create_file(Path::new(".pass_info"))?, "{stamp}")?;
        }
        let source = format!("{}/", secrets.path().display());
        self.rsync(&source).run()
    }

    fn script(&self) -> String {
        let kind = self.kind();
        // One subshell per store: its own temp dir, removed when it ends,
        // also on a signal, so several stores never share or leak one.
        let mut script = format!(
            "(\ntmp_dir=$(mktemp -d -t populate-{kind}.XXXXXXXX)\n\
             trap 'rm -fR \"$tmp_dir\"' EXIT\ntrap 'exit 130' INT TERM HUP\numask 077\n"
        );
        match self.entries() {
            Ok(entries) => {
                for (_, entry_name, decrypted) in entries {
                    let dir = Path::new(&decrypted)
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty());
                    if let Some(dir) = dir {
                        script.push_str(&format!(
                            "mkdir -p \"$tmp_dir\"/{}\n",
                            quote(&dir.to_string_lossy())
                        ));
                    }
                    script.push_str(&format!(
                        "{} > \"$tmp_dir\"/{}\n",
                        self.show.clone().arg(&entry_name),
                        quote(&decrypted)
                    ));
                }
            }
            Err(err) => {
                script.push_str(&format!("# cannot list {}: {err:#}\n", self.root.display()))
            }
        }
        // The placeholder word quotes to exactly this; put the variable back.
        let rsync = self
            .rsync("$tmp_dir/")
            .to_string()
            .replace("'$tmp_dir/'", "\"$tmp_dir\"/");
        script.push_str(&rsync);
        script.push_str("\n)");
        script
    }
}

/// pass's change stamp: `NAME <last commit touching NAME>` plus the last
/// commit of each symlink's resolved target, when the store is a git repo.
fn pass_stamp(dir: &str, name: &str, root: &Path) -> Result<Option<String>> {
    if !Path::new(dir).join(".git").exists() {
        return Ok(None);
    }
    let last_commit = |path: &str| {
        Cmd::new("git")
            .args(["-C", dir, "log", "-1", "--format=%H", "--", path])
            .read()
    };
    let mut hashes = last_commit(name)?;
    let mut links = Vec::new();
    for entry in WalkDir::new(root) {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        if entry.path_is_symlink() {
            links.push(std::fs::canonicalize(entry.path())?);
        }
    }
    links.sort();
    for link in links {
        hashes.push_str(&last_commit(&link.to_string_lossy())?);
    }
    Ok(Some(format!("{name} {}", hashes.trim_end_matches('\n'))))
}

fn last_commit_time(dir: &str, file: &Path) -> Result<Option<std::time::SystemTime>> {
    let out = Cmd::new("git")
        .args(["-C", dir, "log", "-1", "--format=%at", "--"])
        .arg(file.to_string_lossy())
        .read()?;
    Ok(out
        .trim()
        .parse::<u64>()
        .ok()
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Filter;

    fn origin() -> Origin {
        Origin {
            user: Some("alice".into()),
            host: "laptop".into(),
        }
    }

    fn target(s: &str) -> Target {
        Target::parse(s, &origin()).unwrap()
    }

    #[test]
    fn rsync_argv_follows_krops() {
        let mut t = target("root@h:22/var/src/cfg");
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
            rsync(&t, &file, "/src/", &origin()).argv(),
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
            &target("/var/src/x"),
            &FileSource {
                delete_excluded: false,
                ..plain
            },
            "/x",
            &origin(),
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
            &target("root@[::1]:2222/var/src/cfg"),
            &default_file_options(),
            "/src/",
            &origin(),
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

    #[test]
    fn sentinel_with_force_and_backup_makes_a_directory() {
        let step = sentinel_step(
            &target("/var/src"),
            Options {
                force: true,
                backup: true,
            },
            &origin(),
        );
        assert!(
            step.script().contains("mkdir -p /var/src/.populate"),
            "{}",
            step.script()
        );
        let step = sentinel_step(
            &target("/var/src"),
            Options {
                force: true,
                backup: false,
            },
            &origin(),
        );
        assert!(
            step.script().contains("touch /var/src/.populate"),
            "{}",
            step.script()
        );
    }
}
