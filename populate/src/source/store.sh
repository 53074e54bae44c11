# krops_pass_info P: prints the change stamp the last run left in P, if any.
krops_pass_info() {
  cat "$1/.pass_info" 2>/dev/null || :
}
