#!/bin/sh
# The host attached a fresh 64 MiB VSA to VSIC 0 slot 0 (data.host.sh pre).
# Through the kernel's virtio_blk disk of VSIC 0 the guest writes two
# patterns, one at 1 MiB and one in the VSA's last 4 KiB, and reads them back
# with O_DIRECT; the host checks the same bytes after the guest is gone
# (data.host.sh post).
set -eu

fail() { echo "FAIL: $*"; exit 1; }
# Deterministic pattern; data.host.sh builds the same bytes with coreutils.
pattern() { yes "vsic data pattern $1 0123456789abcdefghijklmnopqrstuvwxyz" | head -c "$2"; }

disk=
for b in /sys/block/vd*; do
    [ "$(cat "$b/serial" 2>/dev/null)" = vsic-vsic0 ] && disk=$(basename "$b")
done
[ -n "$disk" ] || fail "no block device with serial vsic-vsic0"
size=$(($(cat /sys/block/"$disk"/size) * 512))
echo "VSIC 0 is /dev/$disk, $size bytes"
[ "$size" -eq $((64 << 20)) ] || fail "VSIC 0 disk is $size bytes, expected the 64 MiB VSA"

pattern A 1048576 >/tmp/a
pattern B 4096 >/tmp/b
last=$((size / 4096 - 1))
dd if=/tmp/a of=/dev/"$disk" bs=64k seek=16 oflag=direct conv=fsync,notrunc status=none
dd if=/tmp/b of=/dev/"$disk" bs=4096 seek="$last" oflag=direct conv=fsync,notrunc status=none

echo 3 >/proc/sys/vm/drop_caches
dd if=/dev/"$disk" bs=64k skip=16 count=16 iflag=direct status=none | cmp - /tmp/a ||
    fail "pattern A read back differs"
dd if=/dev/"$disk" bs=4096 skip="$last" count=1 iflag=direct status=none | cmp - /tmp/b ||
    fail "pattern B read back differs"
# The unwritten start of a fresh VSA reads as zeros.
head -c 1048576 /dev/zero >/tmp/zero
dd if=/dev/"$disk" bs=64k count=16 iflag=direct status=none | cmp - /tmp/zero ||
    fail "unwritten first MiB of a fresh VSA is not zero"
echo "ok: patterns written and read back on /dev/$disk ($(sha256sum </tmp/a | cut -c1-16) $(sha256sum </tmp/b | cut -c1-16))"
