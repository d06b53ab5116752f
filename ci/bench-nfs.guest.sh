#!/bin/sh
# Guest half of the NFS benchmark (ci/bench-nfs.sh, also run by
# `ci/bench.sh --apps`). In one guest, one run, the guest kernel's NFSv3
# client (loopback, TCP) drives vsic-nfsd with its storage
#   (1) on the VSA of VSIC 0 through vsic (VFIO)                  engine=vsic
#   (2) on a file on ext4 on VSIC 1 (kernel virtio_blk)           engine=file
# and the kernel's own nfsd exporting a directory of that ext4   engine=knfsd-ext4
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

# (3) The kernel's own nfsd exporting a directory of the same ext4 on VSIC 1
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
if knfsd_start >/tmp/knfsd.log 2>&1; then
    opts=vers=3,proto=tcp,port=2049,mountport=20492,mountproto=tcp,nolock
    mkdir -p /mnt/knfsd
    mount -t nfs -o "sync,$opts" 127.0.0.1:/mnt/fs/kexport /mnt/knfsd || fail "mount knfsd (sync)"
    r=$(vsic-nfs-load /mnt/knfsd --files "$files" --size 4096) || fail "small files on knfsd: $r"
    umount /mnt/knfsd
    echo "case=nfs-small server=knfsd engine=knfsd-ext4 mount=sync $r"
    mount -t nfs -o "$opts" 127.0.0.1:/mnt/fs/kexport /mnt/knfsd || fail "mount knfsd"
    r=$(vsic-nfs-load /mnt/knfsd --seq-mib "$mib") || fail "sequential write on knfsd: $r"
    umount /mnt/knfsd
    echo "case=nfs-seq server=knfsd engine=knfsd-ext4 mount=async $r"
else
    echo "# kernel nfsd: not measured: $(tr '\n' ' ' </tmp/knfsd.log)"
fi
