#!/bin/sh
# `store init` on a VSIC that was a user's empties it first: alice attaches
# her VSA to VSIC 1 through the service; root then makes VSIC 1 the
# capability store. Alice's attachment is gone (only the store VSA, at slot
# 0, is left), so nobody the store's VSIC later goes to inherits it: root's
# VSICs keep their attachments.
# launch: --vsics 2
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

add_user alice 1001
start_service

# attachments_of N: VSIC N's attachments as `vsicctl list` shows them.
attachments_of() {
    vsicctl list | awk -v n="$1" '$1 == n && ($2 == "enabled" || $2 == "disabled") { $1 = $2 = $3 = $4 = $5 = ""; print }'
}

vsicctl vsa create --size 16M --cap /home/alice/data.cap
chown 1001:1001 /home/alice/data.cap
vsicctl vsic bind --vsic 1 --vfio --user alice
as_user 1001 "vsicctl request-attach --vsic 1 --cap /home/alice/data.cap --slot 1"
as_user 1001 "vsic-check write vsic:1 --slot 1 --len 1M --seed 31"
before=$(attachments_of 1)
echo "VSIC 1 before store init: $before"
echo "$before" | grep -q "slot1=vsa" || fail "alice's attachment does not show"

vsicctl store init --vsic 1 --size 32M
after=$(attachments_of 1)
echo "VSIC 1 after store init: $after"
echo "$after" | grep -q "slot1=" && { vsicctl list; fail "alice's attachment stayed with the store's VSIC"; }
echo "$after" | grep -q "slot0=vsa" || { vsicctl list; fail "the store VSA is not at slot 0"; }
[ -e /var/lib/vsic/store.cap ] || fail "the store is not mounted"
echo "ok: the store's VSIC kept none of alice's attachments"
