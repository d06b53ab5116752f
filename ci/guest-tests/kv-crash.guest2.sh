#!/bin/sh
# Boots 2 and 3 of kv-crash (run by kv-crash.host.sh).
# vsic.phase=put: put-seq on the VSA of VSIC 0 (still attached from boot 1)
#   from k0 on, printing each acknowledgement to the console; the host
#   kills QEMU in the middle.
# vsic.phase=verify vsic.acked=M: after that crash, k0..k{M-1} (the keys
#   the host saw acknowledged) are present and intact.
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

vsicctl vsic bind --vsic 0 --vfio --user root
case ${VSIC_PHASE:-} in
put)
    # A fresh sequence: every acknowledged key must come from this boot.
    vsic-kv --dev vsic:0 serve --listen 127.0.0.1:6380 2>/tmp/serve.log &
    spid=$!
    for _ in $(seq 300); do redis-cli -p 6380 PING 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    [ "$(redis-cli -p 6380 FLUSHALL)" = OK ] || fail "FLUSHALL"
    kill -9 $spid
    wait $spid 2>/dev/null || true
    echo "put-seq starting"
    vsic-kv --dev vsic:0 put-seq 100000000
    fail "put-seq finished: the host should have killed the guest"
    ;;
verify)
    out=$(vsic-kv --dev vsic:0 verify-seq "$VSIC_ACKED" || true)
    echo "after the guest was killed: verify-seq $VSIC_ACKED: $out"
    [ "$out" = "present=$VSIC_ACKED missing=0 corrupt=0" ] || fail "acknowledged keys lost"
    ;;
*) fail "unknown phase '${VSIC_PHASE:-}'" ;;
esac
