#!/bin/sh
# Guest half of the NFS benchmark (ci/bench-nfs.sh, also run by
# `ci/bench.sh --apps`). In one guest, one run, the guest kernel's NFSv3
# client (loopback, TCP) drives vsic-nfsd with its storage
#   (1) on the VSA of VSIC 0 through vsic (VFIO), vsic-nfsd's
#       default hybrid completions                                engine=vsic
#   (1') the same on VSIC 3, waiting on interrupts (--interrupts) engine=vsic-interrupts
#   (2) on a file on ext4 on VSIC 1 (kernel virtio_blk)           engine=file
#   (3) on VSIC 2's block device itself (kernel virtio_blk)       engine=blockdev
# and the kernel's own nfsd exporting a directory of the ext4    engine=knfsd-ext4
# and, as the reference of a storage path that costs nothing, the same
# server on a file in tmpfs (fdatasync does nothing there)      engine=ram
# (small files only: what is left of a file's time there is the NFS
# client, TCP and the server, common to every engine).
# Cases: create + write 4 KiB + close of vsic.nfs_files (default 2,000)
# files on a `sync` mount (ops/s, p50, p99), and a sequential write of
# vsic.nfs_mib (default 256) MiB with fsync on a default (async) mount
# (MB/s). Prints one "case=nfs-..." line per case and engine (with the
# client's NFSv3 calls of the timed part, from vsic-nfs-load).
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

files=${VSIC_NFS_FILES:-2000}
mib=${VSIC_NFS_MIB:-256}
rounds=${VSIC_NFS_ROUNDS:-1}
modprobe nfsv3 || fail "modprobe nfsv3"
vsicctl vsa create --size 768M --cap /root/nfs.cap >/dev/null
vsicctl vsic attach --vsic 0 --cap /root/nfs.cap --slot 0 >/dev/null
vsicctl vsic bind --vsic 0 --vfio --user root >/dev/null
vsicctl vsa create --size 768M --cap /root/nfs-interrupts.cap >/dev/null
vsicctl vsic attach --vsic 3 --cap /root/nfs-interrupts.cap --slot 0 >/dev/null
vsicctl vsic bind --vsic 3 --vfio --user root >/dev/null
kernel_vsa_disk 1 1536 /root/fs.cap
disk=$KDISK
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/"$disk" || fail "mkfs.ext4"
mkdir -p /mnt/fs
mount -t ext4 /dev/"$disk" /mnt/fs || fail "mount ext4"
truncate -s 768M /mnt/fs/nfs.img
kernel_vsa_disk 2 768 /root/blk.cap
bdisk=$KDISK
mkdir -p /mnt/ram
mount -t tmpfs -o size=256M tmpfs /mnt/ram || fail "mount tmpfs"
truncate -s 192M /mnt/ram/nfs.img

start() { # ENGINE DEV PORT [OPTION...]
    engine=$1 dev=$2 port=$3
    shift 3
    vsic-nfsd --dev "$dev" --listen 127.0.0.1:"$port" --mkfs "$@" >/tmp/nfsd-"$engine".log 2>&1 &
    for _ in $(seq 600); do
        grep -q serving /tmp/nfsd-"$engine".log && return 0
        sleep 0.1
    done
    cat /tmp/nfsd-"$engine".log
    fail "vsic-nfsd ($engine) did not start"
}
start vsic vsic:0 20490
start vsic-interrupts vsic:3 20494 --interrupts
start file file:/mnt/fs/nfs.img 20491
start blockdev file:/dev/"$bdisk" 20493
start ram file:/mnt/ram/nfs.img 20495
echo "# guest: $(nproc) cpus, kernel $(uname -r), ext4 on /dev/$disk, block device /dev/$bdisk"

# (4) The kernel's own nfsd exporting a directory of the same ext4 on VSIC 1
# (engine=knfsd-ext4): rpcbind (the kernel's NFSv3 service registers with
# it), exportfs, rpc.mountd on its own port and rpc.nfsd on 2049, NFSv3
# over TCP only; the export is `sync`, as NFSv3 requires of a server.
knfsd_start() {
    command -v rpc.nfsd >/dev/null || { echo "no rpc.nfsd in the image"; return 1; }
    modprobe nfsd || { echo "modprobe nfsd failed"; return 1; }
    mount -t nfsd nfsd /proc/fs/nfsd || { echo "mount nfsd failed"; return 1; }
    : >/etc/exports
    : >/var/lib/nfs/etab
    : >/var/lib/nfs/rmtab
    rpcbind -w || { echo "rpcbind failed"; return 1; }
    mkdir -p /mnt/fs/kexport
    exportfs -o rw,sync,no_root_squash,insecure,no_subtree_check,fsid=1 127.0.0.1:/mnt/fs/kexport ||
        { echo "exportfs failed"; return 1; }
    rpc.mountd -p 20492 -N 4 --no-udp || { echo "rpc.mountd failed"; return 1; }
    rpc.nfsd -N 4 --no-udp -p 2049 4 || { echo "rpc.nfsd failed"; return 1; }
}
# The mount options of an engine: nfs_opts PORT MOUNTPORT.
nfs_opts() { echo "vers=3,proto=tcp,port=$1,mountport=$2,mountproto=tcp,nolock"; }
# ENGINE:SERVER:PORT:MOUNTPORT:EXPORT
engines="vsic:vsic-nfsd:20490:20490:/ vsic-interrupts:vsic-nfsd:20494:20494:/ file:vsic-nfsd:20491:20491:/ blockdev:vsic-nfsd:20493:20493:/ ram:vsic-nfsd:20495:20495:/"
if knfsd_start >/tmp/knfsd.log 2>&1; then
    engines="$engines knfsd-ext4:knfsd:2049:20492:/mnt/fs/kexport"
else
    echo "# kernel nfsd: not measured: $(tr '\n' ' ' </tmp/knfsd.log)"
fi

# Warm-up, untimed: every engine creates vsic.nfs_warmup (default 100)
# files first. The first run in a fresh guest is slower, whatever the
# engine: TCG translates the guest code (NFS client, TCP, the server) the
# first time it runs, and the binaries come into the page cache. Without
# it, whichever engine runs first in round 1 pays that.
warmup=${VSIC_NFS_WARMUP:-100}
if [ "$warmup" -gt 0 ]; then
    for e in $engines; do
        IFS=: read -r engine server port mport export <<EOF2
$e
EOF2
        mnt=/mnt/nfs-$engine
        mkdir -p "$mnt"
        mount -t nfs -o "sync,$(nfs_opts "$port" "$mport")" 127.0.0.1:"$export" "$mnt" ||
            fail "mount $engine (warm-up)"
        mkdir -p "$mnt/warm"
        r=$(vsic-nfs-load "$mnt/warm" --files "$warmup" --size 4096) || fail "warm-up on $engine: $r"
        umount "$mnt"
    done
    echo "# warm-up: $warmup files per engine, untimed"
fi

# Every round runs every engine once, in a rotated order, so that a burst
# of load on the host lands on one engine's run of one round, not on all
# of one engine's runs; ci/bench-nfs.sh reports the median of the rounds.
# Each round writes into its own directory (fresh files, fresh names).
round=1
while [ "$round" -le "$rounds" ]; do
    order=$engines
    i=1
    while [ "$i" -lt "$round" ]; do
        order="${order#* } ${order%% *}"
        i=$((i + 1))
    done
    for e in $order; do
        IFS=: read -r engine server port mport export <<EOF2
$e
EOF2
        opts=$(nfs_opts "$port" "$mport")
        mnt=/mnt/nfs-$engine
        mkdir -p "$mnt"
        mount -t nfs -o "sync,$opts" 127.0.0.1:"$export" "$mnt" || fail "mount $engine (sync)"
        mkdir -p "$mnt/r$round"
        r=$(vsic-nfs-load "$mnt/r$round" --files "$files" --size 4096) || fail "small files on $engine: $r"
        umount "$mnt"
        echo "case=nfs-small server=$server engine=$engine mount=sync round=$round $r"
        # The reference has no sequential case (its tmpfs is small).
        [ "$engine" = ram ] && continue
        mount -t nfs -o "$opts" 127.0.0.1:"$export" "$mnt" || fail "mount $engine"
        r=$(vsic-nfs-load "$mnt/r$round" --seq-mib "$mib") || fail "sequential write on $engine: $r"
        rm -f "$mnt/r$round/seq"
        umount "$mnt"
        echo "case=nfs-seq server=$server engine=$engine mount=async round=$round $r"
    done
    round=$((round + 1))
done
