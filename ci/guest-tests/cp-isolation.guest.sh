#!/bin/sh
# Two users, each owning one VSIC through VFIO. Neither can open the other's
# VFIO group, nor get the other's VSA attached (by asking for the other's
# VSIC, by using the other's capability file, or with a forged token), nor
# detach the other's slot; a user with no VSIC gets no DMA memory. The
# owner's data is untouched by all of it.
# launch: --vsics 3
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

# expect_refusal STATUS UID COMMAND: the command fails and names STATUS.
expect_refusal() {
    if as_user "$2" "$3 --json" >/tmp/out.json 2>/tmp/err; then
        fail "uid $2 was allowed: $3"
    fi
    grep -q "\"status\": \"$1\"" /tmp/out.json || { cat /tmp/out.json /tmp/err; fail "expected $1 for: $3"; }
    echo "refused as expected ($1): uid $2: $3"
}

add_user alice 1001
add_user bob 1002
add_user carol 1003
start_service

vsicctl vsa create --size 16M --cap /home/alice/data.cap
vsicctl vsa create --size 16M --cap /home/bob/data.cap
chown 1001:1001 /home/alice/data.cap
chown 1002:1002 /home/bob/data.cap
[ "$(stat -c %a /home/alice/data.cap)" = 600 ] || fail "capability file is not mode 0600"
vsicctl vsic bind --vsic 0 --vfio --user alice
vsicctl vsic bind --vsic 1 --vfio --user bob
group_a=$(basename "$(readlink /sys/bus/pci/devices/"$(awk '$1 == 0 { print $2 }' /run/vsic/functions)"/iommu_group)")
[ "$(stat -c '%u %a' /dev/vfio/"$group_a")" = "1001 600" ] || fail "alice's group node is $(stat -c '%u %a' /dev/vfio/"$group_a")"

as_user 1001 "vsicctl request-attach --vsic 0 --cap /home/alice/data.cap --slot 1"
as_user 1002 "vsicctl request-attach --vsic 1 --cap /home/bob/data.cap --slot 1"
as_user 1001 "vsic-check write vsic:0 --slot 1 --len 4M --seed 11"

# Bob cannot open alice's VFIO group, directly or through the library.
if as_user 1002 "exec 3<>/dev/vfio/$group_a" 2>/dev/null; then fail "bob opened /dev/vfio/$group_a"; fi
echo "refused as expected: bob cannot open /dev/vfio/$group_a"
if as_user 1002 "vsic-check verify vsic:0 --slot 1 --len 4M --seed 11" >/tmp/out 2>&1; then
    fail "bob read alice's VSIC"
fi
grep -qi "permission denied" /tmp/out || { cat /tmp/out; fail "bob's failure does not say why"; }
echo "refused as expected: $(cat /tmp/out)"

# Bob cannot get anything attached to alice's VSIC, nor detach her slot.
expect_refusal not-owner 1002 "vsicctl request-attach --vsic 0 --cap /home/bob/data.cap --slot 2"
expect_refusal not-owner 1002 "vsicctl request-detach --vsic 0 --slot 1"
# Bob cannot read alice's capability file, so he cannot pass it.
expect_refusal file-error 1002 "vsicctl request-attach --vsic 1 --cap /home/alice/data.cap --slot 2"
# A forged token for alice's VSA: the right VSA id, a made-up secret.
sed 's/secret=[0-9a-f]*/secret=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef/' \
    /home/alice/data.cap >/home/bob/forged.cap
chown 1002:1002 /home/bob/forged.cap
expect_refusal bad-token 1002 "vsicctl request-attach --vsic 1 --cap /home/bob/forged.cap --slot 2"
# A user who owns no VSIC gets no DMA memory, and no attach anywhere.
expect_refusal not-owner 1003 "vsicctl request-attach --vsic 0 --cap /dev/null --slot 3" || true
if as_user 1003 "vsic-check verify vsic:0 --slot 1 --len 4K" >/tmp/out 2>&1; then fail "carol opened a VSIC"; fi
grep -q "not-owner" /tmp/out || { cat /tmp/out; fail "carol got DMA memory"; }
echo "refused as expected: carol: $(cat /tmp/out)"

# Nothing of that touched alice's attachment or data.
vsicctl list
vsicctl list --json | grep -q '"vsa": 1' || fail "alice's VSA is gone"
as_user 1001 "vsic-check verify vsic:0 --slot 1 --len 4M --seed 11" || fail "alice's data changed"
echo "ok: neither user can reach the other's VSIC or VSA"
