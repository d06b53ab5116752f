# shellcheck shell=bash
# Helpers shared by the host hooks of ci/guest-tests (NAME.host.sh, bash;
# see run-guest-tests.sh for the environment they get). A hook reads it
# with:
#   source "$(dirname "${BASH_SOURCE[0]}")/host-lib.sh"

# ctl ARGS...: the host vsicctl on the backend's PF.
ctl() { "$VSICCTL" --vhost-user "$VSIC_PF_SOCK" "$@"; }

# vsic_pattern ARGS...: the host build of the vsic-pattern example, built
# first if it is missing.
vsic_pattern() {
    local tool=$VSIC_BIN_DIR/examples/vsic-pattern
    if [[ ! -x $tool ]]; then
        (cd "$(dirname "${BASH_SOURCE[0]}")/../.." && cargo build --release -q -p vsic --example vsic-pattern)
    fi
    "$tool" "$@"
}

# not_a_phase PHASE: the usage error of a hook given something other than
# pre or post.
not_a_phase() {
    echo "usage: $0 pre|post (not '$1')" >&2
    exit 2
}

# mgmt NAME [ARGUMENTS-JSON]: one command on vsicd's management socket
# (qemu-configs/vsic-mgmt); prints its return value as JSON.
mgmt() {
    "$(dirname "${BASH_SOURCE[0]}")/../../qemu-configs/vsic-mgmt" "$VSIC_SOCK_DIR/mgmt.sock" "$@"
}

# kill_guest_after_acks OUT ACK_RE MIN COMMAND...: runs COMMAND (a launch.sh
# run of a guest that prints one line per acknowledged write) under setsid,
# its output in OUT; once MIN complete lines matching the extended regex
# ACK_RE have reached OUT, SIGKILLs every process of that session at once
# (launch.sh, timeout, which puts QEMU in a process group of its own, QEMU,
# the log pipeline), so the guest dies mid-stream and nothing else does.
# Exits the hook with status 1 when the guest ends first or fewer than MIN
# lines arrive within 300 s.
kill_guest_after_acks() {
    local out=$1 ack_re=$2 min=$3 pid victims count=0
    shift 3
    setsid "$@" >"$out" 2>&1 &
    pid=$!
    for _ in $(seq 3000); do
        count=$(grep -a -c -E "$ack_re" "$out" || true)
        [[ $count -ge $min ]] && break
        kill -0 "$pid" 2>/dev/null || { cat "$out"; echo "the guest ended before the kill"; exit 1; }
        sleep 0.1
    done
    [[ $count -ge $min ]] || { tail -n 20 "$out"; echo "too few acknowledgements ($count of $min)"; exit 1; }
    victims=$(ps -o pid= -s "$pid" || true)
    # shellcheck disable=SC2086
    kill -9 $victims 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    sleep 1
}
