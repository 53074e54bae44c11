# krops_sentinel PATH SHOWN FORCE BACKUP: the sentinel check of PATH, whose
# sentinel messages call SHOWN. FORCE is 'force' (make PATH and the sentinel
# first) or 'check'; BACKUP is 'backup' (the sentinel must be a directory)
# or 'no-backup'. Exits 3 when the sentinel is missing, 4 when --backup
# finds a file, 5 when it is a symlink (see sync.rs).
krops_sentinel() {
  krops_sentinel=$1/.populate
  if test "$3" = force; then
    run mkdir -p "$1" >&2
    if test -L "$krops_sentinel"; then
      printf 'populate: replacing the symlink at %s (a sentinel is never followed)\n' "$2" >&2
      run rm -f "$krops_sentinel"
    fi
    if test "$4" = backup; then
      # A backup needs the sentinel to be a directory; krops's hosts have
      # an empty file there, which becomes one.
      if test -f "$krops_sentinel" && ! test -s "$krops_sentinel"; then
        printf 'populate: turning the empty sentinel file %s into a directory\n' "$2" >&2
        run rm -f "$krops_sentinel"
      fi
      if test -f "$krops_sentinel"; then
        printf 'error: the sentinel file %s is not empty, so it cannot become the directory a backup needs\n' "$2" >&2
        exit 1
      fi
      run mkdir -p "$krops_sentinel"
    else
      run touch "$krops_sentinel"
    fi
  fi
  if test -L "$krops_sentinel"; then
    printf 'error: the sentinel %s is a symlink, which populate does not follow; replace it with an empty file, or run with --force to have it replaced\n' "$2" >&2
    exit 5
  fi
  if ! test -e "$krops_sentinel"; then
    printf 'error: missing sentinel file: %s\n' "$2" >&2
    exit 3
  fi
  if test "$4" = backup && ! test -d "$krops_sentinel"; then
    printf 'error: the sentinel %s is a file; --backup needs a directory to keep the backup in (--force --backup turns an empty sentinel file into one)\n' "$2" >&2
    exit 4
  fi
}
