#!/bin/sh
# Two applications as two users, each on its own VSIC (handed to it through
# VFIO by vsicctl) with its own VSA attached by the control-plane service,
# do I/O at the same time through the vsic library with interrupt
# completions; each verifies every byte it reads back.
# launch: --vsics 3
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

add_user alice 1001
add_user bob 1002
start_service

# The administrator creates one VSA per user and hands each user a VSIC.
vsicctl vsa create --size 64M --cap /home/alice/data.cap
vsicctl vsa create --size 64M --cap /home/bob/data.cap
chown 1001:1001 /home/alice/data.cap
chown 1002:1002 /home/bob/data.cap
vsicctl vsic bind --vsic 0 --vfio --user alice
vsicctl vsic bind --vsic 1 --vfio --user bob
vsicctl functions

# Each user has its own VSA attached to slot 1 of its own VSIC, without root.
as_user 1001 vsicctl request-attach --vsic 0 --cap /home/alice/data.cap --slot 1
as_user 1002 vsicctl request-attach --vsic 1 --cap /home/bob/data.cap --slot 1
vsicctl list

# Both write and verify at the same time, 8 MiB rounds, different seeds.
start=$(date +%s)
as_user 1001 vsic-check loop vsic:0 --slot 1 --len 8M --seed 100 --seconds 6 >/tmp/alice.out 2>&1 &
alice=$!
as_user 1002 vsic-check loop vsic:1 --slot 1 --len 8M --seed 200 --seconds 6 >/tmp/bob.out 2>&1 &
bob=$!
rc_a=0; wait $alice || rc_a=$?
rc_b=0; wait $bob || rc_b=$?
cat /tmp/alice.out /tmp/bob.out
[ $rc_a -eq 0 ] || fail "alice's application failed ($rc_a)"
[ $rc_b -eq 0 ] || fail "bob's application failed ($rc_b)"
grep -q "rounds on vsic:0 slot 1" /tmp/alice.out || fail "alice ran no rounds"
grep -q "rounds on vsic:1 slot 1" /tmp/bob.out || fail "bob ran no rounds"
grep -q "(2 queues, interrupts)" /tmp/alice.out || fail "alice did not use both queues with interrupts"

# Each VSA holds its owner's last round, not the other's: the last round's
# seed is checked by each user on its own VSIC.
last_a=$(sed -n 's/.*: \([0-9]*\) rounds on.*/\1/p' /tmp/alice.out)
last_b=$(sed -n 's/.*: \([0-9]*\) rounds on.*/\1/p' /tmp/bob.out)
as_user 1001 vsic-check verify vsic:0 --slot 1 --len 8M --seed $((100 + last_a - 1)) ||
    fail "alice's VSA does not hold her last round"
as_user 1002 vsic-check verify vsic:1 --slot 1 --len 8M --seed $((200 + last_b - 1)) ||
    fail "bob's VSA does not hold his last round"

# The device saw the traffic on both VSICs and no protection errors.
vsicctl stats
echo "ok: two users did I/O on their own VSICs at once ($(($(date +%s) - start)) s)"
