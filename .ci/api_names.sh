#!/usr/bin/env bash
# kluis-core's root API stays small (issue 17): at most 30 names (items and modules) at the
# crate root, counted from the rustdoc output of `cargo doc -p kluis-core --no-deps`. The list
# and the reason for each name are in crates/kluis-core/src/lib.rs ("What is at the root").
set -euo pipefail
cd "$(dirname "$0")/.."
index=target/doc/kluis_core/index.html
[ -f "$index" ] || cargo doc -p kluis-core --no-deps --quiet
max=30
names=$(grep -oE '<a class="(mod|struct|enum|trait|fn|type|constant|static|macro|union|traitalias)" href="[^"]+"' "$index" |
  sed -E 's/.*href="([^"]+)"/\1/' | sort -u)
count=$(printf '%s\n' "$names" | grep -c .)
if [ "$count" -gt "$max" ]; then
  echo "kluis-core exports $count names at its root (at most $max):" >&2
  printf '  %s\n' $names >&2
  echo "move performance entry points to kluis_core::fast, limits to associated constants" >&2
  exit 1
fi
echo "kluis-core root API: $count names (at most $max)"
