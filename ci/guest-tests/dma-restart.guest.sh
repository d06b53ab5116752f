#!/bin/sh
# DMA protection across a vsicd restart under the running guest
# (dma-restart.host.sh restarts it when asked; QEMU reconnects): alice's
# enforced VSIC comes back enforced, with none of its windows (they named
# memory of processes gone), never open; requests at her old windows, at a
# victim's buffer and at kernel data are refused and counted; the victim's
# memory is unchanged; new DMA memory from the service works again.
# launch: --vsics 2
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

add_user alice 1001
start_service
user_vsa_on_vsic alice 1001 0 16M 1
as_user 1001 "vsic-check write vsic:0 --slot 1 --len 1M --seed 5" || fail "alice's write failed"
[ "$(dma_windows_of 0)" -gt 0 ] || fail "alice got no windows"
old=$(vsicctl vsic dma-window list --vsic 0 --json | sed -n 's/.*"start": \([0-9]*\).*/\1/p' | head -n1)
oldhex=$(printf '0x%x' "$old")

rm -f /tmp/victim.done
vsic-hostile victim --len 64K --until /tmp/victim.done >/tmp/victim.out 2>&1 &
victim=$!
for _ in $(seq 100); do grep -q victim_gpa /tmp/victim.out && break; sleep 0.1; done
vgpa=$(sed -n 's/.*victim_gpa=\(0x[0-9a-f]*\).*/\1/p' /tmp/victim.out)
[ -n "$vgpa" ] || { cat /tmp/victim.out; fail "the victim did not start"; }

echo "VSIC-RESTART-BACKEND"
# The new vsicd has none of the old windows: wait for it.
for _ in $(seq 120); do
    n=$(dma_windows_of 0 2>/dev/null) || n=x
    [ "$n" = 0 ] && break
    sleep 1
done
[ "$n" = 0 ] || fail "VSIC 0 still has $n window(s) 2 minutes after the restart was asked for"
[ "$(dma_mode_of 0)" = enforced ] || fail "after the restart alice's VSIC is $(dma_mode_of 0)"
echo "after the restart: VSIC 0 enforced, no windows"

before=$(violations_of 0)
if ! as_user 1001 "vsic-hostile attack vsic:0 --slot 1 --offset 8M read:$oldhex:4096 write:$oldhex:4096 read:$vgpa:4096 write:$vgpa:4096 own" >/tmp/attack.out 2>&1; then
    cat /tmp/attack.out
    fail "after the restart a request outside alice's new windows was served, or her own I/O failed"
fi
cat /tmp/attack.out
after=$(violations_of 0)
[ $((after - before)) -eq 4 ] || fail "the protection counter moved by $((after - before)), not 4"
touch /tmp/victim.done
wait $victim || { cat /tmp/victim.out; fail "the victim's memory changed"; }
as_user 1001 "vsic-check verify vsic:0 --slot 1 --len 1M --seed 5" || fail "alice's data is gone"
echo "ok: protection held across the vsicd restart"
