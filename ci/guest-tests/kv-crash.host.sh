#!/usr/bin/env bash
# Host side of kv-crash. After boot 1 (post phase, vsicd still up):
#   boot 2: a new guest on the same backend runs put-seq; once the console
#           shows enough acknowledgements, QEMU is killed (SIGKILL to the
#           launcher's process group, which this script started);
#   boot 3: a new guest on the same backend checks that every key whose
#           "ack k<i>" reached the console is present and intact.
# launch.sh runs under setsid so that every process of boot 2 (QEMU
# included) is found by its session id and killed, and nothing else.
set -euo pipefail
[[ $1 == post ]] || exit 0

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
launch=$repo/qemu-configs/launch.sh
guest2=$repo/ci/guest-tests/kv-crash.guest2.sh
common=(--backend external --vsics "$VSIC_VSICS" --queues "$VSIC_QUEUES" --run "$guest2"
    --run-with "$repo/ci/guest-tests/lib.sh")

echo "=== boot 2: put-seq, then QEMU killed mid-stream"
mkdir -p boot2 boot3
ln -sfn "$VSIC_SOCK_DIR" boot2/sock
ln -sfn "$VSIC_SOCK_DIR" boot3/sock
setsid "$launch" --state-dir "$PWD/boot2" --timeout 300 --append "vsic.phase=put" "${common[@]}" \
    >boot2.out 2>&1 &
pid=$!
acks() { grep -a -c '^ack k[0-9]*$' boot2.out || true; }
for _ in $(seq 3000); do
    [[ $(acks) -ge 400 ]] && break
    kill -0 "$pid" 2>/dev/null || { cat boot2.out; echo "boot 2 ended before the kill"; exit 1; }
    sleep 0.1
done
[[ $(acks) -ge 400 ]] || { tail -n 20 boot2.out; echo "too few acknowledgements in boot 2"; exit 1; }
# SIGKILL to every process of the session setsid made (launch.sh, timeout,
# which puts QEMU in a process group of its own, QEMU, the log pipeline).
victims=$(ps -o pid= -s "$pid" || true)
# shellcheck disable=SC2086
kill -9 $victims 2>/dev/null || true
wait "$pid" 2>/dev/null || true
sleep 1
# Acknowledgements arrive in order: the count of complete lines is M.
acked=$(acks)
last=$(grep -a -o '^ack k[0-9]*$' boot2.out | tail -n1)
[[ $last == "ack k$((acked - 1))" ]] || { echo "acks out of order: $acked lines, last '$last'"; exit 1; }
echo "QEMU killed after $acked acknowledgements reached the console"

echo "=== boot 3: every acknowledged key is there"
"$launch" --state-dir "$PWD/boot3" --timeout 300 --append "vsic.phase=verify vsic.acked=$acked" "${common[@]}"
echo "kv-crash: the guest killed mid-stream lost no acknowledged key"
