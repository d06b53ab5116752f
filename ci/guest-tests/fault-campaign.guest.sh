#!/bin/sh
# A fault campaign against a guest application (dd on VSIC 0's kernel
# disk, O_DIRECT): fault-campaign.host.sh armed three rules on the
# management socket before boot. The guest checks that each fault reaches
# the application exactly as the rule says, and that the rest of the disk
# is untouched by them.
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

disk=$(disk_with_serial vsic-vsic0) || fail "no block device with serial vsic-vsic0"
dev=/dev/$disk
pattern() { yes "fault campaign $1 0123456789abcdefghijklmnopqrstuvwxyz" | head -c "$2"; }
pattern A 65536 >/tmp/a
pattern B 4096 >/tmp/b
head -c 65536 /dev/zero >/tmp/zero

# Outside every rule: writes and reads work.
dd if=/tmp/a of="$dev" bs=64k seek=0 oflag=direct conv=notrunc status=none ||
    fail "a write outside the rules failed"
dd if="$dev" bs=64k count=1 iflag=direct status=none | cmp -s - /tmp/a ||
    fail "read back outside the rules differs"

# Rule 1: writes to 32 MiB..33 MiB fail with EIO, every time.
for try in 1 2; do
    if dd if=/tmp/a of="$dev" bs=64k seek=512 oflag=direct conv=notrunc status=none 2>/dev/null; then
        fail "write $try into the failing range succeeded"
    fi
done
dd if="$dev" bs=64k skip=512 count=1 iflag=direct status=none | cmp -s - /tmp/zero ||
    fail "a failed write changed the disk"

# Rule 2: the 4 KiB block at 40 MiB reads back corrupted (8 bits flipped).
dd if=/tmp/b of="$dev" bs=4096 seek=10240 oflag=direct conv=notrunc status=none ||
    fail "the write at 40 MiB failed"
dd if="$dev" of=/tmp/got bs=4096 skip=10240 count=1 iflag=direct status=none ||
    fail "the read at 40 MiB failed"
cmp -s /tmp/got /tmp/b && fail "the read at 40 MiB was not corrupted"
diffs=$(cmp -l /tmp/got /tmp/b | wc -l)
[ "$diffs" -ge 1 ] && [ "$diffs" -le 8 ] || fail "$diffs bytes differ, not 1 to 8"

# Rule 3: the first write at 48 MiB is torn after 8 sectors (4 KiB) and
# fails; only its first 4 KiB reached the drive. The next write works.
if dd if=/tmp/a of="$dev" bs=64k seek=768 oflag=direct conv=notrunc status=none 2>/dev/null; then
    fail "the torn write succeeded"
fi
dd if="$dev" of=/tmp/got bs=64k skip=768 count=1 iflag=direct status=none
head -c 4096 /tmp/got | cmp -s - "$(head -c 4096 /tmp/a >/tmp/a4k && echo /tmp/a4k)" ||
    fail "the torn write's first 4 KiB did not reach the drive"
tail -c 61440 /tmp/got | cmp -s - "$(head -c 61440 /tmp/zero >/tmp/z60k && echo /tmp/z60k)" ||
    fail "more than the torn write's first 4 KiB reached the drive"
dd if=/tmp/a of="$dev" bs=64k seek=768 oflag=direct conv=notrunc status=none ||
    fail "the write after the torn one failed"
echo "ok: write errors, a corrupted read and a torn write reached dd as the rules say"
