#!/usr/bin/env bash
# Runs the guest integration tests in ci/guest-tests/.
#
# Usage: ci/run-guest-tests.sh [--backend vsicd|qsd] [--timeout SECS] [NAME...]
#
# A test NAME is a pair of files in ci/guest-tests/:
#   NAME.guest.sh  runs inside the guest as root (busybox sh); exit 0 = pass.
#                  A line "# launch: OPTIONS" adds launcher options for this
#                  test (e.g. "# launch: --vsics 2 --queues 4"). The shared
#                  helpers of ci/guest-tests/lib.sh are in the guest as
#                  /vsic/lib.sh.
#   NAME.host.sh   optional; runs on the host as "NAME.host.sh pre" once the
#                  backend is up and before the guest boots, and as
#                  "NAME.host.sh post" after the guest powered off, with the
#                  backend still up. Environment: VSIC_STATE_DIR, VSIC_SOCK_DIR,
#                  VSIC_PF_SOCK, VSICCTL (host vsicctl), VSIC_BIN_DIR (host
#                  release binaries), VSIC_GUEST_BIN_DIR, VSIC_VSICS,
#                  VSIC_QUEUES, VSIC_PHASE. Its working directory is the
#                  test's state directory, shared by both phases. Shared
#                  helpers: ci/guest-tests/host-lib.sh.
# Every test gets a fresh state directory (fresh drives) under
# $VSIC_TEST_STATE (default: a new /var/tmp/vsic-guest-tests.XXXXXX, removed
# when every test passed). NAME arguments select
# tests. --backend qsd runs the tests without host side against
# qemu-storage-daemon stand-ins (skipping the others). The last line of
# output is "N passed, N failed".
set -uo pipefail
# The whole body is one brace group, read before it runs, so editing this
# file while it runs cannot change what the running instance does.
{

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTS_DIR=$REPO/ci/guest-tests
backend=${VSIC_TEST_BACKEND:-vsicd}
timeout=180
selected=()

while [[ $# -gt 0 ]]; do
    case $1 in
    --backend) backend=${2:?--backend needs a value}; shift ;;
    --timeout) timeout=${2:?--timeout needs a value}; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run-guest-tests: unknown option $1" >&2; exit 2 ;;
    *) selected+=("$1") ;;
    esac
    shift
done

tests=()
if [[ ${#selected[@]} -gt 0 ]]; then
    tests=("${selected[@]}")
else
    for f in "$TESTS_DIR"/*.guest.sh; do
        [[ -e $f ]] && tests+=("$(basename "$f" .guest.sh)")
    done
fi

# A state root of its own per run: runs side by side never share drives or
# sockets.
if [[ -n ${VSIC_TEST_STATE:-} ]]; then
    STATE_ROOT=$VSIC_TEST_STATE
    mkdir -p "$STATE_ROOT"
else
    STATE_ROOT=$(mktemp -d /var/tmp/vsic-guest-tests.XXXXXX)
fi

passed=0
failed=0
failed_names=()
retried_names=()

for name in "${tests[@]}"; do
    guest=$TESTS_DIR/$name.guest.sh
    host=$TESTS_DIR/$name.host.sh
    state=$STATE_ROOT/$name
    log=$STATE_ROOT/$name.log
    if [[ ! -r $guest ]]; then
        echo "FAIL $name: no $guest"
        failed=$((failed + 1))
        failed_names+=("$name")
        continue
    fi
    if [[ $backend == qsd && -e $host ]]; then
        # The stand-in has no admin function for the host side to drive.
        echo "SKIP $name (its host side needs vsicd)"
        continue
    fi
    # Per-test launcher options from the "# launch:" line.
    read -r -a extra <<<"$(sed -n 's/^# launch:[[:space:]]*//p' "$guest" | head -n1)"

    # A guest that hangs or dies without a status (TCG on a loaded 2-core
    # machine occasionally panics at boot or stalls) gets one more boot,
    # said loudly; a test that reports a failure does not.
    for attempt in 1 2; do
        rm -rf "$state"
        mkdir -p "$state"
        args=(--state-dir "$state" --timeout "$timeout" --backend "$backend"
            --append "vsic.backend=$backend" --run "$guest" --run-with "$TESTS_DIR/lib.sh"
            ${extra[@]+"${extra[@]}"})
        if [[ -e $host ]]; then
            args+=(--host-hook "cd $(printf '%q' "$state") && bash $(printf '%q' "$host")")
        fi

        if [[ $attempt -eq 1 ]]; then echo "RUN  $name"; else echo "RUN  $name (second boot)"; fi
        start=$(date +%s.%N)
        "$REPO/qemu-configs/launch.sh" "${args[@]}" >"$log" 2>&1
        rc=$?
        elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
        case $rc in
        0) why="" ;;
        124) why="guest timed out" ;;
        125) why="guest stopped without a status" ;;
        126) why="backend did not start" ;;
        *) why="exit status $rc" ;;
        esac
        if [[ $attempt -eq 1 && ($rc -eq 124 || $rc -eq 125) ]]; then
            echo "RETRY $name (${elapsed} s): $why; first attempt's log kept as $log.attempt1"
            cp "$log" "$log.attempt1"
            retried_names+=("$name")
            continue
        fi
        break
    done
    if [[ $rc -eq 0 ]]; then
        echo "PASS $name (${elapsed} s)"
        passed=$((passed + 1))
    else
        echo "FAIL $name (${elapsed} s): $why; output follows"
        sed 's/^/    | /' "$log"
        failed=$((failed + 1))
        failed_names+=("$name")
    fi
done

if [[ ${#retried_names[@]} -gt 0 ]]; then
    echo "WARNING: guests hung or died and were booted again: ${retried_names[*]} (first logs: $STATE_ROOT/NAME.log.attempt1)"
fi
if [[ $failed -gt 0 ]]; then
    echo "failed guest tests: ${failed_names[*]} (state and logs kept in $STATE_ROOT)"
elif [[ -z ${VSIC_TEST_STATE:-} && ${#retried_names[@]} -eq 0 ]]; then
    rm -rf "$STATE_ROOT"
fi
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
exit
}
