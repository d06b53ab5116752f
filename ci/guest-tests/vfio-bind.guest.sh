#!/bin/sh
# One VSIC function goes to vfio-pci (driver_override + bind) and another stays
# with virtio_blk; /dev/vfio/GROUP appears and opens; giving the function back
# to virtio-pci brings its disk back.
# launch: --vsics 3
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

# Function index from the topology: the root port in slot 2 + i of pcie.0
# holds function i (0 = PF, 1.. = VSIC 0..).
function_addr() {
    want=$1
    for dev in /sys/bus/pci/devices/*; do
        [ "$(cat "$dev/vendor")" = 0x1af4 ] || continue
        port=$(basename "$(dirname "$(readlink -f "$dev")")")
        slot=$(echo "$port" | cut -d: -f3 | cut -d. -f1)
        if [ $((0x$slot - 2)) -eq "$want" ]; then
            basename "$dev"
            return 0
        fi
    done
    return 1
}

disks_of() { ls -d /sys/bus/pci/devices/"$1"/virtio*/block/* 2>/dev/null | xargs -n1 basename 2>/dev/null || true; }

vfio_fn=$(function_addr 1) || fail "VSIC 0 not found"
blk_fn=$(function_addr 2) || fail "VSIC 1 not found"
echo "VSIC 0 at $vfio_fn (driver $(driver_of "$vfio_fn")), VSIC 1 at $blk_fn (driver $(driver_of "$blk_fn"))"
[ -n "$(disks_of "$vfio_fn")" ] || fail "VSIC 0 has no disk before the rebind"

# Hand VSIC 0 to vfio-pci.
to_vfio "$vfio_fn"
group=$(basename "$(readlink /sys/bus/pci/devices/"$vfio_fn"/iommu_group)")
[ -c /dev/vfio/"$group" ] || fail "/dev/vfio/$group did not appear"
[ -c /dev/vfio/vfio ] || fail "/dev/vfio/vfio missing"
# The group is viable (no other endpoint needs a driver) if it opens.
exec 3<>/dev/vfio/"$group" || fail "cannot open /dev/vfio/$group"
exec 3>&-
[ -z "$(disks_of "$vfio_fn")" ] || fail "VSIC 0 still has a disk while bound to vfio-pci"
echo "VSIC 0 bound to vfio-pci, /dev/vfio/$group opens"

# VSIC 1 stays with the kernel driver.
[ "$(driver_of "$blk_fn")" = virtio-pci ] || fail "VSIC 1 is bound to $(driver_of "$blk_fn")"
disk=$(disks_of "$blk_fn")
[ -n "$disk" ] && [ -b /dev/"$disk" ] || fail "VSIC 1 has no block device"
echo "VSIC 1 bound to virtio_blk as /dev/$disk"

# And back: clearing the override and reprobing returns VSIC 0 to virtio-pci.
echo >/sys/bus/pci/devices/"$vfio_fn"/driver_override
echo "$vfio_fn" >/sys/bus/pci/devices/"$vfio_fn"/driver/unbind
echo "$vfio_fn" >/sys/bus/pci/drivers_probe
[ "$(driver_of "$vfio_fn")" = virtio-pci ] || fail "VSIC 0 did not return to virtio-pci"
[ -n "$(disks_of "$vfio_fn")" ] || fail "VSIC 0 has no disk after returning to virtio_blk"
echo "ok: VSIC 0 back on virtio_blk as /dev/$(disks_of "$vfio_fn")"
