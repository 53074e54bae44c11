//! Secret stores for pass and passage sources, made with the real gpg, pass, age
//! and age-keygen; keys are generated per world, never checked in.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run::{self, RUN_TIMEOUT};
use crate::World;

/// A password store (`pass`) that is a git repo, encrypted to a passphrase-less
/// gpg key in the world's GNUPGHOME. Once it exists, [`World::env`] exports
/// `GNUPGHOME` and `PASSWORD_STORE_DIR`.
#[derive(Clone, Debug)]
pub struct PassStore {
    dir: PathBuf,
    gnupghome: PathBuf,
    fingerprint: String,
    env: BTreeMap<String, String>,
}

/// A passage store: an age identity at `home/.passage/identities` (passage's
/// default under the world's HOME) and a store at `home/.passage/store`.
#[derive(Clone, Debug)]
pub struct PassageStore {
    dir: PathBuf,
    identities: PathBuf,
    recipient: String,
    env: BTreeMap<String, String>,
}

impl World {
    /// The world's pass store `root/pass`, made on first use: a gpg key without
    /// passphrase in `root/gnupg`, `pass init FINGERPRINT`, `pass git init`.
    #[track_caller]
    pub fn pass_store(&self) -> PassStore {
        self.pass.get_or_init(|| self.make_pass_store()).clone()
    }

    #[track_caller]
    fn make_pass_store(&self) -> PassStore {
        let gnupghome = self.root.join("gnupg");
        fs::create_dir_all(&gnupghome).expect("create GNUPGHOME");
        fs::set_permissions(&gnupghome, fs::Permissions::from_mode(0o700))
            .expect("chmod GNUPGHOME");
        let dir = self.root.join("pass");
        let mut env = self.env();
        env.insert("GNUPGHOME".into(), gnupghome.display().to_string());
        env.insert("PASSWORD_STORE_DIR".into(), dir.display().to_string());
        let mut store = PassStore {
            dir,
            gnupghome,
            fingerprint: String::new(),
            env,
        };
        store.run(
            Command::new("gpg").args([
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                "krops test <krops-test@example.invalid>",
                // ed25519 for signing plus a cv25519 subkey for encryption.
                "future-default",
                "default",
                "never",
            ]),
            b"",
        );
        let keys = store.run(
            Command::new("gpg").args(["--batch", "--with-colons", "--list-secret-keys"]),
            b"",
        );
        store.fingerprint = keys
            .lines()
            .find_map(|line| line.strip_prefix("fpr:"))
            .and_then(|rest| rest.split(':').find(|field| !field.is_empty()))
            .unwrap_or_else(|| panic!("no fingerprint in `gpg --list-secret-keys`:\n{keys}"))
            .to_owned();
        store.run(Command::new("pass").args(["init", &store.fingerprint]), b"");
        store.run(Command::new("pass").args(["git", "init"]), b"");
        store
    }

    /// The world's passage store, made on first use with `age-keygen`.
    #[track_caller]
    pub fn passage_store(&self) -> PassageStore {
        self.passage
            .get_or_init(|| self.make_passage_store())
            .clone()
    }

    #[track_caller]
    fn make_passage_store(&self) -> PassageStore {
        let base = self.home().join(".passage");
        let dir = base.join("store");
        fs::create_dir_all(&dir).expect("create the passage store");
        fs::set_permissions(&base, fs::Permissions::from_mode(0o700)).expect("chmod ~/.passage");
        let identities = base.join("identities");
        let mut store = PassageStore {
            dir,
            identities,
            recipient: String::new(),
            env: self.env(),
        };
        store.run(
            Command::new("age-keygen").arg("-o").arg(&store.identities),
            b"",
        );
        store.recipient = store
            .run(
                Command::new("age-keygen").arg("-y").arg(&store.identities),
                b"",
            )
            .trim()
            .to_owned();
        store
    }
}

#[track_caller]
fn checked(cmd: &mut Command, env: &BTreeMap<String, String>, stdin: &[u8]) -> String {
    cmd.env_clear().envs(env);
    let out = run::run(cmd, stdin, RUN_TIMEOUT);
    out.assert_success();
    out.stdout_str()
}

impl PassStore {
    #[track_caller]
    fn run(&self, cmd: &mut Command, stdin: &[u8]) -> String {
        checked(cmd, &self.env, stdin)
    }

    /// The store directory (`PASSWORD_STORE_DIR`), a git repo.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The GNUPGHOME holding the key.
    pub fn gnupghome(&self) -> &Path {
        &self.gnupghome
    }

    /// The key's fingerprint (the store's `.gpg-id`).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `pass insert -m -f NAME` with `secret` on stdin; pass commits it.
    #[track_caller]
    pub fn insert(&self, name: &str, secret: &str) {
        self.run(
            Command::new("pass").args(["insert", "-m", "-f", name]),
            secret.as_bytes(),
        );
    }

    /// Adds many entries at once, as [`PassStore::insert`] would (each
    /// `NAME.gpg` holding exactly its secret, encrypted to the store's key),
    /// with one gpg and one commit: a store of hundreds of secrets in
    /// seconds.
    #[track_caller]
    pub fn insert_all(&self, entries: &[(String, String)]) {
        let staging = tempfile::Builder::new()
            .prefix(".staging.")
            .tempdir_in(&self.dir)
            .expect("a staging dir in the pass store");
        let mut plain = Vec::new();
        for (i, (_, secret)) in entries.iter().enumerate() {
            let path = staging.path().join(i.to_string());
            fs::write(&path, secret).expect("write a staged secret");
            plain.push(path);
        }
        self.run(
            Command::new("gpg")
                .args(["--batch", "--yes", "--quiet", "-r", &self.fingerprint])
                .arg("--encrypt-files")
                .args(&plain),
            b"",
        );
        for ((name, _), path) in entries.iter().zip(&plain) {
            let to = self.dir.join(format!("{name}.gpg"));
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).expect("create the entry's directory");
            }
            fs::rename(path.with_extension("gpg"), &to)
                .unwrap_or_else(|err| panic!("cannot move the entry to {}: {err}", to.display()));
        }
        drop(staging);
        self.commit(&format!("Add {} entries", entries.len()));
    }

    /// Adds many entries at once, as `pass insert` would store them (each
    /// secret and a newline, encrypted to the store's key with the real gpg)
    /// but in one commit, which is much faster than one `pass insert` each.
    /// With `date` (git's date format, e.g. `@1700000000 +0000`) the commit
    /// has that author and committer date. The secrets reach gpg on stdin,
    /// never in an argv.
    #[track_caller]
    pub fn insert_many(&self, entries: &[(&str, &str)], date: Option<&str>) {
        let mut input = String::new();
        for (name, secret) in entries {
            assert!(
                !name.contains(['\n', ' ']) && !secret.contains('\n'),
                "one line each: {name:?}"
            );
            input.push_str(&format!("{name} {secret}\n"));
        }
        let script = r#"set -eu
while IFS=' ' read -r name secret; do
  file="$PASSWORD_STORE_DIR/$name.gpg"
  mkdir -p "$(dirname "$file")"
  printf '%s\n' "$secret" | gpg --batch --yes --quiet -e -r "$1" -o "$file"
done
git -C "$PASSWORD_STORE_DIR" add -A
git -C "$PASSWORD_STORE_DIR" commit -q -m "Add $2 entries"
"#;
        let mut env = self.env.clone();
        if let Some(date) = date {
            env.insert("GIT_AUTHOR_DATE".into(), date.into());
            env.insert("GIT_COMMITTER_DATE".into(), date.into());
        }
        checked(
            Command::new("/bin/sh").args([
                "-c",
                script,
                "sh",
                &self.fingerprint,
                &entries.len().to_string(),
            ]),
            &env,
            input.as_bytes(),
        );
    }

    /// `pass show NAME` with the real pass.
    #[track_caller]
    pub fn show(&self, name: &str) -> String {
        self.run(Command::new("pass").args(["show", name]), b"")
    }

    /// `pass rm -r -f NAME`; pass commits it.
    #[track_caller]
    pub fn remove(&self, name: &str) {
        self.run(Command::new("pass").args(["rm", "-r", "-f", name]), b"");
    }

    /// Makes `DIR/LINK` a symlink to `target` (taken literally, e.g. `../a` or
    /// `a.gpg`) and commits it.
    #[track_caller]
    pub fn symlink(&self, link: &str, target: &str) {
        let path = self.dir.join(link);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create the symlink's directory");
        }
        std::os::unix::fs::symlink(target, &path)
            .unwrap_or_else(|err| panic!("cannot symlink {} -> {target}: {err}", path.display()));
        self.commit(&format!("Add symlink {link} -> {target}"));
    }

    /// Commits every change in the store (`git add -A`, `git commit`).
    #[track_caller]
    pub fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
    }

    /// Runs `pass git ARGS…`; returns stdout without the trailing newline.
    #[track_caller]
    pub fn git(&self, args: &[&str]) -> String {
        let stdout = self.run(Command::new("pass").arg("git").args(args), b"");
        stdout.trim_end_matches('\n').to_owned()
    }
}

impl PassageStore {
    #[track_caller]
    fn run(&self, cmd: &mut Command, stdin: &[u8]) -> String {
        checked(cmd, &self.env, stdin)
    }

    /// The store directory (`PASSAGE_DIR`), `home/.passage/store`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The age identities file, `home/.passage/identities`.
    pub fn identities(&self) -> &Path {
        &self.identities
    }

    /// The age recipient (public key) of the identity.
    pub fn recipient(&self) -> &str {
        &self.recipient
    }

    /// Encrypts `secret` with the real age to `DIR/NAME.age`, creating
    /// directories and replacing an existing entry.
    #[track_caller]
    pub fn insert(&self, name: &str, secret: &str) {
        let path = self.dir.join(format!("{name}.age"));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|err| panic!("cannot create {}: {err}", parent.display()));
        }
        let _ = fs::remove_file(&path);
        self.run(
            Command::new("age")
                .args(["-r", &self.recipient, "-o"])
                .arg(&path),
            secret.as_bytes(),
        );
    }

    /// `passage show NAME` through the world's passage stand-in, with passage's
    /// defaults (the world's HOME).
    #[track_caller]
    pub fn show(&self, name: &str) -> String {
        self.run(Command::new("passage").args(["show", name]), b"")
    }
}
