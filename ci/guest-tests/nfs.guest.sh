#!/bin/sh
# vsic-nfsd in the guest on a VSA through VFIO (issue 12), mounted by the
# guest kernel's NFSv3 client over loopback: 1,000 small files created,
# written, renamed and removed, a 64 MiB file, a directory tree copied in
# and out with tar, every byte compared after a remount (so it comes back
# from the server, not the page cache), `vsic-fs check` on the device
# afterwards; then vsic-nfsd killed with SIGKILL during a stream of writes
# on a `sync` hard mount and restarted: no client call fails and every
# file is intact.
# launch: --vsics 1 --queues 1 --timeout 480
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

for p in vsic-nfsd vsic-fs mount.nfs tar md5sum; do
    command -v $p >/dev/null || fail "$p is not in the image"
done
ip link show lo | grep -q "UP" || fail "loopback is not up"
modprobe nfsv3 || fail "modprobe nfsv3"
grep -qw nfs /proc/filesystems || fail "no nfs in /proc/filesystems after modprobe"

vsicctl vsa create --size 384M --cap /root/nfs.cap
vsicctl vsic attach --vsic 0 --cap /root/nfs.cap --slot 0
vsicctl vsic bind --vsic 0 --vfio --user root
DEV=vsic:0
PORT=20490
M=/mnt/nfs
OPTS=vers=3,proto=tcp,port=$PORT,mountport=$PORT,mountproto=tcp,nolock
mkdir -p $M
T0=$(date +%s)
# stage WHAT: prints WHAT with the seconds since the start.
stage() { echo "[$(($(date +%s) - T0)) s] $*"; }

# start_nfsd LOG [--mkfs]: vsic-nfsd in the background, logging to LOG;
# returns once it listens (it says "serving" after binding the port).
start_nfsd() {
    log=$1
    shift
    vsic-nfsd --dev $DEV --listen 127.0.0.1:$PORT "$@" >"$log" 2>&1 &
    NFSD=$!
    for _ in $(seq 600); do
        grep -q "serving" "$log" 2>/dev/null && return 0
        kill -0 $NFSD 2>/dev/null || { cat "$log"; fail "vsic-nfsd exited"; }
        sleep 0.1
    done
    cat "$log"
    fail "vsic-nfsd did not listen within 60 s"
}

remount() {
    umount $M || fail "umount"
    mount.nfs 127.0.0.1:/ $M -o "$OPTS" || fail "mount.nfs"
}

start_nfsd /tmp/nfsd1.log --mkfs
echo "== mount -t nfs (busybox) with the standard options"
if timeout 20 mount -t nfs -o "$OPTS" 127.0.0.1:/ $M 2>/tmp/bbmount.err; then
    echo "busybox mount -t nfs worked"
    umount $M
else
    echo "busybox mount -t nfs failed ($(cat /tmp/bbmount.err)); using /sbin/mount.nfs"
fi
mount.nfs 127.0.0.1:/ $M -o "$OPTS" || fail "mount.nfs 127.0.0.1:/ $M -o $OPTS"
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
# A private copy as the reference: /etc changes under mount and umount.
mkdir -p /tmp/ref/lib
cp -a /lib/modules /tmp/ref/lib/ && cp -a /etc /tmp/ref/ || fail "copy the reference tree"
tar -C /tmp/ref -cf /tmp/tree.tar lib etc || fail "tar of the reference tree"
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

echo "== kill -9 of vsic-nfsd during writes on a sync hard mount"
umount $M
mount.nfs 127.0.0.1:/ $M -o "sync,hard,timeo=20,$OPTS" || fail "sync mount"
mkdir $M/k
(
    i=0
    while [ $i -lt 300 ]; do
        printf 'stream %d %0200d\n' $i $i >$M/k/f$i || echo "FAILED f$i"
        echo $i >/tmp/stream.pos
        i=$((i + 1))
    done
    echo done >/tmp/stream.pos
) >/tmp/stream.out 2>&1 &
W=$!
for _ in $(seq 600); do
    [ "$(cat /tmp/stream.pos 2>/dev/null || echo 0)" -ge 60 ] 2>/dev/null && break
    sleep 0.1
done
kill -9 $NFSD
wait $NFSD 2>/dev/null || true
echo "killed vsic-nfsd at file $(cat /tmp/stream.pos)"
sleep 2
start_nfsd /tmp/nfsd2.log
wait $W || fail "the writer failed"
[ "$(cat /tmp/stream.pos)" = done ] || fail "the writer did not finish"
[ ! -s /tmp/stream.out ] || { cat /tmp/stream.out; fail "client calls failed"; }
remount
i=0
while [ $i -lt 300 ]; do
    [ "$(cat $M/k/f$i)" = "$(printf 'stream %d %0200d' $i $i)" ] || fail "f$i differs after the restart"
    i=$((i + 1))
done
stage "stream ok: 300 files intact across the kill"

umount $M
kill $NFSD
wait $NFSD 2>/dev/null || true
out=$(vsic-fs --dev $DEV check) || fail "vsic-fs check: $out"
echo "vsic-fs check: $out"
echo "PASS"
