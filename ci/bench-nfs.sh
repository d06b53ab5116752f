#!/usr/bin/env bash
# NFS benchmark (issue 12), also run by `ci/bench.sh --apps`: in one guest
# (ci/bench-nfs.guest.sh), the guest kernel's NFSv3 client drives
# vsic-nfsd with its storage on a VSA through vsic over VFIO (engine=vsic)
# and on a file on ext4 on a kernel-bound VSIC (engine=file), and the
# kernel's own nfsd exporting that ext4 (engine=knfsd-ext4):
#   case=nfs-small: create + write 4 KiB + close of 2,000 files, sync mount
#   case=nfs-seq:   256 MiB sequential write + fsync, default mount
# then ratios vsic/file and vsic/knfsd-ext4.
#
# Usage: ci/bench-nfs.sh [--files N] [--mib M] [--no-build] [--out FILE]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
files=2000
mib=256
build=1
out=
while [[ $# -gt 0 ]]; do
    case $1 in
    --files) files=${2:?}; shift ;;
    --mib) mib=${2:?}; shift ;;
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
"$REPO/qemu-configs/launch.sh" --state-dir "$state" --vsics 2 --queues 1 --drive-size 3G --memory 1536M --timeout 1800 \
    --append "vsic.nfs_files=$files vsic.nfs_mib=$mib" --run "$REPO/ci/bench-nfs.guest.sh" \
    --run-with "$REPO/ci/guest-tests/lib.sh" | tee /dev/stderr | grep -a -E '^(case=|# )' >"$results" || true
grep -q '^case=nfs' "$results" || { echo "bench-nfs: the guest printed no results" >&2; exit 1; }
{
    cat "$results"
    awk '
        /^case=nfs/ {
            c = ""; e = ""
            for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2]; if (kv[1] == "case") c = kv[2]; if (kv[1] == "engine") e = kv[2] }
            if (c == "nfs-small") { ops[e] = v["small_ops_per_s"]; p50[e] = v["small_p50_us"] }
            if (c == "nfs-seq") { mbs[e] = v["seq_mb_per_s"] }
        }
        END {
            if (ops["file"] > 0 && p50["vsic"] > 0)
                printf "ratio case=nfs-small engine=vsic/file ops=%.2f p50=%.2f\n", ops["vsic"] / ops["file"], p50["vsic"] / p50["file"]
            if (mbs["file"] > 0)
                printf "ratio case=nfs-seq engine=vsic/file mb_per_s=%.2f\n", mbs["vsic"] / mbs["file"]
            if (ops["knfsd-ext4"] > 0 && p50["vsic"] > 0)
                printf "ratio case=nfs-small engine=vsic/knfsd-ext4 ops=%.2f p50=%.2f\n", ops["vsic"] / ops["knfsd-ext4"], p50["vsic"] / p50["knfsd-ext4"]
            if (mbs["knfsd-ext4"] > 0)
                printf "ratio case=nfs-seq engine=vsic/knfsd-ext4 mb_per_s=%.2f\n", mbs["vsic"] / mbs["knfsd-ext4"]
        }' "$results"
} | tee ${out:+"$out"}
