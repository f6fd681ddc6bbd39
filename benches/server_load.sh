#!/usr/bin/env bash
# Key server load test: builds kluis-server and the harness (release), installs wrk if it is
# missing, and runs the harness. LOAD_SECONDS (default 10) and LOAD_BATCH (default 100)
# tune it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release -q -p kluis-server -p kluis-benches --bin kluis-server --bin server_load
exec target/release/server_load
