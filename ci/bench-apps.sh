#!/usr/bin/env bash
# Application benchmark (issue 10): redis-benchmark drives, in one run,
#   (1) vsic-kv on a VSA through the vsic library   (engine=vsic)
#   (2) vsic-kv on a file through the kernel        (engine=file)
#   (3) redis-server, appendonly yes, appendfsync always, on a file (engine=aof)
# and, in the guest, (1) with completions polled instead of interrupts
# (engine=vsic-poll) and with the vsic library's hybrid completions
# (engine=vsic-hybrid).
# SET and GET with 1 KiB values, 1 client (latency) and 32 clients
# (throughput), all on loopback. Then, in the guest, the mail queue
# (issue 11, ci/bench-apps-mailq.guest.sh): Postfix's smtp-source sends 1,
# 4, 16 and 128 KiB messages over 1 and 8 sessions to vsic-mailq on a VSA
# (through vsic, VFIO; engine=vsic, engine=vsic-poll with completions
# polled, engine=vsic-hybrid with hybrid completions) and to its Maildir baseline on that ext4 (engine=maildir).
#
# Usage: ci/bench-apps.sh [--host] [--cache MODE] [--requests N] [--repeat N] [--dir DIR] [--no-build] [--out FILE]
#                         [--only kv|mailq] [--mailq-messages M] [--mailq-sizes LIST] [--mailq-engines LIST]
#        (also reached as: ci/bench.sh --apps ...)
#
#   (default)   in one guest (launch.sh; ci/bench-apps.guest.sh): (1) on the
#               VSA of a VSIC through vsic over VFIO, (2) a file on ext4 on
#               a kernel-bound VSIC, (3) redis's AOF on that ext4
#   --host      on the host instead: vsicd serves the VSA over vhost-user
#               from a drive file in DIR; the file of (2) and redis's AOF
#               are in DIR too (same file system)
#   --cache     guest: vsicd's cache mode, write-back (default) or
#               write-through; it applies to every VSIC, so all servers
#               (vsic-kv on vsic and on ext4, Redis on ext4) see the same
#               device mode. Write-through devices offer no FLUSH: vsic-kv
#               then answers after the log write alone, the guest's ext4
#               (and so Redis's fsync) issues no cache flush either
#   --requests  requests per case for 32 clients (default 20000 on the
#               host, 10000 in the guest; 1 client gets a quarter)
#   --dir       where the drive, the store file and the AOF live
#               (default: a fresh directory under /var/tmp)
#   --repeat    guest: runs per case, servers in rotation; the median run
#               (by rps) is reported (default 3)
#   --no-build  use target/release binaries as they are
#   --out       also write the result lines to FILE
#   --only      guest: only the kv cases, or only the mail-queue cases
#               (the NFS cases run only without --only)
#   --mailq-messages  guest: messages per mail-queue run with 8 sessions
#               (default 1000; 1 session and 128 KiB get a quarter)
#   --mailq-sizes   guest: message sizes, a comma list (default
#               1024,4096,16384,131072); e.g. `--only mailq --mailq-sizes
#               1024` is the quick run of the issue's targets
#   --mailq-engines guest: mail-queue engines, a comma list of vsic,
#               vsic-poll, vsic-hybrid, maildir (default: all four)
#
# Prints one line per case:
#   case=kv-set server=vsic-kv engine=vsic clients=1 rps=... p50_ms=... p99_ms=...
# then ratios against redis (engine=aof):
#   ratio case=kv-set clients=1 engine=vsic/aof rps=... p50=...
# and for the mail queue (guest):
#   case=mailq engine=vsic size=1024 sessions=8 messages=M msgs_per_s=... p50_us=... p99_us=... client_us=...
#              commits=... write_us=... flush_us=... server_cpu_us=... busy_pct=... client_cpu_us=... runs=R
#   ratio case=mailq size=1024 sessions=8 engine=vsic/maildir msgs_per_s=... p50=... client_us=...
# (p50_us/p99_us: the receiver's store latency per message, end of DATA to
# durable; client_us: the mean time a session spends per message;
# server_cpu_us/client_cpu_us: the receiver's and smtp-source's CPU time
# per message; the rest is described in ci/bench-apps-mailq.guest.sh).
# The first line, '# cache=...', has the host's load average before and
# after the guest run.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
log() { printf 'bench-apps: %s\n' "$*" >&2; }

host=0
cache=write-back
requests=
repeat=3
dir=
build=1
out=
only=all
mailq_messages=1000
mailq_sizes=1024,4096,16384,131072
mailq_engines=vsic,vsic-poll,vsic-hybrid,maildir
while [[ $# -gt 0 ]]; do
    case $1 in
    --host) host=1 ;;
    --cache) cache=${2:?}; shift ;;
    --requests) requests=${2:?}; shift ;;
    --repeat) repeat=${2:?}; shift ;;
    --dir) dir=${2:?}; shift ;;
    --no-build) build=0 ;;
    --out) out=${2:?}; shift ;;
    --only) only=${2:?}; shift ;;
    --mailq-messages) mailq_messages=${2:?}; shift ;;
    --mailq-sizes) mailq_sizes=${2:?}; shift ;;
    --mailq-engines) mailq_engines=${2:?}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
    shift
done

# ratios FILE: one line per (test, clients, engine) against redis (aof).
ratios() {
    awk '
        /^case=kv-/ {
            delete f
            for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            k = f["case"] " " f["clients"]
            if (!(k in seen)) { seen[k] = 1; order[n++] = k }
            rps[k, f["engine"]] = f["rps"]; p50[k, f["engine"]] = f["p50_ms"]
        }
        END {
            for (i = 0; i < n; i++) {
                split(order[i], a, " ")
                split("vsic vsic-poll vsic-hybrid file", engines, " ")
                for (j = 1; j <= 4; j++) {
                    e = engines[j]
                    r0 = rps[order[i], "aof"]; l0 = p50[order[i], "aof"]
                    if (r0 == "" || rps[order[i], e] == "") continue
                    printf "ratio case=%s clients=%s engine=%s/aof rps=%.2f p50=%.2f\n", a[1], a[2], e,
                        rps[order[i], e] / r0, (l0 > 0 ? p50[order[i], e] / l0 : 0)
                }
            }
        }' "$1"
}

# mailq_ratios FILE: one line per (size, sessions), vsic against maildir.
mailq_ratios() {
    awk '
        /^case=mailq / {
            delete f
            for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            k = f["size"] " " f["sessions"]
            if (!(k in seen)) { seen[k] = 1; order[n++] = k }
            r[k, f["engine"]] = f["msgs_per_s"]; p[k, f["engine"]] = f["p50_us"]; c[k, f["engine"]] = f["client_us"]
        }
        END {
            for (i = 0; i < n; i++) {
                k = order[i]; split(k, a, " ")
                split("vsic vsic-poll vsic-hybrid", engines, " ")
                for (j = 1; j <= 3; j++) {
                    e = engines[j]
                    if (r[k, e] == "" || r[k, "maildir"] == "" || r[k, "maildir"] == 0) continue
                    printf "ratio case=mailq size=%s sessions=%s engine=%s/maildir msgs_per_s=%.2f p50=%.2f client_us=%.2f\n", a[1], a[2], e,
                        r[k, e] / r[k, "maildir"], (p[k, "maildir"] > 0 ? p[k, e] / p[k, "maildir"] : 0),
                        (c[k, "maildir"] > 0 ? c[k, e] / c[k, "maildir"] : 0)
                }
            }
        }' "$1"
}

case $only in
all | kv | mailq) ;;
*) log "--only: kv or mailq, not $only"; exit 2 ;;
esac
[[ $host -eq 1 && $only == mailq ]] && { log "the mail queue on the host: ci/bench-mailq-host.sh"; exit 2; }

case $cache in
write-back | write-through) ;;
*) log "--cache: write-back or write-through, not $cache"; exit 2 ;;
esac
[[ $host -eq 1 && $cache != write-back ]] && { log "--cache is for the guest run"; exit 2; }

if [[ $host -ne 1 ]]; then
    requests=${requests:-10000}
    results=$(mktemp)
    trap 'rm -f "$results"' EXIT
    log "booting a guest (this takes a while under TCG)"
    load0=$(cut -d' ' -f1-3 /proc/loadavg)
    # VSIC 4: the mail queue's VSA (ci/bench-apps-mailq.guest.sh).
    "$REPO/qemu-configs/launch.sh" --vsics 5 --queues 1 --drive-size 3G --hugepages 144 --memory 1536M --timeout 3600 \
        --vsicd-arg "--cache=$cache" --append "vsic.requests=$requests vsic.repeat=$repeat vsic.only=$only vsic.mailq_messages=$mailq_messages vsic.mailq_sizes=$mailq_sizes vsic.mailq_engines=$mailq_engines" \
        --run "$REPO/ci/bench-apps.guest.sh" --run-with "$REPO/ci/guest-tests/lib.sh" \
        --run-with "$REPO/ci/bench-apps-mailq.guest.sh" | tee /dev/stderr |
        grep -a -E '^(case=|# guest|# after-set|# mailq)' >"$results" || true
    grep -q '^case=' "$results" || { log "the guest printed no results"; exit 1; }
    { echo "# cache=$cache host=$(uname -n) cores=$(nproc) load_before=${load0// /,} load_after=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)"
        cat "$results"; ratios "$results"; mailq_ratios "$results"; } | tee ${out:+"$out"}
    # The NFS cases (issue 12) in a guest of their own (ci/bench.sh --nfs
    # runs them alone).
    if [[ $only == all ]]; then
        bash "$REPO/ci/bench-nfs.sh" --no-build | tee -a ${out:+"$out"}
    fi
    exit 0
fi
requests=${requests:-20000}
for tool in redis-server redis-benchmark; do
    command -v $tool >/dev/null || { log "$tool missing: run ci/install-deps.sh"; exit 1; }
done
if [[ $build -eq 1 ]]; then
    cargo build --release -p vsicd -p vsic-kv -p vsicctl >&2
fi
KV=$REPO/target/release/vsic-kv
VSICD=$REPO/target/release/vsicd
CTL=$REPO/target/release/vsicctl

dir=${dir:-$(mktemp -d /var/tmp/vsic-bench-apps.XXXXXX)}
mkdir -p "$dir"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    # (the servers were disowned: no job notices)
    sleep 0.2
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    local i
    for i in $(seq 200); do
        redis-cli -p "$1" PING >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    log "nothing answers on port $1"
    return 1
}

# vsicd with one VSA attached to VSIC 0.
"$VSICD" --socket-dir "$dir/sockets" --drive "$dir/drive0.img,size=1G" --vsics 1 --queues 1 \
    >"$dir/vsicd.log" 2>&1 &
pids+=($!)
disown
for i in $(seq 200); do grep -q "vsicd: listening on" "$dir/vsicd.log" && break; sleep 0.05; done
"$CTL" --vhost-user "$dir/sockets/pf.sock" vsa create --size 512M --cap "$dir/vsa.cap" >/dev/null
"$CTL" --vhost-user "$dir/sockets/pf.sock" vsic attach --vsic 0 --slot 0 --cap "$dir/vsa.cap" >/dev/null

declare -A port
port[vsic]=$(free_port)
"$KV" --dev "vhost-user:$dir/sockets/vsic0.sock" serve --listen "127.0.0.1:${port[vsic]}" 2>"$dir/kv-vsic.log" &
pids+=($!)
disown
truncate -s 512M "$dir/kv.img"
port[file]=$(free_port)
"$KV" --dev "file:$dir/kv.img" serve --listen "127.0.0.1:${port[file]}" 2>"$dir/kv-file.log" &
pids+=($!)
disown
port[aof]=$(free_port)
mkdir -p "$dir/redis"
redis-server --bind 127.0.0.1 --port "${port[aof]}" --save "" --appendonly yes --appendfsync always \
    --dir "$dir/redis" --daemonize no >"$dir/redis.log" 2>&1 &
pids+=($!)
disown
for e in vsic file aof; do wait_port "${port[$e]}"; done

printf '# host=%s cores=%s load=%s redis=%s\n' "$(uname -n)" "$(nproc)" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" "$(redis-server --version | awk '{print $3}')" | tee ${out:+"$out"}

for clients in 1 32; do
    n=$requests
    [[ $clients -eq 1 ]] && n=$((requests / 4))
    for test in set get; do
        for e in vsic file aof; do
            server=vsic-kv
            [[ $e == aof ]] && server=redis
            # --csv: "test","rps","avg","min","p50","p95","p99","max"
            line=$(redis-benchmark -h 127.0.0.1 -p "${port[$e]}" -t "$test" -n "$n" -c "$clients" \
                -d 1024 -r 100000 --csv | grep -i "^\"$test\"" | tr -d '"')
            IFS=, read -r _ r _ _ p50v _ p99v _ <<<"$line"
            res="case=kv-$test server=$server engine=$e clients=$clients rps=$r p50_ms=$p50v p99_ms=$p99v"
            echo "$res" | tee -a "$dir/results" ${out:+"$out"}
        done
    done
done
ratios "$dir/results" | tee -a ${out:+"$out"}
