#![no_main]
use std::io::Read;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

use kluis_core::{Error, Header, Identity, LabelKey, StreamReader, Unwrap};
use kluis_core::fast::{Backend, BlockSink};

// Fixed keys, so seeds sealed to them (see fuzz/seeds/open) reach the payload.
static LABEL_KEY: LazyLock<LabelKey> =
    LazyLock::new(|| LabelKey::from_secret_bytes("hr", 1, [0x11; 32]).unwrap());
static IDENTITY: LazyLock<Identity> = LazyLock::new(|| Identity::from_secret_bytes([0x22; 32]));

/// The streaming path: Header::read, unlock, StreamReader.
fn open_streaming(mut data: &[u8], keys: &[&dyn Unwrap]) -> Result<Vec<u8>, Error> {
    let header = Header::read(&mut data)?;
    let key = header.unlock(keys)?;
    let mut r = StreamReader::new(&header, &key, data)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)
        .map_err(kluis_core::Error::from_io)?;
    Ok(out)
}

/// Blocks of `len` bytes gathered into a Vec.
struct Blocks {
    done: Vec<u8>,
    block: Vec<u8>,
    filled: usize,
}

impl BlockSink for Blocks {
    fn spare(&mut self) -> std::io::Result<&mut [u8]> {
        if self.filled == self.block.len() {
            self.done.extend_from_slice(&self.block);
            self.filled = 0;
        }
        Ok(&mut self.block[self.filled..])
    }

    fn advance(&mut self, n: usize) {
        self.filled += n;
    }
}

/// The streaming path into blocks: `fast::read_into`, over 3 threads.
fn open_into_blocks(
    mut data: &[u8],
    keys: &[&dyn Unwrap],
    block: usize,
) -> Result<Vec<u8>, Error> {
    let header = Header::read(&mut data)?;
    let key = header.unlock(keys)?;
    let mut r = kluis_core::fast::stream_reader(&header, &key, data, &kluis_core::fast::FastOptions::default().threads(3))?;
    let mut sink = Blocks {
        done: Vec::new(),
        block: vec![0; block],
        filled: 0,
    };
    while kluis_core::fast::read_into(&mut r, &mut sink).map_err(kluis_core::Error::from_io)? > 0 {}
    sink.done.extend_from_slice(&sink.block[..sink.filled]);
    Ok(sink.done)
}

fuzz_target!(|data: &[u8]| {
    let keys: [&dyn Unwrap; 2] = [&*LABEL_KEY, &*IDENTITY];
    let one_call = kluis_core::open(data, &keys);
    let streaming = open_streaming(data, &keys);
    assert_eq!(
        one_call.as_ref().map(|(p, _)| p).ok(),
        streaming.as_ref().ok(),
        "one-call {one_call:?} vs streaming {streaming:?}"
    );
    // Opening in place over several threads (3: even a document of a few chunks is split)
    // gives the same plaintext, or the same error.
    let mut buf = data.to_vec();
    let threaded = kluis_core::fast::open_in_place(&mut buf, &keys, &kluis_core::fast::FastOptions::default().threads(3))
        .map(|metadata| (buf, metadata));
    assert_eq!(one_call.as_ref().ok(), threaded.as_ref().ok(), "3 threads");
    assert_eq!(
        one_call.as_ref().err().map(|e| e.to_string()),
        threaded.as_ref().err().map(|e| e.to_string()),
        "3 threads"
    );
    // Opening straight into blocks (some too small for a chunk, some holding several) gives
    // the same plaintext, or the same error.
    for block in [1000, 200_000] {
        let blocks = open_into_blocks(data, &keys, block);
        assert_eq!(
            one_call.as_ref().map(|(p, _)| p).ok(),
            blocks.as_ref().ok(),
            "blocks of {block}"
        );
        // The payload's errors are the same (the header's may be worded differently when
        // read from a stream).
        if let Err(
            e @ (Error::ChunkAuth { .. }
            | Error::Truncated { .. }
            | Error::TrailingData
            | Error::SizeMismatch { .. }),
        ) = &one_call
        {
            let got = blocks.as_ref().err().map(|e| e.to_string());
            assert_eq!(Some(e.to_string()), got, "blocks of {block}");
        }
    }
    // Both payload backends decrypt the same bytes.
    for &backend in Backend::all() {
        let other = kluis_core::fast::open(data, &keys, &kluis_core::fast::FastOptions::default().backend(backend));
        assert_eq!(one_call.as_ref().ok(), other.as_ref().ok(), "{backend:?}");
    }
});
