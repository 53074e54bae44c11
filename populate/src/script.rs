//! What every populate script run on a target starts with.
//!
//! Scripts run with `set -efu`. A command whose failure ends the step is
//! written `run CMD…`: when it fails, `run` prints one line naming it and its
//! status, which the step's error then quotes (instead of the whole script),
//! and exits with that status. `failed STATUS COMMAND` does the same for a
//! command whose status the script looked at itself.

/// The prelude of every populate script: `set -efu`, `run` (see above) and
/// `claim KIND P SHOWN`, which removes, without following links, whatever
/// stands at P that a source of KIND (`dir`, `file`, `link`, `outlink`) does
/// not make, and says so: rsync, git and `cat` would otherwise write through
/// a symlink to outside the target path. An `outlink` is a derivation's out
/// link, which nix-build replaces only when it points into the store.
pub const PRELUDE: &str = r#"set -efu
run() {
  "$@" || failed "$?" "$*"
}
failed() {
  printf 'populate: failed: %s (exit status %s)\n' "$2" "$1" >&2
  exit "$1"
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
    test "$1" = dir && return 0
    printf 'populate: replacing the directory at %s\n' "$3" >&2
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
    fn no_marker_no_command() {
        assert_eq!(failed_command("fatal: something\n"), None);
    }
}
