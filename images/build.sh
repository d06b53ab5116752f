#!/usr/bin/env bash
# Builds the guest image: images/out/vmlinuz and images/out/initramfs.cpio.gz.
#
# The kernel is Debian's cloud kernel as shipped (the package behind the
# linux-image-cloud-amd64 metapackage, resolved with apt-cache at build time
# and downloaded into a cache directory outside the repository). The
# initramfs holds busybox, mke2fs, e2fsck, mkfs.btrfs and mkfs.xfs with their
# libraries, the modules the controller needs (with their dependencies,
# loaded at boot), the brd, btrfs and xfs modules (with theirs, loaded on
# demand with modprobe, e.g. by the Figure 1 benchmark), our statically
# linked guest binaries, redis (server, cli, benchmark) and Postfix's
# smtp-source with their libraries, and images/init. Nothing is rebuilt when no input changed.
#
# Usage: images/build.sh [--no-cargo] [--force]
#   --no-cargo   do not run cargo; use the guest binaries already built
#   --force      rebuild the initramfs even if the inputs did not change
# Environment:
#   VSIC_CACHE        cache directory (default /var/cache/vsic)
#   VSIC_KERNEL_PKG   kernel package to use instead of the metapackage's
#   CARGO_TARGET_DIR  cargo target directory (default <repo>/target)
set -euo pipefail
# The whole body is one brace group, read before it runs, so editing this
# file while it runs cannot change what the running instance does.
{

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$REPO/images/out
CACHE=${VSIC_CACHE:-/var/cache/vsic}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
# Guest binaries are static glibc builds for this triple (see ci/install-deps.sh).
GUEST_TRIPLE=x86_64-unknown-linux-gnu
GUEST_BIN_DIR=$TARGET_DIR/$GUEST_TRIPLE/release
# Modules loaded at boot; their dependencies are added from modules.dep.
MODULES=(virtio_pci virtio_blk vfio vfio_iommu_type1 vfio-pci)
# Modules in the image but loaded only on demand (modprobe NAME): a RAM disk
# and the file systems the kernel does not build in (ext2/ext4 are built in).
# nfsv3 (issue 12) brings nfs, sunrpc, lockd and the rest of its closure;
# nfsd is the kernel's NFS server, the peer of vsic-nfsd.
ON_DEMAND_MODULES=(brd btrfs xfs nfsv3 nfsd)
# Cargo packages whose binaries and examples go into the guest.
GUEST_PACKAGES=(vsicctl vsic vsic-kv vsic-mailq vsic-fs vsic-nfsd)

run_cargo=1
force=0
for arg in "$@"; do
    case $arg in
    --no-cargo) run_cargo=0 ;;
    --force) force=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "images/build.sh: unknown argument '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

step() { printf '[image] %s\n' "$*" >&2; }
die() {
    printf '[image] error: %s\n' "$*" >&2
    exit 1
}

mkdir -p "$OUT" "$CACHE/debs" "$CACHE/kernel"
# One build at a time (launches and CI may start builds side by side); the
# second one then finds the image up to date.
exec 8>"$OUT/.lock"
if ! flock -n 8; then
    step "waiting for another image build to finish"
    flock 8
fi

# --- kernel package -------------------------------------------------------
resolve_kernel_pkg() {
    if [[ -n ${VSIC_KERNEL_PKG:-} ]]; then
        echo "$VSIC_KERNEL_PKG"
        return
    fi
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

kernel_pkg=$(resolve_kernel_pkg)
if [[ -z $kernel_pkg ]]; then
    # Offline and no package index: fall back to the newest cached kernel.
    cached=$(ls -1 "$CACHE"/debs/linux-image-*-cloud-amd64_*.deb 2>/dev/null | sort -V | tail -n1 || true)
    [[ -n $cached ]] || die "cannot resolve linux-image-cloud-amd64 (run ci/install-deps.sh / apt-get update)"
    kernel_pkg=$(basename "$cached" | cut -d_ -f1)
fi
kernel_deb=$(ls -1 "$CACHE"/debs/"${kernel_pkg}"_*.deb 2>/dev/null | sort -V | tail -n1 || true)
if [[ -z $kernel_deb ]]; then
    step "downloading $kernel_pkg into $CACHE/debs"
    # apt's sandbox user cannot write to a root-owned cache; download as the caller.
    (cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root "$kernel_pkg") >&2 ||
        die "apt-get download $kernel_pkg failed"
    kernel_deb=$(ls -1 "$CACHE"/debs/"${kernel_pkg}"_*.deb | sort -V | tail -n1)
fi

kroot=$CACHE/kernel/$(basename "$kernel_deb" .deb)
if [[ ! -e $kroot/.unpacked ]]; then
    step "unpacking $(basename "$kernel_deb")"
    rm -rf "$kroot"
    mkdir -p "$kroot"
    dpkg-deb -x "$kernel_deb" "$kroot"
    kver=$(ls "$kroot/lib/modules")
    # The package ships no modules.dep: depmod writes it at install time.
    depmod -b "$kroot" "$kver"
    touch "$kroot/.unpacked"
fi
kver=$(ls "$kroot/lib/modules")
vmlinuz=$kroot/boot/vmlinuz-$kver
[[ -r $vmlinuz ]] || die "no kernel image in $kernel_deb"

# --- guest binaries -------------------------------------------------------
if [[ $run_cargo -eq 1 ]]; then
    step "building static guest binaries (cargo, $GUEST_TRIPLE, crt-static)"
    pkg_args=()
    for p in "${GUEST_PACKAGES[@]}"; do pkg_args+=(-p "$p"); done
    # An explicit --target keeps RUSTFLAGS off build scripts and proc macros,
    # which cannot be linked statically.
    guest_cargo() {
        (cd "$REPO" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
            cargo build --release --target "$GUEST_TRIPLE" "$@")
    }
    # Examples are optional: if they do not build, the image still gets the
    # binaries, and whatever was built before is used with a warning.
    if [[ -n ${CI:-} ]]; then
        # In CI a guest binary that does not build is a failure, never a
        # silent fallback to something built earlier.
        guest_cargo "${pkg_args[@]}" --bins --examples || die "cargo build of the guest binaries failed"
    elif ! guest_cargo "${pkg_args[@]}" --bins --examples; then
        step "warning: building the guest binaries with examples failed; trying binaries only"
        guest_cargo "${pkg_args[@]}" --bins ||
            step "warning: cargo build of the guest binaries failed; using those already built (may be stale)"
    fi
fi

# ldd exits non-zero for static executables, so read its words, not its status.
is_static() {
    local out
    out=$(ldd "$1" 2>&1 || true)
    [[ $out == *"not a dynamic executable"* || $out == *"statically linked"* ]]
}

guest_bins=()
for f in "$GUEST_BIN_DIR"/* "$GUEST_BIN_DIR"/examples/*; do
    [[ -f $f && -x $f ]] || continue
    name=$(basename "$f")
    # Skip cargo's hashed copies of examples (name-<16 hex>).
    [[ $name =~ -[0-9a-f]{16}$ ]] && continue
    [[ $name == *.so || $name == *.d ]] && continue
    if ! is_static "$f"; then
        step "warning: $name is not statically linked; skipped"
        continue
    fi
    guest_bins+=("$f")
done
[[ ${#guest_bins[@]} -gt 0 ]] || step "warning: no guest binaries found in $GUEST_BIN_DIR"

# --- host tools copied into the guest ---------------------------------------
busybox=$(command -v busybox || true)
[[ -n $busybox ]] || die "busybox not found (install busybox-static: ci/install-deps.sh)"
is_static "$busybox" || die "$busybox is not the static busybox (install busybox-static)"
mke2fs=$(command -v mke2fs || echo /sbin/mke2fs)
[[ -x $mke2fs ]] || die "mke2fs not found (install e2fsprogs)"
mkfs_btrfs=$(command -v mkfs.btrfs || echo /sbin/mkfs.btrfs)
[[ -x $mkfs_btrfs ]] || die "mkfs.btrfs not found (install btrfs-progs: ci/install-deps.sh)"
mkfs_xfs=$(command -v mkfs.xfs || echo /sbin/mkfs.xfs)
[[ -x $mkfs_xfs ]] || die "mkfs.xfs not found (install xfsprogs: ci/install-deps.sh)"

# Shared libraries (and the loader) a dynamic executable needs, as absolute paths.
shared_libs() {
    ldd "$1" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3 }
        $1 ~ /^\// { print $1 }
    '
}
host_libs=$( (shared_libs "$mke2fs" && shared_libs "$mkfs_btrfs" && shared_libs "$mkfs_xfs") | sort -u)

# --- vsic-kv (issue 10): Debian's redis-server and redis-tools -------------
# Redis is the peer vsic-kv is measured against, and redis-cli and
# redis-benchmark drive both; copied from the host with their libraries
# (ci/install-deps.sh installs the packages). Loopback is brought up by init.
redis_bins=()
for b in redis-server redis-cli redis-benchmark; do
    p=$(command -v "$b" || true)
    if [[ -n $p ]]; then
        redis_bins+=("$(readlink -f "$p"):$b")
        host_libs=$(printf '%s\n' $host_libs $(shared_libs "$p") | sort -u)
    else
        step "warning: $b not found on the host (ci/install-deps.sh installs it); the guest will lack it"
    fi
done
# --- end vsic-kv block -----------------------------------------------------

# unpacked_deb PKG: prints the directory holding Debian package PKG unpacked
# (its candidate version, downloaded into the cache once; offline and with
# no package index, the newest cached one), or nothing when there is none.
# Packages taken apart like this are never installed on the host.
unpacked_deb() {
    local pkg=$1 ver deb= root
    ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2; exit }')
    if [[ -n $ver ]]; then
        deb=$(ls -1 "$CACHE"/debs/"${pkg}_${ver//:/%3a}"_*.deb 2>/dev/null | head -n1 || true)
        if [[ -z $deb ]]; then
            step "downloading $pkg $ver into $CACHE/debs"
            (cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver") >&2 ||
                step "warning: apt-get download $pkg=$ver failed"
            deb=$(ls -1 "$CACHE"/debs/"${pkg}_${ver//:/%3a}"_*.deb 2>/dev/null | head -n1 || true)
        fi
    fi
    [[ -n $deb ]] || deb=$(ls -1 "$CACHE"/debs/"${pkg}"_*.deb 2>/dev/null | sort -V | tail -n1 || true)
    [[ -n $deb ]] || return 0
    root=$CACHE/$pkg/$(basename "$deb" .deb)
    if [[ ! -e $root/.unpacked ]]; then
        step "unpacking $(basename "$deb")"
        rm -rf "$root"
        mkdir -p "$root"
        dpkg-deb -x "$deb" "$root"
        touch "$root/.unpacked"
    fi
    echo "$root"
}

# --- vsic-mailq (issue 11): Postfix's load generator smtp-source -----------
# Only /usr/sbin/smtp-source of Debian's postfix package and the libraries
# it needs. The package is downloaded into the cache (the candidate version,
# once) and unpacked there, never installed on the host (it would configure
# and start a mail server). Postfix's own libraries go to /usr/lib/postfix,
# the binary's RUNPATH; the system libraries come from the host
# (ci/install-deps.sh installs the packages postfix depends on for them).
smtp_source=
postfix_libs=()
proot=$(unpacked_deb postfix)
if [[ -n $proot ]]; then
    smtp_source=$proot/usr/sbin/smtp-source
    if [[ ! -x $smtp_source ]]; then
        step "warning: no usr/sbin/smtp-source in $proot; the guest will lack it"
        smtp_source=
    elif LD_LIBRARY_PATH=$proot/usr/lib/postfix ldd "$smtp_source" | grep -q 'not found'; then
        step "warning: smtp-source needs libraries the host lacks (ci/install-deps.sh); the guest will lack it:"
        LD_LIBRARY_PATH=$proot/usr/lib/postfix ldd "$smtp_source" | grep 'not found' >&2
        smtp_source=
    else
        for lib in $(LD_LIBRARY_PATH=$proot/usr/lib/postfix shared_libs "$smtp_source"); do
            if [[ $lib == "$proot"/* ]]; then
                postfix_libs+=("$lib")
            else
                host_libs=$(printf '%s\n' $host_libs "$lib" | sort -u)
            fi
        done
    fi
else
    step "warning: no postfix package to take smtp-source from; the guest will lack it"
fi
# --- end vsic-mailq block --------------------------------------------------

# --- power-cut campaign (issue 14): e2fsck checks ext4 after each cut --------
e2fsck=$(command -v e2fsck || echo /sbin/e2fsck)
[[ -x $e2fsck ]] || die "e2fsck not found (install e2fsprogs)"
host_libs=$(printf '%s\n' $host_libs $(shared_libs "$e2fsck") | sort -u)
# --- end power-cut block -----------------------------------------------------

# --- kernel nfsd (issue 12): the peer vsic-nfsd is measured against ----------
# rpc.nfsd, rpc.mountd and exportfs from Debian's nfs-kernel-server and
# rpcbind from rpcbind (the kernel's NFSv3 service registers with it), with
# their libraries from the host (ci/install-deps.sh installs the ones the
# host lacks). Like smtp-source, the packages are only unpacked.
knfsd_bins=()
nroot=$(unpacked_deb nfs-kernel-server)
rroot=$(unpacked_deb rpcbind)
if [[ -n $nroot && -n $rroot ]]; then
    for b in "$nroot/usr/sbin/rpc.nfsd" "$nroot/usr/sbin/rpc.mountd" "$nroot/usr/sbin/exportfs" "$rroot/sbin/rpcbind"; do
        if [[ ! -x $b ]]; then
            step "warning: $b missing; the guest will lack the kernel nfsd"
            knfsd_bins=()
            break
        elif ldd "$b" | grep -q 'not found'; then
            step "warning: $(basename "$b") needs libraries the host lacks (ci/install-deps.sh); the guest will lack the kernel nfsd:"
            ldd "$b" | grep 'not found' >&2
            knfsd_bins=()
            break
        fi
        knfsd_bins+=("$b")
        host_libs=$(printf '%s\n' $host_libs $(shared_libs "$b") | sort -u)
    done
else
    step "warning: no nfs-kernel-server or rpcbind package; the guest will lack the kernel nfsd"
fi
# --- end kernel nfsd block -----------------------------------------------------

# --- module closure ---------------------------------------------------------
moddep=$kroot/lib/modules/$kver/modules.dep
# Prints the module paths (relative to the modules dir) in load order.
declare -A seen_modules=()
module_order=()
add_module() {
    local rel=$1 dep
    [[ -n ${seen_modules[$rel]:-} ]] && return
    seen_modules[$rel]=1
    for dep in $(awk -v m="$rel:" '$1 == m { for (i = 2; i <= NF; i++) print $i }' "$moddep"); do
        add_module "$dep"
    done
    module_order+=("$rel")
}
for m in "${MODULES[@]}" - "${ON_DEMAND_MODULES[@]}"; do
    # Modules after the "-" (and their dependencies not needed at boot) are
    # copied but not loaded at boot.
    if [[ $m == - ]]; then
        boot_module_count=${#module_order[@]}
        continue
    fi
    # modules.dep names files; module names may use - or _ interchangeably.
    pattern="${m//[-_]/[-_]}"
    rel=$(grep -E "/${pattern}\.ko(\.[a-z]+)?:" "$moddep" | head -n1 | cut -d: -f1 || true)
    if [[ -z $rel ]]; then
        name_us=${m//-/_}
        if grep -Eq "/${pattern}\.ko\$" "$kroot/lib/modules/$kver/modules.builtin"; then
            continue # built into the kernel
        fi
        die "module $m ($name_us) not found in $kver"
    fi
    add_module "$rel"
done

# --- input stamp --------------------------------------------------------------
stamp_inputs() {
    {
        echo "kernel $(basename "$kernel_deb") modules ${module_order[*]}"
        sha256sum "${BASH_SOURCE[0]}" "$REPO/images/init" "$busybox" "$mke2fs" "$mkfs_btrfs" "$mkfs_xfs" "$e2fsck" $host_libs \
            ${redis_bins[@]+$(printf '%s\n' "${redis_bins[@]}" | cut -d: -f1)} \
            ${smtp_source:+"$smtp_source"} ${postfix_libs[@]+"${postfix_libs[@]}"} \
            ${knfsd_bins[@]+"${knfsd_bins[@]}"} \
            $(ls /etc/netconfig /etc/services /etc/rpc /etc/protocols 2>/dev/null) \
            ${guest_bins[@]+"${guest_bins[@]}"}
    } | sha256sum | cut -d' ' -f1
}
stamp=$(stamp_inputs)
if [[ $force -eq 0 && -r $OUT/.stamp && $(cat "$OUT/.stamp") == "$stamp" &&
    -r $OUT/vmlinuz && -r $OUT/initramfs.cpio.gz ]]; then
    step "image up to date ($OUT)"
    exit 0
fi

# --- staging tree -----------------------------------------------------------
stage=$(mktemp -d "${TMPDIR:-/tmp}/vsic-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT
step "staging initramfs in $stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc/vsic,proc,sys,dev,tmp,run,root,mnt,vsic,var/tmp}
chmod 1777 "$stage/tmp" "$stage/var/tmp"
chmod 700 "$stage/root"

install -m 0755 "$REPO/images/init" "$stage/init"
install -m 0755 "$busybox" "$stage/bin/busybox"

# The real mke2fs (busybox's applet lacks ext4 features) with its libraries.
install -m 0755 "$mke2fs" "$stage/sbin/mke2fs"
for l in mkfs.ext4 mkfs.ext3 mkfs.ext2; do ln -s mke2fs "$stage/sbin/$l"; done
[[ -r /etc/mke2fs.conf ]] && install -m 0644 /etc/mke2fs.conf "$stage/etc/mke2fs.conf"
install -m 0755 "$mkfs_btrfs" "$stage/sbin/mkfs.btrfs"
install -m 0755 "$mkfs_xfs" "$stage/sbin/mkfs.xfs"
for lib in $host_libs; do
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
done

# Our binaries, stripped of debug info to keep the image small.
for f in ${guest_bins[@]+"${guest_bins[@]}"}; do
    dest=$stage/usr/bin/$(basename "$f")
    if command -v strip >/dev/null 2>&1; then
        strip --strip-debug -o "$dest" "$f"
    else
        cp "$f" "$dest"
    fi
    chmod 0755 "$dest"
done

# --- vsic-kv (issue 10): the Redis programs found above ---------------------
for rb in ${redis_bins[@]+"${redis_bins[@]}"}; do
    install -m 0755 "${rb%%:*}" "$stage/usr/bin/${rb##*:}"
done
# --- end vsic-kv block -----------------------------------------------------

# --- vsic-mailq (issue 11): smtp-source and Postfix's libraries -------------
if [[ -n $smtp_source ]]; then
    install -m 0755 "$smtp_source" "$stage/usr/sbin/smtp-source"
    mkdir -p "$stage/usr/lib/postfix"
    for lib in ${postfix_libs[@]+"${postfix_libs[@]}"}; do
        install -m 0644 "$lib" "$stage/usr/lib/postfix/$(basename "$lib")"
    done
fi
# --- end vsic-mailq block --------------------------------------------------

# --- power-cut campaign (issue 14) --------------------------------------------
install -m 0755 "$e2fsck" "$stage/sbin/e2fsck"
ln -s e2fsck "$stage/sbin/fsck.ext4"
# --- end power-cut block -----------------------------------------------------

# --- kernel nfsd (issue 12) ------------------------------------------------------
for b in ${knfsd_bins[@]+"${knfsd_bins[@]}"}; do
    install -m 0755 "$b" "$stage/usr/sbin/$(basename "$b")"
done
# libtirpc reads its transports from /etc/netconfig and rpcbind looks its
# own service up in /etc/services; rpc.mountd keeps its tables in /var/lib/nfs.
if [[ ${#knfsd_bins[@]} -gt 0 ]]; then
    for f in /etc/netconfig /etc/services /etc/rpc /etc/protocols; do
        [[ -r $f ]] && install -m 0644 "$f" "$stage$f"
    done
    mkdir -p "$stage/var/lib/nfs" "$stage/run/rpcbind"
fi
# --- end kernel nfsd block -----------------------------------------------------

# Busybox applet links, where no real program of that name was installed.
while read -r applet; do
    [[ -e $stage/$applet || -L $stage/$applet ]] && continue
    mkdir -p "$stage/$(dirname "$applet")"
    ln -s /bin/busybox "$stage/$applet"
done < <("$busybox" --list-full)

# Kernel modules with a modules.dep of their own, so modprobe works too.
kmods=$stage/lib/modules/$kver
mkdir -p "$kmods"
: >"$stage/etc/vsic/modules"
for i in "${!module_order[@]}"; do
    rel=${module_order[i]}
    mkdir -p "$kmods/$(dirname "$rel")"
    cp "$kroot/lib/modules/$kver/$rel" "$kmods/$rel"
    if ((i < boot_module_count)); then
        echo "/lib/modules/$kver/$rel" >>"$stage/etc/vsic/modules"
    fi
done
cp "$kroot/lib/modules/$kver/modules.builtin" "$kroot/lib/modules/$kver/modules.order" "$kmods/"
[[ -r $kroot/lib/modules/$kver/modules.builtin.modinfo ]] &&
    cp "$kroot/lib/modules/$kver/modules.builtin.modinfo" "$kmods/"
depmod -b "$stage" "$kver"

cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
_rpc:x:107:65534::/run/rpcbind:/bin/false
EOF
cat >"$stage/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo "export PS1='vsic-guest:\\w# '" >"$stage/etc/profile"
{
    echo "kernel=$kver ($(basename "$kernel_deb"))"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
} >"$stage/etc/vsic/release"

# --- archive ------------------------------------------------------------------
step "writing initramfs.cpio.gz"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc --owner 0:0 | gzip -6 >"$OUT/initramfs.cpio.gz.tmp")
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
cp "$vmlinuz" "$OUT/vmlinuz.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
echo "$stamp" >"$OUT/.stamp"
step "done: $OUT/vmlinuz ($kver), $OUT/initramfs.cpio.gz ($(du -h "$OUT/initramfs.cpio.gz" | cut -f1)), ${#guest_bins[@]} guest binaries"
exit
}
