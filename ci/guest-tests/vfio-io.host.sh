#!/usr/bin/env bash
# Host side of the vfio-io test. pre: a fresh 64 MiB VSA attached to VSIC 1
# slot 0. post: after the guest powered off, check through VSIC 1's
# vhost-user socket that the VSA holds the patterns the guest wrote over
# VFIO (same vsic-pattern program, host build).
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
    ctl vsa create --size 64M --cap vsa.cap
    ctl vsic attach --vsic 1 --cap vsa.cap --slot 0
    ;;
post)
    dev=vhost-user:$VSIC_SOCK_DIR/vsic1.sock
    # The ranges and seeds vfio-io.guest.sh wrote.
    "$tool" "$dev" verify --offset 0 --len 8M --seed 11 --polling
    "$tool" "$dev" verify --offset 16M --len 8M --seed 22 --polling
    "$tool" "$dev" verify --offset 32M --len 4M --seed 33 --polling
    "$tool" "$dev" verify --offset 48M --len 4M --seed 44 --polling
    "$tool" "$dev" verify --offset 56M --len 4M --seed 55 --polling
    "$tool" "$dev" verify --offset 60M --len 4M --seed 66 --polling
    echo "host verified all six patterns through $dev"
    ;;
*)
    echo "usage: $0 pre|post" >&2
    exit 2
    ;;
esac
