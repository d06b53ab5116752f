#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each (default 60 s).
#   ci/fuzz.sh [SECONDS] [TARGET...]
# Needs cargo-fuzz (installed from crates.io when missing). The machine has a
# stable toolchain only; RUSTC_BOOTSTRAP lets it accept the sanitizer flags
# cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
failed=0
for t in "${targets[@]}"; do
    echo "fuzz: $t for ${seconds}s"
    mkdir -p "fuzz/corpus/$t"
    # Seeds (valid commands) let the fuzzer reach every opcode quickly.
    if [ -d "fuzz/seeds/$t" ]; then cp -n fuzz/seeds/"$t"/* "fuzz/corpus/$t/"; fi
    if cargo fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 2>&1 \
        | grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|==[0-9]+==|SUMMARY|thread .* panicked)|Done [0-9]+ runs'; then :; fi
    if [ "${PIPESTATUS[0]}" -ne 0 ]; then
        echo "fuzz: $t FAILED (crash input under fuzz/artifacts/$t)"
        failed=1
    else
        echo "fuzz: $t ok"
    fi
done
rm -f /dev/shm/vsic-fuzz-admin-*.img "${TMPDIR:-/tmp}"/vsic-fuzz-admin-*.img
exit $failed
