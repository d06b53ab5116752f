#!/bin/sh
# One VSA, two paths: an application writes it through the vsic library on
# its own VSIC; after detach and attach to slot 0 of a VSIC bound to the
# kernel, the kernel's virtio_blk disk reads the same bytes. Then the kernel
# writes, and the application reads that back through its VSIC.
# launch: --vsics 2
set -eu

fail() { echo "FAIL: $*"; cat /tmp/serve.log 2>/dev/null; exit 1; }
as_user() { su -s /bin/sh "$(awk -F: -v u="$1" '$3 == u { print $1; exit }' /etc/passwd)" -c "$2"; }
echo "alice:x:1001:1001::/home/alice:/bin/sh" >>/etc/passwd
echo "alice:x:1001:" >>/etc/group
mkdir -p /home/alice && chown 1001:1001 /home/alice && chmod 0700 /home/alice
vsicctl serve >/tmp/serve.log 2>&1 &
for _ in $(seq 50); do [ -S /run/vsic/control.sock ] && break; sleep 0.1; done

vsicctl vsa create --size 32M --cap /home/alice/data.cap
chown 1001:1001 /home/alice/data.cap
vsicctl vsic bind --vsic 0 --vfio --user alice
out=$(vsicctl vsic bind --vsic 1 --kernel --json)
disk=$(echo "$out" | sed -n 's/.*"disk": "\(vd[a-z]*\)".*/\1/p')
[ -n "$disk" ] || fail "no disk in: $out"

# The application writes 4 MiB at 1 MiB through its VSIC, then lets go.
as_user 1001 "vsicctl request-attach --vsic 0 --cap /home/alice/data.cap --slot 1"
as_user 1001 "vsic-check write vsic:0 --slot 1 --offset 1M --len 4M --seed 77"
as_user 1001 "vsicctl request-detach --vsic 0 --slot 1"

# The administrator puts the VSA in slot 0 of the kernel's VSIC.
vsicctl vsic attach --vsic 1 --cap /home/alice/data.cap --slot 0
i=0
while [ "$(cat /sys/block/"$disk"/size)" != $((32 << 11)) ]; do
    i=$((i + 1)); [ $i -le 50 ] || fail "/dev/$disk did not show the 32 MiB VSA"; sleep 0.1
done
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
