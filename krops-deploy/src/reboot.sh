# Run on the target by `krops-deploy --reboot` (krops-deploy/src/reboot.rs),
# after a successful boot or switch: prints the boot id and the system the
# next boot starts (what the system profile now points at: the system just
# built), then reboots. The deployer compares both with what the target
# says once it is back.
# $1: the system profile; $2: the boot id file.
set -eu
boot_id=$(cat "$2")
system=$(readlink -f "$1")
printf 'boot-id %s\nsystem %s\n' "$boot_id" "$system"
exec reboot
