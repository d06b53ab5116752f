#!/usr/bin/env bash
# Host side of dma-restart: restarts vsicd under the running guest when the
# guest asks for it (a line VSIC-RESTART-BACKEND on its console), with the
# same arguments, on the same drives and sockets; QEMU reconnects.
#   pre:  starts the watcher that does the restart (in the background).
#   post: stops the restarted vsicd and checks that the restart happened.
set -euo pipefail
# shellcheck source=ci/guest-tests/host-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/host-lib.sh"

# backend_pid: the pid of the vsicd serving $VSIC_SOCK_DIR (this test's own).
backend_pid() {
    local p cmd
    for p in /proc/[0-9]*; do
        cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
        if [[ $cmd == *vsicd\ --socket-dir\ "$VSIC_SOCK_DIR"\ * ]]; then
            echo "${p#/proc/}"
            return
        fi
    done
}

case $1 in
pre)
    (
        for _ in $(seq 2400); do
            grep -qa VSIC-RESTART-BACKEND console.log 2>/dev/null && break
            sleep 0.1
        done
        grep -qa VSIC-RESTART-BACKEND console.log 2>/dev/null || exit 0
        pid=$(backend_pid)
        [[ -n $pid ]] || { echo "no vsicd serves $VSIC_SOCK_DIR"; exit 1; }
        readarray -d '' args <"/proc/$pid/cmdline"
        kill -TERM "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        RUST_LOG=info setsid "${args[@]}" >vsicd-restarted.log 2>&1 &
        echo $! >vsicd-restarted.pid
        echo "vsicd $pid stopped; restarted as $(cat vsicd-restarted.pid)"
    ) >watcher.log 2>&1 &
    echo $! >watcher.pid
    ;;
post)
    kill "$(cat watcher.pid)" 2>/dev/null || true
    cat watcher.log
    [[ -s vsicd-restarted.pid ]] || { echo "vsicd was never restarted"; exit 1; }
    pid=$(cat vsicd-restarted.pid)
    # After the guest: the new vsicd still has VSIC 0 enforced (no frontend
    # left since it started? QEMU is gone now, so it may be open): only
    # check that it ran and stop it.
    kill -0 "$pid" || { tail -20 vsicd-restarted.log; exit 1; }
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    grep -q "frontend connected" vsicd-restarted.log || { echo "QEMU never reconnected"; exit 1; }
    echo "vsicd restarted under the guest and QEMU reconnected"
    ;;
*) not_a_phase "$1" ;;
esac
