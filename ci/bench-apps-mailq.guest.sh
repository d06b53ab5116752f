# shellcheck shell=dash
# The mail-queue half of `ci/bench.sh --apps` (issue 11): sourced by
# ci/bench-apps.guest.sh (copied in as /vsic/bench-apps-mailq.guest.sh)
# once ext4 on VSIC 1 (kernel virtio_blk) is mounted on /mnt/fs, in the
# same guest run. Postfix's smtp-source sends messages of 1, 4, 16 and
# 128 KiB (-l SIZE: SIZE bytes of content, to which smtp-source adds its
# ~110 bytes of headers) over 1 and 8 sessions (-d: each session one
# connection for all its messages) to
#   (1) vsic-mailq on the VSA of VSIC 4 through vsic (VFIO),
#       completions by interrupt                              engine=vsic
#   (1') the same with completions polled (--poll)            engine=vsic-poll
#   (1") the same with hybrid completions (--hybrid)          engine=vsic-hybrid
#   (2) vsic-mailq's Maildir baseline in /mnt/fs/maildir      engine=maildir
#       (one file per message: write to tmp/, fsync, rename into new/,
#       fsync of new/, as Postfix does)
# both behind the same SMTP front (`serve --stats`, workers = sessions).
# Every run starts from an empty queue (`erase`) and a fresh server; the
# engines alternate; vsic.repeat=R runs per case, the median (by msgs/s)
# reported. vsic.mailq_messages=M: messages per run with 8 sessions (1
# session and 128 KiB get a quarter); vsic.mailq_sizes=1024,4096 and
# vsic.mailq_engines=vsic,maildir (comma lists) restrict the cases. One
# line per case:
#   case=mailq engine=vsic size=1024 sessions=8 messages=M msgs_per_s= p50_us= p99_us= client_us=
#              commits= write_us= flush_us= server_cpu_us= busy_pct= client_cpu_us= runs=R
# msgs_per_s: messages over smtp-source's wall time (/proc/uptime, 10 ms
# resolution). p50_us, p99_us: per message, the receiver's store latency,
# from the end of DATA to the store's answer that the message is durable,
# which the 250 waits for (XSTATS; smtp-source does not time messages).
# client_us: sessions x wall time / messages, the mean time one session
# spends per message (SMTP round trips included). commits, write_us,
# flush_us (slot queue only): FLUSHes, and per FLUSH the mean wait of the
# messages it made durable for their writes, and its round trip. server_cpu_us: the
# receiver's CPU time (user + system, /proc/PID/stat) per message;
# busy_pct: how busy the guest's CPUs were over the run (/proc/stat, all
# CPUs; under TCG both vCPUs share one host thread, so 50 means one CPU's
# worth); client_cpu_us: smtp-source's CPU time (busybox time) per message.

mq_messages=${VSIC_MAILQ_MESSAGES:-1000}
mq_repeat=${VSIC_REPEAT:-1}
MQ_ADDR=127.0.0.1:2525
vsicctl vsa create --size 512M --cap /root/mq.cap >/dev/null
vsicctl vsic attach --vsic 4 --cap /root/mq.cap --slot 0 >/dev/null
vsicctl vsic bind --vsic 4 --vfio --user root >/dev/null
command -v smtp-source >/dev/null || fail "smtp-source is not in the image"

MQ_ENGINES=$(echo "${VSIC_MAILQ_ENGINES:-vsic,vsic-poll,vsic-hybrid,maildir}" | tr , ' ')
MQ_SIZES=$(echo "${VSIC_MAILQ_SIZES:-1024,4096,16384,131072}" | tr , ' ')
# mq_args ENGINE: the --dev (and completion mode) of an engine.
mq_args() {
    case $1 in
    vsic) echo --dev vsic:4 ;;
    vsic-poll) echo --dev vsic:4 --poll ;;
    vsic-hybrid) echo --dev vsic:4 --hybrid ;;
    maildir) echo --dev maildir:/mnt/fs/maildir ;;
    *) fail "unknown mail-queue engine $1" ;;
    esac
}

# cpu_ticks: busy and total clock ticks of all CPUs so far (/proc/stat).
cpu_ticks() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat; }
# proc_ticks PID: user + system clock ticks of a process so far.
proc_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# uptime_cs: seconds since boot, in hundredths.
uptime_cs() { awk '{ split($1, t, "."); print t[1] * 100 + t[2] }' /proc/uptime; }

# mq_run ENGINE SIZE SESSIONS MESSAGES: one run from an empty queue;
# prints "msgs_per_s p50_us p99_us client_us commits write_us flush_us
# server_cpu_us busy_pct client_cpu_us".
mq_run() {
    local dev log spid t0 t1 stats c0 c1 p0 p1
    dev=$(mq_args "$1")
    # shellcheck disable=SC2086
    timeout 120 vsic-mailq $dev erase || fail "erase $dev failed or took over 120 s"
    sync
    log=/tmp/mq-serve-$1.log
    # shellcheck disable=SC2086
    vsic-mailq $dev serve --smtp $MQ_ADDR --workers "$3" --max-size 1048576 --stats 2>"$log" &
    spid=$!
    for _ in $(seq 600); do grep -q "SMTP on" "$log" && break; sleep 0.1; done
    grep -q "SMTP on" "$log" || { cat "$log"; fail "vsic-mailq serve on $dev did not start"; }
    p0=$(proc_ticks "$spid")
    c0=$(cpu_ticks)
    t0=$(uptime_cs)
    # A run that stalls fails with what the receiver saw instead of hanging.
    # (busybox time: smtp-source's own CPU time, on stderr)
    if ! timeout 300 busybox time smtp-source -d -s "$3" -m "$4" -l "$2" -f bench@smtp-source.example -t q@vsic.example \
        $MQ_ADDR >/tmp/mq-source.log 2>&1; then
        cat /tmp/mq-source.log "$log"
        echo "receiver's counts: $(vsic-mailq stats --connect $MQ_ADDR 2>&1)"
        ps
        dmesg | tail -n 20
        fail "smtp-source to $1 ($2 bytes, $3 sessions) failed or took over 300 s"
    fi
    t1=$(uptime_cs)
    c1=$(cpu_ticks)
    p1=$(proc_ticks "$spid")
    stats=$(timeout 60 vsic-mailq stats --connect $MQ_ADDR) || { cat "$log"; fail "stats from $1"; }
    kill "$spid"
    # A receiver that does not exit within 30 s is reported, not waited for.
    for _ in $(seq 300); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$spid" 2>/dev/null; then
        cat "$log"
        ps
        cat "/proc/$spid/stack" "/proc/$spid/wchan" 2>/dev/null
        fail "vsic-mailq serve on $1 did not exit after SIGTERM"
    fi
    wait "$spid" 2>/dev/null || true
    echo "$stats" | grep -q "^messages=$4 " || fail "$1: smtp-source sent $4 messages, the receiver stored: $stats"
    # "user 0m 0.52s" and "sys 0m 0.20s" lines: smtp-source's CPU seconds.
    ccpu=$(awk '$1 == "user" || $1 == "sys" { m = $2; sub(/m$/, "", m); x = $3; sub(/s$/, "", x); t += m * 60 + x }
        END { printf "%.3f", t }' /tmp/mq-source.log)
    echo "$stats" | awk -v t0="$t0" -v t1="$t1" -v m="$4" -v s="$3" -v c0="$c0" -v c1="$c1" -v cc="$ccpu" \
        -v p="$((p1 - p0))" -v hz="$(getconf CLK_TCK 2>/dev/null || echo 100)" '{
        for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        secs = (t1 - t0) / 100; if (secs <= 0) secs = 0.01
        split(c0, a, " "); split(c1, b, " ")
        busy = (b[2] > a[2]) ? 100 * (b[1] - a[1]) / (b[2] - a[2]) : 0
        printf "%.0f %s %s %.0f %s %s %s %.0f %.0f %.0f\n", m / secs, f["p50_us"], f["p99_us"], s * secs * 1e6 / m,
            f["commits"], f["write_us_avg"], f["flush_us_avg"], p * 1e6 / hz / m, busy, cc * 1e6 / m
    }'
}

echo "# mailq: vsic-mailq on a 512 MiB VSA (VSIC 4, VFIO) vs Maildir on ext4 (/dev/$disk), smtp-source $mq_messages messages per 8-session run"
for size in $MQ_SIZES; do
    for sessions in 1 8; do
        m=$mq_messages
        [ "$sessions" -eq 1 ] && m=$((m / 4))
        [ "$size" -eq 131072 ] && m=$((m / 4))
        : >/tmp/mq-runs
        for _ in $(seq "$mq_repeat"); do
            for engine in $MQ_ENGINES; do
                echo "$engine $(mq_run $engine $size "$sessions" $m)" >>/tmp/mq-runs
            done
        done
        for engine in $MQ_ENGINES; do
            grep "^$engine " /tmp/mq-runs | sort -k2 -n | awk -v e=$engine -v sz=$size -v s="$sessions" -v m=$m -v r="$mq_repeat" '
                { line[NR] = $0 }
                END {
                    split(line[int((NR + 1) / 2)], f, " ")
                    printf "case=mailq engine=%s size=%s sessions=%s messages=%s msgs_per_s=%s p50_us=%s p99_us=%s client_us=%s commits=%s write_us=%s flush_us=%s server_cpu_us=%s busy_pct=%s client_cpu_us=%s runs=%s\n",
                        e, sz, s, m, f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], r
                }'
        done
    done
done
