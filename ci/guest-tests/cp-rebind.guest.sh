#!/bin/sh
# A VSIC that leaves a user keeps none of that user's attachments: alice
# attaches her VSA through the service and writes to it; root then hands
# VSIC 0 to bob, to the kernel, or to no driver. Each time every slot is
# empty before anyone else can open the function, and bob (or the kernel)
# cannot read alice's data without her capability. Handing the VSIC back to
# the same user, or a VSIC root provisioned, keeps the attachments.
# launch: --vsics 2
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

add_user alice 1001
add_user bob 1002
# The service logs what it does (start_service's, with info messages).
RUST_LOG=info vsicctl serve >/tmp/serve.log 2>&1 &
for _ in $(seq 50); do [ -S /run/vsic/control.sock ] && break; sleep 0.1; done
[ -S /run/vsic/control.sock ] || fail "the control-plane service did not start"

# attachments_of N: VSIC N's attachments as `vsicctl list` shows them ("-"
# when none).
attachments_of() {
    vsicctl list | awk -v n="$1" '$1 == n && ($2 == "enabled" || $2 == "disabled") { print $NF }'
}

# alice_writes SLOT SEED: VSIC 0 goes to alice, who attaches her VSA at SLOT
# through the service and writes a pattern there.
alice_writes() {
    vsicctl vsic bind --vsic 0 --vfio --user alice
    as_user 1001 "vsicctl request-attach --vsic 0 --cap /home/alice/data.cap --slot $1"
    as_user 1001 "vsic-check write vsic:0 --slot $1 --len 1M --seed $2"
    as_user 1001 "vsic-check verify vsic:0 --slot $1 --len 1M --seed $2"
    [ "$(attachments_of 0)" != - ] || fail "alice's attachment does not show"
}

# expect_empty WHEN: VSIC 0 has no attachment left.
expect_empty() {
    got=$(attachments_of 0)
    [ "$got" = - ] || { vsicctl list; fail "after $1, VSIC 0 still has $got"; }
    echo "after $1: VSIC 0 has no attachment"
}

vsicctl vsa create --size 16M --cap /home/alice/data.cap
chown 1001:1001 /home/alice/data.cap

# 1. Alice -> bob: bob finds the slot empty; he cannot read her data.
alice_writes 1 21
# Alice's library had the service say where her DMA pages were once pinned.
grep -q "uid 1001 .*located [0-9]* page(s) of DMA memory after pinning" /tmp/serve.log ||
    fail "alice's DMA memory was not checked after pinning"
vsicctl vsic bind --vsic 0 --vfio --user bob
rc=0
as_user 1002 "vsic-check verify vsic:0 --slot 1 --len 1M --seed 21" >/tmp/bob.out 2>&1 || rc=$?
cat /tmp/bob.out
[ $rc -ne 0 ] || fail "bob read alice's data at her slot after the rebind"
[ $rc -eq 3 ] || fail "bob's read failed for another reason ($rc) than a refused request"
echo "bob's read was refused by the device (exit $rc)"
expect_empty "the rebind to bob"

# 2. Alice -> the kernel: the disk (slot 0) is not alice's VSA any more.
alice_writes 0 22
vsicctl vsic bind --vsic 0 --kernel
expect_empty "the rebind to the kernel"

# 3. Alice -> no driver.
alice_writes 1 23
vsicctl vsic unbind --vsic 0
expect_empty "the unbind"

# 4. Alice -> alice again keeps her attachment; so does a VSIC root
# provisioned before handing it out.
alice_writes 1 24
vsicctl vsic bind --vsic 0 --vfio --user alice
[ "$(attachments_of 0)" != - ] || fail "handing VSIC 0 to alice again detached her VSA"
as_user 1001 "vsic-check verify vsic:0 --slot 1 --len 1M --seed 24"
vsicctl vsa create --size 16M --cap /root/root.cap
vsicctl vsic attach --vsic 1 --cap /root/root.cap --slot 2
vsicctl vsic bind --vsic 1 --vfio --user bob
[ "$(attachments_of 1)" != - ] || fail "root's attachment to VSIC 1 was lost when handing it to bob"
echo "ok: every handover away from alice emptied VSIC 0 first"
