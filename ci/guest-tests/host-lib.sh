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
