# --max-failures 1: once 1 of these hosts failed, the hosts after them do not start
# ---- fleet host alpha ----
# batch 1 of 2 (hosts start in name order, 1 at once); tags: web, eu
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

# then nixos-rebuild switch on root@alpha (the target)
ssh -l root -T -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 alpha '/bin/sh -c '\''printf '\''\'\'''\''# use nix-output-monitor: %s\n'\''\'\'''\'' false >&2
NIX_PATH=/var/src nixos-rebuild switch --no-flake
'\'''
# then reboot root@alpha; it prints its boot id and the system its next boot starts
ssh -l root -T -S none alpha '/bin/sh -c '\''set -eu
boot_id=$(cat "$2")
system=$(readlink -f "$1")
printf '\''\'\'''\''boot-id %s\nsystem %s\n'\''\'\'''\'' "$boot_id" "$system"
exec reboot
'\'' krops-deploy-reboot /nix/var/nix/profiles/system /proc/sys/kernel/random/boot_id'
# then over a new ssh connection every second, for up to 300 s after the reboot: until root@alpha answers with a new boot id, running the system its boot was to start
ssh -l root -T -S none alpha '/bin/sh -c '\''set -eu
boot_id=$(cat "$1")
system=$(readlink -f "$2" || :)
printf '\''\'\'''\''boot-id %s\nsystem %s\n'\''\'\'''\'' "$boot_id" "$system"
'\'' krops-deploy-boot-state /proc/sys/kernel/random/boot_id /run/current-system'
# ---- fleet host beta ----
# batch 2 of 2 (hosts start in name order, 1 at once); tags: db
#!/bin/sh
# populate root@beta/etc/krops
# The real run first takes the lock on beta:/etc/krops/.populate-lock (flock, held until the run and its final command end; waiting for it as long as another run holds it). This script takes none.
set -efu

# sentinel check
ssh -l root -T -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 beta 'set -efu
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
krops_sentinel /etc/krops beta:/etc/krops/.populate force no-backup
'

# source l (symlink)
ssh -l root -T -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 beta 'set -efu
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
krops_symlink /etc/krops/l beta:/etc/krops/l x
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
claim file /etc/krops/motd beta:/etc/krops/motd
exec "$0" "$@"
'\'' rsync' -e ''\''ssh'\'' '\''-l'\'' '\''root'\'' '\''-T'\'' '\''-o'\'' '\''ConnectTimeout=30'\'' '\''-o'\'' '\''ServerAliveInterval=15'\'' '\''-o'\'' '\''ServerAliveCountMax=4'\''' -vFrlptD --itemize-changes --delete-excluded $WORLD/files/motd root@beta:/etc/krops/motd

# then nixos-rebuild boot on root@beta (the target)
ssh -l root -T -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 beta '/bin/sh -c '\''printf '\''\'\'''\''# use nix-output-monitor: %s\n'\''\'\'''\'' false >&2
NIX_PATH=/etc/krops nixos-rebuild boot --no-flake
'\'''
# then reboot root@beta; it prints its boot id and the system its next boot starts
ssh -l root -T -S none beta '/bin/sh -c '\''set -eu
boot_id=$(cat "$2")
system=$(readlink -f "$1")
printf '\''\'\'''\''boot-id %s\nsystem %s\n'\''\'\'''\'' "$boot_id" "$system"
exec reboot
'\'' krops-deploy-reboot /nix/var/nix/profiles/system /proc/sys/kernel/random/boot_id'
# then over a new ssh connection every second, for up to 600 s after the reboot: until root@beta answers with a new boot id, running the system its boot was to start
ssh -l root -T -S none beta '/bin/sh -c '\''set -eu
boot_id=$(cat "$1")
system=$(readlink -f "$2" || :)
printf '\''\'\'''\''boot-id %s\nsystem %s\n'\''\'\'''\'' "$boot_id" "$system"
'\'' krops-deploy-boot-state /proc/sys/kernel/random/boot_id /run/current-system'
