#!/bin/sh
# The ext4 power-cut campaign, boot 1: mkfs.ext4 on VSIC 0's disk (a VSA
# attached by ext4-powercut.host.sh), behind vsicd's volatile write-back
# cache. The host hook then cuts the power at random instants of a
# write-and-fsync workload, booting a new guest after each cut
# (ext4-powercut.guest2.sh): e2fsck -fn clean and every fsync'd file
# intact each time.
# launch: --vsics 1 --queues 2 --vsicd-arg --volatile-cache=16M --vsicd-arg --power-cut-seed=1
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

disk=$(disk_with_serial vsic-vsic0) || fail "no block device with serial vsic-vsic0"
command -v e2fsck >/dev/null || fail "e2fsck is not in the image"
mkfs.ext4 -q -F /dev/"$disk" || fail "mkfs.ext4 failed"
mkdir -p /mnt/fs
mount -t ext4 /dev/"$disk" /mnt/fs || fail "mount failed"
umount /mnt/fs
e2fsck -fn /dev/"$disk" >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck of the new file system"; }
echo "ok: ext4 on /dev/$disk, ready for the power cuts"
