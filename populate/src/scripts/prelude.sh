set -efu
run() {
  "$@" || failed "$?" "$*"
}
failed() {
  printf 'populate: failed: %s (exit status %s)\n' "$2" "$1" >&2
  exit "$1"
}
# keep_mount P SHOWN: fails, changing nothing, when P is a mount point:
# `rm -fR` would empty the file system mounted there, then fail on P (it is
# busy). util-linux's mountpoint sees a bind mount too; without it, P's
# device differs from its parent's.
keep_mount() {
  if mountpoint -q "$1" 2>/dev/null || {
    krops_dev=$(stat -c %d "$1" 2>/dev/null) && test "$krops_dev" != "$(stat -c %d "$1/.." 2>/dev/null)"
  }; then
    printf 'populate: error: %s is a mount point: it is never replaced (unmount it, or deploy elsewhere); nothing in it was changed\n' "$2" >&2
    exit 1
  fi
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
      keep_mount "$2" "$3"
      printf 'populate: replacing the directory at %s: it belongs to another user\n' "$3" >&2
    else
      keep_mount "$2" "$3"
      printf 'populate: replacing the directory at %s\n' "$3" >&2
    fi
    # A read-only directory of one's own is removed as a fresh place would
    # be made: rm needs to write to a directory to delete in it (only
    # directories are made writable: a file may have a link outside P).
    test "$(id -u)" = 0 ||
      find "$2" -type d ! -perm -u+w -exec chmod u+w {} + 2>/dev/null || :
    run rm -fR "$2"
  elif test -e "$2"; then
    krops_what="file"
    if test "$1" = file; then
      test -f "$2" && return 0
      krops_what='special file'
    fi
    printf 'populate: replacing the %s at %s\n' "$krops_what" "$3" >&2
    run rm -f "$2"
  fi
}
