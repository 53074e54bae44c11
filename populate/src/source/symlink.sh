# krops_symlink P SHOWN TARGET: the symlink P -> TARGET (messages call P
# SHOWN); '--': TARGET may begin with '-'.
krops_symlink() {
  claim link "$1" "$2"
  run ln -fnsT -- "$3" "$1"
}
