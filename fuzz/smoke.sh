#!/usr/bin/env bash
# Smoke-fuzz every target for a short while; fails if any target crashes.
#
#   fuzz/smoke.sh                 # all targets, 20 s each
#   FUZZ_SECONDS=300 fuzz/smoke.sh open header
#
# Every target runs even after a crash; the exit status is non-zero if any crashed.
# Works from any directory. New inputs go to fuzz/corpus/<target>/ (git-ignored); the
# checked-in seeds in fuzz/seeds/<target>/ are read too. Crashes land in fuzz/artifacts/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

seconds="${FUZZ_SECONDS:-20}"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=(header open metadata stanza public_key identity_file jwt
        unwrap_request label_record server_config cli_config rekey_journal
        dke_request sync_journal store_url)
fi

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

summary=()
failed=()
for target in "${targets[@]}"; do
    echo "==> fuzzing $target for ${seconds}s"
    mkdir -p "corpus/$target" "seeds/$target"
    if cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 | tee "$logs/$target.log"; then
        runs="$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 execs in \2 s/p' \
            "$logs/$target.log" | tail -n 1)"
        summary+=("ok      $target: ${runs:-?}")
    else
        failed+=("$target")
        summary+=("FAILED  $target: crashed (fuzz/artifacts/$target/) or did not build")
    fi
done

echo "==> summary"
printf '    %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "==> crashes in: ${failed[*]}" >&2
    exit 1
fi
