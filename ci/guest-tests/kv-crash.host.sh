#!/usr/bin/env bash
# Host side of kv-crash. After boot 1 (post phase, vsicd still up):
#   boot 2: a new guest on the same backend runs put-seq; once the console
#           shows enough acknowledgements, QEMU is killed (SIGKILL to the
#           launcher's process group, which this script started);
#   boot 3: a new guest on the same backend checks that every key whose
#           "ack k<i>" reached the console is present and intact.
# The kill is host-lib.sh's kill_guest_after_acks.
set -euo pipefail
[[ $1 == post ]] || exit 0

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=ci/guest-tests/host-lib.sh
source "$repo/ci/guest-tests/host-lib.sh"
launch=$repo/qemu-configs/launch.sh
guest2=$repo/ci/guest-tests/kv-crash.guest2.sh
common=(--backend external --vsics "$VSIC_VSICS" --queues "$VSIC_QUEUES" --run "$guest2"
    --run-with "$repo/ci/guest-tests/lib.sh")

echo "=== boot 2: put-seq, then QEMU killed mid-stream"
mkdir -p boot2 boot3
ln -sfn "$VSIC_SOCK_DIR" boot2/sock
ln -sfn "$VSIC_SOCK_DIR" boot3/sock
acks() { grep -a -c '^ack k[0-9]*$' boot2.out || true; }
kill_guest_after_acks boot2.out '^ack k[0-9]*$' 400 \
    "$launch" --state-dir "$PWD/boot2" --timeout 300 --append "vsic.phase=put" "${common[@]}"
# Acknowledgements arrive in order: the count of complete lines is M.
acked=$(acks)
last=$(grep -a -o '^ack k[0-9]*$' boot2.out | tail -n1)
[[ $last == "ack k$((acked - 1))" ]] || { echo "acks out of order: $acked lines, last '$last'"; exit 1; }
echo "QEMU killed after $acked acknowledgements reached the console"

echo "=== boot 3: every acknowledged key is there"
"$launch" --state-dir "$PWD/boot3" --timeout 300 --append "vsic.phase=verify vsic.acked=$acked" "${common[@]}"
echo "kv-crash: the guest killed mid-stream lost no acknowledged key"
