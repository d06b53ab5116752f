#!/bin/sh
# The capability store is the VSA the PF owner gave the store role, found
# where the controller says it is attached; an ext4 label is no proof. A
# tenant's VSA at slot 0 of the tenant's VSIC carries a forged ext4 labelled
# vsic-store (written here through the kernel disk, as the tenant could write
# it through VFIO): `store mount` still mounts the real store, and refuses
# clearly, never mounting the forgery, when the real store has no kernel disk.
# launch: --vsics 3
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

store=/var/lib/vsic
vsicctl store init --vsic 2 --size 32M
umount $store

# The tenant's VSA, at slot 0 of the tenant's VSIC, with a forged store label.
vsicctl vsa create --size 16M --cap /root/tenant.cap
vsicctl vsic attach --vsic 0 --cap /root/tenant.cap --slot 0
out=$(vsicctl vsic bind --vsic 0 --kernel --json)
forged=$(bound_disk "$out")
[ -n "$forged" ] || fail "no disk in: $out"
wait_size "$forged" $((16 << 11))
mkfs.ext4 -q -F -L vsic-store /dev/"$forged"
mkdir -p /tmp/forge && mount /dev/"$forged" /tmp/forge && echo forged >/tmp/forge/marker && umount /tmp/forge

# Both disks carry the label; the store is the one with the store role.
vsicctl store mount || fail "store mount did not pick the real store beside a forged label"
[ -e $store/store.cap ] || fail "the mounted file system is not the store (no store.cap)"
[ ! -e $store/marker ] || fail "the tenant's forged file system was mounted as the store"
grep -q "^/dev/$forged " /proc/self/mounts && fail "/dev/$forged (the tenant's) is mounted"
umount $store

# The real store has no kernel disk now: only the forgery is visible.
vsicctl vsic unbind --vsic 2
if vsicctl store mount 2>/tmp/mount.err; then
    fail "store mount mounted something while the real store had no kernel disk"
fi
cat /tmp/mount.err
grep -q "VSIC 2" /tmp/mount.err || fail "the refusal does not say where the store is"
grep -q "^/dev/$forged " /proc/self/mounts && fail "the forged store was mounted"
vsicctl vsic bind --vsic 2 --kernel
vsicctl store mount
[ -e $store/store.cap ] || fail "the store does not mount again once its VSIC is on virtio_blk"
umount $store
vsicctl list --json | grep -q '"role": "store"' || fail "list does not show the store's role"
echo "ok: store mount found the store by its role, never by the forged label"
