# Sourced by scripts/demo and scripts/bench: a throwaway ssh target on this
# machine. `throwaway_target WORK ALIAS` starts a real sshd on 127.0.0.1 (a
# free port, its own host key, a generated client key, all in WORK/ssh),
# puts an `ssh` wrapper that knows ALIAS first on PATH, and puts WORK/bin
# first on the target's PATH (for stand-ins). `throwaway_target_stop` ends it.

as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
throwaway_sshd_pid=

# Installs the Debian packages the given programs come from, if missing.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    "${as_root[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q "${missing[@]}"
  fi
  "${as_root[@]}" mkdir -p /run/sshd
}

throwaway_target() {
  local work=$1 alias=$2 user attempt port
  user=$(id -un)
  mkdir -p "$work/bin" "$work/ssh"
  chmod 0755 "$work"
  ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/client_key"
  cp "$work/ssh/client_key.pub" "$work/ssh/authorized_keys"
  for attempt in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 40000))
    cat >"$work/ssh/sshd_config" <<CONFIG
ListenAddress 127.0.0.1
Port $port
HostKey $work/ssh/host_key
PidFile none
AuthorizedKeysFile $work/ssh/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
MaxStartups 100:30:200
SetEnv PATH=$work/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CONFIG
    cat >"$work/ssh/config" <<CONFIG
Host $alias
  HostName 127.0.0.1
  Port $port
  HostKeyAlias $alias
  IdentityFile $work/ssh/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $work/ssh/known_hosts
  BatchMode yes
  LogLevel ERROR
CONFIG
    echo "$alias $(cut -d' ' -f1,2 "$work/ssh/host_key.pub")" >"$work/ssh/known_hosts"
    "${as_root[@]}" /usr/sbin/sshd -D -e -f "$work/ssh/sshd_config" 2>"$work/ssh/sshd.log" &
    throwaway_sshd_pid=$!
    for _ in $(seq 50); do
      if /usr/bin/ssh -F "$work/ssh/config" "$user@$alias" true 2>/dev/null; then
        printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$work/ssh/config" >"$work/bin/ssh"
        chmod +x "$work/bin/ssh"
        export PATH="$work/bin:$PATH"
        echo "sshd listens on 127.0.0.1:$port; ssh knows it as $alias" >&2
        return 0
      fi
      kill -0 "$throwaway_sshd_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$throwaway_sshd_pid" 2>/dev/null || true
    throwaway_sshd_pid=
  done
  cat "$work/ssh/sshd.log" >&2
  echo "error: sshd did not start" >&2
  return 1
}

throwaway_target_stop() {
  [ -z "$throwaway_sshd_pid" ] || "${as_root[@]}" kill "$throwaway_sshd_pid" 2>/dev/null || true
  throwaway_sshd_pid=
}
