#!/usr/bin/env bash
# Host side of two-vm: "pre" boots guest B (two-vm.guestb.sh) in the
# background on the same vsicd, with only VSIC 2; "post" waits for it and
# fails the test unless it passed.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
case $1 in
pre)
    mkdir -p vmb
    (
        rc=0
        "$repo/qemu-configs/launch.sh" --backend external --sock-dir "$VSIC_SOCK_DIR" \
            --state-dir "$PWD/vmb" --vsics "$VSIC_VSICS" --queues "$VSIC_QUEUES" \
            --functions 2 --memory 512M --timeout 600 \
            --run "$repo/ci/guest-tests/two-vm.guestb.sh" \
            --run-with "$repo/ci/guest-tests/lib.sh" >vmb.log 2>&1 || rc=$?
        echo "$rc" >vmb.rc
    ) </dev/null >/dev/null 2>&1 &
    echo "guest B is booting (log: $PWD/vmb.log)"
    ;;
post)
    for _ in $(seq 600); do
        [[ -s vmb.rc ]] && break
        sleep 1
    done
    echo "--- guest B"
    sed 's/^/B| /' vmb.log
    [[ -s vmb.rc ]] || { echo "guest B did not finish"; exit 1; }
    rc=$(cat vmb.rc)
    [[ $rc -eq 0 ]] || { echo "guest B failed (status $rc)"; exit 1; }
    echo "guest B passed"
    ;;
esac
