#!/bin/sh
# One VSA, two paths: an application writes it through the vsic library on
# its own VSIC; after detach and attach to slot 0 of a VSIC bound to the
# kernel, the kernel's virtio_blk disk reads the same bytes. Then the kernel
# writes, and the application reads that back through its VSIC.
# launch: --vsics 2
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

add_user alice 1001
start_service

vsicctl vsa create --size 32M --cap /home/alice/data.cap
chown 1001:1001 /home/alice/data.cap
vsicctl vsic bind --vsic 0 --vfio --user alice
out=$(vsicctl vsic bind --vsic 1 --kernel --json)
disk=$(bound_disk "$out")
[ -n "$disk" ] || fail "no disk in: $out"

# The application writes 4 MiB at 1 MiB through its VSIC, then lets go.
as_user 1001 "vsicctl request-attach --vsic 0 --cap /home/alice/data.cap --slot 1"
as_user 1001 "vsic-check write vsic:0 --slot 1 --offset 1M --len 4M --seed 77"
as_user 1001 "vsicctl request-detach --vsic 0 --slot 1"

# The administrator puts the VSA in slot 0 of the kernel's VSIC.
vsicctl vsic attach --vsic 1 --cap /home/alice/data.cap --slot 0
wait_size "$disk" $((32 << 11))
vsic-check pattern --offset 1M --len 4M --seed 77 >/tmp/expected
dd if=/dev/"$disk" bs=1M skip=1 count=4 iflag=direct status=none >/tmp/read
cmp /tmp/read /tmp/expected || fail "the kernel reads other bytes than the application wrote"
echo "kernel read back the application's 4 MiB on /dev/$disk"

# And the other way: the kernel writes, the application reads.
vsic-check pattern --offset 8M --len 2M --seed 78 >/tmp/kernel
dd if=/tmp/kernel of=/dev/"$disk" bs=1M seek=8 oflag=direct conv=fsync,notrunc status=none
vsicctl vsic detach --vsic 1 --slot 0
as_user 1001 "vsicctl request-attach --vsic 0 --cap /home/alice/data.cap --slot 1"
as_user 1001 "vsic-check verify vsic:0 --slot 1 --offset 8M --len 2M --seed 78" ||
    fail "the application reads other bytes than the kernel wrote"
as_user 1001 "vsic-check verify vsic:0 --slot 1 --offset 1M --len 4M --seed 77" ||
    fail "the application's own data changed"
echo "ok: the same VSA through the vsic library and through virtio_blk"
