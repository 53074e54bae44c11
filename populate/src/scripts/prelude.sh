set -efu
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
    krops_what="file"
    if test "$1" = file; then
      test -f "$2" && return 0
      krops_what='special file'
    fi
    printf 'populate: replacing the %s at %s\n' "$krops_what" "$3" >&2
    run rm -f "$2"
  fi
}
