#!/usr/bin/env bash
# What the firmware workbench costs the data path (docs/workbench.md): one
# vsicd, one VSA on VSIC 0, random 4 KiB reads by vsic-bench, in three states
# of the same daemon, alternating within each round so drift on the machine
# affects them alike:
#   idle            no fault rule, no trace (the default; the peer)
#   rule-elsewhere  a rule on VSIC 1 that VSIC 0's requests never match
#                   (every request takes the rule table's read lock)
#   trace           a blktrace trace of VSIC 0 running (3 events a request)
#
# Usage: ci/bench-workbench.sh [--seconds N] [--qd N] [--repeat N] [--no-build]
#
# Prints one result line per state and round (vsic-bench's, prefixed with
# state=...), then per state the median IOPS and its ratio to idle:
#   workbench state=trace iops=41234 ratio_to_idle=0.93
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=3
qd=8
repeat=3
build=1
while [[ $# -gt 0 ]]; do
    case $1 in
    --seconds) seconds=${2:?}; shift ;;
    --qd) qd=${2:?}; shift ;;
    --repeat) repeat=${2:?}; shift ;;
    --no-build) build=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-workbench: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

BIN=$REPO/target/release
if [[ $build -eq 1 ]]; then
    (cd "$REPO" && cargo build --release -q -p vsicd -p vsicctl && cargo build --release -q -p vsic --example vsic-bench)
fi
BENCH=$BIN/examples/vsic-bench
MGMT=$REPO/qemu-configs/vsic-mgmt
WORK=$(mktemp -d /dev/shm/vsic-bench-workbench.XXXXXX)
pid=
cleanup() {
    [[ -z $pid ]] || { kill -TERM "$pid" 2>/dev/null || true; timeout 5 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null || true; }
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/vsicd" --socket-dir "$WORK/s" --drive "$WORK/d.img,size=1G" --vsics 2 --queues 1 >"$WORK/vsicd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [[ -S $WORK/s/mgmt.sock ]] && break; sleep 0.1; done
S=$WORK/s/mgmt.sock
"$BIN/vsicctl" --mgmt "$S" vsa create --size 256M --cap "$WORK/a.cap" >/dev/null
"$BIN/vsicctl" --mgmt "$S" vsic attach --vsic 0 --cap "$WORK/a.cap" >/dev/null
REGION=$((256 << 20))
"$BENCH" --target-socket "$WORK/s/vsic0.sock" --case fill --bs $((1 << 20)) --qd 4 --size $REGION >/dev/null

echo "# $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); randread qd=$qd bs=4096 seconds=$seconds repeat=$repeat"
set_state() {
    "$MGMT" "$S" fault-clear >/dev/null
    "$MGMT" "$S" trace-stop '{"vsic": 0}' >/dev/null 2>&1 || true
    case $1 in
    idle) ;;
    rule-elsewhere) "$MGMT" "$S" fault-add '{"vsic": 1, "op": "read"}' >/dev/null ;;
    trace) "$MGMT" "$S" trace-start "{\"vsic\": 0, \"path\": \"$WORK/t\"}" >/dev/null ;;
    esac
}
STATES=(idle rule-elsewhere trace)
declare -A IOPS
for ((r = 0; r < repeat; r++)); do
    for state in "${STATES[@]}"; do
        set_state "$state"
        line=$("$BENCH" --target-socket "$WORK/s/vsic0.sock" --target-name vsicd --case randread \
            --qd "$qd" --bs 4096 --seconds "$seconds" --size $REGION)
        echo "state=$state $line"
        IOPS[$state]+="$(sed -n 's/.*iops=\([0-9.]*\).*/\1/p' <<<"$line") "
        rm -f "$WORK"/t.blktrace.*
    done
done
set_state idle
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
idle=$(median "${IOPS[idle]}")
for state in "${STATES[@]}"; do
    m=$(median "${IOPS[$state]}")
    awk -v s="$state" -v m="$m" -v i="$idle" 'BEGIN { printf "workbench state=%s iops=%s ratio_to_idle=%.3f\n", s, m, m / i }'
done
