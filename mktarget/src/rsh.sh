# krops_rsh SSH [ARG...]: rsync's remote shell (-e) for a sudo target
# whose sudo asks for a password: SSH gets on its stdin the password line
# first (from fd 3, which the tool filled and closed), then rsync's own
# protocol, for krops_sudo on the target (sudo.sh). A relay copies rsync's
# stream after the line; it runs beside SSH, through a FIFO in a private
# temp dir (no data rests there), and is stopped when SSH ends, since rsync
# closes its end only after this shell has exited.
krops_rsh() {
  krops_dir=$(mktemp -d "${TMPDIR:-/tmp}/krops-rsh.XXXXXX") || exit 1
  trap 'rm -fR "$krops_dir"' EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
  mkfifo -m 600 "$krops_dir/in" || exit 1
  exec 4<&0
  { cat <&3 && exec cat <&4; } >"$krops_dir/in" 3<&3 4<&4 &
  krops_relay=$!
  exec 3<&- 4<&-
  "$@" <"$krops_dir/in"
  krops_status=$?
  kill "$krops_relay" 2>/dev/null
  exit "$krops_status"
}
