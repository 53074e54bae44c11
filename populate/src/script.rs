//! What every populate script run on a target starts with.
//!
//! Scripts run with `set -efu`. A command whose failure ends the step is
//! written `run CMD…`: when it fails, `run` prints one line naming it and its
//! status, which the step's error then quotes (instead of the whole script),
//! and exits with that status.

/// The prelude of every populate script: `set -efu`, `run` (see above) and
/// `claim KIND P SHOWN`, which removes, without following links, whatever
/// stands at P that a source of KIND (`dir` for a checkout, `tree` for what
/// rsync syncs, `file`, `link`, `outlink`) does not make, and says so:
/// rsync, git and `cat` would otherwise write through a symlink to outside
/// the target path. An `outlink` is a derivation's out link, which
/// nix-build replaces only when it points into the store.
///
/// A directory that belongs to another user than the one populate writes
/// as is replaced too: rsync keeps a directory's owner, who could then swap
/// the files in it (a secret, the configuration root builds), and git
/// refuses such a checkout. In a `tree` it keeps, a read-only file with a
/// second link is removed when populate is not root: rsync would make it
/// writable before deleting it, changing the mode of that file wherever
/// else it is. (A checkout's objects may be such links, to the repository
/// a local URL names: git deletes nothing that way.)
pub const PRELUDE: &str = r#"set -efu
run() {
  "$@" || {
    krops_status=$?
    printf 'populate: failed: %s (exit status %s)\n' "$*" "$krops_status" >&2
    exit "$krops_status"
  }
}
claim() {
  if test -L "$2"; then
    case $1 in
      link) return 0 ;;
      outlink) case $(readlink "$2") in /nix/store/*) return 0 ;; esac ;;
    esac
    printf 'populate: replacing the symlink at %s\n' "$3" >&2
    run rm -f "$2"
  elif test -d "$2"; then
    if test "$1" = dir || test "$1" = tree; then
      if test -O "$2"; then
        # rsync, as any user but root, makes a read-only file writable
        # before it deletes it: with a second link, that is a file
        # outside P too. Such files are removed here instead.
        if test "$1" = tree && test "$(id -u)" != 0; then
          run find "$2" -type f -links +1 ! -perm -u+w -exec rm -f {} +
        fi
        return 0
      fi
      printf 'populate: replacing the directory at %s: it belongs to another user\n' "$3" >&2
    else
      printf 'populate: replacing the directory at %s\n' "$3" >&2
    fi
    # A read-only directory of one's own is removed as a fresh place would
    # be made: rm needs to write to a directory to delete in it (only
    # directories are made writable: a file may have a link outside P).
    test "$(id -u)" = 0 ||
      find "$2" -type d ! -perm -u+w -exec chmod u+w {} + 2>/dev/null || :
    run rm -fR "$2"
  elif test -e "$2"; then
    krops_what=file
    if test "$1" = file; then
      test -f "$2" && return 0
      krops_what='special file'
    fi
    printf 'populate: replacing the %s at %s\n' "$krops_what" "$3" >&2
    run rm -f "$2"
  fi
}
"#;

/// The line [`PRELUDE`]'s `run` prints for a failed command.
pub const FAILED_MARKER: &str = "populate: failed: ";

/// The command a script's output names as the one that failed, if any: what
/// `run` printed last, without its status (all of it: a derivation's
/// expression spans lines).
pub fn failed_command(output: &str) -> Option<&str> {
    let start = output
        .match_indices(FAILED_MARKER)
        .map(|(at, _)| at)
        .filter(|&at| at == 0 || output[..at].ends_with('\n'))
        .last()?;
    let line = output[start + FAILED_MARKER.len()..].trim_end();
    Some(match line.rfind(" (exit status ") {
        Some(end) => &line[..end],
        None => line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> (i32, String) {
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("{PRELUDE}{script}")])
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    #[test]
    fn run_names_the_failed_command_and_keeps_its_status() {
        let (status, stderr) = sh("run true\nrun sh -c 'exit 7'\necho not reached >&2\n");
        assert_eq!(status, 7);
        assert_eq!(failed_command(&stderr), Some("sh -c exit 7"), "{stderr}");
        assert!(!stderr.contains("not reached"));
    }

    #[test]
    fn run_changes_the_shell_it_runs_in() {
        let (status, stderr) = sh("run cd /\npwd >&2\n");
        assert_eq!((status, stderr.as_str()), (0, "/\n"));
    }

    #[test]
    fn a_command_over_several_lines_is_named_whole() {
        let (status, stderr) = sh("run sh -c 'exit 3\n# second line\n'\n");
        assert_eq!(status, 3);
        assert_eq!(
            failed_command(&stderr),
            Some("sh -c exit 3\n# second line\n"),
            "{stderr}"
        );
    }

    #[test]
    fn a_directory_of_another_user_is_replaced_and_one_s_own_kept() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("own");
        let foreign = dir.path().join("foreign");
        for d in [&own, &foreign] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("old"), "old\n").unwrap();
        }
        if std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).is_err() {
            // Not root: no directory of another user can be made here;
            // the end-to-end tests run as root.
            return;
        }
        let claim = |p: &std::path::Path| {
            let p = p.to_str().unwrap();
            sh(&format!("claim dir '{p}' '{p}'\n"))
        };
        assert_eq!(claim(&own), (0, String::new()));
        assert!(own.join("old").exists());
        let (status, stderr) = claim(&foreign);
        assert_eq!(status, 0, "{stderr}");
        assert!(stderr.contains("it belongs to another user"), "{stderr}");
        assert!(!foreign.exists());
    }

    #[test]
    fn no_marker_no_command() {
        assert_eq!(failed_command("fatal: something\n"), None);
    }
}
