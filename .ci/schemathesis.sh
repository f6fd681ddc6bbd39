#!/usr/bin/env bash
# CI: property-based tests of docs/openapi.yaml against the real key server.
#
# Starts `kluis-server serve` on loopback with a fresh store (label `hr` that alice may open,
# an API token for alice, rate limiting off), then:
#  1. positive paths: real org stanzas, sealed in Python (`cryptography`) to the served
#     labels, go through single and batch unwrap (granted, and refused with each code: the
#     extra labels `legal`, `medical` and `old` exist for that); every response is checked
#     against the document and every sealed reply opened;
#  2. schemathesis generates requests from the document (valid stanzas cannot be generated,
#     they are ciphertexts, so unwraps there mostly end in 400/401);
# then stops the server and verifies the audit trail the run left behind. Fails on any 5xx,
# any response the document does not describe (status, Content-Type, headers, body schema),
# a server that died during the run, or an audit chain that does not verify.
#
# Environment:
#   ST_MAX_EXAMPLES  test cases per operation and phase (default 100; about 30 s)
#   ST_SEED          a seed, to reproduce a run (schemathesis prints the one it used)
#   ST_REPORT_DIR    where the JUnit report goes (default target/schemathesis)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

max_examples="${ST_MAX_EXAMPLES:-100}"
report_dir="${ST_REPORT_DIR:-$root/target/schemathesis}"
case "$report_dir" in /*) ;; *) report_dir="$root/$report_dir" ;; esac

python3 -c 'import schemathesis' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check schemathesis
python3 -c 'import cryptography' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check cryptography
st=(python3 -m schemathesis.cli)

bin="$root/target/debug/kluis-server"
# Always build (a no-op when up to date), so a stale binary is never the one tested.
(cd "$root" && cargo build --quiet -p kluis-server --bin kluis-server)

work=$(mktemp -d "${TMPDIR:-/tmp}/kluis-schemathesis.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

store="$work/store"
mkdir -p "$store"
admin() { (cd "$store" && "$bin" "$@"); }
admin init >/dev/null
admin label create hr --user alice >/dev/null
# For the positive paths: a label alice may not open, a double-key label, and a label whose
# version 1 is destroyed and version 2 retired (version 3 current).
admin label create legal --user bob >/dev/null
admin label create medical --user alice --double-key >/dev/null
admin label create old --user alice >/dev/null
admin label rotate old >/dev/null
admin label rotate old >/dev/null
admin label retire old 2 >/dev/null
admin label destroy old 1 --confirm old >/dev/null
# Microsoft DKE (docs/DKE.md): a label with a DKE key that the Entra user alice@org.nl may
# open; an identity provider made here (an RSA key, its JWKS file); a [dke] table.
admin label create office --dke --user oidc:entra:alice@org.nl >/dev/null
python3 - "$work" <<'PY'
import base64, json, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
open(sys.argv[1] + "/idp.pem", "wb").write(k.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption()))
n = k.public_key().public_numbers()
b = lambda i: base64.urlsafe_b64encode(i.to_bytes((i.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
json.dump({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "n": b(n.n), "e": b(n.e)}]},
          open(sys.argv[1] + "/jwks.json", "w"))
PY
cat >"$work/kluis.toml" <<TOML
[dke]
audience = "https://dke.test"
issuers = ["https://sts.windows.net/tenant/"]
jwks_file = "$work/jwks.json"
TOML
token=$(admin token create --user alice 2>/dev/null)
case "$token" in
  kluis_*) ;;
  *) echo "schemathesis.sh: token create printed no token" >&2; exit 1 ;;
esac

# The server prints `listening on http://ADDR` once it accepts connections.
: >"$work/serve.out"
(cd "$store" && exec "$bin" serve --config "$work/kluis.toml" --listen 127.0.0.1:0 --insecure-http --rate-limit 0) \
  >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
base=
for _ in $(seq 1 400); do
  base=$(sed -n 's/^listening on //p' "$work/serve.out" || true)
  [ -n "$base" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.05
done
if [ -z "$base" ]; then
  echo "schemathesis.sh: the server did not start:" >&2
  cat "$work/serve.err" >&2
  exit 1
fi
echo "kluis-server listening on $base"

status=0

cat >"$work/positive.py" <<'PY'
# Positive paths that schemathesis cannot generate: real org stanzas sealed (with the
# `cryptography` package, from docs/FORMAT.md and DESIGN §4) to the served labels, sent as
# the document says, every response validated against the document and every granted reply
# opened with the caller's reply key.
import base64, os, sys
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_headers_conformance, response_schema_conformance,
    status_code_conformance)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

spec, base, token, work = sys.argv[1:5]
schema = schemathesis.openapi.from_path(spec)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
AUTH = {"Authorization": f"Bearer {token}"}
failures = 0

def call(path, method, expect, **kw):
    global failures
    case = schema[path][method].Case(**kw)
    try:
        r = case.call_and_validate(base_url=base, checks=CHECKS)
    except (Exception, BaseExceptionGroup) as e:  # a failed check: report it, go on
        print(f"FAIL {method} {path}: {e}")
        failures += 1
        return None
    if r.status_code != expect:
        print(f"FAIL {method} {path}: status {r.status_code}, expected {expect}: {r.text[:300]}")
        failures += 1
        return None
    print(f"ok   {method} {path} -> {r.status_code}")
    ctype = " ".join(r.headers.get("content-type", []))
    return r.json() if "json" in ctype else r.text

BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
def bech32_key(s):
    data = [BECH32.index(c) for c in s[s.rfind("1") + 1:]][:-6]
    acc = bits = 0
    out = bytearray()
    for v in data:
        acc, bits = (acc << 5) | v, bits + 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    assert len(out) == 32
    return bytes(out)

raw = lambda k: k.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
hkdf = lambda ikm, salt, info: HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)
b64 = lambda b: base64.b64encode(b).decode()

def stanza(pub, label, kid, kind, doc_id, share):
    e = X25519PrivateKey.generate()
    E = raw(e.public_key())
    w = hkdf(e.exchange(X25519PublicKey.from_public_bytes(pub)), E + pub, b"kluis/v1/org-x25519")
    head = bytes([len(label)]) + label.encode() + kid.to_bytes(4, "big") + bytes([kind])
    body = AESGCM(w).encrypt(bytes(12), share, b"kluis/v1/org" + doc_id + head)
    content = head + E + body
    return b64(bytes([1]) + len(content).to_bytes(2, "big") + content)

def record(label):
    return call("/v1/labels/{name}", "GET", 200, path_parameters={"name": label})

def key_of(rec, kid):
    return bech32_key(next(v["public_key"] for v in rec["versions"] if v["kid"] == kid))

def item(pub, label, kid, kind=1):
    doc, share = os.urandom(16), os.urandom(32)
    return {"doc_id": doc.hex(), "stanza": stanza(pub, label, kid, kind, doc, share)}, doc, share

def opener(reply, r):
    s = base64.b64decode(reply["server_key"])
    key = hkdf(r.exchange(X25519PublicKey.from_public_bytes(s)), s + raw(r.public_key()),
               b"kluis/v1/reply")
    return lambda sealed, doc: AESGCM(key).decrypt(
        base64.b64decode(sealed["nonce"]), base64.b64decode(sealed["share"]), doc)

def check_open(opens, what):
    global failures
    try:
        ok = opens()
    except Exception:
        ok = False
    if not ok:
        print(f"FAIL {what}: the sealed reply does not open to the share")
        failures += 1

call("/healthz", "GET", 200)
call("/readyz", "GET", 200)
call("/v1/labels", "GET", 200)
hr, legal, medical, old = (record(n) for n in ("hr", "legal", "medical", "old"))
if None in (hr, legal, medical, old):
    sys.exit("positive paths: the label records are unusable; stopping")
call("/v1/labels/{name}", "GET", 404, path_parameters={"name": "nope"})

# One granted single unwrap: the reply opens to the share.
r = X25519PrivateKey.generate()
it, doc, share = item(key_of(hr, hr["kid"]), "hr", hr["kid"])
v = call("/v1/unwrap", "POST", 200, headers=AUTH, media_type="application/json",
         body={"reply_key": b64(raw(r.public_key())), "reason": "schemathesis.sh", **it})
if v:
    check_open(lambda: opener(v, r)(v, doc) == share, "single unwrap")

# Each refusal in the single form, with its status.
refusals = [
    (item(key_of(legal, 1), "legal", 1)[0], 403),      # denied
    (item(key_of(medical, 1), "medical", 1)[0], 403),  # double_key_required
    (item(key_of(old, 2), "old", 2)[0], 403),          # retired
    (item(key_of(old, 1), "old", 1)[0], 410),          # destroyed
    (item(key_of(hr, 1), "hr", 99)[0], 404),           # unknown key version
    (item(key_of(hr, 1), "nope", 1)[0], 404),          # unknown label
    (dict(item(key_of(hr, 1), "hr", 1)[0], doc_id=os.urandom(16).hex()), 400),  # other doc
]
for it, status in refusals:
    call("/v1/unwrap", "POST", status, headers=AUTH, media_type="application/json",
         body={"reply_key": b64(raw(X25519PrivateKey.generate().public_key())), **it})
# A retired version opens to re-key.
it, doc, share = item(key_of(old, 2), "old", 2)
r = X25519PrivateKey.generate()
v = call("/v1/unwrap", "POST", 200, headers=AUTH, media_type="application/json",
         body={"reply_key": b64(raw(r.public_key())), "purpose": "rekey", **it})
if v:
    check_open(lambda: opener(v, r)(v, doc) == share, "rekey unwrap")

# A batch mixing granted items, the half of a double-key slot, and every refusal.
r = X25519PrivateKey.generate()
granted = [item(key_of(hr, hr["kid"]), "hr", hr["kid"]) for _ in range(3)]
granted.append(item(key_of(medical, 1), "medical", 1, kind=2))
items = [g[0] for g in granted] + [x[0] for x in refusals]
v = call("/v1/unwrap/batch", "POST", 200, headers=AUTH, media_type="application/json",
         body={"reply_key": b64(raw(r.public_key())), "reason": "schemathesis.sh batch",
               "items": items})
if v:
    open_ = opener(v, r)
    for (it, doc, share), res in zip(granted, v["items"]):
        check_open(lambda: open_(res, doc) == share, "batch item")
    codes = [res.get("error", {}).get("code") for res in v["items"][len(granted):]]
    want = ["denied", "double_key_required", "retired", "destroyed", "not_found", "not_found",
            "malformed"]
    if codes != want:
        print(f"FAIL batch refusals: {codes}, expected {want}")
        failures += 1
    elif "destroyed_ms" not in v["items"][len(granted) + 3]["error"]:
        print("FAIL batch: the destroyed item's error carries no destroyed_ms")
        failures += 1
    nonces = [res["nonce"] for res in v["items"] if "nonce" in res]
    if len(set(nonces)) != len(nonces):
        print("FAIL batch nonces repeat")
        failures += 1

# Batch-level refusals: no token, too many items.
it = item(key_of(hr, hr["kid"]), "hr", hr["kid"])[0]
call("/v1/unwrap/batch", "POST", 401, media_type="application/json",
     body={"reply_key": b64(raw(r.public_key())), "items": [it]})
call("/v1/unwrap/batch", "POST", 413, headers=AUTH, media_type="application/json",
     body={"reply_key": b64(raw(r.public_key())), "items": [it] * 1001})
call("/v1/me/audit", "GET", 401, headers={"Authorization": "Bearer kluis_revoked"})

# The caller's records, now with every field set; paging.
mine = call("/v1/me/audit", "GET", 200, headers=AUTH, query={"limit": 5})
if mine is not None:
    rest = call("/v1/me/audit", "GET", 200, headers=AUTH, query={"after": mine[-1]["seq"]})
    total = len(mine) + len(rest or [])
    if total != 1 + len(refusals) + 1 + len(items):
        print(f"FAIL /v1/me/audit: {total} records, expected {2 + len(refusals) + len(items)}")
        failures += 1
call("/metrics", "GET", 200)

# Microsoft DKE: fetch the key, encrypt as Office does, decrypt with an Entra-like token.
import json as _json, time
from cryptography.hazmat.primitives.asymmetric import padding, rsa as _rsa
idp = serialization.load_pem_private_key(open(work + "/idp.pem", "rb").read(), None)
def jwt(upn):
    enc = lambda o: base64.urlsafe_b64encode(_json.dumps(o).encode()).rstrip(b"=").decode()
    now = int(time.time())
    head = enc({"alg": "RS256", "typ": "JWT", "kid": "k1"})
    body = enc({"iss": "https://sts.windows.net/tenant/", "aud": "https://dke.test",
                "scp": "user_impersonation", "upn": upn, "sub": "s-" + upn, "iat": now,
                "exp": now + 600})
    sig = idp.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
dke = call("/dke/{keyName}", "GET", 200, path_parameters={"keyName": "office"})
call("/dke/{keyName}", "GET", 400, path_parameters={"keyName": "Office"})
if dke:
    key_id = dke["key"]["kid"].rsplit("/", 1)[1]
    n = int.from_bytes(base64.b64decode(dke["key"]["n"]), "big")
    pub = _rsa.RSAPublicNumbers(dke["key"]["e"], n).public_key()
    blob = os.urandom(44)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    ct = b64(pub.encrypt(blob, oaep))
    params = {"keyName": "office", "keyId": key_id}
    body = {"alg": "RSA-OAEP-256", "value": ct}
    v = call("/dke/{keyName}/{keyId}/decrypt", "POST", 200, path_parameters=params,
             headers={"Authorization": "Bearer " + jwt("Alice@org.nl")},
             media_type="application/json", body=body)
    if v and base64.b64decode(v["value"]) != blob:
        print("FAIL dke decrypt: not the value encrypted")
        failures += 1
    call("/dke/{keyName}/{keyId}/decrypt", "POST", 403, path_parameters=params,
         headers={"Authorization": "Bearer " + jwt("bob@org.nl")},
         media_type="application/json", body=body)
    call("/dke/{keyName}/{keyId}/decrypt", "POST", 401, path_parameters=params,
         headers=AUTH, media_type="application/json", body=body)
    call("/dke/{keyName}/{keyId}/decrypt", "POST", 400,
         path_parameters={"keyName": "office", "keyId": "9-00000000"},
         headers={"Authorization": "Bearer " + jwt("alice@org.nl")},
         media_type="application/json", body=body)
    call("/dke/{keyName}/{keyId}/decrypt", "POST", 400, path_parameters=params,
         headers={"Authorization": "Bearer " + jwt("alice@org.nl")},
         media_type="application/json", body={"alg": "RSA-OAEP-256", "value": b64(os.urandom(256))})
print(f"positive paths: {failures} failure(s)")
sys.exit(1 if failures else 0)
PY
echo "== positive paths"
# Both steps run in the temporary directory: hypothesis and schemathesis keep caches in the
# working directory.
(cd "$work" && python3 positive.py "$root/docs/openapi.yaml" "$base" "$token" "$work") || status=1

echo "== schemathesis"
mkdir -p "$report_dir"
st_args=(
  run "$root/docs/openapi.yaml"
  --url "$base"
  -H "Authorization: Bearer $token"
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance
  --max-examples "$max_examples"
  --workers 1  # several workers hit CPython 3.11 gh-106905 (ast is not thread-safe) in hypothesis
  --request-timeout 10
  --generation-database none
  --report junit
  --report-dir "$report_dir"
  --no-color
)
[ -n "${ST_SEED:-}" ] && st_args+=(--seed "$ST_SEED")

(cd "$work" && "${st[@]}" "${st_args[@]}") || status=1

# The server must have survived the run.
if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "schemathesis.sh: the server died during the run:" >&2
  cat "$work/serve.err" >&2
  status=1
else
  kill "$server_pid"
  wait "$server_pid" || {
    echo "schemathesis.sh: the server did not shut down cleanly:" >&2
    cat "$work/serve.err" >&2
    status=1
  }
fi
server_pid=

# Everything the run recorded (every unwrap whose stanza parsed, granted or refused) must chain.
if ! admin audit verify; then
  echo "schemathesis.sh: the audit trail does not verify" >&2
  status=1
fi

if [ "$status" -ne 0 ]; then
  echo "schemathesis.sh: FAILED (report: $report_dir)" >&2
fi
exit "$status"
