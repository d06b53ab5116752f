#!/usr/bin/env bash
# Host side of cp-reboot. After boot 1 (post phase, the backend still up):
#   boot 2: the same vsicd keeps running; a new guest boots against it
#           (launch.sh --backend external on the same sockets);
#   boot 3: a new vsicd process on the drives as they are now (copies, so
#           the first backend, which this script did not start, is left
#           alone), and a new guest against it.
# Both boots run cp-reboot.guest2.sh.
set -euo pipefail
[[ $1 == post ]] || exit 0

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
launch=$repo/qemu-configs/launch.sh
guest2=$repo/ci/guest-tests/cp-reboot.guest2.sh
common=(--vsics "$VSIC_VSICS" --queues "$VSIC_QUEUES" --timeout 180 --run "$guest2"
    --run-with "$repo/ci/guest-tests/lib.sh")

echo "=== boot 2: guest rebooted, backend kept running"
mkdir -p boot2
ln -sfn "$VSIC_SOCK_DIR" boot2/sock
"$launch" --backend external --state-dir "$PWD/boot2" --append vsic.boot=2 "${common[@]}"

echo "=== boot 3: backend restarted on the drives"
mkdir -p boot3/sock
drives=()
for d in "$VSIC_STATE_DIR"/drive*.img; do
    cp --sparse=always "$d" boot3/
    drives+=(--drive "$PWD/boot3/$(basename "$d"),size=$(stat -c %s "$d")")
done
RUST_LOG=${RUST_LOG:-info} "$VSIC_BIN_DIR/vsicd" --socket-dir "$PWD/boot3/sock" "${drives[@]}" \
    --vsics "$VSIC_VSICS" --queues "$VSIC_QUEUES" >boot3/vsicd.log 2>&1 &
vsicd=$!
stop_vsicd() {
    kill -TERM "$vsicd" 2>/dev/null || true
    wait "$vsicd" 2>/dev/null || true
}
trap stop_vsicd EXIT
for _ in $(seq 150); do
    [[ -S boot3/sock/pf.sock && -S boot3/sock/vsic$((VSIC_VSICS - 1)).sock ]] && break
    kill -0 "$vsicd" 2>/dev/null || { cat boot3/vsicd.log; exit 1; }
    sleep 0.1
done
"$launch" --backend external --state-dir "$PWD/boot3" --append vsic.boot=3 "${common[@]}"
echo "cp-reboot: boots 2 and 3 passed"
