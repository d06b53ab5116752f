#!/usr/bin/env bash
# Host side of the data test. pre: create a 64 MiB VSA and attach it to
# VSIC 0 slot 0. post: after the guest powered off, read the guest's patterns
# back through the vsic library's vsic-io example over VSIC 0's vhost-user
# socket.
set -euo pipefail
phase=$1
pattern() { yes "vsic data pattern $1 0123456789abcdefghijklmnopqrstuvwxyz" | head -c "$2"; }
ctl() { "$VSICCTL" --vhost-user "$VSIC_PF_SOCK" "$@"; }

case $phase in
pre)
    ctl vsa create --size 64M --cap vsa.cap
    ctl vsic attach --vsic 0 --cap vsa.cap --slot 0
    ctl list
    ;;
post)
    # Needs a read-only mode of the vsic-io example that stores what it reads:
    #   vsic-io SPEC --offset BYTES --len BYTES --dump FILE
    io=$VSIC_BIN_DIR/examples/vsic-io
    [[ -x $io ]] || { echo "no $io: cannot read the data back on the host"; exit 1; }
    if ! "$io" --help 2>&1 | grep -q -- '--dump'; then
        echo "vsic-io has no --dump (read-only) mode: cannot read the data back on the host"
        exit 1
    fi
    dev=vhost-user:$VSIC_SOCK_DIR/vsic0.sock
    size=$((64 << 20))
    pattern A 1048576 >a.expected
    pattern B 4096 >b.expected
    "$io" "$dev" --offset $((1 << 20)) --len 1048576 --dump a.read
    "$io" "$dev" --offset $((size - 4096)) --len 4096 --dump b.read
    cmp a.read a.expected
    cmp b.read b.expected
    echo "host read back both patterns through $dev"
    ;;
*)
    echo "usage: $0 pre|post" >&2
    exit 2
    ;;
esac
