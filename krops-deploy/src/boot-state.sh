# Run on the target over a new ssh connection by `krops-deploy --reboot`
# (krops-deploy/src/reboot.rs) while it waits for the target to come back:
# prints its boot id and the system it runs.
# $1: the boot id file; $2: the running system's link.
set -eu
boot_id=$(cat "$1")
system=$(readlink -f "$2" || :)
printf 'boot-id %s\nsystem %s\n' "$boot_id" "$system"
