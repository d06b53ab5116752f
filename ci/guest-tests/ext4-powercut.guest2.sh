#!/bin/sh
# A boot of the ext4 power-cut campaign after boot 1 (run by
# ext4-powercut.host.sh). vsic.acked=R1:M1,R2:M2,...: the files the host
# saw acknowledged before each earlier cut (rR/f0 .. rR/f{M-1}).
#  1. the state the last cut left: mount (journal replay), umount,
#     e2fsck -fn must be clean; every acknowledged file of every earlier
#     round has its exact content;
#  2. vsic.round=R: the workload of round R: files of known content in rR/,
#     each fsync'd (file, then directory) before "fsynced rR fN" goes to
#     the console, 0.5 s apart, while another writer keeps overwriting
#     files without fsync (writeback every 0.1 s: unflushed data in the
#     cache);
#     the host cuts the power at a random instant after POWERCUT-ARM.
#     vsic.round=verify: only step 1.
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

disk=$(disk_with_serial vsic-vsic0) || fail "no block device with serial vsic-vsic0"
dev=/dev/$disk
mkdir -p /mnt/fs

# content R N: the bytes of rR/fN (size 1 .. 48 KiB, depends on both).
content() {
    yes "round $1 file $2" | head -c $((1 + ($2 * 7919 + $1 * 104729) % 49152))
}

mount -t ext4 "$dev" /mnt/fs || fail "mount after the power cut failed"
umount /mnt/fs
if ! e2fsck -fn "$dev" >/tmp/fsck.log 2>&1; then
    cat /tmp/fsck.log
    fail "e2fsck -fn found problems after the power cut"
fi
mount -t ext4 -o commit=1 "$dev" /mnt/fs || fail "mount failed"
total=0
for entry in $(echo "${VSIC_ACKED:-}" | tr ',' ' '); do
    r=${entry%%:*}
    m=${entry##*:}
    n=0
    while [ "$n" -lt "$m" ]; do
        f=/mnt/fs/r$r/f$n
        [ -f "$f" ] || fail "fsync'd file $f is missing"
        content "$r" "$n" | cmp -s - "$f" || fail "fsync'd file $f has the wrong content"
        n=$((n + 1))
    done
    total=$((total + m))
done
echo "VERIFIED e2fsck clean, $total fsync'd files intact"

round=${VSIC_ROUND:?vsic.round is missing}
if [ "$round" = verify ]; then
    umount /mnt/fs
    e2fsck -fn "$dev" >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck after the final check"; }
    echo "ok: final state checked"
    exit 0
fi

# Writeback soon, so the cache holds unflushed data when the power goes.
echo 10 >/proc/sys/vm/dirty_expire_centisecs
echo 10 >/proc/sys/vm/dirty_writeback_centisecs
mkdir -p /mnt/fs/r"$round"
sync /mnt/fs
# Overwrites in place (no allocation, so no journal commit needed): data
# the cache holds until the next FLUSH.
(
    i=0
    while :; do
        dd if=/dev/zero of=/mnt/fs/noise$((i % 3)) bs=64k count=16 conv=notrunc 2>/dev/null || exit 0
        i=$((i + 1))
    done
) &
echo "POWERCUT-ARM round $round"
n=0
while :; do
    f=/mnt/fs/r$round/f$n
    content "$round" "$n" >"$f"
    sync "$f"
    sync /mnt/fs/r"$round"
    echo "fsynced r$round f$n"
    n=$((n + 1))
    # A pause, so that writeback fills the cache between FLUSHes.
    sleep 0.5
done
