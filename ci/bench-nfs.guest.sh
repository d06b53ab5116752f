#!/bin/sh
# Guest half of the NFS benchmark (ci/bench-nfs.sh, also run by
# `ci/bench.sh --apps`). In one guest, one run, the guest kernel's NFSv3
# client (loopback, TCP) drives vsic-nfsd with its storage
#   (1) on the VSA of VSIC 0 through vsic (VFIO)                  engine=vsic
#   (2) on a file on ext4 on VSIC 1 (kernel virtio_blk)           engine=file
# Cases: create + write 4 KiB + close of vsic.nfs_files (default 2,000)
# files on a `sync` mount (ops/s, p50, p99), and a sequential write of
# vsic.nfs_mib (default 256) MiB with fsync on a default (async) mount
# (MB/s). Prints one "case=nfs-..." line per case and engine.
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

files=${VSIC_NFS_FILES:-2000}
mib=${VSIC_NFS_MIB:-256}
modprobe nfsv3 || fail "modprobe nfsv3"
vsicctl vsa create --size 768M --cap /root/nfs.cap >/dev/null
vsicctl vsic attach --vsic 0 --cap /root/nfs.cap --slot 0 >/dev/null
vsicctl vsic bind --vsic 0 --vfio --user root >/dev/null
vsicctl vsa create --size 1G --cap /root/fs.cap >/dev/null
out=$(vsicctl vsic bind --vsic 1 --kernel --json)
disk=$(bound_disk "$out")
[ -n "$disk" ] || fail "no disk in: $out"
vsicctl vsic attach --vsic 1 --cap /root/fs.cap --slot 0 >/dev/null
wait_size "$disk" $((1 << 21))
mkfs.ext4 -q -F /dev/"$disk" || fail "mkfs.ext4"
mkdir -p /mnt/fs
mount -t ext4 /dev/"$disk" /mnt/fs || fail "mount ext4"
truncate -s 768M /mnt/fs/nfs.img

start() { # ENGINE DEV PORT
    vsic-nfsd --dev "$2" --listen 127.0.0.1:"$3" --mkfs >/tmp/nfsd-"$1".log 2>&1 &
    for _ in $(seq 600); do
        grep -q serving /tmp/nfsd-"$1".log && return 0
        sleep 0.1
    done
    cat /tmp/nfsd-"$1".log
    fail "vsic-nfsd ($1) did not start"
}
start vsic vsic:0 20490
start file file:/mnt/fs/nfs.img 20491
echo "# guest: $(nproc) cpus, kernel $(uname -r), ext4 on /dev/$disk"

for e in vsic:20490 file:20491; do
    engine=${e%%:*}
    port=${e##*:}
    opts=vers=3,proto=tcp,port=$port,mountport=$port,mountproto=tcp,nolock
    mkdir -p /mnt/$engine
    mount -t nfs -o "sync,$opts" 127.0.0.1:/ /mnt/$engine || fail "mount $engine (sync)"
    r=$(vsic-nfs-load /mnt/$engine --files "$files" --size 4096) || fail "small files on $engine: $r"
    umount /mnt/$engine
    echo "case=nfs-small server=vsic-nfsd engine=$engine mount=sync $r"
    mount -t nfs -o "$opts" 127.0.0.1:/ /mnt/$engine || fail "mount $engine"
    r=$(vsic-nfs-load /mnt/$engine --seq-mib "$mib") || fail "sequential write on $engine: $r"
    umount /mnt/$engine
    echo "case=nfs-seq server=vsic-nfsd engine=$engine mount=async $r"
done
echo "# kernel nfsd: not measured (the image has no nfs-utils: rpc.nfsd, rpc.mountd, exportfs)"
