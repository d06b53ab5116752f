#!/usr/bin/env bash
# Host side of the fault campaign (see fault-campaign.guest.sh and the
# worked example in docs/workbench.md).
# pre:  a 64 MiB VSA on VSIC 0; through the management socket: every write
#       to 32 MiB..33 MiB fails, reads of the 4 KiB block at 40 MiB come back
#       with 8 bits flipped, the first write into 48 MiB..49 MiB is torn
#       after 8 sectors; a blktrace trace of VSIC 0 starts.
# post: each rule fired as the guest saw it; the statistics and the trace
#       (read by blkparse) count the same failures.
set -euo pipefail
# shellcheck source=ci/guest-tests/host-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/host-lib.sh"

json_get() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1:]: v=v[int(k)] if k.isdigit() else v[k]
print(v)' "$@"; }

case $1 in
pre)
    ctl vsa create --size 64M --cap vsa.cap
    ctl vsic attach --vsic 0 --cap vsa.cap --slot 0
    M=$((1 << 20))
    mgmt fault-add "{\"vsic\": 0, \"op\": \"write\", \"offset\": $((32 * M)), \"length\": $M, \"action\": \"error\"}"
    mgmt fault-add "{\"vsic\": 0, \"op\": \"read\", \"offset\": $((40 * M)), \"length\": 4096, \"action\": \"corrupt\", \"bits\": 8}"
    mgmt fault-add "{\"vsic\": 0, \"op\": \"write\", \"offset\": $((48 * M)), \"length\": $M, \"action\": \"torn\", \"sectors\": 8, \"count\": 1}"
    mgmt trace-start "{\"vsic\": 0, \"path\": \"$PWD/vsic0\", \"format\": \"blktrace\"}"
    mgmt fault-list
    ;;
post)
    rules=$(mgmt fault-list)
    echo "rules after the guest ran: $rules"
    errors=$(json_get 0 injected <<<"$rules")
    corrupted=$(json_get 1 injected <<<"$rules")
    torn=$(json_get 2 injected <<<"$rules")
    [[ $errors -ge 1 ]] || { echo "the write-error rule never fired"; exit 1; }
    [[ $corrupted -ge 1 ]] || { echo "the corrupt rule never fired"; exit 1; }
    [[ $torn -eq 1 ]] || { echo "the torn rule fired $torn times, not once"; exit 1; }
    injected=$(mgmt query-stats '{"vsic": 0}' | json_get vsics 0 faults_injected)
    [[ $injected -eq $((errors + corrupted + torn)) ]] ||
        { echo "statistics count $injected injections, the rules $((errors + corrupted + torn))"; exit 1; }
    mgmt trace-stop '{"vsic": 0}'
    # Every failed completion in the trace is one of the write errors or the
    # torn write; blkparse prints them with errno 5.
    failed=$(blkparse -i vsic0 -f '%a %d %e\n' | grep -c '^C W.* 5$' || true)
    [[ $failed -eq $((errors + torn)) ]] ||
        { echo "trace shows $failed failed writes, the rules injected $((errors + torn))"; exit 1; }
    messages=$(blkparse -i vsic0 | grep -c 'vsicd fault rule' || true)
    [[ $messages -eq $injected ]] ||
        { echo "trace has $messages fault messages for $injected injections"; exit 1; }
    echo "campaign: $errors write errors, $corrupted corrupted reads, $torn torn write; trace agrees"
    ;;
*) not_a_phase "$1" ;;
esac
