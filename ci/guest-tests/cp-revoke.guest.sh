#!/bin/sh
# Revoking a capability while its holder is doing I/O: the holder's
# requests fail cleanly with a clear error, the holder cannot attach again
# with it, and another application on another VSIC carries on undisturbed.
# launch: --vsics 2
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

add_user alice 1001
add_user bob 1002
start_service

# Alice holds a capability derived from the root the administrator keeps.
vsicctl vsa create --size 16M --cap /root/a-root.cap
vsicctl cap derive --cap /root/a-root.cap --out /home/alice/a.cap
vsicctl vsa create --size 16M --cap /home/bob/b.cap
chown 1001:1001 /home/alice/a.cap
chown 1002:1002 /home/bob/b.cap
vsicctl vsic bind --vsic 0 --vfio --user alice
vsicctl vsic bind --vsic 1 --vfio --user bob
as_user 1001 "vsicctl request-attach --vsic 0 --cap /home/alice/a.cap --slot 1"
as_user 1002 "vsicctl request-attach --vsic 1 --cap /home/bob/b.cap --slot 1"

as_user 1001 "vsic-check loop vsic:0 --slot 1 --len 4M --seed 1 --seconds 60" >/tmp/alice.out 2>&1 &
alice=$!
as_user 1002 "vsic-check loop vsic:1 --slot 1 --len 4M --seed 2 --seconds 12" >/tmp/bob.out 2>&1 &
bob=$!
sleep 4
kill -0 $alice 2>/dev/null || { cat /tmp/alice.out; fail "alice stopped before the revoke"; }
revoked_at=$(date +%s)
vsicctl cap revoke --cap /home/alice/a.cap
rc_a=0; wait $alice || rc_a=$?
stopped_after=$(($(date +%s) - revoked_at))
rc_b=0; wait $bob || rc_b=$?
echo "alice: $(cat /tmp/alice.out)"
echo "bob: $(cat /tmp/bob.out)"
[ $rc_a -eq 3 ] || fail "alice's application ended with status $rc_a, not 3 (I/O refused by the device)"
grep -q "failed: the device failed the request" /tmp/alice.out || fail "alice's error is not clear"
[ $stopped_after -le 10 ] || fail "alice's application went on for $stopped_after s after the revoke"
[ $rc_b -eq 0 ] || fail "bob's application was disturbed (status $rc_b)"
grep -q "rounds on vsic:1 slot 1" /tmp/bob.out || fail "bob ran no rounds"

# The revoke detached alice's slot and nothing else; her capability is dead.
vsicctl list
vsicctl list --json >/tmp/list.json
[ "$(grep -c '"vsa": ' /tmp/list.json)" -ge 3 ] || { cat /tmp/list.json; fail "VSAs or attachments missing"; }
if as_user 1001 "vsicctl request-attach --vsic 0 --cap /home/alice/a.cap --slot 1 --json" >/tmp/out 2>&1; then
    fail "a revoked capability was attached"
fi
grep -q '"status": "revoked-token"' /tmp/out || { cat /tmp/out; fail "wrong refusal for a revoked capability"; }
# The root capability still works; the VSA kept what alice completed.
vsicctl vsic attach --vsic 0 --cap /root/a-root.cap --slot 2
vsicctl list
echo "ok: revoke stopped alice's I/O after ${stopped_after} s with a clear error; bob was undisturbed"
