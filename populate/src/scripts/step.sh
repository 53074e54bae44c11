# krops_step INDEX COMMAND...: one step of a batch. Runs COMMAND in a
# subshell with set -e, its stderr with its stdout, then prints
# '\036krops-step INDEX STATUS'; after a failure the batch ends (status 0:
# the marker says how the step ended). The batch goes on with set +e.
krops_step() {
  krops_index=$1
  shift
  set +e
  (
    set -e
    "$@"
  ) 2>&1
  krops_s=$?
  printf '\036krops-step %s %s\n' "$krops_index" "$krops_s"
  test "$krops_s" = 0 || exit 0
}
