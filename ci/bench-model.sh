#!/usr/bin/env bash
# ci/bench.sh --model: the drive timing model against its own analytic
# values. For a grid of (latency, units, unit bandwidth, block size, queue
# depth) vsicd runs with --service-latency/--service-units/
# --service-bandwidth on a tmpfs drive, the neutral libblkio client
# (guest-lib/examples/vsic-bench.rs --client blkio, one queue, random
# reads) measures IOPS and p50, and each point prints one line beside the
# model's values (Little's law, see docs/timing-model.md):
#
#   service time S = latency + bs / unit_bandwidth
#   IOPS = min(QD, units) / S        (bandwidth-bound when bs / bw dominates S)
#   p50  = S                          when QD <= units
#        = QD / units * S             when QD > units (QD a multiple of units:
#                                     the requests queue inside the device)
#
#   case=model lat_us=20 units=4 unit_bw=0 bs=4096 qd=8 iops=... iops_model=... iops_err=-2.1% p50_us=... p50_model_us=... p50_err=1.0% p50_net_err=+0.3% iops_closed_model=... iops_closed_err=-0.4% mode=poll
#
# First one baseline line with the model off (QD 1): the round trip of the
# transport and the client themselves, which every measured latency carries
# on top of the model's when QD <= units; p50_net_err takes it off there.
# The same round trip, as a cycle time Z = 1 / IOPS, gives a second,
# closed-loop value for IOPS (extra fields; the Little's-law values above
# stay the primary ones): a client that sends the next request only after
# handling a completion keeps QD requests cycling through device time S plus
# its own Z, so by the interactive response-time law
#
#   iops_closed_model = min(QD / (S + Z), units / S)
#
# which is what a client whose turnaround is not negligible against S (an
# interrupt-driven one: ~20 us here) can measure at QD <= units.
#
# Usage: ci/bench.sh --model [--seconds N] [--warmup S] [--quick]
#                            [--mode auto|poll|interrupt] [--out FILE] [--no-build]
#                            [--latencies LIST] [--units LIST] [--qds LIST] [--no-bw]
#                            [--vsicd PATH]
#   --seconds  measured seconds per point (default 1)
#   --warmup   unmeasured seconds before each (default 0.3)
#   --mode     the client's completion mode (default auto: poll when the
#              machine has a core for the client besides the vsicd worker,
#              i.e. 2 or more, interrupt otherwise). Poll measures the device:
#              its turnaround is ~2 us. An interrupt-driven client pays its
#              own wake-up (~20 us here) before it resubmits, at every
#              completion, so at QD <= units IOPS fall short of Little's law
#              by that much (see iops_closed_model); on one core a spinning
#              client would take the core the vsicd worker needs.
#   --quick    a smaller grid (latencies 20us and 1ms, units 1 and 4)
#   --latencies, --units, --qds  space-separated grid values in us, units
#              and queue depths (default "20 100 1000", "1 4 16", "1 4 16 32 64")
#   --no-bw    leave out the bandwidth-bound points
#   --vsicd    measure this vsicd binary instead of target/release/vsicd
#              (e.g. one built from main, to compare)
#   --out      also write every line to FILE
# Exit status: 0 when every point ran (whatever its error), 1 otherwise.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
log() { printf 'bench-model: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

seconds=1
warmup=0.3
mode=auto
out=
build=1
quick=0
latencies="20 100 1000"
unit_counts="1 4 16"
qds="1 4 16 32 64"
with_bw=1
vsicd=
while [[ $# -gt 0 ]]; do
    case $1 in
    --seconds) seconds=${2:?--seconds needs a value}; shift ;;
    --warmup) warmup=${2:?--warmup needs a value}; shift ;;
    --mode) mode=${2:?--mode needs a value}; shift ;;
    --out) out=${2:?--out needs a value}; shift ;;
    --no-build) build=0 ;;
    --quick) quick=1 ;;
    --latencies) latencies=${2:?--latencies needs a value}; shift ;;
    --units) unit_counts=${2:?--units needs a value}; shift ;;
    --qds) qds=${2:?--qds needs a value}; shift ;;
    --no-bw) with_bw=0 ;;
    --vsicd) vsicd=${2:?--vsicd needs a path}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
    shift
done
[[ $seconds =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--seconds: not a number: $seconds"
[[ $warmup =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--warmup: not a number: $warmup"
case $mode in
auto) if [[ $(nproc) -ge 2 ]]; then resolved=poll; else resolved=interrupt; fi ;;
poll | interrupt) resolved=$mode ;;
*) die "--mode: auto, poll or interrupt, not $mode" ;;
esac

if [[ $build -eq 1 ]]; then
    log "building release binaries"
    timeout 1800 cargo build --release -q -p vsicd -p vsicctl
    timeout 1800 cargo build --release -q -p vsic --example vsic-bench
fi
BIN=$REPO/target/release
BENCH=$BIN/examples/vsic-bench
VSICD=${vsicd:-$BIN/vsicd}
for b in "$VSICD" "$BIN/vsicctl" "$BENCH"; do
    [[ -x $b ]] || die "$b missing (build without --no-build)"
done

DRIVE_SIZE=256M
VSA_SIZE=192M
REGION_BYTES=$((192 << 20))
RUN_TIMEOUT=$(awk -v s="$seconds" -v w="$warmup" 'BEGIN { printf "%d", s + w + 30 }')

WORK=$(mktemp -d /dev/shm/vsic-bench-model.XXXXXX)
vsicd_pid=
stop_vsicd() {
    if [[ -n $vsicd_pid ]]; then
        kill -TERM "$vsicd_pid" 2>/dev/null || true
        timeout 5 tail --pid="$vsicd_pid" -f /dev/null 2>/dev/null || kill -KILL "$vsicd_pid" 2>/dev/null || true
        vsicd_pid=
    fi
}
cleanup() {
    stop_vsicd
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_vsicd ARGS...: a fresh vsicd and drive with one VSA at VSIC 0.
start_vsicd() {
    stop_vsicd
    rm -rf "$WORK/sockets" "$WORK/drive.img" "$WORK/bench.cap"
    "$VSICD" --socket-dir "$WORK/sockets" --drive "$WORK/drive.img,size=$DRIVE_SIZE" \
        --vsics 1 --queues 1 "$@" >"$WORK/vsicd.log" 2>&1 &
    vsicd_pid=$!
    local i
    for ((i = 0; i < 200; i++)); do
        [[ -S $WORK/sockets/vsic0.sock ]] && break
        kill -0 "$vsicd_pid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -S $WORK/sockets/vsic0.sock ]] || { tail -n 20 "$WORK/vsicd.log" >&2; die "vsicd did not start"; }
    local ctl=(timeout 30 "$BIN/vsicctl" --vhost-user "$WORK/sockets/pf.sock")
    "${ctl[@]}" vsa create --size $VSA_SIZE --cap "$WORK/bench.cap" >/dev/null
    "${ctl[@]}" vsic attach --vsic 0 --cap "$WORK/bench.cap" --slot 0 >/dev/null
}

# measure QD BS: one vsic-bench result line.
measure() {
    timeout "$RUN_TIMEOUT" "$BENCH" --target-socket "$WORK/sockets/vsic0.sock" --target-name vsicd \
        --client blkio --case randread --qd "$1" --queues 1 --bs "$2" \
        --seconds "$seconds" --warmup "$warmup" --mode "$resolved" --size $REGION_BYTES
}

field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

RESULTS=$WORK/results
: >"$RESULTS"
failures=0
{
    echo "# $(nproc) cores, kernel $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# vsicd=$VSICD"
    echo "# seconds=$seconds warmup=$warmup mode=$resolved (asked: $mode) client=blkio case=randread queues=1"
} | tee -a "$RESULTS"

# The transport's own round trip, model off.
base_p50=0
base_cycle=0
start_vsicd
if line=$(measure 1 4096); then
    base_p50=$(field "$line" p50_us)
    base_cycle=$(awk -v i="$(field "$line" iops)" 'BEGIN { printf "%.2f", (i > 0 ? 1e6 / i : 0) }')
    # iops x p50: 1 when every request took the median; far below 1 when
    # the machine stalled the client or vsicd now and then.
    echo "case=model-off qd=1 bs=4096 iops=$(field "$line" iops) p50_us=$(field "$line" p50_us) iops_x_p50=$(awk -v i="$(field "$line" iops)" -v p="$(field "$line" p50_us)" 'BEGIN { printf "%.2f", i * p / 1e6 }') cycle_us=$base_cycle mode=$(field "$line" mode)" |
        tee -a "$RESULTS"
else
    echo "FAILED case=model-off qd=1" | tee -a "$RESULTS"
    failures=$((failures + 1))
fi

# point LAT_US UNITS UNIT_BW BS QD: one line with the model's values.
point() {
    local lat_us=$1 units=$2 bw=$3 bs=$4 qd=$5 line
    if ! line=$(measure "$qd" "$bs"); then
        echo "FAILED case=model lat_us=$lat_us units=$units unit_bw=$bw bs=$bs qd=$qd" | tee -a "$RESULTS"
        failures=$((failures + 1))
        return 0
    fi
    awk -v lat="$lat_us" -v units="$units" -v bw="$bw" -v bs="$bs" -v qd="$qd" -v base="$base_p50" -v z="$base_cycle" \
        -v iops="$(field "$line" iops)" -v p50="$(field "$line" p50_us)" -v mode="$(field "$line" mode)" '
        BEGIN {
            s = lat + (bw > 0 ? bs / bw * 1e6 : 0)       # service time, us
            busy = qd < units ? qd : units
            iops_model = busy / s * 1e6
            p50_model = qd <= units ? s : qd / units * s
            # Net of the transport: with QD <= units every request also
            # makes the round trip the model-off line measured; beyond, the
            # device is never idle and the round trip overlaps the queueing.
            p50_net = qd <= units ? p50 - base : p50
            # Closed loop: QD requests cycle through S and the client
            # own turnaround Z (the model-off cycle), bounded by the units.
            closed = qd / (s + z) * 1e6
            if (closed > busy / s * 1e6) closed = busy / s * 1e6
            printf "case=model lat_us=%s units=%s unit_bw=%s bs=%s qd=%s iops=%.0f iops_model=%.0f iops_err=%+.1f%% p50_us=%.1f p50_model_us=%.1f p50_err=%+.1f%% p50_net_err=%+.1f%% iops_closed_model=%.0f iops_closed_err=%+.1f%% mode=%s\n",
                lat, units, bw, bs, qd, iops, iops_model, (iops / iops_model - 1) * 100,
                p50, p50_model, (p50 / p50_model - 1) * 100, (p50_net / p50_model - 1) * 100,
                closed, (iops / closed - 1) * 100, mode
        }' | tee -a "$RESULTS"
}

if [[ $quick -eq 1 ]]; then
    latencies="20 1000"
    unit_counts="1 4"
fi
# Latency-bound: 4 KiB reads, no bandwidth limit. Queue depths at most
# the units or multiples of them, so p50 has one value.
for lat in $latencies; do
    for units in $unit_counts; do
        start_vsicd --service-latency "${lat}us" --service-units "$units"
        for qd in $qds; do
            point "$lat" "$units" 0 4096 "$qd"
        done
    done
done
# Bandwidth-bound: 128 KiB reads on units of 200 MB/s (655 us per
# request against a 20 us latency).
bw=200000000
bw_units="1 4"
[[ $with_bw -eq 1 ]] || bw_units=
for units in $bw_units; do
    start_vsicd --service-latency 20us --service-units "$units" --service-bandwidth "$bw"
    for qd in 1 4 16; do
        point 20 "$units" "$bw" 131072 "$qd"
    done
done
stop_vsicd

echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS"
# Points within 10 % (IOPS and p50), of those with QD <= 32: against
# Little's law (both=), and the closed-loop IOPS with p50 net of the round
# trip (both_closed_net=). The mode is the one measured (asked: auto, poll
# or interrupt).
awk -v mode="$resolved" -v asked="$mode" '/^case=model / {
        delete f
        for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        if (f["qd"] + 0 > 32) next
        n++
        ie = f["iops_err"] + 0; pe = f["p50_err"] + 0; ne = f["p50_net_err"] + 0
        ce = f["iops_closed_err"] + 0
        if (ie < 0) ie = -ie
        if (pe < 0) pe = -pe
        if (ne < 0) ne = -ne
        if (ce < 0) ce = -ce
        if (ie <= 10) iok++
        if (pe <= 10) pok++
        if (ne <= 10) nok++
        if (ce <= 10) cok++
        if (ie <= 10 && pe <= 10) ok++
        if (ce <= 10 && ne <= 10) cnok++
    }
    END { printf "summary case=model points_qd_le_32=%d iops_within_10pct=%d p50_within_10pct=%d p50_net_within_10pct=%d both=%d iops_closed_within_10pct=%d both_closed_net=%d mode=%s asked=%s\n", n, iok, pok, nok, ok, cok, cnok, mode, asked }' "$RESULTS" | tee -a "$RESULTS"
[[ -z $out ]] || cp "$RESULTS" "$out"
[[ $failures -eq 0 ]]
