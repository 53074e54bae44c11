# The guard of a driver's final command (see lock.rs), run on the target as
#   /bin/sh -c GUARD krops-lock DIR RUN WIDTH COMMAND...
# It runs COMMAND under the lock of the run RUN on DIR, for as long as
# COMMAND runs, even when the run's own lock process ends first (its tool
# stopped or killed while COMMAND goes on): the lock process, once let go,
# waits for DIR/.populate-lock-final, which this script holds while COMMAND
# runs. Should the lock process be gone already, this script takes the lock
# itself; should another run hold it, COMMAND does not run. It writes the
# holder's line of the lock file (WIDTH characters and a newline) to say
# that the run's final command holds the lock now. Nothing goes to stdout:
# that is COMMAND's.
set -u
krops_d=$1 krops_run=$2 krops_w=$3
shift 3
krops_l=$krops_d/.populate-lock
krops_f=$krops_d/.populate-lock-final
krops_fail() {
  printf 'populate: error: lock on %s: %s; the final command did not run\n' "$krops_d" "$*" >&2
  exit 1
}
krops_now() { date '+%Y-%m-%d %H:%M:%S %Z'; }
# The holder's line, without the spaces that pad it.
krops_holder() {
  krops_h=
  if ! test -L "$krops_l"; then krops_h=$(head -n 1 -- "$krops_l" 2>/dev/null) || krops_h=; fi
  krops_h=${krops_h%"${krops_h##*[! ]}"}
}
# Never followed, like the lock file.
if test -L "$krops_f"; then rm -f -- "$krops_f" || krops_fail "cannot remove the symlink at $krops_f"; fi
(umask 022 && : >>"$krops_f") 2>/dev/null
if ! (exec 8<"$krops_f") 2>/dev/null; then krops_fail "cannot open $krops_f"; fi
exec 8<"$krops_f"
# Waits only while the run's lock process ends (it holds this file from the
# moment it is let go until it has let go of the lock).
flock 8 || krops_fail "flock failed on $krops_f"
if test -L "$krops_l" || ! (exec 7<"$krops_l") 2>/dev/null; then
  krops_fail "$krops_l is gone"
fi
exec 7<"$krops_l"
krops_holder
if flock -n 7; then
  # The run's lock process has ended (its tool went before this began):
  # the lock is free, and this command holds it now, on fd 7.
  case $krops_h in
    "$krops_run "*) ;;
    *) krops_h="$krops_run since $(krops_now)" ;;
  esac
  krops_h="$krops_h; its tool has ended"
else
  exec 7<&-
  case $krops_h in
    "$krops_run "*) ;;
    *) krops_fail "another run holds it now (${krops_h:-it has not said who})" ;;
  esac
fi
printf "%-$krops_w.${krops_w}s\\n" "$krops_h; running its final command since $(krops_now)" 1<>"$krops_l" 2>/dev/null
# Without a terminal, what COMMAND prints passes through relays that, once
# nobody reads it (the tool's ssh stopped), drop it: a write to a closed
# pipe would kill COMMAND (SIGPIPE), a rebuild half done. With a terminal,
# its hangup stops COMMAND anyway.
krops_relay() {
  trap '' PIPE
  cat 2>/dev/null || cat >/dev/null 2>&1
}
krops_t=
if ! test -t 1 && ! test -t 2 && krops_t=$(mktemp -d 2>/dev/null) &&
  mkfifo "$krops_t/out" "$krops_t/err" 2>/dev/null; then
  krops_relay <"$krops_t/out" 7<&- 8<&- &
  krops_o=$!
  krops_relay <"$krops_t/err" >&2 7<&- 8<&- &
  krops_e=$!
  exec 5>"$krops_t/out" 6>"$krops_t/err"
  rm -rf -- "$krops_t"
  "$@" >&5 2>&6 5>&- 6>&- 7<&- 8<&-
  krops_status=$?
  # All of it passed on before this ends.
  exec 5>&- 6>&-
  wait "$krops_o" "$krops_e"
else
  if test -n "$krops_t"; then rm -rf -- "$krops_t"; fi
  "$@" 7<&- 8<&-
  krops_status=$?
fi
exec 7<&- 8<&-
# Killed by a signal: so is this script, as without it.
if test "$krops_status" -gt 128 && krops_sig=$(kill -l "$krops_status" 2>/dev/null); then
  trap - "$krops_sig" 2>/dev/null
  kill -s "$krops_sig" "$$" 2>/dev/null
fi
exit "$krops_status"
