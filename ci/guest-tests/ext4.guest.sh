#!/bin/sh
# mkfs.ext4 on VSIC 0's disk (a 64 MiB VSA attached by ext4.host.sh), mount
# it, write a file, remount and read it back.
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

disk=$(disk_with_serial vsic-vsic0) || fail "no block device with serial vsic-vsic0"

mkfs.ext4 -q -F /dev/"$disk" || fail "mkfs.ext4 failed"
mkdir -p /mnt/vsa
mount -t ext4 /dev/"$disk" /mnt/vsa || fail "mount failed"
seq 1 20000 >/mnt/vsa/numbers
sum=$(sha256sum </mnt/vsa/numbers)
umount /mnt/vsa
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 -o ro /dev/"$disk" /mnt/vsa || fail "remount failed"
[ "$(sha256sum </mnt/vsa/numbers)" = "$sum" ] || fail "file contents changed across remount"
umount /mnt/vsa
echo "ok: ext4 on /dev/$disk"
