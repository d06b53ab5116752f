#!/usr/bin/env bash
# Host side of the model test (see model.guest.sh); vsicd runs with the
# drive timing model on (the "# launch:" line of model.guest.sh).
# pre:  64 MiB VSAs on VSIC 0 (the guest's kernel disk) and VSIC 1 (the
#       guest's vsic library, over VFIO).
# post: after the guest powered off, vsic-pattern checks through both
#       VSICs' vhost-user sockets, the model still on, the patterns the
#       guest wrote.
set -euo pipefail
# shellcheck source=ci/guest-tests/host-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/host-lib.sh"

case $1 in
pre)
    ctl vsa create --size 64M --cap kernel.cap
    ctl vsa create --size 64M --cap lib.cap
    ctl vsic attach --vsic 0 --cap kernel.cap --slot 0
    ctl vsic attach --vsic 1 --cap lib.cap --slot 0
    ;;
post)
    # Written by the library over VFIO.
    vsic_pattern "vhost-user:$VSIC_SOCK_DIR/vsic1.sock" verify --offset 0 --len 8M --seed 41 --depth 32 --chunk 64K
    vsic_pattern "vhost-user:$VSIC_SOCK_DIR/vsic1.sock" verify --offset 16M --len 4M --seed 42 --polling
    # The check can fail: nothing was written at 32 MiB.
    if vsic_pattern "vhost-user:$VSIC_SOCK_DIR/vsic1.sock" verify --offset 32M --len 1M --seed 41 --polling >/dev/null 2>&1; then
        echo "vsic-pattern verified a range the guest never wrote"
        exit 1
    fi
    echo "host verified the library's patterns with the model on"
    ;;
*) not_a_phase "$1" ;;
esac
