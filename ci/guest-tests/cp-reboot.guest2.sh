#!/bin/sh
# Boots 2 and 3 of the persistence test (run by cp-reboot.host.sh): after a
# guest reboot, and after a restart of the backend, the store mounts again
# with its capability files, owners and modes; the controller lists the
# same VSAs, tokens and attachments; the application's data is there; the
# stored capabilities still attach; and no DMA window of the boot before
# is left.
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

add_user alice 1001
add_user bob 1002
echo "boot ${VSIC_BOOT:-?}"

store=/var/lib/vsic
vsicctl store mount
# The guest of the boot before is gone: none of its DMA windows is left
# (alice's VSIC 0 had some), and every VSIC is open for this boot's kernel
# until the control plane hands it to a user.
for n in 0 1 2; do
    [ "$(dma_windows_of $n)" -eq 0 ] || fail "VSIC $n kept DMA windows from the boot before"
    [ "$(dma_mode_of $n)" = open ] || fail "VSIC $n is $(dma_mode_of $n) at boot, not open for the kernel"
done
[ -r $store/list.json ] || fail "the store lost list.json"
ls -ln $store/caps/*/ >/tmp/caps.ls
cmp /tmp/caps.ls $store/caps.ls || { cat /tmp/caps.ls; fail "capability files, owners or modes changed"; }
[ "$(stat -c '%u %a' $store/caps/alice/data.cap)" = "1001 600" ] || fail "alice's capability file changed owner or mode"

vsicctl list --json >/tmp/list.json
cmp /tmp/list.json $store/list.json || { cat /tmp/list.json; fail "the controller's VSAs, tokens or attachments changed"; }
echo "the controller lists the same VSAs, tokens and attachments"

start_service
vsicctl vsic bind --vsic 0 --vfio --user alice
vsicctl vsic bind --vsic 1 --vfio --user bob
# Still attached from boot 1: the data is there.
as_user 1001 "vsic-check verify vsic:0 --slot 1 --len 8M --seed 42" || fail "alice's data is gone"
# The stored capabilities still work: alice re-attaches, bob attaches his
# read-only one and reads alice's data.
as_user 1001 "vsicctl request-detach --vsic 0 --slot 1"
as_user 1001 "vsicctl request-attach --vsic 0 --cap $store/caps/alice/data.cap --slot 1"
as_user 1002 "vsicctl request-attach --vsic 1 --cap $store/caps/bob/alice-ro.cap --slot 1 --read-only"
as_user 1002 "vsic-check verify vsic:1 --slot 1 --len 8M --seed 42" || fail "bob cannot read through his capability"
as_user 1002 "vsicctl request-detach --vsic 1 --slot 1"

# Leave the controller as boot 1 left it, for the next boot.
vsicctl list --json >/tmp/list.json
cmp /tmp/list.json $store/list.json || { cat /tmp/list.json; fail "the controller state drifted"; }
umount $store
echo "ok: boot ${VSIC_BOOT:-?} found the store, the VSAs, the data and working capabilities"
