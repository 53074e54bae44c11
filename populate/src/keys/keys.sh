# krops_keys HOST ON STRICT RECORD...: installs keys on the target (README:
# Keys). Messages name a path HOST:PATH (HOST is `server01:`, or empty) and
# the machine ON (`root@server01`, `this machine`).
# Each RECORD is words of its own:
#
#   dir DIR NAMES   a keys directory and the file names (comma-separated)
#                   all keys declared in it have: DIR is created 0750
#                   root:keys (root:root without a group keys) when missing,
#                   a warning says when it is not on a tmpfs or ramfs, and
#                   the files its manifest (DIR/.krops-keys) lists that are
#                   no longer declared are removed; then the manifest lists
#                   NAMES.
#   key KEY DIR FILE USER GROUP MODE
#                   the next key on stdin (its size on a line, then its
#                   bytes) goes to DIR/FILE, owned USER:GROUP with MODE.
#
# A key is written beside its place, given its owner and mode, then renamed
# into place; a key whose content, owner and mode are already right is not
# written (its inode stays). A USER or GROUP that does not exist is an
# error with STRICT 1; with 0, the key is installed root-owned and reported
# pending (the activation may create them). Each outcome is a line on
# stdout: `installed KEY`, `unchanged KEY`, `pending KEY`, `removed PATH`.
krops_keys() {
  krops_host=$1
  krops_on=$2
  krops_strict=$3
  shift 3
  if test "$(id -u)" != 0; then
    printf 'krops: error: keys need root on %s, to give them their owners (log in as root, or use sudo)\n' "$krops_on" >&2
    exit 1
  fi
  krops_tmp=
  trap 'test -z "$krops_tmp" || rm -f -- "$krops_tmp"' EXIT
  trap 'exit 130' INT TERM HUP
  krops_n=0
  while test "$#" -gt 0; do
    case $1 in
      dir)
        krops_keys_dir "$2" "$3"
        shift 3
        ;;
      key)
        krops_keys_key "$2" "$3" "$4" "$5" "$6" "$7"
        shift 7
        ;;
      *)
        printf 'krops: error: unknown record %s\n' "$1" >&2
        exit 2
        ;;
    esac
  done
}

# krops_keys_place DIR: DIR exists as a directory (made 0750 root:keys or
# root:root), and is not a symlink (never followed).
krops_keys_place() {
  if test -L "$1"; then
    printf 'krops: error: the keys directory %s%s is a symlink: it is never followed\n' "$krops_host" "$1" >&2
    exit 1
  fi
  if test -d "$1"; then
    return 0
  fi
  if test -e "$1"; then
    printf 'krops: error: the keys directory %s%s is not a directory\n' "$krops_host" "$1" >&2
    exit 1
  fi
  run mkdir -p -- "$(dirname -- "$1")"
  run mkdir -m 0750 -- "$1"
  if getent group keys >/dev/null 2>&1; then
    run chown 0:keys -- "$1"
  else
    run chown 0:0 -- "$1"
  fi
}

krops_keys_dir() {
  krops_keys_place "$1"
  case $(stat -f -c %T -- "$1" 2>/dev/null) in
    tmpfs | ramfs) ;;
    *)
      printf 'krops: warning: the keys directory %s%s is not on a tmpfs or ramfs: its keys are on disk\n' "$krops_host" "$1" >&2
      ;;
  esac
  # Left by a run that was killed: never a live run's (it takes seconds).
  find "$1" -maxdepth 1 -name '.krops-keys.tmp.*' -mmin +5 -exec rm -f -- {} + 2>/dev/null || :
  if test -f "$1/.krops-keys" && ! test -L "$1/.krops-keys"; then
    while IFS= read -r krops_old; do
      case $krops_old in
        '' | */* | . | ..) continue ;;
      esac
      case ",$2," in
        *",$krops_old,"*) continue ;;
      esac
      if test -e "$1/$krops_old" || test -L "$1/$krops_old"; then
        run rm -f -- "$1/$krops_old"
        printf 'removed %s\n' "$1/$krops_old"
      fi
    done < "$1/.krops-keys"
  fi
  krops_tmp=$1/.krops-keys.tmp.$$.manifest
  (
    umask 077
    printf '%s\n' "$2" | tr ',' '\n' | { grep -v '^$' || :; } > "$krops_tmp"
  )
  run mv -fT -- "$krops_tmp" "$1/.krops-keys"
  krops_tmp=
}

krops_keys_key() {
  krops_keys_place "$2"
  if ! IFS= read -r krops_size; then
    printf 'krops: error: the keys stream ended before key %s\n' "$1" >&2
    exit 1
  fi
  krops_n=$((krops_n + 1))
  krops_tmp=$2/.krops-keys.tmp.$$.$krops_n
  rm -f -- "$krops_tmp"
  (
    umask 077
    head -c "$krops_size" > "$krops_tmp"
  )
  krops_got=$(wc -c < "$krops_tmp")
  if test "$krops_got" -ne "$krops_size"; then
    printf 'krops: error: key %s: only %s of %s bytes arrived; %s%s is left as it was\n' "$1" "$krops_got" "$krops_size" "$krops_host" "$2/$3" >&2
    exit 1
  fi
  krops_status=installed
  if krops_uid=$(id -u -- "$4" 2>/dev/null) &&
    krops_gid=$(getent group "$5" | cut -d: -f3) && test -n "$krops_gid"; then
    :
  elif test "$krops_strict" = 1; then
    if id -u -- "$4" >/dev/null 2>&1; then
      printf 'krops: error: key %s: the group %s does not exist on %s\n' "$1" "$5" "$krops_on" >&2
    else
      printf 'krops: error: key %s: the user %s does not exist on %s\n' "$1" "$4" "$krops_on" >&2
    fi
    exit 3
  else
    krops_uid=0
    krops_gid=0
    krops_status=pending
  fi
  krops_mode=$(printf '%o' "0$6")
  krops_dest=$2/$3
  if test -f "$krops_dest" && ! test -L "$krops_dest" &&
    test "$(stat -c '%u:%g:%a' -- "$krops_dest")" = "$krops_uid:$krops_gid:$krops_mode" &&
    cmp -s -- "$krops_tmp" "$krops_dest"; then
    rm -f -- "$krops_tmp"
    krops_tmp=
    test "$krops_status" = pending || krops_status=unchanged
  else
    run chown "$krops_uid:$krops_gid" -- "$krops_tmp"
    run chmod "$6" -- "$krops_tmp"
    run mv -fT -- "$krops_tmp" "$krops_dest"
    krops_tmp=
  fi
  printf '%s %s\n' "$krops_status" "$1"
}
