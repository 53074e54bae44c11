# krops_filters_above P SHOWN: fails when P or a directory above it holds a
# .rsync-filter (messages call P SHOWN). rsync's -F reads those above a tree
# it syncs alone at P/NAME; the rsync of several trees reads none there, so
# with one the trees sync alone.
krops_filters_above() {
  krops_d=$1
  while :; do
    if test -e "$krops_d/.rsync-filter" || test -L "$krops_d/.rsync-filter"; then
      printf 'populate: %s or a directory above it holds a .rsync-filter, which an rsync of each tree alone reads\n' "$2" >&2
      exit 1
    fi
    test -n "$krops_d" || break
    krops_d=${krops_d%/*}
  done
}
