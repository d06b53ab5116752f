#!/bin/sh
# vsic-kv in the guest on a VSA through VFIO (issue 10): put-seq killed
# with SIGKILL mid-stream, then `serve` killed under redis-benchmark load
# while put-seq --connect counts acknowledgements; every acknowledged key
# is present and intact afterwards. redis-cli works against serve, and
# Redis itself runs in the guest on loopback. The host hook then kills the
# whole guest (QEMU) mid-stream and boots it again (kv-crash.host.sh).
# launch: --vsics 2 --queues 1
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

ip link show lo | grep -q "UP" || fail "loopback is not up"
for p in redis-server redis-cli redis-benchmark vsic-kv; do
    command -v $p >/dev/null || fail "$p is not in the image"
done

vsicctl vsa create --size 64M --cap /root/kv.cap
vsicctl vsic attach --vsic 0 --cap /root/kv.cap --slot 0
vsicctl vsic bind --vsic 0 --vfio --user root
DEV=vsic:0

# wait_acks FILE N: waits (at most 120 s) until FILE holds N ack lines.
wait_acks() {
    for _ in $(seq 1200); do
        [ "$(grep -c '^ack ' "$1" || true)" -ge "$2" ] && return 0
        sleep 0.1
    done
    fail "fewer than $2 acknowledgements in $1 after 120 s: $(tail -n 3 "$1")"
}

# verify N: every key k0..k{N-1} present and intact.
verify() {
    out=$(vsic-kv --dev $DEV verify-seq "$1" || true)
    echo "verify-seq $1: $out"
    [ "$out" = "present=$1 missing=0 corrupt=0" ] || fail "acknowledged keys lost: $out"
}

echo "== put-seq killed mid-stream"
vsic-kv --dev $DEV put-seq 10000000 >/tmp/acks 2>/tmp/put.err &
pid=$!
wait_acks /tmp/acks 500
kill -9 $pid
wait $pid 2>/dev/null || true
acked=$(grep -c '^ack ' /tmp/acks)
echo "put-seq killed after $acked acknowledgements"
verify "$acked"

echo "== serve killed under redis-benchmark load"
vsic-kv --dev $DEV serve --listen 127.0.0.1:6380 2>/tmp/serve-kv.log &
spid=$!
for _ in $(seq 300); do redis-cli -p 6380 PING 2>/dev/null | grep -q PONG && break; sleep 0.1; done
[ "$(redis-cli -p 6380 PING)" = PONG ] || { cat /tmp/serve-kv.log; fail "serve did not answer"; }
# The store starts empty for this part: acknowledgements are counted anew.
[ "$(redis-cli -p 6380 FLUSHALL)" = OK ] || fail "FLUSHALL"
[ "$(redis-cli -p 6380 SET hello world)" = OK ] || fail "redis-cli SET"
[ "$(redis-cli -p 6380 GET hello)" = world ] || fail "redis-cli GET"
redis-cli -p 6380 INFO persistence | grep -q "aof_enabled:1" || fail "INFO persistence"
redis-benchmark -p 6380 -t set -n 100000000 -c 8 -P 4 -d 1024 -r 1000 -q >/dev/null 2>&1 &
bpid=$!
vsic-kv --connect 127.0.0.1:6380 put-seq 10000000 >/tmp/acks2 2>/dev/null &
cpid=$!
wait_acks /tmp/acks2 300
kill -0 $bpid || fail "redis-benchmark stopped before the kill"
kill -9 $spid
wait $spid 2>/dev/null || true
wait $cpid 2>/dev/null || true
kill $bpid 2>/dev/null || true
wait $bpid 2>/dev/null || true
acked=$(grep -c '^ack ' /tmp/acks2)
echo "serve killed after $acked acknowledgements to put-seq --connect"
verify "$acked"
vsic-kv --dev $DEV stats

echo "== Redis itself in the guest"
mkdir -p /tmp/redis
redis-server --bind 127.0.0.1 --port 6381 --save "" --appendonly yes --appendfsync always --dir /tmp/redis \
    >/tmp/redis.log 2>&1 &
rpid=$!
for _ in $(seq 100); do redis-cli -p 6381 PING 2>/dev/null | grep -q PONG && break; sleep 0.1; done
[ "$(redis-cli -p 6381 SET a b)" = OK ] || { cat /tmp/redis.log; fail "redis-server in the guest"; }
kill $rpid
wait $rpid 2>/dev/null || true
echo "kv-crash: boot 1 passed"
