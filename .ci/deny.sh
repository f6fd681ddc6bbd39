#!/usr/bin/env bash
# Supply-chain gate: cargo-deny over the whole workspace with every feature (deny.toml).
#
#   advisories  RustSec vulnerabilities, unsound/unmaintained crates, yanked versions
#   bans        wildcard version requirements (error), duplicate versions (warning)
#   licenses    every crate's licence on the allow-list in deny.toml
#   sources     crates.io only
#
# The advisory check needs the RustSec database, cloned from GitHub. When it cannot be fetched
# (an offline or registry-only build machine), this script says so loudly, uses a local copy
# if one exists (and says how old it is), and otherwise runs the other three checks only.
# Set KLUIS_DENY_REQUIRE_ADVISORIES=1 (release builds) to fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# The deny.toml schema needs cargo-deny 0.18 or newer; 0.20.2 is the version it was tested with.
CARGO_DENY_VERSION="${CARGO_DENY_VERSION:-0.20.2}"

usable() {
  local v
  v="$(cargo deny --version 2>/dev/null | awk '{print $2}')" || return 1
  [ -n "$v" ] || return 1
  local major minor
  IFS=. read -r major minor _ <<<"$v"
  [ "$major" -gt 0 ] || [ "$minor" -ge 18 ]
}

if ! usable; then
  echo "deny.sh: installing cargo-deny $CARGO_DENY_VERSION (once; takes several minutes)" >&2
  cargo install cargo-deny --locked --version "$CARGO_DENY_VERSION"
fi

banner() {
  local line='!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
  printf '\n%s\n' "$line" >&2
  local m
  for m in "$@"; do printf '!!! %s\n' "$m" >&2; done
  printf '%s\n\n' "$line" >&2
}

db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"

if fetch_log="$(cargo deny fetch db 2>&1)"; then
  echo "deny.sh: advisory database fetched; running all checks" >&2
  exec cargo deny --all-features check
fi

reason="$(printf '%s\n' "$fetch_log" | grep -m1 '^fatal:' ||
  printf '%s\n' "$fetch_log" | grep -m1 -i 'error' || true)"
local_db=""
for d in "$db_root"/advisory-db-*; do
  if [ -d "$d/crates" ]; then
    local_db="$d"
    break
  fi
done

if [ -n "$local_db" ]; then
  age="$(git -C "$local_db" log -1 --format=%cd --date=short 2>/dev/null || echo 'unknown date')"
  msg=(
    "ADVISORY DATABASE COULD NOT BE FETCHED: ${reason:-see the log above}"
    "Checking advisories against a LOCAL COPY last updated $age ($local_db)."
    "Advisories published since then are NOT checked."
  )
  banner "${msg[@]}"
  if [ "${KLUIS_DENY_REQUIRE_ADVISORIES:-0}" = 1 ]; then
    banner "KLUIS_DENY_REQUIRE_ADVISORIES=1: a stale database is not good enough. FAILING."
    exit 1
  fi
  status=0
  cargo deny --all-features --offline check || status=$?
  banner "${msg[@]}"
  exit "$status"
fi

msg=(
  "ADVISORY DATABASE COULD NOT BE FETCHED: ${reason:-see the log above}"
  "and there is no local copy. THE ADVISORIES CHECK DID NOT RUN:"
  "known vulnerabilities, unmaintained and yanked crates were NOT checked."
  "Only 'bans licenses sources' ran. Run .ci/deny.sh where github.com is reachable."
)
banner "${msg[@]}"
status=0
cargo deny --all-features check bans licenses sources || status=$?
banner "${msg[@]}"
if [ "${KLUIS_DENY_REQUIRE_ADVISORIES:-0}" = 1 ]; then
  echo "deny.sh: KLUIS_DENY_REQUIRE_ADVISORIES=1 and advisories were not checked: failing" >&2
  exit 1
fi
exit "$status"
