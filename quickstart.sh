#!/usr/bin/env bash
# The kluis quickstart. One command, after nothing but `git clone` and a Rust toolchain:
#
#   1. builds `kluis` and `kluis-server` (release),
#   2. starts a real key server on loopback with a fresh SQLite store in a temporary folder,
#      creates a label `hr` and an API token for alice,
#   3. seals a folder with a sample document with hidden names, as alice would before it
#      syncs to OneDrive, and shows that the sealed folder holds neither the text nor the name,
#   4. opens it again (one batch request to the key server, which audits it first),
#   5. prints alice's recorded openings and the verified audit trail,
#   6. stops the server cleanly (SIGTERM: in-flight requests finish, the trail is flushed).
#
# Everything lives in one temporary folder, removed at the end (KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building kluis and kluis-server (release; the first build takes a few minutes)"
cargo build --release --quiet -p kluis -p kluis-server
bin="$PWD/target/release"

work="$(mktemp -d "${TMPDIR:-/tmp}/kluis-quickstart.XXXXXX")"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

server() { "$bin/kluis-server" --store "$work/server/store.db" --key-file "$work/server/master.key" "$@"; }
mkdir -p "$work/server" "$work/alice"
# alice's kluis keeps its configuration, token and label cache here, not in your home folder.
export KLUIS_CONFIG_DIR="$work/alice/config" KLUIS_CACHE_DIR="$work/alice/cache"
kluis() { "$bin/kluis" "$@"; }

say "key server: a store, a label and a token"
server init
server label create hr --group hr-staff
server token create --user alice --group hr-staff > "$work/alice/token" 2>/dev/null
echo "token for alice written to $work/alice/token (shown once; the store keeps only a keyed hash)"

say "key server: serving on loopback (plain HTTP is allowed only there; use TLS otherwise)"
# Started directly (not through the shell function), so that $! is the server itself.
"$bin/kluis-server" --store "$work/server/store.db" --key-file "$work/server/master.key" \
    serve --listen 127.0.0.1:0 --insecure-http > "$work/server/serve.log" 2>&1 &
server_pid=$!
url=""
for _ in $(seq 1 100); do
    url="$(sed -n 's/^listening on //p' "$work/server/serve.log")"
    [ -n "$url" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server/serve.log"; exit 1; }
    sleep 0.1
done
[ -n "$url" ] || { echo "the key server did not start"; cat "$work/server/serve.log"; exit 1; }
echo "$url"

say "alice logs in"
kluis --server "$url" login --token-file "$work/alice/token"
kluis labels

say "alice's documents"
docs="$work/alice/Documents"
mkdir -p "$docs/Personnel files/2026"
doc="$docs/Personnel files/2026/Salary review J. Jansen.txt"
printf 'Salary review of J. Jansen, BSN 123456782.\nProposed: scale 11, step 4.\n' > "$doc"
(cd "$docs" && find . -type f | sed 's|^\./|  |')

say "seal with hidden names into the OneDrive folder"
onedrive="$work/alice/OneDrive"
kluis seal --label hr --hide-names -o "$onedrive" "$docs/Personnel files"
echo "what OneDrive (and Microsoft) gets to see:"
(cd "$onedrive" && find . -type f | sed 's|^\./|  |')
for needle in "Jansen" "123456782" "Salary" "Personnel"; do
    if grep -rqa -- "$needle" "$onedrive" || (cd "$onedrive" && find . | grep -q -- "$needle"); then
        echo "FAILED: '$needle' is visible in the sealed folder"; exit 1
    fi
done
echo "neither the text nor any file or folder name appears in the sealed folder (checked: Jansen, 123456782, Salary, Personnel)"

say "inspect a sealed file (no key needed)"
kluis inspect "$onedrive"/*.kluis

say "open it again: one batch request; the key server audits before it answers"
restored="$work/alice/Restored"
kluis open --reason "quickstart" -o "$restored" "$onedrive"
(cd "$restored" && find . -type f | sed 's|^\./|  |')
cmp "$doc" "$restored/Personnel files/2026/Salary review J. Jansen.txt"
echo "restored byte for byte:"
sed 's/^/  /' "$restored/Personnel files/2026/Salary review J. Jansen.txt"

say "alice's recorded openings (GET /v1/me/audit)"
kluis audit

say "the key server's audit trail"
kill -TERM "$server_pid"
wait "$server_pid" || true
server_pid=""
grep -q "audit trail is flushed" "$work/server/serve.log" ||
    { echo "the key server did not stop cleanly:"; cat "$work/server/serve.log"; exit 1; }
server audit export
server audit verify

say "done: the key server stopped cleanly (SIGTERM; its log says the audit trail is flushed)"
