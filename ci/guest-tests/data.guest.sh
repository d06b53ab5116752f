#!/bin/sh
# Data through the kernel's virtio_blk disks. data.host.sh attached a fresh
# 64 MiB VSA to VSIC 0 and another to VSIC 1, and filled 4 MiB at offset
# 4 MiB of VSIC 1's VSA with vsic-pattern (seed 7) over vhost-user.
# The guest copies those bytes with dd from VSIC 1's disk to the same offset
# of VSIC 0's disk and reads them back; after poweroff the host checks VSIC
# 0's VSA with vsic-pattern. It also writes text patterns at 1 MiB and in
# the last 4 KiB of VSIC 0 and reads them back with O_DIRECT.
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

pattern() { yes "vsic data pattern $1 0123456789abcdefghijklmnopqrstuvwxyz" | head -c "$2"; }

dst=$(disk_with_serial vsic-vsic0) || fail "no block device with serial vsic-vsic0"
src=$(disk_with_serial vsic-vsic1) || fail "no block device with serial vsic-vsic1"
size=$(($(cat /sys/block/"$dst"/size) * 512))
echo "VSIC 0 is /dev/$dst ($size bytes), VSIC 1 is /dev/$src"
[ "$size" -eq $((64 << 20)) ] || fail "VSIC 0 disk is $size bytes, expected the 64 MiB VSA"

# The unwritten start of a fresh VSA reads as zeros.
head -c 1048576 /dev/zero >/tmp/zero
dd if=/dev/"$dst" bs=64k count=16 iflag=direct status=none | cmp - /tmp/zero ||
    fail "unwritten first MiB of a fresh VSA is not zero"

# Copy the host's pattern from VSIC 1 to VSIC 0 (4 MiB at 4 MiB).
dd if=/dev/"$src" of=/tmp/copy bs=64k skip=64 count=64 iflag=direct status=none
cmp -s /tmp/copy /tmp/zero && fail "VSIC 1 holds zeros where the host wrote its pattern"
dd if=/tmp/copy of=/dev/"$dst" bs=64k seek=64 oflag=direct conv=fsync,notrunc status=none

# Text patterns at 1 MiB and in the last 4 KiB.
pattern A 1048576 >/tmp/a
pattern B 4096 >/tmp/b
last=$((size / 4096 - 1))
dd if=/tmp/a of=/dev/"$dst" bs=64k seek=16 oflag=direct conv=fsync,notrunc status=none
dd if=/tmp/b of=/dev/"$dst" bs=4096 seek="$last" oflag=direct conv=fsync,notrunc status=none

echo 3 >/proc/sys/vm/drop_caches
dd if=/dev/"$dst" bs=64k skip=64 count=64 iflag=direct status=none | cmp - /tmp/copy ||
    fail "copied pattern read back differs"
dd if=/dev/"$dst" bs=64k skip=16 count=16 iflag=direct status=none | cmp - /tmp/a ||
    fail "pattern A read back differs"
dd if=/dev/"$dst" bs=4096 skip="$last" count=1 iflag=direct status=none | cmp - /tmp/b ||
    fail "pattern B read back differs"
echo "ok: copied and written patterns read back on /dev/$dst"
