#!/usr/bin/env bash
# Key server load test: builds kluis-server and the harness (release), installs wrk and
# PostgreSQL (Debian's package; the harness starts its own throwaway cluster) if they are
# missing, and runs the harness: SQLite, PostgreSQL with one replica and with two replicas,
# side by side. LOAD_SECONDS (default 10), LOAD_BATCH (100), LOAD_RUNS (3 rounds; the
# summary is their median) and LOAD_PG_SETTINGS (e.g. commit_delay=200,commit_siblings=2)
# tune it; see benches/src/bin/server_load.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ -n "${KLUIS_PG_BIN:-}" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi
cargo build --release -q -p kluis-server -p kluis-benches --bin kluis-server --bin server_load
exec target/release/server_load
