//! The only stand-ins of the test world: `nixos-rebuild`, `nom`, `passage`
//! and `reboot` (which a test machine cannot do).
//! Everything else the tools run is the real program, and so is
//! `nixos-rebuild` in a world that has it (`real_rebuild.rs`): the stand-in
//! then records the call and runs it.
//!
//! Each stand-in records its invocation into `$KROPS_STANDIN_LOG/<name>.XXXXXX/`:
//! `time` (nanoseconds since the epoch, for ordering), `argv` (NUL-separated),
//! `env` (`env -0`), `uid`, `cwd`, `stdin` and, once done, `end` (nanoseconds
//! since the epoch) and `exit`.
//! The scripts name no world path, so the same text serves every world and the
//! shared directory on sudo's `secure_path`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The directory on the sudo test user's `secure_path` (set by `scripts/test`)
/// that holds the same stand-ins, so they are found under `sudo` too.
pub const FIXED_STANDIN_DIR: &str = "/usr/local/lib/krops-test/bin";

/// The file in the records directory whose content is the exit status of the
/// `nixos-rebuild` stand-in.
pub const REBUILD_EXIT_FILE: &str = "nixos-rebuild.exit";

/// The file in the records directory that says which program the
/// `nixos-rebuild` stand-in reads its options as: `bash` (the default) or
/// `ng` (nixos-rebuild-ng: it knows `--sudo` and warns about
/// `--use-remote-sudo` and `--no-build-nix`).
pub const REBUILD_VARIANT_FILE: &str = "nixos-rebuild.variant";

/// The file in the records directory naming the real nixos-rebuild, which
/// the stand-in then runs after recording the call (see `real_rebuild.rs`).
pub const REBUILD_REAL_FILE: &str = "nixos-rebuild.real";

const RECORD: &str = r#"#!/bin/sh
# Test stand-in written by the krops test world (tests/world/standins.rs).
set -u
log=${KROPS_STANDIN_LOG:?KROPS_STANDIN_LOG is not set: this stand-in only runs in the krops test world}
standin_record() {
  rec=$(mktemp -d "$log/$1.XXXXXX") || exit 125
  shift
  date +%s%N >"$rec/time"
  for arg in "$@"; do printf '%s\0' "$arg"; done >"$rec/argv"
  env -0 >"$rec/env"
  id -u >"$rec/uid"
  pwd >"$rec/cwd"
}
standin_exit() {
  date +%s%N >"$rec/end"
  echo "$1" >"$rec/exit"
  exit "$1"
}
"#;

const NIXOS_REBUILD: &str = r#"# The real program, when the world has it (tests/world/real_rebuild.rs):
# recorded, then run with the same arguments and environment; only on a
# world NixOS machine, whose system profile and /run are its own.
if [ -f "$log/nixos-rebuild.real" ]; then
  standin_record nixos-rebuild "$@"
  : >"$rec/stdin"
  if [ ! -f /run/krops-test-nixos ]; then
    echo "nixos-rebuild stand-in: refusing to run the real nixos-rebuild outside a world NixOS machine: it would change this machine's system profile" >&2
    standin_exit 125
  fi
  "$(cat "$log/nixos-rebuild.real")" "$@"
  standin_exit $?
fi
# Options as the program of $log/nixos-rebuild.variant reads them: the
# bash nixos-rebuild (the default) refuses the first option it does not
# know, nixos-rebuild-ng (`ng`) all it does not know; either before doing
# anything, so nothing is recorded.
variant=bash
if [ -f "$log/nixos-rebuild.variant" ]; then variant=$(cat "$log/nixos-rebuild.variant"); fi
skip=0
for arg in "$@"; do
  if [ "$skip" -gt 0 ]; then skip=$((skip - 1)); continue; fi
  case $arg in
    --file|-f|--attr|-A|-I|--builders|--max-jobs|-j|--cores|--log-format|--profile-name|-p|\
    --specialisation|-c|--build-host|--target-host|--flake|--update-input) skip=1 ;;
    --option|--override-input|--arg|--argstr) skip=2 ;;
    --help|--install-grub|--install-bootloader|--rollback|--upgrade|--upgrade-all|\
    --use-substitutes|--substitute-on-destination|-s|--accept-flake-config|--quiet|\
    --print-build-logs|-L|--no-build-output|-Q|--show-trace|--refresh|--impure|--offline|\
    --no-net|--keep-going|-k|--keep-failed|-K|--fallback|--repair|--verbose|-v|--fast|\
    --no-ssh-tty|--no-flake|--recreate-lock-file|--no-update-lock-file|--no-write-lock-file|\
    --no-registries|--commit-lock-file|--json) ;;
    --use-remote-sudo)
      if [ "$variant" = ng ]; then echo "nixos-rebuild: warning: --use-remote-sudo deprecated, use --sudo instead" >&2; fi ;;
    --no-build-nix)
      if [ "$variant" = ng ]; then echo "nixos-rebuild: warning: --no-build-nix deprecated, we do not build nix anymore" >&2; fi ;;
    --sudo|--ask-sudo-password)
      if [ "$variant" != ng ]; then echo "$0: unknown option \`$arg'" >&2; exit 1; fi ;;
    -*)
      if [ "$variant" = ng ]; then
        echo "usage: nixos-rebuild [--verbose] [--sudo] [--use-remote-sudo] [--no-flake] [action]" >&2
        echo "nixos-rebuild: error: unrecognized arguments: $arg" >&2
        exit 2
      fi
      echo "$0: unknown option \`$arg'" >&2; exit 1 ;;
  esac
done
standin_record nixos-rebuild "$@"
# Never wait on a terminal; a pipe or /dev/null is read to its end.
if [ -t 0 ]; then : >"$rec/stdin"; else cat >"$rec/stdin"; fi
echo "nixos-rebuild stand-in: $*"
echo "nixos-rebuild stand-in: this line goes to stderr" >&2
code=0
if [ -f "$log/nixos-rebuild.exit" ]; then code=$(cat "$log/nixos-rebuild.exit"); fi
# Playing NixOS (tests/world/nixos.rs), when given a system: build links it
# as ./result; switch, boot, test and dry-activate activate it with its own
# switch-to-configuration; switch --rollback activates the profile's
# previous generation. The system profile only on a world NixOS host.
if [ "$code" = 0 ] && [ -f "$log/nixos-rebuild.system" ]; then
  system=$(cat "$log/nixos-rebuild.system")
  profile=
  if [ -f /run/krops-test-nixos ]; then profile=/nix/var/nix/profiles/system; fi
  case " $* " in
    *" --rollback "*)
      if [ "$1" = switch ] && [ -n "$profile" ]; then
        nix-env --profile "$profile" --rollback >&2 || code=1
        "$profile/bin/switch-to-configuration" switch || code=$?
      fi ;;
    *)
      case $1 in
        build) ln -sfn "$system" result ;;
        switch|boot)
          if [ -n "$profile" ]; then nix-env --profile "$profile" --set "$system" >&2 || code=1; fi
          "$system/bin/switch-to-configuration" "$1" || code=$? ;;
        test|dry-activate) "$system/bin/switch-to-configuration" "$1" || code=$? ;;
      esac ;;
  esac
fi
standin_exit "$code"
"#;

const NOM: &str = r#"standin_record nom "$@"
tee "$rec/stdin" | sed 's/^/nom: /'
standin_exit 0
"#;

/// `passage show NAME` (and `passage NAME`) as passage does it, over the real age;
/// records argv but never the secret.
const PASSAGE: &str = r#"standin_record passage "$@"
: >"$rec/stdin"
die() { echo "$*" >&2; standin_exit 1; }
store=${PASSAGE_DIR:-$HOME/.passage/store}
identities=${PASSAGE_IDENTITIES_FILE:-$HOME/.passage/identities}
age=${PASSAGE_AGE:-age}
if [ "$#" -gt 0 ]; then
  case $1 in
    show) shift ;;
    init|ls|list|find|search|grep|insert|add|edit|generate|rm|remove|delete|mv|rename|cp|copy|git|help|--help|version|--version)
      die "passage stand-in: only 'passage show NAME' is implemented, not: $*" ;;
  esac
fi
[ "${1-}" = "--" ] && shift
[ "$#" -le 1 ] || die "Usage: passage show pass-name"
name=${1-}
case "/$name/" in
  */../*) die "Error: You've attempted to pass a sneaky path to passage. Go home." ;;
esac
file="$store/$name.age"
if [ -f "$file" ]; then
  "$age" -d -i "$identities" "$file" || standin_exit $?
  standin_exit 0
elif [ -d "$store/$name" ]; then
  echo "${name:-Passage}"
  (cd "$store/$name" && find . -name '*.age' | sed -e 's|^\./||' -e 's|\.age$||' | sort)
  standin_exit 0
elif [ -z "$name" ]; then
  die "Error: password store is empty. Try \"passage init\"."
else
  die "Error: $name is not in the password store."
fi
"#;

/// `reboot`, on a world NixOS host only: asks the world to reboot the
/// host (`World::reboot_when_asked`), which then kills its sshd with this
/// session; anywhere else it refuses.
const REBOOT: &str = r#"standin_record reboot "$@"
if [ ! -f /run/krops-test-nixos ]; then
  echo "reboot stand-in: not a world NixOS host: refusing" >&2
  standin_exit 1
fi
: >/run/krops-test-reboot
standin_exit 0
"#;

/// The stand-ins by name, as complete scripts.
pub fn scripts() -> [(&'static str, String); 4] {
    [
        ("nixos-rebuild", format!("{RECORD}{NIXOS_REBUILD}")),
        ("nom", format!("{RECORD}{NOM}")),
        ("passage", format!("{RECORD}{PASSAGE}")),
        ("reboot", format!("{RECORD}{REBOOT}")),
    ]
}

/// Installs the stand-ins into the world's `bin/` and into [`FIXED_STANDIN_DIR`].
pub fn install_all(world_bin: &Path) {
    let fixed = Path::new(FIXED_STANDIN_DIR);
    fs::create_dir_all(fixed).unwrap_or_else(|err| {
        panic!("cannot create {FIXED_STANDIN_DIR} (the tests run as root; run scripts/test): {err}")
    });
    for dir in [Path::new("/usr/local/lib/krops-test"), fixed] {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    }
    for (name, script) in scripts() {
        crate::write_atomically(world_bin, name, &script, 0o755);
        crate::write_atomically(fixed, name, &script, 0o755);
    }
}

/// One recorded invocation of a stand-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record's directory, `records/<name>.XXXXXX`.
    pub dir: PathBuf,
    /// The arguments, without the program name.
    pub argv: Vec<String>,
    /// The whole environment the stand-in saw.
    pub env: BTreeMap<String, String>,
    /// The user id it ran as.
    pub uid: u32,
    /// Its working directory.
    pub cwd: PathBuf,
    /// Everything it read on stdin (empty when stdin was a terminal).
    pub stdin: Vec<u8>,
    /// Its exit status, `None` while it is still running.
    pub exit: Option<i32>,
    /// Start time in nanoseconds since the epoch.
    pub time: u128,
    /// End time in nanoseconds since the epoch, `None` while it is still running.
    pub end: Option<u128>,
}

impl Record {
    /// The port of the sshd the recorded run came in through (from
    /// `SSH_CONNECTION`).
    pub fn server_port(&self) -> String {
        // SSH_CONNECTION = client_ip client_port server_ip server_port
        self.env["SSH_CONNECTION"]
            .split(' ')
            .nth(3)
            .unwrap()
            .to_owned()
    }

    /// The value of the environment variable `name`, if set.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    /// stdin as text (lossy UTF-8).
    pub fn stdin_str(&self) -> String {
        String::from_utf8_lossy(&self.stdin).into_owned()
    }
}

/// All records of the stand-in `name` in `records`, oldest first.
pub fn read_records(records: &Path, name: &str) -> Vec<Record> {
    let prefix = format!("{name}.");
    let entries = fs::read_dir(records)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", records.display()));
    let mut found: Vec<Record> = entries
        .map(|entry| entry.expect("records dir entry").path())
        .filter(|path| {
            path.is_dir()
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|dir| read_record(&dir))
        .collect();
    found.sort_by(|a, b| (a.time, &a.dir).cmp(&(b.time, &b.dir)));
    found
}

fn read_record(dir: &Path) -> Record {
    let read = |file: &str| {
        fs::read(dir.join(file)).unwrap_or_else(|err| {
            panic!(
                "stand-in record {} has no readable {file}: {err}",
                dir.display()
            )
        })
    };
    let text = |file: &str| String::from_utf8_lossy(&read(file)).trim_end().to_owned();
    let fields = |bytes: Vec<u8>| -> Vec<String> {
        bytes
            .split(|&b| b == 0)
            .map(|field| String::from_utf8_lossy(field).into_owned())
            .collect::<Vec<_>>()
    };
    let mut argv = fields(read("argv"));
    // printf '%s\0' ends every argument with NUL, so the split leaves one empty tail.
    argv.pop();
    let env = fields(read("env"))
        .into_iter()
        .filter(|entry| !entry.is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((key, value)) => (key.to_owned(), value.to_owned()),
            None => (entry, String::new()),
        })
        .collect();
    let number = |file: &str| -> u128 {
        let value = text(file);
        value.parse().unwrap_or_else(|err| {
            panic!(
                "stand-in record {}: {file} is {value:?}: {err}",
                dir.display()
            )
        })
    };
    Record {
        dir: dir.to_owned(),
        argv,
        env,
        uid: u32::try_from(number("uid")).expect("a uid fits in u32"),
        cwd: PathBuf::from(text("cwd")),
        stdin: fs::read(dir.join("stdin")).unwrap_or_default(),
        exit: fs::read(dir.join("exit"))
            .ok()
            .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()),
        time: number("time"),
        end: fs::read(dir.join("end"))
            .ok()
            .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()),
    }
}
