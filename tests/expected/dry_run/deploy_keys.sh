#!/bin/sh
# populate root@alpha/var/src
# The real run first takes the lock on alpha:/var/src/.populate-lock (flock, held until the run and its final command end; waiting for it as long as another run holds it). This script takes none.
set -efu

# sentinel check
ssh -l root -T -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 alpha 'set -efu
run() {
  "$@" || failed "$?" "$*"
}
failed() {
  printf '\''populate: failed: %s (exit status %s)\n'\'' "$2" "$1" >&2
  exit "$1"
}
# keep_mount P SHOWN: fails, changing nothing, when P is a mount point:
# `rm -fR` would empty the file system mounted there, then fail on P (it is
# busy). util-linux'\''s mountpoint sees a bind mount too; without it, P'\''s
# device differs from its parent'\''s.
keep_mount() {
  if mountpoint -q "$1" 2>/dev/null || {
    krops_dev=$(stat -c %d "$1" 2>/dev/null) && test "$krops_dev" != "$(stat -c %d "$1/.." 2>/dev/null)"
  }; then
    printf '\''populate: error: %s is a mount point: it is never replaced (unmount it, or deploy elsewhere); nothing in it was changed\n'\'' "$2" >&2
    exit 1
  fi
}
claim() {
  if test -L "$2"; then
    case $1 in
      link) return 0 ;;
      outlink) case $(readlink "$2") in /nix/store/*) return 0 ;; esac ;;
    esac
    printf '\''populate: replacing the symlink at %s\n'\'' "$3" >&2
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
      printf '\''populate: replacing the directory at %s: it belongs to another user\n'\'' "$3" >&2
    else
      keep_mount "$2" "$3"
      printf '\''populate: replacing the directory at %s\n'\'' "$3" >&2
    fi
    # A read-only directory of one'\''s own is removed as a fresh place would
    # be made: rm needs to write to a directory to delete in it (only
    # directories are made writable: a file may have a link outside P).
    test "$(id -u)" = 0 ||
      find "$2" -type d ! -perm -u+w -exec chmod u+w {} + 2>/dev/null || :
    run rm -fR "$2"
  elif test -e "$2"; then
    krops_what="file"
    if test "$1" = file; then
      test -f "$2" && return 0
      krops_what='\''special file'\''
    fi
    printf '\''populate: replacing the %s at %s\n'\'' "$krops_what" "$3" >&2
    run rm -f "$2"
  fi
}
# krops_sentinel PATH SHOWN FORCE BACKUP: the sentinel check of PATH, whose
# sentinel messages call SHOWN. FORCE is '\''force'\'' (make PATH and the sentinel
# first) or '\''check'\''; BACKUP is '\''backup'\'' (the sentinel must be a directory)
# or '\''no-backup'\''. Exits 3 when the sentinel is missing, 4 when --backup
# finds a file, 5 when it is a symlink (see sync.rs).
krops_sentinel() {
  krops_sentinel=$1/.populate
  if test "$3" = force; then
    run mkdir -p "$1" >&2
    if test -L "$krops_sentinel"; then
      printf '\''populate: replacing the symlink at %s (a sentinel is never followed)\n'\'' "$2" >&2
      run rm -f "$krops_sentinel"
    fi
    if test "$4" = backup; then
      # A backup needs the sentinel to be a directory; krops'\''s hosts have
      # an empty file there, which becomes one.
      if test -f "$krops_sentinel" && ! test -s "$krops_sentinel"; then
        printf '\''populate: turning the empty sentinel file %s into a directory\n'\'' "$2" >&2
        run rm -f "$krops_sentinel"
      fi
      if test -f "$krops_sentinel"; then
        printf '\''error: the sentinel file %s is not empty, so it cannot become the directory a backup needs\n'\'' "$2" >&2
        exit 1
      fi
      run mkdir -p "$krops_sentinel"
    else
      run touch "$krops_sentinel"
    fi
  fi
  if test -L "$krops_sentinel"; then
    printf '\''error: the sentinel %s is a symlink, which populate does not follow; replace it with an empty file, or run with --force to have it replaced\n'\'' "$2" >&2
    exit 5
  fi
  if ! test -e "$krops_sentinel"; then
    printf '\''error: missing sentinel file: %s\n'\'' "$2" >&2
    exit 3
  fi
  if test "$4" = backup && ! test -d "$krops_sentinel"; then
    printf '\''error: the sentinel %s is a file; --backup needs a directory to keep the backup in (--force --backup turns an empty sentinel file into one)\n'\'' "$2" >&2
    exit 4
  fi
}
krops_sentinel /var/src alpha:/var/src/.populate check no-backup
'

# source l (symlink)
ssh -l root -T -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 alpha 'set -efu
run() {
  "$@" || failed "$?" "$*"
}
failed() {
  printf '\''populate: failed: %s (exit status %s)\n'\'' "$2" "$1" >&2
  exit "$1"
}
# keep_mount P SHOWN: fails, changing nothing, when P is a mount point:
# `rm -fR` would empty the file system mounted there, then fail on P (it is
# busy). util-linux'\''s mountpoint sees a bind mount too; without it, P'\''s
# device differs from its parent'\''s.
keep_mount() {
  if mountpoint -q "$1" 2>/dev/null || {
    krops_dev=$(stat -c %d "$1" 2>/dev/null) && test "$krops_dev" != "$(stat -c %d "$1/.." 2>/dev/null)"
  }; then
    printf '\''populate: error: %s is a mount point: it is never replaced (unmount it, or deploy elsewhere); nothing in it was changed\n'\'' "$2" >&2
    exit 1
  fi
}
claim() {
  if test -L "$2"; then
    case $1 in
      link) return 0 ;;
      outlink) case $(readlink "$2") in /nix/store/*) return 0 ;; esac ;;
    esac
    printf '\''populate: replacing the symlink at %s\n'\'' "$3" >&2
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
      printf '\''populate: replacing the directory at %s: it belongs to another user\n'\'' "$3" >&2
    else
      keep_mount "$2" "$3"
      printf '\''populate: replacing the directory at %s\n'\'' "$3" >&2
    fi
    # A read-only directory of one'\''s own is removed as a fresh place would
    # be made: rm needs to write to a directory to delete in it (only
    # directories are made writable: a file may have a link outside P).
    test "$(id -u)" = 0 ||
      find "$2" -type d ! -perm -u+w -exec chmod u+w {} + 2>/dev/null || :
    run rm -fR "$2"
  elif test -e "$2"; then
    krops_what="file"
    if test "$1" = file; then
      test -f "$2" && return 0
      krops_what='\''special file'\''
    fi
    printf '\''populate: replacing the %s at %s\n'\'' "$krops_what" "$3" >&2
    run rm -f "$2"
  fi
}
# krops_symlink P SHOWN TARGET: the symlink P -> TARGET (messages call P
# SHOWN); '\''--'\'': TARGET may begin with '\''-'\''.
krops_symlink() {
  claim link "$1" "$2"
  run ln -fnsT -- "$3" "$1"
}
krops_symlink /var/src/l alpha:/var/src/l x
'

# source motd (file)
rsync '--rsync-path=/bin/sh -c '\''set -efu
run() {
  "$@" || failed "$?" "$*"
}
failed() {
  printf '\''\'\'''\''populate: failed: %s (exit status %s)\n'\''\'\'''\'' "$2" "$1" >&2
  exit "$1"
}
# keep_mount P SHOWN: fails, changing nothing, when P is a mount point:
# `rm -fR` would empty the file system mounted there, then fail on P (it is
# busy). util-linux'\''\'\'''\''s mountpoint sees a bind mount too; without it, P'\''\'\'''\''s
# device differs from its parent'\''\'\'''\''s.
keep_mount() {
  if mountpoint -q "$1" 2>/dev/null || {
    krops_dev=$(stat -c %d "$1" 2>/dev/null) && test "$krops_dev" != "$(stat -c %d "$1/.." 2>/dev/null)"
  }; then
    printf '\''\'\'''\''populate: error: %s is a mount point: it is never replaced (unmount it, or deploy elsewhere); nothing in it was changed\n'\''\'\'''\'' "$2" >&2
    exit 1
  fi
}
claim() {
  if test -L "$2"; then
    case $1 in
      link) return 0 ;;
      outlink) case $(readlink "$2") in /nix/store/*) return 0 ;; esac ;;
    esac
    printf '\''\'\'''\''populate: replacing the symlink at %s\n'\''\'\'''\'' "$3" >&2
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
      printf '\''\'\'''\''populate: replacing the directory at %s: it belongs to another user\n'\''\'\'''\'' "$3" >&2
    else
      keep_mount "$2" "$3"
      printf '\''\'\'''\''populate: replacing the directory at %s\n'\''\'\'''\'' "$3" >&2
    fi
    # A read-only directory of one'\''\'\'''\''s own is removed as a fresh place would
    # be made: rm needs to write to a directory to delete in it (only
    # directories are made writable: a file may have a link outside P).
    test "$(id -u)" = 0 ||
      find "$2" -type d ! -perm -u+w -exec chmod u+w {} + 2>/dev/null || :
    run rm -fR "$2"
  elif test -e "$2"; then
    krops_what="file"
    if test "$1" = file; then
      test -f "$2" && return 0
      krops_what='\''\'\'''\''special file'\''\'\'''\''
    fi
    printf '\''\'\'''\''populate: replacing the %s at %s\n'\''\'\'''\'' "$krops_what" "$3" >&2
    run rm -f "$2"
  fi
}
claim file /var/src/motd alpha:/var/src/motd
exec "$0" "$@"
'\'' rsync' -e ''\''ssh'\'' '\''-l'\'' '\''root'\'' '\''-T'\'' '\''-o'\'' '\''ConnectTimeout=30'\'' '\''-o'\'' '\''ServerAliveInterval=15'\'' '\''-o'\'' '\''ServerAliveCountMax=4'\''' -vFrlptD --itemize-changes --delete-excluded $WORLD/files/motd root@alpha:/var/src/motd

# then sending the pre-activation keys to root@alpha
(
tmp_dir=$(mktemp -d -t krops-keys.XXXXXXXX)
trap 'rm -fR "$tmp_dir"' EXIT
trap 'exit 130' INT TERM HUP
umask 077
cat $WORLD/files/tls.key > "$tmp_dir"/0
/bin/sh -c 'for f do wc -c < "$f" && cat "$f" || exit; done' sh "$tmp_dir"/0 | ssh -l root -T -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 alpha 'set -efu
run() {
  "$@" || failed "$?" "$*"
}
failed() {
  printf '\''populate: failed: %s (exit status %s)\n'\'' "$2" "$1" >&2
  exit "$1"
}
# keep_mount P SHOWN: fails, changing nothing, when P is a mount point:
# `rm -fR` would empty the file system mounted there, then fail on P (it is
# busy). util-linux'\''s mountpoint sees a bind mount too; without it, P'\''s
# device differs from its parent'\''s.
keep_mount() {
  if mountpoint -q "$1" 2>/dev/null || {
    krops_dev=$(stat -c %d "$1" 2>/dev/null) && test "$krops_dev" != "$(stat -c %d "$1/.." 2>/dev/null)"
  }; then
    printf '\''populate: error: %s is a mount point: it is never replaced (unmount it, or deploy elsewhere); nothing in it was changed\n'\'' "$2" >&2
    exit 1
  fi
}
claim() {
  if test -L "$2"; then
    case $1 in
      link) return 0 ;;
      outlink) case $(readlink "$2") in /nix/store/*) return 0 ;; esac ;;
    esac
    printf '\''populate: replacing the symlink at %s\n'\'' "$3" >&2
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
      printf '\''populate: replacing the directory at %s: it belongs to another user\n'\'' "$3" >&2
    else
      keep_mount "$2" "$3"
      printf '\''populate: replacing the directory at %s\n'\'' "$3" >&2
    fi
    # A read-only directory of one'\''s own is removed as a fresh place would
    # be made: rm needs to write to a directory to delete in it (only
    # directories are made writable: a file may have a link outside P).
    test "$(id -u)" = 0 ||
      find "$2" -type d ! -perm -u+w -exec chmod u+w {} + 2>/dev/null || :
    run rm -fR "$2"
  elif test -e "$2"; then
    krops_what="file"
    if test "$1" = file; then
      test -f "$2" && return 0
      krops_what='\''special file'\''
    fi
    printf '\''populate: replacing the %s at %s\n'\'' "$krops_what" "$3" >&2
    run rm -f "$2"
  fi
}
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
    printf '\''krops: error: keys need root on %s, to give them their owners (log in as root, or use sudo)\n'\'' "$krops_on" >&2
    exit 1
  fi
  krops_tmp=
  trap '\''test -z "$krops_tmp" || rm -f -- "$krops_tmp"'\'' EXIT
  trap '\''exit 130'\'' INT TERM HUP
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
        printf '\''krops: error: unknown record %s\n'\'' "$1" >&2
        exit 2
        ;;
    esac
  done
}

# krops_keys_place DIR: DIR exists as a directory (made 0750 root:keys or
# root:root), and is not a symlink (never followed).
krops_keys_place() {
  if test -L "$1"; then
    printf '\''krops: error: the keys directory %s%s is a symlink: it is never followed\n'\'' "$krops_host" "$1" >&2
    exit 1
  fi
  if test -d "$1"; then
    return 0
  fi
  if test -e "$1"; then
    printf '\''krops: error: the keys directory %s%s is not a directory\n'\'' "$krops_host" "$1" >&2
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
      printf '\''krops: warning: the keys directory %s%s is not on a tmpfs or ramfs: its keys are on disk\n'\'' "$krops_host" "$1" >&2
      ;;
  esac
  # Left by a run that was killed: never a live run'\''s (it takes seconds).
  find "$1" -maxdepth 1 -name '\''.krops-keys.tmp.*'\'' -mmin +5 -exec rm -f -- {} + 2>/dev/null || :
  if test -f "$1/.krops-keys" && ! test -L "$1/.krops-keys"; then
    while IFS= read -r krops_old; do
      case $krops_old in
        '\'''\'' | */* | . | ..) continue ;;
      esac
      case ",$2," in
        *",$krops_old,"*) continue ;;
      esac
      if test -e "$1/$krops_old" || test -L "$1/$krops_old"; then
        run rm -f -- "$1/$krops_old"
        printf '\''removed %s\n'\'' "$1/$krops_old"
      fi
    done < "$1/.krops-keys"
  fi
  krops_tmp=$1/.krops-keys.tmp.$$.manifest
  (
    umask 077
    printf '\''%s\n'\'' "$2" | tr '\'','\'' '\''\n'\'' | { grep -v '\''^$'\'' || :; } > "$krops_tmp"
  )
  run mv -fT -- "$krops_tmp" "$1/.krops-keys"
  krops_tmp=
}

krops_keys_key() {
  krops_keys_place "$2"
  if ! IFS= read -r krops_size; then
    printf '\''krops: error: the keys stream ended before key %s\n'\'' "$1" >&2
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
    printf '\''krops: error: key %s: only %s of %s bytes arrived; %s%s is left as it was\n'\'' "$1" "$krops_got" "$krops_size" "$krops_host" "$2/$3" >&2
    exit 1
  fi
  krops_status=installed
  if krops_uid=$(id -u -- "$4" 2>/dev/null) &&
    krops_gid=$(getent group "$5" | cut -d: -f3) && test -n "$krops_gid"; then
    :
  elif test "$krops_strict" = 1; then
    if id -u -- "$4" >/dev/null 2>&1; then
      printf '\''krops: error: key %s: the group %s does not exist on %s\n'\'' "$1" "$5" "$krops_on" >&2
    else
      printf '\''krops: error: key %s: the user %s does not exist on %s\n'\'' "$1" "$4" "$krops_on" >&2
    fi
    exit 3
  else
    krops_uid=0
    krops_gid=0
    krops_status=pending
  fi
  krops_mode=$(printf '\''%o'\'' "0$6")
  krops_dest=$2/$3
  if test -f "$krops_dest" && ! test -L "$krops_dest" &&
    test "$(stat -c '\''%u:%g:%a'\'' -- "$krops_dest")" = "$krops_uid:$krops_gid:$krops_mode" &&
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
  printf '\''%s %s\n'\'' "$krops_status" "$1"
}
krops_keys alpha: root@alpha 0 dir /run/keys tls dir /run/keys/app token key tls /run/keys tls nginx root 0400
'
)
# then nixos-rebuild switch on root@alpha (the target)
ssh -l root -T -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 alpha '/bin/sh -c '\''printf '\''\'\'''\''# use nix-output-monitor: %s\n'\''\'\'''\'' false >&2
NIX_PATH=/var/src nixos-rebuild switch --no-flake
'\'''
# then sending the post-activation keys to root@alpha (and chowning the keys whose user or group the activation made), only when it succeeded
(
tmp_dir=$(mktemp -d -t krops-keys.XXXXXXXX)
trap 'rm -fR "$tmp_dir"' EXIT
trap 'exit 130' INT TERM HUP
umask 077
print-token --host alpha > "$tmp_dir"/0
/bin/sh -c 'for f do wc -c < "$f" && cat "$f" || exit; done' sh "$tmp_dir"/0 | ssh -l root -T -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 alpha 'set -efu
run() {
  "$@" || failed "$?" "$*"
}
failed() {
  printf '\''populate: failed: %s (exit status %s)\n'\'' "$2" "$1" >&2
  exit "$1"
}
# keep_mount P SHOWN: fails, changing nothing, when P is a mount point:
# `rm -fR` would empty the file system mounted there, then fail on P (it is
# busy). util-linux'\''s mountpoint sees a bind mount too; without it, P'\''s
# device differs from its parent'\''s.
keep_mount() {
  if mountpoint -q "$1" 2>/dev/null || {
    krops_dev=$(stat -c %d "$1" 2>/dev/null) && test "$krops_dev" != "$(stat -c %d "$1/.." 2>/dev/null)"
  }; then
    printf '\''populate: error: %s is a mount point: it is never replaced (unmount it, or deploy elsewhere); nothing in it was changed\n'\'' "$2" >&2
    exit 1
  fi
}
claim() {
  if test -L "$2"; then
    case $1 in
      link) return 0 ;;
      outlink) case $(readlink "$2") in /nix/store/*) return 0 ;; esac ;;
    esac
    printf '\''populate: replacing the symlink at %s\n'\'' "$3" >&2
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
      printf '\''populate: replacing the directory at %s: it belongs to another user\n'\'' "$3" >&2
    else
      keep_mount "$2" "$3"
      printf '\''populate: replacing the directory at %s\n'\'' "$3" >&2
    fi
    # A read-only directory of one'\''s own is removed as a fresh place would
    # be made: rm needs to write to a directory to delete in it (only
    # directories are made writable: a file may have a link outside P).
    test "$(id -u)" = 0 ||
      find "$2" -type d ! -perm -u+w -exec chmod u+w {} + 2>/dev/null || :
    run rm -fR "$2"
  elif test -e "$2"; then
    krops_what="file"
    if test "$1" = file; then
      test -f "$2" && return 0
      krops_what='\''special file'\''
    fi
    printf '\''populate: replacing the %s at %s\n'\'' "$krops_what" "$3" >&2
    run rm -f "$2"
  fi
}
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
    printf '\''krops: error: keys need root on %s, to give them their owners (log in as root, or use sudo)\n'\'' "$krops_on" >&2
    exit 1
  fi
  krops_tmp=
  trap '\''test -z "$krops_tmp" || rm -f -- "$krops_tmp"'\'' EXIT
  trap '\''exit 130'\'' INT TERM HUP
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
        printf '\''krops: error: unknown record %s\n'\'' "$1" >&2
        exit 2
        ;;
    esac
  done
}

# krops_keys_place DIR: DIR exists as a directory (made 0750 root:keys or
# root:root), and is not a symlink (never followed).
krops_keys_place() {
  if test -L "$1"; then
    printf '\''krops: error: the keys directory %s%s is a symlink: it is never followed\n'\'' "$krops_host" "$1" >&2
    exit 1
  fi
  if test -d "$1"; then
    return 0
  fi
  if test -e "$1"; then
    printf '\''krops: error: the keys directory %s%s is not a directory\n'\'' "$krops_host" "$1" >&2
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
      printf '\''krops: warning: the keys directory %s%s is not on a tmpfs or ramfs: its keys are on disk\n'\'' "$krops_host" "$1" >&2
      ;;
  esac
  # Left by a run that was killed: never a live run'\''s (it takes seconds).
  find "$1" -maxdepth 1 -name '\''.krops-keys.tmp.*'\'' -mmin +5 -exec rm -f -- {} + 2>/dev/null || :
  if test -f "$1/.krops-keys" && ! test -L "$1/.krops-keys"; then
    while IFS= read -r krops_old; do
      case $krops_old in
        '\'''\'' | */* | . | ..) continue ;;
      esac
      case ",$2," in
        *",$krops_old,"*) continue ;;
      esac
      if test -e "$1/$krops_old" || test -L "$1/$krops_old"; then
        run rm -f -- "$1/$krops_old"
        printf '\''removed %s\n'\'' "$1/$krops_old"
      fi
    done < "$1/.krops-keys"
  fi
  krops_tmp=$1/.krops-keys.tmp.$$.manifest
  (
    umask 077
    printf '\''%s\n'\'' "$2" | tr '\'','\'' '\''\n'\'' | { grep -v '\''^$'\'' || :; } > "$krops_tmp"
  )
  run mv -fT -- "$krops_tmp" "$1/.krops-keys"
  krops_tmp=
}

krops_keys_key() {
  krops_keys_place "$2"
  if ! IFS= read -r krops_size; then
    printf '\''krops: error: the keys stream ended before key %s\n'\'' "$1" >&2
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
    printf '\''krops: error: key %s: only %s of %s bytes arrived; %s%s is left as it was\n'\'' "$1" "$krops_got" "$krops_size" "$krops_host" "$2/$3" >&2
    exit 1
  fi
  krops_status=installed
  if krops_uid=$(id -u -- "$4" 2>/dev/null) &&
    krops_gid=$(getent group "$5" | cut -d: -f3) && test -n "$krops_gid"; then
    :
  elif test "$krops_strict" = 1; then
    if id -u -- "$4" >/dev/null 2>&1; then
      printf '\''krops: error: key %s: the group %s does not exist on %s\n'\'' "$1" "$5" "$krops_on" >&2
    else
      printf '\''krops: error: key %s: the user %s does not exist on %s\n'\'' "$1" "$4" "$krops_on" >&2
    fi
    exit 3
  else
    krops_uid=0
    krops_gid=0
    krops_status=pending
  fi
  krops_mode=$(printf '\''%o'\'' "0$6")
  krops_dest=$2/$3
  if test -f "$krops_dest" && ! test -L "$krops_dest" &&
    test "$(stat -c '\''%u:%g:%a'\'' -- "$krops_dest")" = "$krops_uid:$krops_gid:$krops_mode" &&
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
  printf '\''%s %s\n'\'' "$krops_status" "$1"
}
krops_keys alpha: root@alpha 1 key token /run/keys/app token root root 0600
'
)
