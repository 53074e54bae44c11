# krops_sudo COMMAND [ARG...]: runs COMMAND as root with sudo on a target
# whose sudo asks for a password (README: A sudo password). The password
# comes first on stdin, one line, before COMMAND's own input (rsync's
# protocol, a pipe's output): it is read exactly (`read` takes one byte at
# a time from a pipe), given to `sudo -S -v` alone on a pipe of its own (a
# wrong one fails at once, sudo finding no second line, instead of eating
# COMMAND's input), and COMMAND then runs with `sudo -n` on the timestamp
# that check left (keyed to this shell: both are its children, never
# exec'ed). The password is a variable of this shell only: no argv, no
# environment.
krops_sudo() {
  if ! IFS= read -r krops_password; then
    echo "krops: no sudo password came on stdin" >&2
    exit 1
  fi
  if ! printf "%s\n" "$krops_password" | sudo -S -p "" -v; then
    krops_password=
    echo "krops: sudo on $(hostname 2>/dev/null || echo the target) refused the password of $(id -un 2>/dev/null)" >&2
    exit 1
  fi
  krops_password=
  if ! sudo -n true 2>/dev/null; then
    echo "krops: sudo on $(hostname 2>/dev/null || echo the target) took the password but keeps no timestamp for the command after it (its sudoers sets timestamp_timeout=0?): give $(id -un 2>/dev/null) a NOPASSWD rule or a timestamp_timeout above 0" >&2
    exit 1
  fi
  sudo -n "$@"
  krops_status=$?
  exit "$krops_status"
}
