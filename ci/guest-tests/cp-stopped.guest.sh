#!/bin/sh
# Attach, resize and detach while nobody runs a VSIC's device: its next
# driver sees the configuration as it is when it starts the device, not the
# one QEMU read before (QEMU ignores configuration changes while a
# vhost-user device is stopped).
#  - VSIC 0 on vfio-pci, not open: the vsic library's Device::capacity(),
#    read right after the open, is the current size.
#  - VSIC 1 taken from the kernel: when virtio_blk gets it back, /dev/vdX
#    follows (configuration-change interrupt after the start).
# Functions move between drivers through sysfs only, so this tests the
# device, not the control plane's bind policy.
# launch: --vsics 2
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

# The PCI function whose virtio_blk disk has serial $1.
function_with_serial() {
    for b in /sys/block/vd*; do
        if [ "$(cat "$b/serial" 2>/dev/null)" = "$1" ]; then
            basename "$(readlink -f "$b/device/..")"
            return 0
        fi
    done
    return 1
}

# expect_capacity FUNCTION BYTES: the library, opening FUNCTION (on
# vfio-pci, stopped until then), reads BYTES at once.
expect_capacity() {
    local out
    out=$(vsic-io "$1" --capacity) || fail "vsic-io $1 --capacity failed: $out"
    [ "$out" = "capacity $2 bytes" ] || fail "$1: '$out' right after the open, expected $2 bytes"
    echo "$1: $out"
}

# to_kernel FUNCTION SERIAL: hands FUNCTION back to virtio_blk (it was
# taken away by unbind_kernel); prints its disk once it is there.
to_kernel() {
    local i=0 disk
    echo "$1" >/sys/bus/pci/drivers_probe
    until disk=$(disk_with_serial "$2"); do
        i=$((i + 1))
        [ $i -le 50 ] || fail "$1 ($2) has no disk 5 s after probing"
        sleep 0.1
    done
    echo "$disk"
}

# Takes FUNCTION away from its driver: the device stops.
unbind_kernel() {
    echo "$1" >/sys/bus/pci/devices/"$1"/driver/unbind
}

fn0=$(function_with_serial vsic-vsic0) || fail "no block device with serial vsic-vsic0"
fn1=$(function_with_serial vsic-vsic1) || fail "no block device with serial vsic-vsic1"

# VFIO: VSIC 0 on vfio-pci, nobody has it open.
to_vfio "$fn0"
expect_capacity "$fn0" 0
vsicctl vsa create --size 48M --cap /root/a.cap
vsicctl vsic attach --vsic 0 --cap /root/a.cap --slot 0
expect_capacity "$fn0" $((48 << 20))
vsicctl vsa resize --cap /root/a.cap --size 96M
expect_capacity "$fn0" $((96 << 20))
vsicctl vsic detach --vsic 0 --slot 0
expect_capacity "$fn0" 0

# Kernel: VSIC 1 leaves virtio_blk, changes while stopped, comes back.
unbind_kernel "$fn1"
vsicctl vsa create --size 32M --cap /root/b.cap
vsicctl vsic attach --vsic 1 --cap /root/b.cap --slot 0
disk=$(to_kernel "$fn1" vsic-vsic1) || fail "$disk"
wait_size "$disk" $((32 << 11))
unbind_kernel "$fn1"
vsicctl vsa resize --cap /root/b.cap --size 16M
disk=$(to_kernel "$fn1" vsic-vsic1) || fail "$disk"
wait_size "$disk" $((16 << 11))
unbind_kernel "$fn1"
vsicctl vsic detach --vsic 1 --slot 0
disk=$(to_kernel "$fn1" vsic-vsic1) || fail "$disk"
wait_size "$disk" 0
echo "ok: attach, resize and detach while stopped are seen by the library and by virtio_blk"
