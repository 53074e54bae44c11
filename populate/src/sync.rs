//! The steps of a populate run (SPEC §3): the sentinel check, the backup,
//! and one step per source, each a command on the target or here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mktarget::command::{describe, Cmd};
use mktarget::interrupt;
use mktarget::shell::quote;
use mktarget::{Origin, Target};
use walkdir::WalkDir;

use crate::git::git_script;
use crate::script::{failed_command, PRELUDE};
use crate::secrets::SecretDir;
use crate::source::{FileSource, Source, Sources};

/// How the sentinel check reports a missing sentinel (any other failure is
/// the transport's, e.g. ssh's 255, or a failed `run`).
const MISSING_SENTINEL: i32 = 3;
/// How the sentinel check reports a file sentinel where `--backup` needs a
/// directory.
const FILE_SENTINEL: i32 = 4;
/// The sentinel script's exit status when the sentinel is a symlink.
const LINKED_SENTINEL: i32 = 5;

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
    },
    /// Commands run one after the other; the first failure ends the step.
    Run(Vec<Cmd>),
    /// A pass or passage store: decrypted here, then synced.
    Secrets(Box<Secrets>),
    /// A pipe: its command's output, kept here, then moved into place there.
    Pipe(Box<Pipe>),
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

/// A pipe source: the command runs here with its output going to a private
/// file; only when it succeeded is the output sent, and the target moves it
/// into place only when all of it arrived.
#[derive(Debug)]
struct Pipe {
    command: Cmd,
    /// Reads the output (its size, a newline, then the bytes) on the target.
    receive: Cmd,
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
                action: Action::Run(vec![target.shell(&backup_script(target, origin), origin)]),
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
            if interrupt::interrupted() {
                bail!("interrupted");
            }
            let what = format!("{} → {}", step.label, step.place);
            eprintln!("populate: {what}");
            interrupt::doing(&what);
            step.run().context(what)?;
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
            Action::Sentinel { check } => {
                let (status, tail) = check.run_unchecked()?;
                match status.code() {
                    Some(0) => Ok(()),
                    // The script printed krops's own line, for whoever
                    // matches on it; this adds what to do.
                    Some(MISSING_SENTINEL) => bail!(
                        "it guards against syncing to the wrong place: create it on the \
                         target (an empty file), or run with --force"
                    ),
                    // The script said why, and what to do.
                    Some(FILE_SENTINEL | LINKED_SENTINEL) => {
                        bail!("the sentinel is not usable as it is (see above); nothing was synced")
                    }
                    _ => Err(step_failure(check, status, &tail)),
                }
            }
            Action::Run(cmds) => cmds.iter().try_for_each(run_cmd),
            Action::Secrets(secrets) => secrets.run(),
            Action::Pipe(pipe) => pipe.run(),
        }
    }

    fn script(&self) -> String {
        match &self.action {
            Action::Sentinel { check, .. } => check.to_string(),
            Action::Run(cmds) => cmds
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            Action::Secrets(secrets) => secrets.script(),
            Action::Pipe(pipe) => pipe.script(),
        }
    }
}

/// Runs one command of a step, its output shown as it comes.
fn run_cmd(cmd: &Cmd) -> Result<()> {
    let (status, tail) = cmd.run_unchecked()?;
    if status.success() {
        Ok(())
    } else {
        Err(step_failure(cmd, status, &tail))
    }
}

/// The error of a failed command of a step: the one command that failed
/// (what a script's `run` named), or what ssh or rsync said, and the
/// status; never the whole script, nor the output again (it was shown).
fn step_failure(cmd: &Cmd, status: std::process::ExitStatus, tail: &[u8]) -> anyhow::Error {
    let status_text = describe(status);
    if let Some(failed) = failed_command(&String::from_utf8_lossy(tail)) {
        return anyhow::anyhow!("`{failed}` failed: {status_text}");
    }
    match cmd.program() {
        _ if cmd.connection_failed(status) => {
            anyhow::anyhow!("the ssh connection failed ({status_text}; ssh's message is above)")
        }
        "ssh" | "/bin/sh" => anyhow::anyhow!("its script failed: {status_text}"),
        "rsync" => anyhow::anyhow!("rsync failed: {status_text} (its messages are above)"),
        _ => cmd.failure(status, &[]),
    }
}

/// What a source makes at its place on the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Makes {
    /// A directory: a file tree, a checkout, a secret store.
    Dir,
    /// A regular file: a single-file file source, a pipe's output.
    File,
    /// A symlink: a symlink source.
    Link,
    /// A derivation's out link: a symlink into the Nix store (nix-build
    /// replaces only those).
    OutLink,
}

/// Removes, without following links, whatever stands at `p` that the
/// source does not make, and says so: rsync, git and `cat` would otherwise
/// write through a symlink to outside the target path.
fn claim_script(p: &str, shown: &str, makes: Makes) -> String {
    let p = quote(p);
    let replacing = |what: &str, rm: &str| {
        format!(
            "  printf 'populate: replacing the {what} at %s\\n' {} >&2\n  run {rm} {p}\n",
            quote(shown)
        )
    };
    let mut branches = Vec::new();
    match makes {
        Makes::Link => {}
        Makes::OutLink => branches.push((
            // Each test ends with one that takes the path as its argument.
            "case \"$(readlink {p} || :)\" in /nix/store/*|'') false ;; *) true ;; esac && test -L",
            replacing("symlink", "rm -f"),
        )),
        Makes::Dir | Makes::File => branches.push(("test -L", replacing("symlink", "rm -f"))),
    }
    let link = matches!(makes, Makes::Link | Makes::OutLink);
    if makes != Makes::Dir {
        // Not a symlink (tested first, or left to ln and nix-build).
        branches.push((
            if link {
                "! test -L {p} && test -d"
            } else {
                "test -d"
            },
            replacing("directory", "rm -fR"),
        ));
    }
    branches.push((
        match makes {
            Makes::Dir => "test -e {p} && ! test -d",
            Makes::File => "test -e {p} && ! test -f",
            Makes::Link | Makes::OutLink => "! test -L {p} && test -e",
        },
        replacing(
            if makes == Makes::File {
                "special file"
            } else {
                "file"
            },
            "rm -f",
        ),
    ));
    let mut script = String::new();
    for (i, (test, body)) in branches.iter().enumerate() {
        let keyword = if i == 0 { "if" } else { "elif" };
        let test = test.replace("{p}", &p);
        script.push_str(&format!("{keyword} {test} {p}; then\n{body}"));
    }
    script.push_str("fi\n");
    script
}

/// A script to run on the target as a source's step: the prelude, the
/// claim of its place, then `body`.
fn source_script(target: &Target, makes: Makes, origin: &Origin, body: &str) -> String {
    let shown = target.display_path(&target.path, origin);
    format!(
        "{PRELUDE}{}{body}",
        claim_script(&target.path, &shown, makes)
    )
}

fn sentinel_step(target: &Target, options: Options, origin: &Origin) -> Step {
    let sentinel = format!("{}/.populate", target.path);
    let shown = quote(&target.display_path(&sentinel, origin));
    let s = quote(&sentinel);
    let mut script = String::from(PRELUDE);
    if options.force {
        script.push_str(&format!(
            "run mkdir -p {} >&2\n\
             if test -L {s}; then\n  \
             printf 'populate: replacing the symlink at %s (a sentinel is never followed)\\n' {shown} >&2\n  \
             run rm -f {s}\nfi\n",
            quote(&target.path)
        ));
        if options.backup {
            // A backup needs the sentinel to be a directory; krops's hosts
            // have an empty file there, which becomes one.
            script.push_str(&format!(
                "if test -f {s} && ! test -s {s}; then\n  \
                 printf 'populate: turning the empty sentinel file %s into a directory\\n' {shown} >&2\n  \
                 run rm -f {s}\nfi\n\
                 if test -f {s}; then\n  \
                 printf 'error: the sentinel file %s is not empty, so it cannot become the directory a backup needs\\n' {shown} >&2\n  \
                 exit 1\nfi\n\
                 run mkdir -p {s}\n"
            ));
        } else {
            script.push_str(&format!("run touch {s}\n"));
        }
    }
    script.push_str(&format!(
        "if test -L {s}; then\n  \
         printf 'error: the sentinel %s is a symlink, which populate does not follow; replace it with an empty file, or run with --force to have it replaced\\n' {shown} >&2\n  \
         exit {LINKED_SENTINEL}\nfi\n\
         if ! test -e {s}; then\n  printf 'error: missing sentinel file: %s\\n' {shown} >&2\n  exit {MISSING_SENTINEL}\nfi\n"
    ));
    if options.backup {
        script.push_str(&format!(
            "if ! test -d {s}; then\n  \
             printf 'error: the sentinel %s is a file; --backup needs a directory to keep the backup in (--force --backup turns an empty sentinel file into one)\\n' {shown} >&2\n  \
             exit {FILE_SENTINEL}\nfi\n"
        ));
    }
    Step {
        label: "sentinel check".to_owned(),
        place: target.display_path(&sentinel, origin),
        action: Action::Sentinel {
            check: target.shell(&script, origin),
        },
    }
}

fn backup_script(target: &Target, origin: &Origin) -> String {
    let path = &target.path;
    let sentinel = format!("{path}/.populate");
    format!(
        "{PRELUDE}if test -L {s} || ! test -d {s}; then\n  printf 'error: sentinel file is not a directory: %s\\n' {shown} >&2\n  exit 1\nfi\n\
         if test -L {b}; then\n  run rm -f {b}\nfi\n\
         run rsync -aAXF --delete --exclude /.populate --link-dest={p} {src} {dest} >&2\n",
        s = quote(&sentinel),
        shown = quote(&target.display_path(&sentinel, origin)),
        p = quote(path),
        src = quote(&format!("{path}/")),
        dest = quote(&format!("{path}/.populate/backup/")),
        b = quote(&format!("{path}/.populate/backup")),
    )
}

/// The claim of a source's place as a step of its own, for rsync sources.
fn claim(target: &Target, makes: Makes, origin: &Origin) -> Cmd {
    target.shell(&source_script(target, makes, origin, ""), origin)
}

fn source_action(target: &Target, source: &Source, origin: &Origin) -> Result<Action> {
    let p = quote(&target.path);
    let shell =
        |makes, body: &str| target.shell(&source_script(target, makes, origin, body), origin);
    Ok(match source {
        Source::Derivation { text } => Action::Run(vec![shell(
            Makes::OutLink,
            &format!("run nix-build -E {} -o {p} >&2\n", quote(text)),
        )]),
        Source::File(file) => {
            let path = Path::new(&file.path);
            if !path.exists() {
                bail!("file.path: {} does not exist", file.path);
            }
            let makes = if path.is_dir() {
                Makes::Dir
            } else {
                Makes::File
            };
            Action::Run(vec![
                claim(target, makes, origin),
                rsync(target, file, &rsync_source(path), origin),
            ])
        }
        Source::Git(git) => {
            let shown = target.display_path(&target.path, origin);
            Action::Run(vec![shell(
                Makes::Dir,
                &git_script(&target.path, &shown, git),
            )])
        }
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
            if !Path::new(identities_file).is_file() {
                bail!(
                    "passage.identities_file: {identities_file} does not exist \
                     (passage needs it to decrypt the store)"
                );
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
            Action::Pipe(Box::new(Pipe {
                command: Cmd::new(command.clone()),
                receive: shell(Makes::File, &pipe_receive_script(&target.path)),
            }))
        }
        Source::Symlink { target: link } => Action::Run(vec![shell(
            Makes::Link,
            // `--`: a link text may begin with '-'.
            &format!("run ln -fnsT -- {} {p}\n", quote(link)),
        )]),
    })
}

/// Receives a pipe's output on the target: its size on the first line, then
/// the bytes, written beside P and moved into place only when all arrived
/// (krops's `cat > P` left a partial file when the connection or the
/// command broke). An existing P's mode and owner carry over, as they did
/// with krops's `cat > P`.
fn pipe_receive_script(path: &str) -> String {
    let p = quote(path);
    let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
    // Not named after the source: a name near 255 bytes would not fit.
    let tmp = quote(&format!("{dir}/.populate-pipe"));
    format!(
        "IFS= read -r size\n\
         tmp={tmp}.$$\n\
         trap 'rm -f \"$tmp\"' EXIT\n\
         rm -f \"$tmp\"\n\
         run tee -- \"$tmp\" >/dev/null\n\
         got=$(wc -c < \"$tmp\")\n\
         if test \"$got\" -ne \"$size\"; then\n  \
         printf 'populate: only %s of %s bytes arrived; %s is left as it was\\n' \"$got\" \"$size\" {p} >&2\n  \
         exit 1\nfi\n\
         if test -f {p}; then\n  \
         run chmod --reference={p} \"$tmp\"\n  \
         chown --reference={p} \"$tmp\" 2>/dev/null || :\nfi\n\
         run mv -fT \"$tmp\" {p}\n"
    )
}

/// Sends a file's size on a line, then the file: what the receive script reads.
fn sized(file: &str) -> Cmd {
    Cmd::new("/bin/sh").args(["-c", "wc -c < \"$1\" && cat \"$1\"", "sh", file])
}

impl Pipe {
    fn run(&self) -> Result<()> {
        let out = SecretDir::holding("populate-pipe.", "the pipe's output")?;
        let file = out.create_file(Path::new("out"))?;
        // Its output may be secret: it stays out of the log and the error.
        self.command.run_to_file(file).context(
            "the command failed, so nothing was sent and the target's file is left as it was",
        )?;
        let path = out.path().join("out");
        run_cmd(
            &self
                .receive
                .clone()
                .pipe_from(sized(&path.to_string_lossy())),
        )
    }

    fn script(&self) -> String {
        let receive = self
            .receive
            .clone()
            .pipe_from(sized("$tmp_dir/out"))
            .to_string()
            .replace("'$tmp_dir/out'", "\"$tmp_dir\"/out");
        format!(
            "(\ntmp_dir=$(mktemp -d -t populate-pipe.XXXXXXXX)\n\
             trap 'rm -fR \"$tmp_dir\"' EXIT\ntrap 'exit 130' INT TERM HUP\n\
             {} > \"$tmp_dir\"/out\n{receive}\n)",
            self.command
        )
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
        // The place is claimed first, so that neither the stamp nor the
        // secrets are read or written through a symlink.
        let claim = match &stamp {
            Some(_) => self.target.shell(
                &source_script(
                    &self.target,
                    Makes::Dir,
                    &self.origin,
                    &format!(
                        "cat {}/.pass_info 2>/dev/null || :\n",
                        quote(&self.target.path)
                    ),
                ),
                &self.origin,
            ),
            None => claim(&self.target, Makes::Dir, &self.origin),
        };
        let output = claim.output()?;
        let _ = std::io::Write::write_all(&mut std::io::stderr(), &output.stderr);
        if !output.status.success() {
            return Err(step_failure(&claim, output.status, &output.stderr));
        }
        if let Some(stamp) = &stamp {
            if String::from_utf8_lossy(&output.stdout).trim_end_matches('\n') == stamp {
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
        run_cmd(&self.rsync(&source))
    }

    fn script(&self) -> String {
        let kind = self.kind();
        // One subshell per store: its own temp dir, removed when it ends,
        // also on a signal, so several stores never share or leak one.
        let mut script = format!(
            "{}\n(\ntmp_dir=$(mktemp -d -t populate-{kind}.XXXXXXXX)\n\
             trap 'rm -fR \"$tmp_dir\"' EXIT\ntrap 'exit 130' INT TERM HUP\numask 077\n",
            claim(&self.target, Makes::Dir, &self.origin)
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
