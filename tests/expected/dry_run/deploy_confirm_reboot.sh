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
ssh -l root -T -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 alpha '/bin/sh -c '\''started=0
why=$( { (
set -eu
umask 077
state=/run/krops dir=/run/krops/WATCHDOG-ID
mkdir -p "$state"
chmod 700 "$state"
for other in "$state"/*/; do
  [ -f "${other}pid" ] && [ ! -e "${other}result" ] || continue
  pid=$(cat "${other}pid" 2>/dev/null) || continue
  other=${other%/}
  if kill -0 "$pid" 2>/dev/null && tr '\''\'\'''\''\0'\''\'\'''\'' '\''\'\'''\'' '\''\'\'''\'' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "${other##*/}"; then
    echo "the watchdog of an earlier deploy ($other) has not decided yet: it rolls that deploy back unless confirmed, which would undo this one; nothing was activated (its record: $other/log; try again once it has decided)" >&2
    exit 4
  fi
done
mkdir "$dir"
if [ -e /run/current-system ]; then readlink -f /run/current-system; fi >"$dir/previous-system"
if [ -L /nix/var/nix/profiles/system ]; then readlink /nix/var/nix/profiles/system; fi >"$dir/previous-generation"
set -- "$dir" 30 switch "$$" /run/current-system /nix/var/nix/profiles/system WATCHDOG-ID "$state"
watchdog='\''\'\'''\''dir=$1 timeout=$2 operation=$3 watch=$4 current=$5 profile=$6 id=$7 state=$8
log() { printf '\''\'\'''\''\'\''\'\'''\'''\''\'\'''\''%s %s\n'\''\'\'''\''\'\''\'\'''\'''\''\'\'''\'' "$(date '\''\'\'''\''\'\''\'\'''\'''\''\'\'''\''+%Y-%m-%dT%H:%M:%S'\''\'\'''\''\'\''\'\'''\'''\''\'\'''\'')" "$*" >>"$dir/log"; }
# The state'\''\'\'''\''\'\''\'\'''\'''\''\'\'''\''s log first: whoever reads DIR/result finds the line there too.
finish() {
  printf '\''\'\'''\''\'\''\'\'''\'''\''\'\'''\''%s %s %s\n'\''\'\'''\''\'\''\'\'''\'''\''\'\'''\'' "$(date '\''\'\'''\''\'\''\'\'''\'''\''\'\'''\''+%Y-%m-%dT%H:%M:%S'\''\'\'''\''\'\''\'\'''\'''\''\'\'''\'')" "$id" "$*" >>"$state/log"
  printf '\''\'\'''\''\'\''\'\'''\'''\''\'\'''\''%s\n'\''\'\'''\''\'\''\'\'''\'''\''\'\'''\'' "$*" >"$dir/result.new" && mv -f "$dir/result.new" "$dir/result"
  if command -v logger >/dev/null 2>&1; then logger -t krops-watchdog -- "$id $*" || :; fi
}
# Who runs it, for a later deploy to tell whether it still decides.
printf '\''\'\'''\''\'\''\'\'''\'''\''\'\'''\''%s\n'\''\'\'''\''\'\''\'\'''\'''\''\'\'''\'' "$$" >"$dir/pid"
log "krops watchdog $id: $operation, rolled back unless confirmed within $timeout s after activation"
ended=
while [ ! -L "$dir/verdict" ]; do
  # Its directory gone (removed by hand, or a new boot'\''\'\'''\''\'\''\'\'''\'''\''\'\'''\''s /run): nothing is
  # left to decide, and no verdict could be written.
  [ -d "$dir" ] || exit 1
  now=$(date +%s)
  if [ -z "$ended" ]; then
    if [ -e "$dir/activated" ] || ! kill -0 "$watch" 2>/dev/null; then
      ended=$now
      log "activation over: waiting $timeout s for the confirmation"
    fi
  fi
  if [ -n "$ended" ] && [ $((now - ended)) -ge "$timeout" ]; then
    ln -s rollback "$dir/verdict" 2>/dev/null || [ -L "$dir/verdict" ] || exit 1
  else
    sleep 1
  fi
done
verdict=$(readlink "$dir/verdict")
if [ "$verdict" = confirmed ]; then
  finish confirmed
  # Gone at once, so a retry of the confirmation finds it in the log and
  # never in a directory half removed (its verdict gone, the rest not yet).
  mv "$dir" "$dir.gone" && rm -rf "$dir.gone"
  exit 0
fi
previous=$(cat "$dir/previous-system")
generation=$(cat "$dir/previous-generation")
if [ -e "$current" ]; then running=$(readlink -f "$current"); else running=; fi
if [ -n "$previous" ] && [ "$running" = "$previous" ]; then
  finish "unchanged the running system is still $previous"
  exit 0
fi
rollback() {
  if [ "$operation" = switch ] && { [ -z "$generation" ] || [ "$(readlink "$profile")" != "$generation" ]; }; then
    how='\''\'\'''\''\'\''\'\'''\'''\''\'\'''\''nixos-rebuild switch --rollback'\''\'\'''\''\'\''\'\'''\'''\''\'\'''\''
    log "no confirmation: rolling back with $how"
    # --no-flake: the machine'\''\'\'''\''\'\''\'\'''\'''\''\'\'''\''s own flake (/etc/nixos/flake.nix) has no say.
    nixos-rebuild switch --rollback --no-flake
  elif [ -n "$previous" ]; then
    how="$previous/bin/switch-to-configuration test"
    log "no confirmation: activating the previous system again with $how"
    "$previous/bin/switch-to-configuration" test
  else
    how="no previous system ($current did not exist)"
    return 1
  fi
}
rollback </dev/null >>"$dir/log" 2>&1
status=$?
if [ "$status" = 0 ]; then
  finish "rolled-back $how"
else
  finish "failed $how: exit status $status"
fi
'\''\'\'''\''
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
  systemd-run --quiet --collect --unit=krops-watchdog-WATCHDOG-ID --setenv=PATH="$PATH" /bin/sh -c "$watchdog" krops-watchdog "$@"
else
  if command -v setsid >/dev/null 2>&1; then detach=setsid; else detach=; fi
  $detach nohup /bin/sh -c "$watchdog" krops-watchdog "$@" </dev/null >>"$dir/log" 2>&1 &
fi
)
} 2>&1 >/dev/null ) || started=$?
why=$(printf '\''\'\'''\''%s'\''\'\'''\'' "$why" | tr '\''\'\'''\''\n'\''\'\'''\'' '\''\'\'''\'' '\''\'\'''\'')
if [ "$started" = 4 ]; then
  printf '\''\'\'''\''krops-deploy: error: %s\n'\''\'\'''\'' "${why% }" >&2
  exit 70
fi
if [ "$started" != 0 ]; then
  printf '\''\'\'''\''krops-deploy: error: cannot start the confirmation watchdog in %s (it needs root%s): nothing was activated\n'\''\'\'''\'' /run/krops "${why:+: ${why% }}" >&2
  exit 70
fi
(
printf '\''\'\'''\''# use nix-output-monitor: %s\n'\''\'\'''\'' false >&2
NIX_PATH=/var/src nixos-rebuild switch --no-flake

)
status=$?
true 2>/dev/null >/run/krops/WATCHDOG-ID/activated
exit "$status"
'\'''
# then confirm over a new ssh connection, retried for 30 s (unless one is made, the watchdog rolls back)
ssh -l root -T -S none alpha '/bin/sh -c '\''echo krops-confirm-connected
dir=/run/krops/WATCHDOG-ID
if [ -d "$dir" ] && [ ! -L "$dir/verdict" ]; then
  exec 3<&0
  if setsid -w true >/dev/null 2>&1; then detach='\''\'\'''\''setsid -w'\''\'\'''\''; else detach=; fi
  $detach /bin/sh -c true krops-check </dev/null >&2 3<&- &
  check=$!
  { trap '\''\'\'''\'''\''\'\'''\'' TERM; while read -r _ <&3; do :; done; (sleep 3; kill -KILL -"$check" || kill -KILL "$check") & kill -TERM -"$check" || kill -TERM "$check"; kill -TERM $$; } </dev/null >/dev/null 2>&1 &
  watcher=$!
  exec 3<&-
  status=0
  wait "$check" || status=$?
  kill -KILL "$watcher" 2>/dev/null
  kill -KILL -"$check" 2>/dev/null
  if [ "$status" != 0 ]; then
    ln -s rollback "$dir/verdict" 2>/dev/null
    exit 10
  fi
  ln -s confirmed "$dir/verdict" 2>/dev/null && exit 0
fi
[ "$(readlink "$dir/verdict" 2>/dev/null)" = confirmed ] && exit 0
grep -q '\''\'\'''\''^[^ ]* '\''\'\'''\''WATCHDOG-ID'\''\'\'''\'' confirmed$'\''\'\'''\'' /run/krops/log 2>/dev/null && exit 0
[ -d "$dir" ] || exit 12
exit 11
'\'''
# then reboot root@alpha; it prints its boot id and the system its next boot starts
ssh -l root -T -S none alpha '/bin/sh -c '\''set -eu
boot_id=$(cat "$2")
system=$(readlink -f "$1")
printf '\''\'\'''\''boot-id %s\nsystem %s\n'\''\'\'''\'' "$boot_id" "$system"
exec reboot
'\'' krops-deploy-reboot /nix/var/nix/profiles/system /proc/sys/kernel/random/boot_id'
# then over a new ssh connection every second, for up to 600 s after the reboot: until root@alpha answers with a new boot id, running the system its boot was to start
ssh -l root -T -S none alpha '/bin/sh -c '\''set -eu
boot_id=$(cat "$1")
system=$(readlink -f "$2" || :)
printf '\''\'\'''\''boot-id %s\nsystem %s\n'\''\'\'''\'' "$boot_id" "$system"
'\'' krops-deploy-boot-state /proc/sys/kernel/random/boot_id /run/current-system'
# then the check on root@alpha after the reboot, over a new ssh connection (up to 600 s)
ssh -l root -T -S none alpha '/bin/sh -c true krops-deploy-check'
