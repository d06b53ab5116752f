#!/bin/sh
# vsic-nfsd in the guest on a VSA through VFIO (issue 12), mounted by the
# guest kernel's NFSv3 client over loopback with `mount -t nfs`: 1,000
# small files created, written, renamed and removed, a hard link, a 64
# MiB file, a directory tree copied in and out with tar, every byte
# compared after a remount (so it comes back from the server, not the
# page cache);
# `vsic-fs check` on the device afterwards. (nfs-kill: the server killed.)
# launch: --vsics 1 --queues 1 --timeout 420
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

nfs_setup
M=$NFS_MNT
T0=$(date +%s)
# stage WHAT: prints WHAT with the seconds since the start.
stage() { echo "[$(($(date +%s) - T0)) s] $*"; }
remount() {
    umount $M || fail "umount"
    nfs_mount
}

nfs_start /tmp/nfsd.log --mkfs
nfs_mount
grep " $M nfs " /proc/mounts || fail "not in /proc/mounts"

echo "== 1,000 small files: create, write, rename, remove"
# The reference files (a name line, then up to 4 KiB of a random pool from
# a random offset) by one awk.
mkdir -p /tmp/ref $M/small $M/renamed
awk -v seed="$(date +%s)" 'BEGIN {
    srand(seed)
    for (j = 0; j < 8192; j++) pool = pool sprintf("%c", 32 + int(rand() * 95))
    for (i = 0; i < 1000; i++) {
        f = "/tmp/ref/f" i
        printf "file %d\n%s", i, substr(pool, 1 + int(rand() * 4096), int(rand() * 4096)) > f
        close(f)
    }
}'
[ "$(ls /tmp/ref | wc -l)" = 1000 ] || fail "reference files"
cp /tmp/ref/* $M/small/ || fail "create and write 1,000 files"
stage "created"
remount
(cd /tmp/ref && md5sum f* | sort -k2) >/tmp/ref.sums
(cd $M/small && md5sum f* | sort -k2) >/tmp/nfs.sums
cmp /tmp/ref.sums /tmp/nfs.sums || fail "small files differ after a remount"
# Renames: all 1,000 into another directory, then 100 to new names there.
mv $M/small/* $M/renamed/ || fail "rename 1,000 files"
i=0
while [ $i -lt 100 ]; do
    mv $M/renamed/f$i $M/renamed/g$i || fail "rename f$i"
    mv /tmp/ref/f$i /tmp/ref/g$i
    i=$((i + 1))
done
stage "renamed"
remount
[ -z "$(ls $M/small)" ] || fail "names left in the old directory"
(cd /tmp/ref && md5sum * | sort -k2) >/tmp/ref2.sums
(cd $M/renamed && md5sum * | sort -k2) >/tmp/nfs2.sums
cmp /tmp/ref2.sums /tmp/nfs2.sums || fail "renamed files differ"
rm $M/renamed/* || fail "remove 1,000 files"
remount
[ -z "$(ls $M/renamed)" ] || fail "files left after rm"
rmdir $M/small $M/renamed || fail "rmdir"
rm -rf /tmp/ref
stage "small files ok"

echo "== a hard link (LINK)"
printf 'linked bytes\n' >$M/l1
ln $M/l1 $M/l2 || fail "ln on the mount"
remount
[ "$(cat $M/l2)" = "linked bytes" ] || fail "the second name reads other bytes"
[ "$(stat -c %h $M/l1)" = 2 ] && [ "$(stat -c %h $M/l2)" = 2 ] || fail "nlink is not 2"
[ "$(stat -c %i $M/l1)" = "$(stat -c %i $M/l2)" ] || fail "two inodes"
rm $M/l1
[ "$(stat -c %h $M/l2)" = 1 ] || fail "nlink after rm is not 1"
rm $M/l2
stage "hard link ok"

echo "== a 64 MiB file"
dd if=/dev/urandom of=/tmp/big bs=1M count=64 2>/dev/null
cp /tmp/big $M/big || fail "write the 64 MiB file"
stage "64 MiB written"
remount
[ "$(stat -c %s $M/big)" = 67108864 ] || fail "size of the 64 MiB file"
cmp /tmp/big $M/big || fail "the 64 MiB file differs"
rm $M/big /tmp/big
stage "64 MiB file ok"

echo "== a tree in and out with tar"
# A private copy as the reference (/etc changes under mount and umount):
# kernel modules, /etc, and /sbin (programs and busybox's symbolic links).
mkdir -p /tmp/ref/lib
cp -a /lib/modules /tmp/ref/lib/ && cp -a /etc /sbin /tmp/ref/ || fail "copy the reference tree"
tar -C /tmp/ref -cf /tmp/tree.tar lib etc sbin || fail "tar of the reference tree"
mkdir $M/tree
tar -C $M/tree -xf /tmp/tree.tar || fail "tar into the mount"
stage "tree in"
remount
mkdir /tmp/out
tar -C $M/tree -cf - . | tar -C /tmp/out -xf - || fail "tar out of the mount"
(cd /tmp/ref && find . | sort) >/tmp/ref.list
(cd /tmp/out && find . | sort) >/tmp/out.list
cmp /tmp/ref.list /tmp/out.list || fail "the tree's names differ"
(cd /tmp/ref && find . -type f | sort | xargs md5sum) >/tmp/ref.tsums
(cd /tmp/out && find . -type f | sort | xargs md5sum) >/tmp/out.tsums
(cd /tmp/ref && find . -type l | sort | while read -r l; do echo "$l -> $(readlink "$l")"; done) >/tmp/ref.links
(cd /tmp/out && find . -type l | sort | while read -r l; do echo "$l -> $(readlink "$l")"; done) >/tmp/out.links
cmp /tmp/ref.links /tmp/out.links || fail "the tree's symbolic links differ"
cmp /tmp/ref.tsums /tmp/out.tsums || fail "the tree's contents differ"
stage "tree ok: $(wc -l </tmp/ref.list) names, $(wc -l </tmp/ref.tsums) files, $(wc -l </tmp/ref.links) symlinks"
rm -rf /tmp/out /tmp/ref /tmp/tree.tar

umount $M
nfs_check
echo "PASS"
