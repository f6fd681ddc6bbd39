#!/usr/bin/env bash
# kluis against its peers, in one run on the same files: rage, Go age, gpg, `openssl enc` and
# cp (the physical limit), sealing and opening 1 GiB and 100 MiB files (file → file and →
# /dev/null) and a folder of 1,000 × 10 KiB files, through a real key server on loopback; then
# the key server load test (benches/server_load.sh). Installs the peers that are missing
# (apt: age gnupg openssl time; `cargo install rage --locked`), builds kluis (release), and
# runs benches/compare/compare.py, which prints a markdown report and writes it to
# target/compare/results.md. Takes about 8 minutes on 2 cores.
#
# Tuning (environment): COMPARE_REPS (default 5), COMPARE_REPS_BIG (1 GiB, default 3),
# COMPARE_REPS_LOOP (per-file shell loops, default 1), LOAD_SECONDS (default 5),
# COMPARE_SKIP_LOAD=1, COMPARE_QUICK=1 (small sizes, to check the harness).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

need=()
command -v age >/dev/null && command -v age-keygen >/dev/null || need+=(age)
command -v gpg >/dev/null || need+=(gnupg)
command -v openssl >/dev/null || need+=(openssl)
[ -x /usr/bin/time ] || need+=(time)
if ((${#need[@]})); then
    echo "compare: installing ${need[*]}" >&2
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${need[@]}" >&2
fi
if ! command -v rage >/dev/null || ! command -v rage-keygen >/dev/null; then
    echo "compare: installing rage (cargo install rage --locked; several minutes)" >&2
    cargo install rage --locked
fi
cargo build --release -q -p kluis -p kluis-server
exec python3 benches/compare/compare.py "$@"
