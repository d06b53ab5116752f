#!/bin/sh
# Boots 2 and 3 of mailq-crash (run by mailq-crash.host.sh), on the VSA of
# VSIC 0, still attached from boot 1.
# vsic.phase=send: `serve` on the VSA, `vsic-mailq send` streaming to it
#   with every acknowledgement ("ack FROM ID") on the console; the host
#   kills QEMU in the middle.
# vsic.phase=verify: after that crash, /vsic/acks (the ack lines the host
#   saw on boot 2's console, and boot 1's) are all in the queue, whole,
#   with their ids, none twice (mailq_check).
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

vsicctl vsic bind --vsic 0 --vfio --user root
MAILQ_DEV=vsic:0
case ${VSIC_PHASE:-} in
send)
    vsic-mailq --dev $MAILQ_DEV serve --smtp 127.0.0.1:2525 --workers 4 2>/tmp/serve.log &
    for _ in $(seq 300); do grep -q "SMTP on" /tmp/serve.log && break; sleep 0.1; done
    grep -q "SMTP on" /tmp/serve.log || { cat /tmp/serve.log; fail "serve did not start"; }
    echo "send starting"
    vsic-mailq send --connect 127.0.0.1:2525 --sessions 4 --sizes 600,3000,12000,30000 --tag boot2
    fail "send finished: the host should have killed the guest"
    ;;
verify)
    [ -r /vsic/acks ] || fail "no /vsic/acks from the host"
    echo "after the guest was killed: $(grep -c '^ack ' /vsic/acks) acknowledgements to check"
    mailq_check /vsic/acks
    ;;
*) fail "unknown phase '${VSIC_PHASE:-}'" ;;
esac
