# shellcheck shell=dash
# Helpers shared by the guest scripts of ci/guest-tests (busybox sh, run as
# root; like dash, it has "local"). run-guest-tests.sh has the launcher copy
# this file into the guest as /vsic/lib.sh; a script reads it right after
# "set -eu":
#   . /vsic/lib.sh

# fail MESSAGE: the test fails, with the control-plane service's log if one
# was started.
fail() {
    echo "FAIL: $*"
    cat /tmp/serve.log 2>/dev/null
    exit 1
}

# as_user UID COMMAND...: runs COMMAND as the user with that uid (busybox
# su; the words are joined with spaces, so arguments hold no spaces).
as_user() {
    local name
    name=$(awk -F: -v u="$1" '$3 == u { print $1; exit }' /etc/passwd)
    shift
    su -s /bin/sh "$name" -c "$*"
}

# add_user NAME UID: user and group NAME with id UID, home /home/NAME that
# only the user can enter.
add_user() {
    echo "$1:x:$2:$2::/home/$1:/bin/sh" >>/etc/passwd
    echo "$1:x:$2:" >>/etc/group
    mkdir -p /home/"$1"
    chown "$2:$2" /home/"$1"
    chmod 0700 /home/"$1"
}

# start_service: `vsicctl serve` in the background, logging to
# /tmp/serve.log; returns once its socket is there.
# user_vsa_on_vsic USER UID VSIC SIZE SLOT: root creates a VSA of SIZE with
# its capability in /home/USER/data.cap (owned by USER), binds VSIC to USER
# through VFIO, and USER has the service attach the VSA in SLOT (the service
# must be running).
user_vsa_on_vsic() {
    vsicctl vsa create --size "$4" --cap /home/"$1"/data.cap
    chown "$2:$2" /home/"$1"/data.cap
    vsicctl vsic bind --vsic "$3" --vfio --user "$1"
    as_user "$2" "vsicctl request-attach --vsic $3 --cap /home/$1/data.cap --slot $5"
}

start_service() {
    vsicctl serve >/tmp/serve.log 2>&1 &
    for _ in $(seq 50); do [ -S /run/vsic/control.sock ] && break; sleep 0.1; done
    [ -S /run/vsic/control.sock ] || fail "the control-plane service did not start"
}

# dma_mode_of N / dma_windows_of N: VSIC N's DMA mode and its number of
# DMA windows.
dma_mode_of() {
    vsicctl vsic dma-mode --vsic "$1" --json | sed -n 's/.*"dma_mode": "\([a-z]*\)".*/\1/p'
}
dma_windows_of() {
    vsicctl vsic dma-window list --vsic "$1" --json | grep -c '"start"' || true
}

# violations_of N: VSIC N's protection_violations (keys are sorted, so the
# counter comes before the "vsic" key of the same VSIC).
violations_of() {
    vsicctl stats --json | awk -v n="$1" '
        /"protection_violations":/ { gsub(/[^0-9]/, "", $2); v = $2 }
        /"vsic":/ { gsub(/[^0-9]/, "", $2); if ($2 == n) { print v; exit } }'
}

# disk_with_serial SERIAL: the kernel disk (vdX) whose virtio serial is
# SERIAL; fails (status 1) when there is none.
disk_with_serial() {
    local b
    for b in /sys/block/vd*; do
        if [ "$(cat "$b/serial" 2>/dev/null)" = "$1" ]; then
            basename "$b"
            return 0
        fi
    done
    return 1
}

# bound_disk JSON: the kernel disk (vdX) named by the --json output of
# `vsicctl vsic bind --kernel` (empty if none).
bound_disk() {
    echo "$1" | sed -n 's/.*"disk": "\(vd[a-z]*\)".*/\1/p'
}

# wait_size DISK SECTORS: waits up to 5 s for the kernel to report SECTORS
# as DISK's size.
wait_size() {
    local i=0
    while [ "$(cat /sys/block/"$1"/size)" != "$2" ]; do
        i=$((i + 1))
        [ $i -le 50 ] || fail "/dev/$1 is $(cat /sys/block/"$1"/size) sectors, expected $2"
        sleep 0.1
    done
    echo "/dev/$1: $2 sectors after $((i * 100)) ms"
}

# kernel_vsa_disk VSIC MIB CAP: creates a VSA of MIB MiB (its capability in
# CAP), binds VSIC to the kernel's virtio_blk, attaches the VSA in slot 0
# (after the bind) and waits for the disk to show its size; sets KDISK to
# the disk's name (vdX).
kernel_vsa_disk() {
    local out
    vsicctl vsa create --size "$2"M --cap "$3" >/dev/null || fail "vsa create ($2 MiB)"
    out=$(vsicctl vsic bind --vsic "$1" --kernel --json)
    KDISK=$(bound_disk "$out")
    [ -n "$KDISK" ] || fail "no disk in: $out"
    vsicctl vsic attach --vsic "$1" --cap "$3" --slot 0 >/dev/null || fail "attach to VSIC $1"
    wait_size "$KDISK" $(($2 << 11))
}

# driver_of ADDRESS: the driver of PCI function ADDRESS, or "none".
driver_of() {
    local link
    link=$(readlink /sys/bus/pci/devices/"$1"/driver 2>/dev/null) || {
        echo none
        return 0
    }
    basename "$link"
}

# to_vfio ADDRESS: hands PCI function ADDRESS to vfio-pci (driver_override,
# unbind, probe).
to_vfio() {
    echo vfio-pci >/sys/bus/pci/devices/"$1"/driver_override
    echo "$1" >/sys/bus/pci/devices/"$1"/driver/unbind
    echo "$1" >/sys/bus/pci/drivers_probe
    [ "$(driver_of "$1")" = vfio-pci ] || fail "$1 is bound to $(driver_of "$1"), not vfio-pci"
}

# mailq_check ACKS: checks the queue of `vsic-mailq --dev $MAILQ_DEV list
# --json` against ACKS, the "ack FROM ID" lines of `vsic-mailq send`
# (other lines ignored): every acknowledged message is listed with its id
# and a sha256 equal to its sender's local part (send makes it the
# content's SHA-256), no sender is listed twice, and every listed message
# of send's (acknowledged or not) is whole. Messages of other clients are
# only counted. Prints a summary; fails the test otherwise.
mailq_check() {
    vsic-mailq --dev "$MAILQ_DEV" list --json >/tmp/mailq-list.json || fail "list --json failed"
    # One message per line: FROM ID SHA256 (field order in the JSON aside).
    tr '{}' '\n\n' </tmp/mailq-list.json | awk '
        function str(s, k) {
            if (!match(s, "\"" k "\":\"[^\"]*\"")) return ""
            return substr(s, RSTART + length(k) + 4, RLENGTH - length(k) - 5)
        }
        /"from":/ {
            if (!match($0, "\"id\":[0-9]+")) next
            id = substr($0, RSTART + 5, RLENGTH - 5)
            print str($0, "from"), id, str($0, "sha256")
        }' >/tmp/mailq-list.txt
    awk '
        function problem(msg) { if (bad++ < 20) print msg }
        FNR == NR {
            sub(/\r$/, "")
            if ($0 !~ /^ack [0-9a-f]+@[a-z0-9.-]+\.send\.example [0-9]+$/) next
            if ($2 in acked) problem("acknowledged twice: " $2 " as " acked[$2] " and " $3)
            acked[$2] = $3
            na++
            next
        }
        {
            n++
            if ($1 !~ /\.send\.example$/) { other++; next }
            if (seen[$1]++) problem("listed twice: " $1)
            id[$1] = $2
            split($1, a, "@")
            if (a[1] != $3) problem("not whole: " $1 " has sha256 " $3)
            if (!($1 in acked)) unacked++
        }
        END {
            for (f in acked) {
                if (!(f in id)) problem("acknowledged but missing: " f " (id " acked[f] ")")
                else if (id[f] != acked[f]) problem("acknowledged as " acked[f] " but listed as " id[f] ": " f)
            }
            printf "mailq_check: %d acknowledged, %d listed (%d of them not acknowledged but whole, %d of other clients), %d problems\n",
                na, n, unacked, other, bad
            exit bad > 0
        }' "$1" /tmp/mailq-list.txt || fail "the queue does not hold what was acknowledged"
}
# --- vsic-nfsd (issue 12) ----------------------------------------------------
# nfs_setup: loads the NFS client, gives vsic-nfsd a 384 MiB VSA on a
# VFIO-owned VSIC 0 (NFS_DEV), the port NFS_PORT, the mount point NFS_MNT
# and the standard mount options NFS_OPTS.
nfs_setup() {
    for p in vsic-nfsd vsic-fs; do
        command -v $p >/dev/null || fail "$p is not in the image"
    done
    ip link show lo | grep -q "UP" || fail "loopback is not up"
    modprobe nfsv3 || fail "modprobe nfsv3"
    grep -qw nfs /proc/filesystems || fail "no nfs in /proc/filesystems after modprobe"
    vsicctl vsa create --size 384M --cap /root/nfs.cap
    vsicctl vsic attach --vsic 0 --cap /root/nfs.cap --slot 0
    vsicctl vsic bind --vsic 0 --vfio --user root
    NFS_DEV=vsic:0
    NFS_PORT=20490
    NFS_MNT=/mnt/nfs
    NFS_OPTS=vers=3,proto=tcp,port=$NFS_PORT,mountport=$NFS_PORT,mountproto=tcp,nolock
    mkdir -p $NFS_MNT
}

# nfs_start LOG [--mkfs]: vsic-nfsd in the background (pid in NFSD),
# logging to LOG; returns once it listens (it says "serving" after binding).
nfs_start() {
    local log=$1
    shift
    vsic-nfsd --dev $NFS_DEV --listen 127.0.0.1:$NFS_PORT "$@" >"$log" 2>&1 &
    NFSD=$!
    for _ in $(seq 600); do
        grep -q "serving" "$log" 2>/dev/null && return 0
        kill -0 $NFSD 2>/dev/null || { cat "$log"; fail "vsic-nfsd exited"; }
        sleep 0.1
    done
    cat "$log"
    fail "vsic-nfsd did not listen within 60 s"
}

# nfs_mount [EXTRA_OPTIONS]: mounts the export on NFS_MNT with the standard
# options (busybox mount -t nfs).
nfs_mount() {
    mount -t nfs -o "${1:+$1,}$NFS_OPTS" 127.0.0.1:/ $NFS_MNT || fail "mount -t nfs -o ${1:+$1,}$NFS_OPTS"
}

# nfs_check: stops vsic-nfsd (after umount) and runs vsic-fs check.
nfs_check() {
    local out
    kill $NFSD
    wait $NFSD 2>/dev/null || true
    out=$(vsic-fs --dev $NFS_DEV check) || fail "vsic-fs check: $out"
    echo "vsic-fs check: $out"
}
# --- end vsic-nfsd block -------------------------------------------------------
