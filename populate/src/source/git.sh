# krops_git P SHOWN URL CEILING DEPTH FETCH RESOLVE REF NAME SUFFIX [EXCLUDE...]:
# makes P a checkout of REF from URL (messages call P SHOWN; git looks for a
# repository no higher than CEILING). DEPTH is 'shallow' or 'full'; FETCH
# 'always' or 'if-missing' (fetchAlways); RESOLVE says how REF is resolved
# (see git.rs): 'hash' (a full commit hash, as krops does), 'origin'
# (origin's ref NAME, then SUFFIX applied: FETCH_HEAD~1), 'origin-or-hash'
# (the same, else an abbreviated hash) or 'checkout' (in the checkout after
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
      printf 'populate: replacing %s: it is not a git checkout of its own\n' "$krops_shown" >&2
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
  # is its own, not `git remote add`'s.
  krops_status=0
  krops_origin=$(git config --get remote.origin.url) || krops_status=$?
  if test "$krops_status" = 1; then
    run git remote add origin "$krops_url"
  elif test "$krops_status" != 0; then
    failed "$krops_status" 'git config --get remote.origin.url'
  elif test "$krops_origin" != "$krops_url"; then
    run git remote set-url origin "$krops_url"
  fi
  if test "$krops_depth" = shallow; then
    krops_depth=--depth=1
  else
    krops_depth=
    # A clone of one branch (`git clone --depth 1 --branch B`, or
    # `--single-branch`) fetches only B: a full source fetches all of
    # origin's branches, as a fresh clone does, or a commit of another
    # branch is never there.
    krops_refspec='+refs/heads/*:refs/remotes/origin/*'
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
      # krops's fetch, for commit hashes: `git fetch --depth=1 origin $hash`
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
        # one, so that asks origin again by name for git's own error.
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
  # edit, a build's output, a repository cloned into it, a submodule's own)
  # goes, in the submodules too, before they move (their update would
  # refuse to overwrite an edit). A checkout with nothing to reset is left
  # alone, so that a deploy with nothing to do writes nothing (`git reset`
  # logs every run in the reflog). Without `.gitmodules` there is no
  # submodule to update, and git's submodule commands take 30 ms each to
  # find that out.
  if ! test "$(git log --format=%H -1 2>/dev/null)" = "$hash"; then
    run git reset --hard "$hash" >&2
  elif ! { git diff-files --quiet --ignore-submodules && git diff-index --quiet --cached --ignore-submodules HEAD --; }; then
    run git reset -q --hard >&2
  fi
  if test -f .gitmodules; then
    run git submodule foreach --quiet --recursive 'git diff-files --quiet --ignore-submodules && git diff-index --quiet --cached --ignore-submodules HEAD -- || git reset -q --hard && git clean -q -dffx' >&2
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
