//! A pass or passage store: decrypted here into a private dir
//! ([`SecretDir`]), then synced to P with rsync.

use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use mktarget::command::{Out, Stdio};
use mktarget::interrupt;
use mktarget::shell::quote;
use mktarget::{Cmd, Session};
use walkdir::WalkDir;

use super::file::{default_file_options, rsync, FileSource};
use crate::script::{Function, Script};
use crate::secrets::SecretDir;
use crate::step::{claim, run_rsync, step_failure, Ended, Makes, Staged};

/// `krops_pass_info P` (`store.sh`): the stamp the last run left, if any.
static PASS_INFO: Function = Function {
    name: "krops_pass_info",
    text: include_str!("store.sh"),
};

/// How many entries of a store are decrypted at once.
const DECRYPT_JOBS: usize = 8;

/// A pass or passage store to decrypt into a private dir and sync.
#[derive(Debug)]
pub(crate) struct Secrets {
    /// P on the target.
    pub(super) path: String,
    /// Where the store's files are (pass: `DIR/NAME`, passage: `DIR`).
    pub(super) root: PathBuf,
    /// `pass show` or `passage show` and its environment, without the entry name.
    pub(super) show: Cmd,
    /// pass only: the store dir and entry name, for the change stamp.
    pub(super) pass: Option<(String, String)>,
}

impl Staged for Secrets {
    fn run(&self, session: &Session, log: &mut dyn Write) -> Result<Ended> {
        Secrets::run(self, session, log)
    }

    fn script(&self, session: &Session) -> String {
        Secrets::script(self, session)
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

    /// rsync with `--checksum`: a secret edited twice within one second
    /// (pass: the decrypted file gets its last commit's time, in seconds)
    /// or re-encrypted with its old mtime (passage) keeps its size and
    /// time, and rsync's quick check would skip it. Stores are small.
    fn rsync(&self, session: &Session, source: &str) -> Cmd {
        let options = FileSource {
            use_checksum: true,
            ..default_file_options()
        };
        // The claim ran before the secrets were decrypted.
        rsync(session, &options, source, &self.path, None)
    }

    /// Decrypts one entry into `secrets`; its stderr, when it succeeded,
    /// goes to `log`.
    fn decrypt(
        &self,
        secrets: &SecretDir,
        (file, entry_name, decrypted): &(PathBuf, String, String),
        stamped: bool,
        log: &mut Vec<u8>,
    ) -> Result<()> {
        let out = secrets.create_file(Path::new(decrypted))?;
        self.show
            .clone()
            .arg(entry_name)
            .run(Stdio::new(Out::file(out), Out::Hold(Box::new(log))))?
            .checked()?;
        // pass: the last commit's date, when the store is a git repo
        // (the stamp exists exactly then); passage: the .age file's.
        let mtime = match &self.pass {
            Some((dir, _)) if stamped => last_commit_time(dir, file)?,
            Some(_) => None,
            None => Some(
                std::fs::metadata(file)
                    .and_then(|meta| meta.modified())
                    .with_context(|| format!("cannot read the mtime of {}", file.display()))?,
            ),
        };
        if let Some(mtime) = mtime {
            let decrypted = secrets.path().join(decrypted);
            std::fs::File::options()
                .write(true)
                .open(&decrypted)
                .and_then(|out| out.set_modified(mtime))
                .with_context(|| format!("cannot set the mtime of {}", decrypted.display()))?;
        }
        Ok(())
    }

    /// The claim of the store's place, then, for pass with a stamp, the
    /// target's stamp on stdout.
    fn claim(&self, session: &Session, stamp: bool) -> Cmd {
        let mut script = claim(session, &self.path, Makes::Tree);
        if stamp {
            script = script.then(Script::call(&PASS_INFO, &[&self.path]));
        }
        session.shell(&script.whole())
    }

    pub(crate) fn run(&self, session: &Session, log: &mut dyn Write) -> Result<Ended> {
        let stamp = match &self.pass {
            Some((dir, name)) => pass_stamp(dir, name, &self.root)?,
            None => None,
        };
        // The place is claimed first, so that neither the stamp nor the
        // secrets are read or written through a symlink.
        let claim = self.claim(session, stamp.is_some());
        let output = claim.run(Stdio::capture())?;
        let _ = log.write_all(&output.stderr);
        if !output.success() {
            return Err(step_failure(session, &output.failure()).into());
        }
        if let Some(stamp) = &stamp {
            if String::from_utf8_lossy(&output.stdout).trim_end_matches('\n') == stamp {
                let _ = writeln!(
                    log,
                    "populate: {} is unchanged since the last run, skipping",
                    self.root.display()
                );
                return Ok(Ended::Unchanged);
            }
        }
        let secrets = SecretDir::new(&format!("populate-{}.", self.kind()))?;
        // Several at once: each `pass show` or `passage show` is mostly
        // waiting (a shell script, gpg or age starting, gpg-agent), and a
        // store of hundreds took minutes one by one. Their messages keep
        // the entries' order; the first failure in that order is the error.
        let entries = self.entries()?;
        let failed = AtomicBool::new(false);
        let stop = || failed.load(Ordering::SeqCst) || interrupt::interrupted();
        let results = crate::parallel::each(entries.len(), DECRYPT_JOBS, stop, |i| {
            let mut messages = Vec::new();
            let result = self.decrypt(&secrets, &entries[i], stamp.is_some(), &mut messages);
            if result.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            (result, messages)
        });
        for (result, messages) in results.into_iter().flatten() {
            let _ = log.write_all(&messages);
            result?;
        }
        if interrupt::interrupted() {
            anyhow::bail!("interrupted");
        }
        if let Some(stamp) = &stamp {
            writeln!(secrets.create_file(Path::new(".pass_info"))?, "{stamp}")?;
        }
        let source = format!("{}/", secrets.path().display());
        run_rsync(session, &self.rsync(session, &source), log)
            .map(|transfer| Ended::Done(Some(transfer)))
    }

    pub(crate) fn script(&self, session: &Session) -> String {
        let kind = self.kind();
        // One subshell per store: its own temp dir, removed when it ends,
        // also on a signal, so several stores never share or leak one.
        let mut script = format!(
            "{}\n(\ntmp_dir=$(mktemp -d -t populate-{kind}.XXXXXXXX)\n\
             trap 'rm -fR \"$tmp_dir\"' EXIT\ntrap 'exit 130' INT TERM HUP\numask 077\n",
            self.claim(session, false)
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
            .rsync(session, "$tmp_dir/")
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
            .run(Stdio::read())
            .and_then(|ran| ran.text())
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
        .run(Stdio::read())?
        .text()?;
    Ok(out
        .trim()
        .parse::<u64>()
        .ok()
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)))
}
