#![no_main]
use std::io::Read;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

use kluis_core::{Backend, Header, Identity, LabelKey, StreamReader, Unwrap};

// Fixed keys, so seeds sealed to them (see fuzz/seeds/open) reach the payload.
static LABEL_KEY: LazyLock<LabelKey> =
    LazyLock::new(|| LabelKey::from_secret_bytes("hr", 1, [0x11; 32]).unwrap());
static IDENTITY: LazyLock<Identity> = LazyLock::new(|| Identity::from_secret_bytes([0x22; 32]));

/// The streaming path: Header::read, unlock, StreamReader.
fn open_streaming(mut data: &[u8], keys: &[&dyn Unwrap]) -> kluis_core::Result<Vec<u8>> {
    let header = Header::read(&mut data)?;
    let key = header.unlock(keys)?;
    let mut r = StreamReader::new(&header, &key, data)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)
        .map_err(kluis_core::Error::from_io)?;
    Ok(out)
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
    let threaded = kluis_core::open_in_place(&mut buf, &keys, Backend::default(), 3)
        .map(|metadata| (buf, metadata));
    assert_eq!(one_call.as_ref().ok(), threaded.as_ref().ok(), "3 threads");
    assert_eq!(
        one_call.as_ref().err().map(|e| e.to_string()),
        threaded.as_ref().err().map(|e| e.to_string()),
        "3 threads"
    );
    // Both payload backends decrypt the same bytes.
    for &backend in Backend::all() {
        let other = kluis_core::open_with_backend(data, &keys, backend);
        assert_eq!(one_call.as_ref().ok(), other.as_ref().ok(), "{backend:?}");
    }
});
