# krops_backup PATH SHOWN: copies PATH to PATH/.populate/backup/ (hard links
# for what is unchanged), but for the sentinel and the lock files; SHOWN is how
# messages name the sentinel.
krops_backup() {
  if test -L "$1/.populate" || ! test -d "$1/.populate"; then
    printf 'error: sentinel file is not a directory: %s\n' "$2" >&2
    exit 1
  fi
  if test -L "$1/.populate/backup"; then
    run rm -f "$1/.populate/backup"
  fi
  run rsync -aAXF --delete --exclude /.populate --exclude /.populate-lock --exclude /.populate-lock-final --link-dest="$1" "$1/" "$1/.populate/backup/" >&2
}
