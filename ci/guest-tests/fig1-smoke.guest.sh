#!/bin/sh
# The Figure 1 benchmark program (vsic-fig1, run in full by
# `ci/bench.sh --guest`) with a small N: ext4 + fsync on a VSIC bound to
# virtio_blk, and write + FLUSH through the vsic library in hybrid mode on a
# VSIC on vfio-pci. Its lines must be well-formed, with the count asked for
# and positive times; a bad argument must be refused with status 2.
# launch: --vsics 2
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

# check_line LINE N KEY=VALUE...: LINE is a fig1 result for N operations
# holding the given pairs, with positive p50/p99/mean and 0 <= cpu.
check_line() {
    local line=$1 n=$2
    shift 2
    echo "$line"
    case "$line" in "case=fig1 "*) ;; *) fail "not a fig1 line: $line" ;; esac
    for kv in "n=$n" "$@"; do
        case " $line " in *" $kv "*) ;; *) fail "'$kv' missing from: $line" ;; esac
    done
    echo "$line" | awk '{
        for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        ok = f["p50_us"] > 0 && f["p99_us"] >= f["p50_us"] && f["mean_us"] > 0 &&
             f["max_us"] >= f["p99_us"] && f["min_us"] <= f["p50_us"] && f["cpu"] != "" && f["cpu"] >= 0
        exit !ok
    }' || fail "implausible numbers in: $line"
}

# Kernel path: ext4 on VSIC 1 bound to virtio_blk (attach after the bind).
kernel_vsa_disk 1 64 /root/k.cap
disk=$KDISK
mkfs.ext4 -q -F /dev/"$disk"
mkdir -p /mnt/f && mount -t ext4 /dev/"$disk" /mnt/f
line=$(vsic-fig1 file /mnt/f/x --fs ext4 --medium vsic --sync fsync --bytes 1024 --n 30) ||
    fail "vsic-fig1 file failed"
check_line "$line" 30 fs=ext4 medium=vsic sync=fsync bytes=1024
[ "$(stat -c %s /mnt/f/x)" -eq $((40 * 1024)) ] || fail "the file is not 40 appended KiB"
umount /mnt/f

# User path: VSIC 0 on vfio-pci, hybrid completions.
vsicctl vsa create --size 16M --cap /root/u.cap >/dev/null
vsicctl vsic bind --vsic 0 --vfio --user root >/dev/null
vsicctl vsic attach --vsic 0 --cap /root/u.cap --slot 0 >/dev/null
fn=$(awk '$1 == 0 { print $2 }' /run/vsic/functions)
line=$(vsic-fig1 vsic "$fn" --mode hybrid --bytes 4096 --n 200) || fail "vsic-fig1 vsic failed"
check_line "$line" 200 path=vsic mode=hybrid sync=flush bytes=4096

# Usage errors are refused, not run.
rc=0
vsic-fig1 vsic "$fn" --mode sometimes 2>/tmp/err || rc=$?
[ $rc -eq 2 ] || fail "a bad --mode gave status $rc"
grep -q "interrupt, poll or hybrid" /tmp/err || fail "unclear error: $(cat /tmp/err)"
echo "ok: vsic-fig1 kernel and vsic cases"
