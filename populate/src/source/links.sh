# krops_links PATHS P INDEX SHOWN TARGET [P INDEX SHOWN TARGET]...: the
# symlink sources of a batch, each the step INDEX of krops_symlink P SHOWN
# TARGET, without a process a link that is already as it should be: PATHS
# is every P, one a line, and one `find` reads their link texts, and only the links that differ (or are not
# links yet) go through krops_step and krops_symlink. The text is compared
# with NULs as line ends and newlines as \001, so that a line is one link;
# a TARGET holding a newline or \001 is never taken for unchanged. Without
# GNU find's -printf, every link is made again, as before.
krops_links() {
  set +e
  krops_nl='
'
  krops_soh=$(printf '\001')
  IFS=$krops_nl
  # shellcheck disable=SC2086 # one path a line
  krops_table=$(find $1 -maxdepth 0 -printf '%p/%l\0' 2>/dev/null | tr '\n\0' '\001\n')
  shift
  krops_n=0
  for krops_line in $krops_table; do
    krops_n=$((krops_n + 1))
    eval "krops_t$krops_n=\$krops_line"
  done
  unset IFS
  krops_j=1
  while test "$#" -gt 0; do
    krops_p=$1 krops_i=$2 krops_shown=$3 krops_to=$4
    shift 4
    krops_line=
    if test "$krops_j" -le "$krops_n"; then eval "krops_line=\$krops_t$krops_j"; fi
    case $krops_line in
      "$krops_p/"*)
        krops_j=$((krops_j + 1))
        if test "$krops_line" = "$krops_p/$krops_to"; then
          case $krops_to in
            *"$krops_nl"* | *"$krops_soh"*) ;;
            *)
              printf '\036krops-step %s 0\n' "$krops_i"
              continue
              ;;
          esac
        fi
        ;;
    esac
    krops_step "$krops_i" krops_symlink "$krops_p" "$krops_shown" "$krops_to"
  done
}
