#!/usr/bin/env bash
# NFS benchmark (issue 12), also run by `ci/bench.sh --apps`: in one guest
# (ci/bench-nfs.guest.sh), the guest kernel's NFSv3 client drives
# vsic-nfsd with its storage on a VSA through vsic over VFIO, with its
# default hybrid completions (engine=vsic: sleep for part of the usual
# completion time, poll briefly, then sleep on the interrupt) and waiting on
# the interrupt (engine=vsic-interrupts, `vsic-nfsd --interrupts`), on a
# file on ext4 on a kernel-bound VSIC (engine=file) and on a
# kernel-bound VSIC's block device (engine=blockdev), and the kernel's own
# nfsd exporting that ext4 (engine=knfsd-ext4):
#   case=nfs-small: create + write 4 KiB + close of 2,000 files, sync mount
#   case=nfs-seq:   256 MiB sequential write + fsync, default mount
# and, as a reference, the same server on a file in tmpfs, where a flush
# costs nothing (engine=ram, small files only): its time per file is what
# every engine shares (NFS client, TCP, server); each engine's time above
# it is its storage path (`storage ...` lines);
# each --rounds times; then the medians per engine and the ratios of each
# vsic engine over each other engine (from the medians; over ram: the
# share of the no-storage ceiling reached), and of each kernel path's
# storage time over each vsic engine's (case=nfs-small-storage).
#
# Usage: ci/bench-nfs.sh [--files N] [--mib M] [--rounds R] [--warmup W] [--no-build] [--out FILE]
#   --files   small files per run (default 2000)
#   --mib     MiB of the sequential write (default 256)
#   --rounds  rounds (default 3): each runs every engine once, in a rotated
#             order; the figures and ratios are the medians of the rounds
#             (every round's own line is printed too, with round=R)
#   --warmup  small files each engine creates first, untimed (default 100;
#             0: none): the guest's first run pays TCG's translation of the
#             code it runs and a cold page cache, whatever the engine
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
files=2000
mib=256
rounds=3
warmup=100
build=1
out=
while [[ $# -gt 0 ]]; do
    case $1 in
    --files) files=${2:?}; shift ;;
    --mib) mib=${2:?}; shift ;;
    --rounds) rounds=${2:?}; shift ;;
    --warmup) warmup=${2:?}; shift ;;
    --no-build) build=0 ;;
    --out) out=${2:?}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-nfs: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[[ $build -eq 1 ]] && bash images/build.sh >&2
results=$(mktemp)
state=$(mktemp -d /var/tmp/vsic-bench-nfs.XXXXXX)
trap 'rm -rf "$results" "$state"' EXIT
"$REPO/qemu-configs/launch.sh" --state-dir "$state" --vsics 4 --queues 1 --drive-size 3G --memory 1536M --timeout 1800 \
    --append "vsic.nfs_files=$files vsic.nfs_mib=$mib vsic.nfs_rounds=$rounds vsic.nfs_warmup=$warmup" --run "$REPO/ci/bench-nfs.guest.sh" \
    --run-with "$REPO/ci/guest-tests/lib.sh" | tee /dev/stderr | grep -a -E '^(case=|# )' >"$results" || true
grep -q '^case=nfs' "$results" || { echo "bench-nfs: the guest printed no results" >&2; exit 1; }
{
    cat "$results"
    # Median of the rounds per (case, engine), then each vsic engine over each other engine.
    awk '
        function median(list,    n, a, i, j, t) {
            n = split(list, a, " ")
            for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        /^case=nfs/ {
            delete v
            for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            e = v["engine"]; srv[e] = v["server"]
            if (v["case"] == "nfs-small") { ops[e] = ops[e] " " v["small_ops_per_s"]; p50[e] = p50[e] " " v["small_p50_us"]; n[e]++ }
            if (v["case"] == "nfs-seq") { mbs[e] = mbs[e] " " v["seq_mb_per_s"] }
        }
        END {
            for (e in ops) {
                mo[e] = median(ops[e]); mp[e] = median(p50[e])
                printf "median case=nfs-small server=%s engine=%s rounds=%d small_ops_per_s=%.0f small_p50_us=%.0f\n", srv[e], e, n[e], mo[e], mp[e]
            }
            # Against the ram reference (a storage path that costs nothing):
            # the part of the time per small file that is the storage path of
            # the engine, and how many times that of a vsic engine each kernel
            # path takes (no quote characters in this program).
            if (mo["ram"] > 0) {
                for (e in mo)
                    if (e != "ram" && mo[e] > 0) {
                        st[e] = 1000 / mo[e] - 1000 / mo["ram"]
                        printf "storage case=nfs-small engine=%s ms_per_file=%.2f common_ms_per_file=%.2f\n", e, st[e], 1000 / mo["ram"]
                    }
                for (u in st)
                    if (u ~ /^vsic/)
                        for (e in st)
                            if (e !~ /^vsic/) {
                                if (st[u] > 0) printf "ratio case=nfs-small-storage engine=%s/%s storage_time=%.2f\n", e, u, st[e] / st[u]
                                else printf "ratio case=nfs-small-storage engine=%s/%s storage_time=n/a\n", e, u
                            }
            }
            for (e in mbs) {
                mm[e] = median(mbs[e])
                printf "median case=nfs-seq server=%s engine=%s seq_mb_per_s=%.1f\n", srv[e], e, mm[e]
            }
            for (u in mo)
                if (u ~ /^vsic/)
                    for (e in mo)
                        if (e !~ /^vsic/ && mo[e] > 0 && mp[e] > 0 && mo[u] > 0)
                            printf "ratio case=nfs-small engine=%s/%s ops=%.2f p50=%.2f\n", u, e, mo[u] / mo[e], mp[u] / mp[e]
            for (u in mm)
                if (u ~ /^vsic/)
                    for (e in mm)
                        if (e !~ /^vsic/ && mm[e] > 0 && mm[u] > 0)
                            printf "ratio case=nfs-seq engine=%s/%s mb_per_s=%.2f\n", u, e, mm[u] / mm[e]
        }' "$results"
} | tee ${out:+"$out"}
