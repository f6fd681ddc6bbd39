#!/usr/bin/env bash
# Microsoft DKE load test: builds kluis-server and the harness (release), installs wrk if it is
# missing, and runs the harness: decrypts/s at concurrency 1, 16 and 64 with the audit trail
# on, beside raw aws-lc-rs RSA-2048 OAEP decrypts/s on the same cores. LOAD_SECONDS (default
# 10) tunes it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release -q -p kluis-server -p kluis-benches --bin kluis-server --bin dke_load
exec target/release/dke_load
