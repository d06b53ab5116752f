#!/usr/bin/env bash
# Benchmarks. --guest: the paper's Figure 1 in a QEMU guest, kernel file
# systems against the vsic library (ci/bench-guest.sh; `ci/bench.sh --guest
# --help` lists its options). --host: vsicd against qemu-storage-daemon
# (qsd), both serving a vhost-user-blk socket backed by a file of the same
# size on tmpfs, both measured by the same program
# (guest-lib/examples/vsic-bench.rs) with two clients: the vsic driver
# library and libblkio.
#
# Usage: ci/bench.sh --host [--seconds N] [--warmup S] [--repeat N]
#                           [--mode auto|poll|interrupt] [--cases LIST] [--out FILE]
#                           [--no-build] [--vsicd-arg ARG]... [--dma] [--qds LIST]
#                           [--baseline-vsicd PATH]
#        ci/bench.sh --table FILE
#        ci/bench.sh --guest [OPTIONS]   (see ci/bench-guest.sh)
#        ci/bench.sh --apps [--host] [...]   (ci/bench-apps.sh: vsic-kv vs redis; in the guest
#                                            also vsic-mailq vs Maildir with smtp-source,
#                                            then ci/bench-nfs.sh)
#        ci/bench.sh --nfs [...]             (ci/bench-nfs.sh: vsic-nfsd on vsic vs a file, a block
#                                            device and the kernel nfsd, 3 rounds, medians)
#        ci/bench.sh --model [...]   (ci/bench-model.sh: the drive timing model
#                                     against Little's law, libblkio client)
#
#   --host      run on the host over vhost-user sockets
#   --seconds   measured seconds per run (default 3)
#   --warmup    unmeasured seconds before each run (default 0.5)
#   --repeat    runs per point; the one with the median IOPS is reported
#               (default 1; use 3 or more on a machine that is not idle)
#   --mode      completion mode for both clients (default auto: poll while
#               the client threads leave the target a core, else interrupts)
#   --cases     space-separated subset of: randread randwrite writeflush
#   --out       also write every result line to FILE
#   --no-build  use the release binaries already in target/release
#   --vsicd-arg one more vsicd option (repeatable), e.g. --vsicd-arg --poll-us=0
#   --dma       also measure target vsicd-dma: VSIC 1 of the same vsicd with
#               the same VSA, in enforced DMA mode with one DMA window over
#               all client memory; adds ratio lines vsicd-dma/vsicd
#   --baseline-vsicd  also measure target vsicd-base: another vsicd binary
#               (e.g. one built from main) on a drive of its own, same
#               options; adds ratio lines vsicd/vsicd-base
#   --qds       space-separated queue depths for randread/randwrite
#               (default "1 8 32")
#   --table     print the results saved by --out FILE as a markdown table
#
# Prints a few '#' lines about the machine (cores, load), one result line per
# point, then one ratio line per (case, client):
#   ratio case=randread qd=32 queues=1 bs=4096 client=blkio vsicd/qsd iops=1.23 p50=0.80 p99=0.90
# Exit status: 0 when every run produced a result, 1 otherwise, 2 for usage.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
if [[ ${1:-} == --guest ]]; then
    shift
    exec bash "$REPO/ci/bench-guest.sh" "$@"
fi

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
# --nfs: the NFS benchmark alone (vsic-nfsd on vsic against the kernel engines and the kernel nfsd), ci/bench-nfs.sh.
if [[ ${1:-} == --nfs ]]; then
    shift
    exec bash "$REPO/ci/bench-nfs.sh" "$@"
fi
# --apps: the application benchmarks (vsic-kv vs redis, vsic-mailq vs Maildir,
# vsic-nfsd), ci/bench-apps.sh.
if [[ ${1:-} == --apps ]]; then
    shift
    exec bash "$REPO/ci/bench-apps.sh" "$@"
fi
# --model: the drive timing model against its analytic values.
if [[ ${1:-} == --model ]]; then
    shift
    exec bash "$REPO/ci/bench-model.sh" "$@"
fi
log() { printf 'bench: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

host=0
seconds=3
warmup=0.5
repeat=1
build=1
table=
mode=auto
dma=0
qds="1 8 32"
baseline=
cases="randread randwrite writeflush"
out=
vsicd_args=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --host) host=1 ;;
    --seconds) seconds=${2:?--seconds needs a value}; shift ;;
    --warmup) warmup=${2:?--warmup needs a value}; shift ;;
    --repeat) repeat=${2:?--repeat needs a value}; shift ;;
    --mode) mode=${2:?--mode needs a value}; shift ;;
    --cases) cases=${2:?--cases needs a value}; shift ;;
    --out) out=${2:?--out needs a value}; shift ;;
    --no-build) build=0 ;;
    --dma) dma=1 ;;
    --qds) qds=${2:?--qds needs a value}; shift ;;
    --baseline-vsicd) baseline=${2:?--baseline-vsicd needs a path}; shift ;;
    --vsicd-arg) vsicd_args+=("${2:?--vsicd-arg needs a value}"); shift ;;
    --table) table=${2:?--table needs a file}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
    shift
done
# markdown_table FILE: one row per (case, bs, qd, queues, client), both
# targets side by side.
markdown_table() {
    awk '
        /^case=/ {
            delete f
            for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            key = f["case"] " | " f["bs"] " | " f["qd"] " | " f["queues"] " | " f["mode"] " | " f["client"]
            if (!(key in seen)) { seen[key] = 1; order[n++] = key }
            iops[key, f["target"]] = f["iops"]
            lat[key, f["target"]] = f["p50_us"] " / " f["p99_us"]
        }
        function ratio(a, b) { return (a == "" || b + 0 == 0) ? "n/a" : sprintf("%.2f", a / b) }
        END {
            print "| case | bs | qd | queues | mode | client | vsicd IOPS | qsd IOPS | IOPS vsicd/qsd | vsicd p50 / p99 (µs) | qsd p50 / p99 (µs) |"
            print "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"
            for (i = 0; i < n; i++) {
                k = order[i]
                printf "| %s | %s | %s | %s | %s | %s |\n", k, iops[k, "vsicd"], iops[k, "qsd"],
                    ratio(iops[k, "vsicd"], iops[k, "qsd"]), lat[k, "vsicd"], lat[k, "qsd"]
            }
        }
    ' "$1"
}

if [[ -n $table ]]; then
    [[ -r $table ]] || die "cannot read $table"
    markdown_table "$table"
    exit 0
fi
[[ $host -eq 1 ]] || { usage >&2; exit 2; }
[[ $seconds =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--seconds: not a number: $seconds"
[[ $warmup =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--warmup: not a number: $warmup"
[[ $repeat =~ ^[1-9][0-9]*$ ]] || die "--repeat: not a positive integer: $repeat"

# Backing files (same size for both targets) and the VSA on vsicd's drive:
# the drive keeps room for the controller's metadata, so both targets are
# addressed over the VSA's size only.
DRIVE_SIZE=1G
VSA_SIZE=960M
REGION_BYTES=$((960 << 20))
QUEUES=4

# Every step is bounded.
BUILD_TIMEOUT=1800
START_TIMEOUT=20
CTL_TIMEOUT=30
FILL_TIMEOUT=120
# A run: its own time plus start-up and a margin.
RUN_TIMEOUT=$(awk -v s="$seconds" -v w="$warmup" 'BEGIN { printf "%d", s + w + 30 }')

# --- host tools -------------------------------------------------------------

# qemu-storage-daemon ships in qemu-utils; take it from bookworm-backports,
# the suite ci/install-deps.sh configures for QEMU 10.0.
if ! command -v qemu-storage-daemon >/dev/null 2>&1; then
    log "qemu-storage-daemon missing: installing qemu-utils"
    timeout 900 bash ci/install-deps.sh
    export DEBIAN_FRONTEND=noninteractive
    SUDO=
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    timeout 300 $SUDO apt-get update -qq
    timeout 900 $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-utils >/dev/null ||
        timeout 900 $SUDO apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
    command -v qemu-storage-daemon >/dev/null 2>&1 || die "qemu-storage-daemon still missing"
fi

if [[ $build -eq 1 ]]; then
    log "building release binaries"
    timeout $BUILD_TIMEOUT cargo build --release -q -p vsicd -p vsicctl
    timeout $BUILD_TIMEOUT cargo build --release -q -p vsic --example vsic-bench
fi
BIN=$REPO/target/release
BENCH=$BIN/examples/vsic-bench
for b in "$BIN/vsicd" "$BIN/vsicctl" "$BENCH"; do
    [[ -x $b ]] || die "$b missing (build without --no-build)"
done

# --- targets ----------------------------------------------------------------

WORK=$(mktemp -d /dev/shm/vsic-bench.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        # vsicd stops cleanly on SIGTERM; give each a moment, then insist.
        timeout 5 tail --pid="$pid" -f /dev/null 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for_socket PATH PID NAME: until PATH exists, the process dies, or time is up.
wait_for_socket() {
    local path=$1 pid=$2 name=$3 i
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        [[ -S $path ]] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    log "$name did not come up; its log:"
    tail -n 20 "$WORK/$name.log" >&2 || true
    return 1
}

log "work directory $WORK"
"$BIN/vsicd" --socket-dir "$WORK/vsicd" --drive "$WORK/vsicd.img,size=$DRIVE_SIZE" \
    --vsics $((1 + dma)) --queues $QUEUES --cache write-back "${vsicd_args[@]}" >"$WORK/vsicd.log" 2>&1 &
pids+=($!)
wait_for_socket "$WORK/vsicd/vsic0.sock" "${pids[-1]}" vsicd
ctl() { timeout $CTL_TIMEOUT "$BIN/vsicctl" --vhost-user "$WORK/vsicd/pf.sock" "$@" >/dev/null; }
ctl vsa create --size $VSA_SIZE --cap "$WORK/bench.cap"
ctl vsic attach --vsic 0 --cap "$WORK/bench.cap" --slot 0
if [[ $dma -eq 1 ]]; then
    # The same VSA behind VSIC 1, enforced before each run (see run).
    wait_for_socket "$WORK/vsicd/vsic1.sock" "${pids[-1]}" vsicd
    ctl vsic attach --vsic 1 --cap "$WORK/bench.cap" --slot 0
fi

# enforce_dma: VSIC 1 enforced with one window over every address a client
# can share (a lookup costs the same whatever its size). Done before each
# run: a VSIC's windows go when its client (frontend) leaves, and every
# VSIC goes back to open when no VSIC has a frontend, both as vsicd notices
# the last run's client gone; so program, give vsicd a moment, and check
# that it held.
enforce_dma() {
    local _ state
    for _ in $(seq 20); do
        "$BIN/vsicctl" --vhost-user "$WORK/vsicd/pf.sock" vsic dma-window add --vsic 1 \
            --start 0 --len 0x4000000000000000 --read --write >/dev/null 2>&1 || true
        ctl vsic dma-mode --vsic 1 enforced
        sleep 0.2
        state=$("$BIN/vsicctl" --vhost-user "$WORK/vsicd/pf.sock" vsic dma-window list --vsic 1 --json)
        if grep -q '"dma_mode": "enforced"' <<<"$state" && [[ $(grep -c '"start"' <<<"$state") -eq 1 ]]; then
            return 0
        fi
    done
    die "VSIC 1 could not be put in enforced mode with its window: $state"
}

truncate -s $DRIVE_SIZE "$WORK/qsd.img"
qemu-storage-daemon \
    --blockdev "driver=file,node-name=f,filename=$WORK/qsd.img,cache.direct=off" \
    --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$WORK/qsd.sock,writable=on,num-queues=$QUEUES" \
    >"$WORK/qsd.log" 2>&1 &
pids+=($!)
wait_for_socket "$WORK/qsd.sock" "${pids[-1]}" qsd

declare -A SOCKET=([vsicd]=$WORK/vsicd/vsic0.sock [qsd]=$WORK/qsd.sock [vsicd-dma]=$WORK/vsicd/vsic1.sock
    [vsicd-base]=$WORK/base/vsic0.sock)
TARGETS=(vsicd qsd)
[[ $dma -eq 0 ]] || TARGETS+=(vsicd-dma)
if [[ -n $baseline ]]; then
    [[ -x $baseline ]] || die "--baseline-vsicd: $baseline is not an executable"
    "$baseline" --socket-dir "$WORK/base" --drive "$WORK/base.img,size=$DRIVE_SIZE" \
        --vsics 1 --queues $QUEUES --cache write-back "${vsicd_args[@]}" >"$WORK/vsicd-base.log" 2>&1 &
    pids+=($!)
    wait_for_socket "$WORK/base/vsic0.sock" "${pids[-1]}" vsicd-base
    timeout $CTL_TIMEOUT "$BIN/vsicctl" --vhost-user "$WORK/base/pf.sock" vsa create --size $VSA_SIZE --cap "$WORK/base.cap" >/dev/null
    timeout $CTL_TIMEOUT "$BIN/vsicctl" --vhost-user "$WORK/base/pf.sock" vsic attach --vsic 0 --cap "$WORK/base.cap" --slot 0 >/dev/null
    TARGETS+=(vsicd-base)
fi

# Both backing files start sparse; write the whole region once through each
# target so reads hit allocated pages on both.
for t in "${TARGETS[@]}"; do
    [[ $t != vsicd-dma ]] || continue # the same VSA as vsicd
    log "filling $t ($REGION_BYTES bytes)"
    timeout $FILL_TIMEOUT "$BENCH" --target-socket "${SOCKET[$t]}" --target-name "$t" \
        --client vsic --case fill --bs $((1 << 20)) --qd 4 --size $REGION_BYTES >/dev/null ||
        die "filling $t failed"
done

# --- runs ---------------------------------------------------------------------

RESULTS=$WORK/results
HEADER=$WORK/header
: >"$RESULTS"
failures=0

# What the figures depend on: other load on the machine skews them.
{
    echo "# $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
    echo "# $(qemu-storage-daemon --version | head -n1)"
    echo "# seconds=$seconds warmup=$warmup repeat=$repeat mode=$mode region=$REGION_BYTES"
    echo "# vsicd options: ${vsicd_args[*]:-(defaults)}"
    echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$HEADER"

# run CASE QD QUEUES BS CLIENT TARGET: --repeat runs, reports the median one.
run() {
    local i line lines=()
    for ((i = 0; i < repeat; i++)); do
        [[ $6 != vsicd-dma ]] || enforce_dma
        if line=$(timeout $RUN_TIMEOUT "$BENCH" --target-socket "${SOCKET[$6]}" --target-name "$6" \
            --case "$1" --qd "$2" --queues "$3" --bs "$4" --client "$5" \
            --seconds "$seconds" --warmup "$warmup" --mode "$mode" --size $REGION_BYTES); then
            lines+=("$line")
        else
            echo "FAILED case=$1 qd=$2 queues=$3 bs=$4 client=$5 target=$6 (status $?)"
            failures=$((failures + 1))
            return 0
        fi
    done
    printf '%s\n' "${lines[@]}" |
        awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^iops=/) print substr($i, 6), $0 }' |
        sort -n | cut -d' ' -f2- | sed -n "$(((${#lines[@]} + 1) / 2))p" | tee -a "$RESULTS"
}

# The targets alternate within each (case, client) so drift on the machine
# affects both alike.
for case in $cases; do
    case $case in
    randread | randwrite)
        for queues in 1 4; do
            for qd in $qds; do
                for client in vsic blkio; do
                    for t in "${TARGETS[@]}"; do run "$case" $qd $queues 4096 $client "$t"; done
                done
            done
        done
        ;;
    writeflush)
        for bs in 1024 4096; do
            for client in vsic blkio; do
                for t in "${TARGETS[@]}"; do run writeflush 1 1 $bs $client "$t"; done
            done
        done
        ;;
    *) die "unknown case $case" ;;
    esac
done

# vsicd over qsd for each (case, client): > 1 means vsicd has more IOPS,
# < 1 means lower latency.
echo
awk '
    {
        delete f
        for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        key = "case=" f["case"] " qd=" f["qd"] " queues=" f["queues"] " bs=" f["bs"] " client=" f["client"]
        if (!(key in seen)) { seen[key] = 1; order[n++] = key }
        iops[key, f["target"]] = f["iops"]
        p50[key, f["target"]] = f["p50_us"]
        p99[key, f["target"]] = f["p99_us"]
    }
    function ratio(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "n/a" : sprintf("%.2f", a / b) }
    END {
        for (i = 0; i < n; i++) {
            k = order[i]
            printf "ratio %s vsicd/qsd iops=%s p50=%s p99=%s\n", k,
                ratio(iops[k, "vsicd"], iops[k, "qsd"]),
                ratio(p50[k, "vsicd"], p50[k, "qsd"]),
                ratio(p99[k, "vsicd"], p99[k, "qsd"])
            if ((k, "vsicd-base") in iops)
                printf "ratio %s vsicd/vsicd-base iops=%s p50=%s p99=%s\n", k,
                    ratio(iops[k, "vsicd"], iops[k, "vsicd-base"]),
                    ratio(p50[k, "vsicd"], p50[k, "vsicd-base"]),
                    ratio(p99[k, "vsicd"], p99[k, "vsicd-base"])
            if ((k, "vsicd-dma") in iops)
                printf "ratio %s vsicd-dma/vsicd iops=%s p50=%s p99=%s\n", k,
                    ratio(iops[k, "vsicd-dma"], iops[k, "vsicd"]),
                    ratio(p50[k, "vsicd-dma"], p50[k, "vsicd"]),
                    ratio(p99[k, "vsicd-dma"], p99[k, "vsicd"])
        }
    }
' "$RESULTS" | tee -a "$RESULTS.ratios"

echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$WORK/footer"
if [[ -n $out ]]; then
    cat "$HEADER" "$RESULTS" "$RESULTS.ratios" "$WORK/footer" >"$out"
fi
if [[ $failures -gt 0 ]]; then
    log "$failures run(s) failed; vsicd log tail:"
    tail -n 20 "$WORK/vsicd.log" >&2 || true
    exit 1
fi
