#!/bin/sh
# VSICs in two VMs (issue 13), as SR-IOV virtual functions go to different
# VMs. This guest (A) has the PF and VSICs 0 and 1; two-vm.host.sh boots a
# second guest (B, two-vm.guestb.sh) on the same vsicd with only VSIC 2 and
# no PF. A attaches a VSA to VSIC 2: B sees exactly that VSA and writes a
# pattern on it; A detaches it and B loses access; A attaches it again
# through a derived capability and revokes that: B loses access again. A
# checks that B's pattern landed on that VSA and that A's own VSA, which B
# never had, is untouched.
# launch: --vsics 3 --functions pf,0,1 --timeout 600
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

# stat_of FIELD: VSIC 2's counter FIELD from the controller.
stat_of() {
    vsicctl stats --vsic 2 --json | sed -n "s/^      \"$1\": \([0-9]*\),*$/\1/p"
}
# wait_stat FIELD MIN SECS WHAT: waits until VSIC 2's FIELD reaches MIN.
wait_stat() {
    local i=0
    while [ "$(stat_of "$1")" -lt "$2" ]; do
        i=$((i + 1))
        [ $i -le $(($3 * 2)) ] || fail "VSIC 2's $1 is $(stat_of "$1") after $3 s, expected >= $2: $4"
        sleep 0.5
    done
}
# pattern: the 4 MiB B writes (the same text in both guests).
pattern() {
    yes "two-vm: guest B wrote this line through VSIC 2" | head -c 4194304
}

# A's own data, on a VSA only A's VSIC 0 has.
vsicctl vsa create --size 8M --cap /root/a.cap
vsicctl vsic attach --vsic 0 --cap /root/a.cap --slot 0
out=$(vsicctl --json vsic bind --vsic 0 --kernel)
da=$(bound_disk "$out")
wait_size "$da" 16384
head -c 8388608 /dev/urandom >/tmp/a.data
dd if=/tmp/a.data of=/dev/$da bs=1M conv=fsync 2>/dev/null
sha_a=$(sha256sum </tmp/a.data | cut -d' ' -f1)

# The VSA for B. VSIC 2 is in DMA mode open (the default): B's kernel
# driver uses its own memory, which is all that VSIC 2's vhost-user
# connection maps.
vsicctl vsa create --size 8M --cap /root/b.cap
vsicctl vsic dma-mode --vsic 2 | tee /tmp/mode
grep -q open /tmp/mode || fail "VSIC 2 is not in open DMA mode"
vsicctl vsic attach --vsic 2 --cap /root/b.cap --slot 0
echo "A: attached the VSA to VSIC 2; waiting for B to write 4 MiB"
wait_stat bytes_written 4194304 300 "B did not write its pattern"
wait_stat bytes_read 4194304 120 "B did not read its pattern back"
sleep 2
vsicctl vsic detach --vsic 2 --slot 0
echo "A: detached; waiting for B's failed reads"
# B notices the loss and counts a refused read, or stops reading at size 0.
sleep 5

# Back again through a derived capability, then revoked.
vsicctl cap derive --cap /root/b.cap --out /root/b2.cap
reads=$(stat_of reads)
vsicctl vsic attach --vsic 2 --cap /root/b2.cap --slot 0
echo "A: attached again through a derived capability; waiting for B to read"
wait_stat reads $((reads + 4)) 120 "B did not read the VSA again"
vsicctl cap revoke --cap /root/b2.cap
echo "A: revoked the derived capability"
sleep 5
vsicctl list

# B's pattern is on that VSA; A's own VSA is as A wrote it.
vsicctl vsic attach --vsic 1 --cap /root/b.cap --slot 0
out=$(vsicctl --json vsic bind --vsic 1 --kernel)
db=$(bound_disk "$out")
wait_size "$db" 16384
echo 3 >/proc/sys/vm/drop_caches
[ "$(dd if=/dev/$db bs=1M count=4 2>/dev/null | sha256sum | cut -d' ' -f1)" = "$(pattern | sha256sum | cut -d' ' -f1)" ] ||
    fail "the VSA A gave B does not hold B's pattern"
[ "$(dd if=/dev/$da bs=1M count=8 2>/dev/null | sha256sum | cut -d' ' -f1)" = "$sha_a" ] ||
    fail "A's own VSA changed"
echo "ok (A): B's pattern is on the VSA A attached to VSIC 2; A's own VSA is intact"
