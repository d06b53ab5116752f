#!/bin/sh
# The vsic library drives VSIC 1 through VFIO: the host attached a 64 MiB
# VSA to its slot 0 (vfio-io.host.sh pre). The guest hands VSIC 1 (found by
# its virtio_blk serial) to vfio-pci and runs vsic-pattern against it by PCI
# address, by vsic:1 found by asking the vfio-pci functions (GET_ID; VSIC 2
# is on vfio-pci too), and by vsic:1 found in the function map; in interrupt and polling mode, on both
# queues, with DMA memory of its own and with provided DMA memory, as root
# and as an unprivileged user. The host checks the data after poweroff
# (vfio-io.host.sh post).
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

run() { echo "+ $*"; "$@" || fail "$* exited with $?"; }

# The PCI function whose virtio_blk disk has serial $1.
function_with_serial() {
    for b in /sys/block/vd*; do
        if [ "$(cat "$b/serial" 2>/dev/null)" = "$1" ]; then
            basename "$(readlink -f "$b/device/..")"
            return 0
        fi
    done
    return 1
}

fn=$(function_with_serial vsic-vsic1) || fail "no block device with serial vsic-vsic1"
fn2=$(function_with_serial vsic-vsic2) || fail "no block device with serial vsic-vsic2"
echo "VSIC 1 is $fn, VSIC 2 is $fn2; huge pages free: $(awk '/HugePages_Free/ { print $2 }' /proc/meminfo)"

# Still on virtio_blk: the library says so instead of failing obscurely.
if vsic-pattern "$fn" verify --len 4K 2>/tmp/err; then fail "opened a function bound to virtio_blk"; fi
grep -q virtio /tmp/err || fail "unclear error for a virtio_blk-bound function: $(cat /tmp/err)"

to_vfio "$fn"

# A process killed in the middle of its I/O: closing the device resets it,
# and the next owner opens it normally. (What it wrote is overwritten below.)
vsic-pattern "$fn" write --offset 0 --len 60M --seed 99 --polling >/dev/null 2>&1 &
victim=$!
sleep 1
if kill -9 "$victim" 2>/dev/null; then echo "killed a writer in the middle of its I/O"; else echo "(the writer finished before the kill)"; fi
wait "$victim" 2>/dev/null || true
run vsic-pattern "$fn" write --offset 60M --len 4M --seed 66 --queue 1
run vsic-pattern "$fn" verify --offset 60M --len 4M --seed 66

# By PCI address: interrupt mode writes, polling mode reads back, and the
# other way round.
run vsic-pattern "$fn" write --offset 0 --len 8M --seed 11
run vsic-pattern "pci:$fn" verify --offset 0 --len 8M --seed 11 --polling
# Registers through pread/pwrite on the device fd instead of mapped BARs.
run env VSIC_VFIO_NO_MMAP=1 vsic-pattern "$fn" verify --offset 0 --len 8M --seed 11
run vsic-pattern "$fn" write --offset 16M --len 8M --seed 22 --polling --queue 1 --chunk 4M --depth 2
run vsic-pattern "$fn" verify --offset 16M --len 8M --seed 22 --queue 1

# vsic:1 with no function map: found by asking the vfio-pci functions.
rm -f /run/vsic/functions
# VSIC 2 (nothing attached) is on vfio-pci too: asking must tell them apart.
to_vfio "$fn2"
run vsic-pattern vsic:1 write --offset 32M --len 4M --seed 33 --depth 32 --chunk 64K
run vsic-pattern vsic:1 verify --offset 32M --len 4M --seed 33 --polling
if vsic-pattern vsic:2 verify --offset 32M --len 4M --seed 33 2>/tmp/err; then
    fail "vsic:2 reached VSIC 1's data"
fi
grep -q IOERR /tmp/err || fail "vsic:2 (no VSA attached) did not fail with IOERR: $(cat /tmp/err)"
if vsic-pattern vsic:3 verify --len 4K 2>/tmp/err; then fail "vsic:3 (on virtio_blk) opened"; fi
grep -q virtio /tmp/err || fail "unclear error for vsic:3 on virtio_blk: $(cat /tmp/err)"

# vsic:1 through the map the control plane writes; provided DMA memory.
mkdir -p /run/vsic
echo "1 $fn" >/run/vsic/functions
run vsic-pattern vsic:1 write --offset 48M --len 4M --seed 44 --provided-dma
run vsic-pattern vsic:1 verify --offset 48M --len 4M --seed 44 --provided-dma --polling

# An unprivileged application: the group file is its, the memory is
# provided (it cannot read guest-physical addresses itself).
group=$(basename "$(readlink /sys/bus/pci/devices/"$fn"/iommu_group)")
chown 65534:65534 /dev/vfio/"$group"
if vsic-pattern vsic:1 verify --len 4K --user 65534 2>/tmp/err; then
    fail "an unprivileged open without provided DMA memory succeeded"
fi
grep -q CAP_SYS_ADMIN /tmp/err || fail "unclear refusal for an unprivileged open: $(cat /tmp/err)"
run vsic-pattern vsic:1 write --offset 56M --len 4M --seed 55 --provided-dma --user 65534
run vsic-pattern vsic:1 verify --offset 56M --len 4M --seed 55 --provided-dma --user 65534 --polling

# A wrong pattern is noticed (the check can fail).
if vsic-pattern vsic:1 verify --offset 48M --len 1M --seed 45 --polling; then
    fail "verify with the wrong seed passed"
fi
echo "ok: VSIC 1 over VFIO, all modes"
