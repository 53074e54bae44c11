//! Keys (README: Keys): secrets delivered to a directory on the target
//! (`/run/keys`, a tmpfs), each with its owner, group and mode, never under
//! the target path. A key's content comes from exactly one of `pass`,
//! `passage`, `keyFile` or `keyCommand`; it is decrypted or made here into a
//! private temp dir ([`SecretDir`]), and all keys of a target go in one
//! stream over the run's connection to one remote script (`keys.sh`), which
//! writes each beside its place, gives it its owner and mode and renames it
//! in, leaves alone a key that is already right, and removes the keys it
//! put in a directory before that are no longer declared.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use mktarget::command::{Out, Stdio};
use mktarget::json::{kind, shown, shown_key};
use mktarget::shell::quote;
use mktarget::{interrupt, Cmd, Session};
use serde_json::{json, Value};

use crate::script::{Function, Script};
use crate::secrets::SecretDir;
use crate::source::fields::{absolute, line, Fields};
use crate::source::is_portable;

/// `krops_keys HOST ON STRICT RECORD...` (`keys.sh`).
static INSTALL: Function = Function {
    name: "krops_keys",
    text: include_str!("keys.sh"),
};

/// Where keys go unless a key says otherwise.
pub const DEFAULT_DEST_DIR: &str = "/run/keys";

/// The file names the tools keep in a keys directory for themselves: the
/// manifest and the temp files beside a key.
const RESERVED: &str = ".krops-keys";

/// When a key is sent: before the activation (the default), or only after
/// one that succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UploadAt {
    PreActivation,
    PostActivation,
}

impl UploadAt {
    pub fn name(self) -> &'static str {
        match self {
            UploadAt::PreActivation => "pre-activation",
            UploadAt::PostActivation => "post-activation",
        }
    }
}

/// Where a key's content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// One entry of a password store: `PASSWORD_STORE_DIR=DIR pass show NAME`.
    Pass { dir: String, name: String },
    /// One entry of a passage store.
    Passage {
        dir: String,
        name: String,
        identities_file: String,
        age: String,
    },
    /// A file here.
    KeyFile(String),
    /// A command run here (program and arguments); its stdout is the key.
    KeyCommand(Vec<String>),
}

/// One key, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// Its name in the keys object.
    pub name: String,
    pub content: Content,
    /// The directory on the target, absolute, without a trailing slash.
    pub dest_dir: String,
    /// The file name in `dest_dir`.
    pub file: String,
    pub user: String,
    pub group: String,
    /// Four octal digits (`0600`).
    pub permissions: String,
    pub upload_at: UploadAt,
}

impl Key {
    /// `DIR/FILE` on the target.
    pub fn path(&self) -> String {
        if self.dest_dir == "/" {
            format!("/{}", self.file)
        } else {
            format!("{}/{}", self.dest_dir, self.file)
        }
    }

    /// The command that prints the key's content, or `None` for a file.
    fn producer(&self) -> Option<Cmd> {
        match &self.content {
            Content::Pass { dir, name } => Some(
                Cmd::new("pass")
                    .env("PASSWORD_STORE_DIR", dir)
                    .args(["show", name]),
            ),
            Content::Passage {
                dir,
                name,
                identities_file,
                age,
            } => Some(
                Cmd::new("passage")
                    .env("PASSAGE_AGE", age)
                    .env("PASSAGE_DIR", dir)
                    .env("PASSAGE_IDENTITIES_FILE", identities_file)
                    .args(["show", name]),
            ),
            Content::KeyFile(_) => None,
            Content::KeyCommand(argv) => Some(Cmd::from_argv(argv.iter().cloned())),
        }
    }

    fn source(&self) -> &'static str {
        match self.content {
            Content::Pass { .. } => "pass",
            Content::Passage { .. } => "passage",
            Content::KeyFile(_) => "keyFile",
            Content::KeyCommand(_) => "keyCommand",
        }
    }
}

/// All keys of a run, in byte order of their names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    pub keys: Vec<Key>,
}

/// Reads the keys object from `file` (`--keys FILE`).
pub fn read(file: &Path, home: Option<&str>) -> Result<Keys> {
    let what = format!("keys from {}", file.display());
    // json::read names what it reads in its own errors.
    let text = std::fs::File::open(file)
        .with_context(|| format!("cannot read {what}"))
        .and_then(|file| mktarget::json::read(file, &what))
        .map_err(|err| anyhow::anyhow!("--keys: {err:#}"))?;
    parse(&text, home)
}

/// The keys object as text.
pub fn parse(text: &str, home: Option<&str>) -> Result<Keys> {
    let value = match mktarget::json::parse(text) {
        Ok(value) => value,
        Err(err) => bail!("keys: malformed JSON: {err}"),
    };
    from_json(&value, home)
}

/// The keys object: key name → its content source and where it goes.
pub fn from_json(value: &Value, home: Option<&str>) -> Result<Keys> {
    let Value::Object(object) = value else {
        bail!(
            "keys: expected an object of key name → key, got {}",
            kind(value)
        );
    };
    let mut keys = Vec::new();
    let mut places: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in object {
        check_component(&format!("keys.{}", shown_key(name)), name, "a key name")?;
        let key = key(name, value, home)?;
        if let Some(other) = places.insert(key.path(), name.clone()) {
            bail!(
                "keys.{}: goes to {}, as key {} does: each key needs a place of its own",
                shown_key(name),
                key.path(),
                shown(&other)
            );
        }
        keys.push(key);
    }
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    // A key where another's directory is (or above it) would need its
    // place to be both a file and a directory.
    for key in &keys {
        let place = key.path();
        if let Some(other) = keys
            .iter()
            .find(|o| o.dest_dir == place || o.dest_dir.starts_with(&format!("{place}/")))
        {
            bail!(
                "keys.{}: goes to {place}, which key {}'s destDir {} needs as a directory",
                shown_key(&key.name),
                shown(&other.name),
                other.dest_dir
            );
        }
    }
    Ok(Keys { keys })
}

/// A file name: one path component of portable characters, not `.`, `..`,
/// not starting with `-` or with the tools' own `.krops-keys`.
fn check_component(path: &str, name: &str, what: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.starts_with('-')
        || name.starts_with(RESERVED)
        || name.len() > 255
        || !is_portable(name)
    {
        bail!(
            "{path}: {what} must be one path component of 1 to 255 of the characters A-Z a-z \
             0-9 . _ - (not \".\", \"..\", nor starting with '-' or {RESERVED}), not {}",
            shown(name)
        );
    }
    Ok(())
}

/// A user or group name or number: what `chown` reads as one, never as an
/// option.
fn check_owner(path: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        bail!(
            "{path}: {} is not a user or group name (1 to 32 of A-Z a-z 0-9 . _ -, not \
             starting with '-')",
            shown(name)
        );
    }
    Ok(())
}

/// An octal mode: 3 or 4 octal digits, as four.
fn permissions(path: &str, mode: &str) -> Result<String> {
    let digits = mode.len() == 3 || mode.len() == 4;
    if !digits || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        bail!(
            "{path}: {} is not an octal mode such as \"0600\" or \"0440\"",
            shown(mode)
        );
    }
    Ok(format!("{mode:0>4}"))
}

/// A relative entry name in a store: no leading `/`, no `..`.
fn entry_name(path: &str, name: &str) -> Result<()> {
    let parts: Vec<&str> = name.split('/').collect();
    if name.starts_with('/')
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        bail!(
            "{path}: {} must be a relative entry name inside the store",
            shown(name)
        );
    }
    Ok(())
}

fn expand(path: &str, p: String, home: Option<&str>) -> Result<String> {
    let expanded = match (p.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => format!("{home}/{rest}"),
        (Some(_), None) => bail!("{path}: {} starts with ~/ but HOME is not set", shown(&p)),
        (None, _) => p,
    };
    absolute(path, &Value::String(expanded))
}

fn key(name: &str, value: &Value, home: Option<&str>) -> Result<Key> {
    let path = format!("keys.{name}");
    let mut fields = Fields::new(&path, value)?;
    let mut contents = Vec::new();
    if let Some(pass) = fields.take("pass") {
        let at = format!("{path}.pass");
        let mut pass = Fields::new(&at, pass)?;
        let dir = pass.absolute("dir")?;
        let entry = pass.line("name")?;
        pass.finish()?;
        entry_name(&format!("{at}.name"), &entry)?;
        contents.push(Content::Pass { dir, name: entry });
    }
    if let Some(passage) = fields.take("passage") {
        let at = format!("{path}.passage");
        let mut passage = Fields::new(&at, passage)?;
        let dir = passage.line("dir")?;
        let entry = passage.line("name")?;
        let identities = passage.opt_line("identities_file")?;
        let age = passage.opt_line("age")?;
        passage.finish()?;
        entry_name(&format!("{at}.name"), &entry)?;
        let age = age.unwrap_or_else(|| "age".to_owned());
        if age.is_empty() || age.starts_with('-') {
            bail!("{at}.age: {} is not a program name or path", shown(&age));
        }
        contents.push(Content::Passage {
            dir: expand(&format!("{at}.dir"), dir, home)?,
            name: entry,
            identities_file: expand(
                &format!("{at}.identities_file"),
                identities.unwrap_or_else(|| "~/.passage/identities".to_owned()),
                home,
            )?,
            age,
        });
    }
    if let Some(file) = fields.take("keyFile") {
        contents.push(Content::KeyFile(absolute(
            &format!("{path}.keyFile"),
            file,
        )?));
    }
    if let Some(command) = fields.take("keyCommand") {
        let at = format!("{path}.keyCommand");
        let Value::Array(words) = command else {
            bail!(
                "{at}: expected a list of words (the program, then its arguments), got {}",
                kind(command)
            );
        };
        let mut argv = Vec::new();
        for (i, word) in words.iter().enumerate() {
            match word {
                Value::String(s) if s.contains('\0') => {
                    bail!("{at}[{i}]: {} contains a NUL byte", shown(s))
                }
                Value::String(s) => argv.push(s.clone()),
                other => bail!("{at}[{i}]: expected a string, got {}", kind(other)),
            }
        }
        match argv.first() {
            None => bail!("{at}: empty: it needs at least the program"),
            Some(program) if program.is_empty() || program.starts_with('-') => {
                bail!("{at}[0]: {} is not a program name or path", shown(program))
            }
            Some(program) => {
                line(&format!("{at}[0]"), program)?;
            }
        }
        contents.push(Content::KeyCommand(argv));
    }
    let dest_dir = match fields.take("destDir") {
        None => DEFAULT_DEST_DIR.to_owned(),
        Some(dir) => {
            let at = format!("{path}.destDir");
            let dir = absolute(&at, dir)?;
            if dir.split('/').any(|part| part == "." || part == "..") {
                bail!("{at}: {} must not contain . or .. components", shown(&dir));
            }
            // One spelling for one directory (`/run//keys/` is `/run/keys`):
            // each has one manifest, and two keys need two places.
            let parts: Vec<&str> = dir.split('/').filter(|part| !part.is_empty()).collect();
            if parts.is_empty() {
                bail!("{at}: / is not a keys directory");
            }
            format!("/{}", parts.join("/"))
        }
    };
    let file = fields
        .opt_string("name")?
        .unwrap_or_else(|| name.to_owned());
    check_component(&format!("{path}.name"), &file, "a key's file name")?;
    let user = fields
        .opt_string("user")?
        .unwrap_or_else(|| "root".to_owned());
    check_owner(&format!("{path}.user"), &user)?;
    let group = fields
        .opt_string("group")?
        .unwrap_or_else(|| "root".to_owned());
    check_owner(&format!("{path}.group"), &group)?;
    let mode = fields
        .opt_string("permissions")?
        .unwrap_or_else(|| "0600".to_owned());
    let permissions = permissions(&format!("{path}.permissions"), &mode)?;
    let upload_at = match fields.opt_string("uploadAt")?.as_deref() {
        None | Some("pre-activation") => UploadAt::PreActivation,
        Some("post-activation") => UploadAt::PostActivation,
        Some(other) => bail!(
            "{path}.uploadAt: {} is not \"pre-activation\" or \"post-activation\"",
            shown(other)
        ),
    };
    fields.finish()?;
    let content = match contents.len() {
        1 => contents.remove(0),
        0 => bail!("{path}: no content: give one of pass, passage, keyFile, keyCommand"),
        _ => bail!(
            "{path}: more than one content source: give one of pass, passage, keyFile, keyCommand"
        ),
    };
    Ok(Key {
        name: name.to_owned(),
        content,
        dest_dir,
        file,
        user,
        group,
        permissions,
        upload_at,
    })
}

impl Keys {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Refuses what is missing here (a file, a store entry, an identities
    /// file, a program), before anything runs.
    pub fn check_here(&self) -> Result<()> {
        for key in &self.keys {
            let path = format!("keys.{}", key.name);
            match &key.content {
                Content::Pass { dir, name } => {
                    let file = Path::new(dir).join(format!("{name}.gpg"));
                    if !file.is_file() {
                        bail!(
                            "{path}.pass: {} is not an entry of the password store {dir} (no {})",
                            shown(name),
                            file.display()
                        );
                    }
                }
                Content::Passage {
                    dir,
                    name,
                    identities_file,
                    ..
                } => {
                    let file = Path::new(dir).join(format!("{name}.age"));
                    if !file.is_file() {
                        bail!(
                            "{path}.passage: {} is not an entry of the store {dir} (no {})",
                            shown(name),
                            file.display()
                        );
                    }
                    if !Path::new(identities_file).is_file() {
                        bail!(
                            "{path}.passage.identities_file: {identities_file} does not exist \
                             (passage needs it to decrypt the key)"
                        );
                    }
                }
                Content::KeyFile(file) => {
                    if !Path::new(file).is_file() {
                        bail!("{path}.keyFile: {file} is not a file");
                    }
                }
                Content::KeyCommand(argv) => {
                    let program = &argv[0];
                    let executable = |path: &Path| {
                        std::fs::metadata(path).is_ok_and(|meta| {
                            use std::os::unix::fs::PermissionsExt;
                            meta.is_file() && meta.permissions().mode() & 0o111 != 0
                        })
                    };
                    let found = if program.contains('/') {
                        executable(Path::new(program))
                    } else {
                        std::env::var_os("PATH").is_some_and(|path| {
                            std::env::split_paths(&path).any(|dir| executable(&dir.join(program)))
                        })
                    };
                    if !found {
                        bail!(
                            "{path}.keyCommand[0]: {} is not an executable file{}",
                            shown(program),
                            if program.contains('/') {
                                ""
                            } else {
                                " on PATH"
                            }
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Refuses a key that would go under the target path `path` (which
    /// populate owns), or a keys directory holding it.
    pub fn check_outside(&self, path: &str) -> Result<()> {
        let path = path.trim_end_matches('/');
        for key in &self.keys {
            let dir = &key.dest_dir;
            let within = |outer: &str, inner: &str| {
                inner == outer || inner.starts_with(&format!("{outer}/"))
            };
            if within(path, dir) || within(dir, path) {
                bail!(
                    "keys.{}.destDir: {dir} and the target path {path} are one inside the \
                     other: keys go outside the sources",
                    key.name
                );
            }
        }
        Ok(())
    }

    /// The keys sent at `when`.
    pub fn at(&self, when: UploadAt) -> Vec<&Key> {
        self.keys.iter().filter(|k| k.upload_at == when).collect()
    }

    /// Each keys directory with the file names of all keys declared in it.
    fn dirs(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut dirs: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for key in &self.keys {
            dirs.entry(&key.dest_dir).or_default().insert(&key.file);
        }
        dirs
    }
}

/// What happened to a key (or to a file a key no longer names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Installed,
    Unchanged,
    /// Installed root-owned: its user or group did not exist yet.
    Pending,
    Removed,
}

impl Outcome {
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Installed => "installed",
            Outcome::Unchanged => "unchanged",
            Outcome::Pending => "installed root-owned (its user or group does not exist yet)",
            Outcome::Removed => "removed",
        }
    }
}

/// One line of what a delivery did: the key (`None` for a removed file no
/// key names), its path on the target, and the outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub key: Option<String>,
    pub path: String,
    pub outcome: Outcome,
}

impl fmt::Display for Delivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "key {key} ({}): {}", self.path, self.outcome.word()),
            None => write!(f, "key file {}: {}", self.path, self.outcome.word()),
        }
    }
}

/// One send of keys to a target: which keys, whether a missing user is an
/// error (`strict`) or leaves the key root-owned for now, and whether the
/// keys directories are set up (created, checked, cleaned of undeclared
/// keys) on the way.
pub struct Batch<'k> {
    pub keys: &'k Keys,
    pub sent: Vec<&'k Key>,
    pub strict: bool,
    pub dirs: bool,
}

impl Batch<'_> {
    fn script(&self, session: &Session) -> Script {
        let host = if session.is_local() {
            String::new()
        } else {
            format!("{}:", session.target().bracketed_host())
        };
        let mut words: Vec<String> = vec![
            host,
            session.machine(),
            if self.strict { "1" } else { "0" }.to_owned(),
        ];
        if self.dirs {
            for (dir, files) in self.keys.dirs() {
                let names: Vec<&str> = files.into_iter().collect();
                words.extend(["dir".to_owned(), dir.to_owned(), names.join(",")]);
            }
        }
        for key in &self.sent {
            words.extend([
                "key".to_owned(),
                key.name.clone(),
                key.dest_dir.clone(),
                key.file.clone(),
                key.user.clone(),
                key.group.clone(),
                key.permissions.clone(),
            ]);
        }
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        Script::call(&INSTALL, &words)
    }

    /// The remote command, reading the keys' stream on stdin.
    fn receive(&self, session: &Session) -> Cmd {
        session.shell(&self.script(session).whole())
    }

    /// Makes each key here into a private dir, then sends them all in one
    /// stream; what the target did, in the order it said. Messages of the
    /// target's script (a warning) go to `log`.
    pub fn run(&self, session: &Session, log: &mut dyn Write) -> Result<Vec<Delivered>> {
        let dir = SecretDir::holding("krops-keys.", "decrypted keys")?;
        let mut files = Vec::new();
        for (i, key) in self.sent.iter().enumerate() {
            if interrupt::interrupted() {
                bail!("interrupted");
            }
            let rel = i.to_string();
            let out = dir.create_file(Path::new(&rel))?;
            match (&key.content, key.producer()) {
                (Content::KeyFile(file), _) => {
                    let mut from = std::fs::File::open(file)
                        .with_context(|| format!("key {}: cannot read {file}", key.name))?;
                    let mut out = out;
                    std::io::copy(&mut from, &mut out)
                        .with_context(|| format!("key {}: cannot copy {file}", key.name))?;
                }
                (_, Some(producer)) => {
                    // Its output is the key: it stays out of the log and
                    // the error.
                    let stdio = Stdio::new(Out::file(out), Out::Hold(Box::new(&mut *log)));
                    let ran = producer.run(stdio).and_then(|ran| Ok(ran.checked()?));
                    ran.with_context(|| {
                        format!(
                            "key {}: its {} failed, so no key was sent",
                            key.name,
                            key.source()
                        )
                    })?;
                }
                (_, None) => unreachable!("only a keyFile has no producer"),
            }
            files.push(dir.path().join(rel).display().to_string());
        }
        let mut receive = self.receive(session);
        if !files.is_empty() {
            receive = receive.pipe_from(stream(&files));
        }
        let output = receive.run(Stdio::capture())?;
        drop(dir);
        let said = String::from_utf8_lossy(&output.stderr);
        // The script's own error becomes the error; the rest is the log.
        let (errors, rest): (Vec<&str>, Vec<&str>) = said.lines().partition(|line| {
            line.starts_with("krops: error: ") || line.starts_with("populate: failed: ")
        });
        for line in rest {
            let _ = writeln!(log, "{line}");
        }
        if !output.status.success() {
            if let Some(why) = session.connection_failure(&output.failure()) {
                bail!("{why}");
            }
            match errors.last() {
                Some(error) => bail!(
                    "{}",
                    error
                        .trim_start_matches("krops: error: ")
                        .trim_start_matches("populate: ")
                ),
                None => bail!(
                    "the keys' script on {} failed: {}",
                    session.machine(),
                    mktarget::command::describe(output.status)
                ),
            }
        }
        let mut delivered = Vec::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Some((word, what)) = line.split_once(' ') else {
                continue;
            };
            let outcome = match word {
                "installed" => Outcome::Installed,
                "unchanged" => Outcome::Unchanged,
                "pending" => Outcome::Pending,
                "removed" => Outcome::Removed,
                _ => continue,
            };
            delivered.push(match outcome {
                Outcome::Removed => Delivered {
                    key: None,
                    path: what.to_owned(),
                    outcome,
                },
                _ => Delivered {
                    path: self
                        .keys
                        .keys
                        .iter()
                        .find(|k| k.name == what)
                        .map(Key::path)
                        .unwrap_or_default(),
                    key: Some(what.to_owned()),
                    outcome,
                },
            });
        }
        Ok(delivered)
    }

    /// What `--dry-run` shows for the send: each key made into a private
    /// dir (no content), then the one stream to the target's script.
    pub fn script_text(&self, session: &Session) -> String {
        let mut text = String::from(
            "(\ntmp_dir=$(mktemp -d -t krops-keys.XXXXXXXX)\n\
             trap 'rm -fR \"$tmp_dir\"' EXIT\ntrap 'exit 130' INT TERM HUP\numask 077\n",
        );
        let mut files = Vec::new();
        for (i, key) in self.sent.iter().enumerate() {
            let to = format!("\"$tmp_dir\"/{i}");
            match (&key.content, key.producer()) {
                (Content::KeyFile(file), _) => {
                    text.push_str(&format!("cat {} > {to}\n", quote(file)))
                }
                (_, Some(producer)) => text.push_str(&format!("{producer} > {to}\n")),
                (_, None) => {}
            }
            files.push(format!("$tmp_dir/{i}"));
        }
        let mut receive = self.receive(session);
        if !files.is_empty() {
            receive = receive.pipe_from(stream(&files));
        }
        let mut shown = receive.to_string();
        for file in &files {
            let (_, i) = file.rsplit_once('/').expect("a file in the dir");
            shown = shown.replace(&quote(file), &format!("\"$tmp_dir\"/{i}"));
        }
        text.push_str(&shown);
        text.push_str("\n)");
        text
    }
}

/// The stream of `files`: for each, its size on a line, then its bytes.
fn stream(files: &[String]) -> Cmd {
    Cmd::new("/bin/sh")
        .args([
            "-c",
            "for f do wc -c < \"$f\" && cat \"$f\" || exit; done",
            "sh",
        ])
        .args(files.iter().cloned())
}

/// The results' `keys`: each line of what the deliveries did.
pub fn to_json(delivered: &[Delivered]) -> Value {
    Value::Array(
        delivered
            .iter()
            .map(|d| {
                json!({
                    "name": d.key,
                    "path": d.path,
                    "status": match d.outcome {
                        Outcome::Installed => "installed",
                        Outcome::Unchanged => "unchanged",
                        Outcome::Pending => "pending",
                        Outcome::Removed => "removed",
                    },
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(keys: Value) -> String {
        format!("{:#}", from_json(&keys, Some("/home/me")).unwrap_err())
    }

    #[test]
    fn defaults_are_colmena_s() {
        let keys = from_json(
            &json!({"db": {"keyCommand": ["echo", "x"]}}),
            Some("/home/me"),
        )
        .unwrap();
        let key = &keys.keys[0];
        assert_eq!(key.path(), "/run/keys/db");
        assert_eq!(
            (&*key.user, &*key.group, &*key.permissions),
            ("root", "root", "0600")
        );
        assert_eq!(key.upload_at, UploadAt::PreActivation);
    }

    #[test]
    fn bad_keys_are_refused_naming_the_field() {
        let cmd = json!(["true"]);
        for (keys, says) in [
            (json!([]), "keys: expected an object"),
            (json!({"a": {}}), "keys.a: no content"),
            (
                json!({"a": {"keyCommand": cmd, "keyFile": "/x"}}),
                "keys.a: more than one content source",
            ),
            (
                json!({"a": {"keyCommand": cmd, "colour": 1}}),
                "keys.a.colour: unknown field",
            ),
            (
                json!({"a": {"keyCommand": cmd, "permissions": "0999"}}),
                "keys.a.permissions: \"0999\" is not an octal mode",
            ),
            (
                json!({"a": {"keyCommand": cmd, "permissions": "rw"}}),
                "keys.a.permissions",
            ),
            (
                json!({"a": {"keyCommand": cmd, "name": "x/y"}}),
                "keys.a.name: a key's file name must be one path component",
            ),
            (
                json!({"a": {"keyCommand": cmd, "name": ".."}}),
                "keys.a.name",
            ),
            (
                json!({"a": {"keyCommand": cmd, "destDir": "run/keys"}}),
                "keys.a.destDir: \"run/keys\" is not an absolute path",
            ),
            (
                json!({"a": {"keyCommand": cmd, "destDir": "/run/../etc"}}),
                "keys.a.destDir",
            ),
            (
                json!({"a": {"keyCommand": cmd, "user": "-oops"}}),
                "keys.a.user: \"-oops\" is not a user or group name",
            ),
            (
                json!({"a": {"keyCommand": cmd, "group": "--reference=/etc"}}),
                "keys.a.group",
            ),
            (
                json!({"a": {"keyCommand": cmd, "uploadAt": "later"}}),
                "keys.a.uploadAt",
            ),
            (json!({"a": {"keyCommand": []}}), "keys.a.keyCommand: empty"),
            (
                json!({"a": {"keyCommand": "echo"}}),
                "keys.a.keyCommand: expected a list",
            ),
            (
                json!({"a": {"keyFile": "relative"}}),
                "keys.a.keyFile: \"relative\" is not an absolute path",
            ),
            (
                json!({"a": {"pass": {"dir": "/p", "name": "../x"}}}),
                "keys.a.pass.name",
            ),
            (
                json!({"a/b": {"keyCommand": cmd}}),
                "keys.\"a/b\": a key name must be one path component",
            ),
            (
                json!({".krops-keys": {"keyCommand": cmd}}),
                "a key name must be one path component",
            ),
            (
                json!({"a": {"keyCommand": cmd}, "b": {"keyCommand": cmd, "name": "a"}}),
                "keys.b: goes to /run/keys/a, as key \"a\" does",
            ),
            (
                json!({"app": {"keyCommand": cmd}, "b": {"keyCommand": cmd, "destDir": "/run/keys/app"}}),
                "keys.app: goes to /run/keys/app, which key \"b\"'s destDir /run/keys/app needs",
            ),
        ] {
            let got = err(keys.clone());
            assert!(got.contains(says), "{keys}: {got}");
        }
    }

    #[test]
    fn modes_become_four_digits() {
        assert_eq!(permissions("p", "600").unwrap(), "0600");
        assert_eq!(permissions("p", "0440").unwrap(), "0440");
        assert!(permissions("p", "60").is_err());
        assert!(permissions("p", "06000").is_err());
    }
}
