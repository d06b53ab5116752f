#!/bin/sh
# Guest half of `ci/bench.sh --apps` (ci/bench-apps.sh copies it in and runs
# it with launch.sh --run). In one guest, one run, redis-benchmark drives
#   (1) vsic-kv on the VSA of VSIC 0 through vsic (VFIO)          engine=vsic
#   (2) vsic-kv on a file on ext4 on VSIC 1 (kernel virtio_blk)   engine=file
#   (3) redis-server, appendonly yes, appendfsync always, AOF on
#       that ext4                                                  engine=aof
#   (1') as (1), completions polled (--poll), VSIC 2            engine=vsic-poll
#   (1") as (1), hybrid completions (--hybrid), VSIC 3          engine=vsic-hybrid
# SET and GET, 1 KiB values, 1 and 32 clients, on loopback. Prints one
# "case=..." line per case; vsic.requests=N sets requests for 32 clients,
# vsic.repeat=N runs each case N times (median reported). Then, with the
# kv servers stopped, the mail-queue cases of
# /vsic/bench-apps-mailq.guest.sh (ci/bench-apps-mailq.guest.sh, VSIC 4).
# vsic.only=kv or vsic.only=mailq runs only those cases.
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

n=${VSIC_REQUESTS:-10000}
only=${VSIC_ONLY:-all}
vsicctl vsa create --size 512M --cap /root/kv.cap >/dev/null
vsicctl vsic attach --vsic 0 --cap /root/kv.cap --slot 0 >/dev/null
vsicctl vsic bind --vsic 0 --vfio --user root >/dev/null
vsicctl vsa create --size 512M --cap /root/kvp.cap >/dev/null
vsicctl vsic attach --vsic 2 --cap /root/kvp.cap --slot 0 >/dev/null
vsicctl vsic bind --vsic 2 --vfio --user root >/dev/null
vsicctl vsa create --size 512M --cap /root/kvh.cap >/dev/null
vsicctl vsic attach --vsic 3 --cap /root/kvh.cap --slot 0 >/dev/null
vsicctl vsic bind --vsic 3 --vfio --user root >/dev/null
kernel_vsa_disk 1 1024 /root/fs.cap
disk=$KDISK
# No lazy init: ext4 would zero its inode tables in the background during
# the baseline's runs.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/"$disk" || fail "mkfs.ext4"
mkdir -p /mnt/fs
mount -t ext4 /dev/"$disk" /mnt/fs || fail "mount"
mkdir -p /mnt/fs/redis
truncate -s 512M /mnt/fs/kv.img

kv_cases() {
vsic-kv --dev vsic:0 serve --listen 127.0.0.1:6380 2>/tmp/kv-vsic.log &
vsic-kv --dev vsic:2 --poll serve --listen 127.0.0.1:6383 2>/tmp/kv-vsic-poll.log &
vsic-kv --dev vsic:3 --hybrid serve --listen 127.0.0.1:6384 2>/tmp/kv-vsic-hybrid.log &
vsic-kv --dev file:/mnt/fs/kv.img serve --listen 127.0.0.1:6381 2>/tmp/kv-file.log &
redis-server --bind 127.0.0.1 --port 6382 --save "" --appendonly yes --appendfsync always \
    --dir /mnt/fs/redis >/tmp/redis.log 2>&1 &
for port in 6380 6381 6382 6383 6384; do
    for _ in $(seq 300); do redis-cli -p $port PING 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    [ "$(redis-cli -p $port PING)" = PONG ] || { cat /tmp/kv-*.log /tmp/redis.log; fail "nothing on port $port"; }
done
echo "# guest: $(nproc) cpus, kernel $(uname -r), ext4 on /dev/$disk, redis $(redis-server --version | cut -d' ' -f3)"

# Each case runs `repeat` times, the servers in rotation (so a change in
# the host's load hits all of them alike); the median run (by rps) of each
# case is reported.
repeat=${VSIC_REPEAT:-1}
for clients in 1 32; do
    reqs=$n
    [ $clients -eq 1 ] && reqs=$((n / 4))
    for test in set get; do
        : >/tmp/runs
        for _ in $(seq "$repeat"); do
            for e in vsic:6380 vsic-poll:6383 vsic-hybrid:6384 file:6381 aof:6382; do
                # --csv: "test","rps","avg","min","p50","p95","p99","max"
                line=$(redis-benchmark -p "${e##*:}" -t $test -n $reqs -c $clients -d 1024 -r 100000 --csv |
                    grep -i "^\"$test\"" | tr -d '"')
                echo "${e%%:*},$line" >>/tmp/runs
            done
        done
        for engine in vsic vsic-poll vsic-hybrid file aof; do
            server=vsic-kv
            [ $engine = aof ] && server=redis
            grep "^$engine," /tmp/runs | sort -t, -k3 -g | awk -F, -v t=$test -v s=$server -v e=$engine -v c=$clients -v r="$repeat" '
                { line[NR] = $0 }
                END {
                    split(line[int((NR + 1) / 2)], f, ",")
                    printf "case=kv-%s server=%s engine=%s clients=%s rps=%s p50_ms=%s p99_ms=%s runs=%s\n", t, s, e, c, f[3], f[6], f[8], r
                }'
        done
        # Where vsic-kv's SET time went in this case: its INFO counters,
        # less what they were after the previous SET case.
        [ $test = set ] || continue
        for e in vsic:6380 vsic-poll:6383 vsic-hybrid:6384 file:6381; do
            engine=${e%%:*}
            redis-cli -p "${e##*:}" INFO persistence | tr -d '\r' |
                awk -F: '/^vsic_kv_(group_commits|records|write_us|flush_us|commit_us):/ { print $1, $2 }' >/tmp/now-$engine
            [ -s /tmp/prev-$engine ] || sed 's/ .*/ 0/' /tmp/now-$engine >/tmp/prev-$engine
            awk -v e=$engine -v c=$clients '
                FNR == NR { prev[$1] = $2; next }
                { d[$1] = $2 - prev[$1] }
                END {
                    n = d["vsic_kv_group_commits"]; if (n == 0) n = 1
                    printf "# after-set clients=%s engine=%s group_commits=%d records=%d write_us_avg=%.0f flush_us_avg=%.0f commit_us_avg=%.0f\n",
                        c, e, d["vsic_kv_group_commits"], d["vsic_kv_records"], d["vsic_kv_write_us"] / n, d["vsic_kv_flush_us"] / n, d["vsic_kv_commit_us"] / n
                }' /tmp/prev-$engine /tmp/now-$engine
            mv /tmp/now-$engine /tmp/prev-$engine
        done
    done
done
}

if [ "$only" != mailq ]; then
    kv_cases
    # The kv servers (one of them polls, keeping a CPU busy) stop first.
    # shellcheck disable=SC2046
    kill $(pidof vsic-kv redis-server)
    sleep 1
fi
if [ "$only" != kv ]; then
    # shellcheck source=ci/bench-apps-mailq.guest.sh
    . /vsic/bench-apps-mailq.guest.sh
fi
