#!/bin/sh
# Guest B of two-vm (booted by two-vm.host.sh): only VSIC 2 of the vsicd
# guest A controls, no PF. B sees the VSA A attaches and nothing else, and
# loses access when A detaches it and, later, when A revokes the
# capability it was attached with.
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

pattern() {
    yes "two-vm: guest B wrote this line through VSIC 2" | head -c 4194304
}
# wait_for_size SECTORS SECS: waits for /dev/$d to be SECTORS long.
wait_for_size() {
    local i=0
    while [ "$(cat /sys/block/$d/size)" != "$1" ]; do
        i=$((i + 1))
        [ $i -le $(($2 * 5)) ] || fail "/dev/$d is $(cat /sys/block/$d/size) sectors after $2 s, expected $1"
        sleep 0.2
    done
}
# wait_for_loss SECS: reads the disk until a read fails or its size drops
# to 0; prints how it ended.
wait_for_loss() {
    local i=0
    while :; do
        if [ "$(cat /sys/block/$d/size)" = 0 ]; then
            echo "B: /dev/$d went to 0 sectors"
            return 0
        fi
        echo 3 >/proc/sys/vm/drop_caches
        if ! dd if=/dev/$d of=/dev/null bs=4096 count=1 2>/dev/null; then
            echo "B: a read of /dev/$d failed"
            return 0
        fi
        i=$((i + 1))
        [ $i -le $(($1 * 5)) ] || fail "B could still read /dev/$d $1 s later"
        sleep 0.2
    done
}

# Nothing but VSIC 2: one virtio-blk function, no PF.
count=$(grep -l 0x1af4 /sys/bus/pci/devices/*/vendor | wc -l)
[ "$count" -eq 1 ] || fail "B has $count virtio functions, expected 1"
d=$(disk_with_serial vsic-vsic2) || fail "no disk with serial vsic-vsic2"
if vsicctl list >/tmp/list 2>&1; then fail "B reached a PF"; fi
echo "B: /dev/$d is VSIC 2; no PF here ($(tail -n1 /tmp/list))"

wait_for_size 16384 300
echo "B: A's VSA arrived: 8 MiB"
pattern | dd of=/dev/$d bs=65536 conv=fsync 2>/dev/null
echo 3 >/proc/sys/vm/drop_caches
[ "$(dd if=/dev/$d bs=1M count=4 2>/dev/null | sha256sum)" = "$(pattern | sha256sum)" ] || fail "B read back something else"
# Past the VSA's end there is nothing to reach.
if dd if=/dev/$d of=/dev/null bs=512 skip=16384 count=1 2>/dev/null | grep -q .; then
    fail "B read past the end of its VSA"
fi
echo "B: wrote and read back 4 MiB"
wait_for_loss 120
wait_for_size 16384 120
echo "B: the VSA is back"
wait_for_loss 120
echo "ok (B): saw only its VSA, lost it on detach and on revoke"
