#!/usr/bin/env bash
# Host side of the data test (see data.guest.sh).
# pre:  64 MiB VSAs on VSIC 0 and VSIC 1; vsic-pattern fills 4 MiB at 4 MiB
#       of VSIC 1's VSA (seed 7) over vhost-user.
# post: after the guest powered off, vsic-pattern checks that VSIC 0's VSA
#       holds the same pattern at 4 MiB (copied there by the guest with dd),
#       and that a range the guest never wrote does not.
set -euo pipefail
# shellcheck source=ci/guest-tests/host-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/host-lib.sh"

case $1 in
pre)
    ctl vsa create --size 64M --cap dst.cap
    ctl vsa create --size 64M --cap src.cap
    ctl vsic attach --vsic 0 --cap dst.cap --slot 0
    ctl vsic attach --vsic 1 --cap src.cap --slot 0
    vsic_pattern "vhost-user:$VSIC_SOCK_DIR/vsic1.sock" write --offset 4M --len 4M --seed 7 --polling
    ;;
post)
    dst=vhost-user:$VSIC_SOCK_DIR/vsic0.sock
    vsic_pattern "$dst" verify --offset 4M --len 4M --seed 7 --polling
    # The check can fail: the guest never wrote 12 MiB..13 MiB.
    if vsic_pattern "$dst" verify --offset 12M --len 1M --seed 7 --polling >/dev/null 2>&1; then
        echo "vsic-pattern verified a range the guest never wrote"
        exit 1
    fi
    echo "host verified the guest's copy through $dst"
    ;;
*) not_a_phase "$1" ;;
esac
