# krops_derivation P SHOWN TEXT: builds the Nix expression TEXT with its
# out link at P (messages call P SHOWN), nix-build's output to stderr.
krops_derivation() {
  claim outlink "$1" "$2"
  run nix-build -E "$3" -o "$1" >&2
}
