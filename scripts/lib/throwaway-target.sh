# Sourced by scripts/demo and scripts/bench: throwaway ssh targets on this
# machine. `throwaway_target WORK ALIAS` starts a real sshd on 127.0.0.1 (a
# free port, its own host key, logging at VERBOSE to WORK/ssh/ALIAS/sshd.log),
# puts an `ssh` wrapper that knows ALIAS first on PATH, and puts WORK/bin
# first on the target's PATH (for stand-ins). Call it again with the same
# WORK and another ALIAS for more targets, each its own sshd on its own
# port, all known to the same wrapper and reached with the same client key.
# `throwaway_handshakes [ALIAS...]` counts the logins the sshd of these
# aliases (all by default) have accepted so far, `throwaway_sessions
# [ALIAS...]` the sessions (commands, one a channel: "Starting session"
# lines, logged at VERBOSE) they started; `throwaway_target_stop`
# ends every sshd started. Sessions get SHLVL=1, so bash does not source
# the login user's ~/.bashrc for them: on this kind of machine root's runs
# `pyenv rehash`, which costs ~90 ms and takes a machine-wide lock at every
# login, which no NixOS target does.

as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
throwaway_sshd_pids=()
throwaway_work=

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
  local work=$1 alias=$2 user attempt port pid dir
  user=$(id -un)
  dir="$work/ssh/$alias"
  mkdir -p "$work/bin" "$dir"
  chmod 0755 "$work"
  throwaway_work=$work
  # The client key and the wrapper's ssh config are shared by all targets.
  if [ ! -e "$work/ssh/client_key" ]; then
    ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/client_key"
    : >"$work/ssh/authorized_keys"
    cat "$work/ssh/client_key.pub" >>"$work/ssh/authorized_keys"
    : >"$work/ssh/config"
    : >"$work/ssh/known_hosts"
  fi
  ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
  echo "$alias $(cut -d' ' -f1,2 "$dir/host_key.pub")" >>"$work/ssh/known_hosts"
  # SHLVL=1 in every session: the user's login shell, if bash, then skips
  # ~/.bashrc, which Debian's bash reads for ssh commands; what a
  # developer's ~/.bashrc does there (pyenv init, say: half a second a
  # session) is this machine's cost, not krops's, and not a target's.
  for attempt in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 40000))
    cat >"$dir/sshd_config" <<CONFIG
ListenAddress 127.0.0.1
Port $port
HostKey $dir/host_key
PidFile none
LogLevel VERBOSE
AuthorizedKeysFile $work/ssh/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
MaxStartups 100:30:200
SetEnv PATH=$work/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SHLVL=1
CONFIG
    cat >"$dir/client_config" <<CONFIG
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
    "${as_root[@]}" /usr/sbin/sshd -D -e -f "$dir/sshd_config" 2>"$dir/sshd.log" &
    pid=$!
    for _ in $(seq 50); do
      if /usr/bin/ssh -F "$dir/client_config" "$user@$alias" true 2>/dev/null; then
        throwaway_sshd_pids+=("$pid")
        cat "$dir/client_config" >>"$work/ssh/config"
        if [ ! -e "$work/bin/ssh" ]; then
          printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$work/ssh/config" >"$work/bin/ssh"
          chmod +x "$work/bin/ssh"
          export PATH="$work/bin:$PATH"
        fi
        echo "sshd listens on 127.0.0.1:$port; ssh knows it as $alias" >&2
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    "${as_root[@]}" kill "$pid" 2>/dev/null || true
  done
  cat "$dir/sshd.log" >&2
  echo "error: sshd did not start" >&2
  return 1
}

# Prints how many logins the sshd of the given aliases (default: all)
# accepted so far, summed.
throwaway_handshakes() {
  local logs=() alias
  if [ "$#" -eq 0 ]; then
    logs=("$throwaway_work"/ssh/*/sshd.log)
  else
    for alias in "$@"; do logs+=("$throwaway_work/ssh/$alias/sshd.log"); done
  fi
  cat "${logs[@]}" | grep -c 'Accepted publickey' || true
}

# Prints how many sessions (one a command or shell: a channel of a
# connection, or the only one of a connection of its own) the sshd of the
# given aliases (default: all) started so far, summed.
throwaway_sessions() {
  local logs=() alias
  if [ "$#" -eq 0 ]; then
    logs=("$throwaway_work"/ssh/*/sshd.log)
  else
    for alias in "$@"; do logs+=("$throwaway_work/ssh/$alias/sshd.log"); done
  fi
  cat "${logs[@]}" | grep -c 'Starting session: ' || true
}

throwaway_target_stop() {
  local pid
  for pid in "${throwaway_sshd_pids[@]}"; do
    "${as_root[@]}" kill "$pid" 2>/dev/null || true
  done
  throwaway_sshd_pids=()
}
