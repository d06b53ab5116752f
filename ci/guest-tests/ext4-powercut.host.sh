#!/usr/bin/env bash
# Host side of ext4-powercut. pre: a 128 MiB VSA in slot 0 of VSIC 0.
# post (vsicd still up, ext4 made by boot 1): $VSIC_POWERCUT_ROUNDS
# (default 3) rounds, each a new guest on the same backend
# (ext4-powercut.guest2.sh) that checks the state the previous cut left and
# runs a write-and-fsync workload until launch.sh --power-cut-after cuts
# the power and kills QEMU at a random instant; a last boot checks the
# state after the last cut. Prints one line per round and a summary
# ("campaign: ...").
set -euo pipefail
# shellcheck source=ci/guest-tests/host-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/host-lib.sh"
case $1 in
pre)
    ctl vsa create --size 128M --cap vsa.cap
    ctl vsic attach --vsic 0 --cap vsa.cap --slot 0
    exit 0
    ;;
post) ;;
*) not_a_phase "$1" ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
launch=$repo/qemu-configs/launch.sh
rounds=${VSIC_POWERCUT_ROUNDS:-3}
window=${VSIC_POWERCUT_WINDOW:-random:0.5-6}
common=(--backend external --vsics "$VSIC_VSICS" --queues "$VSIC_QUEUES"
    --run "$repo/ci/guest-tests/ext4-powercut.guest2.sh" --run-with "$repo/ci/guest-tests/lib.sh")

# acks FILE: the complete "fsynced rR fN" lines of a console log, in order.
acks() {
    local log=$1
    # A last line without its newline may be cut short: not counted.
    if [[ -n $(tail -c1 "$log") ]]; then sed '$d' "$log"; else cat "$log"; fi |
        grep -a -E '^fsynced r[0-9]+ f[0-9]+$' || true
}

# boot NAME ARGS...: one guest on the running backend; a guest that died
# before doing anything (no VERIFIED line: a TCG boot failure) gets one
# more boot, said loudly. Sets $rc.
boot() {
    local name=$1 attempt
    shift
    for attempt in 1 2; do
        rm -rf "$name"
        mkdir -p "$name"
        ln -sfn "$VSIC_SOCK_DIR" "$name/sock"
        set +e
        "$launch" --state-dir "$PWD/$name" --timeout 300 "$@" "${common[@]}" >"$name.out" 2>&1
        rc=$?
        set -e
        if [[ $rc -ne 0 && $attempt -eq 1 ]] && ! grep -a -q '^VERIFIED' "$name/console.log" 2>/dev/null &&
            ! grep -a -q '^FAIL' "$name/console.log" 2>/dev/null; then
            echo "RETRY $name: the guest died before checking anything (status $rc)"
            cp "$name.out" "$name.out.attempt1"
            continue
        fi
        return 0
    done
}

start=$SECONDS
acked=
files=0
for ((r = 1; r <= rounds; r++)); do
    boot "round$r" --append "vsic.round=$r vsic.acked=$acked" \
        --power-cut-after "$window" --power-cut-arm "POWERCUT-ARM round $r"
    if [[ $rc -ne 0 ]]; then
        cat "round$r.out"
        echo "round $r failed (launch status $rc)"
        exit 1
    fi
    mapfile -t lines < <(acks "round$r/console.log")
    m=${#lines[@]}
    if [[ $m -gt 0 && ${lines[m - 1]} != "fsynced r$r f$((m - 1))" ]]; then
        echo "round $r: acknowledgements out of order ($m lines, last '${lines[m - 1]}')"
        exit 1
    fi
    checked=$(grep -a -o '^VERIFIED.*' "round$r/console.log" || true)
    echo "round $r: ${checked#VERIFIED } before; power cut $(sed -n 's/.*power cut \([0-9.]*\) s after.*/\1/p' "round$r.out" | head -n1) s into the workload, after $m fsync'd files; cut: $(cat "round$r/power-cut.json")"
    acked=${acked:+$acked,}$r:$m
    files=$((files + m))
done
boot final --append "vsic.round=verify vsic.acked=$acked"
if [[ $rc -ne 0 ]]; then
    cat final.out
    echo "the check after the last cut failed (launch status $rc)"
    exit 1
fi
echo "final: $(grep -a -o '^VERIFIED.*' final/console.log | sed 's/^VERIFIED //')"
echo "campaign: $rounds power cuts, $rounds crash states checked (e2fsck -fn clean, $files fsync'd files intact), $((rounds + 1)) boots after boot 1, $((SECONDS - start)) s"
