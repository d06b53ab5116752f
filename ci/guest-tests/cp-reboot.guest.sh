#!/bin/sh
# Boot 1 of the persistence test (cp-reboot.host.sh boots twice more: the
# guest rebooted with the backend kept running, then a new backend process
# on the same drives). Creates the capability store on VSIC 2, VSAs whose
# capability files live in it with ordinary owners, and data written by an
# application through its VSIC.
# launch: --vsics 3
set -eu
# shellcheck source=ci/guest-tests/lib.sh
. /vsic/lib.sh

add_user alice 1001
add_user bob 1002

vsicctl store init --vsic 2 --size 32M
store=/var/lib/vsic
[ "$(stat -c '%u %a' $store/store.cap)" = "0 600" ] || fail "the store's own capability is not root's, mode 0600"
mkdir -p $store/caps/alice $store/caps/bob
chown 1001:1001 $store/caps/alice && chmod 0700 $store/caps/alice
chown 1002:1002 $store/caps/bob && chmod 0700 $store/caps/bob

vsicctl vsa create --size 16M --cap $store/caps/alice/data.cap
vsicctl cap derive --cap $store/caps/alice/data.cap --read-only --out $store/caps/bob/alice-ro.cap
chown 1001:1001 $store/caps/alice/data.cap
chown 1002:1002 $store/caps/bob/alice-ro.cap

start_service
vsicctl vsic bind --vsic 0 --vfio --user alice
as_user 1001 "vsicctl request-attach --vsic 0 --cap $store/caps/alice/data.cap --slot 1"
as_user 1001 "vsic-check write vsic:0 --slot 1 --len 8M --seed 42"
as_user 1001 "vsic-check verify vsic:0 --slot 1 --len 8M --seed 42"

# What the next boots must find again.
vsicctl list --json >$store/list.json
ls -ln $store/caps/*/ | tee $store/caps.ls
cat $store/list.json
umount $store
echo "ok: boot 1 stored capabilities and data"
