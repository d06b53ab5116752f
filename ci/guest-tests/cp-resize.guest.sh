#!/bin/sh
# The kernel's virtio_blk driver sees attach, resize (grow and shrink) and
# detach of its slot-0 VSA live, through the configuration-change interrupt:
# /sys/block/vdX/size follows every change without any rescan.
# launch: --vsics 2
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

out=$(vsicctl vsic bind --vsic 1 --kernel --json)
disk=$(bound_disk "$out")
[ -n "$disk" ] || fail "no disk in: $out"
[ "$(cat /sys/block/"$disk"/serial)" = vsic-vsic1 ] || fail "/dev/$disk is not VSIC 1"
wait_size "$disk" 0

vsicctl vsa create --size 64M --cap /root/vsa.cap
vsicctl vsic attach --vsic 1 --cap /root/vsa.cap --slot 0
wait_size "$disk" $((64 << 11))
# Data written before a resize is still there after it.
dd if=/dev/urandom of=/tmp/block bs=4096 count=16 status=none
dd if=/tmp/block of=/dev/"$disk" bs=4096 seek=100 oflag=direct conv=fsync,notrunc status=none

vsicctl vsa resize --cap /root/vsa.cap --size 128M
wait_size "$disk" $((128 << 11))
# The new space is usable at once, right up to its last block.
dd if=/tmp/block of=/dev/"$disk" bs=4096 seek=$(((128 << 8) - 16)) oflag=direct conv=fsync,notrunc status=none ||
    fail "cannot write the grown end of /dev/$disk"

vsicctl vsa resize --cap /root/vsa.cap --size 32M
wait_size "$disk" $((32 << 11))
dd if=/dev/"$disk" bs=4096 skip=100 count=16 iflag=direct status=none | cmp - /tmp/block ||
    fail "data before the resizes changed"
# The block device ends at the new size: nothing to read past it.
past=$(dd if=/dev/"$disk" bs=4096 skip=$((32 << 8)) count=1 iflag=direct status=none 2>/dev/null | wc -c)
[ "$past" -eq 0 ] || fail "read $past bytes past the shrunk end"

vsicctl vsic detach --vsic 1 --slot 0
wait_size "$disk" 0
echo "ok: /dev/$disk followed attach, grow, shrink and detach live"
