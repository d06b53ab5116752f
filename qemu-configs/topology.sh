# shellcheck shell=bash
# The QEMU configuration of the VSIC topology, as shell functions.
# Sourced by launch.sh; `launch.sh --print-qemu` shows the resulting command.
#
# Topology (design decisions 1, 2, 9, 10, 11):
#   q35 machine, intel-iommu (interrupt remapping on) as the first device,
#   guest RAM from a shared memfd (vhost-user backends map it),
#   the PF and K VSIC functions, each a vhost-user-blk-pci device behind a
#   pcie-root-port of its own, so each lands in its own IOMMU group.
#   PF: 1 queue; VSIC: Q queues; vectors = queues + 1 (one per queue plus
#   config change). iommu_platform stays off: the rust-vmm backend stack does
#   not implement the vhost-user IOTLB messages.

# First slot on pcie.0 used for root ports (00:00 is the host bridge, 00:01
# is left free); the highest slot is 31, which bounds K.
VSIC_FIRST_ROOT_SLOT=2
VSIC_MAX_VSICS=$((31 - VSIC_FIRST_ROOT_SLOT))

# vsic_socket_path SOCKDIR INDEX: the socket of function INDEX (0 = PF,
# 1..K = VSIC 0..K-1), named as the backend serves them.
vsic_socket_path() {
    local dir=$1 index=$2
    if [[ $index -eq 0 ]]; then
        echo "$dir/pf.sock"
    else
        echo "$dir/vsic$((index - 1)).sock"
    fi
}

# vsic_all_functions K: the function indices of the PF and K VSICs, "0 1 .. K".
vsic_all_functions() {
    seq 0 "$1" | tr '\n' ' '
}

# vsic_qemu_args ARRAY_NAME: fills the named array with QEMU arguments.
# Reads: VSIC_ACCEL (kvm|tcg), VSIC_MEMORY (e.g. 1G), VSIC_SMP, VSIC_VSICS,
# VSIC_QUEUES, VSIC_SOCK_DIR, VSIC_KERNEL, VSIC_INITRD, VSIC_CMDLINE,
# VSIC_RECONNECT_MS (0 = off), VSIC_FUNCTIONS (the function indices this
# guest gets, 0 = PF, i + 1 = VSIC i; default all). A function keeps its
# PCI address whichever others a guest leaves out, so a VSIC is at the same
# address in every guest that has it.
vsic_qemu_args() {
    local -n out=$1
    local i queues sock chardev_opts
    out=(-nodefaults -no-user-config -no-reboot)
    if [[ $VSIC_ACCEL == kvm ]]; then
        # Interrupt remapping needs the split irqchip under KVM.
        out+=(-accel kvm -cpu host -machine q35,kernel-irqchip=split,memory-backend=mem)
    else
        # One TCG thread for all vCPUs: with one thread per vCPU, QEMU 10.0
        # sometimes sends a guest MMIO write to the wrong device while another
        # vCPU changes the memory map (every VFIO open or close of a function
        # does), losing queue kicks or interrupt EOIs and hanging the guest.
        out+=(-accel tcg,thread=single -cpu max -machine q35,memory-backend=mem)
    fi
    out+=(
        -m "$VSIC_MEMORY" -smp "$VSIC_SMP"
        -object "memory-backend-memfd,id=mem,size=$VSIC_MEMORY,share=on"
        -device intel-iommu,intremap=on
        -kernel "$VSIC_KERNEL" -initrd "$VSIC_INITRD" -append "$VSIC_CMDLINE"
    )
    chardev_opts=
    if [[ ${VSIC_RECONNECT_MS:-0} -gt 0 ]]; then
        # QEMU reconnects when the backend restarts (metadata is persisted).
        chardev_opts=",reconnect-ms=$VSIC_RECONNECT_MS"
    fi
    for i in ${VSIC_FUNCTIONS:-$(vsic_all_functions "$VSIC_VSICS")}; do
        sock=$(vsic_socket_path "$VSIC_SOCK_DIR" "$i")
        if [[ $i -eq 0 ]]; then queues=1; else queues=$VSIC_QUEUES; fi
        out+=(
            -device "pcie-root-port,id=rp$i,bus=pcie.0,chassis=$((i + 1)),addr=$(printf '0x%x' $((VSIC_FIRST_ROOT_SLOT + i))).0"
            -chardev "socket,id=fn$i,path=$sock$chardev_opts"
            -device "vhost-user-blk-pci,id=vblk$i,chardev=fn$i,bus=rp$i,addr=0x0,num-queues=$queues,vectors=$((queues + 1)),disable-legacy=on"
        )
    done
}

# vsic_kernel_cmdline HUGEPAGES VERBOSE EXTRA: the guest kernel command line.
vsic_kernel_cmdline() {
    local hugepages=$1 verbose=$2 extra=$3 line
    # no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer
    # probe can time out and panic with interrupt remapping on.
    line="console=ttyS0 intel_iommu=on no_timer_check panic=-1 hugepagesz=2M hugepages=$hugepages"
    if [[ $verbose -eq 0 ]]; then
        line+=" quiet loglevel=3"
    fi
    [[ -n $extra ]] && line+=" $extra"
    echo "$line"
}
