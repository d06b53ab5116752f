#!/usr/bin/env bash
# Host side of mailq-crash. After boot 1 (post phase, vsicd still up):
#   boot 2: a new guest on the same backend serves the queue on the VSA and
#           streams messages to it with `vsic-mailq send`, which prints
#           "ack FROM ID" on the console after each 250; once enough have
#           arrived, QEMU is killed (SIGKILL to the launcher's session,
#           which this script started);
#   boot 3: a new guest on the same backend checks the queue against
#           every ack line that reached the console (boot 1's are in the
#           queue too and were checked then; they are checked again here
#           only if listed, as whole messages).
# The kill is host-lib.sh's kill_guest_after_acks.
set -euo pipefail
[[ $1 == post ]] || exit 0

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=ci/guest-tests/host-lib.sh
source "$repo/ci/guest-tests/host-lib.sh"
launch=$repo/qemu-configs/launch.sh
guest2=$repo/ci/guest-tests/mailq-crash.guest2.sh
common=(--backend external --vsics "$VSIC_VSICS" --queues "$VSIC_QUEUES" --run "$guest2"
    --run-with "$repo/ci/guest-tests/lib.sh")

echo "=== boot 2: send streams, then QEMU is killed mid-stream"
mkdir -p boot2 boot3
ln -sfn "$VSIC_SOCK_DIR" boot2/sock
ln -sfn "$VSIC_SOCK_DIR" boot3/sock
# Complete ack lines only: a line the kill cut short does not match.
ack_re='^ack [0-9a-f]{64}@m[0-9]+\.s[0-9]+\.boot2\.send\.example [0-9]+$'
kill_guest_after_acks boot2.out "$ack_re" 200 \
    "$launch" --state-dir "$PWD/boot2" --timeout 300 --append "vsic.phase=send" "${common[@]}"
grep -a -E "$ack_re" boot2.out >acks
echo "QEMU killed after $(wc -l <acks) acknowledgements reached the console"

echo "=== boot 3: every acknowledged message is there, whole, once"
"$launch" --state-dir "$PWD/boot3" --timeout 300 --append "vsic.phase=verify" "${common[@]}" \
    --run-with "$PWD/acks"
echo "mailq-crash: the guest killed mid-stream lost no acknowledged message"
