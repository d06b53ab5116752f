#!/usr/bin/env bash
# The test entry point: host dependencies, builds, unit and host tests,
# then the guest integration tests under QEMU.
#
# Usage: ci/test.sh
# The last line of output is exactly "N passed, N failed", counting every
# cargo test (from cargo's "test result:" lines), every guest test, the
# formatting and clippy checks, and each build step that failed; the exit
# status is non-zero on any failure.
set -uo pipefail
# The whole body is one brace group, read before it runs, so editing this
# file while it runs cannot change what the running instance does.
{

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

passed=0
failed=0
failures=()
log_dir=$(mktemp -d "${TMPDIR:-/tmp}/vsic-ci.XXXXXX")
if [[ $(id -u) -ne 0 ]]; then
    SUDO=sudo
else
    SUDO=
fi

# The block-device tests (named block_device) run on a loop device over a
# file in $log_dir, named to them in $VSICD_TEST_BLOCK_DEVICE; cargo test
# runs with CI=true, which makes them fail when it is missing.
LOOP_FILE_NAME=loop-drive.img
loop_dev=

# Detaches loop devices a killed earlier run left behind: backed by our
# file name in a vsic-ci directory that no longer exists.
detach_stale_loop_devices() {
    local name back
    while read -r name back; do
        back=${back% (deleted)}
        if [[ $back == */vsic-ci.*/$LOOP_FILE_NAME && ! -e $back ]]; then
            echo "detaching $name, left by an earlier run ($back)"
            $SUDO losetup -d "$name" || true
        fi
    done < <(losetup --noheadings --output NAME,BACK-FILE --list 2>/dev/null)
}

setup_loop_device() {
    detach_stale_loop_devices
    truncate -s 256M "$log_dir/$LOOP_FILE_NAME" || return 1
    loop_dev=$($SUDO losetup --find --show "$log_dir/$LOOP_FILE_NAME") || return 1
    if [[ ! -w $loop_dev ]]; then
        $SUDO chown "$(id -u)" "$loop_dev" || return 1
    fi
    export VSICD_TEST_BLOCK_DEVICE=$loop_dev
    echo "block-device tests run on $loop_dev"
}

detach_loop_device() {
    if [[ -n $loop_dev ]]; then
        $SUDO losetup -d "$loop_dev" || echo "cannot detach $loop_dev"
        loop_dev=
    fi
}

cleanup() {
    detach_loop_device
    rm -rf "$log_dir"
}
trap cleanup EXIT
# Interrupted runs clean up too.
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1f", e - s }'; }
banner() { printf '\n==> %s\n' "$*"; }

# step NAME COMMAND...: runs a build step; a failure counts as one failed test.
step() {
    local name=$1 start rc
    shift
    banner "$name"
    start=$(now)
    "$@"
    rc=$?
    if [[ $rc -eq 0 ]]; then
        echo "--- $name: ok ($(since "$start") s)"
    else
        echo "--- $name: FAILED with status $rc ($(since "$start") s)"
        failed=$((failed + 1))
        failures+=("$name")
    fi
    return $rc
}

total_start=$(now)

step "host dependencies (ci/install-deps.sh)" bash ci/install-deps.sh
# check NAME COMMAND...: a step that counts as one test, passed or failed.
check() {
    if step "$@"; then passed=$((passed + 1)); fi
}
check "cargo fmt --check" cargo fmt --all -- --check
check "cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
step "cargo build --workspace" cargo build --workspace
# Examples too: host-side checks of the guest tests run them.
step "cargo build --workspace --release" cargo build --workspace --release --bins --examples
release_ok=$?

# The power cut's negative control (issue 14): applications against the
# release vsicd with a volatile cache.
if [[ $release_ok -eq 0 ]]; then
    check "power-cut negative control (ci/power-cut-control.sh)" bash ci/power-cut-control.sh
else
    check "power-cut negative control (no release build)" false
fi

step "loop device for the block-device tests" setup_loop_device

# cargo test: add up its "test result:" lines.
banner "cargo test --workspace"
start=$(now)
# --no-fail-fast: every test binary runs and is counted even after a failure;
# the timeout keeps a hung test from hanging CI.
# CI=true: tests that need a resource CI provides (the loop device) fail
# rather than skip when it is missing.
CI=true timeout -k 10 "${VSIC_CARGO_TEST_TIMEOUT:-1800}" cargo test --workspace --no-fail-fast 2>&1 |
    tee "$log_dir/cargo-test.log"
test_rc=${PIPESTATUS[0]}
detach_loop_device
[[ $test_rc -eq 124 ]] && echo "cargo test timed out after ${VSIC_CARGO_TEST_TIMEOUT:-1800} s"
read -r t_pass t_fail < <(awk '
    /^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i + 1) ~ /^passed/) p += $i
            if ($(i + 1) ~ /^failed/) f += $i
        }
    }
    END { print p + 0, f + 0 }
' "$log_dir/cargo-test.log")
passed=$((passed + t_pass))
failed=$((failed + t_fail))
if [[ $test_rc -ne 0 && $t_fail -eq 0 ]]; then
    # It stopped before reporting (a compile error, a crashed test binary).
    failed=$((failed + 1))
    failures+=("cargo test (status $test_rc)")
elif [[ $t_fail -gt 0 ]]; then
    failures+=("cargo test ($t_fail)")
fi
echo "--- cargo test: $t_pass passed, $t_fail failed, status $test_rc ($(since "$start") s)"

# Guest tests need the release binaries and the image.
guest_tests=(ci/guest-tests/*.guest.sh)
[[ -e ${guest_tests[0]} ]] || guest_tests=()
if [[ $release_ok -eq 0 ]] && step "guest image (images/build.sh)" bash images/build.sh; then
    banner "guest tests (ci/run-guest-tests.sh)"
    start=$(now)
    bash ci/run-guest-tests.sh 2>&1 | tee "$log_dir/guest.log"
    read -r g_pass g_fail < <(tail -n1 "$log_dir/guest.log" |
        sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p')
    if [[ -z ${g_pass:-} ]]; then
        # No summary line: count every guest test as failed.
        g_pass=0
        g_fail=${#guest_tests[@]}
    fi
    passed=$((passed + g_pass))
    failed=$((failed + g_fail))
    [[ $g_fail -gt 0 ]] && failures+=("guest tests ($g_fail)")
    echo "--- guest tests: $g_pass passed, $g_fail failed ($(since "$start") s)"
else
    echo "--- guest tests skipped (no release build or image): ${#guest_tests[@]} counted as failed"
    failed=$((failed + ${#guest_tests[@]}))
    [[ ${#guest_tests[@]} -gt 0 ]] && failures+=("guest tests (not run)")
fi

banner "summary ($(since "$total_start") s)"
if [[ ${#failures[@]} -gt 0 ]]; then
    printf 'failed: %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
exit
}
