# krops_pipe P SHOWN TMP: receives a pipe's output on stdin, its size on
# the first line, then the bytes, into TMP.$$ beside P, and moves it into
# place only when all of it arrived (krops's `cat > P` left a partial file
# when the connection or the command broke). An existing P's mode and owner
# carry over, as they did with krops's `cat > P`. Messages call P SHOWN.
krops_pipe() {
  claim file "$1" "$2"
  IFS= read -r size
  tmp=$3.$$
  trap 'rm -f "$tmp"' EXIT
  rm -f "$tmp"
  run tee -- "$tmp" >/dev/null
  got=$(wc -c < "$tmp")
  if test "$got" -ne "$size"; then
    printf 'populate: only %s of %s bytes arrived; %s is left as it was\n' "$got" "$size" "$1" >&2
    exit 1
  fi
  if test -f "$1"; then
    run chmod --reference="$1" "$tmp"
    chown --reference="$1" "$tmp" 2>/dev/null || :
  fi
  run mv -fT "$tmp" "$1"
}
