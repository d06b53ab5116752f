#!/bin/sh
# vsic-mailq in the guest on a VSA through VFIO (issue 11): Postfix's
# smtp-source delivers to `serve`; then, twice, `vsic-mailq send` streams
# messages of every slot class and extents over four sessions and `serve`
# is killed with SIGKILL mid-stream; after each kill `list --json` must
# hold every message whose 250 send read, with its id and sha256, no
# message twice, and anything else whole (mailq_check in lib.sh). The
# second round restarts `serve` on the same VSA (recovery) and checks the
# first round's messages again. The host hook then kills the whole guest
# (QEMU) mid-stream and boots it again (mailq-crash.host.sh).
# launch: --vsics 2 --queues 1
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

ip link show lo | grep -q "UP" || fail "loopback is not up"
for p in vsic-mailq smtp-source; do
    command -v $p >/dev/null || fail "$p is not in the image"
done

vsicctl vsa create --size 64M --cap /root/mq.cap
vsicctl vsic attach --vsic 0 --cap /root/mq.cap --slot 0
vsicctl vsic bind --vsic 0 --vfio --user root
MAILQ_DEV=vsic:0
ADDR=127.0.0.1:2525

# start_serve LOG: `serve` on the VSA in the background ($spid), returns
# once it listens.
start_serve() {
    vsic-mailq --dev $MAILQ_DEV serve --smtp $ADDR --workers 4 2>"$1" &
    spid=$!
    for _ in $(seq 300); do grep -q "SMTP on" "$1" && return 0; sleep 0.1; done
    cat "$1"
    fail "serve did not start"
}

# wait_acks FILE N: waits (at most 120 s) until FILE holds N ack lines.
wait_acks() {
    for _ in $(seq 1200); do
        [ "$(grep -c '^ack ' "$1" || true)" -ge "$2" ] && return 0
        sleep 0.1
    done
    fail "fewer than $2 acknowledgements in $1 after 120 s: $(tail -n 3 "$1")"
}

echo "== smtp-source delivers to serve"
start_serve /tmp/serve0.log
smtp-source -d -s 2 -m 20 -l 1024 -f src@smtp-source.example -t q@vsic.example $ADDR ||
    fail "smtp-source failed"
kill -9 $spid
wait $spid 2>/dev/null || true
n=$(vsic-mailq --dev $MAILQ_DEV list | grep -c ' <src@smtp-source.example> ' || true)
[ "$n" -eq 20 ] || fail "$n of smtp-source's 20 messages are queued"

: >/tmp/acks
for round in 1 2; do
    echo "== round $round: serve killed while send streams"
    start_serve /tmp/serve$round.log
    # Sizes: the 1, 4 and 16 KiB slot classes and extents.
    vsic-mailq send --connect $ADDR --sessions 4 --sizes 600,3000,12000,30000 --tag r$round \
        >>/tmp/acks 2>/tmp/send$round.err &
    cpid=$!
    wait_acks /tmp/acks $((round * 150))
    kill -0 $cpid || { cat /tmp/send$round.err; fail "send stopped before the kill"; }
    kill -9 $spid
    wait $spid 2>/dev/null || true
    # send ends by itself once every session lost the receiver.
    rc=0
    wait $cpid || rc=$?
    [ $rc -eq 1 ] || { cat /tmp/send$round.err; fail "send exited with $rc, not 1 (receiver gone)"; }
    cat /tmp/send$round.err
    echo "serve killed after $(grep -c '^ack ' /tmp/acks) acknowledgements in all"
    mailq_check /tmp/acks
done
echo "mailq-crash: boot 1 passed"
