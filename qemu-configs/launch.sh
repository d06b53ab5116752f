#!/usr/bin/env bash
# Boots a QEMU guest attached to the VSIC controller backend.
#
# Usage: qemu-configs/launch.sh [OPTIONS]
#
# Installs missing host packages (ci/install-deps.sh), builds what is missing
# (the workspace binaries with cargo, the guest image with images/build.sh),
# starts vsicd on the state directory's drives, waits for its sockets, and
# boots the guest with the PF and K VSIC functions. The backend stops when
# the guest does.
#
# Modes:
#   (default)          root shell on the serial console (Ctrl-a x quits QEMU)
#   --run SCRIPT       copy SCRIPT into the guest, run it as root, print its
#                      output and exit with its status
#   --run-with FILE    with --run: also copy FILE into the guest as
#                      /vsic/NAME (NAME: its file name), e.g. a library the
#                      script sources; repeatable
#
# Options:
#   --vsics K          number of VSIC functions (default 4)
#   --functions LIST   the functions this guest gets, comma-separated: pf
#                      and VSIC numbers (default pf and every VSIC), e.g.
#                      "pf,0,1"; the others stay free for another guest
#   --sock-dir DIR     with --backend external: the backend's sockets are in
#                      DIR (default STATE/sock), e.g. another launch's
#                      STATE/sock, to boot a second VM on the same vsicd
#   --queues Q         request queues per VSIC function (default 2)
#   --memory SIZE      guest RAM, shared with the backend (default 1G)
#   --smp N            guest CPUs (default 2)
#   --hugepages N      2 MiB huge pages reserved in the guest (default 64)
#   --state-dir DIR    drives, sockets and logs (default $VSIC_STATE or
#                      ${XDG_STATE_HOME:-~/.local/state}/vsic)
#   --keep-state       reuse the drives of the previous run (default: fresh
#                      drives on every launch)
#   --drive-size SIZE  size of each of the two drives (default 1G)
#   --timeout SECS     kill the guest after SECS (default 120 with --run,
#                      3600 otherwise; 0 = never)
#   --accel MODE       auto (default: KVM if a short trial boot works, else
#                      TCG), kvm or tcg; also $VSIC_ACCEL
#   --backend KIND     vsicd (default); external (sockets already served in
#                      STATE/sock by someone else); qsd (qemu-storage-daemon
#                      stand-in serving plain disks, for testing the image)
#   --vsicd-arg ARG    one more vsicd option (repeatable), e.g.
#                      --vsicd-arg --cache=write-through
#   --host-hook CMD    run "CMD pre" once the backend is up, before the guest
#                      boots, and "CMD post" after the guest powered off,
#                      with the backend still up (env: VSIC_STATE_DIR,
#                      VSIC_SOCK_DIR, VSIC_PF_SOCK, VSICCTL, VSIC_BIN_DIR,
#                      VSIC_VSICS, VSIC_QUEUES, VSIC_PHASE)
#   --power-cut-after T
#                      cut the controller's power (management command
#                      power-cut) and kill QEMU (SIGKILL) at the same
#                      instant, T after QEMU started (or after the
#                      --power-cut-arm text); T is SECS (decimals allowed)
#                      or random:MIN-MAX (uniform, in milliseconds). Then
#                      power-on, so that the backend serves the next boot:
#                      boot a new guest on the same drives with --keep-state
#                      (or --backend external on a backend that stays up).
#                      The cut's reply is kept in STATE/power-cut.json.
#                      Backends vsicd and external; give vsicd
#                      --vsicd-arg --volatile-cache=SIZE to lose anything
#   --power-cut-arm TEXT
#                      with --run and --power-cut-after: count T from the
#                      first console line containing TEXT (a marker the
#                      script prints once its workload runs)
#   --mgmt-sock PATH   the backend's management socket (default
#                      STATE/sock/mgmt.sock, where vsicd puts it)
#   --append ARGS      extra guest kernel parameters (vsic.NAME=VALUE ones
#                      reach the script as VSIC_NAME)
#   --verbose          show kernel messages on the console
#   --rebuild          run cargo and images/build.sh even if outputs exist
#   --print-qemu       print the QEMU command line and exit
#   -h, --help         this text
#
# Two VMs on one vsicd, as SR-IOV virtual functions go to different VMs:
#   launch.sh --state-dir A --functions pf,0,1      (the control plane's VM)
#   launch.sh --state-dir B --backend external --sock-dir A/sock --functions 2,3
# The second guest has no PF: it sees only the VSAs the first one attaches
# to VSICs 2 and 3 (in DMA mode open, the default, its own kernel driver
# can use them; each VM's functions reach only that VM's memory).
#
# Exit status with --run: the script's status; 124 guest timed out; 125 the
# guest stopped without reporting a status (crash, panic); 126 the backend
# did not start; 1 a host hook failed; 2 bad usage. With --power-cut-after
# (with or without --run): 0 the power was cut and QEMU killed as asked; 3
# the guest stopped before the cut (its status is printed); 4 the power-cut
# or power-on command failed.
set -euo pipefail
# The whole body is one brace group, read before it runs, so editing this
# file while it runs cannot change what the running instance does.
{

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=qemu-configs/topology.sh
source "$REPO/qemu-configs/topology.sh"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
say() { printf 'launch: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 2
}

# --- options ----------------------------------------------------------------
vsics=4
queues=2
memory=1G
smp=2
hugepages=64
state_dir=${VSIC_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/vsic}
keep_state=0
drive_size=1G
timeout=
accel=${VSIC_ACCEL:-auto}
backend=vsicd
host_hook=
append=
verbose=0
rebuild=0
print_qemu=0
run_script=
run_with=()
vsicd_args=()
functions=
sock_dir=
power_cut_after=
power_cut_arm=
mgmt_sock=

need_value() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value (try --help)"; }
while [[ $# -gt 0 ]]; do
    case $1 in
    --vsics) need_value "$@"; vsics=$2; shift ;;
    --functions) need_value "$@"; functions=$2; shift ;;
    --sock-dir) need_value "$@"; sock_dir=$2; shift ;;
    --queues) need_value "$@"; queues=$2; shift ;;
    --memory) need_value "$@"; memory=$2; shift ;;
    --smp) need_value "$@"; smp=$2; shift ;;
    --hugepages) need_value "$@"; hugepages=$2; shift ;;
    --state-dir) need_value "$@"; state_dir=$2; shift ;;
    --keep-state) keep_state=1 ;;
    --drive-size) need_value "$@"; drive_size=$2; shift ;;
    --timeout) need_value "$@"; timeout=$2; shift ;;
    --accel) need_value "$@"; accel=$2; shift ;;
    --backend) need_value "$@"; backend=$2; shift ;;
    --host-hook) need_value "$@"; host_hook=$2; shift ;;
    --vsicd-arg) need_value "$@"; vsicd_args+=("$2"); shift ;;
    --append) need_value "$@"; append+=" $2"; shift ;;
    --power-cut-after) need_value "$@"; power_cut_after=$2; shift ;;
    --power-cut-arm) need_value "$@"; power_cut_arm=$2; shift ;;
    --mgmt-sock) need_value "$@"; mgmt_sock=$2; shift ;;
    --run) need_value "$@"; run_script=$2; shift ;;
    --run-with) need_value "$@"; run_with+=("$2"); shift ;;
    --verbose) verbose=1 ;;
    --rebuild) rebuild=1 ;;
    --print-qemu) print_qemu=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (try --help)" ;;
    esac
    shift
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_uint "$vsics" && ((vsics >= 1 && vsics <= VSIC_MAX_VSICS)) || die "--vsics must be 1..$VSIC_MAX_VSICS"
is_uint "$queues" && ((queues >= 1 && queues <= 64)) || die "--queues must be 1..64"
is_uint "$smp" && ((smp >= 1)) || die "--smp must be a positive number"
is_uint "$hugepages" || die "--hugepages must be a number"
[[ $memory =~ ^[0-9]+[MG]$ ]] || die "--memory must look like 512M or 2G"
[[ $drive_size =~ ^[0-9]+[KMGT]?$ ]] || die "--drive-size must look like 1G"
case $accel in auto | kvm | tcg) ;; *) die "--accel must be auto, kvm or tcg" ;; esac
case $backend in vsicd | external | qsd) ;; *) die "--backend must be vsicd, external or qsd" ;; esac
if [[ -n $run_script ]]; then
    [[ -r $run_script ]] || die "cannot read script '$run_script'"
    timeout=${timeout:-120}
else
    timeout=${timeout:-3600}
fi
for f in ${run_with[@]+"${run_with[@]}"}; do
    [[ -n $run_script ]] || die "--run-with goes with --run"
    [[ -r $f ]] || die "cannot read '$f' (--run-with)"
    [[ $(basename "$f") != run.sh ]] || die "--run-with: the script itself is /vsic/run.sh"
done
is_uint "$timeout" || die "--timeout must be a number of seconds"
power_cut_delay=
if [[ -n $power_cut_after ]]; then
    num='[0-9]+(\.[0-9]+)?'
    if [[ $power_cut_after =~ ^$num$ ]]; then
        power_cut_delay=$power_cut_after
    elif [[ $power_cut_after =~ ^random:($num)-($num)$ ]]; then
        lo=${BASH_REMATCH[1]} hi=${BASH_REMATCH[3]}
        awk -v a="$lo" -v b="$hi" 'BEGIN { exit !(a <= b) }' || die "--power-cut-after random:MIN-MAX needs MIN <= MAX"
        # Uniform in milliseconds, from bash's generator (30 bits; mawk's
        # srand saturates large seeds, so awk does only the arithmetic).
        lo_ms=$(awk -v a="$lo" 'BEGIN { printf "%d", a * 1000 + 0.5 }')
        hi_ms=$(awk -v b="$hi" 'BEGIN { printf "%d", b * 1000 + 0.5 }')
        ms=$((lo_ms + (RANDOM * 32768 + RANDOM) % (hi_ms - lo_ms + 1)))
        power_cut_delay=$(awk -v m="$ms" 'BEGIN { printf "%.3f", m / 1000 }')
    else
        die "--power-cut-after must be SECS or random:MIN-MAX"
    fi
    [[ $backend != qsd ]] || die "--power-cut-after needs the vsicd or external backend"
fi
[[ -z $power_cut_arm || (-n $power_cut_after && -n $run_script) ]] ||
    die "--power-cut-arm goes with --run and --power-cut-after"

# --functions: "pf" and VSIC numbers -> function indices (0 = PF, i + 1 = VSIC i).
function_list=$(vsic_all_functions "$vsics")
if [[ -n $functions ]]; then
    function_list=
    IFS=, read -r -a picked <<<"$functions"
    for f in "${picked[@]}"; do
        if [[ $f == pf ]]; then
            index=0
        elif is_uint "$f" && ((f < vsics)); then
            index=$((f + 1))
        else
            die "--functions: '$f' is neither pf nor a VSIC number below --vsics $vsics"
        fi
        [[ " $function_list " != *" $index "* ]] || die "--functions: '$f' given twice"
        function_list+="$index "
    done
    [[ -n $function_list ]] || die "--functions needs at least one function"
fi
if [[ -n $sock_dir ]]; then
    [[ $backend == external ]] || die "--sock-dir goes with --backend external (a vsicd started here serves STATE/sock)"
    [[ -d $sock_dir ]] || die "--sock-dir: no directory '$sock_dir'"
    sock_dir=$(cd "$sock_dir" && pwd)
fi

mkdir -p "$state_dir"
state_dir=$(cd "$state_dir" && pwd)
sock_dir=${sock_dir:-$state_dir/sock}
mgmt_sock=${mgmt_sock:-$sock_dir/mgmt.sock}
power_cut_report=$state_dir/power-cut.json
qemu_pidfile=$state_dir/qemu.pid
target_dir=${CARGO_TARGET_DIR:-$REPO/target}
bin_dir=$target_dir/release
guest_bin_dir=$target_dir/x86_64-unknown-linux-gnu/release
kernel=$REPO/images/out/vmlinuz
initrd=$REPO/images/out/initramfs.cpio.gz
cache_dir=${VSIC_CACHE:-/var/cache/vsic}

# --- dependencies and builds ----------------------------------------------------
if [[ $print_qemu -eq 0 ]]; then
    "$REPO/ci/install-deps.sh"
    if [[ $rebuild -eq 1 || ($backend == vsicd && ! -x $bin_dir/vsicd) ||
        (-n $host_hook && ! -x $bin_dir/vsicctl) ]]; then
        say "building the workspace binaries and examples (cargo build --release)"
        (cd "$REPO" && cargo build --release --workspace --bins --examples) || {
            # Only what this launch needs is fatal when it is missing.
            if [[ $backend == vsicd && ! -x $bin_dir/vsicd ]]; then exit 2; fi
            say "warning: cargo build failed; using the binaries already built"
        }
    fi
    if [[ $rebuild -eq 1 || ! -r $kernel || ! -r $initrd ]]; then
        "$REPO/images/build.sh" || exit 2
    fi
fi

# --- exclusive use of the state directory ---------------------------------------
exec 9>"$state_dir/lock"
flock -n 9 || die "state directory $state_dir is in use by another launch"

# --- acceleration -----------------------------------------------------------------
# A bounded trial boot decides whether KVM works: on some hosts /dev/kvm exists
# but a nested guest hangs. The answer is cached per host boot.
kvm_trial() {
    local key result_file out
    [[ -r /dev/kvm && -w /dev/kvm ]] || return 1
    key="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null) $(qemu-system-x86_64 --version | head -n1)"
    result_file=$cache_dir/kvm-trial
    if [[ -r $result_file && $(head -n1 "$result_file") == "$key" ]]; then
        [[ $(sed -n 2p "$result_file") == works ]]
        return
    fi
    say "trying KVM (a trial boot of at most 10 s)"
    out=$(timeout -k 2 10 qemu-system-x86_64 -nodefaults -no-user-config -no-reboot \
        -accel kvm -cpu host -machine q35 -m 256 -display none -serial stdio \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 quiet panic=-1 vsic.mode=probe" </dev/null 2>&1 || true)
    mkdir -p "$cache_dir" 2>/dev/null || true
    if [[ $out == *VSIC-GUEST-EXIT* ]]; then
        printf '%s\nworks\n' "$key" >"$result_file" 2>/dev/null || true
        return 0
    fi
    printf '%s\nfails\n' "$key" >"$result_file" 2>/dev/null || true
    return 1
}

if [[ $accel == auto ]]; then
    if [[ $print_qemu -eq 0 ]] && kvm_trial; then accel=kvm; else accel=tcg; fi
fi

# --- guest command line and initrd -----------------------------------------------
guest_append="vsic.vsics=$vsics vsic.queues=$queues$append"
run_initrd=
if [[ -n $run_script ]]; then
    guest_append="vsic.mode=run $guest_append"
    # The script travels as a second cpio archive appended to the initramfs;
    # the kernel unpacks both, later files win.
    run_initrd=$state_dir/initrd-run.cpio.gz
    staging=$(mktemp -d "${TMPDIR:-/tmp}/vsic-run.XXXXXX")
    mkdir -p "$staging/vsic"
    install -m 0755 "$run_script" "$staging/vsic/run.sh"
    for f in ${run_with[@]+"${run_with[@]}"}; do
        install -m 0644 "$f" "$staging/vsic/$(basename "$f")"
    done
    (cd "$staging" && find vsic | cpio --quiet -o -H newc --owner 0:0 | gzip -1) >"$state_dir/run.cpio.gz"
    rm -rf "$staging"
    cat "$initrd" "$state_dir/run.cpio.gz" >"$run_initrd"
    rm -f "$state_dir/run.cpio.gz"
fi

VSIC_ACCEL=$accel VSIC_MEMORY=$memory VSIC_SMP=$smp VSIC_VSICS=$vsics VSIC_QUEUES=$queues \
    VSIC_SOCK_DIR=$sock_dir VSIC_KERNEL=$kernel VSIC_INITRD=${run_initrd:-$initrd} \
    VSIC_CMDLINE=$(vsic_kernel_cmdline "$hugepages" "$verbose" "$guest_append") \
    VSIC_RECONNECT_MS=1000 VSIC_FUNCTIONS=$function_list \
    vsic_qemu_args qemu_args
if [[ -n $power_cut_after ]]; then
    qemu_args+=(-pidfile "$qemu_pidfile")
fi
if [[ -n $run_script ]]; then
    qemu_args+=(-display none -serial stdio -monitor none)
else
    qemu_args+=(-nographic -serial mon:stdio)
fi

if [[ $print_qemu -eq 1 ]]; then
    # One option (with its value) per line, quoted only where the shell needs it.
    quote() { if [[ $1 =~ ^[-A-Za-z0-9_=,.:/+]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "$1"; fi; }
    printf '%s' qemu-system-x86_64
    for ((i = 0; i < ${#qemu_args[@]}; i++)); do
        printf ' \\\n  %s' "$(quote "${qemu_args[i]}")"
        next=${qemu_args[i + 1]:-}
        if [[ -n $next && $next != -* ]]; then
            printf ' %s' "$(quote "$next")"
            i=$((i + 1))
        fi
    done
    echo
    exit 0
fi

# --- backend -------------------------------------------------------------------------
backend_pid=
watch_pid=
qemu_log=$state_dir/console.log
cleanup() {
    local rc=$?
    if [[ -n $watch_pid ]]; then
        kill "$watch_pid" 2>/dev/null || true
        wait "$watch_pid" 2>/dev/null || true
    fi
    if [[ -n $backend_pid ]] && kill -0 "$backend_pid" 2>/dev/null; then
        kill -TERM "$backend_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$backend_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$backend_pid" 2>/dev/null || true
        wait "$backend_pid" 2>/dev/null || true
    fi
    [[ -n $run_initrd ]] && rm -f "$run_initrd"
    # A QEMU killed hard may leave the terminal raw.
    [[ -t 0 ]] && stty sane 2>/dev/null
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $keep_state -eq 0 && $backend != external ]]; then
    rm -rf "$sock_dir" "$state_dir"/drive*.img "$state_dir"/qsd
fi
mkdir -p "$sock_dir"

start_vsicd() {
    [[ -x $bin_dir/vsicd ]] || {
        say "no $bin_dir/vsicd (cargo build --release -p vsicd)"
        exit 126
    }
    rm -f "$sock_dir"/*.sock
    say "starting vsicd ($vsics VSICs x $queues queues, state in $state_dir)"
    RUST_LOG=${RUST_LOG:-info} "$bin_dir/vsicd" --socket-dir "$sock_dir" \
        --drive "$state_dir/drive0.img,size=$drive_size" \
        --drive "$state_dir/drive1.img,size=$drive_size" \
        --vsics "$vsics" --queues "$queues" ${vsicd_args[@]+"${vsicd_args[@]}"} >"$state_dir/vsicd.log" 2>&1 &
    backend_pid=$!
}

start_qsd() {
    # Plain disks on the same sockets: boots the guest without vsicd.
    local i q sock img args=()
    command -v qemu-storage-daemon >/dev/null || {
        say "qemu-storage-daemon not found (qemu-utils)"
        exit 126
    }
    mkdir -p "$state_dir/qsd"
    rm -f "$sock_dir"/*.sock
    for ((i = 0; i <= vsics; i++)); do
        sock=$(vsic_socket_path "$sock_dir" "$i")
        img=$state_dir/qsd/$(basename "$sock" .sock).img
        [[ -e $img ]] || truncate -s 64M "$img"
        if [[ $i -eq 0 ]]; then q=1; else q=$queues; fi
        args+=(--blockdev "driver=file,node-name=d$i,filename=$img"
            --export "type=vhost-user-blk,id=e$i,node-name=d$i,addr.type=unix,addr.path=$sock,writable=on,num-queues=$q")
    done
    say "starting qemu-storage-daemon stand-in ($vsics VSICs)"
    qemu-storage-daemon "${args[@]}" >"$state_dir/qsd.log" 2>&1 &
    backend_pid=$!
}

wait_for_sockets() {
    local i sock deadline=$((SECONDS + 15))
    for i in $function_list; do
        sock=$(vsic_socket_path "$sock_dir" "$i")
        until [[ -S $sock ]]; do
            if [[ -n $backend_pid ]] && ! kill -0 "$backend_pid" 2>/dev/null; then
                say "backend exited before serving $sock; its log:"
                tail -n 20 "$state_dir"/{vsicd,qsd}.log 2>/dev/null >&2 || true
                exit 126
            fi
            if ((SECONDS >= deadline)); then
                say "backend did not create $sock within 15 s"
                exit 126
            fi
            sleep 0.05
        done
    done
}

case $backend in
vsicd) start_vsicd ;;
qsd) start_qsd ;;
external) say "using the backend already serving $sock_dir" ;;
esac
wait_for_sockets

run_hook() {
    local phase=$1
    [[ -n $host_hook ]] || return 0
    say "host hook: $host_hook $phase"
    VSIC_PHASE=$phase VSIC_STATE_DIR=$state_dir VSIC_SOCK_DIR=$sock_dir \
        VSIC_PF_SOCK=$sock_dir/pf.sock VSICCTL=$bin_dir/vsicctl VSIC_BIN_DIR=$bin_dir \
        VSIC_GUEST_BIN_DIR=$guest_bin_dir VSIC_VSICS=$vsics VSIC_QUEUES=$queues \
        bash -c "$host_hook \"\$1\"" host-hook "$phase" </dev/null
}
if ! run_hook pre; then
    say "host hook failed before boot"
    exit 1
fi

# --- power cut -----------------------------------------------------------------------
# Runs in the background while QEMU does: waits for QEMU's pid file (and the
# arming text), then the delay, then cuts the power and kills QEMU at once.
mgmt() { "$REPO/qemu-configs/vsic-mgmt" "$mgmt_sock" "$@"; }
power_cut_watch() {
    local pid reply
    until [[ -s $qemu_pidfile ]]; do sleep 0.05; done
    pid=$(cat "$qemu_pidfile")
    if [[ -n $power_cut_arm ]]; then
        until grep -a -q -F -- "$power_cut_arm" "$qemu_log" 2>/dev/null; do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.05
        done
        say "power cut armed by '$power_cut_arm'"
    fi
    sleep "$power_cut_delay"
    kill -0 "$pid" 2>/dev/null || return 0
    if reply=$(mgmt power-cut); then
        kill -KILL "$pid" 2>/dev/null || true
        printf '%s\n' "$reply" >"$power_cut_report"
        say "power cut $power_cut_delay s after $power_cut_from: $reply; QEMU killed"
    else
        kill -KILL "$pid" 2>/dev/null || true
        printf 'failed\n' >"$power_cut_report"
        say "power-cut failed (QEMU killed anyway)"
    fi
}
# After QEMU is gone: exits 0 when the power was cut (back on now), 3 when
# the guest stopped first, 4 when a management command failed. $1: QEMU's
# (or the timeout's) exit status, $2 the guest's reported status.
power_cut_outcome() {
    if [[ -n $watch_pid ]]; then
        wait "$watch_pid" 2>/dev/null || true
        watch_pid=
    fi
    if [[ ! -s $power_cut_report ]]; then
        if [[ $1 -eq 124 ]]; then
            say "guest timed out after $timeout s before the power cut"
            exit 124
        fi
        say "the guest stopped before the power cut (QEMU exit $1, guest status ${2:-none})"
        exit 3
    fi
    [[ $(cat "$power_cut_report") != failed ]] || exit 4
    if ! mgmt power-on >/dev/null; then
        say "power-on failed"
        exit 4
    fi
    say "power back on"
    run_hook post || say "host hook failed after the power cut"
    exit 0
}
if [[ -n $power_cut_after ]]; then
    rm -f "$power_cut_report" "$qemu_pidfile"
    [[ -z $run_script ]] || : >"$qemu_log"
    power_cut_from="QEMU started"
    [[ -z $power_cut_arm ]] || power_cut_from="'$power_cut_arm' appeared"
    say "power cut planned $power_cut_delay s after $power_cut_from"
    power_cut_watch &
    watch_pid=$!
fi

# --- guest ---------------------------------------------------------------------------
timeout_args=()
if [[ $timeout -gt 0 ]]; then
    timeout_args=(timeout -k 5 "$timeout")
    [[ -z $run_script ]] && timeout_args=(timeout --foreground -k 5 "$timeout")
fi
say "booting the guest (accel $accel, timeout ${timeout}s)"

if [[ -z $run_script ]]; then
    set +e
    ${timeout_args[@]+"${timeout_args[@]}"} qemu-system-x86_64 "${qemu_args[@]}"
    rc=$?
    set -e
    [[ -z $power_cut_after ]] || power_cut_outcome "$rc" ""
    if [[ $rc -eq 124 ]]; then
        say "guest timed out after $timeout s"
        exit 124
    fi
    run_hook post || say "host hook failed after the guest"
    exit "$rc"
fi

set +e
${timeout_args[@]+"${timeout_args[@]}"} qemu-system-x86_64 "${qemu_args[@]}" </dev/null 2>&1 |
    sed -u 's/\r$//' | tee "$qemu_log"
rc=${PIPESTATUS[0]}
set -e
if [[ -n $power_cut_after ]]; then
    power_cut_outcome "$rc" "$(grep -a -o 'VSIC-GUEST-EXIT status=[0-9]*' "$qemu_log" | tail -n1 | cut -d= -f2)"
fi
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    say "guest timed out after $timeout s"
    exit 124
fi
status=$(grep -a -o 'VSIC-GUEST-EXIT status=[0-9]*' "$qemu_log" | tail -n1 | cut -d= -f2)
if [[ -z $status ]]; then
    say "guest stopped without reporting a status (QEMU exit $rc); console log: $qemu_log"
    exit 125
fi
if ! run_hook post; then
    say "host hook failed after the guest"
    exit 1
fi
exit "$status"
exit
}
