//! Hosts of the test world: each is a real `/usr/sbin/sshd` on 127.0.0.1 (or
//! another loopback address, such as `::1`) with its own port and host key,
//! reached through the world's ssh client config under an alias such as `alpha`.
//! All hosts are this machine, so a test can look at a "remote" target's files
//! directly.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::run::{self, Output};
use crate::World;

/// How long a new host may take to accept `ssh root@ALIAS true`: generous,
/// as a loaded machine (parallel suites on two cores) can take seconds for
/// one ssh handshake.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a new host is tried on a fresh port when another process took its
/// port between our pick and sshd's bind.
const BIND_ATTEMPTS: usize = 5;

/// A host of the world, reachable as `USER@ALIAS` with the world's ssh config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    alias: String,
    address: IpAddr,
    port: u16,
}

impl Host {
    /// The name the world's ssh config knows the host by, e.g. `alpha`.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// The port its sshd listens on at [`Host::address`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address its sshd listens on: 127.0.0.1 unless added with
    /// [`World::add_host_at`].
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// `USER@ALIAS`, what ssh takes as destination.
    pub fn dest(&self, user: &str) -> String {
        format!("{user}@{}", self.alias)
    }

    /// A krops target string `USER@ALIAS/PATH` (`path` must be absolute); the port
    /// comes from the world's ssh config.
    pub fn target(&self, user: &str, path: &Path) -> String {
        assert!(path.is_absolute(), "target path {path:?} is not absolute");
        format!("{user}@{}{}", self.alias, path.display())
    }
}

/// A running sshd, killed and waited for when dropped.
pub(crate) struct Sshd {
    pub(crate) host: Host,
    child: Child,
    log: PathBuf,
    /// Stopped with its sessions by [`World::freeze_host`]: the sessions
    /// are killed with it.
    frozen: bool,
}

impl Sshd {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Only the listener is ours; a session's sshd ends with its
        // connection, unless it was frozen.
        if self.frozen {
            kill_sessions(self.child.id());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sshd_config of a world host.
fn sshd_config(world: &World, address: IpAddr, port: u16, host_key: &Path) -> String {
    let mut config = String::new();
    let mut line = |text: String| {
        config.push_str(&text);
        config.push('\n');
    };
    line(format!("ListenAddress {address}"));
    line(format!("Port {port}"));
    line(format!("HostKey {}", host_key.display()));
    line("PidFile none".into());
    line(format!(
        "AuthorizedKeysFile {}",
        world.authorized_keys.display()
    ));
    line("StrictModes no".into());
    line("UsePAM no".into());
    line("PasswordAuthentication no".into());
    line("KbdInteractiveAuthentication no".into());
    line("PermitRootLogin prohibit-password".into());
    line("MaxStartups 100:30:200".into());
    line("MaxSessions 100".into());
    line("PrintMotd no".into());
    line("PrintLastLog no".into());
    // VERBOSE: one "Accepted publickey" line per handshake, which
    // `World::handshakes` counts, and one "Starting session" line per
    // session (a command over a connection), which tests/sessions.rs counts.
    line("LogLevel VERBOSE".into());
    // remote_env sets SHLVL=1, so the machine's ~/.bashrc stays out of the
    // world (see there).
    let set_env: Vec<String> = world
        .remote_env()
        .into_iter()
        .map(|(key, value)| format!("\"{key}={value}\""))
        .collect();
    line(format!("SetEnv {}", set_env.join(" ")));
    config
}

/// The world's ssh client config block for one host. The key exchange is pinned
/// to curve25519: ssh's default post-quantum one costs ~70 ms of CPU per
/// connection, and the tests make many.
///
/// A host added at another address ([`World::add_host_at`]) also gets a block
/// for that address itself, so a target may name it as a literal
/// (`root@[::1]:PORT`): the same client settings, with the port from the
/// command line and the host key looked up as `[ADDRESS]:PORT` in known_hosts.
pub(crate) fn client_block(world: &World, host: &Host) -> String {
    let mut block = format!(
        "Host {alias}\n\
         \x20 HostName {address}\n\
         \x20 Port {port}\n\
         \x20 HostKeyAlias {alias}\n",
        alias = host.alias,
        address = host.address,
        port = host.port,
    );
    block.push_str(&client_settings(world));
    if host.address != IpAddr::V4(Ipv4Addr::LOCALHOST) {
        block.push_str(&format!("Host {}\n", host.address));
        block.push_str(&client_settings(world));
    }
    block
}

/// The settings every host block of the world's ssh config shares.
fn client_settings(world: &World) -> String {
    format!(
        "\x20 IdentityFile {key}\n\
         \x20 IdentitiesOnly yes\n\
         \x20 UserKnownHostsFile {known}\n\
         \x20 GlobalKnownHostsFile /dev/null\n\
         \x20 StrictHostKeyChecking yes\n\
         \x20 UpdateHostKeys no\n\
         \x20 BatchMode yes\n\
         \x20 LogLevel ERROR\n\
         \x20 ControlMaster no\n\
         \x20 ControlPath none\n\
         \x20 KexAlgorithms curve25519-sha256\n",
        key = world.client_key.display(),
        known = world.known_hosts.display(),
    )
}

fn free_port(address: IpAddr) -> u16 {
    let listener = TcpListener::bind((address, 0))
        .unwrap_or_else(|err| panic!("cannot bind {address} port 0 to pick a port: {err}"));
    listener.local_addr().expect("local address").port()
}

fn valid_alias(alias: &str) -> bool {
    !alias.is_empty()
        && !alias.starts_with('-')
        && alias
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

enum Start {
    Ready(Sshd),
    /// Another process had the port: try again elsewhere.
    PortTaken(String),
}

impl World {
    /// Starts a real sshd for a new host named `alias` (e.g. `alpha`) and adds it
    /// to the world's ssh config; returns once `ssh root@ALIAS true` works.
    ///
    /// The host accepts the world's client key for root and for the sudo test
    /// user, sets PATH (world `bin/` first), `KROPS_STANDIN_LOG`, `NIX_CONFIG` and
    /// GIT_CONFIG_GLOBAL in every session.
    #[track_caller]
    pub fn add_host(&self, alias: &str) -> Host {
        self.add_host_at(alias, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Like [`World::add_host`], with sshd listening on `address` (a loopback
    /// address of this machine, e.g. `::1`) instead of 127.0.0.1. Besides its
    /// alias, the world's ssh config then knows the host by its address and
    /// port, as a target naming the literal (`root@[::1]:PORT/…`) reaches it.
    #[track_caller]
    pub fn add_host_at(&self, alias: &str, address: IpAddr) -> Host {
        self.add_host_with(alias, address, false)
    }

    /// [`World::add_host_at`]; with `nixos`, sshd runs in a mount namespace
    /// of its own (see [`World::add_nixos_host`]).
    #[track_caller]
    pub(crate) fn add_host_with(&self, alias: &str, address: IpAddr, nixos: bool) -> Host {
        assert!(valid_alias(alias), "bad host alias {alias:?}");
        let dir = self.mkdir(&format!("hosts/{alias}"));
        let host_key = dir.join("ssh_host_ed25519_key");
        if host_key.exists() {
            panic!("the world already has a host {alias:?}");
        }
        self.checked(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", alias, "-f"])
                .arg(&host_key),
        );
        let public = fs::read_to_string(host_key.with_extension("pub"))
            .unwrap_or_else(|err| panic!("cannot read the public host key of {alias}: {err}"));
        let mut words = public.split_whitespace();
        let (kind, key) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let public_key = format!("{kind} {key}");
        self.append(&self.known_hosts, &format!("{alias} {public_key}\n"));

        let mut failures = Vec::new();
        for _ in 0..BIND_ATTEMPTS {
            match self.start_sshd(alias, address, &dir, &host_key, &public_key, nixos) {
                Start::Ready(sshd) => {
                    let host = sshd.host.clone();
                    self.lock_hosts().insert(alias.to_owned(), sshd);
                    return host;
                }
                Start::PortTaken(log) => failures.push(log),
            }
        }
        panic!(
            "sshd for host {alias} could not bind a port in {BIND_ATTEMPTS} attempts:\n{}",
            failures.join("\n---\n")
        );
    }

    fn start_sshd(
        &self,
        alias: &str,
        address: IpAddr,
        dir: &Path,
        host_key: &Path,
        public_key: &str,
        nixos: bool,
    ) -> Start {
        let port = free_port(address);
        let host = Host {
            alias: alias.to_owned(),
            address,
            port,
        };
        if address != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            // How ssh looks up the key of a literal address on a port not 22.
            self.append(
                &self.known_hosts,
                &format!("[{address}]:{port} {public_key}\n"),
            );
        }
        let config = dir.join("sshd_config");
        fs::write(&config, sshd_config(self, address, port, host_key))
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", config.display()));
        let log = dir.join("sshd.log");
        let log_file = fs::File::create(&log)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", log.display()));
        // sshd re-executes itself and therefore needs its absolute path.
        let mut sshd = if nixos {
            crate::nixos::namespaced(dir, "/usr/sbin/sshd")
        } else {
            Command::new("/usr/sbin/sshd")
        };
        let child = sshd
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .env_clear()
            .env("PATH", crate::SYSTEM_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start /usr/sbin/sshd: {err}"));
        let mut sshd = Sshd {
            host: host.clone(),
            child,
            log,
            frozen: false,
        };
        self.lock_hosts_config(|blocks| {
            blocks.insert(alias.to_owned(), client_block(self, &host));
        });

        let deadline = Instant::now() + START_TIMEOUT;
        let mut last: Option<Output> = None;
        loop {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                let log = sshd.log();
                if log.contains("Address already in use") || log.contains("Cannot bind") {
                    return Start::PortTaken(format!("port {port}: {status}\n{log}"));
                }
                panic!(
                    "sshd for host {alias} ({address} port {port}) exited with {status}\n\
                     config: {}\n--- sshd stderr ---\n{log}",
                    config.display()
                );
            }
            let listening =
                TcpStream::connect_timeout(&(address, port).into(), Duration::from_secs(1)).is_ok();
            if listening {
                let out = run::run(
                    self.command("/usr/bin/ssh")
                        .arg("-F")
                        .arg(&self.ssh_config)
                        .args(["-o", "ConnectTimeout=20", "-T"])
                        .arg(host.dest("root"))
                        .arg("true"),
                    b"",
                    Duration::from_secs(25),
                );
                if out.success() {
                    return Start::Ready(sshd);
                }
                last = Some(out);
            }
            if Instant::now() >= deadline {
                let tried = last.map_or_else(
                    || "nothing listened on the port".to_owned(),
                    |out| out.to_string(),
                );
                panic!(
                    "host {alias} (sshd on port {port}) did not accept `ssh root@{alias} true` \
                     within {START_TIMEOUT:?}\nlast try:\n{tried}\n--- sshd stderr ---\n{}",
                    sshd.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the sshd of host `alias` (waiting for it), so that the host is
    /// unreachable; its ssh config entry stays.
    #[track_caller]
    pub fn stop_host(&self, alias: &str) {
        let sshd = self.lock_hosts().remove(alias);
        assert!(sshd.is_some(), "the world has no running host {alias:?}");
    }

    /// Kills host `alias` as a crash would: its sshd and every session it
    /// started (SIGKILL), so that connections drop in the middle of whatever
    /// they carry. [`World::stop_host`] stops only the listener, and
    /// established sessions go on. Its ssh config entry stays;
    /// [`World::restart_host`] brings it back.
    #[track_caller]
    pub fn kill_host(&self, alias: &str) {
        let sshd = self.lock_hosts().remove(alias);
        let Some(sshd) = sshd else {
            panic!("the world has no running host {alias:?}");
        };
        kill_sessions(sshd.child.id());
        // Kills the listener (SIGKILL works on a stopped process) and waits
        // for it.
        drop(sshd);
    }

    /// Freezes host `alias` as a hung machine or a cut cable would look:
    /// its sshd and every session stopped (SIGSTOP), their connections open
    /// but silent; new connections are accepted by the kernel and never
    /// answered. The processes are killed when the host is killed or the
    /// world dropped.
    #[track_caller]
    pub fn freeze_host(&self, alias: &str) {
        let mut hosts = self.lock_hosts();
        let Some(sshd) = hosts.get_mut(alias) else {
            panic!("the world has no running host {alias:?}");
        };
        stop_tree(sshd.child.id());
        sshd.frozen = true;
    }

    /// Starts the sshd of a host that [`World::stop_host`] or
    /// [`World::kill_host`] ended, with its old host key (so the world's
    /// known_hosts still holds) on a fresh port, which its ssh config entry
    /// then names; returns it once `ssh root@ALIAS true` works.
    #[track_caller]
    pub fn restart_host(&self, host: &Host) -> Host {
        let alias = host.alias();
        assert!(
            !self.lock_hosts().contains_key(alias),
            "host {alias:?} is still running"
        );
        let dir = self.root.join("hosts").join(alias);
        let host_key = dir.join("ssh_host_ed25519_key");
        let public = fs::read_to_string(host_key.with_extension("pub"))
            .unwrap_or_else(|err| panic!("cannot read the public host key of {alias}: {err}"));
        let public_key = public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        // A NixOS host (World::add_nixos_host) comes back in its namespace.
        let nixos = dir.join("run").join(crate::nixos::NIXOS_MARKER).exists();
        let mut failures = Vec::new();
        for _ in 0..BIND_ATTEMPTS {
            match self.start_sshd(alias, host.address, &dir, &host_key, &public_key, nixos) {
                Start::Ready(sshd) => {
                    let host = sshd.host.clone();
                    self.lock_hosts().insert(alias.to_owned(), sshd);
                    return host;
                }
                Start::PortTaken(log) => failures.push(log),
            }
        }
        panic!(
            "sshd for host {alias} could not bind a port in {BIND_ATTEMPTS} attempts:\n{}",
            failures.join("\n---\n")
        );
    }

    /// What sshd of host `alias` wrote to stderr so far (its log, level VERBOSE).
    pub fn sshd_log(&self, alias: &str) -> String {
        fs::read_to_string(self.root.join("hosts").join(alias).join("sshd.log")).unwrap_or_default()
    }

    /// How many ssh connections host `alias` accepted so far (handshakes).
    pub fn handshakes(&self, alias: &str) -> usize {
        self.sshd_log(alias).matches("Accepted publickey").count()
    }

    /// Runs `remote_command` on `dest` (`USER@ALIAS`) with the world's ssh config
    /// (`ssh -F CONFIG -T DEST REMOTE_COMMAND`), with an empty stdin.
    pub fn ssh(&self, dest: &str, remote_command: &str) -> Output {
        self.run_command(
            self.command("/usr/bin/ssh")
                .arg("-F")
                .arg(&self.ssh_config)
                .arg("-T")
                .arg(dest)
                .arg(remote_command),
            b"",
        )
    }
}

/// Stops the listener `pid` (so it starts no new session) and kills every
/// session below it.
fn kill_sessions(listener: u32) {
    // Every session stopped first, then killed: a host that dies takes
    // its sshd with its commands. Killed one by one while running, a
    // session could see its command die first and tell the client of a
    // signal on the target instead of a lost connection.
    // Killed by pid: a process whose parent died first is no longer
    // found below the listener, and would stay stopped.
    signal(&stop_tree(listener), "KILL");
    loop {
        let sessions = descendants(listener);
        if sessions.is_empty() {
            break;
        }
        signal(&sessions, "KILL");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Stops (SIGSTOP) `listener` and every process below it, and returns
/// those below it. A stopped listener forks no new session; sessions may
/// still fork until stopped.
fn stop_tree(listener: u32) -> Vec<u32> {
    signal(&[listener], "STOP");
    let mut stopped: Vec<u32> = Vec::new();
    loop {
        let new: Vec<u32> = descendants(listener)
            .into_iter()
            .filter(|pid| !stopped.contains(pid))
            .collect();
        if new.is_empty() {
            break;
        }
        signal(&new, "STOP");
        stopped.extend(new);
    }
    stopped
}

/// Every live process below `pid` (children, their children, …), from
/// /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command name in parentheses: the state, the parent.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid = fields.next().and_then(|ppid| ppid.parse::<u32>().ok());
        // A zombie is dead already; its parent, stopped, may never reap it.
        if let (Some(ppid), false) = (ppid, state == "Z" || state == "X") {
            parents.push((child, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|&&(_, ppid)| ppid == parent)
                .map(|&(child, _)| child),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Sends `signal` (`KILL`, `STOP`) to `pids` with kill(1): the workspace
/// forbids `unsafe`.
fn signal(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
