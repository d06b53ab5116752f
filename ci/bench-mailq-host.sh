#!/usr/bin/env bash
# Host comparison for vsic-mailq (issue 11), in one run: `vsic-mailq bench`
# against
#   (1) the slot queue on a VSA of vsicd over vhost-user  (backend=vsa)
#   (2) the Maildir baseline (one file per message, tmp/ + fsync + rename
#       into new/ + fsync of new/) in a directory            (backend=maildir)
# vsicd's drive file and the Maildir directory are in DIR, so both end in
# the same host file system. Host figures only: the issue's targets are
# for a guest (VSA over VFIO against Maildir on ext4 on a kernel-bound VSIC).
#
# Usage: ci/bench-mailq-host.sh [--dir DIR] [--no-build] [--messages N]
#
# Prints per case (sizes 1 KiB, 4 KiB, 16 KiB, 128 KiB; 1 and 8 sessions):
#   case=mailq backend=vsa size=1024 sessions=1 ... msgs_per_s=... p50_us=... p99_us=...
# and then
#   ratio case=mailq size=1024 sessions=1 backend=vsa/maildir msgs_per_s=... p50=...
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

dir=
build=1
messages=2000
while [[ $# -gt 0 ]]; do
    case $1 in
    --dir) dir=${2:?}; shift ;;
    --no-build) build=0 ;;
    --messages) messages=${2:?}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
    shift
done

if [[ $build -eq 1 ]]; then
    cargo build --release -p vsicd -p vsic-mailq -p vsicctl >&2
fi
MAILQ=$REPO/target/release/vsic-mailq
VSICD=$REPO/target/release/vsicd
CTL=$REPO/target/release/vsicctl

dir=${dir:-$(mktemp -d /var/tmp/vsic-bench-mailq.XXXXXX)}
mkdir -p "$dir"
vsicd_pid=
cleanup() {
    [[ -n $vsicd_pid ]] && kill -9 "$vsicd_pid" 2>/dev/null || true
    sleep 0.2
    rm -rf "$dir"
}
trap cleanup EXIT

"$VSICD" --socket-dir "$dir/sockets" --drive "$dir/drive0.img,size=1G" --vsics 1 --queues 1 \
    >"$dir/vsicd.log" 2>&1 &
vsicd_pid=$!
disown
for _ in $(seq 200); do grep -q "vsicd: listening on" "$dir/vsicd.log" && break; sleep 0.05; done
"$CTL" --vhost-user "$dir/sockets/pf.sock" vsa create --size 512M --cap "$dir/vsa.cap" >/dev/null
"$CTL" --vhost-user "$dir/sockets/pf.sock" vsic attach --vsic 0 --slot 0 --cap "$dir/vsa.cap" >/dev/null

results=$(mktemp)
for size in 1024 4096 16384 131072; do
    n=$messages
    [[ $size -ge 131072 ]] && n=$((messages / 10))
    for sessions in 1 8; do
        for backend in vsa maildir; do
            case $backend in
            vsa) dev="vhost-user:$dir/sockets/vsic0.sock" ;;
            maildir) dev="maildir:$dir/maildir" ;;
            esac
            line=$("$MAILQ" --dev "$dev" bench --sessions "$sessions" --size "$size" --messages "$n")
            echo "case=mailq backend=$backend ${line#case=mailq }" | tee -a "$results"
        done
    done
done
awk '
    /^case=mailq/ {
        delete f
        for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        k = "size=" f["size"] " sessions=" f["sessions"]
        if (!(k in seen)) { seen[k] = 1; order[n++] = k }
        rate[k, f["backend"]] = f["msgs_per_s"]; p50[k, f["backend"]] = f["p50_us"]
    }
    END {
        for (i = 0; i < n; i++) {
            k = order[i]
            printf "ratio case=mailq %s backend=vsa/maildir msgs_per_s=%.2f p50=%.2f\n", k,
                rate[k, "vsa"] / rate[k, "maildir"], p50[k, "vsa"] / p50[k, "maildir"]
        }
    }' "$results"
rm -f "$results"
