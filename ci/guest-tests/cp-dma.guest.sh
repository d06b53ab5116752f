#!/bin/sh
# DMA protection programmed by the control plane: a VSIC bound to alice is
# enforced with no windows; the service adds windows for the DMA memory it
# hands her, and her application works within them (no protection
# violation counted). Rebinding to bob leaves no windows; the kernel's
# driver gets the VSIC in open mode; unbinding leaves it enforced and empty.
# launch: --vsics 2
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

add_user alice 1001
add_user bob 1002
start_service

vsicctl vsa create --size 16M --cap /home/alice/data.cap
chown 1001:1001 /home/alice/data.cap

# (a) Bound to alice: enforced, no windows until the service hands out memory.
vsicctl vsic bind --vsic 0 --vfio --user alice
[ "$(dma_mode_of 0)" = enforced ] || fail "alice's VSIC is $(dma_mode_of 0), not enforced"
[ "$(dma_windows_of 0)" -eq 0 ] || fail "alice's VSIC has windows before she got DMA memory"
as_user 1001 "vsicctl request-attach --vsic 0 --cap /home/alice/data.cap --slot 1"
as_user 1001 "vsic-check write vsic:0 --slot 1 --len 1M --seed 5" || fail "alice's write failed within her windows"
as_user 1001 "vsic-check verify vsic:0 --slot 1 --len 1M --seed 5" || fail "alice's verify failed within her windows"
[ "$(dma_windows_of 0)" -gt 0 ] || fail "the service added no window for alice's DMA memory"
vsicctl vsic dma-window list --vsic 0
[ "$(violations_of 0)" -eq 0 ] || fail "alice's own I/O counted as a violation"

# (c) Rebinding to bob clears the windows; the kernel driver gets open mode.
vsicctl vsic dma-window add --vsic 0 --start 0x10000000 --len 0x200000 --read --write
vsicctl vsic bind --vsic 0 --vfio --user bob
[ "$(dma_windows_of 0)" -eq 0 ] || fail "bob's VSIC kept earlier windows"
[ "$(dma_mode_of 0)" = enforced ] || fail "bob's VSIC is not enforced"
vsicctl vsic bind --vsic 0 --kernel
[ "$(dma_mode_of 0)" = open ] || fail "the kernel's VSIC is $(dma_mode_of 0), not open"
vsicctl vsic unbind --vsic 0
[ "$(dma_mode_of 0)" = enforced ] || fail "an unbound VSIC is not enforced"
[ "$(dma_windows_of 0)" -eq 0 ] || fail "an unbound VSIC has windows"
echo "ok: DMA protection follows the VSIC's owner"
