#!/bin/sh
# populate root@origin$WORLD/local-src
# The real run first takes the lock on $WORLD/local-src/.populate-lock (flock, held until the run and its final command end; waiting for it as long as another run holds it). This script takes none.
set -efu

# sentinel check
/bin/sh -c 'set -efu
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
krops_sentinel $WORLD/local-src $WORLD/local-src/.populate check no-backup
'

# source config (file)
/bin/sh -c 'set -efu
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
claim tree $WORLD/local-src/config $WORLD/local-src/config
'
rsync -e ''\''ssh'\'' '\''-l'\'' '\''root'\'' '\''-T'\''' -vFrlptD --itemize-changes --delete-excluded $WORLD/machines/ $WORLD/local-src/config

# source nixpkgs (git)
/bin/sh -c 'set -efu
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
# krops_git P SHOWN URL CEILING DEPTH FETCH RESOLVE REF NAME SUFFIX [EXCLUDE...]:
# makes P a checkout of REF from URL (messages call P SHOWN; git looks for a
# repository no higher than CEILING). DEPTH is '\''shallow'\'' or '\''full'\''; FETCH
# '\''always'\'' or '\''if-missing'\'' (fetchAlways); RESOLVE says how REF is resolved
# (see git.rs): '\''hash'\'' (a full commit hash, as krops does), '\''origin'\''
# (origin'\''s ref NAME, then SUFFIX applied: FETCH_HEAD~1), '\''origin-or-hash'\''
# (the same, else an abbreviated hash) or '\''checkout'\'' (in the checkout after
# `git fetch origin`). `git clean` keeps each EXCLUDE pattern.
krops_git() {
  krops_p=$1
  krops_shown=$2
  krops_url=$3
  GIT_CEILING_DIRECTORIES=$4
  krops_depth=$5
  krops_fetch=$6
  krops_resolve=$7
  krops_ref=$8
  krops_name=$9
  krops_suffix=${10}
  shift 10
  # git finds a repository by looking up from where it runs: from a `.git`
  # that is no repository (an empty one, a skeleton a file source left) it
  # would find one around the target path (an etckeeper /etc, a home in
  # git) and reset and clean that. So no variable from the caller may name
  # a repository (a git hook sets GIT_DIR), git never looks above P, P
  # counts as a checkout only when git finds its repository at exactly
  # P/.git (a `.git` symlink or `gitdir:` file leads elsewhere) and P is its
  # work tree (`core.worktree` may name another), and from then on every git
  # command is told its repository and work tree.
  unset GIT_DIR GIT_WORK_TREE GIT_IMPLICIT_WORK_TREE GIT_COMMON_DIR GIT_INDEX_FILE GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES GIT_GRAFT_FILE GIT_SHALLOW_FILE GIT_NO_REPLACE_OBJECTS GIT_REPLACE_REF_BASE GIT_PREFIX GIT_CONFIG GIT_NAMESPACE
  export GIT_CEILING_DIRECTORIES
  if ! { test -d "$krops_p/.git" && ! test -L "$krops_p/.git" &&
    krops_checkout=$(cd -P "$krops_p/.git" && pwd -P && cd .. && pwd -P) &&
    test "$(cd "$krops_p" && git rev-parse --absolute-git-dir --show-toplevel)" = "$krops_checkout"; }; then
    if test -e "$krops_p"; then
      keep_mount "$krops_p" "$krops_shown"
      printf '\''populate: replacing %s: it is not a git checkout of its own\n'\'' "$krops_shown" >&2
    fi
    run rm -fR "$krops_p"
  fi
  if ! test -e "$krops_p"; then
    if test "$krops_depth" = shallow; then
      run git init "$krops_p" >&2
    else
      run git clone --recurse-submodules "$krops_url" "$krops_p" >&2
    fi
  fi
  # shellcheck disable=SC2164 # run exits when cd fails
  run cd "$krops_p"
  GIT_DIR=$krops_p/.git
  GIT_WORK_TREE=$krops_p
  export GIT_DIR GIT_WORK_TREE
  # `git config --get` exits 1 for a key that is not set: any other failure
  # is its own, not `git remote add`'\''s.
  krops_status=0
  krops_origin=$(git config --get remote.origin.url) || krops_status=$?
  if test "$krops_status" = 1; then
    run git remote add origin "$krops_url"
  elif test "$krops_status" != 0; then
    failed "$krops_status" '\''git config --get remote.origin.url'\''
  elif test "$krops_origin" != "$krops_url"; then
    run git remote set-url origin "$krops_url"
  fi
  if test "$krops_depth" = shallow; then
    krops_depth=--depth=1
  else
    krops_depth=
    # A clone of one branch (`git clone --depth 1 --branch B`, or
    # `--single-branch`) fetches only B: a full source fetches all of
    # origin'\''s branches, as a fresh clone does, or a commit of another
    # branch is never there.
    krops_refspec='\''+refs/heads/*:refs/remotes/origin/*'\''
    if ! test "$(git config --get-all remote.origin.fetch)" = "$krops_refspec"; then
      run git config --replace-all remote.origin.fetch "$krops_refspec"
    fi
    # A checkout an earlier deploy fetched shallow has one commit: `main~1`
    # and friends need the history shallow = false promises.
    krops_shallow=$(run git rev-parse --is-shallow-repository)
    if test "$krops_shallow" = true; then
      run git fetch --unshallow origin >&2
    fi
  fi
  # $hash: the commit to check out, fetched as needed.
  case $krops_resolve in
    hash)
      # krops'\''s fetch, for commit hashes: `git fetch --depth=1 origin $hash`
      # when shallow, else everything.
      hash=$krops_ref
      if ! test "$(git log --format=%H -1 2>/dev/null)" = "$hash"; then
        if test "$krops_fetch" = always || ! git log -1 "$hash" >/dev/null 2>&1; then
          if test -n "$krops_depth"; then
            run git fetch --depth=1 origin "$hash" >&2
          else
            run git fetch origin >&2
          fi
        fi
      fi
      ;;
    origin)
      run git fetch ${krops_depth:+"$krops_depth"} origin "$krops_name" >&2
      hash=$(run git rev-parse --verify "FETCH_HEAD$krops_suffix^{commit}")
      ;;
    origin-or-hash)
      if git fetch ${krops_depth:+"$krops_depth"} origin "$krops_name" >/dev/null 2>&1; then
        hash=$(run git rev-parse --verify "FETCH_HEAD$krops_suffix^{commit}")
      else
        # Not on origin: an abbreviated hash, looked up in the checkout and
        # fetched as krops fetches a hash. A shallow fetch cannot ask for
        # one, so that asks origin again by name for git'\''s own error.
        if test -n "$krops_depth"; then
          if ! git rev-parse --quiet --verify "$krops_ref^{commit}" >/dev/null; then
            run git fetch --depth=1 origin "$krops_name" >&2
          fi
        elif test "$krops_fetch" = always || ! git rev-parse --quiet --verify "$krops_ref^{commit}" >/dev/null; then
          run git fetch origin >&2
        fi
        hash=$(run git rev-parse --verify "$krops_ref^{commit}")
      fi
      ;;
    checkout)
      # Not `REF^{commit}` in one: `:/REGEX` would take the peel into its
      # regex. (Never shallow: such a ref is refused then.)
      run git fetch origin >&2
      hash=$(run git rev-parse --verify "$krops_ref")
      hash=$(run git rev-parse --verify "$hash^{commit}")
      ;;
    *)
      failed 2 "krops_git: no such way to resolve a ref: $krops_resolve"
      ;;
  esac
  # The source owns P: what was changed, added or left there since (an
  # edit, a build'\''s output, a repository cloned into it, a submodule'\''s own)
  # goes, in the submodules too, before they move (their update would
  # refuse to overwrite an edit). A checkout with nothing to reset is left
  # alone, so that a deploy with nothing to do writes nothing (`git reset`
  # logs every run in the reflog). Without `.gitmodules` there is no
  # submodule to update, and git'\''s submodule commands take 30 ms each to
  # find that out.
  if ! test "$(git log --format=%H -1 2>/dev/null)" = "$hash"; then
    run git reset --hard "$hash" >&2
  elif ! { git diff-files --quiet --ignore-submodules && git diff-index --quiet --cached --ignore-submodules HEAD --; }; then
    run git reset -q --hard >&2
  fi
  if test -f .gitmodules; then
    run git submodule foreach --quiet --recursive '\''git diff-files --quiet --ignore-submodules && git diff-index --quiet --cached --ignore-submodules HEAD -- || git reset -q --hard && git clean -q -dffx'\'' >&2
    run git submodule update --init --recursive >&2
  fi
  # `-e PATTERN` for each EXCLUDE.
  krops_n=$#
  for krops_pattern in "$@"; do
    set -- "$@" -e "$krops_pattern"
  done
  shift "$krops_n"
  run git clean -dffx "$@" >&2
}
claim dir $WORLD/local-src/nixpkgs $WORLD/local-src/nixpkgs
krops_git $WORLD/local-src/nixpkgs $WORLD/local-src/nixpkgs https://github.com/NixOS/nixpkgs $WORLD/local-src full if-missing origin nixos-24.05 nixos-24.05 '\'''\''
'

# then nix build of the flake's system; it prints the system as JSON, its store path is the output
nix --extra-experimental-features 'nix-command flakes' build --no-link --json --keep-going 'path:$WORLD/local-src/config#nixosConfigurations."web1".config.system.build.toplevel' --override-input nixpkgs git+file://$WORLD/local-src/nixpkgs --no-write-lock-file
