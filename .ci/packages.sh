#!/usr/bin/env bash
# Debian packages: build kluis-server and kluis with cargo-deb, install both with dpkg -i, run
# the installed binaries, check the installed systemd unit with `systemd-analyze verify`, start
# the installed server by hand (there is no systemd PID 1 here) as the package's user with the
# shipped configuration, a temporary store, TLS and a 0400 key file (as LoadCredential makes it),
# ask /healthz and /readyz, then remove the packages. Installs what it needs (cargo-deb,
# systemd-analyze) itself. Prints its own duration at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
say() { printf 'packages: %s\n' "$*"; }

need_apt=()
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v adduser >/dev/null || need_apt+=(adduser)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
  say "installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

# One release build of both binaries, then package without rebuilding.
cargo build --release --locked -p kluis-server -p kluis
out=target/debian
mkdir -p "$out"
rm -f "$out"/kluis-server.deb "$out"/kluis.deb
cargo deb --no-build -p kluis-server -o "$out/kluis-server.deb"
cargo deb --no-build -p kluis -o "$out/kluis.deb"
dpkg-deb --info "$out/kluis-server.deb" | sed -n '/Package:/,/Description:/p'

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  dpkg -r kluis-server kluis >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

dpkg -i "$out/kluis-server.deb" "$out/kluis.deb"

# The installed binaries answer.
/usr/bin/kluis-server --version
/usr/bin/kluis --version

# What postinst set up: the user, the state directory, the configuration's owner; no service.
fail() { say "FAILED: $*" >&2; exit 1; }
getent passwd kluis-server >/dev/null || fail "no user kluis-server"
[ "$(stat -c '%U:%G %a' /var/lib/kluis-server)" = "kluis-server:kluis-server 700" ] ||
  fail "/var/lib/kluis-server is $(stat -c '%U:%G %a' /var/lib/kluis-server)"
[ "$(stat -c '%U:%G %a' /etc/kluis-server/config.toml)" = "root:kluis-server 640" ] ||
  fail "/etc/kluis-server/config.toml is $(stat -c '%U:%G %a' /etc/kluis-server/config.toml)"
dpkg-query -W -f='${Conffiles}\n' kluis-server | grep -q '/etc/kluis-server/config.toml' ||
  fail "config.toml is not a conffile"

# The installed unit: syntax, directives, the binary path, specifiers. verify exits 0 on
# warnings too, so its output must be empty.
unit=/lib/systemd/system/kluis-server.service
[ -f "$unit" ] || fail "$unit missing"
verify=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify warns: $verify"
systemd-analyze security --offline=true "$unit" 2>/dev/null | tail -n 1 || true

# The installed server, as the service would run it: user kluis-server, the shipped
# configuration (its store and TLS paths overridden), a key file of mode 0400 like the one
# LoadCredential gives, TLS from a throwaway CA on loopback.
chown kluis-server:kluis-server "$work"
chmod 0700 "$work"
as_user() { setpriv --reuid=kluis-server --regid=kluis-server --init-groups -- "$@"; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chown kluis-server:kluis-server "$work"/*.pem
export KLUIS_STORE="$work/store.db" KLUIS_TLS_CERT="$work/cert.pem" KLUIS_TLS_KEY="$work/key.pem"
as_user /usr/bin/kluis-server --config /etc/kluis-server/config.toml --key-file "$work/master.key" init >/dev/null
chmod 0400 "$work/master.key"
as_user /usr/bin/kluis-server --config /etc/kluis-server/config.toml --key-file "$work/master.key" \
  label create ci --user ci-user >/dev/null
: >"$work/serve.out"
: >"$work/serve.err"
# setpriv directly (not through the as_user function, which would run in a subshell), so that
# $! is the server's own process id.
setpriv --reuid=kluis-server --regid=kluis-server --init-groups -- \
  /usr/bin/kluis-server --config /etc/kluis-server/config.toml --key-file "$work/master.key" \
  serve --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
url=
for _ in $(seq 1 100); do
  url=$(sed -n 's|^listening on \(https://[^ ]*\)$|\1|p' "$work/serve.out")
  [ -n "$url" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.err" >&2; fail "the installed server exited"; }
  sleep 0.1
done
[ -n "$url" ] || { cat "$work/serve.err" >&2; fail "the installed server did not start"; }
url=${url/127.0.0.1/localhost}
ca=(--cacert "$work/cert.pem" --resolve "localhost:${url##*:}:127.0.0.1" --max-time 10 -fsS)
[ "$(curl "${ca[@]}" "$url/healthz")" = ok ] || fail "/healthz"
curl "${ca[@]}" -o /dev/null "$url/readyz" || fail "/readyz"
curl "${ca[@]}" "$url/v1/labels" | grep -q '"ci"' || fail "/v1/labels does not list the label"
kill -TERM "$server_pid"
rc=0
wait "$server_pid" || rc=$?
server_pid=
[ "$rc" = 0 ] || { cat "$work/serve.err" >&2; fail "the installed server exited $rc on SIGTERM, not 0"; }
grep -q 'audit trail is flushed' "$work/serve.err" ||
  { cat "$work/serve.err" >&2; fail "the installed server did not say it flushed the audit trail"; }

# Remove: the binaries go; the user, the state directory and (on purge) nothing of the data.
touch /var/lib/kluis-server/.packages-ci-sentinel
dpkg -P kluis-server kluis >/dev/null
[ ! -e /usr/bin/kluis-server ] && [ ! -e /usr/bin/kluis ] || fail "binaries left after removal"
[ -e /var/lib/kluis-server/.packages-ci-sentinel ] || fail "purge deleted the state directory"
rm -f /var/lib/kluis-server/.packages-ci-sentinel
say "built, installed, ran, verified and removed kluis-server and kluis in $(($(date +%s) - started)) s"
