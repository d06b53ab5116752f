#!/usr/bin/env bash
# Installs the host packages the image build, the launcher and the CI need.
#
# Idempotent: when everything is present it changes nothing and does not
# touch the package index. QEMU comes from the bookworm-backports suite
# (10.0.x, the same series as qemu-utils); the backports source is derived
# from the machine's own bookworm apt source so no mirror is hard-coded.
#
# Guest binaries are linked statically against glibc
# (-C target-feature=+crt-static on x86_64-unknown-linux-gnu): it needs
# nothing beyond the installed toolchain, whereas a musl target would have to
# be downloaded by rustup from outside the package registries.
set -euo pipefail
# One brace group: editing this file while it runs cannot change what the
# running instance does.
{

log() { printf 'install-deps: %s\n' "$*" >&2; }

# Packages taken from the default suite, and the command proving each present.
declare -A STABLE_PKGS=(
    # mkfs.btrfs and mkfs.xfs for the guest image (the Figure 1 benchmark).
    [btrfs-progs]=/sbin/mkfs.btrfs
    [xfsprogs]=/sbin/mkfs.xfs
    [busybox-static]=/bin/busybox
    [e2fsprogs]=/sbin/mke2fs
    [cpio]=/usr/bin/cpio
    [gzip]=/usr/bin/gzip
    [kmod]=/sbin/depmod
    [libc-bin]=/usr/bin/ldd
    [coreutils]=/usr/bin/timeout
    # losetup: ci/test.sh runs the block-device tests on a loop device.
    [mount]=/sbin/losetup
    # vsic-kv's tests: redis-cli and redis-benchmark drive it, and the same
    # session against a real redis-server is the reference.
    [redis-server]=/usr/bin/redis-server
    [redis-tools]=/usr/bin/redis-cli
    # vsic-mailq's tests: Python's smtplib is the SMTP client nobody here wrote.
    [python3]=/usr/bin/python3
    # The libraries Postfix's smtp-source needs (images/build.sh takes the
    # binary from the postfix package, not installed, and these from here).
    [libdb5.3]=/usr/lib/x86_64-linux-gnu/libdb-5.3.so
    [libicu72]=/usr/lib/x86_64-linux-gnu/libicuuc.so.72
    [libnsl2]=/usr/lib/x86_64-linux-gnu/libnsl.so.2
    # The libraries of the kernel nfsd's tools (rpc.nfsd, rpc.mountd,
    # exportfs, rpcbind; images/build.sh takes them from the unpacked
    # packages): the rest are on every Debian host already.
    [libwrap0]=/usr/lib/x86_64-linux-gnu/libwrap.so.0
    [libtirpc3]=/usr/lib/x86_64-linux-gnu/libtirpc.so.3
    # The management socket's traces: blkparse and btt read them.
    [blktrace]=/usr/bin/blkparse
)
BACKPORTS_PKG=qemu-system-x86
QEMU_SERIES=10.0

# The backports sources file written by this script.
BACKPORTS_SOURCES=/etc/apt/sources.list.d/vsic-bookworm-backports.sources

if [[ $(id -u) -ne 0 ]]; then
    SUDO=sudo
else
    SUDO=
fi

# busybox-static may live at /bin or /usr/bin depending on usrmerge.
have_file() { [[ -e $1 || -e /usr$1 || -e ${1#/usr} ]]; }

qemu_ok() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    local v
    v=$(qemu-system-x86_64 --version 2>/dev/null | sed -n '1s/.*version \([0-9]*\.[0-9]*\).*/\1/p')
    [[ $v == "$QEMU_SERIES" ]]
}

# Prints the URIs of the deb822 stanza whose Suites include plain "bookworm".
bookworm_uris() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        awk '
            function flush() {
                if (is_bookworm && uris != "") print uris
                is_bookworm = 0; uris = ""
            }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "uris:" { sub(/^[^:]*:[[:space:]]*/, ""); uris = $0 }
            tolower($1) == "suites:" {
                for (i = 2; i <= NF; i++) if ($i == "bookworm") is_bookworm = 1
            }
            END { flush() }
        ' "$f"
    done
    # One-line format, if the machine uses it.
    if [[ -r /etc/apt/sources.list ]]; then
        awk '$1 == "deb" { for (i = 3; i <= NF; i++) if ($i == "bookworm") { print ($2 ~ /^\[/ ? $3 : $2); break } }' \
            /etc/apt/sources.list
    fi
}

backports_configured() {
    grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}

add_backports_source() {
    local uris keyring
    uris=$(bookworm_uris | head -n1)
    if [[ -z $uris ]]; then
        log "no apt source for suite 'bookworm' found; cannot derive bookworm-backports"
        return 1
    fi
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    log "adding bookworm-backports from the existing bookworm source ($uris)"
    {
        echo "Types: deb"
        echo "URIs: $uris"
        echo "Suites: bookworm-backports"
        echo "Components: main"
        [[ -r $keyring ]] && echo "Signed-By: $keyring"
    } | $SUDO tee "$BACKPORTS_SOURCES" >/dev/null
}

# Launches and CI runs may call this side by side: one at a time, and the
# later ones re-check after waiting (the first may have installed it all).
exec 7>/var/lock/vsic-install-deps.lock
flock 7

missing=()
for pkg in "${!STABLE_PKGS[@]}"; do
    have_file "${STABLE_PKGS[$pkg]}" || missing+=("$pkg")
done
need_qemu=0
qemu_ok || need_qemu=1

if [[ ${#missing[@]} -eq 0 && $need_qemu -eq 0 ]]; then
    log "all host dependencies present"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for apt/dpkg run by anything else instead of failing at once.
APT_OPTS=(-o DPkg::Lock::Timeout=300)
if [[ $need_qemu -eq 1 ]] && ! backports_configured; then
    add_backports_source
fi
log "apt-get update"
$SUDO apt-get "${APT_OPTS[@]}" update -qq

if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    $SUDO apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ $need_qemu -eq 1 ]]; then
    log "installing $BACKPORTS_PKG from bookworm-backports"
    $SUDO apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends -t bookworm-backports "$BACKPORTS_PKG" >/dev/null
    if ! qemu_ok; then
        log "qemu-system-x86_64 is not version $QEMU_SERIES.x after install:"
        qemu-system-x86_64 --version >&2 || true
        exit 1
    fi
fi
log "done: $(qemu-system-x86_64 --version | head -n1)"
exit
}
