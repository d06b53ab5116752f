#!/bin/sh
# vsic-nfsd (issue 12) killed with SIGKILL during a stream of file writes
# on a `sync` hard NFSv3 mount and restarted: the mount resumes, no client
# call fails, every file is intact, and `vsic-fs check` passes.
# launch: --vsics 1 --queues 1 --timeout 300
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

nfs_setup
M=$NFS_MNT
nfs_start /tmp/nfsd1.log --mkfs
nfs_mount sync,hard,timeo=20
grep " $M nfs " /proc/mounts | grep -q "[ ,]sync[ ,]" || fail "not a sync mount: $(grep " $M " /proc/mounts)"
echo "== kill -9 of vsic-nfsd during writes on a sync hard mount"
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
nfs_start /tmp/nfsd2.log
wait $W || fail "the writer failed"
[ "$(cat /tmp/stream.pos)" = done ] || fail "the writer did not finish"
[ ! -s /tmp/stream.out ] || { cat /tmp/stream.out; fail "client calls failed"; }
umount $M
nfs_mount
i=0
while [ $i -lt 300 ]; do
    [ "$(cat $M/k/f$i)" = "$(printf 'stream %d %0200d' $i $i)" ] || fail "f$i differs after the restart"
    i=$((i + 1))
done
echo "stream ok: 300 files intact across the kill"

umount $M
nfs_check
echo "PASS"
