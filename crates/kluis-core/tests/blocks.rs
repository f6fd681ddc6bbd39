//! `BlockWriter` and `StreamReader::read_into`: sealing straight into a sink's blocks gives a
//! document that opens to the same plaintext, and opening straight into them gives the
//! plaintext back (or the error `open` gives), whatever the block size, the threads and the
//! way the bytes come in.

use std::io::{self, Read, Write};

use kluis_core::fast::{BlockSink, BlockWriter, CHUNK_LEN};
use kluis_core::{Error, Header, LabelKey, Metadata, Recipient, Slot, open, seal};
use proptest::prelude::*;

/// Blocks of a fixed size gathered into a Vec. Each fresh block is full of 0xa5, so bytes the
/// writer forgets to set (padding) show up. With `fail_after`, taking that many blocks
/// succeeds and the next fails, like a full disk; with `fail_call`, that call of `spare`
/// fails (counted from 0), wherever the block is.
struct Blocks {
    done: Vec<u8>,
    block: Vec<u8>,
    filled: usize,
    fail_after: Option<usize>,
    fail_call: Option<usize>,
    calls: usize,
    /// A call failed.
    tripped: bool,
}

impl Blocks {
    fn new(len: usize) -> Blocks {
        Blocks {
            done: Vec::new(),
            block: vec![0xa5; len],
            filled: 0,
            fail_after: None,
            fail_call: None,
            calls: 0,
            tripped: false,
        }
    }

    fn into_document(mut self) -> Vec<u8> {
        self.done.extend_from_slice(&self.block[..self.filled]);
        self.done
    }
}

impl BlockSink for Blocks {
    fn spare(&mut self) -> io::Result<&mut [u8]> {
        self.calls += 1;
        if self.fail_call == Some(self.calls - 1) {
            self.tripped = true;
            return Err(io::Error::other("no space left"));
        }
        if self.filled == self.block.len() {
            match &mut self.fail_after {
                Some(0) => {
                    self.tripped = true;
                    return Err(io::Error::other("no space left"));
                }
                Some(n) => *n -= 1,
                None => {}
            }
            self.done.extend_from_slice(&self.block);
            self.block.fill(0xa5);
            self.filled = 0;
        }
        Ok(&mut self.block[self.filled..])
    }

    fn advance(&mut self, n: usize) {
        assert!(
            self.filled + n <= self.block.len(),
            "advance past the block"
        );
        self.filled += n;
    }
}

fn label() -> LabelKey {
    LabelKey::from_secret_bytes("hr", 1, [0x11; 32]).unwrap()
}

fn slots(label: &LabelKey) -> [Slot; 1] {
    [Slot::single(Recipient::Label(label.public_key().clone()))]
}

fn plaintext(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect()
}

/// Seal `plain` into blocks of `block` bytes, reading it in pieces of `piece` bytes.
fn seal_blocks(
    plain: &[u8],
    metadata: &Metadata,
    block: usize,
    piece: usize,
    threads: usize,
) -> Vec<u8> {
    let label = label();
    let mut w = kluis_core::fast::block_writer(
        Blocks::new(block),
        &slots(&label),
        metadata,
        &kluis_core::fast::FastOptions::default().threads(threads),
    )
    .unwrap();
    let mut input = plain;
    loop {
        let space = w.spare().unwrap();
        let take = space.len().min(piece);
        let n = input.read(&mut space[..take]).unwrap();
        if n == 0 {
            break;
        }
        w.advance(n).unwrap();
    }
    w.finish().unwrap().into_document()
}

/// The document opens to `plain` with the metadata given, and is as long as `seal` makes it.
fn check(doc: &[u8], plain: &[u8], metadata: &Metadata, what: &str) {
    let label = label();
    let (opened, meta) = open(doc, &[&label]).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(opened == plain, "{what}: plaintext differs");
    assert_eq!(meta.size, metadata.size, "{what}");
    assert_eq!(meta.padding, metadata.padding, "{what}");
    let reference = seal(&slots(&label), metadata, plain).unwrap();
    assert_eq!(doc.len(), reference.len(), "{what}: length");
}

const SEALED: usize = CHUNK_LEN + 16;

#[test]
fn every_size_around_chunk_and_block_edges_opens_to_its_plaintext() {
    let sizes = [
        0,
        1,
        CHUNK_LEN - 1,
        CHUNK_LEN,
        CHUNK_LEN + 1,
        3 * CHUNK_LEN,
        20 * CHUNK_LEN + 5,
        70 * CHUNK_LEN,
    ];
    let blocks = [
        1000,
        4096,
        SEALED - 1,
        SEALED,
        SEALED + 1,
        256 * 1024,
        4 * 1024 * 1024,
    ];
    for size in sizes {
        let plain = plaintext(size);
        for pad in [false, true] {
            let mut metadata = Metadata::with_size(size as u64);
            if pad {
                metadata = metadata.padded().unwrap();
            }
            for block in blocks {
                for (piece, threads) in [(usize::MAX, 0), (7919, 1), (CHUNK_LEN / 2 + 3, 3)] {
                    let doc = seal_blocks(&plain, &metadata, block, piece, threads);
                    let what = format!(
                        "{size} bytes, padded {pad}, blocks of {block}, pieces of {piece}, {threads} threads"
                    );
                    check(&doc, &plain, &metadata, &what);
                }
            }
        }
    }
}

/// Blocks that hold 64 chunks and more: full batches of 64 are sealed while the block fills,
/// numbered back from the chunk after the batch.
#[test]
fn large_blocks_seal_batches_of_64_chunks() {
    let plain = plaintext(200 * CHUNK_LEN + 5);
    let metadata = Metadata::with_size(plain.len() as u64);
    for block in [8 << 20, (9 << 20) + 17, 64 << 20] {
        for threads in [0, 1, 3] {
            let doc = seal_blocks(&plain, &metadata, block, usize::MAX, threads);
            let what = format!("blocks of {block}, {threads} threads");
            check(&doc, &plain, &metadata, &what);
        }
    }
}

#[test]
fn the_write_trait_seals_the_same_document() {
    let plain = plaintext(5 * CHUNK_LEN + 77);
    let metadata = Metadata::with_size(plain.len() as u64);
    let label = label();
    let mut w = BlockWriter::new(Blocks::new(300_000), &slots(&label), &metadata).unwrap();
    for piece in plain.chunks(100_003) {
        w.write_all(piece).unwrap();
    }
    let doc = w.finish().unwrap().into_document();
    check(&doc, &plain, &metadata, "write_all");
}

#[test]
fn the_size_must_be_known_and_kept() {
    let label = label();
    let slots = slots(&label);
    assert!(matches!(
        BlockWriter::new(Blocks::new(4096), &slots, &Metadata::default()),
        Err(Error::InvalidMetadata { .. })
    ));

    // Too little: finish says how much came.
    let mut w = BlockWriter::new(Blocks::new(4096), &slots, &Metadata::with_size(10)).unwrap();
    w.write_all(b"short").unwrap();
    assert!(matches!(
        w.finish(),
        Err(Error::SizeMismatch {
            expected: 10,
            found: 5
        })
    ));

    // Too much: no spare space once the content is in; writing more fails, and then no
    // document comes out (the caller's data did not fit).
    let mut w = BlockWriter::new(Blocks::new(4096), &slots, &Metadata::with_size(3)).unwrap();
    w.write_all(b"abc").unwrap();
    assert!(w.spare().unwrap().is_empty());
    let more = w.write(b"d").unwrap_err();
    assert!(matches!(
        Error::from_io(more),
        Error::SizeMismatch {
            expected: 3,
            found: 4
        }
    ));
    assert!(w.finish().is_err());

    // Exactly the size, read through `spare` until it is empty: a document.
    let doc = seal_blocks(b"abc", &Metadata::with_size(3), 4096, usize::MAX, 1);
    assert_eq!(open(&doc, &[&label]).unwrap().0, b"abc");
}

#[test]
fn advancing_past_the_spare_space_is_refused_and_counts_nothing() {
    let label = label();
    let plain = plaintext(2 * CHUNK_LEN);
    let metadata = Metadata::with_size(plain.len() as u64);
    let mut w = BlockWriter::new(Blocks::new(1 << 20), &slots(&label), &metadata).unwrap();
    let room = w.spare().unwrap().len();
    assert_eq!(room, CHUNK_LEN);
    let err = w.advance(room + 1).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    w.write_all(&plain).unwrap();
    let doc = w.finish().unwrap().into_document();
    check(&doc, &plain, &metadata, "after a refused advance");
}

/// Whether `bytes` holds a run of 63 or more `byte`s (it then fills one of the aligned
/// 32-byte pieces): plaintext of one repeated byte, left where it should not be.
fn holds_run(bytes: &[u8], byte: u8) -> bool {
    bytes.chunks_exact(32).any(|c| c.iter().all(|&b| b == byte))
}

/// What the sink took or counted as filled: only ciphertext, never a run of the plaintext's
/// byte 0x5c.
fn assert_no_plaintext(sink: &Blocks, what: &str) {
    let counted = [&sink.done[..], &sink.block[..sink.filled]].concat();
    assert!(!holds_run(&counted, 0x5c), "{what}: plaintext in the sink");
}

/// A sink that fails when a block is taken, or at any call: the error comes out, nothing
/// more goes in, the document is never finished, and no plaintext reached the sink.
#[test]
fn a_failing_sink_stops_the_writer() {
    let label = label();
    let plain = vec![0x5c; 40 * CHUNK_LEN + 9];
    let metadata = Metadata::with_size(plain.len() as u64);
    let failing = (0..6)
        .map(|n| (Some(n), None))
        .chain((1..400).step_by(13).map(|n| (None, Some(n))));
    for (fail_after, fail_call) in failing {
        for block in [100_000, 256 * 1024, 5 << 20] {
            let what = format!("{fail_after:?} blocks, call {fail_call:?}, blocks of {block}");
            let mut sink = Blocks::new(block);
            sink.fail_after = fail_after;
            sink.fail_call = fail_call;
            let mut finished = false;
            if let Ok(mut w) = BlockWriter::new(&mut sink, &slots(&label), &metadata) {
                match w.write_all(&plain) {
                    // The failing call comes later, in `finish`, or never.
                    Ok(()) => finished = w.finish().is_ok(),
                    Err(err) => {
                        assert_eq!(err.to_string(), "no space left", "{what}");
                        assert!(w.write(b"x").is_err(), "{what}");
                        assert!(w.spare().is_err(), "{what}");
                        assert!(w.advance(1).is_err(), "{what}");
                        assert!(w.finish().is_err(), "{what}: finished after an error");
                    }
                }
            }
            assert_eq!(finished, !sink.tripped, "{what}");
            assert_no_plaintext(&sink, &what);
        }
    }
}

/// Plaintext never leaves the writer unsealed: whatever the sink takes is ciphertext.
#[test]
fn only_ciphertext_reaches_the_sink() {
    let plain = vec![0x5c; 70 * CHUNK_LEN + 9];
    let metadata = Metadata::with_size(plain.len() as u64);
    for block in [1000, 100_000, 4 << 20, 8 << 20] {
        let doc = seal_blocks(&plain, &metadata, block, 50_000, 0);
        let what = format!("blocks of {block}");
        assert!(!holds_run(&doc, 0x5c), "{what}");
        check(&doc, &plain, &metadata, &what);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_size_block_and_pieces_round_trip(
        size in 0usize..(5 * CHUNK_LEN),
        block in 1usize..(3 * SEALED),
        piece in 1usize..(2 * CHUNK_LEN),
        pad in any::<bool>(),
        threads in 0usize..4,
    ) {
        let plain = plaintext(size);
        let mut metadata = Metadata::with_size(size as u64);
        if pad {
            metadata = metadata.padded().unwrap();
        }
        let doc = seal_blocks(&plain, &metadata, block, piece, threads);
        check(&doc, &plain, &metadata, "proptest");
    }
}

/// Open `doc` with `StreamReader::read_into` into blocks of `block` bytes; every `mix`th call
/// goes through `Read::read` instead (0: never).
fn open_blocks(doc: &[u8], block: usize, threads: usize, mix: usize) -> Result<Vec<u8>, Error> {
    let mut sink = Blocks::new(block);
    open_into(&mut sink, doc, threads, mix)?;
    Ok(sink.into_document())
}

/// [`open_blocks`] into the given sink.
fn open_into(sink: &mut Blocks, doc: &[u8], threads: usize, mix: usize) -> Result<(), Error> {
    let label = label();
    let mut input = doc;
    let header = Header::read(&mut input)?;
    let key = header.unlock(&[&label])?;
    let mut r = kluis_core::fast::stream_reader(
        &header,
        &key,
        input,
        &kluis_core::fast::FastOptions::default().threads(threads),
    )?;
    for call in 1.. {
        let n = if mix > 0 && call % mix == 0 {
            let space = sink.spare()?;
            let take = space.len().min(1000);
            let n = r.read(&mut space[..take]).map_err(Error::from_io)?;
            sink.advance(n);
            n
        } else {
            kluis_core::fast::read_into(&mut r, sink).map_err(Error::from_io)?
        };
        if n == 0 {
            break;
        }
    }
    Ok(())
}

#[test]
fn opening_into_blocks_gives_the_plaintext_whatever_the_blocks() {
    let label = label();
    for size in [
        0,
        1,
        CHUNK_LEN,
        CHUNK_LEN + 1,
        3 * CHUNK_LEN - 7,
        140 * CHUNK_LEN + 3,
    ] {
        let plain = plaintext(size);
        for pad in [false, true] {
            let mut metadata = Metadata::with_size(size as u64);
            if pad {
                metadata = metadata.padded().unwrap();
            }
            let doc = seal(&slots(&label), &metadata, &plain).unwrap();
            for block in [1000, SEALED + 16, SEALED + 17, 256 * 1024, 4 << 20, 9 << 20] {
                for (threads, mix) in [(0, 0), (1, 3), (3, 0)] {
                    let what = format!(
                        "{size} bytes, padded {pad}, blocks of {block}, {threads} threads, mix {mix}"
                    );
                    let opened = open_blocks(&doc, block, threads, mix)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(opened == plain, "{what}");
                }
            }
        }
    }
}

/// Damage, truncation and trailing bytes give the error the one-call `open` gives; and the
/// failed batch's plaintext is wiped from the sink's spare space.
#[test]
fn opening_into_blocks_reports_what_open_reports() {
    let label = label();
    // One byte value, so plaintext left in the sink shows as a run of it.
    let mut damaged = Vec::new();
    for (size, pad) in [
        (150 * CHUNK_LEN + 11, false),
        (20 * CHUNK_LEN, false),
        (20 * CHUNK_LEN + 5, true),
    ] {
        let plain = vec![0x5c; size];
        let mut metadata = Metadata::with_size(size as u64);
        if pad {
            metadata = metadata.padded().unwrap();
        }
        let doc = seal(&slots(&label), &metadata, &plain).unwrap();
        let header_len = Header::parse(&doc).unwrap().len();
        let chunks = (doc.len() - header_len).div_ceil(SEALED);
        let last = doc.len() - header_len - (chunks - 1) * SEALED;
        let chunk_at = |i: usize| header_len + i * SEALED + 100;
        for i in [0, 1, 62, 63, 64, 100, chunks - 2, chunks - 1] {
            if i >= chunks {
                continue;
            }
            let mut d = doc.clone();
            d[chunk_at(i).min(doc.len() - 1)] ^= 1;
            damaged.push((format!("{size}: chunk {i} changed"), d));
        }
        // Two chunks swapped.
        let mut d = doc.clone();
        let (a, b) = (header_len + 3 * SEALED, header_len + 4 * SEALED);
        let third = doc[a..b].to_vec();
        d.copy_within(b..b + SEALED, a);
        d[b..b + SEALED].copy_from_slice(&third);
        damaged.push((format!("{size}: chunks 3 and 4 swapped"), d));
        // Cut at chunk boundaries (truncated), inside chunks, and with bytes added.
        for cut in [
            1,
            16,
            17,
            1000,
            last,
            last + SEALED,
            last + 80 * SEALED,
            SEALED + 5,
        ] {
            if cut >= doc.len() - header_len {
                continue;
            }
            damaged.push((
                format!("{size}: {cut} bytes cut"),
                doc[..doc.len() - cut].to_vec(),
            ));
        }
        for extra in [1, 9, 16, 17, 100] {
            let mut longer = doc.clone();
            longer.extend_from_slice(&vec![0; extra]);
            damaged.push((format!("{size}: {extra} bytes added"), longer));
        }
    }
    let mut kinds = std::collections::BTreeSet::new();
    for (what, d) in damaged {
        let want = open(&d, &[&label]).unwrap_err();
        kinds.insert(
            format!("{want:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap()
                .to_owned(),
        );
        for block in [100_000, 4 << 20] {
            for (threads, mix) in [(0, 0), (1, 3)] {
                let mut sink = Blocks::new(block);
                let got = open_into(&mut sink, &d, threads, mix).unwrap_err();
                let what = format!("{what}, blocks of {block}, {threads} threads, mix {mix}");
                assert_eq!(got.to_string(), want.to_string(), "{what}");
                assert!(
                    !holds_run(&sink.block[sink.filled..], 0x5c),
                    "{what}: plaintext left"
                );
            }
        }
    }
    // Every rule was reached.
    for kind in ["ChunkAuth", "Truncated", "TrailingData"] {
        assert!(kinds.contains(kind), "no case gave {kind}: {kinds:?}");
    }
}
