//! The public API end to end: streaming, batch unlock, double key, re-keying, identities.

use std::io::{Read, Write};
use std::time::{Duration, UNIX_EPOCH};

use kluis_core::{
    Error, Header, Identity, LabelKey, Metadata, Recipient, Slot, StreamReader, StreamWriter,
    Unwrap, UnwrapError, UnwrapRequest, open, rekey, seal, unlock_all,
};
use proptest::prelude::*;

fn label(l: &LabelKey) -> Recipient {
    Recipient::Label(l.public_key().clone())
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A fresh label key and `len` bytes of data sealed to it: (key, plaintext, sealed).
fn sealed_doc(len: usize) -> (LabelKey, Vec<u8>, Vec<u8>) {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let plain = data(len);
    let sealed = seal(&[Slot::single(label(&hr))], &Metadata::default(), &plain).unwrap();
    (hr, plain, sealed)
}

/// Counts calls and stanzas, to check batching.
struct Counting<'a> {
    inner: &'a LabelKey,
    calls: std::cell::Cell<usize>,
    stanzas: std::cell::Cell<usize>,
}

impl Unwrap for Counting<'_> {
    fn accepts(&self, s: &kluis_core::Stanza) -> bool {
        self.inner.accepts(s)
    }
    fn unwrap(&self, r: &[UnwrapRequest<'_>]) -> Vec<Result<kluis_core::Share, UnwrapError>> {
        self.calls.set(self.calls.get() + 1);
        self.stanzas.set(self.stanzas.get() + r.len());
        self.inner.unwrap(r)
    }
}

/// A key server that refuses everything.
struct Refusing;

impl Unwrap for Refusing {
    fn accepts(&self, s: &kluis_core::Stanza) -> bool {
        matches!(s, kluis_core::Stanza::Org(_))
    }
    fn unwrap(&self, r: &[UnwrapRequest<'_>]) -> Vec<Result<kluis_core::Share, UnwrapError>> {
        r.iter()
            .map(|_| Err(UnwrapError::denied("not in group hr")))
            .collect()
    }
}

#[test]
fn streaming_round_trip_in_small_writes_with_metadata() {
    let hr = LabelKey::generate("hr", 7).unwrap();
    let plain = data(3 * 65536 + 123);
    let t = UNIX_EPOCH + Duration::new(1_700_000_000, 42);
    let meta = Metadata::with_size(plain.len() as u64)
        .name("dossier 2026.pdf")
        .modified(t);
    let mut w = StreamWriter::new(Vec::new(), &[Slot::single(label(&hr))], &meta).unwrap();
    for piece in plain.chunks(1000) {
        w.write_all(piece).unwrap();
    }
    let sealed = w.finish().unwrap();

    let mut input = &sealed[..];
    let header = Header::read(&mut input).unwrap();
    assert_eq!(header.slots().len(), 1);
    let info = header.payload_info(sealed.len() as u64).unwrap();
    assert_eq!(info.chunks, 4);
    assert_eq!(info.padded_len, plain.len() as u64);
    let key = header.unlock(&[&hr]).unwrap();
    let mut r = StreamReader::new(&header, &key, input).unwrap();
    assert_eq!(r.metadata(), &meta);
    let mut out = Vec::new();
    // Read in odd sizes.
    let mut buf = [0u8; 777];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, plain);
}

#[test]
fn the_header_is_small_and_inspectable_without_a_key() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let sealed = seal(&[Slot::single(label(&hr))], &Metadata::default(), b"x").unwrap();
    let header = Header::parse(&sealed).unwrap();
    assert!(header.len() <= 512, "header is {} bytes", header.len());
    match &header.slots()[0][..] {
        [kluis_core::Stanza::Org(o)] => {
            assert_eq!((o.label(), o.kid()), ("hr", 1));
            assert_eq!(o.slot_kind(), kluis_core::SlotKind::Whole);
        }
        other => panic!("unexpected slot {other:?}"),
    }
    assert_eq!(header.to_bytes(), &sealed[..header.len()]);
}

#[test]
fn declared_size_is_enforced_when_sealing() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let slots = [Slot::single(label(&hr))];
    let mut w = StreamWriter::new(Vec::new(), &slots, &Metadata::with_size(10)).unwrap();
    w.write_all(b"12345").unwrap();
    assert!(matches!(
        w.finish(),
        Err(Error::SizeMismatch {
            expected: 10,
            found: 5
        })
    ));
    let mut w = StreamWriter::new(Vec::new(), &slots, &Metadata::with_size(3)).unwrap();
    let e = w.write_all(b"1234").unwrap_err();
    assert!(matches!(
        Error::from_io(e),
        Error::SizeMismatch { expected: 3, .. }
    ));
}

#[test]
fn padding_hides_the_size_and_is_removed_on_open() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let plain = data(1000);
    let meta = Metadata::with_size(1000).padded().unwrap();
    assert_eq!(meta.padding, 24);
    let sealed = seal(&[Slot::single(label(&hr))], &meta, &plain).unwrap();
    let header = Header::parse(&sealed).unwrap();
    assert_eq!(
        header.payload_info(sealed.len() as u64).unwrap().padded_len,
        1024
    );
    let (out, m) = open(&sealed, &[&hr]).unwrap();
    assert_eq!(out, plain);
    assert_eq!(m.padding, 24);
}

/// Issue 17 defect 6: with `--hide-names --pad` the header's length gave away the name's
/// length (229 vs 279 bytes for names of 1 and 50 characters). With padding, every name up to
/// 256 bytes gives the same header length, and the name and padding come back on open.
#[test]
fn padding_hides_the_name_length_in_the_header() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let mut lens = Vec::new();
    for name in ["a", &"n".repeat(50), &"é".repeat(128), ""] {
        let meta = Metadata::with_size(1000).name(name).padded().unwrap();
        let sealed = seal(&[Slot::single(label(&hr))], &meta, &data(1000)).unwrap();
        let header = Header::parse(&sealed).unwrap();
        lens.push((header.len(), sealed.len()));
        assert_eq!(header.name_len_bound(), 256);
        let (out, m) = open(&sealed, &[&hr]).unwrap();
        assert_eq!(out, data(1000));
        assert_eq!(m.name, name);
        assert!(m.name_padded);
    }
    assert!(lens.windows(2).all(|w| w[0] == w[1]), "{lens:?}");
    // Past one bucket, only the 256-byte step shows.
    let long = Metadata::with_size(1)
        .name("x".repeat(257))
        .padded()
        .unwrap();
    let sealed = seal(&[Slot::single(label(&hr))], &long, b"1").unwrap();
    assert_eq!(Header::parse(&sealed).unwrap().name_len_bound(), 512);
    // Without padding nothing changes: old readers keep reading what this writer seals.
    let plain = Metadata::with_size(1).name("ab");
    let sealed = seal(&[Slot::single(label(&hr))], &plain, b"1").unwrap();
    assert_eq!(Header::parse(&sealed).unwrap().name_len_bound(), 2);
    assert!(!open(&sealed, &[&hr]).unwrap().1.name_padded);
}

#[test]
fn double_key_needs_both_keys_and_binds_the_slot_kind() {
    let hr = LabelKey::generate("medical", 3).unwrap();
    let holder = Identity::generate().unwrap();
    let slot = Slot::double(label(&hr), Recipient::Key(holder.public_key())).unwrap();
    let sealed = seal(&[slot], &Metadata::default(), b"diagnosis").unwrap();
    assert_eq!(open(&sealed, &[&hr, &holder]).unwrap().0, b"diagnosis");
    assert!(matches!(open(&sealed, &[&hr]), Err(Error::NoMatchingKey)));
    assert!(matches!(
        open(&sealed, &[&holder]),
        Err(Error::NoMatchingKey)
    ));
    // The org stanza says it is half of a double-key slot, so a key server can enforce it.
    let header = Header::parse(&sealed).unwrap();
    let kinds: Vec<_> = header.slots()[0]
        .iter()
        .filter_map(|s| match s {
            kluis_core::Stanza::Org(o) => Some(o.slot_kind()),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, [kluis_core::SlotKind::Half]);
}

#[test]
fn a_refusing_key_server_falls_back_to_recovery_and_reports_the_refusal() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let recovery = Identity::generate().unwrap();
    let slots = [
        Slot::single(label(&hr)),
        Slot::single(Recipient::Key(recovery.public_key())),
    ];
    let sealed = seal(&slots, &Metadata::default(), b"woo request").unwrap();
    match open(&sealed, &[&Refusing]) {
        Err(Error::Unwrap(UnwrapError::Denied(m))) => assert!(m.to_string().contains("hr")),
        other => panic!("expected a denial, got {other:?}"),
    }
    assert_eq!(
        open(&sealed, &[&Refusing, &recovery]).unwrap().0,
        b"woo request"
    );
}

#[test]
fn many_headers_unlock_with_one_call_per_key_holder() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let holder = Identity::generate().unwrap();
    let docs: Vec<Vec<u8>> = (0..50)
        .map(|i| {
            let slot = if i % 2 == 0 {
                Slot::single(label(&hr))
            } else {
                Slot::double(label(&hr), Recipient::Key(holder.public_key())).unwrap()
            };
            seal(&[slot], &Metadata::default(), format!("doc {i}").as_bytes()).unwrap()
        })
        .collect();
    let headers: Vec<Header> = docs.iter().map(|d| Header::parse(d).unwrap()).collect();
    let refs: Vec<&Header> = headers.iter().collect();
    let server = Counting {
        inner: &hr,
        calls: 0.into(),
        stanzas: 0.into(),
    };
    let keys = unlock_all(&refs, &[&server, &holder]);
    assert_eq!(server.calls.get(), 1, "one round trip for the whole folder");
    assert_eq!(server.stanzas.get(), 50);
    for (i, (doc, key)) in docs.iter().zip(keys).enumerate() {
        let key = key.unwrap();
        let mut r = StreamReader::new(&headers[i], &key, &doc[headers[i].len()..]).unwrap();
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(out, format!("doc {i}"));
    }
}

#[test]
fn rekey_moves_to_a_new_version_and_leaves_the_payload_untouched() {
    let v1 = LabelKey::generate("hr", 1).unwrap();
    let v2 = LabelKey::generate("hr", 2).unwrap();
    let recovery = Identity::generate().unwrap();
    let plain = data(200_000);
    let slots = [
        Slot::single(label(&v1)),
        Slot::single(Recipient::Key(recovery.public_key())),
    ];
    let sealed = seal(&slots, &Metadata::default().name("a.txt"), &plain).unwrap();
    let old = Header::parse(&sealed).unwrap();

    // Replace slot 0 (v1) by a v2 slot; keep the recovery slot.
    let mut out = Vec::new();
    let new = rekey(
        &sealed[..],
        &mut out,
        &[&v1],
        &[1],
        &[Slot::single(label(&v2))],
    )
    .unwrap();
    assert_eq!(new.doc_id(), old.doc_id());
    assert_eq!(
        &out[new.len()..],
        &sealed[old.len()..],
        "payload copied as is"
    );
    assert!(matches!(open(&out, &[&v1]), Err(Error::NoMatchingKey)));
    let (got, meta) = open(&out, &[&v2]).unwrap();
    assert_eq!((got.as_slice(), meta.name.as_str()), (&plain[..], "a.txt"));
    assert_eq!(open(&out, &[&recovery]).unwrap().0, plain);

    // Removing the last slot is refused; keeping a slot twice too.
    let key = old.unlock(&[&v1]).unwrap();
    assert!(matches!(
        old.rekey(&key, &[], &[]),
        Err(Error::InvalidSlots { .. })
    ));
    assert!(old.rekey(&key, &[0, 0], &[]).is_err());
    assert!(old.rekey(&key, &[5], &[]).is_err());
}

#[test]
fn a_stanza_moved_to_another_document_does_not_open_it() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let slots = [Slot::single(label(&hr))];
    let a = seal(&slots, &Metadata::default(), b"A").unwrap();
    let b = seal(&slots, &Metadata::default(), b"B").unwrap();
    let (ha, hb) = (Header::parse(&a).unwrap(), Header::parse(&b).unwrap());
    // Header A on payload B: A's key does not open B's chunks.
    let mut spliced = a[..ha.len()].to_vec();
    spliced.extend_from_slice(&b[hb.len()..]);
    assert!(matches!(
        open(&spliced, &[&hr]),
        Err(Error::ChunkAuth { chunk: 0 })
    ));
}

#[test]
fn seal_into_appends_and_open_in_place_reuses_the_buffer() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let slots = [Slot::single(label(&hr))];
    let mut out = b"prefix".to_vec();
    kluis_core::fast::seal_into(
        &slots,
        &Metadata::default(),
        &data(70_000),
        &mut out,
        &kluis_core::fast::FastOptions::default(),
    )
    .unwrap();
    assert_eq!(&out[..6], b"prefix");
    let mut doc = out[6..].to_vec();
    let meta = kluis_core::fast::open_in_place(
        &mut doc,
        &[&hr],
        &kluis_core::fast::FastOptions::default(),
    )
    .unwrap();
    assert_eq!(doc, data(70_000));
    assert_eq!(meta.size, Some(70_000));
    // A declared size that does not match appends nothing.
    let before = out.len();
    let e = kluis_core::fast::seal_into(
        &slots,
        &Metadata::with_size(5),
        b"abc",
        &mut out,
        &kluis_core::fast::FastOptions::default(),
    );
    assert!(matches!(
        e,
        Err(Error::SizeMismatch {
            expected: 5,
            found: 3
        })
    ));
    assert_eq!(out.len(), before);
}

/// A buffer too small for the document is refused before anything is written, with the
/// size needed; that exact size is enough. No size overflows `max_sealed_len`.
#[test]
fn sealing_into_a_slice_needs_room_for_the_document_only() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let slots = [Slot::single(label(&hr))];
    let plain = data(3 * kluis_core::fast::CHUNK_LEN + 5);
    let meta = Metadata::default();
    let mut small = vec![7u8; 1000];
    let e = kluis_core::fast::seal_to_slice(
        &slots,
        &meta,
        &plain,
        &mut small,
        &kluis_core::fast::FastOptions::default(),
    );
    let needed = match e {
        Err(Error::OutputTooSmall { needed, available }) => {
            assert_eq!(available, 1000);
            needed
        }
        other => panic!("expected OutputTooSmall, got {other:?}"),
    };
    assert!(small.iter().all(|&b| b == 7), "nothing written on error");
    let message = kluis_core::fast::seal_to_slice(
        &slots,
        &meta,
        &plain,
        &mut small,
        &kluis_core::fast::FastOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(message.contains("max_sealed_len"), "{message}");
    assert!(needed <= kluis_core::fast::max_sealed_len(plain.len(), &meta).unwrap());
    let mut short = vec![7u8; needed - 1];
    assert!(matches!(
        kluis_core::fast::seal_to_slice(
            &slots,
            &meta,
            &plain,
            &mut short,
            &kluis_core::fast::FastOptions::default().threads(2)
        ),
        Err(Error::OutputTooSmall { .. })
    ));
    assert!(short.iter().all(|&b| b == 7), "nothing written on error");
    let mut exact = vec![7u8; needed];
    let n = kluis_core::fast::seal_to_slice(
        &slots,
        &meta,
        &plain,
        &mut exact,
        &kluis_core::fast::FastOptions::default().threads(2),
    )
    .unwrap();
    assert_eq!(n, needed);
    assert_eq!(open(&exact, &[&hr]).unwrap().0, plain);
    // The largest header this API can make (every slot, the longest name) still fits the bound.
    let keys: Vec<LabelKey> = (0..kluis_core::Header::MAX_SLOTS)
        .map(|i| LabelKey::generate(&format!("label-{i}"), 1).unwrap())
        .collect();
    let many: Vec<Slot> = keys.iter().map(|k| Slot::single(label(k))).collect();
    let named = Metadata {
        name: "n".repeat(kluis_core::Metadata::MAX_NAME_LEN),
        ..Metadata::default()
    };
    let mut big = vec![0u8; kluis_core::fast::max_sealed_len(plain.len(), &named).unwrap()];
    let n = kluis_core::fast::seal_to_slice(
        &many,
        &named,
        &plain,
        &mut big,
        &kluis_core::fast::FastOptions::default(),
    )
    .unwrap();
    assert_eq!(open(&big[..n], &[keys.last().unwrap()]).unwrap().0, plain);
    assert_eq!(kluis_core::fast::max_sealed_len(usize::MAX, &meta), None);
    let mut padded = Metadata::with_size(10);
    padded.padding = u64::MAX;
    assert_eq!(kluis_core::fast::max_sealed_len(10, &padded), None);
}

#[test]
fn absurd_padding_is_refused_before_anything_is_written() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let slots = [Slot::single(label(&hr))];
    for padding in [1u64 << 62, u64::MAX] {
        let meta = Metadata {
            padding,
            ..Metadata::with_size(1)
        };
        assert!(matches!(
            seal(&slots, &meta, b"x"),
            Err(Error::InvalidMetadata { .. })
        ));
        let mut out = Vec::new();
        assert!(StreamWriter::new(&mut out, &slots, &meta).is_err());
        assert!(out.is_empty(), "no header written");
    }
}

#[test]
fn metadata_debug_hides_the_file_name() {
    let m = Metadata::with_size(1).name("patient-jansen-dossier.pdf");
    let shown = format!("{m:?}");
    assert!(!shown.contains("jansen"), "{shown}");
    assert!(shown.contains("26 bytes"), "{shown}");
}

#[test]
fn errors_say_what_to_do() {
    assert!(
        Error::HeaderMac
            .to_string()
            .contains("modified or the key is wrong")
    );
    assert!(
        Error::NotSealed
            .to_string()
            .contains("not a kluis document")
    );
    assert!(
        Error::Truncated { chunks: 3 }
            .to_string()
            .contains("truncated")
    );
}

/// A damaged chunk inside a batch the reader opens in parallel: the chunks before it come
/// out, then the error names it, whatever the number of threads; so does a cut at a chunk
/// boundary deep inside the payload.
#[test]
fn parallel_opening_fails_at_the_first_damaged_chunk_after_the_ones_before() {
    const C: usize = kluis_core::fast::CHUNK_LEN;
    const SEALED: usize = C + 16;
    let (hr, plain, sealed) = sealed_doc(200 * C + 5);
    let header = Header::parse(&sealed).unwrap();
    let key = header.unlock(&[&hr]).unwrap();
    let start = header.len();
    // Chunk 100 lies in the fourth reader batch (chunks 85..149); chunk 30 in the third.
    for (bad_chunk, threads) in [(100, 1), (100, 2), (100, 8), (30, 2), (148, 3), (149, 2)] {
        let mut bad = sealed.clone();
        bad[start + bad_chunk * SEALED + 5] ^= 1;
        // A later chunk is damaged too: the first one is reported.
        bad[start + (bad_chunk + 1) * SEALED + 9] ^= 1;
        let mut reader = kluis_core::fast::stream_reader(
            &header,
            &key,
            &bad[start..],
            &kluis_core::fast::FastOptions::default().threads(threads),
        )
        .unwrap();
        let mut out = Vec::new();
        let e = reader.read_to_end(&mut out).unwrap_err();
        let e = kluis_core::Error::from_io(e);
        assert!(
            matches!(e, kluis_core::Error::ChunkAuth { chunk } if chunk == bad_chunk as u64),
            "{e:?} for chunk {bad_chunk}, {threads} threads"
        );
        assert!(
            out == plain[..bad_chunk * C],
            "chunk {bad_chunk}, {threads} threads"
        );
        let mut more = [0u8; 10];
        assert!(reader.read(&mut more).is_err(), "stays failed");
    }
    // Cut after 120 full chunks: the reader cannot tell the last full chunk apart, so it
    // reports the document as truncated after handing out the 119 chunks before.
    let cut = &sealed[start..start + 120 * SEALED];
    let mut out = Vec::new();
    let e = kluis_core::fast::stream_reader(
        &header,
        &key,
        cut,
        &kluis_core::fast::FastOptions::default().threads(2),
    )
    .unwrap()
    .read_to_end(&mut out)
    .unwrap_err();
    let e = kluis_core::Error::from_io(e);
    assert!(
        matches!(e, kluis_core::Error::Truncated { chunks: 120 }),
        "{e:?}"
    );
    assert!(out == plain[..119 * C]);
}

#[test]
fn parallel_sealing_gives_the_same_layout_and_opens_at_every_batch_boundary() {
    const C: usize = kluis_core::fast::CHUNK_LEN;
    let hr = LabelKey::generate("hr", 1).unwrap();
    let slots = [Slot::single(label(&hr))];
    // Around one chunk, one batch of 64 chunks (4 MiB), and two batches; and around the
    // reader's batches (1, 4, 16, then 64 chunks: ends after 1, 5, 21, 85 and 149 chunks).
    for size in [
        0,
        1,
        C,
        C + 1,
        5 * C,
        5 * C + 1,
        21 * C - 1,
        21 * C,
        64 * C - 1,
        64 * C,
        64 * C + 1,
        65 * C,
        85 * C + 16,
        85 * C + 17,
        129 * C + 7,
        149 * C,
    ] {
        let plain = data(size);
        let mut lens = Vec::new();
        for threads in [1, 2, 3, 8] {
            let mut w = kluis_core::fast::stream_writer(
                Vec::new(),
                &slots,
                &Metadata::default(),
                &kluis_core::fast::FastOptions::default().threads(threads),
            )
            .unwrap();
            let header_len = w.header().as_bytes().len();
            // Uneven writes, so chunk and batch edges fall inside writes.
            for piece in plain.chunks(100_003) {
                w.write_all(piece).unwrap();
            }
            let sealed = w.finish().unwrap();
            let chunks = size.div_ceil(C).max(1);
            assert_eq!(
                sealed.len() - header_len,
                size + 16 * chunks,
                "size {size}, {threads} threads"
            );
            let (opened, _) = open(&sealed, &[&hr]).unwrap();
            assert!(opened == plain, "size {size}, {threads} threads");
            // The streaming reader agrees chunk by chunk.
            let back = open_streaming(&sealed, &hr, threads);
            assert!(back == plain, "size {size}, {threads} threads (stream)");
            lens.push(sealed.len() - header_len);
        }
        assert!(lens.windows(2).all(|w| w[0] == w[1]), "{lens:?}");
    }
}

/// Open `sealed` with `Header::read`, `unlock` and a `StreamReader` on `threads` threads.
fn open_streaming(sealed: &[u8], hr: &LabelKey, threads: usize) -> Vec<u8> {
    let mut input = sealed;
    let header = Header::read(&mut input).unwrap();
    let key = header.unlock(&[hr]).unwrap();
    let mut back = Vec::new();
    kluis_core::fast::stream_reader(
        &header,
        &key,
        input,
        &kluis_core::fast::FastOptions::default().threads(threads),
    )
    .unwrap()
    .read_to_end(&mut back)
    .unwrap();
    back
}

fn w_header_len(sealed: &[u8]) -> usize {
    Header::parse(sealed).unwrap().len()
}

/// Reading straight into the writer (`spare` + `advance`), mixed with `write_all`, seals the
/// same plaintext across chunk and batch edges; `advance` refuses more than the spare space
/// and more than the promised size, counting nothing.
#[test]
fn spare_and_advance_seal_what_was_put_there() {
    const C: usize = kluis_core::fast::CHUNK_LEN;
    let hr = LabelKey::generate("hr", 1).unwrap();
    let slots = [Slot::single(label(&hr))];
    for size in [0, 1, C, C + 1, 63 * C, 64 * C, 65 * C, 70 * C + 3, 128 * C] {
        let plain = data(size);
        let mut w =
            StreamWriter::new(Vec::new(), &slots, &Metadata::with_size(size as u64)).unwrap();
        let mut input = &plain[..];
        let mut turn = 0usize;
        while !input.is_empty() {
            turn += 1;
            if turn % 3 == 0 {
                let n = input.len().min(5_000);
                w.write_all(&input[..n]).unwrap();
                input = &input[n..];
            } else {
                // Odd read sizes, as a pipe gives them.
                let space = w.spare().unwrap();
                assert!(!space.is_empty() && space.len() <= C);
                let n = space.len().min(input.len()).min(40_000 + turn);
                space[..n].copy_from_slice(&input[..n]);
                w.advance(n).unwrap();
                input = &input[n..];
            }
        }
        // A reader asks for space once more and finds the end of its input: a payload that
        // ends on a chunk boundary must still end with that full chunk as the last one.
        assert!(!w.spare().unwrap().is_empty());
        w.advance(0).unwrap();
        let sealed = w.finish().unwrap();
        let chunks = size.div_ceil(C).max(1);
        assert_eq!(
            sealed.len(),
            w_header_len(&sealed) + size + 16 * chunks,
            "size {size}"
        );
        let (opened, _) = open(&sealed, &[&hr]).unwrap();
        assert!(opened == plain, "size {size}");
    }

    let mut w = StreamWriter::new(Vec::new(), &slots, &Metadata::with_size(10)).unwrap();
    let room = w.spare().unwrap().len();
    assert!(w.advance(room + 1).is_err(), "past the spare space");
    let e = w.advance(11).unwrap_err();
    assert!(matches!(
        kluis_core::Error::from_io(e),
        kluis_core::Error::SizeMismatch {
            expected: 10,
            found: 11
        }
    ));
    w.spare().unwrap()[..10].copy_from_slice(b"0123456789");
    w.advance(10).unwrap();
    let sealed = w.finish().unwrap();
    assert_eq!(open(&sealed, &[&hr]).unwrap().0, b"0123456789");
}

/// The one-call forms over several threads: `seal_into` and `open_in_place` agree with each
/// other and with the streaming reader for every pair of thread counts, around chunk edges
/// and with padding that spans chunks (each thread's chunks end up shifted into place, some
/// of them across another thread's part of the buffer).
#[test]
fn one_call_sealing_and_opening_in_place_agree_over_any_number_of_threads() {
    const C: usize = kluis_core::fast::CHUNK_LEN;
    let hr = LabelKey::generate("hr", 1).unwrap();
    let slots = [Slot::single(label(&hr))];
    for (size, padding) in [
        (0, 0),
        (1, 0),
        (C, 0),
        (2 * C + 1, 0),
        (17 * C, 0),
        (17 * C + 16, 0),
        (17 * C + 17, 0),
        (40 * C + 3, 0),
        (5 * C + 9, 3 * C + 7),
        (20 * C, 2 * C),
    ] {
        let plain = data(size);
        let mut meta = Metadata::with_size(size as u64);
        meta.padding = padding as u64;
        for seal_threads in [1, 2, 3, 8] {
            // After a prefix, into a buffer with room to spare (zeroed in place over old
            // bytes, which padding must not show) and without (grown); below, into an empty
            // buffer without room (a fresh zeroed one). The prefix stays and the document
            // opens every time.
            for room in [0, 50 * C] {
                let mut out = vec![0x5a; 5 + room];
                out.truncate(5);
                out.copy_from_slice(b"first");
                kluis_core::fast::seal_into(
                    &slots,
                    &meta,
                    &plain,
                    &mut out,
                    &kluis_core::fast::FastOptions::default().threads(seal_threads),
                )
                .unwrap();
                assert_eq!(&out[..5], b"first");
                let (back, _) = open(&out[5..], &[&hr]).unwrap();
                assert!(back == plain, "size {size}+{padding}, room {room}");
            }
            // Into a caller's buffer of old bytes: exactly the document at its start (padding
            // zeroed over the old bytes), nothing after it touched.
            let max = kluis_core::fast::max_sealed_len(size, &meta).unwrap();
            let mut buf = vec![0x5a; max + 3];
            let n = kluis_core::fast::seal_to_slice(
                &slots,
                &meta,
                &plain,
                &mut buf,
                &kluis_core::fast::FastOptions::default().threads(seal_threads),
            )
            .unwrap();
            assert!(n <= max);
            assert!(buf[n..].iter().all(|&b| b == 0x5a));
            let (back, m) = open(&buf[..n], &[&hr]).unwrap();
            assert!(back == plain, "size {size}+{padding}, into a slice");
            assert_eq!(m.padding, padding as u64);
            let mut sealed = Vec::new();
            kluis_core::fast::seal_into(
                &slots,
                &meta,
                &plain,
                &mut sealed,
                &kluis_core::fast::FastOptions::default().threads(seal_threads),
            )
            .unwrap();
            assert_eq!(sealed.len(), n, "the same length into a slice and a Vec");
            let chunks = (size + padding).div_ceil(C).max(1);
            assert_eq!(
                sealed.len(),
                w_header_len(&sealed) + size + padding + 16 * chunks
            );
            let back = open_streaming(&sealed, &hr, 1);
            assert!(
                back == plain,
                "size {size}+{padding}, sealed on {seal_threads} (stream)"
            );
            for open_threads in [0, 1, 2, 3, 8] {
                let mut buf = sealed.clone();
                let m = kluis_core::fast::open_in_place(
                    &mut buf,
                    &[&hr],
                    &kluis_core::fast::FastOptions::default().threads(open_threads),
                )
                .unwrap();
                assert!(
                    buf == plain,
                    "size {size}+{padding}, sealed on {seal_threads}, opened on {open_threads}"
                );
                assert_eq!(m.padding, padding as u64);
            }
        }
    }
}

/// Damage anywhere in a document opened in place over several threads is reported as the
/// first damaged chunk, wherever the threads' parts begin and end, and the buffer is wiped; a
/// cut at a chunk boundary is reported as truncation.
#[test]
fn opening_in_place_over_threads_reports_the_first_damaged_chunk() {
    const C: usize = kluis_core::fast::CHUNK_LEN;
    const SEALED: usize = C + 16;
    let (hr, _, sealed) = sealed_doc(40 * C + 5);
    let start = w_header_len(&sealed);
    // With 3 threads the 40 full chunks split 14 + 14 + 12; with 2, 20 + 20; chunk 40 is the
    // final one, opened after the threads.
    for (damaged, threads) in [
        (&[0][..], 2),
        (&[13], 3),
        (&[14], 3),
        (&[27, 28], 3),
        (&[30, 5], 3),
        (&[19], 2),
        (&[20], 2),
        (&[39], 8),
        (&[40], 2),
    ] {
        let mut bad = sealed.clone();
        for &chunk in damaged {
            bad[start + chunk * SEALED + 7] ^= 0x10;
        }
        let cap = bad.capacity();
        let e = kluis_core::fast::open_in_place(
            &mut bad,
            &[&hr],
            &kluis_core::fast::FastOptions::default().threads(threads),
        )
        .unwrap_err();
        let first = *damaged.iter().min().unwrap() as u64;
        assert!(
            matches!(e, Error::ChunkAuth { chunk } if chunk == first),
            "{e:?} for chunks {damaged:?}, {threads} threads"
        );
        assert!(bad.is_empty() && bad.capacity() == cap);
    }
    for threads in [1, 2, 3] {
        let mut cut = sealed[..start + 20 * SEALED].to_vec();
        let e = kluis_core::fast::open_in_place(
            &mut cut,
            &[&hr],
            &kluis_core::fast::FastOptions::default().threads(threads),
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::Truncated { chunks: 20 }),
            "{e:?}, {threads} threads"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// `seal_to_slice` into a buffer of old bytes and `seal_into` after a prefix agree: the
    /// same length, both open to the plaintext with the declared padding, the prefix and the
    /// bytes after the document left as they were.
    #[test]
    fn sealing_into_a_slice_or_a_vec_agree(
        size in 0usize..(20 * kluis_core::fast::CHUNK_LEN),
        padding in 0u64..(3 * kluis_core::fast::CHUNK_LEN as u64),
        threads in 0usize..4,
        old in any::<u8>(),
        prefix in 0usize..10,
    ) {
        let hr = LabelKey::generate("hr", 1).unwrap();
        let slots = [Slot::single(label(&hr))];
        let plain = data(size);
        let mut meta = Metadata::with_size(size as u64);
        meta.padding = padding;
        let mut buf = vec![old; kluis_core::fast::max_sealed_len(size, &meta).unwrap() + 7];
        let n = kluis_core::fast::seal_to_slice(&slots, &meta, &plain, &mut buf, &kluis_core::fast::FastOptions::default().threads(threads))
            .unwrap();
        prop_assert!(buf[n..].iter().all(|&b| b == old));
        let (back, m) = open(&buf[..n], &[&hr]).unwrap();
        prop_assert!(back == plain);
        prop_assert_eq!(m.padding, padding);
        let mut out = vec![old; prefix];
        kluis_core::fast::seal_into(&slots, &meta, &plain, &mut out, &kluis_core::fast::FastOptions::default().threads(threads)).unwrap();
        prop_assert!(out[..prefix].iter().all(|&b| b == old));
        prop_assert_eq!(out.len() - prefix, n);
        let (back, _) = open(&out[prefix..], &[&hr]).unwrap();
        prop_assert!(back == plain);
    }
}

/// The names the 0.1 API change retired (lib.rs, "API changes"): no documentation may still
/// tell a reader to call them. Read are README.md, every Markdown file in docs/ and crates/,
/// and the doc comments of every Rust file in crates/; the "API changes" section itself,
/// which names them as gone, is left out.
#[test]
fn the_docs_name_no_retired_api() {
    const RETIRED: &[&str] = &[
        "open_with_backend",
        "seal_with_backend",
        "StreamReader::with_backend",
        "StreamWriter::with_backend",
        "BlockWriter::with_backend",
        "Identity::write_file",
        "Identity::read_file",
        "kluis_core::seal_into",
        "kluis_core::seal_to_slice",
        "kluis_core::open_in_place",
        "kluis_core::max_sealed_len",
        "kluis_core::BlockWriter",
        "kluis_core::BlockSink",
        "kluis_core::Backend",
        "kluis_core::CHUNK_LEN",
        "kluis_core::MAX_",
        "kluis_core::MAGIC",
        "kluis_core::padme_padding",
        "kluis_core::Result",
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    let mut stack = vec![
        root.join("README.md"),
        root.join("docs"),
        root.join("crates"),
    ];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if p.extension().is_some_and(|e| e == "md" || e == "rs") {
            files.push(p);
        }
    }
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let rust = f.extension().is_some_and(|e| e == "rs");
        let mut in_changes = false;
        for (n, line) in text.lines().enumerate() {
            let doc = line.trim_start();
            if rust && !(doc.starts_with("//!") || doc.starts_with("///")) {
                continue;
            }
            if doc.starts_with("//! # ") {
                in_changes = doc.starts_with("//! # API changes");
            }
            if in_changes {
                continue;
            }
            for name in RETIRED {
                if line.contains(name) {
                    found.push(format!("{}:{}: {name}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(files.len() > 50, "too few files read: {}", files.len());
    assert!(
        found.is_empty(),
        "retired API names in docs:\n{}",
        found.join("\n")
    );
}
