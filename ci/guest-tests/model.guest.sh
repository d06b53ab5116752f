#!/bin/sh
# launch: --vsicd-arg --service-latency=2ms --vsicd-arg --service-units=4
# The drive timing model on (2 ms per request, 4 units: completions are
# scheduled and come back out of order): the guest's kernel virtio_blk
# driver and the vsic library both see their data intact. model.host.sh
# attached a 64 MiB VSA to VSIC 0 (kernel disk) and VSIC 1 (library over
# VFIO) and checks the library's patterns after poweroff.
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

run() { echo "+ $*"; "$@" || fail "$* exited with $?"; }
pattern() { yes "vsic model pattern $1 0123456789abcdefghijklmnopqrstuvwxyz" | head -c "$2"; }
uptime_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }

disk=$(disk_with_serial vsic-vsic0) || fail "no block device with serial vsic-vsic0"
echo "VSIC 0 is /dev/$disk"

# Kernel driver: four writers at once (several requests in flight, each
# 64 KiB), then FLUSH (conv=fsync), then read back.
for i in 0 1 2 3; do pattern "$i" 2097152 >/tmp/p$i; done
for i in 0 1 2 3; do
    dd if=/tmp/p$i of=/dev/"$disk" bs=64k seek=$((i * 64)) oflag=direct conv=fsync,notrunc status=none &
done
wait
echo 3 >/proc/sys/vm/drop_caches
for i in 0 1 2 3; do
    dd if=/dev/"$disk" bs=64k skip=$((i * 64)) count=32 iflag=direct status=none | cmp - /tmp/p$i ||
        fail "kernel path: pattern $i read back differs"
done
# Four readers at once as well.
for i in 0 1 2 3; do
    (dd if=/dev/"$disk" bs=4k skip=$((i * 1024)) count=512 iflag=direct status=none | cmp - /tmp/p$i ||
        echo "pattern $i differs" >/tmp/bad) &
done
wait
[ ! -e /tmp/bad ] || fail "kernel path, parallel readers: $(cat /tmp/bad)"

# The model is in force: 100 reads one after the other take at least
# 100 x 2 ms.
start=$(uptime_ms)
dd if=/dev/"$disk" of=/dev/null bs=4k count=100 iflag=direct status=none
took=$(($(uptime_ms) - start))
echo "100 sequential 4 KiB reads took $took ms (the model: at least 200)"
[ "$took" -ge 190 ] || fail "100 reads took $took ms: the model's 2 ms per request is not in force"
echo "ok: kernel driver with the model on"

# The vsic library over VFIO: 32 requests in flight on 4 units, interrupt
# and polling mode.
fn=
for b in /sys/block/vd*; do
    if [ "$(cat "$b/serial" 2>/dev/null)" = vsic-vsic1 ]; then
        fn=$(basename "$(readlink -f "$b/device/..")")
    fi
done
[ -n "$fn" ] || fail "no function with serial vsic-vsic1"
to_vfio "$fn"
run vsic-pattern "$fn" write --offset 0 --len 8M --seed 41 --depth 32 --chunk 64K
run vsic-pattern "$fn" verify --offset 0 --len 8M --seed 41 --depth 32 --chunk 64K --polling
run vsic-pattern "$fn" write --offset 16M --len 4M --seed 42 --polling --depth 8
run vsic-pattern "$fn" verify --offset 16M --len 4M --seed 42 --depth 8
if vsic-pattern "$fn" verify --offset 16M --len 1M --seed 43 --polling >/dev/null 2>&1; then
    fail "verify with the wrong seed passed"
fi
echo "ok: vsic library with the model on"
