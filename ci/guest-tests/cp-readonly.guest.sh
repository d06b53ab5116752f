#!/bin/sh
# A read-only capability derived from a VSA's root: attaching it read-write
# is refused by the device, attaching it read-only gives reads, and the
# device refuses every write (the application sees a clean I/O error and the
# data stays as it was).
# launch: --vsics 2
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

add_user alice 1001
start_service

# The administrator fills a VSA (through VSIC 0, before alice has it) and
# gives alice a read-only capability for it.
vsicctl vsa create --size 16M --cap /root/vsa.cap
vsicctl vsic bind --vsic 0 --vfio --user alice
vsicctl vsic attach --vsic 0 --cap /root/vsa.cap --slot 2
vsic-check write vsic:0 --slot 2 --len 4M --seed 5
vsicctl vsic detach --vsic 0 --slot 2
vsicctl cap derive --cap /root/vsa.cap --read-only --out /home/alice/ro.cap
chown 1001:1001 /home/alice/ro.cap
vsicctl cap show --cap /home/alice/ro.cap | grep -q 'r-- (read)' || fail "derived capability is not read-only"

# Read-write with a read-only capability: the device says no.
if as_user 1001 "vsicctl request-attach --vsic 0 --cap /home/alice/ro.cap --slot 1 --json" >/tmp/out 2>&1; then
    fail "a read-only capability was attached read-write"
fi
grep -q '"status": "permission-denied"' /tmp/out || { cat /tmp/out; fail "wrong refusal"; }
echo "refused as expected: read-write attach with a read-only capability"

as_user 1001 "vsicctl request-attach --vsic 0 --cap /home/alice/ro.cap --slot 1 --read-only"
vsicctl list
as_user 1001 "vsic-check verify vsic:0 --slot 1 --len 4M --seed 5" || fail "reads through the read-only attachment failed"
rc=0
as_user 1001 "vsic-check write vsic:0 --slot 1 --len 64K --offset 1M --seed 6" >/tmp/out 2>&1 || rc=$?
cat /tmp/out
[ $rc -eq 3 ] || fail "a write through the read-only attachment ended with status $rc, not 3 (refused by the device)"
grep -q "write of .* failed: the device failed the request" /tmp/out || fail "the refused write is not reported clearly"
# The refusal counted as a protection violation; the data is unchanged.
vsicctl stats --vsic 0 --json >/tmp/stats.json
grep -q '"protection_violations": [1-9]' /tmp/stats.json || { cat /tmp/stats.json; fail "no violation counted"; }
as_user 1001 "vsic-check verify vsic:0 --slot 1 --len 4M --seed 5" || fail "the data changed"
echo "ok: the read-only capability gives reads and the device refuses writes"
