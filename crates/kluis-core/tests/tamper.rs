//! Tamper suite: every change to a sealed document is rejected with its typed error, through
//! every way of opening one: the one-call [`open`], [`open_in_place`], and the streaming
//! `Header::read` → `Header::unlock` → `StreamReader` read to the end. With the `aes-gcm`
//! feature the in-place and streaming paths alternate between the backends from case to case.
//!
//! The expected error of each change follows from docs/FORMAT.md: the order of checks (§11.1),
//! how key holders are asked (§11.2), the header grammar (§3–§5) and the payload decision
//! procedure (§8.4). Where the verdict depends on where a byte sits, an independent walk of the
//! header bytes in this file decides it, so that any change of verdict in the core fails a test
//! that names the byte and the bit.
//!
//! Streaming and STREAM: `StreamReader` authenticates chunk by chunk, and FORMAT.md §8.2 lets a
//! reader release a chunk's plaintext once that chunk has authenticated ("A consumer MUST
//! discard all released plaintext if any error follows"). So a streaming reader legitimately
//! hands out the plaintext of the chunks *before* a damaged or missing one, and only then
//! fails. Every test here pins exactly how much it hands out: only a prefix of the true
//! plaintext, never a byte of the damaged chunk or of anything after it, and never the last
//! chunk that is present when the file was cut at a chunk boundary (that chunk authenticates,
//! but only as a non-last chunk, so the reader holds it back and reports `Truncated`).

use std::io::Read;
use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use kluis_core::fast::{Backend, CHUNK_LEN};
use kluis_core::{
    DocId, Error, Header, Identity, LabelKey, Metadata, Recipient, Slot, Stanza, Unwrap, open, seal,
};
mod layout;

use layout::StanzaAt;
use proptest::prelude::*;

/// AES-GCM tag length.
const TAG: usize = 16;
/// Sealed bytes of a full chunk.
const SEALED_CHUNK: usize = CHUNK_LEN + TAG;
/// Shortest header length a reader accepts (FORMAT.md §3.2 rule 3).
const MIN_HEADER_LEN: u64 = 130;
/// Longest header length a reader accepts.
const MAX_HEADER_LEN: u64 = 65_536;
/// Longest stanza content (FORMAT.md §5.1).
const MAX_STANZA_LEN: usize = 1024;
/// The sizes of the issue: empty, one byte, exactly one chunk, one chunk and a byte, three
/// chunks and a bit.
const SIZES: [usize; 5] = [0, 1, CHUNK_LEN, CHUNK_LEN + 1, 3 * CHUNK_LEN + 100];

// ---------------------------------------------------------------------------------------------
// Keys, documents and the verdicts of the three opening paths.

struct Keys {
    hr: LabelKey,
    holder: Identity,
    recovery: Identity,
}

/// Generated once; in memory, standing in for the key server and the holders' identity files.
fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys {
        hr: LabelKey::generate("hr", 1).unwrap(),
        holder: Identity::generate().unwrap(),
        recovery: Identity::generate().unwrap(),
    })
}

/// The slot layouts under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One double-key slot: an org stanza to `hr`/1 and an X25519 stanza to the holder.
    DoubleKey,
    /// Two one-stanza slots: an org stanza to `hr`/1, then an X25519 stanza to a recovery key.
    TwoSlots,
}

impl Shape {
    fn slots(self) -> Vec<Slot> {
        let k = keys();
        let hr = Recipient::Label(k.hr.public_key().clone());
        match self {
            Shape::DoubleKey => {
                vec![Slot::double(hr, Recipient::Key(k.holder.public_key())).unwrap()]
            }
            Shape::TwoSlots => vec![
                Slot::single(hr),
                Slot::single(Recipient::Key(k.recovery.public_key())),
            ],
        }
    }

    /// Every key that can open a document of this shape.
    fn holders(self) -> Vec<&'static dyn Unwrap> {
        let k = keys();
        match self {
            Shape::DoubleKey => vec![&k.hr, &k.holder],
            Shape::TwoSlots => vec![&k.hr, &k.recovery],
        }
    }

    /// The verdict when one stanza no longer opens but the header still parses: its AEAD
    /// fails ("not mine"), or no key holder accepts it any more (an unknown type, another
    /// label or kid). With one double-key slot nothing else can recover `K`, and "not mine"
    /// is no error (§11.2), so it is `NoMatchingKey`. With two slots the intact slot
    /// recovers `K`, and the MAC over the changed header fails: `HeaderMac`.
    fn broken_stanza(self) -> Kind {
        match self {
            Shape::DoubleKey => Kind::NoMatchingKey,
            Shape::TwoSlots => Kind::HeaderMac,
        }
    }
}

/// A sealed document and what went into it.
struct Doc {
    shape: Shape,
    plain: Vec<u8>,
    sealed: Vec<u8>,
    /// Header length.
    hl: usize,
}

impl Doc {
    fn new(shape: Shape, size: usize, padded: bool) -> Doc {
        let plain: Vec<u8> = (0..size)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        // A short name keeps meta_len below 256 (the header-flip model relies on it).
        let mut meta = Metadata::with_size(size as u64).name("report.pdf");
        if padded {
            meta = meta.padded().unwrap();
        }
        let sealed = seal(&shape.slots(), &meta, &plain).unwrap();
        let hl = layout::header_len(&sealed);
        let doc = Doc {
            shape,
            plain,
            sealed,
            hl,
        };
        // The untouched document opens on every path: every failure below is the tamper's.
        let (out, m) = open(&doc.sealed, &doc.shape.holders()).unwrap();
        assert_eq!(out, doc.plain);
        assert_eq!(m, meta);
        let (out, r) = open_streaming(&doc.sealed, &doc.shape.holders(), Backend::default());
        assert!(r.is_ok() && out == doc.plain);
        doc
    }

    fn payload(&self) -> &[u8] {
        &self.sealed[self.hl..]
    }

    /// The sealed chunks: all full but the last.
    fn chunks(&self) -> Vec<&[u8]> {
        self.payload().chunks(SEALED_CHUNK).collect()
    }

    /// Index of the last chunk.
    fn last(&self) -> usize {
        self.chunks().len() - 1
    }

    /// Plaintext bytes of the first `chunks` chunks (padding is never handed out).
    fn released(&self, chunks: usize) -> usize {
        (chunks * CHUNK_LEN).min(self.plain.len())
    }

    fn name(&self) -> String {
        format!("{:?}/{} bytes", self.shape, self.plain.len())
    }
}

/// Every shape at every size, sealed once.
fn docs() -> &'static [Doc] {
    static D: OnceLock<Vec<Doc>> = OnceLock::new();
    D.get_or_init(|| {
        [Shape::DoubleKey, Shape::TwoSlots]
            .into_iter()
            .flat_map(|shape| SIZES.into_iter().map(move |n| Doc::new(shape, n, false)))
            .collect()
    })
}

/// An error, reduced to what the tests compare: the variant and its structured fields.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    NotSealed,
    UnsupportedVersion(u16),
    HeaderSize(u64),
    SlotCount(usize),
    StanzaBodyLength {
        kind: u8,
        found: usize,
    },
    MalformedHeader,
    NoMatchingKey,
    HeaderMac,
    ChunkAuth(u64),
    Truncated(u64),
    TrailingData,
    /// Anything no tamper here should produce (the message says what it was).
    Other(String),
}

fn kind(e: &Error) -> Kind {
    match e {
        Error::NotSealed => Kind::NotSealed,
        Error::UnsupportedVersion { version } => Kind::UnsupportedVersion(*version),
        Error::HeaderSize {
            declared,
            max: 65_536,
        } => Kind::HeaderSize(*declared),
        Error::SlotCount { count, max: 16 } => Kind::SlotCount(*count),
        Error::StanzaBodyLength {
            kind,
            expected: 48,
            found,
        } => Kind::StanzaBodyLength {
            kind: *kind,
            found: *found,
        },
        Error::MalformedHeader { .. } => Kind::MalformedHeader,
        Error::NoMatchingKey => Kind::NoMatchingKey,
        Error::HeaderMac => Kind::HeaderMac,
        Error::ChunkAuth { chunk } => Kind::ChunkAuth(*chunk),
        Error::Truncated { chunks } => Kind::Truncated(*chunks),
        Error::TrailingData => Kind::TrailingData,
        other => Kind::Other(format!("{other:?}")),
    }
}

/// Header::read → Header::unlock → StreamReader → read to the end, in 10 007-byte reads.
/// Returns the plaintext handed out before the end or the first error, and the verdict.
fn open_streaming(
    sealed: &[u8],
    holders: &[&dyn Unwrap],
    backend: Backend,
) -> (Vec<u8>, Result<Metadata, Error>) {
    fn run(
        mut input: &[u8],
        holders: &[&dyn Unwrap],
        backend: Backend,
        out: &mut Vec<u8>,
    ) -> Result<Metadata, Error> {
        let header = Header::read(&mut input)?;
        let key = header.unlock(holders)?;
        let mut reader = kluis_core::fast::stream_reader(
            &header,
            &key,
            input,
            &kluis_core::fast::FastOptions::default().backend(backend),
        )?;
        let mut buf = vec![0u8; 10_007];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(reader.metadata().clone()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => {
                    // A failed reader stays failed: a caller that retries gets no more bytes.
                    assert!(
                        reader.read(&mut buf).is_err(),
                        "a failed StreamReader yielded data on the next read"
                    );
                    return Err(Error::from_io(e));
                }
            }
        }
    }
    let mut out = Vec::new();
    let r = run(sealed, holders, backend, &mut out);
    (out, r)
}

/// Which opening paths a case goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Paths {
    /// `open`, `open_in_place` and streaming.
    All,
    /// Streaming only (see `every_header_bit_flip_fails_with_its_error`).
    Streaming,
}

/// Picks the backend for the next case, so that with several backends compiled in (feature
/// `aes-gcm`) each path runs on each of them over a test, without doubling its cost.
/// The threads for the next `open_in_place`: the default, or 2, 3 or 8, so that documents of a
/// few chunks are also opened in parts by threads of their own.
fn next_threads() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    [0, 2, 3, 8][N.fetch_add(1, Ordering::Relaxed) % 4]
}

fn next_backend() -> (Backend, Backend) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let all = Backend::all();
    let n = N.fetch_add(1, Ordering::Relaxed);
    (all[n % all.len()], all[(n + 1) % all.len()])
}

/// Open `bad` on every path; each must fail with exactly `want`. The streaming reader may first
/// hand out exactly `doc.plain[..released]` (the authenticated chunks before the damage) and
/// nothing else. `open_in_place` must leave its buffer empty.
fn assert_rejected(doc: &Doc, bad: &[u8], want: &Kind, released: usize, case: &dyn Fn() -> String) {
    check_rejected(doc, bad, want, released, Paths::All, case);
}

fn check_rejected(
    doc: &Doc,
    bad: &[u8],
    want: &Kind,
    released: usize,
    paths: Paths,
    case: &dyn Fn() -> String,
) {
    let holders = doc.shape.holders();
    let (in_place, streaming) = next_backend();
    if paths == Paths::All {
        match open(bad, &holders) {
            Ok(_) => panic!("{}: open accepted the tampered document", case()),
            Err(e) => assert_eq!(&kind(&e), want, "{}: open", case()),
        }
        let mut buf = bad.to_vec();
        let threads = next_threads();
        match kluis_core::fast::open_in_place(
            &mut buf,
            &holders,
            &kluis_core::fast::FastOptions::default()
                .backend(in_place)
                .threads(threads),
        ) {
            Ok(_) => panic!("{}: open_in_place ({in_place:?}) accepted it", case()),
            Err(e) => assert_eq!(
                &kind(&e),
                want,
                "{}: open_in_place ({in_place:?}, threads {threads})",
                case()
            ),
        }
        // The buffer may have held plaintext of chunks decrypted in place before the failure.
        // It is zeroized (zeroize wipes a Vec's whole capacity) and emptied; the spare
        // capacity itself cannot be read without unsafe code, which the workspace forbids, so
        // the test checks the observable part.
        assert!(
            buf.is_empty(),
            "{}: open_in_place ({in_place:?}) left {} bytes in the buffer",
            case(),
            buf.len()
        );
    }
    let (out, r) = open_streaming(bad, &holders, streaming);
    match r {
        Ok(_) => panic!("{}: the stream reader ({streaming:?}) accepted it", case()),
        Err(e) => assert_eq!(&kind(&e), want, "{}: streaming ({streaming:?})", case()),
    }
    assert!(
        out.len() == released && out[..] == doc.plain[..released],
        "{}: streaming ({streaming:?}) handed out {} bytes before failing; only the {released} \
         bytes of the authenticated chunks before the damage may come out, unchanged",
        case(),
        out.len()
    );
}

// ---------------------------------------------------------------------------------------------
// An independent reading of the header layout (FORMAT.md §3–§5), byte by byte.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Magic,
    Version,
    HeaderLen,
    DocId,
    PayloadSalt,
    SlotCount,
    StanzaCount,
    StanzaType,
    /// The BE16 content length of stanza `s` (an index into `Layout::stanzas`).
    StanzaLen(usize),
    LabelLen,
    Label,
    Kid,
    SlotKind,
    Ephemeral,
    Body,
    MetaLen,
    SealedMetadata,
    Mac,
}

struct Layout {
    /// The field of every header byte.
    fields: Vec<Field>,
    /// Per slot: the offset of its stanza-count byte, its end, and its stanzas.
    slots: Vec<(usize, usize, Vec<usize>)>,
    stanzas: Vec<StanzaAt>,
    mac_at: usize,
}

/// Every header byte's field, from the shared walk of the layout (tests/layout/mod.rs).
fn layout(h: &[u8]) -> Layout {
    let walk = layout::layout(h);
    let hl = layout::header_len(h);
    let mut fields = vec![Field::Mac; hl];
    let mut mark = |from: usize, len: usize, f: Field| fields[from..from + len].fill(f);
    mark(layout::MAGIC_AT, 6, Field::Magic);
    mark(layout::VERSION_AT, 2, Field::Version);
    mark(layout::HEADER_LEN_AT, 4, Field::HeaderLen);
    mark(layout::DOC_ID_AT, 16, Field::DocId);
    mark(layout::PAYLOAD_SALT_AT, 16, Field::PayloadSalt);
    mark(layout::SLOT_COUNT_AT, 1, Field::SlotCount);
    let mut slots = Vec::new();
    let mut stanzas = Vec::new();
    for slot in &walk.slots {
        mark(slot.at, 1, Field::StanzaCount);
        let mut ids = Vec::new();
        for s in &slot.stanzas {
            mark(s.start, 1, Field::StanzaType);
            mark(s.start + 1, 2, Field::StanzaLen(stanzas.len()));
            if s.kind == layout::ORG {
                let c = s.content();
                let label_len = h[c] as usize;
                mark(c, 1, Field::LabelLen);
                mark(c + 1, label_len, Field::Label);
                mark(c + 1 + label_len, 4, Field::Kid);
                mark(s.slot_kind(h), 1, Field::SlotKind);
            }
            mark(s.ephemeral(h), 32, Field::Ephemeral);
            mark(s.body(h), 48, Field::Body);
            assert_eq!(
                s.body(h) + 48,
                s.end(),
                "fixture stanza of unexpected length"
            );
            ids.push(stanzas.len());
            stanzas.push(*s);
        }
        slots.push((slot.at, slot.end, ids));
    }
    let meta_len = walk.mac_at - walk.meta_len_at - 2;
    mark(walk.meta_len_at, 2, Field::MetaLen);
    mark(walk.meta_len_at + 2, meta_len, Field::SealedMetadata);
    Layout {
        fields,
        slots,
        stanzas,
        mac_at: walk.mac_at,
    }
}

fn label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'
}

/// The verdict for flipping `mask` in header byte `pos` of `doc` (FORMAT.md §11.1 order).
fn header_flip_verdict(doc: &Doc, lay: &Layout, pos: usize, mask: u8) -> Kind {
    let h = &doc.sealed;
    let flipped = h[pos] ^ mask;
    match lay.fields[pos] {
        // §3.2 rule 1: the magic is checked first.
        Field::Magic => Kind::NotSealed,
        // Rule 2: any version but 1, before header_len is looked at.
        Field::Version => {
            let at = layout::VERSION_AT;
            let mut v = [h[at], h[at + 1]];
            v[pos - at] = flipped;
            Kind::UnsupportedVersion(u16::from_be_bytes(v))
        }
        // Rule 3: out of 130..=65536 is HeaderSize. In range, the declared length is wrong:
        // shorter, and a field runs into the MAC; longer, and bytes lie between the metadata
        // and the MAC, or the input ends inside the header. All MalformedHeader.
        Field::HeaderLen => {
            let at = layout::HEADER_LEN_AT;
            let mut v = [h[at], h[at + 1], h[at + 2], h[at + 3]];
            v[pos - at] = flipped;
            let v = u32::from_be_bytes(v) as u64;
            if (MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&v) {
                Kind::MalformedHeader
            } else {
                Kind::HeaderSize(v)
            }
        }
        // The doc_id is in every stanza's AAD: every stanza is "not mine", which is no error
        // (§5.2, §5.3, §11.2), so no slot opens and nothing ranks above NoMatchingKey.
        Field::DocId => Kind::NoMatchingKey,
        // Bound by nothing but the MAC (the metadata is only decrypted after the MAC passes,
        // §6/§11.1 step 7), so each recovered K fails the MAC.
        Field::PayloadSalt | Field::SealedMetadata | Field::Mac => Kind::HeaderMac,
        // §3.2 rule 6. A count that stays in 1..=16 reads past the real slots: the next byte
        // is either meta_len's high byte (0, as meta_len < 256 here) read as a stanza count,
        // or a stanza count read as meta_len's high byte; both end in MalformedHeader.
        Field::SlotCount => match flipped {
            1..=16 => Kind::MalformedHeader,
            n => Kind::SlotCount(n as usize),
        },
        // 1 and 2 are never one bit apart, and no flip of either gives the other: §4 rule 1.
        Field::StanzaCount => Kind::MalformedHeader,
        // Any slot kind other than the right one is out of {1, 2} after one flip (1 ^ 2 = 3).
        Field::SlotKind => Kind::MalformedHeader,
        // A changed label length shifts the label over the kid (`00 00 00 01` here: a zero
        // byte is never a label character), leaves it empty, or runs it past 64 bytes or the
        // content: MalformedHeader in every case for the fixture's `hr`/1.
        Field::LabelLen => Kind::MalformedHeader,
        // A meta_len that changes either leaves 47..=4143, runs past the MAC, or leaves bytes
        // between the metadata and the MAC (§3.2 rules 5, 7, 8).
        Field::MetaLen => Kind::MalformedHeader,
        // A label byte that is still a label character names another label: no key holder
        // accepts the stanza. Any other byte is an invalid label (§5.2).
        Field::Label => {
            if label_byte(flipped) {
                doc.shape.broken_stanza()
            } else {
                Kind::MalformedHeader
            }
        }
        // 0x01 and 0x02 are never one flip apart: the stanza becomes an unknown type, kept but
        // accepted by no one (§5.4). Another kid: the label key does not accept it (§5.2). A
        // changed E or body: the AEAD fails, "not mine" (E is used as written in the HKDF
        // salt, so even bit 255 of E, which X25519 ignores, breaks it).
        Field::StanzaType | Field::Kid | Field::Ephemeral | Field::Body => {
            doc.shape.broken_stanza()
        }
        // §5.1: over 1024, or past the end of the header before the MAC, or too short for the
        // fixed fields: MalformedHeader. Otherwise the body has the wrong length.
        Field::StanzaLen(s) => {
            let st = lay.stanzas[s];
            let mut v = [h[st.start + 1], h[st.start + 2]];
            v[pos - st.start - 1] = flipped;
            let len = u16::from_be_bytes(v) as usize;
            let fixed = st.body(h) - st.content();
            if len > MAX_STANZA_LEN || st.content() + len > lay.mac_at || len < fixed {
                Kind::MalformedHeader
            } else {
                Kind::StanzaBodyLength {
                    kind: st.kind,
                    found: len - fixed,
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Header bit flips.

/// Every single-bit flip of every header byte (MAC included), at every size and shape.
///
/// Cost: a failed `open`/`open_in_place` zeroizes the whole document buffer, and the workspace's
/// dev profile compiles `zeroize` unoptimised (about 15 ns a byte), so 2 600 flips of a 200 KB
/// document through those two paths alone would take about a minute. The verdict of a header
/// flip does not depend on the payload (the header fails before any chunk is read), so:
/// - documents of 0 and 1 byte: every bit through every path;
/// - the larger ones: every bit through the streaming path (which fails before it allocates a
///   chunk buffer), and through `open`/`open_in_place` one bit (rotating) of every byte of the
///   fixed and length fields plus the first and last byte of each long field (ids, ephemeral
///   keys, bodies, metadata, MAC).
#[test]
fn every_header_bit_flip_fails_with_its_error() {
    let mut cases = 0;
    for doc in docs() {
        let lay = layout(&doc.sealed);
        let small = doc.payload().len() <= 64;
        let mut bad = doc.sealed.clone();
        for pos in 0..doc.hl {
            let sampled = header_sample(&lay, pos);
            for bit in 0..8 {
                let mask = 1u8 << bit;
                let want = header_flip_verdict(doc, &lay, pos, mask);
                let paths = if small || (sampled && bit == pos % 8) {
                    Paths::All
                } else {
                    Paths::Streaming
                };
                bad[pos] ^= mask;
                check_rejected(doc, &bad, &want, 0, paths, &|| {
                    format!(
                        "{}: header byte {pos} ({:?}) bit {bit}",
                        doc.name(),
                        lay.fields[pos]
                    )
                });
                bad[pos] ^= mask;
                cases += 1;
            }
        }
    }
    let headers: usize = docs().iter().map(|d| d.hl * 8).sum();
    assert_eq!(cases, headers);
}

/// The header bytes of large documents that also go through the one-call paths: every byte of
/// the short fields, the ends of the long ones.
fn header_sample(lay: &Layout, pos: usize) -> bool {
    let f = lay.fields[pos];
    let long = matches!(
        f,
        Field::DocId
            | Field::PayloadSalt
            | Field::Ephemeral
            | Field::Body
            | Field::SealedMetadata
            | Field::Mac
    );
    !long || pos == 0 || lay.fields[pos - 1] != f || lay.fields.get(pos + 1) != Some(&f)
}

// ---------------------------------------------------------------------------------------------
// Payload bit flips.

/// Payload bits to flip: `(offset, bits)`.
/// - Payloads of up to 64 bytes: every bit.
/// - Otherwise every bit of the tag (the last 16 bytes) of the first and of the last chunk, of
///   the whole last chunk when it is 64 bytes or shorter, and of the padding; one rotating bit
///   of the first and last 16 bytes of every chunk (both sides of each boundary), and of every
///   8191st byte in between.
///
/// Every bit of every byte would be 1.6 million flips for the largest document; each failed
/// open of it zeroizes about half a megabyte with an unoptimised `zeroize` (see the header-flip
/// test), so the flips are sampled where they all lead to the same check.
fn payload_flips(doc: &Doc) -> Vec<(usize, Range<u8>)> {
    let len = doc.payload().len();
    let chunks = doc.chunks();
    let last = chunks.len() - 1;
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let (start, end) = (i * SEALED_CHUNK, i * SEALED_CHUNK + c.len());
        for p in start..end {
            let tag = p + TAG >= end;
            let padding = i * CHUNK_LEN + (p - start) >= doc.plain.len() && !tag;
            let all = len <= 64 || padding || (i == 0 || i == last) && (tag || c.len() <= 64);
            if all {
                out.push((p, 0..8));
            } else if p < start + TAG || tag || p % 8191 == 0 {
                let b = (p % 8) as u8;
                out.push((p, b..b + 1));
            }
        }
    }
    out
}

/// A flip anywhere in chunk `c` (content, padding or tag) is `ChunkAuth { c }`; the chunks
/// before it come out of the stream reader, nothing of chunk `c` does. The payload does not
/// depend on the slots, so this runs on the double-key shape, plus a Padmé-padded document
/// (1000 bytes padded to 1024) whose padding must be as authenticated as the content.
#[test]
fn payload_bit_flips_fail_with_chunk_auth_at_their_chunk() {
    let padded = Doc::new(Shape::DoubleKey, 1000, true);
    assert_eq!(padded.payload().len(), 1024 + TAG, "Padmé padded it");
    let mut cases = 0;
    for doc in docs()
        .iter()
        .filter(|d| d.shape == Shape::DoubleKey)
        .chain([&padded])
    {
        let mut bad = doc.sealed.clone();
        for (p, bits) in payload_flips(doc) {
            let chunk = p / SEALED_CHUNK;
            for bit in bits {
                bad[doc.hl + p] ^= 1 << bit;
                assert_rejected(
                    doc,
                    &bad,
                    &Kind::ChunkAuth(chunk as u64),
                    doc.released(chunk),
                    &|| format!("{}: payload byte {p} bit {bit}", doc.name()),
                );
                bad[doc.hl + p] ^= 1 << bit;
                cases += 1;
            }
        }
    }
    assert!(cases > 1_000, "{cases} payload flips");
}

// ---------------------------------------------------------------------------------------------
// Truncation and appended data.

/// The verdict for the document cut to its first `cut` bytes, and how many chunks the stream
/// reader hands out first (FORMAT.md §3.2 rule 1, §11.1 step 2, §8.4 in its seekable form).
fn truncation_verdict(doc: &Doc, cut: usize) -> (Kind, usize) {
    if cut < 6 {
        // Shorter than the magic (a prefix of it, or nothing): not a kluis document.
        return (Kind::NotSealed, 0);
    }
    if cut < doc.hl {
        // Starts with the magic but ends inside the header, the 12-byte prefix included.
        return (Kind::MalformedHeader, 0);
    }
    let left = cut - doc.hl;
    let (full, rest) = (left / SEALED_CHUNK, left % SEALED_CHUNK);
    match (full, rest) {
        // No payload at all.
        (0, 0) => (Kind::Truncated(0), 0),
        // Cut at a chunk boundary: chunk full−1 opens only as a non-last chunk. It is not
        // handed out: the reader only learns it was not last when the input ends.
        (f, 0) => (Kind::Truncated(f as u64), f - 1),
        // 1..=16 bytes after a full chunk cannot be a chunk, so that chunk must be the last,
        // and it was not sealed as last.
        (f, 1..=16) if f > 0 => (Kind::ChunkAuth(f as u64 - 1), f - 1),
        // Cut inside a chunk (with at least 17 bytes of it left, or in chunk 0): the short
        // rest is opened as the last chunk and fails.
        (f, _) => (Kind::ChunkAuth(f as u64), f),
    }
}

/// Cuts to try: every length for small documents; otherwise every cut inside the header and
/// around every chunk boundary (±1, ±15..18), mid-chunk, and near the end.
fn cuts(doc: &Doc) -> Vec<usize> {
    let len = doc.sealed.len();
    if len <= doc.hl + 64 {
        return (0..len).collect();
    }
    let mut at: Vec<usize> = (0..=doc.hl).collect();
    for b in (doc.hl..len).step_by(SEALED_CHUNK) {
        for d in [1, 15, 16, 17, 18] {
            at.extend([b - d, b + d]);
        }
        at.extend([b, b + SEALED_CHUNK / 2]);
    }
    at.extend([len - 1, len - 15, len - 16, len - 17, len - 18]);
    at.retain(|&c| c < len);
    at.sort_unstable();
    at.dedup();
    at
}

#[test]
fn truncation_anywhere_fails_with_its_error() {
    for doc in docs() {
        for cut in cuts(doc) {
            let (want, chunks) = truncation_verdict(doc, cut);
            assert_rejected(
                doc,
                &doc.sealed[..cut],
                &want,
                doc.released(chunks),
                &|| format!("{}: cut to {cut} of {} bytes", doc.name(), doc.sealed.len()),
            );
        }
    }
}

/// The verdict for `extra` bytes after a complete document (FORMAT.md §8.4): `TrailingData`
/// only for 1..=16 bytes after a *full* last chunk; otherwise the last chunk is opened with the
/// wrong boundary or the wrong flag: `ChunkAuth` for it. Either way the last chunk's plaintext
/// is not handed out.
fn append_verdict(doc: &Doc, extra: usize) -> (Kind, usize) {
    let last = doc.last();
    let full_last = doc.chunks()[last].len() == SEALED_CHUNK;
    match extra {
        1..=16 if full_last => (Kind::TrailingData, last),
        _ => (Kind::ChunkAuth(last as u64), last),
    }
}

#[test]
fn appended_data_fails_with_its_error() {
    for doc in docs() {
        let sizes = [
            1,
            2,
            15,
            16,
            17,
            18,
            100,
            SEALED_CHUNK - 1,
            SEALED_CHUNK,
            SEALED_CHUNK + 17,
        ];
        let mut tails: Vec<(String, Vec<u8>)> = sizes
            .into_iter()
            .flat_map(|n| {
                [
                    (format!("{n} zeros"), vec![0u8; n]),
                    (format!("{n} x 0xa5"), vec![0xa5; n]),
                ]
            })
            .collect();
        tails.push((
            "a copy of the last chunk".into(),
            doc.chunks()[doc.last()].to_vec(),
        ));
        tails.push(("the whole document again".into(), doc.sealed.clone()));
        for (what, tail) in tails {
            let (want, chunks) = append_verdict(doc, tail.len());
            let bad = [&doc.sealed[..], &tail].concat();
            assert_rejected(doc, &bad, &want, doc.released(chunks), &|| {
                format!("{}: appended {what}", doc.name())
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Chunks moved, repeated, dropped, or taken from another document.

/// The verdict for a payload made of `doc`'s chunks in the order `seq`. All our chunks hold at
/// least 17 sealed bytes, so a chunk boundary never looks like trailing data:
/// - a strict prefix of the chunks ends at a full chunk: `Truncated`;
/// - all chunks and then more: as appended data;
/// - otherwise, the first position `p` that holds the wrong chunk fails: `ChunkAuth { p }`
///   (the counter is in the nonce), and chunks before `p` come out.
fn reorder_verdict(doc: &Doc, seq: &[usize]) -> (Kind, usize) {
    let n = doc.last() + 1;
    let chunks = doc.chunks();
    assert!(chunks.iter().all(|c| c.len() >= 17));
    let same = seq.iter().zip(0..n).take_while(|(a, b)| *a == b).count();
    if same == seq.len() && seq.len() < n {
        return truncation_verdict(doc, doc.hl + seq.len() * SEALED_CHUNK);
    }
    if same == n {
        let extra = seq[n..].iter().map(|&i| chunks[i].len()).sum();
        return append_verdict(doc, extra);
    }
    (Kind::ChunkAuth(same as u64), same)
}

#[test]
fn reordered_repeated_and_dropped_chunks_fail() {
    for doc in docs()
        .iter()
        .filter(|d| d.last() > 0 || d.plain.len() == CHUNK_LEN)
    {
        let n = doc.last() + 1;
        let chunks = doc.chunks();
        let mut seqs: Vec<Vec<usize>> = Vec::new();
        let all: Vec<usize> = (0..n).collect();
        for i in 0..n {
            // Duplicate chunk i in place.
            let mut s = all.clone();
            s.insert(i, i);
            seqs.push(s);
            if n > 1 {
                // Drop chunk i.
                let mut s = all.clone();
                s.remove(i);
                seqs.push(s);
            }
            for j in i + 1..n {
                // Swap chunks i and j.
                let mut s = all.clone();
                s.swap(i, j);
                seqs.push(s);
            }
        }
        // The last chunk moved to the front; everything reversed.
        seqs.push([n - 1].into_iter().chain(0..n - 1).collect());
        seqs.push((0..n).rev().collect());
        seqs.retain(|s| *s != all);
        for seq in seqs {
            let (want, out) = reorder_verdict(doc, &seq);
            let mut bad = doc.sealed[..doc.hl].to_vec();
            for &i in &seq {
                bad.extend_from_slice(chunks[i]);
            }
            assert_rejected(doc, &bad, &want, doc.released(out), &|| {
                format!("{}: chunks in order {seq:?}", doc.name())
            });
        }
    }
}

/// Another document of the same shape, size and keys: its chunks and header are authentic,
/// but under another file key and payload salt.
fn twin(doc: &Doc) -> Doc {
    Doc::new(doc.shape, doc.plain.len(), false)
}

#[test]
fn chunks_and_headers_of_another_document_fail() {
    for doc in docs() {
        let other = twin(doc);
        // A's header on B's payload: the payload key differs, so chunk 0 fails.
        let bad = [&doc.sealed[..doc.hl], other.payload()].concat();
        assert_rejected(doc, &bad, &Kind::ChunkAuth(0), 0, &|| {
            format!("{}: header of A, payload of B", doc.name())
        });
        // And B's header on A's payload, judged against B's plaintext.
        let bad = [&other.sealed[..other.hl], doc.payload()].concat();
        assert_rejected(&other, &bad, &Kind::ChunkAuth(0), 0, &|| {
            format!("{}: header of B, payload of A", doc.name())
        });
        // Each chunk in turn replaced with the same-position chunk of B.
        for i in 0..=doc.last() {
            let mut bad = doc.sealed[..doc.hl].to_vec();
            for (j, (a, b)) in doc.chunks().iter().zip(other.chunks()).enumerate() {
                bad.extend_from_slice(if i == j { b } else { a });
            }
            assert_rejected(
                doc,
                &bad,
                &Kind::ChunkAuth(i as u64),
                doc.released(i),
                &|| format!("{}: chunk {i} taken from B", doc.name()),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Header surgery: stanzas and slots moved between documents, removed, repeated.

/// Rebuild a header from its parts, fixing slot_count and header_len but keeping the old MAC.
fn rebuild(doc: &Doc, doc_id: &[u8], slots: &[Vec<&[u8]>], count: Option<u8>) -> Vec<u8> {
    let lay = layout(&doc.sealed);
    let h = &doc.sealed;
    let mut out = h[..layout::DOC_ID_AT].to_vec();
    out.extend_from_slice(doc_id);
    out.extend_from_slice(&h[layout::PAYLOAD_SALT_AT..layout::SLOT_COUNT_AT]);
    out.push(count.unwrap_or(slots.len() as u8));
    for slot in slots {
        out.push(slot.len() as u8);
        for s in slot {
            out.extend_from_slice(s);
        }
    }
    let (_, slots_end, _) = *lay.slots.last().unwrap();
    out.extend_from_slice(&h[slots_end..doc.hl]); // meta_len, metadata, old MAC
    let hl = out.len();
    layout::set_header_len(&mut out, hl);
    out.extend_from_slice(doc.payload());
    out
}

/// The stanzas of a document's slots, as raw bytes.
fn stanza_bytes(doc: &Doc) -> Vec<Vec<&[u8]>> {
    let lay = layout(&doc.sealed);
    lay.slots
        .iter()
        .map(|(_, _, ids)| {
            ids.iter()
                .map(|&i| {
                    let s = lay.stanzas[i];
                    &doc.sealed[s.start..s.end()]
                })
                .collect()
        })
        .collect()
}

fn doc_id(doc: &Doc) -> &[u8] {
    &doc.sealed[layout::DOC_ID_AT..layout::PAYLOAD_SALT_AT]
}

#[test]
fn stanzas_and_slots_from_another_document_fail() {
    for &size in &[0, 1, CHUNK_LEN + 1] {
        let a = Doc::new(Shape::DoubleKey, size, false);
        let b = twin(&a);
        let (sa, sb) = (stanza_bytes(&a), stanza_bytes(&b));
        let id = doc_id(&a);
        let cases: Vec<(&str, Vec<u8>, Kind)> = vec![
            // A stanza is bound to its document's doc_id (in its AAD): B's stanza under A's
            // doc_id is "not mine" to the key that would open it, so A's only slot is short
            // of a share: NoMatchingKey, never a key.
            (
                "B's org stanza in A's double-key slot",
                rebuild(&a, id, &[vec![sb[0][0], sa[0][1]]], None),
                Kind::NoMatchingKey,
            ),
            (
                "B's holder stanza in A's double-key slot",
                rebuild(&a, id, &[vec![sa[0][0], sb[0][1]]], None),
                Kind::NoMatchingKey,
            ),
            (
                "B's whole slot in A's header",
                rebuild(&a, id, &[sb[0].clone()], None),
                Kind::NoMatchingKey,
            ),
            // B's slot together with B's doc_id: both stanzas open, to B's file key, which
            // fails A's MAC (over A's salt and metadata, with B's doc_id).
            (
                "B's slot and doc_id in A's header",
                rebuild(&a, doc_id(&b), &[sb[0].clone()], None),
                Kind::HeaderMac,
            ),
            // The two stanzas of the slot in the other order: the shares still XOR to K,
            // but the MAC covers the order.
            (
                "the double-key slot's stanzas swapped",
                rebuild(&a, id, &[vec![sa[0][1], sa[0][0]]], None),
                Kind::HeaderMac,
            ),
            // One stanza dropped from the double-key slot. The holder stanza alone parses
            // (X25519 stanzas carry no slot kind), and its share s2 taken as K fails the MAC.
            (
                "the org stanza removed from the double-key slot",
                rebuild(&a, id, &[vec![sa[0][1]]], None),
                Kind::HeaderMac,
            ),
            // The org stanza alone says slot_kind 2 in a one-stanza slot (§4 rule 4).
            (
                "the holder stanza removed from the double-key slot",
                rebuild(&a, id, &[vec![sa[0][0]]], None),
                Kind::MalformedHeader,
            ),
            // A stanza twice: both open to the same share, K = s ⊕ s = 0, the MAC fails.
            (
                "the org stanza twice",
                rebuild(&a, id, &[vec![sa[0][0], sa[0][0]]], None),
                Kind::HeaderMac,
            ),
            (
                "the holder stanza twice",
                rebuild(&a, id, &[vec![sa[0][1], sa[0][1]]], None),
                Kind::HeaderMac,
            ),
            // The double-key slot split into two one-stanza slots: slot_kind 2 alone again.
            (
                "the double-key slot split into two slots",
                rebuild(&a, id, &[vec![sa[0][0]], vec![sa[0][1]]], None),
                Kind::MalformedHeader,
            ),
            // The slot repeated: the first copy opens K, and the MAC covers the slot count.
            (
                "the double-key slot twice",
                rebuild(&a, id, &[sa[0].clone(), sa[0].clone()], None),
                Kind::HeaderMac,
            ),
            (
                "B's slot added after A's",
                rebuild(&a, id, &[sa[0].clone(), sb[0].clone()], None),
                Kind::HeaderMac,
            ),
            (
                "B's slot added before A's",
                rebuild(&a, id, &[sb[0].clone(), sa[0].clone()], None),
                Kind::HeaderMac,
            ),
        ];
        for (what, bad, want) in cases {
            assert_rejected(&a, &bad, &want, 0, &|| format!("{}: {what}", a.name()));
        }
    }
}

#[test]
fn slots_removed_repeated_or_reordered_fail() {
    for &size in &[0, 1, CHUNK_LEN + 1] {
        let doc = Doc::new(Shape::TwoSlots, size, false);
        let s = stanza_bytes(&doc);
        let id = doc_id(&doc);
        let (hr, rec) = (s[0].clone(), s[1].clone());
        let mut cases: Vec<(String, Vec<u8>, Kind)> = vec![
            // Whatever slot still opens recovers K, and the MAC covers every slot byte.
            (
                "recovery slot removed".into(),
                rebuild(&doc, id, std::slice::from_ref(&hr), None),
                Kind::HeaderMac,
            ),
            (
                "hr slot removed".into(),
                rebuild(&doc, id, std::slice::from_ref(&rec), None),
                Kind::HeaderMac,
            ),
            (
                "slots swapped".into(),
                rebuild(&doc, id, &[rec.clone(), hr.clone()], None),
                Kind::HeaderMac,
            ),
            (
                "hr slot repeated".into(),
                rebuild(&doc, id, &[hr.clone(), hr.clone(), rec.clone()], None),
                Kind::HeaderMac,
            ),
            (
                "recovery slot repeated".into(),
                rebuild(&doc, id, &[hr.clone(), rec.clone(), rec.clone()], None),
                Kind::HeaderMac,
            ),
            // Sixteen slots is the limit (§3.2 rule 6): one more is SlotCount, checked while
            // parsing, before any key is asked.
            (
                "17 slots".into(),
                rebuild(&doc, id, &vec![hr.clone(); 17], None),
                Kind::SlotCount(17),
            ),
            (
                "slot count 0".into(),
                rebuild(&doc, id, &[hr.clone(), rec.clone()], Some(0)),
                Kind::SlotCount(0),
            ),
            // A slot removed but the count left at 2: meta_len's high byte (0) is read as the
            // second slot's stanza count.
            (
                "recovery slot removed, count left at 2".into(),
                rebuild(&doc, id, std::slice::from_ref(&hr), Some(2)),
                Kind::MalformedHeader,
            ),
            // A slot added but the count left at 2: the third slot's count byte (1) is read as
            // meta_len's high byte, and the metadata runs into the MAC or short of it.
            (
                "slot added, count left at 2".into(),
                rebuild(&doc, id, &[hr.clone(), rec.clone(), rec.clone()], Some(2)),
                Kind::MalformedHeader,
            ),
        ];
        // 16 slots are allowed: it parses, the first slot opens K, the MAC fails.
        cases.push((
            "16 slots".into(),
            rebuild(&doc, id, &vec![hr.clone(); 16], None),
            Kind::HeaderMac,
        ));
        // The recovery slot removed without fixing header_len: bytes are left between the
        // metadata and the (shifted) MAC position.
        let mut bad = rebuild(&doc, id, std::slice::from_ref(&hr), None);
        layout::set_header_len(&mut bad, doc.hl);
        cases.push((
            "slot removed, header_len kept".into(),
            bad,
            Kind::MalformedHeader,
        ));
        for (what, bad, want) in cases {
            assert_rejected(&doc, &bad, &want, 0, &|| format!("{}: {what}", doc.name()));
        }
    }
}

/// A double-key slot with one share from another document. An attacker can read A's doc_id
/// (it is public) and wrap shares of its own document B to A's doc_id with the label's and the
/// holder's public keys: such a stanza is authentic and opens. Spliced into A's slot with A's
/// other stanza, the two shares join to a key that is neither A's nor B's, and the header MAC
/// rejects it: `HeaderMac`, never a key, never a payload byte.
#[test]
fn double_key_slot_with_a_share_from_another_document_fails_the_mac() {
    let k = keys();
    for &size in &[0, 1, CHUNK_LEN + 1] {
        let a = Doc::new(Shape::DoubleKey, size, false);
        let id: [u8; 16] = doc_id(&a).try_into().unwrap();
        // B: a file key and its two shares, wrapped by the independent encoder below.
        let kb: [u8; 32] = raw::random();
        let s1: [u8; 32] = raw::random();
        let s2: [u8; 32] = std::array::from_fn(|i| kb[i] ^ s1[i]);
        let org = raw::org_stanza(&id, "hr", 1, 2, k.hr.public_key().key().as_bytes(), &s1);
        let holder = raw::x25519_stanza(&id, k.holder.public_key().as_bytes(), &s2);
        // They are authentic: each key opens its stanza of B to B's share.
        match Stanza::from_bytes(&org).unwrap() {
            Stanza::Org(o) => {
                let share = k.hr.unwrap_stanza(&DocId(id), &o).unwrap();
                assert_eq!(share.expose_secret(), &s1);
            }
            other => panic!("not an org stanza: {other:?}"),
        }
        match Stanza::from_bytes(&holder).unwrap() {
            Stanza::X25519(x) => {
                let share = k.holder.unwrap_stanza(&DocId(id), &x).unwrap();
                assert_eq!(share.expose_secret(), &s2);
            }
            other => panic!("not an X25519 stanza: {other:?}"),
        }
        let sa = stanza_bytes(&a);
        for (what, slot) in [
            (
                "B's org share with A's holder share",
                vec![&org[..], sa[0][1]],
            ),
            (
                "A's org share with B's holder share",
                vec![sa[0][0], &holder[..]],
            ),
            ("both shares of B", vec![&org[..], &holder[..]]),
        ] {
            let bad = rebuild(&a, &id, &[slot], None);
            assert_rejected(&a, &bad, &Kind::HeaderMac, 0, &|| {
                format!("{}: {what}", a.name())
            });
        }
    }
}

/// In place, a failure after chunks were already decrypted into the buffer (here: the last
/// chunk of four is damaged, so chunks 0–2 were decrypted in place first) still leaves the
/// buffer empty. A streaming reader at that point has handed out exactly chunks 0–2.
#[test]
fn late_failure_in_place_leaves_no_plaintext() {
    let doc = &docs()[4];
    assert_eq!((doc.shape, doc.last()), (Shape::DoubleKey, 3));
    let mut bad = doc.sealed.clone();
    let at = bad.len() - 1;
    bad[at] ^= 0x80;
    let mut buf = bad.clone();
    let cap = buf.capacity();
    let e = kluis_core::fast::open_in_place(
        &mut buf,
        &doc.shape.holders(),
        &kluis_core::fast::FastOptions::default(),
    )
    .unwrap_err();
    assert_eq!(kind(&e), Kind::ChunkAuth(3));
    assert!(buf.is_empty());
    assert_eq!(buf.capacity(), cap, "wiped in place, not reallocated");
    let (out, r) = open_streaming(&bad, &doc.shape.holders(), Backend::default());
    assert_eq!(kind(&r.unwrap_err()), Kind::ChunkAuth(3));
    assert!(out == doc.plain[..3 * CHUNK_LEN]);
}

// ---------------------------------------------------------------------------------------------
// Property tests: random edits anywhere.

/// The errors a change inside the header region before the metadata can give.
fn header_kind(k: &Kind) -> bool {
    matches!(
        k,
        Kind::NotSealed
            | Kind::UnsupportedVersion(_)
            | Kind::HeaderSize(_)
            | Kind::SlotCount(_)
            | Kind::StanzaBodyLength { .. }
            | Kind::MalformedHeader
            | Kind::NoMatchingKey
            | Kind::HeaderMac
    )
}

/// Open on all three paths; they must agree on one error, and no path may succeed or panic.
fn all_paths_reject(doc: &Doc, bad: &[u8]) -> Result<Kind, TestCaseError> {
    let holders = doc.shape.holders();
    let one = match open(bad, &holders) {
        Ok((plain, _)) => {
            return Err(TestCaseError::fail(format!(
                "open accepted an edited document (same plaintext: {})",
                plain == doc.plain
            )));
        }
        Err(e) => kind(&e),
    };
    let mut buf = bad.to_vec();
    let in_place = kluis_core::fast::open_in_place(
        &mut buf,
        &holders,
        &kluis_core::fast::FastOptions::default().threads(next_threads()),
    )
    .map(|_| ())
    .map_err(|e| kind(&e));
    prop_assert_eq!(in_place, Err(one.clone()));
    prop_assert!(buf.is_empty());
    let (out, r) = open_streaming(bad, &holders, Backend::default());
    prop_assert_eq!(r.map(|_| ()).map_err(|e| kind(&e)), Err(one.clone()));
    prop_assert!(
        doc.plain.starts_with(&out),
        "streaming handed out bytes that are not the plaintext"
    );
    Ok(one)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any single byte replaced by any other value: an error, the same on all three paths, of
    /// the kind the region allows; never a success, never a panic.
    #[test]
    fn any_single_byte_edit_is_rejected(d in 0usize..10, pos: prop::sample::Index, x in 1u8..=255) {
        let doc = &docs()[d];
        let lay = layout(&doc.sealed);
        let at = pos.index(doc.sealed.len());
        let mut bad = doc.sealed.clone();
        bad[at] ^= x;
        let k = all_paths_reject(doc, &bad)?;
        if at >= doc.hl {
            // A payload byte: its chunk fails, whatever the value.
            prop_assert_eq!(k, Kind::ChunkAuth(((at - doc.hl) / SEALED_CHUNK) as u64));
        } else if matches!(lay.fields[at], Field::PayloadSalt | Field::SealedMetadata | Field::Mac) {
            // Payload salt, sealed metadata, MAC: only the MAC notices.
            prop_assert_eq!(k, Kind::HeaderMac);
        } else if at < 6 {
            prop_assert_eq!(k, Kind::NotSealed);
        } else {
            prop_assert!(header_kind(&k), "byte {} ({:?}): {:?}", at, lay.fields[at], k);
        }
    }

    /// A byte inserted or deleted anywhere: rejected on all three paths, never a panic.
    #[test]
    fn a_byte_inserted_or_deleted_is_rejected(d in 0usize..10, pos: prop::sample::Index, x: u8, insert: bool) {
        let doc = &docs()[d];
        let mut bad = doc.sealed.clone();
        let at = pos.index(bad.len());
        if insert {
            bad.insert(at, x);
        } else {
            bad.remove(at);
        }
        let k = all_paths_reject(doc, &bad)?;
        prop_assert!(!matches!(k, Kind::Other(_)), "{:?}", k);
    }

    /// Up to eight random bytes overwritten at random places: rejected, never a panic.
    #[test]
    fn scattered_edits_are_rejected(
        d in 0usize..10,
        edits in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
    ) {
        let doc = &docs()[d];
        let mut bad = doc.sealed.clone();
        for (pos, x) in edits {
            let at = pos.index(bad.len());
            bad[at] ^= x;
        }
        let k = all_paths_reject(doc, &bad)?;
        prop_assert!(!matches!(k, Kind::Other(_)), "{:?}", k);
    }

    /// Random bytes after a valid prefix (magic, version, a length): never a panic, never
    /// success, and all paths agree.
    #[test]
    fn random_headers_are_rejected(len in 0u32..70_000, rest in prop::collection::vec(any::<u8>(), 0..600)) {
        let doc = &docs()[0];
        let mut bad = b"KLUIS\0\0\x01".to_vec();
        bad.extend_from_slice(&len.to_be_bytes());
        bad.extend_from_slice(&rest);
        let k = all_paths_reject(doc, &bad)?;
        prop_assert!(header_kind(&k), "{:?}", k);
    }
}

// ---------------------------------------------------------------------------------------------
// An independent encoder for stanzas (FORMAT.md §5.2, §5.3), as in examples/gen_vectors.rs: it
// wraps shares an attacker chooses, which the public API never does.

mod raw {
    use ring::rand::SecureRandom;
    use ring::{aead, hkdf};
    use x25519_dalek::{PublicKey, StaticSecret};

    pub fn random<const N: usize>() -> [u8; N] {
        let mut b = [0u8; N];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .expect("OS random");
        b
    }

    fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
            .extract(ikm)
            .expand(&[info], hkdf::HKDF_SHA256)
            .expect("32-byte expand")
            .fill(&mut out)
            .expect("32-byte fill");
        out
    }

    /// `E ‖ AEAD(W, 0, aad, share)` with a fresh ephemeral key.
    fn wrap(info: &[u8], aad: &[u8], p: &[u8; 32], share: &[u8; 32]) -> Vec<u8> {
        let e = StaticSecret::from(random::<32>());
        let e_pub = PublicKey::from(&e).to_bytes();
        let z = e.diffie_hellman(&PublicKey::from(*p));
        let w = hkdf(z.as_bytes(), &[&e_pub[..], p].concat(), info);
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &w).unwrap());
        let mut body = share.to_vec();
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key([0; 12]),
            aead::Aad::from(aad),
            &mut body,
        )
        .unwrap();
        [&e_pub[..], &body].concat()
    }

    fn stanza(kind: u8, content: &[u8]) -> Vec<u8> {
        let mut s = vec![kind];
        s.extend_from_slice(&(content.len() as u16).to_be_bytes());
        s.extend_from_slice(content);
        s
    }

    pub fn org_stanza(
        doc_id: &[u8; 16],
        label: &str,
        kid: u32,
        slot_kind: u8,
        p: &[u8; 32],
        share: &[u8; 32],
    ) -> Vec<u8> {
        let mut fields = vec![label.len() as u8];
        fields.extend_from_slice(label.as_bytes());
        fields.extend_from_slice(&kid.to_be_bytes());
        fields.push(slot_kind);
        let aad = [&b"kluis/v1/org"[..], doc_id, &fields].concat();
        let wrapped = wrap(b"kluis/v1/org-x25519", &aad, p, share);
        stanza(0x01, &[fields, wrapped].concat())
    }

    pub fn x25519_stanza(doc_id: &[u8; 16], p: &[u8; 32], share: &[u8; 32]) -> Vec<u8> {
        let aad = [&b"kluis/v1/x25519"[..], doc_id].concat();
        stanza(0x02, &wrap(b"kluis/v1/x25519", &aad, p, share))
    }
}
