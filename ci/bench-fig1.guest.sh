#!/bin/sh
# Guest side of `ci/bench.sh --guest` (the paper's Figure 1): run by
# qemu-configs/launch.sh --run, with ci/guest-tests/lib.sh as /vsic/lib.sh.
# Prints one `case=fig1 ...` line per case (vsic-fig1's output; kernel
# cases on the VSIC get dev_writes_per_op and dev_flushes_per_op from
# vsicd's per-VSIC statistics appended).
#
# Parameters (kernel command line vsic.fig1_NAME=VALUE, lists comma-separated):
#   fig1_part   writeback (default): kernel cases and vsic write + FLUSH;
#               writethrough: vsic single writes only (vsicd --cache
#               write-through)
#   fig1_n      operations per case (default 1000)
#   fig1_bytes  write sizes (default 1024,4096,16384)
#   fig1_fs     file systems (default ext2,ext4,btrfs,xfs)
#   fig1_media  brd (RAM disk) and/or vsic (VSIC 1 bound to virtio_blk)
#   fig1_syncs  fsync and/or fdatasync
#   fig1_modes  vsic completion modes (default interrupt,poll,hybrid)
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

list() { echo "$1" | tr ',' ' '; }
part=${VSIC_FIG1_PART:-writeback}
n=${VSIC_FIG1_N:-1000}
bytes_list=$(list "${VSIC_FIG1_BYTES:-1024,4096,16384}")
fs_list=$(list "${VSIC_FIG1_FS:-ext2,ext4,btrfs,xfs}")
media=$(list "${VSIC_FIG1_MEDIA:-brd,vsic}")
syncs=$(list "${VSIC_FIG1_SYNCS:-fsync,fdatasync}")
modes=$(list "${VSIC_FIG1_MODES:-interrupt,poll,hybrid}")
# Big enough for mkfs.xfs (at least 300 MiB) and N x 16 KiB appended.
FS_MB=512

# The user path: VSIC 0 on vfio-pci, a VSA attached after the bind (a VSA
# attached while the VSIC is stopped may show capacity 0).
vsicctl vsa create --size 64M --cap /root/user.cap >/dev/null
vsicctl vsic bind --vsic 0 --vfio --user root >/dev/null
vsicctl vsic attach --vsic 0 --cap /root/user.cap --slot 0 >/dev/null
user_fn=$(awk '$1 == 0 { print $2 }' /run/vsic/functions)
[ -n "$user_fn" ] || fail "no function for VSIC 0 in /run/vsic/functions"

run_vsic() { # MODE BYTES [--no-flush --cache write-through]
    local mode=$1 b=$2
    shift 2
    vsic-fig1 vsic "$user_fn" --mode "$mode" --bytes "$b" --n "$n" "$@" ||
        fail "vsic-fig1 vsic $mode $b $* failed"
}

if [ "$part" = writethrough ]; then
    for b in $bytes_list; do
        for mode in $modes; do run_vsic "$mode" "$b" --no-flush --cache write-through; done
    done
    exit 0
fi
[ "$part" = writeback ] || fail "fig1_part must be writeback or writethrough, not $part"

# The kernel path on the controller: VSIC 1 on virtio_blk.
vsicctl vsa create --size ${FS_MB}M --cap /root/kernel.cap >/dev/null
out=$(vsicctl vsic bind --vsic 1 --kernel --json)
vdisk=$(bound_disk "$out")
[ -n "$vdisk" ] || fail "no disk in: $out"
vsicctl vsic attach --vsic 1 --cap /root/kernel.cap --slot 0 >/dev/null
wait_size "$vdisk" $((FS_MB << 11)) >/dev/null
# The paper's RAM disk.
modprobe brd rd_nr=1 rd_size=$((FS_MB * 1024)) || fail "modprobe brd failed"
case " $fs_list " in *" btrfs "*) modprobe btrfs || fail "modprobe btrfs failed" ;; esac
case " $fs_list " in *" xfs "*) modprobe xfs || fail "modprobe xfs failed" ;; esac

mkfs_quiet() { # FS DEVICE
    case $1 in
    ext2) mkfs.ext2 -q -F "$2" ;;
    # No lazy init: ext4 would otherwise zero its inode tables and journal
    # in the background while the measured loop runs.
    ext4) mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$2" ;;
    btrfs) mkfs.btrfs -q -f "$2" >/dev/null ;;
    xfs) mkfs.xfs -q -f "$2" ;;
    *) fail "unknown file system $1" ;;
    esac
}

# VSIC 1's write and flush counters from vsicd ("WRITES FLUSHES").
vsic1_counters() {
    vsicctl stats --vsic 1 | awk '$1 == "1" && NF >= 11 { print $3, $4; exit }'
}

mkdir -p /mnt/fig1
for b in $bytes_list; do
    for fs in $fs_list; do
        for medium in $media; do
            case $medium in
            brd) dev=/dev/ram0 ;;
            vsic) dev=/dev/$vdisk ;;
            *) fail "unknown medium $medium" ;;
            esac
            for sync in $syncs; do
                mkfs_quiet "$fs" "$dev" || fail "mkfs $fs on $dev failed"
                mount -t "$fs" "$dev" /mnt/fig1 || fail "mount $fs on $dev failed"
                [ "$medium" = vsic ] && before=$(vsic1_counters)
                line=$(vsic-fig1 file /mnt/fig1/f --fs "$fs" --medium "$medium" --sync "$sync" \
                    --bytes "$b" --n "$n") || fail "vsic-fig1 file $fs $medium $sync $b failed"
                if [ "$medium" = vsic ]; then
                    after=$(vsic1_counters)
                    # Per measured operation, the 10 warm-up ones included.
                    line="$line $(echo "$before $after" | awk -v ops=$((n + 10)) \
                        '{ printf "dev_writes_per_op=%.2f dev_flushes_per_op=%.2f", ($3 - $1) / ops, ($4 - $2) / ops }')"
                fi
                echo "$line"
                umount /mnt/fig1
            done
        done
    done
    for mode in $modes; do run_vsic "$mode" "$b"; done
done
