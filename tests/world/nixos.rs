//! NixOS hosts of the test world. This machine is not NixOS, so a NixOS
//! host is a world host whose sshd runs in a private mount namespace where
//! `/run` is the host's own `hosts/ALIAS/run` (with `current-system`) and
//! `/nix/var/nix/profiles` its own `hosts/ALIAS/profiles` (with the
//! `system` profile): every ssh session there, the nixos-rebuild stand-in
//! and whatever they leave running see those, and this machine's own stay
//! untouched. The Nix store is this machine's real one.
//!
//! Systems are tiny derivations built with the real `nix-build`
//! ([`World::nixos_system`]): a dependency carrying the version (so
//! `nix store diff-closures` has something to say) and a
//! `bin/switch-to-configuration` that, as NixOS's does, makes itself
//! `/run/current-system` on switch and test, and models whether the system
//! lets new ssh logins in: a system that breaks logins moves the world's
//! authorized keys away, any other puts them back. The nixos-rebuild
//! stand-in, given a system ([`World::set_rebuild_system`]), builds and
//! activates it as nixos-rebuild would (see `standins.rs`).

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Host, World};

/// The file in a NixOS host's `/run` that tells the stand-ins they may
/// touch `/run/current-system` and the system profile: they never do on
/// this machine's own.
pub const NIXOS_MARKER: &str = "krops-test-nixos";

/// The file in the records directory naming the system the
/// nixos-rebuild stand-in builds and activates.
pub const REBUILD_SYSTEM_FILE: &str = "nixos-rebuild.system";

/// The file in the records directory to which each system's
/// `switch-to-configuration` appends `NAME OPERATION`.
pub const ACTIVATIONS_FILE: &str = "activations";

/// The file in a NixOS machine's directory that its namespace sees as
/// `/proc/sys/kernel/random/boot_id`: a reboot ([`World::reboot_when_asked`])
/// writes a new one.
pub const BOOT_ID_FILE: &str = "boot_id";

/// The file in a NixOS host's `/run` by which the `reboot` stand-in asks
/// the world to reboot the host.
pub const REBOOT_REQUEST: &str = "krops-test-reboot";

/// `program` started in a mount namespace of its own in which `/run` is
/// `host_dir/run`, `/nix/var/nix/profiles` is `host_dir/profiles` and
/// `/proc/sys/kernel/random/boot_id` is `host_dir/boot_id`; when
/// `host_dir/etc` exists, its files are laid over `/etc` (read-only), e.g.
/// an `/etc/nixos/flake.nix` of the host's own.
pub(crate) fn namespaced(host_dir: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
        .arg(
            "mount --bind \"$1\" /run && mount --bind \"$2\" /nix/var/nix/profiles \
             && { [ ! -d \"$3\" ] || mount -t overlay overlay -o \"lowerdir=$3:/etc\" /etc; } \
             && { [ ! -f \"$4\" ] || mount --bind \"$4\" /proc/sys/kernel/random/boot_id; } \
             && shift 4 && exec \"$@\"",
        )
        .arg("sh")
        .arg(host_dir.join("run"))
        .arg(host_dir.join("profiles"))
        .arg(host_dir.join("etc"))
        .arg(host_dir.join(BOOT_ID_FILE))
        .arg(program);
    cmd
}

/// A boot id as the kernel writes one: a random UUID.
fn new_boot_id() -> String {
    let bytes: [u8; 16] = std::array::from_fn(|_| rand_byte());
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}\n",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A random byte from the kernel.
fn rand_byte() -> u8 {
    use std::io::Read;
    let mut byte = [0u8; 1];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut byte))
        .expect("cannot read /dev/urandom");
    byte[0]
}

/// What a NixOS host does when its `reboot` stand-in asks
/// ([`World::reboot_when_asked`]).
#[derive(Clone, Debug)]
pub enum Comeback {
    /// Its sshd comes back after this long, with a new boot id, running
    /// the system its profile points at, as a boot does.
    After(std::time::Duration),
    /// The same, running the system it ran before the reboot (its boot
    /// loader started another generation).
    OnTheOldSystem(std::time::Duration),
    /// It never comes back.
    Never,
}

impl World {
    /// Starts a NixOS host (see the module's documentation) named `alias`,
    /// running no system yet ([`World::boot_nixos_host`] gives it one).
    /// Needs mount namespaces: the tests run as root.
    #[track_caller]
    pub fn add_nixos_host(&self, alias: &str) -> Host {
        self.make_nixos_dirs(alias);
        self.add_host_with(alias, IpAddr::V4(Ipv4Addr::LOCALHOST), true)
    }

    /// Like [`World::add_nixos_host`], with sshd listening on `address` (a
    /// loopback address of this machine, e.g. `::1`).
    #[track_caller]
    pub fn add_nixos_host_at(&self, alias: &str, address: IpAddr) -> Host {
        self.make_nixos_dirs(alias);
        self.add_host_with(alias, address, true)
    }

    /// The directories of the NixOS machine `alias` (`hosts/ALIAS/run`,
    /// with the marker, and `profiles`), for a host or a local machine.
    #[track_caller]
    pub(crate) fn make_nixos_dirs(&self, alias: &str) -> PathBuf {
        let dir = self.path(&format!("hosts/{alias}"));
        for sub in ["run", "run/sshd", "profiles"] {
            fs::create_dir_all(dir.join(sub))
                .unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.join(sub).display()));
            crate::chmod(&dir.join(sub), 0o755);
        }
        fs::write(dir.join("run").join(NIXOS_MARKER), "")
            .unwrap_or_else(|err| panic!("cannot mark {alias}'s /run: {err}"));
        fs::write(dir.join(BOOT_ID_FILE), new_boot_id())
            .unwrap_or_else(|err| panic!("cannot write {alias}'s boot id: {err}"));
        dir
    }

    /// The boot id of the NixOS machine `alias` (its
    /// `/proc/sys/kernel/random/boot_id`).
    pub fn boot_id(&self, alias: &str) -> String {
        let path = self.path(&format!("hosts/{alias}/{BOOT_ID_FILE}"));
        fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
            .trim()
            .to_owned()
    }

    /// Plays the machine under the NixOS host `host` while `during` runs:
    /// each time its `reboot` stand-in asks, the host goes down as a reboot
    /// takes it (its sshd and every session killed) and comes back as
    /// `comeback` says, with a new boot id (written in place, so the
    /// namespace's bind mount of it sees it). Returns what `during` returns.
    pub fn reboot_when_asked<T>(
        &self,
        host: &Host,
        comeback: Comeback,
        during: impl FnOnce() -> T,
    ) -> T {
        use std::sync::atomic::{AtomicBool, Ordering};
        let alias = host.alias().to_owned();
        let request = self.nixos_run_dir(&alias).join(REBOOT_REQUEST);
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let machine = scope.spawn(|| {
                let mut host = host.clone();
                while !done.load(Ordering::SeqCst) {
                    if fs::remove_file(&request).is_err() {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        continue;
                    }
                    let running = self.current_system(&alias);
                    self.kill_host(&alias);
                    let (delay, system) = match &comeback {
                        Comeback::Never => return,
                        Comeback::After(delay) => (*delay, self.profile_system(&alias)),
                        Comeback::OnTheOldSystem(delay) => (*delay, running),
                    };
                    std::thread::sleep(delay);
                    let path = self.path(&format!("hosts/{alias}/{BOOT_ID_FILE}"));
                    fs::write(&path, new_boot_id())
                        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
                    let link = self.nixos_run_dir(&alias).join("current-system");
                    let _ = fs::remove_file(&link);
                    if let Some(system) = system {
                        std::os::unix::fs::symlink(system, &link)
                            .unwrap_or_else(|err| panic!("cannot link {}: {err}", link.display()));
                    }
                    host = self.restart_host(&host);
                }
            });
            // Set also when `during` panics: the scope joins the machine's
            // thread before the panic goes on, so it must stop.
            struct Done<'a>(&'a AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let result = {
                let _done = Done(&done);
                during()
            };
            machine
                .join()
                .expect("the rebooting machine's thread panicked");
            result
        })
    }

    /// What the NixOS host `alias` sees as `/run`.
    pub fn nixos_run_dir(&self, alias: &str) -> PathBuf {
        self.path(&format!("hosts/{alias}/run"))
    }

    /// What the NixOS host `alias` sees as `/nix/var/nix/profiles`.
    pub fn nixos_profiles_dir(&self, alias: &str) -> PathBuf {
        self.path(&format!("hosts/{alias}/profiles"))
    }

    /// Builds a system `nixos-system-test-VERSION` with the real nix-build;
    /// with `breaks_logins`, activating it makes the world's hosts refuse new
    /// ssh logins (activating any other system lets them in again).
    #[track_caller]
    pub fn nixos_system(&self, version: &str, breaks_logins: bool) -> PathBuf {
        assert!(
            version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.'),
            "bad version {version:?}"
        );
        let keys = crate::quote(self.authorized_keys.as_os_str());
        let logins = if breaks_logins {
            "if [ -e \"$keys\" ]; then mv \"$keys\" \"$keys.broken\"; fi"
        } else {
            "if [ -e \"$keys.broken\" ]; then mv \"$keys.broken\" \"$keys\"; fi"
        };
        let activate = format!(
            "#!/bin/sh\n\
             # switch-to-configuration of a krops test system (tests/world/nixos.rs).\n\
             self=$(cd \"$(dirname \"$0\")/..\" && pwd -P)\n\
             echo \"nixos-system-test-{version} $*\" >>\"${{KROPS_STANDIN_LOG:?}}/{ACTIVATIONS_FILE}\"\n\
             case ${{1-}} in switch|test) ;; *) exit 0 ;; esac\n\
             if [ -f /run/{NIXOS_MARKER} ]; then ln -sfn \"$self\" /run/current-system; fi\n\
             keys={keys}\n\
             {logins}\n"
        );
        let nix_string = |s: &str| {
            format!(
                "\"{}\"",
                s.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace("${", "\\${")
            )
        };
        let expr = format!(
            r#"{{
  system = let
    dep = derivation {{
      name = "krops-test-dep-{version}";
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" "echo {version} > $out" ];
    }};
    activate = builtins.toFile "switch-to-configuration" {activate};
  in derivation {{
    name = "nixos-system-test-{version}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    inherit dep;
    args = [ "-c" "/bin/mkdir -p $out/bin && echo $dep > $out/dep && /bin/cp ${{activate}} $out/bin/switch-to-configuration && /bin/chmod 755 $out/bin/switch-to-configuration" ];
  }};
}}
"#,
            activate = nix_string(&activate),
        );
        let kind = if breaks_logins { "breaking" } else { "good" };
        let file = self.write(&format!("nixos/system-{version}-{kind}.nix"), expr);
        self.nix_build(&file, "system")
    }

    /// Makes `system` the running system of the NixOS host `alias` and its
    /// system profile's first generation, as if it had booted it.
    #[track_caller]
    pub fn boot_nixos_host(&self, alias: &str, system: &Path) {
        let run = self.nixos_run_dir(alias);
        let profiles = self.nixos_profiles_dir(alias);
        let link = |target: &Path, at: PathBuf| {
            let _ = fs::remove_file(&at);
            std::os::unix::fs::symlink(target, &at)
                .unwrap_or_else(|err| panic!("cannot link {}: {err}", at.display()));
        };
        link(system, run.join("current-system"));
        link(system, profiles.join("system-1-link"));
        link(Path::new("system-1-link"), profiles.join("system"));
    }

    /// The running system of the NixOS host `alias`, if any.
    pub fn current_system(&self, alias: &str) -> Option<PathBuf> {
        fs::canonicalize(self.nixos_run_dir(alias).join("current-system")).ok()
    }

    /// What the system profile of the NixOS host `alias` points at.
    pub fn profile_system(&self, alias: &str) -> Option<PathBuf> {
        let profiles = self.nixos_profiles_dir(alias);
        let generation = fs::read_link(profiles.join("system")).ok()?;
        fs::canonicalize(profiles.join(generation)).ok()
    }

    /// Makes the nixos-rebuild stand-in build and activate `system`.
    pub fn set_rebuild_system(&self, system: &Path) {
        let path = self.records_dir().join(REBUILD_SYSTEM_FILE);
        fs::write(&path, format!("{}\n", system.display()))
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    }

    /// Whether new ssh logins to the world's hosts work: the last system
    /// activated did not break them.
    pub fn logins_work(&self) -> bool {
        self.authorized_keys.exists()
    }

    /// Every `NAME OPERATION` the systems' `switch-to-configuration` ran,
    /// oldest first.
    pub fn activations(&self) -> Vec<String> {
        fs::read_to_string(self.records_dir().join(ACTIVATIONS_FILE))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}
