//! `BlockWriter`: sealing straight into a sink's blocks gives a document that opens to the
//! same plaintext, whatever the block size, the threads and the way the plaintext comes in.

use std::io::{self, Read, Write};

use kluis_core::{
    BlockSink, BlockWriter, CHUNK_LEN, Error, LabelKey, Metadata, Recipient, Slot, open, seal,
};
use proptest::prelude::*;

/// Blocks of a fixed size gathered into a Vec. Each fresh block is full of 0xa5, so bytes the
/// writer forgets to set (padding) show up. With `fail_after`, taking that many blocks
/// succeeds and the next fails, like a full disk.
struct Blocks {
    done: Vec<u8>,
    block: Vec<u8>,
    filled: usize,
    fail_after: Option<usize>,
}

impl Blocks {
    fn new(len: usize) -> Blocks {
        Blocks {
            done: Vec::new(),
            block: vec![0xa5; len],
            filled: 0,
            fail_after: None,
        }
    }

    fn into_document(mut self) -> Vec<u8> {
        self.done.extend_from_slice(&self.block[..self.filled]);
        self.done
    }
}

impl BlockSink for Blocks {
    fn spare(&mut self) -> io::Result<&mut [u8]> {
        if self.filled == self.block.len() {
            match &mut self.fail_after {
                Some(0) => return Err(io::Error::other("no space left")),
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
    let w = BlockWriter::new(Blocks::new(block), &slots(&label), metadata).unwrap();
    let mut w = if threads == 0 { w } else { w.threads(threads) };
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

    // Too much: no spare space once the content is in, and writing more fails.
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
    let doc = w.finish().unwrap().into_document();
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

#[test]
fn a_failing_sink_stops_the_writer() {
    let label = label();
    let plain = plaintext(40 * CHUNK_LEN);
    let metadata = Metadata::with_size(plain.len() as u64);
    for fail_after in [0, 1, 5] {
        let mut sink = Blocks::new(256 * 1024);
        sink.fail_after = Some(fail_after);
        let mut w = BlockWriter::new(sink, &slots(&label), &metadata).unwrap();
        let err = w.write_all(&plain).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no space left",
            "after {fail_after} blocks"
        );
        // Nothing more goes in, and the document is never finished.
        assert!(w.write(b"x").is_err());
        assert!(w.spare().is_err());
        assert!(w.finish().is_err());
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
