#!/usr/bin/env bash
# kluis sync benchmark (docs/BENCHMARKS.md, "kluis sync"): a real kluis-server on loopback and
# the real `kluis` binary (release builds). Measures
#   1. the first sync of N (10,000) × 10 KiB files plain → sealed (one device),
#   2. the first sync of those sealed files → a second device's empty plain folder,
#   3. seal latency under --watch: from the last write of a file to its sealed file in place,
#   4. the idle CPU of a watching process over 10 s (utime + stime from /proc/PID/stat).
# SYNC_FILES overrides N. Not a test: figures only.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${SYNC_FILES:-10000}
profile=${SYNC_PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release -q -p kluis -p kluis-server --bin kluis --bin kluis-server
else
  cargo build -q -p kluis -p kluis-server --bin kluis --bin kluis-server
fi
bin=$PWD/target/$([ "$profile" = release ] && echo release || echo debug)
work=$(mktemp -d)
trap 'kill $server_pid $watch_pid 2>/dev/null || true; rm -rf "$work"' EXIT
server_pid= watch_pid=
srv() { "$bin/kluis-server" --store "$work/store.db" --key-file "$work/master.key" "$@"; }
srv init >/dev/null 2>&1
srv label create hr --group hr-staff >/dev/null 2>&1
token=$(srv token create --user alice --group hr-staff 2>/dev/null)
"$bin/kluis-server" --store "$work/store.db" --key-file "$work/master.key" \
  serve --listen 127.0.0.1:0 --insecure-http >"$work/serve.out" 2>/dev/null &
server_pid=$!
for _ in $(seq 100); do grep -q listening "$work/serve.out" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/serve.out")

dev() { # dev NAME ARGS...: kluis as device NAME
  local d=$1; shift
  KLUIS_CONFIG_DIR="$work/$d/config" KLUIS_CACHE_DIR="$work/$d/cache" "$bin/kluis" "$@"
}
for d in a b; do
  mkdir -p "$work/$d/config" "$work/$d/cache" "$work/$d/plain"
  echo "$token" | dev "$d" --server "$url" login >/dev/null
done
mkdir -p "$work/cloud"
python3 - "$work/a/plain" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"dir{i // 500:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(10240))
PY
now() { date +%s.%N; }
t0=$(now)
dev a --quiet sync "$work/a/plain" "$work/cloud" --label hr --hide-names --settle-ms 0
t1=$(now)
dev b --quiet sync "$work/b/plain" "$work/cloud" --label hr --hide-names --settle-ms 0
t2=$(now)
sealed=$(find "$work/cloud" -name '*.kluis' | wc -l)
opened=$(find "$work/b/plain" -type f | wc -l)
printf 'first sync plain -> sealed: %d files in %.2f s\n' "$sealed" "$(echo "$t1 - $t0" | bc)"
printf 'first sync sealed -> plain: %d files in %.2f s\n' "$opened" "$(echo "$t2 - $t1" | bc)"

KLUIS_CONFIG_DIR="$work/a/config" KLUIS_CACHE_DIR="$work/a/cache" \
  "$bin/kluis" --quiet sync "$work/a/plain" "$work/cloud" --label hr --hide-names --watch &
watch_pid=$!
sleep 3
for i in 1 2 3 4 5; do
  before=$(find "$work/cloud" -maxdepth 1 -name '*.kluis' | wc -l)
  head -c 10240 /dev/urandom >"$work/a/plain/latency-$i.bin"
  t0=$(now)
  while [ "$(find "$work/cloud" -maxdepth 1 -name '*.kluis' | wc -l)" -le "$before" ]; do sleep 0.01; done
  t1=$(now)
  printf 'seal latency after the last write (run %d): %.3f s\n' "$i" "$(echo "$t1 - $t0" | bc)"
  sleep 1
done
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$watch_pid/stat"; }
c0=$(ticks); sleep 10; c1=$(ticks)
hz=$(getconf CLK_TCK)
printf 'idle CPU of the watching process over 10 s: %d ticks (%.3f s of CPU, %.2f %%)\n' \
  "$((c1 - c0))" "$(echo "($c1 - $c0) / $hz" | bc -l)" "$(echo "($c1 - $c0) / $hz * 10" | bc -l)"
echo "rss of the watching process: $(awk '/VmRSS/ {print $2, $3}' "/proc/$watch_pid/status")"
echo "(kluis sync watching $(find "$work/a/plain" -type f | wc -l) files)"
