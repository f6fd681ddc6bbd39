"""Independent reader for the kluis v1 sealed-document format.

Written from docs/FORMAT.md alone (no reference source consulted). Uses only the
`cryptography` package for AES-256-GCM, HKDF-SHA-256 and HMAC-SHA-256. X25519 is
implemented here directly from RFC 7748 (and cross-checked against `cryptography`
in self_test()), so that an all-zero shared secret can be detected and reported
as ZeroSharedSecret instead of an opaque library error.

Public entry points:
    open_document(data, holders) -> Opened        raises KluisError(kind, detail)
    parse_header(data) -> Header                   raises KluisError
    decode_public_key(text) -> bytes               raises KluisError("InvalidPublicKey")
    encode_public_key(key) -> str
Key holders (tried in the order given, §11.2):
    LabelKey(label, kid, secret)    a label key version (org stanzas)
    Identity(secret)                a holder / recovery X25519 secret (X25519 stanzas)
    RefusingLabel(label, kid)       a key-server stand-in that accepts and refuses (Unwrap)
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# ---------------------------------------------------------------------------
# Constants (§12.1)
# ---------------------------------------------------------------------------
MAGIC = b"KLUIS\x00"
VERSION = 1
MIN_HEADER_LEN = 130
MAX_HEADER_LEN = 65536
PREFIX_LEN = 45
MAX_SLOTS = 16
MAX_STANZA_LEN = 1024
MAX_LABEL_LEN = 64
BODY_LEN = 48
KEY_LEN = 32
MAC_LEN = 32
TAG_LEN = 16
NONCE_LEN = 12
META_FIXED_LEN = 31
MAX_NAME_LEN = 4096
NAME_BUCKET = 256               # §7.1: a padded name field is a multiple of this
MIN_SEALED_META = META_FIXED_LEN + TAG_LEN  # 47
MAX_SEALED_META = META_FIXED_LEN + MAX_NAME_LEN + TAG_LEN  # 4143
CHUNK_LEN = 65536
SEALED_CHUNK_LEN = CHUNK_LEN + TAG_LEN  # 65552
MIN_FINAL_AFTER_FULL = 17
MIN_MTIME_SECS = -11_644_473_600  # 1601-01-01T00:00:00Z (§7)
MAX_MTIME_SECS = 253_402_300_799  # 9999-12-31T23:59:59Z

STANZA_ORG = 0x01
STANZA_X25519 = 0x02

INFO_ORG = b"kluis/v1/org-x25519"
INFO_X25519 = b"kluis/v1/x25519"
INFO_HEADER = b"kluis/v1/header"
INFO_METADATA = b"kluis/v1/metadata"
INFO_PAYLOAD = b"kluis/v1/payload"
AAD_ORG = b"kluis/v1/org"
AAD_X25519 = b"kluis/v1/x25519"

LABEL_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")

ERROR_KINDS = (
    "NotSealed", "UnsupportedVersion", "HeaderSize", "SlotCount", "StanzaBodyLength",
    "MalformedHeader", "NoMatchingKey", "Unwrap", "ZeroSharedSecret", "HeaderMac",
    "Metadata", "ChunkAuth", "Truncated", "TrailingData", "SizeMismatch",
    "InvalidPublicKey",
)


class KluisError(Exception):
    """A reader error. `kind` is one of ERROR_KINDS (names of FORMAT.md §12.2)."""

    def __init__(self, kind: str, detail: str = ""):
        assert kind in ERROR_KINDS, kind
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


# ---------------------------------------------------------------------------
# Primitives (§1)
# ---------------------------------------------------------------------------
_P = 2 ** 255 - 19
_A24 = 121665


def _clamp(k: bytes) -> int:
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return int.from_bytes(b, "little")


def x25519(k: bytes, u: bytes) -> bytes:
    """RFC 7748 X25519: clamped scalar, MSB of u ignored, u reduced mod p."""
    if len(k) != 32 or len(u) != 32:
        raise ValueError("x25519 inputs must be 32 bytes")
    scalar = _clamp(k)
    x1 = (int.from_bytes(u, "little") & ((1 << 255) - 1)) % _P
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in range(254, -1, -1):
        kt = (scalar >> t) & 1
        swap ^= kt
        if swap:
            x2, x3 = x3, x2
            z2, z3 = z3, z2
        swap = kt
        a = (x2 + z2) % _P
        aa = a * a % _P
        b = (x2 - z2) % _P
        bb = b * b % _P
        e = (aa - bb) % _P
        c = (x3 + z3) % _P
        d = (x3 - z3) % _P
        da = d * a % _P
        cb = c * b % _P
        x3 = (da + cb) % _P
        x3 = x3 * x3 % _P
        z3 = (da - cb) % _P
        z3 = x1 * z3 * z3 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, x3 = x3, x2
        z2, z3 = z3, z2
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


BASE_POINT = (9).to_bytes(32, "little")


def x25519_public(k: bytes) -> bytes:
    return x25519(k, BASE_POINT)


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    return _hmac.new(key, msg, hashlib.sha256).digest()


def aead_open(key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> Optional[bytes]:
    """AES-256-GCM open; None on authentication failure (or ct shorter than a tag)."""
    if len(ct) < TAG_LEN:
        return None
    try:
        return AESGCM(key).decrypt(nonce, ct, aad)
    except InvalidTag:
        return None


def xor32(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


# ---------------------------------------------------------------------------
# Header model and parser (§3–§5)
# ---------------------------------------------------------------------------
@dataclass
class Stanza:
    type: int
    content: bytes
    # org (0x01)
    label: Optional[bytes] = None
    kid: Optional[int] = None
    slot_kind: Optional[int] = None
    # org and X25519
    ephemeral: Optional[bytes] = None
    body: Optional[bytes] = None

    @property
    def known(self) -> bool:
        return self.type in (STANZA_ORG, STANZA_X25519)


@dataclass
class Slot:
    stanzas: List[Stanza]


@dataclass
class Header:
    raw: bytes  # the header_len header bytes, MAC included
    header_len: int
    doc_id: bytes
    payload_salt: bytes
    slots: List[Slot]
    sealed_metadata: bytes
    mac: bytes


class _Cursor:
    """Reads fields inside [pos, end); a field reaching past `end` is MalformedHeader."""

    def __init__(self, data: bytes, pos: int, end: int, what: str):
        self.data, self.pos, self.end, self.what = data, pos, end, what

    def take(self, n: int, field_name: str) -> bytes:
        if self.pos + n > self.end:
            raise KluisError("MalformedHeader",
                             f"{field_name} at offset {self.pos} runs past {self.what}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self, f: str) -> int:
        return self.take(1, f)[0]

    def be16(self, f: str) -> int:
        return int.from_bytes(self.take(2, f), "big")

    def be32(self, f: str) -> int:
        return int.from_bytes(self.take(4, f), "big")


def check_prefix(data: bytes) -> int:
    """§3.2 rules 1–3, §11.1 step 1. Returns header_len."""
    if len(data) < 6 or data[:6] != MAGIC:
        raise KluisError("NotSealed", "bytes 0..6 are not KLUIS\\0")
    if len(data) < 12:
        raise KluisError("MalformedHeader", "input ends inside the first 12 header bytes")
    version = int.from_bytes(data[6:8], "big")
    if version != VERSION:
        raise KluisError("UnsupportedVersion", f"version {version}")
    header_len = int.from_bytes(data[8:12], "big")
    if not (MIN_HEADER_LEN <= header_len <= MAX_HEADER_LEN):
        raise KluisError("HeaderSize", f"header_len {header_len}")
    return header_len


def _parse_stanza(cur: _Cursor, stanza_count: int) -> Stanza:
    typ = cur.u8("stanza type")
    length = cur.be16("stanza len")
    if length > MAX_STANZA_LEN:
        raise KluisError("MalformedHeader", f"stanza len {length} > {MAX_STANZA_LEN}")
    content = cur.take(length, "stanza content")
    st = Stanza(type=typ, content=content)
    if typ == STANZA_ORG:
        c = _Cursor(content, 0, len(content), "the org stanza content")
        n = c.u8("label_len")
        label = c.take(n, "label")
        if n == 0 or n > MAX_LABEL_LEN or any(ch not in LABEL_CHARS for ch in label):
            raise KluisError("MalformedHeader", f"invalid label {label!r}")
        st.label = label
        st.kid = c.be32("kid")
        sk = c.u8("slot_kind")
        if sk not in (1, 2):
            raise KluisError("MalformedHeader", f"slot_kind {sk}")
        st.slot_kind = sk
        st.ephemeral = c.take(32, "E")
        st.body = content[c.pos:]
    elif typ == STANZA_X25519:
        c = _Cursor(content, 0, len(content), "the X25519 stanza content")
        st.ephemeral = c.take(32, "E")
        st.body = content[c.pos:]
    if st.known and len(st.body) != BODY_LEN:
        raise KluisError("StanzaBodyLength",
                         f"type {typ}: expected {BODY_LEN}, found {len(st.body)}")
    # §4 rule 4: checked only once the whole stanza has been parsed (body length included).
    if typ == STANZA_ORG and st.slot_kind != stanza_count:
        raise KluisError("MalformedHeader",
                         f"org slot_kind {st.slot_kind} in a {stanza_count}-stanza slot")
    return st


def parse_header(data: bytes) -> Header:
    """§11.1 steps 1–3. `data` is the document (at least the header)."""
    header_len = check_prefix(data)
    if len(data) < header_len:
        raise KluisError("MalformedHeader", f"input ends inside the header ({len(data)} < {header_len})")
    end = header_len - MAC_LEN
    cur = _Cursor(data, 12, end, "header_len - 32")
    doc_id = cur.take(16, "doc_id")
    payload_salt = cur.take(16, "payload_salt")
    slot_count = cur.u8("slot_count")
    if not (1 <= slot_count <= MAX_SLOTS):
        raise KluisError("SlotCount", f"slot_count {slot_count}")
    slots = []
    for _ in range(slot_count):
        sc = cur.u8("stanza_count")
        if sc not in (1, 2):
            raise KluisError("MalformedHeader", f"stanza_count {sc}")
        slots.append(Slot([_parse_stanza(cur, sc) for _ in range(sc)]))
    meta_len = cur.be16("meta_len")
    if not (MIN_SEALED_META <= meta_len <= MAX_SEALED_META):
        raise KluisError("MalformedHeader", f"meta_len {meta_len}")
    sealed_metadata = cur.take(meta_len, "sealed_metadata")
    if cur.pos != end:
        raise KluisError("MalformedHeader", "bytes between the metadata and the MAC")
    return Header(raw=bytes(data[:header_len]), header_len=header_len, doc_id=doc_id,
                  payload_salt=payload_salt, slots=slots,
                  sealed_metadata=sealed_metadata, mac=bytes(data[end:header_len]))


# ---------------------------------------------------------------------------
# Key holders and unwrapping (§5.2, §5.3, §11.2)
# ---------------------------------------------------------------------------
class NotMine(Exception):
    """The stanza is not this holder's (AEAD failed); not an error on its own."""


@dataclass
class LabelKey:
    label: bytes
    kid: int
    secret: bytes

    def accepts(self, st: Stanza) -> bool:
        return st.type == STANZA_ORG and st.label == self.label and st.kid == self.kid

    def unwrap(self, st: Stanza, doc_id: bytes) -> bytes:
        z = x25519(self.secret, st.ephemeral)
        if z == bytes(32):
            raise KluisError("ZeroSharedSecret", "org stanza")
        pub = x25519_public(self.secret)
        w = hkdf(z, st.ephemeral + pub, INFO_ORG)
        aad = (AAD_ORG + doc_id + bytes([len(st.label)]) + st.label
               + st.kid.to_bytes(4, "big") + bytes([st.slot_kind]))
        share = aead_open(w, bytes(12), aad, st.body)
        if share is None:
            raise NotMine()
        return share


@dataclass
class Identity:
    secret: bytes

    def accepts(self, st: Stanza) -> bool:
        return st.type == STANZA_X25519

    def unwrap(self, st: Stanza, doc_id: bytes) -> bytes:
        z = x25519(self.secret, st.ephemeral)
        if z == bytes(32):
            raise KluisError("ZeroSharedSecret", "X25519 stanza")
        pub = x25519_public(self.secret)
        w = hkdf(z, st.ephemeral + pub, INFO_X25519)
        share = aead_open(w, bytes(12), AAD_X25519 + doc_id, st.body)
        if share is None:
            raise NotMine()
        return share


@dataclass
class RefusingLabel:
    """A key server stand-in that accepts org stanzas for label/kid and refuses them."""
    label: bytes
    kid: int

    def accepts(self, st: Stanza) -> bool:
        return st.type == STANZA_ORG and st.label == self.label and st.kid == self.kid

    def unwrap(self, st: Stanza, doc_id: bytes) -> bytes:
        raise KluisError("Unwrap", "key holder refused")


Holder = Union[LabelKey, Identity, RefusingLabel]


def header_mac_ok(header: Header, k: bytes) -> bool:
    mac_key = hkdf(k, header.doc_id, INFO_HEADER)
    return _hmac.compare_digest(hmac_sha256(mac_key, header.raw[:-MAC_LEN]), header.mac)


def recover_file_key(header: Header, holders: Sequence[Holder]) -> Tuple[bytes, int]:
    """§11.1 steps 4–6. Returns (K, slot index)."""
    met = set()
    for idx, slot in enumerate(header.slots):
        if not all(any(h.accepts(st) for h in holders) for st in slot.stanzas):
            continue
        # §11.2: holders are asked in the order given, each once with every stanza of
        # the slot that still lacks a share and that it accepts. "Not mine" passes the
        # stanza on to later holders; any other error (ZeroSharedSecret, Unwrap) is met
        # and fails the slot, so later holders are not asked.
        shares: List[Optional[bytes]] = [None] * len(slot.stanzas)
        failed = False
        for h in holders:
            for j, st in enumerate(slot.stanzas):
                if shares[j] is not None or not h.accepts(st):
                    continue
                try:
                    shares[j] = h.unwrap(st, header.doc_id)
                except NotMine:
                    continue
                except KluisError as e:
                    met.add(e.kind)
                    failed = True
            if failed:
                break
        if failed or any(s is None for s in shares):
            continue
        k = shares[0] if len(shares) == 1 else xor32(shares[0], shares[1])
        if header_mac_ok(header, k):
            return k, idx
        met.add("HeaderMac")
    for kind in ("HeaderMac", "ZeroSharedSecret", "Unwrap"):
        if kind in met:
            raise KluisError(kind, "no slot opened")
    raise KluisError("NoMatchingKey")


# ---------------------------------------------------------------------------
# Key server replies (§15), client side
# ---------------------------------------------------------------------------
INFO_REPLY = b"kluis/v1/reply"


def reply_key(r: bytes, server_public: bytes) -> bytes:
    """RK = HKDF(X25519(r, S), S || R, "kluis/v1/reply"); ZeroSharedSecret for a low-order S."""
    z = x25519(r, server_public)
    if z == bytes(32):
        raise KluisError("ZeroSharedSecret", "reply key S is a low-order point")
    return hkdf(z, server_public + x25519_public(r), INFO_REPLY)


def open_reply_item(rk: bytes, doc_id: bytes, nonce: bytes, body: bytes) -> bytes:
    """Open one released share with the nonce sent and the doc_id of the request item it
    answers. A body that fails to open is an Unwrap error (§15)."""
    share = aead_open(rk, nonce, doc_id, body)
    if share is None or len(share) != 32:
        raise KluisError("Unwrap", "the key server's reply did not authenticate")
    return share


def seal_reply_item(rk: bytes, j: int, doc_id: bytes, share: bytes) -> Tuple[bytes, bytes]:
    """Server side, for checking vectors: item j's nonce 0^4 || BE64(j) and body."""
    nonce = bytes(4) + j.to_bytes(8, "big")
    return nonce, AESGCM(rk).encrypt(nonce, share, doc_id)


# ---------------------------------------------------------------------------
# Metadata (§7)
# ---------------------------------------------------------------------------
@dataclass
class Metadata:
    flags: int
    size: Optional[int]            # None when unknown
    mtime: Optional[Tuple[int, int]]  # (secs, nanos) or None
    padding: int
    name: str


def open_metadata(header: Header, k: bytes) -> Metadata:
    meta_key = hkdf(k, header.doc_id, INFO_METADATA)
    pt = aead_open(meta_key, bytes(12), b"", header.sealed_metadata)
    if pt is None:
        raise KluisError("Metadata", "sealed metadata does not authenticate")
    if not (META_FIXED_LEN <= len(pt) <= META_FIXED_LEN + MAX_NAME_LEN):
        raise KluisError("Metadata", f"plaintext length {len(pt)}")
    flags = pt[0]
    if flags & 0xF8:
        raise KluisError("Metadata", f"unknown flag bits {flags:#04x}")
    size = int.from_bytes(pt[1:9], "big")
    secs = int.from_bytes(pt[9:17], "big", signed=True)
    nanos = int.from_bytes(pt[17:21], "big")
    padding = int.from_bytes(pt[21:29], "big")
    name_len = int.from_bytes(pt[29:31], "big")
    field = len(pt) - META_FIXED_LEN
    if flags & 0x04:
        # §7.1: the name padded with zero bytes to bucket(name_len).
        bucket = NAME_BUCKET * max(1, -(-name_len // NAME_BUCKET))
        if name_len > MAX_NAME_LEN or field != bucket:
            raise KluisError("Metadata", f"padded name field {field} != bucket({name_len})")
    elif name_len != field:
        raise KluisError("Metadata", f"name_len {name_len} != {field}")
    try:
        name = pt[31:31 + name_len].decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise KluisError("Metadata", "name is not valid UTF-8") from None
    if any(pt[31 + name_len:]):
        raise KluisError("Metadata", "non-zero name padding")
    if not flags & 0x01 and (size != 0 or padding != 0):
        raise KluisError("Metadata", "size or padding without the size flag")
    if not flags & 0x02 and (secs != 0 or nanos != 0):
        raise KluisError("Metadata", "mtime without the mtime flag")
    if size + padding > 2 ** 64 - 1:
        raise KluisError("Metadata", "size + padding overflows")
    if flags & 0x02 and nanos >= 10 ** 9:
        raise KluisError("Metadata", f"mtime_nanos {nanos}")
    if flags & 0x02 and not (MIN_MTIME_SECS <= secs <= MAX_MTIME_SECS):
        raise KluisError("Metadata", f"mtime_secs {secs} outside 1601..9999")
    return Metadata(flags=flags, size=size if flags & 0x01 else None,
                    mtime=(secs, nanos) if flags & 0x02 else None,
                    padding=padding, name=name)


# ---------------------------------------------------------------------------
# Payload (§8): forward-only reader exactly as §8.4 describes
# ---------------------------------------------------------------------------
def _nonce(i: int, last: bool) -> bytes:
    return i.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def read_payload(payload: bytes, pk: bytes, meta: Metadata) -> bytes:
    total = None if meta.size is None else meta.size + meta.padding
    out = bytearray()
    pos = 0
    i = 0

    def size_check(chunk_pt: bytes, is_last: bool) -> None:
        # §8.3, checked as we go: too many bytes / non-zero padding at this chunk,
        # a shortfall at the last chunk.
        if total is None:
            return
        start = len(out)
        if start + len(chunk_pt) > total:
            raise KluisError("SizeMismatch", f"more than size + padding = {total} bytes at chunk {i}")
        pad_from = max(meta.size - start, 0)
        if any(chunk_pt[pad_from:]):
            raise KluisError("SizeMismatch", f"non-zero padding byte in chunk {i}")
        if is_last and start + len(chunk_pt) != total:
            raise KluisError("SizeMismatch",
                             f"payload plaintext {start + len(chunk_pt)} != size + padding {total}")

    while True:
        chunk = payload[pos:pos + SEALED_CHUNK_LEN]
        n = len(chunk)
        if n == SEALED_CHUNK_LEN:
            m = len(payload[pos + n:pos + n + MIN_FINAL_AFTER_FULL])
            if m == 0:
                pt = aead_open(pk, _nonce(i, True), b"", chunk)
                if pt is not None:
                    size_check(pt, True)
                    out += pt
                    return bytes(out)
                if aead_open(pk, _nonce(i, False), b"", chunk) is not None:
                    raise KluisError("Truncated", f"chunks = {i + 1}")
                raise KluisError("ChunkAuth", f"chunk {i}")
            if m == MIN_FINAL_AFTER_FULL:
                pt = aead_open(pk, _nonce(i, False), b"", chunk)
                if pt is None:
                    raise KluisError("ChunkAuth", f"chunk {i}")
                size_check(pt, False)
                out += pt
                pos += n
                i += 1
                continue
            # 1 <= m <= 16
            pt = aead_open(pk, _nonce(i, True), b"", chunk)
            if pt is None:
                raise KluisError("ChunkAuth", f"chunk {i}")
            raise KluisError("TrailingData", f"{m} byte(s) after the last chunk")
        if n == 0 and i == 0:
            raise KluisError("Truncated", "chunks = 0")
        pt = aead_open(pk, _nonce(i, True), b"", chunk)
        if pt is None:
            raise KluisError("ChunkAuth", f"chunk {i}")
        size_check(pt, True)
        out += pt
        return bytes(out)


# ---------------------------------------------------------------------------
# Whole document (§11.1)
# ---------------------------------------------------------------------------
@dataclass
class Opened:
    header: Header
    slot_index: int
    metadata: Metadata
    content: bytes


def open_document(data: bytes, holders: Sequence[Holder]) -> Opened:
    header = parse_header(data)
    k, slot_index = recover_file_key(header, holders)
    meta = open_metadata(header, k)
    pk = hkdf(k, header.payload_salt, INFO_PAYLOAD)
    plaintext = read_payload(bytes(data[header.header_len:]), pk, meta)
    content = plaintext if meta.size is None else plaintext[:meta.size]
    return Opened(header=header, slot_index=slot_index, metadata=meta, content=content)


# ---------------------------------------------------------------------------
# Public key strings (§13): Bech32 (BIP 173, constant 1), HRP "kluis"
# ---------------------------------------------------------------------------
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
# Unicode White_Space (what §13 trims). Python's own str.strip() also strips U+001C..U+001F.
_WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_HRP = "kluis"


def _polymod(values) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        b = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ v
        for i in range(5):
            chk ^= gen[i] if (b >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str):
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convertbits(data, frombits: int, tobits: int, pad: bool):
    acc = bits = 0
    ret = []
    maxv = (1 << tobits) - 1
    for v in data:
        acc = (acc << frombits) | v
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            ret.append((acc >> bits) & maxv)
    if pad:
        if bits:
            ret.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        return None  # too much padding, or non-zero padding bits
    return ret


def encode_public_key(key: bytes) -> str:
    if len(key) != 32:
        raise ValueError("key must be 32 bytes")
    data = _convertbits(key, 8, 5, True)
    values = _hrp_expand(_HRP) + data
    pm = _polymod(values + [0] * 6) ^ 1
    checksum = [(pm >> 5 * (5 - i)) & 31 for i in range(6)]
    return _HRP + "1" + "".join(_CHARSET[d] for d in data + checksum)


def decode_public_key(text: str) -> bytes:
    """§13 reader rules. Raises KluisError("InvalidPublicKey")."""
    def bad(why: str):
        return KluisError("InvalidPublicKey", why)

    s = text.strip(_WHITE_SPACE)
    if len(s.encode("utf-8")) > 100:
        raise bad("longer than 100 bytes")
    if any(ord(c) < 33 or ord(c) > 126 for c in s):
        raise bad("bad character")
    if s.lower() != s and s.upper() != s:
        raise bad("mixed case")
    s = s.lower()
    sep = s.rfind("1")
    if sep < 1 or sep + 7 > len(s):
        raise bad("no separator or data too short")
    hrp, data_part = s[:sep], s[sep + 1:]
    if hrp != _HRP:
        raise bad(f"human-readable part {hrp!r}")
    if any(c not in _CHARSET for c in data_part):
        raise bad("bad character")
    data = [_CHARSET.find(c) for c in data_part]
    if _polymod(_hrp_expand(hrp) + data) != 1:
        raise bad("bad checksum")
    decoded = _convertbits(data[:-6], 5, 8, False)
    if decoded is None:
        raise bad("non-zero or excess padding bits")
    key = bytes(decoded)
    if len(key) != 32:
        raise bad(f"decodes to {len(key)} bytes")
    if key[31] & 0x80 or int.from_bytes(key, "little") >= _P:
        raise bad("non-canonical X25519 encoding")
    if x25519(b"\x42" * 32, key) == bytes(32):
        raise bad("low-order point")
    return key


# ---------------------------------------------------------------------------
# Self test (primitives against `cryptography`, Bech32 round trip, §9 examples)
# ---------------------------------------------------------------------------
def padme_padding(length: int) -> int:
    if length < 2:
        return 0
    e = length.bit_length() - 1
    s = e.bit_length()
    b = e - s
    mask = (1 << b) - 1
    if length + mask > 2 ** 64 - 1:
        return 0
    return ((length + mask) & ~mask) - length


def self_test() -> None:
    import os
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    # RFC 7748 §5.2 test vector 1
    k = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert x25519(k, u).hex() == "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    for _ in range(4):
        a, b = os.urandom(32), os.urandom(32)
        pub_b = X25519PrivateKey.from_private_bytes(b).public_key().public_bytes_raw()
        assert x25519_public(b) == pub_b
        lib = X25519PrivateKey.from_private_bytes(a).exchange(X25519PublicKey.from_public_bytes(pub_b))
        assert x25519(a, pub_b) == lib
        s = encode_public_key(pub_b)
        assert len(s) == 64 and decode_public_key("  " + s.upper() + "\n") == pub_b
    # non-canonical encodings are rejected: bit 255 set, or u >= 2^255 - 19
    high = bytearray(x25519_public(os.urandom(32)))
    high[31] |= 0x80
    for nc in (bytes(high), _P.to_bytes(32, "little")):
        try:
            decode_public_key(encode_public_key(nc))
            raise AssertionError("non-canonical key accepted")
        except KluisError as e:
            assert e.kind == "InvalidPublicKey"
    assert decode_public_key(encode_public_key((_P - 2).to_bytes(32, "little")))
    # low-order points are rejected
    for lo in (bytes(32), (1).to_bytes(32, "little")):
        try:
            decode_public_key(encode_public_key(lo))
            raise AssertionError("low-order key accepted")
        except KluisError as e:
            assert e.kind == "InvalidPublicKey"
    # §9 examples
    for L, p in ((0, 0), (1, 0), (9, 1), (100, 4), (1000, 24), (1024, 0), (65537, 2047)):
        assert padme_padding(L) == p, (L, padme_padding(L), p)


if __name__ == "__main__":
    self_test()
    print("self test ok")
