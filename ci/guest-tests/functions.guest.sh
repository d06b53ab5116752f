#!/bin/sh
# The guest sees the PF and K VSIC functions, each a modern virtio-blk PCI
# function (1af4:1042) in an IOMMU group of its own.
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

expected=$((VSIC_VSICS + 1))
count=0
seen_groups=" "
for dev in /sys/bus/pci/devices/*; do
    [ "$(cat "$dev/vendor")" = 0x1af4 ] || continue
    [ "$(cat "$dev/device")" = 0x1042 ] || continue
    count=$((count + 1))
    addr=$(basename "$dev")
    [ -e "$dev/iommu_group" ] || fail "$addr has no IOMMU group (intel_iommu=on?)"
    group=$(basename "$(readlink "$dev/iommu_group")")
    case "$seen_groups" in
    *" $group "*) fail "$addr shares IOMMU group $group with another function" ;;
    esac
    seen_groups="$seen_groups$group "
    # Bridges (the function's own root port) may share the group; no other endpoint may.
    for member in /sys/kernel/iommu_groups/"$group"/devices/*; do
        m=$(basename "$member")
        [ "$m" = "$addr" ] && continue
        case "$(cat "$member/class")" in
        0x0604*) ;;
        *) fail "IOMMU group $group of $addr also holds endpoint $m" ;;
        esac
    done
    echo "$addr virtio-blk, IOMMU group $group"
done
[ "$count" -eq "$expected" ] || fail "found $count virtio-blk functions, expected $expected (PF + $VSIC_VSICS VSICs)"

# With the real controller each function names itself through GET_ID.
if [ "${VSIC_BACKEND:-vsicd}" = vsicd ]; then
    # The sysfs serial attribute has no trailing newline.
    serials=$(for b in /sys/block/vd*; do echo "$(cat "$b/serial")"; done | sort | tr '\n' ' ')
    want="vsic-pf"
    i=0
    while [ "$i" -lt "$VSIC_VSICS" ]; do
        want="$want vsic-vsic$i"
        i=$((i + 1))
    done
    want=$(echo "$want" | tr ' ' '\n' | sort | tr '\n' ' ')
    [ "$serials" = "$want" ] || fail "block device serials are '$serials', expected '$want'"
    echo "serials: $serials"
fi
echo "ok: $count functions, $count IOMMU groups"
