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

# mode_of N / windows_of N: VSIC N's DMA mode and its number of windows.
mode_of() {
    vsicctl vsic dma-mode --vsic "$1" --json | sed -n 's/.*"dma_mode": "\([a-z]*\)".*/\1/p'
}
windows_of() {
    vsicctl vsic dma-window list --vsic "$1" --json | grep -c '"start"' || true
}
# violations_of N: VSIC N's protection_violations (keys are sorted, so the
# counter comes before the "vsic" key of the same VSIC).
violations_of() {
    vsicctl stats --json | awk -v n="$1" '
        /"protection_violations":/ { gsub(/[^0-9]/, "", $2); v = $2 }
        /"vsic":/ { gsub(/[^0-9]/, "", $2); if ($2 == n) { print v; exit } }'
}

vsicctl vsa create --size 16M --cap /home/alice/data.cap
chown 1001:1001 /home/alice/data.cap

# (a) Bound to alice: enforced, no windows until the service hands out memory.
vsicctl vsic bind --vsic 0 --vfio --user alice
[ "$(mode_of 0)" = enforced ] || fail "alice's VSIC is $(mode_of 0), not enforced"
[ "$(windows_of 0)" -eq 0 ] || fail "alice's VSIC has windows before she got DMA memory"
as_user 1001 "vsicctl request-attach --vsic 0 --cap /home/alice/data.cap --slot 1"
as_user 1001 "vsic-check write vsic:0 --slot 1 --len 1M --seed 5" || fail "alice's write failed within her windows"
as_user 1001 "vsic-check verify vsic:0 --slot 1 --len 1M --seed 5" || fail "alice's verify failed within her windows"
[ "$(windows_of 0)" -gt 0 ] || fail "the service added no window for alice's DMA memory"
vsicctl vsic dma-window list --vsic 0
[ "$(violations_of 0)" -eq 0 ] || fail "alice's own I/O counted as a violation"

# (c) Rebinding to bob clears the windows; the kernel driver gets open mode.
vsicctl vsic dma-window add --vsic 0 --start 0x10000000 --len 0x200000 --read --write
vsicctl vsic bind --vsic 0 --vfio --user bob
[ "$(windows_of 0)" -eq 0 ] || fail "bob's VSIC kept earlier windows"
[ "$(mode_of 0)" = enforced ] || fail "bob's VSIC is not enforced"
vsicctl vsic bind --vsic 0 --kernel
[ "$(mode_of 0)" = open ] || fail "the kernel's VSIC is $(mode_of 0), not open"
vsicctl vsic unbind --vsic 0
[ "$(mode_of 0)" = enforced ] || fail "an unbound VSIC is not enforced"
[ "$(windows_of 0)" -eq 0 ] || fail "an unbound VSIC has windows"
echo "ok: DMA protection follows the VSIC's owner"
