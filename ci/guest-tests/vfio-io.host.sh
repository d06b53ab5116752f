#!/usr/bin/env bash
# Host side of the vfio-io test. pre: a fresh 64 MiB VSA attached to VSIC 1
# slot 0. post: after the guest powered off, check through VSIC 1's
# vhost-user socket that the VSA holds the patterns the guest wrote over
# VFIO (same vsic-pattern program, host build).
set -euo pipefail
# shellcheck source=ci/guest-tests/host-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/host-lib.sh"

case $1 in
pre)
    ctl vsa create --size 64M --cap vsa.cap
    ctl vsic attach --vsic 1 --cap vsa.cap --slot 0
    ;;
post)
    dev=vhost-user:$VSIC_SOCK_DIR/vsic1.sock
    # The ranges and seeds vfio-io.guest.sh wrote.
    vsic_pattern "$dev" verify --offset 0 --len 8M --seed 11 --polling
    vsic_pattern "$dev" verify --offset 16M --len 8M --seed 22 --polling
    vsic_pattern "$dev" verify --offset 32M --len 4M --seed 33 --polling
    vsic_pattern "$dev" verify --offset 48M --len 4M --seed 44 --polling
    vsic_pattern "$dev" verify --offset 56M --len 4M --seed 55 --polling
    vsic_pattern "$dev" verify --offset 60M --len 4M --seed 66 --polling
    echo "host verified all six patterns through $dev"
    ;;
*) not_a_phase "$1" ;;
esac
