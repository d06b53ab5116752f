#!/usr/bin/env bash
# Host side of the ext4 test: a 64 MiB VSA attached to VSIC 0 slot 0.
set -euo pipefail
if [[ $1 == pre ]]; then
    "$VSICCTL" --vhost-user "$VSIC_PF_SOCK" vsa create --size 64M --cap vsa.cap
    "$VSICCTL" --vhost-user "$VSIC_PF_SOCK" vsic attach --vsic 0 --cap vsa.cap --slot 0
fi
