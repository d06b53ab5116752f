#!/bin/sh
# Handing a VSIC between drivers: vfio-pci for a user, then the kernel, then
# no driver; never from under a user (an open VFIO group, a mounted disk);
# and only by root. A root application using a VSIC bound to alice (in
# enforced DMA mode) registers the huge pages it allocates itself with the
# control-plane service, which lets the VSIC reach exactly those pages while
# the application runs.
# launch: --vsics 2
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

add_user alice 1001
start_service
addr=$(vsicctl functions --json | awk '/"address"/ { a = $2 } /"function": "vsic 0"/ { f = 1 } f && a { gsub(/[",]/, "", a); print a; exit }')

vsicctl vsa create --size 16M --cap /root/vsa.cap
vsicctl vsic attach --vsic 0 --cap /root/vsa.cap --slot 1
vsicctl vsic bind --vsic 0 --vfio --user alice
[ "$(driver_of "$addr")" = vfio-pci ] || fail "VSIC 0 ($addr) is on $(driver_of "$addr")"
grep -q "^0 $addr\$" /run/vsic/functions || fail "the function map does not name $addr as VSIC 0"
[ "$(stat -c %a /run/vsic/functions)" = 644 ] || fail "the function map is not world-readable"

# Only root runs the control plane.
if as_user 1001 "vsicctl vsic unbind --vsic 0 --json" >/tmp/out 2>&1; then fail "alice unbound a VSIC"; fi
grep -q '"status": "permission"' /tmp/out || { cat /tmp/out; fail "wrong refusal for alice"; }

# While root's application has the group open, nobody takes the function.
[ "$(dma_mode_of 0)" = enforced ] || fail "alice's VSIC is $(dma_mode_of 0), not enforced"
[ "$(dma_windows_of 0)" -eq 0 ] || fail "alice's VSIC has windows before anyone got DMA memory"
vsic-check loop vsic:0 --slot 1 --len 1M --seconds 8 >/tmp/app.out 2>&1 &
app=$!
sleep 3
kill -0 $app || { cat /tmp/app.out; fail "the application stopped early"; }
[ "$(dma_windows_of 0)" -gt 0 ] || fail "root's own DMA memory was not registered"
if vsicctl vsic bind --vsic 0 --kernel --json >/tmp/out 2>&1; then fail "the function was taken from a running application"; fi
grep -q "VFIO group is open" /tmp/out || { cat /tmp/out; fail "the refusal does not say why"; }
if vsicctl vsic unbind --vsic 0 >/dev/null 2>&1; then fail "unbind took the function from a running application"; fi
wait $app || { cat /tmp/app.out; fail "the application was disturbed"; }
[ "$(violations_of 0)" -eq 0 ] || fail "root's I/O on its registered memory counted as a violation"
[ "$(dma_windows_of 0)" -eq 0 ] || fail "root's windows stayed after its application closed"
echo "refused while in use; the application finished: $(cat /tmp/app.out)"

# Free now: to the kernel. Slot 0 is empty, so the disk is empty too.
out=$(vsicctl vsic bind --vsic 0 --kernel --json)
disk=$(bound_disk "$out")
[ "$(driver_of "$addr")" = virtio-pci ] && [ -n "$disk" ] || fail "VSIC 0 did not go to virtio_blk: $out"
# It left alice: nothing stays attached (see cp-rebind).
left=$(vsicctl list | awk '$1 == 0 && ($2 == "enabled" || $2 == "disabled") { print $NF }')
[ "$left" = - ] || fail "VSIC 0 kept $left when it left alice"
vsicctl vsic attach --vsic 0 --cap /root/vsa.cap --slot 0
mkfs.ext4 -q /dev/"$disk"
mkdir -p /mnt/v && mount -t ext4 /dev/"$disk" /mnt/v
if vsicctl vsic bind --vsic 0 --vfio --user alice --json >/tmp/out 2>&1; then fail "a mounted disk was unbound"; fi
grep -q "mounted on /mnt/v" /tmp/out || { cat /tmp/out; fail "the refusal does not name the mount"; }
umount /mnt/v

vsicctl vsic unbind --vsic 0
[ "$(driver_of "$addr")" = none ] || fail "VSIC 0 is still on $(driver_of "$addr")"
vsicctl functions
# And back to the kernel: the ext4 written before is still there.
out=$(vsicctl vsic bind --vsic 0 --kernel --json)
disk=$(bound_disk "$out")
mount -t ext4 -o ro /dev/"$disk" /mnt/v || fail "the file system did not survive the rebinds"
umount /mnt/v
echo "ok: VSIC 0 went vfio-pci -> virtio-pci -> none -> virtio-pci, never from under a user"
