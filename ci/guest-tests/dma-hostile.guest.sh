#!/bin/sh
# A hostile application on its own VSIC (bound to alice, so enforced, with
# windows only for the DMA memory the service handed her) points request
# buffers at another process's buffer, at memory the kernel owns and at its
# own rings: every such request fails, the VSIC's protection counter moves
# once per request, the victim's memory is unchanged (the victim checks
# it), nothing the device was pointed at leaks into the VSA, and the same
# application works normally within its windows before and after.
# launch: --vsics 2
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

add_user alice 1001
start_service

user_vsa_on_vsic alice 1001 0 16M 1

# The victim: another process holding a known pattern in pinned memory.
rm -f /tmp/victim.done
vsic-hostile victim --len 64K --until /tmp/victim.done >/tmp/victim.out 2>&1 &
victim=$!
for _ in $(seq 100); do grep -q victim_gpa /tmp/victim.out && break; sleep 0.1; done
vgpa=$(sed -n 's/.*victim_gpa=\(0x[0-9a-f]*\).*/\1/p' /tmp/victim.out)
[ -n "$vgpa" ] || { cat /tmp/victim.out; fail "the victim did not start"; }

# Memory the kernel owns: its data section (root sees the addresses).
kdata=$(awk -F' : ' '$2 == "Kernel data" { gsub(/ /, "", $1); print $1; exit }' /proc/iomem)
[ -n "$kdata" ] || { cat /proc/iomem; fail "no Kernel data range in /proc/iomem"; }
kgpa=0x${kdata%-*}
echo "victim buffer at $vgpa, kernel data at $kgpa"

before=$(violations_of 0)
if ! as_user 1001 "vsic-hostile attack vsic:0 --slot 1 own read:$vgpa:4096 write:$vgpa:4096 read:$kgpa:4096 write:$kgpa:4096 ring-read ring-write own" >/tmp/attack.out 2>&1; then
    cat /tmp/attack.out
    fail "a hostile request was served, leaked, or the application failed within its windows"
fi
cat /tmp/attack.out
after=$(violations_of 0)
[ "$(grep -c 'outcome=refused' /tmp/attack.out)" -eq 6 ] || fail "not every hostile request was refused"
[ "$(grep -c 'probe=own outcome=ok' /tmp/attack.out)" -eq 2 ] || fail "alice's own I/O did not work"
[ $((after - before)) -eq 6 ] || fail "the protection counter moved by $((after - before)), not 6"

touch /tmp/victim.done
wait $victim || { cat /tmp/victim.out; fail "the victim's memory changed"; }
grep -q victim=unchanged /tmp/victim.out || fail "the victim did not check its memory"
# The kernel is still fine: a write to its data would have shown by now.
echo 3 >/proc/sys/vm/drop_caches
as_user 1001 "vsic-check write vsic:0 --slot 1 --len 1M --seed 9" || fail "alice's VSIC stopped working"
echo "ok: 6 hostile requests refused and counted, victim unchanged, nothing leaked"
