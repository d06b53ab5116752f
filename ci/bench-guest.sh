#!/usr/bin/env bash
# Guest benchmark (`ci/bench.sh --guest`): the paper's Figure 1 in a QEMU
# guest. N times "write B bytes at an appending offset, make it durable":
# the kernel path (a file on freshly made ext2, ext4, btrfs and xfs, with
# fsync and fdatasync, on a brd RAM disk and on a VSIC bound to virtio_blk)
# against the user path (the vsic library on a VSIC it owns through VFIO:
# write + FLUSH in interrupt, polling and hybrid mode, and a single write
# with `vsicd --cache write-through`).
#
# Usage: ci/bench.sh --guest [--n N] [--bytes LIST] [--fs LIST] [--media LIST]
#                            [--syncs LIST] [--modes LIST] [--latencies LIST]
#                            [--out FILE] [--svg PREFIX] [--no-build]
#                            [--timeout SECS] [--launch-arg ARG]...
#        ci/bench.sh --guest --plot FILE --svg PREFIX
#
#   --n          operations per case (default 1000; the paper used 10000)
#   --bytes      write sizes, comma-separated (default 1024,4096,16384)
#   --fs         file systems (default ext2,ext4,btrfs,xfs)
#   --media      brd and/or vsic (default brd,vsic)
#   --syncs      fsync and/or fdatasync (default fsync,fdatasync)
#   --modes      vsic modes: interrupt, poll, hybrid (default all three)
#   --latencies  vsicd service latencies to run, "none" for vsicd's own
#                speed (default none,20us: the hardware latency the paper
#                quotes), or drive-model presets by name (raid-bbu,
#                pcie-flash, sata-ssd, hard-disk: vsicd --drive-model
#                qemu-configs/drive-models/NAME.toml, docs/timing-model.md)
#   --out FILE   also write every line (results, ratios, targets) to FILE
#   --svg PREFIX draw PREFIX-LATENCY.svg per latency with gnuplot (installed
#                from Debian when missing), e.g. --svg docs/fig1-guest
#   --no-build   use the binaries and guest image already built
#   --timeout    seconds per guest boot (default 3600)
#   --launch-arg one more qemu-configs/launch.sh option for every boot
#                (repeatable; one word each), e.g. --launch-arg --smp --launch-arg 1
#   --plot FILE  only draw the figures from the results saved by --out FILE
#
# Each latency boots the guest twice: vsicd in write-back mode for the kernel
# cases and the vsic write + FLUSH cases, then in write-through mode for the
# single-write cases. Drives live on /dev/shm, like the paper's RAM disk.
# Prints one line per case (each with service=LATENCY), then per latency and
# size the ratio of each kernel case's p50 to each vsic mode's p50, then the
# issue's targets at 1 KiB. Exit status: 0 when every boot produced its
# results, 1 otherwise, 2 for usage.
set -euo pipefail
{

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
log() { printf 'bench: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

n=1000
bytes=1024,4096,16384
fs=ext2,ext4,btrfs,xfs
media=brd,vsic
syncs=fsync,fdatasync
modes=interrupt,poll,hybrid
latencies=none,20us
out=
svg=
build=1
timeout=3600
plot=
launch_args=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --n) n=${2:?--n needs a value}; shift ;;
    --bytes) bytes=${2:?--bytes needs a value}; shift ;;
    --fs) fs=${2:?--fs needs a value}; shift ;;
    --media) media=${2:?--media needs a value}; shift ;;
    --syncs) syncs=${2:?--syncs needs a value}; shift ;;
    --modes) modes=${2:?--modes needs a value}; shift ;;
    --latencies) latencies=${2:?--latencies needs a value}; shift ;;
    --out) out=${2:?--out needs a value}; shift ;;
    --svg) svg=${2:?--svg needs a value}; shift ;;
    --no-build) build=0 ;;
    --timeout) timeout=${2:?--timeout needs a value}; shift ;;
    --launch-arg) launch_args+=("${2:?--launch-arg needs a value}"); shift ;;
    --plot) plot=${2:?--plot needs a file}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
    shift
done
[[ $n =~ ^[1-9][0-9]*$ ]] || { log "--n: not a positive integer: $n"; exit 2; }
[[ $timeout =~ ^[1-9][0-9]*$ ]] || { log "--timeout: not a positive integer: $timeout"; exit 2; }
for v in "$bytes" "$fs" "$media" "$syncs" "$modes" "$latencies"; do
    [[ $v =~ ^[A-Za-z0-9,-]+$ ]] || { log "lists are comma-separated words: '$v'"; exit 2; }
done

if [[ -n $plot ]]; then
    [[ -r $plot && -n $svg ]] || { log "--plot needs a readable FILE and --svg PREFIX"; exit 2; }
fi
[[ -n $plot ]] || timeout 900 bash ci/install-deps.sh
if [[ -n $svg ]] && ! command -v gnuplot >/dev/null 2>&1; then
    log "gnuplot missing: installing gnuplot-nox"
    SUDO=
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
    timeout 900 $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends gnuplot-nox >/dev/null
    command -v gnuplot >/dev/null 2>&1 || die "gnuplot still missing"
fi
if [[ $build -eq 1 && -z $plot ]]; then
    log "building vsicd and vsicctl (host) and the guest image"
    timeout 1800 cargo build --release -q -p vsicd -p vsicctl
    timeout 3600 bash images/build.sh
fi

WORK=$(mktemp -d /dev/shm/vsic-bench-guest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
RESULTS=$WORK/results
: >"$RESULTS"
failures=0
{
    echo "# $(nproc) cores, kernel $(uname -r), $(qemu-system-x86_64 --version | head -n1)"
    echo "# guest image: $(cat images/out/.stamp 2>/dev/null | cut -c1-12), tree $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (modified)')"
    echo "# n=$n bytes=$bytes fs=$fs media=$media syncs=$syncs modes=$modes latencies=$latencies launch_args=${launch_args[*]-}"
    echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$WORK/header"

# boot LATENCY PART: one guest run; its result lines, tagged, go to RESULTS.
boot() {
    local latency=$1 part=$2 cache=write-back rc=0 args
    [[ $part == writethrough ]] && cache=write-through
    args=(--vsics 2 --memory 2G --state-dir "$WORK/state" --timeout "$timeout"
        --run ci/bench-fig1.guest.sh --run-with ci/guest-tests/lib.sh
        --vsicd-arg "--cache=$cache"
        --append "vsic.fig1_part=$part vsic.fig1_n=$n vsic.fig1_bytes=$bytes vsic.fig1_fs=$fs"
        --append "vsic.fig1_media=$media vsic.fig1_syncs=$syncs vsic.fig1_modes=$modes"
        ${launch_args[@]+"${launch_args[@]}"})
    if [[ -r $REPO/qemu-configs/drive-models/$latency.toml ]]; then
        args+=(--vsicd-arg "--drive-model=$REPO/qemu-configs/drive-models/$latency.toml")
    elif [[ $latency != none ]]; then
        args+=(--vsicd-arg "--service-latency=$latency")
    fi
    log "guest run: service latency $latency, vsicd --cache $cache ($part cases)"
    qemu-configs/launch.sh "${args[@]}" >"$WORK/guest.log" 2>&1 || rc=$?
    # Result lines, tagged with the service latency, and only whole ones.
    grep -a '^case=fig1 .* sys_us=' "$WORK/guest.log" | sed "s/^case=fig1 /case=fig1 service=$latency /" |
        tee -a "$RESULTS" || true
    if [[ $rc -ne 0 ]]; then
        log "guest run failed (status $rc); its last lines:"
        tail -n 30 "$WORK/guest.log" >&2
        failures=$((failures + 1))
    fi
}

if [[ -n $plot ]]; then
    grep '^case=fig1 ' "$plot" >"$RESULTS" || true
    latencies=$(sed -n 's/^case=fig1 service=\([^ ]*\) .*/\1/p' "$RESULTS" | awk '!seen[$0]++' | paste -sd,)
else
for latency in ${latencies//,/ }; do
    boot "$latency" writeback
    boot "$latency" writethrough
done
fi

# Ratios: each kernel case's p50 over each vsic path's p50, per latency and
# size; then the issue's targets at 1 KiB.
echo
awk '
    {
        delete f
        for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        group = "service=" f["service"] " bytes=" f["bytes"]
        if (f["path"] == "vsic") {
            name = f["mode"] (f["sync"] == "none" ? "-wt" : "")
            vsic[group, name] = f["p50_us"]
            cpu[group, name] = f["cpu"]
            if (!((group, "names") in vsic)) vsic[group, "names"] = name
            else vsic[group, "names"] = vsic[group, "names"] " " name
        } else {
            k = group " fs=" f["fs"] " medium=" f["medium"] " sync=" f["sync"]
            kernel[++nk] = k; kp50[k] = f["p50_us"]; kgroup[k] = group
        }
    }
    function r(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "n/a" : sprintf("%.1f", a / b) }
    END {
        for (i = 1; i <= nk; i++) {
            k = kernel[i]; g = kgroup[k]
            line = "ratio " k " p50_us=" kp50[k]
            m = split(vsic[g, "names"], names, " ")
            for (j = 1; j <= m; j++) line = line " over_" names[j] "=" r(kp50[k], vsic[g, names[j]])
            print line
        }
        # The targets, per latency, at 1 KiB.
        for (i = 1; i <= nk; i++) {
            k = kernel[i]; g = kgroup[k]
            if (k !~ / bytes=1024 fs=ext4 medium=vsic sync=fsync$/) continue
            a = r(kp50[k], vsic[g, "poll"]); b = r(kp50[k], vsic[g, "interrupt"])
            printf "target %s ext4+fsync-on-VSIC/poll p50=%s (>= 10: %s) ext4+fsync-on-VSIC/interrupt p50=%s (>= 4: %s)\n", g,
                a, (a != "n/a" && a + 0 >= 10) ? "met" : "not met", b, (b != "n/a" && b + 0 >= 4) ? "met" : "not met"
        }
        for (key in vsic) {
            split(key, parts, SUBSEP)
            if (parts[2] != "hybrid" || parts[1] !~ / bytes=1024$/) continue
            g = parts[1]
            h = r(vsic[g, "hybrid"], vsic[g, "poll"])
            printf "target %s hybrid/poll p50=%s (<= 1.5: %s) hybrid cpu=%s (< 0.5: %s) poll cpu=%s\n", g, h,
                (h != "n/a" && h + 0 <= 1.5) ? "met" : "not met", cpu[g, "hybrid"],
                (cpu[g, "hybrid"] + 0 < 0.5) ? "met" : "not met", cpu[g, "poll"]
        }
    }
' "$RESULTS" | tee "$WORK/ratios"
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$WORK/footer"
[[ -n $out && -z $plot ]] && cat "$WORK/header" "$RESULTS" "$WORK/ratios" "$WORK/footer" >"$out"

# The figure: p50 by write size, the kernel cases (fsync) beside the vsic
# paths, one SVG per service latency.
if [[ -n $svg ]]; then
    for latency in ${latencies//,/ }; do
        data=$WORK/plot-$latency.dat
        awk -v lat="$latency" '
            {
                delete f
                for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
                if (f["service"] != lat) next
                if (f["path"] == "vsic") s = "vsic " f["mode"] (f["sync"] == "none" ? " write-through" : " +FLUSH")
                else if (f["sync"] == "fsync") s = f["fs"] " on " (f["medium"] == "brd" ? "brd" : "VSIC")
                else next
                if (!(s in seen)) { seen[s] = 1; series[++ns] = s }
                if (!(f["bytes"] in sizes)) { sizes[f["bytes"]] = 1; size[++nb] = f["bytes"] }
                v[s, f["bytes"]] = f["p50_us"]
            }
            END {
                printf "bytes"
                for (j = 1; j <= ns; j++) printf " \"%s\"", series[j]
                print ""
                for (i = 1; i <= nb; i++) {
                    printf "%s", (size[i] >= 1024 ? size[i] / 1024 " KiB" : size[i] " B")
                    for (j = 1; j <= ns; j++) printf " %s", ((series[j], size[i]) in v ? v[series[j], size[i]] : "NaN")
                    print ""
                }
            }' "$RESULTS" | sed 's/^\([0-9]*\) KiB/"\1 KiB"/' >"$data"
        cols=$(head -n1 "$data" | awk -F'"' '{ print (NF - 1) / 2 }')
        [[ $cols -gt 0 ]] || { log "no results to plot for latency $latency"; continue; }
        title="write + make durable, p50, guest under TCG (vsicd service latency: $latency)"
        gnuplot <<EOF
set terminal svg size 1100,520 dynamic font "sans,11"
set output "$svg-$latency.svg"
set title "$title"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set logscale y
set grid ytics
set ylabel "p50 latency per operation (µs, log scale)"
set xlabel "bytes written per operation"
set key outside right top
set yrange [1:*]
# 14 distinguishable colours: kernel cases first, then the vsic paths.
colours = "#4b0082 #9370db #00688b #87ceeb #8b4500 #f4a460 #006400 #9acd32 #b22222 #ff6347 #ff8c00 #555555 #999999 #cccccc"
do for [i=1:14] { set linetype i lc rgb word(colours, i) }
plot for [i=2:$((cols + 1))] "$data" using i:xtic(1) title columnheader(i)
EOF
        log "wrote $svg-$latency.svg"
    done
fi
[[ $failures -eq 0 ]] || exit 1
exit
}
