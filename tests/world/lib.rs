//! The test world of krops-rs: everything an end-to-end test of the built tools
//! needs, made fresh per test and torn down on drop.
//!
//! A [`World`] is a private temp dir holding a home, a `bin/` with the only
//! stand-ins (`nixos-rebuild`, `nom`, `passage`) and an `ssh` wrapper, a client
//! key and ssh config, and on demand real sshd hosts ([`World::add_host`]), NixOS
//! hosts in mount namespaces of their own ([`World::add_nixos_host`]) with the
//! real nixos-rebuild ([`World::real_rebuild`]), git repos, a pass store and a
//! passage store. The tools run with a fixed
//! environment ([`World::env`]) in which the local machine is called `origin`,
//! the local user is root and every other host name is reached over ssh.
//!
//! Worlds share nothing but [`FIXED_STANDIN_DIR`] (the stand-ins on sudo's
//! `secure_path`) and the sudo test user [`SUDO_USER`] (with the nix-daemon
//! for its nix-store), all set up once by `scripts/test`, and the Nix store,
//! so tests run in parallel.
//!
//! ```no_run
//! use krops_tests::World;
//! let world = World::new();
//! let alpha = world.add_host("alpha");
//! let out = world.run("krops-command", &["--target", &alpha.target("root", &world.path("src"))], b"");
//! out.assert_success();
//! ```

mod git;
mod host;
pub mod nix;
mod nixos;
mod real_rebuild;
mod run;
mod secrets;
mod standins;
mod tree;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use mktarget::mutex::lock;

pub use git::{git_head, GitRepo};
pub use host::Host;
pub use nixos::Comeback;
pub use real_rebuild::{RealRebuild, REAL_REBUILD_ENV};
pub use run::{command_line, forced_args, quote, run as run_with_timeout, Output, RUN_TIMEOUT};
pub use secrets::{PassStore, PassageStore};
pub use standins::{Record, FIXED_STANDIN_DIR, REBUILD_EXIT_FILE, REBUILD_VARIANT_FILE};
pub use tree::{Entry, EntryKind, Tree};

/// The user that logs in over ssh and uses sudo in tests; `scripts/test` creates it.
pub const SUDO_USER: &str = "krops-sudo";

/// The sudoers drop-in of [`SUDO_USER`], written by `scripts/test`.
pub const SUDOERS_FILE: &str = "/etc/sudoers.d/krops-test";

/// A user whose sudo asks for a password ([`SUDO_PASSWORD`]); `scripts/test`
/// creates it, with the sudoers drop-in [`SUDO_PASSWORD_SUDOERS_FILE`].
pub const SUDO_PASSWORD_USER: &str = "krops-sudo-pw";

/// The password of [`SUDO_PASSWORD_USER`] (as `scripts/test` sets it): words
/// a shell would split, quote or expand.
pub const SUDO_PASSWORD: &str = "k r'o\"p $s\\ pw";

/// The sudoers drop-in of [`SUDO_PASSWORD_USER`], written by `scripts/test`.
pub const SUDO_PASSWORD_SUDOERS_FILE: &str = "/etc/sudoers.d/krops-test-password";

/// The system part of every PATH in the world.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The local host name in [`World::env`]: targets on `origin` (or `localhost`)
/// with user root are local, every other host is remote.
pub const LOCAL_HOSTNAME: &str = "origin";

/// Nix must never try to reach a binary cache: there is no network.
pub const NIX_CONFIG: &str = "substituters =";

/// A private, self-cleaning universe for one end-to-end test.
pub struct World {
    root: PathBuf,
    ssh_config: PathBuf,
    client_key: PathBuf,
    known_hosts: PathBuf,
    authorized_keys: PathBuf,
    hosts: Mutex<BTreeMap<String, host::Sshd>>,
    client_blocks: Mutex<BTreeMap<String, String>>,
    pass: OnceLock<PassStore>,
    passage: OnceLock<PassageStore>,
    /// Last field: dropped (the tree removed) after everything else stopped.
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("root", &self.root).finish()
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    /// Creates a world: a temp dir under `/tmp` (short, so gpg-agent's socket
    /// path fits, and traversable by the sudo test user) with `home/`, `bin/`
    /// (stand-ins and the `ssh` wrapper), `tmp/`, `records/`, a client ed25519
    /// key and an ssh config with no host yet.
    #[track_caller]
    pub fn new() -> World {
        // sshd refuses to start without its privilege separation directory.
        if !Path::new("/run/sshd").is_dir() {
            let _ = fs::create_dir_all("/run/sshd");
            let _ = fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755));
        }
        let dir = tempfile::Builder::new()
            .prefix("krops-")
            .tempdir_in("/tmp")
            .unwrap_or_else(|err| panic!("cannot create a temp dir in /tmp: {err}"));
        let root = dir.path().to_owned();
        chmod(&root, 0o755);
        let ssh = root.join("ssh");
        let world = World {
            ssh_config: ssh.join("config"),
            client_key: ssh.join("client_key"),
            known_hosts: ssh.join("known_hosts"),
            authorized_keys: ssh.join("authorized_keys"),
            root,
            hosts: Mutex::new(BTreeMap::new()),
            client_blocks: Mutex::new(BTreeMap::new()),
            pass: OnceLock::new(),
            passage: OnceLock::new(),
            _dir: dir,
        };
        for sub in ["home", "bin", "tmp", "ssh", "hosts", "git"] {
            world.mkdir(sub);
        }
        chmod(&world.mkdir("records"), 0o1777);
        standins::install_all(&world.bin_dir());
        let wrapper = format!(
            "#!/bin/sh\n# ssh with the test world's config (tests/world/lib.rs).\nexec /usr/bin/ssh -F {} \"$@\"\n",
            quote(world.ssh_config.as_os_str())
        );
        write_atomically(&world.bin_dir(), "ssh", &wrapper, 0o755);
        let git_config = format!(
            "[user]\n\tname = krops test\n\temail = krops-test@example.invalid\n\
             [init]\n\tdefaultBranch = main\n\
             [protocol \"file\"]\n\tallow = always\n\
             [safe]\n\tdirectory = {}/*\n",
            world.root.join("git").display()
        );
        fs::write(world.git_config_file(), git_config)
            .unwrap_or_else(|err| panic!("cannot write the world's .gitconfig: {err}"));

        world.checked(
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "krops-test-client",
                    "-f",
                ])
                .arg(&world.client_key),
        );
        let public = world.client_key.with_extension("pub");
        let key = fs::read(&public)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", public.display()));
        fs::write(&world.authorized_keys, key).expect("write authorized_keys");
        chmod(&world.authorized_keys, 0o644);
        fs::write(&world.known_hosts, "").expect("write known_hosts");
        world.write_ssh_config(&BTreeMap::new());
        world
    }

    /// The world's root directory (a temp dir, removed on drop).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/rel`, without creating anything; e.g. a target path for a test.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Creates `root/rel` and its parents (mode 0755) and returns it.
    #[track_caller]
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let path = self.root.join(rel);
        fs::create_dir_all(&path)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
        chmod(&path, 0o755);
        path
    }

    /// Writes `content` to `root/rel`, creating parent directories; returns the path.
    #[track_caller]
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|err| panic!("cannot create {}: {err}", parent.display()));
        }
        fs::write(&path, content)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        path
    }

    /// Writes `content` to `root/REL` as an executable (0755) file (see
    /// [`write_by_child`]).
    #[track_caller]
    pub fn write_executable(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|err| panic!("cannot create {}: {err}", parent.display()));
        }
        write_by_child(&path, content.as_ref(), 0o755);
        path
    }

    /// The world's HOME (`root/home`), with a `.gitconfig`.
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    /// The world's `bin/`, first on every PATH: stand-ins and the `ssh` wrapper.
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// TMPDIR of the tools: after a run it should hold no leftover secrets.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where stand-ins record their invocations (`KROPS_STANDIN_LOG`, mode 1777).
    pub fn records_dir(&self) -> PathBuf {
        self.root.join("records")
    }

    /// The ssh client config that knows every host alias; `bin/ssh` passes it
    /// with `-F`, or a test passes `-F CONFIG` in a target's extraOptions.
    pub fn ssh_config(&self) -> &Path {
        &self.ssh_config
    }

    /// The client's private key, accepted by every host for root and [`SUDO_USER`].
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// The fixed environment the tools run with (nothing is inherited):
    /// PATH (world `bin/` first), HOME, LOGNAME=root, USER=root,
    /// HOSTNAME=[`LOCAL_HOSTNAME`], TMPDIR, KROPS_STANDIN_LOG, NIX_CONFIG,
    /// LANG=C.UTF-8, GIT_CONFIG_GLOBAL ([`World::git_config_file`]), and GNUPGHOME and
    /// PASSWORD_STORE_DIR once [`World::pass_store`] made a store.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut set = |key: &str, value: String| {
            env.insert(key.to_owned(), value);
        };
        set(
            "PATH",
            format!("{}:{SYSTEM_PATH}", self.bin_dir().display()),
        );
        set("HOME", self.home().display().to_string());
        set("LOGNAME", "root".into());
        set("USER", "root".into());
        set("HOSTNAME", LOCAL_HOSTNAME.into());
        set("TMPDIR", self.tmp_dir().display().to_string());
        set(
            "KROPS_STANDIN_LOG",
            self.records_dir().display().to_string(),
        );
        set("NIX_CONFIG", NIX_CONFIG.into());
        set("LANG", "C.UTF-8".into());
        set(
            "GIT_CONFIG_GLOBAL",
            self.git_config_file().display().to_string(),
        );
        if let Some(pass) = self.pass.get() {
            set("GNUPGHOME", pass.gnupghome().display().to_string());
            set("PASSWORD_STORE_DIR", pass.dir().display().to_string());
        }
        env
    }

    /// The variables every ssh session on a world host gets (sshd `SetEnv`).
    fn remote_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "PATH".to_owned(),
                format!("{}:{SYSTEM_PATH}", self.bin_dir().display()),
            ),
            (
                "KROPS_STANDIN_LOG".to_owned(),
                self.records_dir().display().to_string(),
            ),
            ("NIX_CONFIG".to_owned(), NIX_CONFIG.to_owned()),
            (
                "GIT_CONFIG_GLOBAL".to_owned(),
                self.git_config_file().display().to_string(),
            ),
            // bash sources ~/.bashrc for a command sshd runs only when SHLVL
            // is below 2 on entry: with 1, it does not. This machine's root
            // ~/.bashrc runs `pyenv rehash`, which takes a lock file that a
            // session killed meanwhile (as the fault tests do) leaves behind,
            // and every later login then waits 60 s for it. A NixOS target's
            // root has no such ~/.bashrc either.
            ("SHLVL".to_owned(), "1".to_owned()),
        ]
    }

    /// The world's global git config, `home/.gitconfig`, which `GIT_CONFIG_GLOBAL`
    /// names for the tools, for every ssh session and through sudo (the real
    /// users' `~/.gitconfig` is never read). It sets a commit identity,
    /// `protocol.file.allow=always` (so `git clone --recurse-submodules` of the
    /// world's repos works) and `safe.directory=<root>/git/*`, so the sudo test
    /// user may clone the world's root-owned repos. That trusts only the source
    /// repos, never a target directory: ownership problems on a target still show.
    ///
    /// It has to be a config file: git drops `GIT_CONFIG_COUNT`/`-c` settings
    /// for the upload-pack of a local clone, and reads `safe.directory` only
    /// from protected (system, global, command line) config.
    pub fn git_config_file(&self) -> PathBuf {
        self.home().join(".gitconfig")
    }

    /// A [`Command`] for `program` with exactly [`World::env`] and the world root
    /// as working directory. A plain name is looked up on the world's PATH.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear().envs(self.env()).current_dir(&self.root);
        cmd
    }

    /// The path of the built workspace binary `name` (`mktarget`, `populate`,
    /// `krops-deploy`, `krops-test`, `krops-command`, or `xtask`, which
    /// writes the man pages and completions): in `$KROPS_BIN_DIR` if set,
    /// else in the cargo target dir this test executable was built into.
    #[track_caller]
    pub fn tool(&self, name: &str) -> PathBuf {
        let dir = match std::env::var_os("KROPS_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let exe = std::env::current_exe().expect("path of the test executable");
                // target/<profile>/deps/<test>-<hash>
                exe.parent()
                    .and_then(Path::parent)
                    .map(Path::to_owned)
                    .unwrap_or_else(|| panic!("no target dir above {}", exe.display()))
            }
        };
        let path = dir.join(name);
        if !path.is_file() {
            panic!(
                "binary {name} not built (no {}): run `cargo build --workspace --bins` or scripts/test",
                path.display()
            );
        }
        // `cargo test -p krops-tests` does not rebuild the tools: never test
        // an old binary against new sources without saying so.
        if std::env::var_os("KROPS_BIN_DIR").is_none() {
            let built = fs::metadata(&path).and_then(|m| m.modified()).ok();
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            // The crates this binary is built from: itself and what it uses.
            let crates: &[&str] = match name {
                "mktarget" => &["mktarget"],
                "populate" => &["mktarget", "populate"],
                "xtask" => &[
                    "mktarget",
                    "populate",
                    "krops-deploy",
                    "krops-test",
                    "krops-command",
                    "xtask",
                ],
                driver => &["mktarget", "populate", driver],
            };
            let newest = crates
                .iter()
                .filter_map(|krate| newest_mtime(&workspace.join(krate).join("src")))
                .max();
            if let (Some(built), Some(newest)) = (built, newest) {
                assert!(
                    built >= newest,
                    "binary {} is older than the tools' sources: run `cargo build --workspace --bins` \
                     (or scripts/test) before the end-to-end tests",
                    path.display()
                );
            }
        }
        path
    }

    /// Runs the built tool `tool` with `args`, `stdin` as its input and the fixed
    /// environment; killed after [`RUN_TIMEOUT`].
    pub fn run(&self, tool: &str, args: &[&str], stdin: &[u8]) -> Output {
        let mut cmd = self.command(self.tool(tool));
        cmd.args(args);
        self.run_command(&mut cmd, stdin)
    }

    /// Runs `populate --target TARGET FLAGS…` with `sources` (a sources
    /// document) as its input.
    pub fn populate(&self, target: &str, flags: &[&str], sources: &serde_json::Value) -> Output {
        let mut args = vec!["--target", target];
        args.extend_from_slice(flags);
        self.run("populate", &args, sources.to_string().as_bytes())
    }

    /// The sources of the drivers' deploys to the world's NixOS hosts: one
    /// file, `cfg/configuration.nix` holding `{ }`, as `nixos-config`.
    pub fn nixos_config(&self) -> serde_json::Value {
        self.write("cfg/configuration.nix", "{ }\n");
        serde_json::json!({"nixos-config": {"file": self.path("cfg/configuration.nix").to_str().unwrap()}})
    }

    /// Nothing of the run is left here: no temp dir (secrets, pipe output, the
    /// control socket's dir) in the self's TMPDIR, no process (ssh master,
    /// rsync, ssh, a pipe's command, gpg, age).
    #[track_caller]
    pub fn assert_nothing_left(&self) {
        self.assert_no_processes_left();
        let tmp: Vec<_> = std::fs::read_dir(self.tmp_dir())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        assert!(tmp.is_empty(), "left in TMPDIR: {tmp:?}");
    }

    /// rsync, slowed down to 1 MB/s while the file `slow-rsync` exists in the
    /// world, so that a test can act in the middle of a transfer. The real
    /// rsync on both ends; the receiving end is found through the host's PATH.
    pub fn slow_rsync(&self) -> PathBuf {
        let flag = self.path("slow-rsync");
        self.write_executable(
            "bin/rsync",
            format!(
                "#!/bin/sh\n# rsync at 1 MB/s while {flag} exists (World::slow_rsync)\n\
                 if [ \"$1\" != --server ] && [ -e {flag} ]; then\n\
                 \x20 exec /usr/bin/rsync --bwlimit=1000 \"$@\"\nfi\n\
                 exec /usr/bin/rsync \"$@\"\n",
                flag = flag.display()
            ),
        );
        self.write(
            flag.strip_prefix(self.root()).unwrap().to_str().unwrap(),
            "",
        );
        flag
    }

    /// A NixOS host `alias` running system 1.0, the rebuild set to build 2.0,
    /// which locks new logins out with `breaking`: the host, the target
    /// string (`alias/src` in the world), the old and the new system.
    pub fn nixos_deploy_host(
        &self,
        alias: &str,
        breaking: bool,
    ) -> (Host, String, PathBuf, PathBuf) {
        let host = self.add_nixos_host(alias);
        let old = self.nixos_system("1.0", false);
        let new = self.nixos_system("2.0", breaking);
        self.boot_nixos_host(alias, &old);
        self.set_rebuild_system(&new);
        let target = host.target("root", &self.path(&format!("{alias}/src")));
        (host, target, old, new)
    }

    /// Runs the built tool `tool` with `args` and the sources document
    /// `sources` as its input.
    pub fn run_with_sources(
        &self,
        tool: &str,
        args: &[&str],
        sources: &serde_json::Value,
    ) -> Output {
        self.run(tool, args, sources.to_string().as_bytes())
    }

    /// The one record of the nixos-rebuild stand-in; a panic unless it ran
    /// exactly once.
    pub fn only_rebuild(&self) -> Record {
        let mut records = self.records("nixos-rebuild");
        assert_eq!(
            records.len(),
            1,
            "nixos-rebuild ran {} times",
            records.len()
        );
        records.remove(0)
    }

    /// The events the pipes recorded, with the nixos-rebuild stand-in's
    /// starts and ends, in time order: `A start`, `rebuild end`, ….
    pub fn timeline(&self) -> Vec<String> {
        let mut events: Vec<(u128, String)> = fs::read_to_string(self.path("events"))
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let (what, time) = line.rsplit_once(' ').unwrap();
                (time.parse().unwrap(), what.to_owned())
            })
            .collect();
        for record in self.records("nixos-rebuild") {
            events.push((record.time, "rebuild start".to_owned()));
            let end = record.end.expect("every rebuild ended");
            events.push((end, "rebuild end".to_owned()));
        }
        events.sort();
        events.into_iter().map(|(_, what)| what).collect()
    }

    /// Runs any command (usually from [`World::command`]) with `stdin` as its
    /// input; killed after [`RUN_TIMEOUT`].
    pub fn run_command(&self, cmd: &mut Command, stdin: &[u8]) -> Output {
        run::run(cmd, stdin, RUN_TIMEOUT)
    }

    /// Starts `tool` with `args` (stdin and stdout empty), waits until
    /// `marker` exists, then sends it `signal` (`TERM`, `INT`, `HUP`) alone;
    /// returns its exit status and stderr.
    #[track_caller]
    pub fn signal_when(
        &self,
        tool: &str,
        args: &[&str],
        marker: &Path,
        signal: &str,
    ) -> (Option<i32>, String) {
        self.signal_once(tool, args, || marker.exists(), signal)
    }

    /// Like [`World::signal_when`], sending the signal once `ready()` says
    /// so (asked every 50 ms, for up to two minutes).
    #[track_caller]
    pub fn signal_once(
        &self,
        tool: &str,
        args: &[&str],
        mut ready: impl FnMut() -> bool,
        signal: &str,
    ) -> (Option<i32>, String) {
        let mut child = self
            .command(self.tool(tool))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {tool}: {err}"));
        // Read stderr as it comes, so a chatty tool never blocks on it.
        let mut pipe = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            stderr
        });
        let mut is_ready = ready();
        for _ in 0..2400 {
            if is_ready {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let stderr = reader.join().unwrap_or_default();
                panic!("{tool} ended ({status}) before it was ready for SIG{signal}:\n{stderr}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            is_ready = ready();
        }
        if !is_ready {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = reader.join().unwrap_or_default();
            panic!("{tool} never became ready for SIG{signal}:\n{stderr}");
        }
        let kill = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(kill.success());
        let status = child.wait().expect("wait for the tool");
        let stderr = reader.join().expect("read the tool's stderr");
        (status.code(), stderr)
    }

    /// Like [`World::run_command`] with another deadline, for a slow command.
    pub fn run_command_with_timeout(
        &self,
        cmd: &mut Command,
        stdin: &[u8],
        timeout: std::time::Duration,
    ) -> Output {
        run::run(cmd, stdin, timeout)
    }

    /// The processes started in this world's environment that still run:
    /// those whose environment has the world's `TMPDIR` (every child a tool
    /// starts inherits it), as `PID CMDLINE`. gpg's own daemons (gpg-agent,
    /// which `pass` starts and the world stops on drop) are not counted.
    /// After a tool exited, none of its children should be left.
    pub fn processes(&self) -> Vec<String> {
        let needle = format!("TMPDIR={}\0", self.tmp_dir().display());
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(environ) = fs::read(entry.path().join("environ")) else {
                continue;
            };
            if !environ
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
            {
                continue;
            }
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            // A zombie's or a kernel thread's cmdline is empty.
            if cmdline.is_empty() {
                continue;
            }
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let program = cmdline.split(' ').next().unwrap_or("");
            if ["gpg-agent", "scdaemon", "keyboxd", "dirmngr"]
                .iter()
                .any(|daemon| program.ends_with(daemon))
            {
                continue;
            }
            found.push(format!("{pid} {}", cmdline.trim_end()));
        }
        found
    }

    /// Panics unless every process of the world's environment (see
    /// [`World::processes`]) ended; waits up to 20 s for those just exiting.
    #[track_caller]
    pub fn assert_no_processes_left(&self) {
        let mut left = self.processes();
        for _ in 0..200 {
            if left.is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            left = self.processes();
        }
        panic!("processes of the world still running:\n{}", left.join("\n"));
    }

    /// Runs `script` with `/bin/sh -c` here, in the fixed environment.
    pub fn sh(&self, script: &str) -> Output {
        self.run_command(self.command("/bin/sh").arg("-c").arg(script), b"")
    }

    /// Runs a setup command, panicking with everything unless it succeeds; stdout.
    #[track_caller]
    pub(crate) fn checked(&self, cmd: &mut Command) -> String {
        let out = run::run(cmd, b"", RUN_TIMEOUT);
        out.assert_success();
        out.stdout_str()
    }

    /// All recorded invocations of the stand-in `name` (`nixos-rebuild`, `nom`,
    /// `passage`), oldest first.
    pub fn records(&self, name: &str) -> Vec<Record> {
        standins::read_records(&self.records_dir(), name)
    }

    /// Makes the `nixos-rebuild` stand-in exit with `code` from now on.
    pub fn set_rebuild_exit(&self, code: i32) {
        let path = self.records_dir().join(REBUILD_EXIT_FILE);
        fs::write(&path, format!("{code}\n"))
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    }

    /// The sudo test user ([`SUDO_USER`]); panics when `scripts/test` has not yet
    /// created it or its sudoers rule ([`SUDOERS_FILE`]) is missing or outdated.
    #[track_caller]
    pub fn sudo_user(&self) -> &'static str {
        static PROBLEM: OnceLock<Option<String>> = OnceLock::new();
        let problem = PROBLEM.get_or_init(|| {
            let exists = Command::new("id")
                .arg(SUDO_USER)
                .output()
                .is_ok_and(|out| out.status.success());
            if !exists {
                return Some(format!("no user {SUDO_USER}"));
            }
            let rule = fs::read_to_string(SUDOERS_FILE).unwrap_or_default();
            let keys: Vec<String> = self.remote_env().into_iter().map(|(key, _)| key).collect();
            let missing: Vec<&String> = keys
                .iter()
                // PATH is sudo's secure_path; SHLVL matters only to the
                // login shell, before sudo.
                .filter(|key| !["PATH", "SHLVL"].contains(&key.as_str()))
                .filter(|key| !rule.contains(key.as_str()))
                .collect();
            let complete = rule.contains(FIXED_STANDIN_DIR);
            (!complete || !missing.is_empty()).then(|| {
                format!("{SUDOERS_FILE} is missing or does not keep {missing:?} / set {FIXED_STANDIN_DIR}")
            })
        });
        if let Some(problem) = problem {
            panic!("{problem}: run scripts/test once to create the sudo test user and its sudoers rule");
        }
        SUDO_USER
    }

    /// The user whose sudo asks for [`SUDO_PASSWORD`]; panics when
    /// `scripts/test` has not yet created it and its sudoers rule.
    #[track_caller]
    pub fn sudo_password_user(&self) -> &'static str {
        let exists = Command::new("id")
            .arg(SUDO_PASSWORD_USER)
            .output()
            .is_ok_and(|out| out.status.success());
        let rule = fs::read_to_string(SUDO_PASSWORD_SUDOERS_FILE).unwrap_or_default();
        if !exists || !rule.contains(FIXED_STANDIN_DIR) || !rule.contains("ALL=(ALL) ALL") {
            panic!(
                "no user {SUDO_PASSWORD_USER} or no {SUDO_PASSWORD_SUDOERS_FILE}: run scripts/test \
                 once to create them"
            );
        }
        SUDO_PASSWORD_USER
    }

    /// Mounts a fresh tmpfs at `at` (a directory), unmounted when the
    /// returned [`Mount`] is dropped, also when the test fails.
    #[track_caller]
    pub fn mount_tmpfs(&self, at: &Path) -> Mount {
        self.sh(&format!("mount -t tmpfs tmpfs {}", quote(at.as_os_str())))
            .assert_success();
        Mount(at.to_path_buf())
    }

    /// Gives `path` (recursively) to the sudo test user, e.g. a target directory
    /// it must write to without sudo.
    #[track_caller]
    pub fn chown_to_sudo_user(&self, path: &Path) {
        let user = self.sudo_user();
        self.checked(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:{user}"))
                .arg(path),
        );
    }

    /// Starts the built tool `tool` with `args` in the background, its stdin
    /// and stdout empty, its stderr going to the file `stderr`.
    pub fn spawn<S: AsRef<OsStr>>(&self, tool: &str, args: &[S], stderr: &Path) -> Child {
        self.command(self.tool(tool))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(stderr).unwrap())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {tool}: {err}"))
    }

    /// A target for the sudo test user on host `alias` (`sudo` as given), at
    /// `ALIAS/src`, made and owned by that user.
    pub fn sudo_user_target(&self, alias: &str, sudo: bool) -> String {
        let dest = self.path(&format!("{alias}/src"));
        fs::create_dir_all(&dest).unwrap();
        self.chown_to_sudo_user(&dest);
        let mut target = serde_json::json!({
            "user": self.sudo_user(), "host": alias, "path": dest.to_str().unwrap(),
        });
        if sudo {
            target["sudo"] = serde_json::Value::Bool(true);
        }
        target.to_string()
    }

    /// The shell line that runs krops-deploy with `args` and `sources`
    /// (written to `sources.json`), each word quoted.
    pub fn deploy_line(&self, args: &[&str], sources: &serde_json::Value) -> String {
        let file = self.write("sources.json", sources.to_string());
        let mut line = vec![self.tool("krops-deploy").display().to_string()];
        line.extend(args.iter().map(|a| a.to_string()));
        line.extend(["--sources".to_owned(), file.display().to_string()]);
        line.iter()
            .map(|w| quote(OsStr::new(w)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs krops-deploy with a terminal (util-linux `script`), typing `answer`.
    pub fn deploy_on_a_terminal(
        &self,
        args: &[&str],
        sources: &serde_json::Value,
        answer: &str,
    ) -> Output {
        let mut cmd = self.command("setsid");
        cmd.args([
            "-w",
            "script",
            "-qefc",
            &self.deploy_line(args, sources),
            "/dev/null",
        ]);
        self.run_command(&mut cmd, answer.as_bytes())
    }

    /// A snapshot of the tree at `path` (empty when nothing is there), to compare
    /// before and after; modification times are left out.
    pub fn tree(&self, path: &Path) -> Tree {
        Tree::snapshot(path)
    }

    /// Like [`World::tree`], with modification times: "nothing was touched".
    pub fn tree_with_mtimes(&self, path: &Path) -> Tree {
        Tree::snapshot_with_mtimes(path)
    }

    fn lock_hosts(&self) -> MutexGuard<'_, BTreeMap<String, host::Sshd>> {
        lock(&self.hosts)
    }

    /// Changes the client config blocks and rewrites the ssh config atomically.
    fn lock_hosts_config(&self, change: impl FnOnce(&mut BTreeMap<String, String>)) {
        let mut blocks = lock(&self.client_blocks);
        change(&mut blocks);
        self.write_ssh_config(&blocks);
    }

    fn write_ssh_config(&self, blocks: &BTreeMap<String, String>) {
        let mut text = String::from("# ssh client config of a krops test world\n");
        for block in blocks.values() {
            text.push_str(block);
        }
        let dir = self.ssh_config.parent().expect("ssh config has a parent");
        write_atomically(dir, "config", &text, 0o644);
    }

    fn append(&self, path: &Path, text: &str) {
        fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .unwrap_or_else(|err| panic!("cannot append to {}: {err}", path.display()));
    }
}

/// Where nix registers indirect GC roots: a `nix-build -o LINK` or
/// `--add-root LINK --indirect` elsewhere than in the store.
const AUTO_ROOTS: &str = "/nix/var/nix/gcroots/auto";

/// Removes the indirect GC roots whose link is in the world's tree (about to
/// go), or is a build directory of a deploy or a temp directory of
/// nixos-rebuild in `/tmp` that is gone: what nix-build and nixos-rebuild
/// left in this machine's `/nix/var/nix/gcroots`.
fn remove_auto_roots(world_root: &Path) {
    for entry in fs::read_dir(AUTO_ROOTS).into_iter().flatten().flatten() {
        let root = entry.path();
        let Ok(link) = fs::read_link(&root) else {
            continue;
        };
        let gone_temp = ["/tmp/krops-build.", "/tmp/nixos-rebuild."]
            .iter()
            .any(|prefix| link.to_str().is_some_and(|link| link.starts_with(prefix)))
            && fs::symlink_metadata(&link).is_err();
        if link.starts_with(world_root) || gone_temp {
            let _ = fs::remove_file(root);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Kill and wait every sshd before the tree goes.
        self.lock_hosts().clear();
        remove_auto_roots(&self.root);
        if let Some(pass) = self.pass.get() {
            let _ = Command::new("gpgconf")
                .args(["--kill", "all"])
                .env("GNUPGHOME", pass.gnupghome())
                .output();
        }
    }
}

/// Writes `content` to `dir/name` with `mode`, atomically (temp file in the same
/// directory, then rename), and not at all when the file already has exactly that
/// content and mode: many worlds in parallel write the same shared files.
pub(crate) fn write_atomically(dir: &Path, name: &str, content: &str, mode: u32) {
    let path = dir.join(name);
    if let (Ok(old), Ok(meta)) = (fs::read(&path), fs::metadata(&path)) {
        if old == content.as_bytes() && meta.permissions().mode() & 0o7777 == mode {
            return;
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .unwrap_or_else(|err| panic!("cannot create a temp file in {}: {err}", dir.display()))
        .into_temp_path();
    write_by_child(&tmp, content.as_bytes(), mode);
    tmp.persist(&path)
        .unwrap_or_else(|err| panic!("cannot rename onto {}: {err}", path.display()));
}

/// Writes `content` to `path` with `mode` through a child process. Tests
/// run in parallel threads, and a file this process has open for writing is
/// inherited, still open, by a child another thread is starting until that
/// child execs; executing the file in that window fails with "Text file
/// busy". A file only a finished child ever opened has no such writer.
#[track_caller]
pub fn write_by_child(path: &Path, content: &[u8], mode: u32) {
    let mut child = Command::new("/bin/sh")
        .args(["-c", "cat >\"$1\" && chmod \"$2\" \"$1\"", "write"])
        .arg(path)
        .arg(format!("{mode:o}"))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start /bin/sh to write {}: {err}", path.display()));
    let written = child.stdin.take().expect("stdin").write_all(content);
    let status = child.wait().expect("wait for /bin/sh");
    assert!(
        written.is_ok() && status.success(),
        "cannot write {}: {written:?}, {status}",
        path.display()
    );
}

#[track_caller]
fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("cannot chmod {mode:o} {}: {err}", path.display()));
}

/// The newest modification time of the files below `dir`.
fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let meta = entry.metadata().ok()?;
        let mtime = if meta.is_dir() {
            newest_mtime(&entry.path())
        } else {
            meta.modified().ok()
        };
        newest = newest.max(mtime);
    }
    newest
}

/// The text of the file at `path`; a panic naming the path when it cannot
/// be read.
#[track_caller]
pub fn file_text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Whether rsync is in the middle of writing `dir/big` (its temp file
/// `.big.XXXXXX` has some bytes).
pub fn receiving_big(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            entry.file_name().to_string_lossy().starts_with(".big.")
                && entry.metadata().is_ok_and(|meta| meta.len() > 0)
        })
}

/// The tree populate leaves at `dest`, without the lock file, which names
/// the last run that held the lock (its pid, its time).
pub fn sources_tree(dest: &Path) -> Tree {
    let lock = dest.join(".populate-lock");
    assert!(lock.is_file(), "no lock file at {}", lock.display());
    std::fs::remove_file(&lock).unwrap();
    Tree::snapshot(dest)
}

/// The argv of each record.
pub fn argvs(records: &[Record]) -> Vec<Vec<String>> {
    records.iter().map(|r| r.argv.clone()).collect()
}

/// Waits (up to two minutes) for `child`, started by [`World::spawn`], and
/// returns its exit code; panics with its `stderr` if it does not end.
pub fn finish(mut child: Child, stderr: &Path) -> Option<i32> {
    for _ in 0..1200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let stderr = fs::read_to_string(stderr).unwrap_or_default();
    panic!("the tool did not end; its stderr:\n{stderr}");
}

/// The processes whose command line contains `needle`, as `PID CMDLINE`.
pub fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{} {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// A file system [`World::mount_tmpfs`] mounted; unmounted when dropped.
pub struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
