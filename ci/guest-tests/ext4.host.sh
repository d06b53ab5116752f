#!/usr/bin/env bash
# Host side of the ext4 test: a 64 MiB VSA attached to VSIC 0 slot 0.
set -euo pipefail
# shellcheck source=ci/guest-tests/host-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/host-lib.sh"
if [[ $1 == pre ]]; then
    ctl vsa create --size 64M --cap vsa.cap
    ctl vsic attach --vsic 0 --cap vsa.cap --slot 0
fi
