#!/usr/bin/env python3
"""Run every kluis v1 test vector (crates/kluis-core/tests/vectors/*.vec, and the key server
reply vectors *.rvec) through the independent Python reader in kluis_reader.py. File format
per the vectors README.

Usage: python3 interop/python/check_vectors.py [-v] [VECTOR_DIR]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import kluis_reader as kr  # noqa: E402

DEFAULT_DIR = HERE.parent.parent / "crates" / "kluis-core" / "tests" / "vectors"

EXPECT_TO_KIND = {
    "not-sealed": "NotSealed",
    "unsupported-version": "UnsupportedVersion",
    "header-size": "HeaderSize",
    "slot-count": "SlotCount",
    "stanza-body-length": "StanzaBodyLength",
    "malformed-header": "MalformedHeader",
    "no-matching-key": "NoMatchingKey",
    "header-mac": "HeaderMac",
    "metadata": "Metadata",
    "chunk-auth": "ChunkAuth",
    "truncated": "Truncated",
    "trailing-data": "TrailingData",
    "size-mismatch": "SizeMismatch",
    "zero-shared-secret": "ZeroSharedSecret",
    "unwrap": "Unwrap",
}

KEY_LINES = ("identity", "label-key", "refusing-label")
SUCCESS_ONLY = ("plaintext", "plaintext-rule", "plaintext-len", "plaintext-sha256",
                "name", "size", "padding", "modified")
SINGLE = ("expect",) + SUCCESS_ONLY
MULTI = ("comment",) + KEY_LINES
REQUIRED_ON_SUCCESS = ("plaintext-len", "plaintext-sha256", "size", "padding", "modified")


class VectorFileError(Exception):
    pass


def parse_vec(path: Path):
    text = path.read_bytes().decode("utf-8")
    head, sep, body = text.partition("\n\n")
    if not sep:
        # a header with no blank line at all: treat everything as header, empty body
        head, body = text.rstrip("\n"), ""
    fields = {}
    holders = []
    for line in head.split("\n"):
        if ":" not in line:
            raise VectorFileError(f"header line without ':': {line!r}")
        key, value = line.split(":", 1)
        if value.startswith(" "):
            value = value[1:]
        if key in SINGLE:
            if key in fields:
                raise VectorFileError(f"repeated key {key!r}")
            fields[key] = value
        elif key in MULTI:
            fields.setdefault(key, [])
            if key == "comment":
                continue
            parts = value.split(" ")
            if key == "identity":
                if len(parts) != 1:
                    raise VectorFileError(f"bad identity line {value!r}")
                holders.append(kr.Identity(_hex32(parts[0])))
            elif key == "label-key":
                if len(parts) != 3:
                    raise VectorFileError(f"bad label-key line {value!r}")
                holders.append(kr.LabelKey(parts[0].encode("ascii"), int(parts[1], 10),
                                           _hex32(parts[2])))
            else:  # refusing-label
                if len(parts) != 2:
                    raise VectorFileError(f"bad refusing-label line {value!r}")
                holders.append(kr.RefusingLabel(parts[0].encode("ascii"), int(parts[1], 10)))
        else:
            raise VectorFileError(f"unknown key {key!r}")
    if "expect" not in fields:
        raise VectorFileError("no expect line")
    expect = fields["expect"]
    if expect == "success":
        for k in REQUIRED_ON_SUCCESS:
            if k not in fields:
                raise VectorFileError(f"success vector without {k!r}")
        if "plaintext" in fields and "plaintext-rule" in fields:
            raise VectorFileError("both plaintext and plaintext-rule")
    else:
        if expect not in EXPECT_TO_KIND:
            raise VectorFileError(f"unknown expect value {expect!r}")
        extra = [k for k in SUCCESS_ONLY if k in fields]
        if extra:
            raise VectorFileError(f"success-only keys on a failure vector: {extra}")
    b64 = "".join(body.split())
    try:
        data = base64.b64decode(b64, validate=True)
    except binascii.Error as e:
        raise VectorFileError(f"bad base64: {e}") from None
    return fields, holders, data


def _hex32(s: str) -> bytes:
    b = bytes.fromhex(s)
    if len(b) != 32 or len(s) != 64:
        raise VectorFileError(f"expected 64 hex digits, got {s!r}")
    return b


def check_success(fields, opened: kr.Opened):
    """Returns a list of mismatch descriptions (empty when everything matches)."""
    problems = []
    pt = opened.content
    n = int(fields["plaintext-len"], 10)
    if len(pt) != n:
        problems.append(f"plaintext length {len(pt)} != {n}")
    digest = hashlib.sha256(pt).hexdigest()
    if digest != fields["plaintext-sha256"].lower():
        problems.append("plaintext sha256 differs")
    if "plaintext" in fields and pt != bytes.fromhex(fields["plaintext"]):
        problems.append("plaintext bytes differ")
    if "plaintext-rule" in fields:
        rule = fields["plaintext-rule"]
        if rule != "i mod 251":
            problems.append(f"unknown plaintext-rule {rule!r}")
        elif pt != bytes(i % 251 for i in range(n)):
            problems.append("plaintext does not follow 'i mod 251'")
    meta = opened.metadata
    want_name = fields.get("name", "")
    if meta.name != want_name:
        problems.append(f"name {meta.name!r} != {want_name!r}")
    want_size = None if fields["size"] == "none" else int(fields["size"], 10)
    if meta.size != want_size:
        problems.append(f"size {meta.size} != {want_size}")
    if meta.padding != int(fields["padding"], 10):
        problems.append(f"padding {meta.padding} != {fields['padding']}")
    mod = fields["modified"]
    if mod == "none":
        want_mtime = None
    else:
        secs, nanos = mod.split(" ")
        want_mtime = (int(secs, 10), int(nanos, 10))
    if meta.mtime != want_mtime:
        problems.append(f"modified {meta.mtime} != {want_mtime}")
    return problems


def run_one(path: Path):
    """Returns (ok, message)."""
    try:
        fields, holders, data = parse_vec(path)
    except (VectorFileError, ValueError, UnicodeDecodeError) as e:
        return False, f"bad vector file: {e}"
    expect = fields["expect"]
    try:
        opened = kr.open_document(data, holders)
    except kr.KluisError as e:
        if expect == "success":
            return False, f"expected success, got {e.kind} ({e.detail})"
        want = EXPECT_TO_KIND[expect]
        if e.kind == want:
            return True, f"{e.kind}"
        return False, f"expected {want}, got {e.kind} ({e.detail})"
    except Exception as e:  # a crash in the reader is a failure, not a pass
        return False, f"reader crashed: {type(e).__name__}: {e}"
    if expect != "success":
        return False, f"expected {EXPECT_TO_KIND[expect]}, but the document opened"
    problems = check_success(fields, opened)
    if problems:
        return False, "success but " + "; ".join(problems)
    return True, f"success ({len(opened.content)} bytes, slot {opened.slot_index})"


def run_reply(path: Path):
    """A reply vector (*.rvec, §15). Returns (ok, message)."""
    try:
        lines = path.read_text("utf-8").splitlines()
        f = {}
        items = []
        for line in lines:
            key, _, value = line.partition(": ")
            if key == "item":
                items.append(value.split(" "))
            elif key != "comment":
                f[key] = value
        r = bytes.fromhex(f["client-secret"])
        s = bytes.fromhex(f["server-secret"])
        big_s = bytes.fromhex(f["server-public"])
        expect = f["expect"]
    except (KeyError, ValueError) as e:
        return False, f"bad reply vector file: {e}"
    try:
        rk = kr.reply_key(r, big_s)
    except kr.KluisError as e:
        if expect == "zero-shared-secret" and e.kind == "ZeroSharedSecret":
            return True, "ZeroSharedSecret"
        return False, f"expected {expect}, got {e.kind}"
    if expect != "ok":
        return False, f"expected {expect}, but the reply key derived"
    if kr.x25519_public(s) != big_s:
        return False, "server-public is not X25519(server-secret, 9)"
    j = 0  # §15: j counts released shares; a refused item takes none
    results = []
    for item in items:
        doc_id = bytes.fromhex(item[0])
        if item[1:] == ["refused"]:
            results.append("Unwrap(refused)")
            continue
        _, nonce_hex, body_hex, want = item[1:]
        nonce, body = bytes.fromhex(nonce_hex), bytes.fromhex(body_hex)
        try:
            share = kr.open_reply_item(rk, doc_id, nonce, body)
        except kr.KluisError as e:
            if want != "fails":
                return False, f"item {doc_id.hex()}: {e.kind}, expected a share"
            results.append(e.kind)
            j += 1
            continue
        if want == "fails" or share != bytes.fromhex(want):
            return False, f"item {doc_id.hex()}: opened to the wrong share"
        # Server side: a counter-form nonce must be item j's, with the body §15 gives.
        if nonce[:4] == bytes(4) and kr.seal_reply_item(rk, j, doc_id, share) != (nonce, body):
            return False, f"item {doc_id.hex()}: not sealed as released share j = {j}"
        results.append("share")
        j += 1
    return True, ", ".join(results)


def main(argv) -> int:
    args = [a for a in argv[1:] if not a.startswith("-")]
    vec_dir = Path(args[0]) if args else DEFAULT_DIR
    files = sorted(vec_dir.glob("*.vec"))
    if not files:
        print(f"no .vec files in {vec_dir}")
        print("0 passed, 1 failed")
        return 1
    kr.self_test()
    passed = failed = 0
    for f in files:
        ok, msg = run_one(f)
        if ok:
            passed += 1
        else:
            failed += 1
        print(f"{'PASS' if ok else 'FAIL'} {f.stem}: {msg}")
    for f in sorted(vec_dir.glob("*.rvec")):
        ok, msg = run_reply(f)
        if ok:
            passed += 1
        else:
            failed += 1
        print(f"{'PASS' if ok else 'FAIL'} {f.stem}: {msg}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
