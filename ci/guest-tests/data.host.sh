#!/usr/bin/env bash
# Host side of the data test (see data.guest.sh).
# pre:  64 MiB VSAs on VSIC 0 and VSIC 1; vsic-pattern fills 4 MiB at 4 MiB
#       of VSIC 1's VSA (seed 7) over vhost-user.
# post: after the guest powered off, vsic-pattern checks that VSIC 0's VSA
#       holds the same pattern at 4 MiB (copied there by the guest with dd),
#       and that a range the guest never wrote does not.
set -euo pipefail
phase=$1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ctl() { "$VSICCTL" --vhost-user "$VSIC_PF_SOCK" "$@"; }
tool=$VSIC_BIN_DIR/examples/vsic-pattern

case $phase in
pre)
    if [[ ! -x $tool ]]; then
        (cd "$REPO" && cargo build --release -q -p vsic --example vsic-pattern)
    fi
    ctl vsa create --size 64M --cap dst.cap
    ctl vsa create --size 64M --cap src.cap
    ctl vsic attach --vsic 0 --cap dst.cap --slot 0
    ctl vsic attach --vsic 1 --cap src.cap --slot 0
    "$tool" "vhost-user:$VSIC_SOCK_DIR/vsic1.sock" write --offset 4M --len 4M --seed 7 --polling
    ;;
post)
    dst=vhost-user:$VSIC_SOCK_DIR/vsic0.sock
    "$tool" "$dst" verify --offset 4M --len 4M --seed 7 --polling
    # The check can fail: the guest never wrote 12 MiB..13 MiB.
    if "$tool" "$dst" verify --offset 12M --len 1M --seed 7 --polling >/dev/null 2>&1; then
        echo "vsic-pattern verified a range the guest never wrote"
        exit 1
    fi
    echo "host verified the guest's copy through $dst"
    ;;
*)
    echo "usage: $0 pre|post" >&2
    exit 2
    ;;
esac
