#!/usr/bin/env bash
# The power cut's negative control, on the host: vsicd with a volatile
# write-back cache, applications on a VSA over vhost-user, `power-cut` and
# `power-on` through the management socket. It must show that
#   1. vsic-pattern --no-flush (acknowledges before FLUSH) loses data it
#      reported written: the model bites;
#   2. vsic-pattern (FLUSH before it reports) loses nothing;
#   3. vsic-kv put-seq, killed mid-stream, then the power cut: every
#      acknowledged key is present and intact (verify-seq);
#   4. without --volatile-cache, the same --no-flush write survives a cut.
# Uses the release builds (cargo build --release --bins --examples).
# Prints "power-cut-control: ok" and exits 0 when all four hold.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$repo/target}/release
mgmt_tool=$repo/qemu-configs/vsic-mgmt
for b in "$bin/vsicd" "$bin/vsicctl" "$bin/vsic-kv" "$bin/examples/vsic-pattern"; do
    [[ -x $b ]] || { echo "power-cut-control: $b missing (cargo build --release --bins --examples)"; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/tmp}/vsic-power-cut.XXXXXX")
vsicd_pid=
cleanup() {
    if [[ -n $vsicd_pid ]]; then
        kill "$vsicd_pid" 2>/dev/null || true
        wait "$vsicd_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "power-cut-control: FAIL: $*"
    echo "--- vsicd log"
    tail -n 20 "$work/vsicd.log" 2>/dev/null || true
    exit 1
}

# start_vsicd ARGS...: a fresh vsicd on fresh drives, a 64 MiB VSA in slot 0
# of VSIC 0.
start_vsicd() {
    if [[ -n $vsicd_pid ]]; then
        kill "$vsicd_pid"
        wait "$vsicd_pid" 2>/dev/null || true
    fi
    rm -rf "$work/sock" "$work"/d*.img "$work/vsa.cap"
    "$bin/vsicd" --socket-dir "$work/sock" --drive "$work/d0.img,size=256M" --vsics 1 --queues 1 \
        "$@" >"$work/vsicd.log" 2>&1 &
    vsicd_pid=$!
    for _ in $(seq 300); do
        grep -q "vsicd: listening" "$work/vsicd.log" && break
        kill -0 "$vsicd_pid" 2>/dev/null || fail "vsicd exited"
        sleep 0.05
    done
    ctl vsa create --size 64M --cap "$work/vsa.cap" >/dev/null
    ctl vsic attach --vsic 0 --cap "$work/vsa.cap" --slot 0 >/dev/null
}
ctl() { "$bin/vsicctl" --vhost-user "$work/sock/pf.sock" "$@"; }
mgmt() { "$mgmt_tool" "$work/sock/mgmt.sock" "$@"; }
dev=vhost-user:$work/sock/vsic0.sock
pattern() { "$bin/examples/vsic-pattern" "$dev" "$@" --len 8M; }
cut() {
    local r
    r=$(mgmt power-cut) || fail "power-cut"
    mgmt power-on >/dev/null || fail "power-on"
    echo "$r"
}

start_vsicd --volatile-cache 64M

echo "== 1. vsic-pattern --no-flush: acknowledged, then lost"
out=$(pattern write --seed 1 --no-flush) || fail "vsic-pattern write --no-flush: $out"
[[ $out == "written (not flushed)"* ]] || fail "unexpected output: $out"
echo "$out"
r=$(cut)
echo "power-cut: $r"
[[ $r == *'"dropped-bytes": 8388608'* ]] || fail "the cut should drop the 8 MiB written: $r"
if out=$(pattern verify --seed 1); then
    fail "data written without FLUSH survived the power cut: $out"
fi
echo "verify after the cut: ${out%%,*} (expected: the negative control loses data)"

echo "== 2. vsic-pattern with FLUSH: nothing lost"
out=$(pattern write --seed 2) || fail "vsic-pattern write: $out"
echo "$out"
r=$(cut)
echo "power-cut: $r"
out=$(pattern verify --seed 2) || fail "flushed data lost: $out"
echo "$out"

echo "== 3. vsic-kv put-seq killed, then the power cut: every acknowledged key kept"
"$bin/vsic-kv" --dev "$dev" put-seq 100000000 >"$work/acks" 2>"$work/put.err" &
kv=$!
for _ in $(seq 600); do
    [[ $(grep -c '^ack ' "$work/acks" || true) -ge 2000 ]] && break
    kill -0 "$kv" 2>/dev/null || { cat "$work/put.err"; fail "put-seq ended early"; }
    sleep 0.05
done
kill -9 "$kv"
wait "$kv" 2>/dev/null || true
r=$(cut)
# Only whole lines count as acknowledged.
acked=$(grep -c '^ack k[0-9]*$' "$work/acks" || true)
[[ $acked -ge 2000 ]] || fail "only $acked acknowledgements"
echo "put-seq killed after $acked acknowledgements; power-cut: $r"
out=$("$bin/vsic-kv" --dev "$dev" verify-seq "$acked") || true
[[ $out == "present=$acked missing=0 corrupt=0" ]] || fail "acknowledged keys lost: $out"
echo "verify-seq $acked: $out"

echo "== 4. without the volatile cache the --no-flush write survives"
start_vsicd
out=$(pattern write --seed 3 --no-flush) || fail "vsic-pattern write --no-flush: $out"
r=$(cut)
[[ $r == *'"dropped-bytes": 0'* ]] || fail "a cut without the cache dropped data: $r"
out=$(pattern verify --seed 3) || fail "data lost without a volatile cache: $out"
echo "$out"
echo "power-cut-control: ok"
