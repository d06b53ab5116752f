#!/bin/sh
# DMA protection programmed by the control plane: a VSIC bound to alice is
# enforced with no windows; the service adds windows for the DMA memory it
# hands her, and her application works within them (no protection
# violation counted); memory she freed goes to nobody else while her
# windows name it. Rebinding to bob leaves no windows; the kernel's
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

# (b) The memory alice had is freed now, but her windows still name it: it
# goes to nobody else meanwhile. Bob, on VSIC 1, gets other pages.
vsicctl vsa create --size 16M --cap /home/bob/data.cap
chown 1002:1002 /home/bob/data.cap
vsicctl vsic bind --vsic 1 --vfio --user bob
as_user 1002 "vsicctl request-attach --vsic 1 --cap /home/bob/data.cap --slot 1"
as_user 1002 "vsic-check write vsic:1 --slot 1 --len 1M --seed 6" || fail "bob's write failed"
# windows N: "start len" per window of VSIC N, as decimal.
windows() {
    vsicctl vsic dma-window list --vsic "$1" | awk '$1 ~ /^0x/ { print $1, substr($2, 2) }' |
        while read -r start len; do echo "$((start)) $((len))"; done
}
windows 0 >/tmp/alice.win
windows 1 >/tmp/bob.win
[ -s /tmp/alice.win ] && [ -s /tmp/bob.win ] || fail "no windows to compare"
while read -r as al; do
    while read -r bs bl; do
        if [ "$as" -lt $((bs + bl)) ] && [ "$bs" -lt $((as + al)) ]; then
            vsicctl vsic dma-window list --vsic 0
            vsicctl vsic dma-window list --vsic 1
            fail "bob's DMA memory lies in alice's windows"
        fi
    done </tmp/bob.win
done </tmp/alice.win
echo "alice's and bob's windows are disjoint"

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
