//! The one-call API: seal and open byte slices, re-key a stream.

use std::io::{self, Read, Write};

use zeroize::Zeroize;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::header::Header;
use crate::metadata::Metadata;
use crate::parallel;
use crate::primitives::TAG_LEN;
use crate::slot::Slot;
use crate::stream::{self, CHUNK_LEN, SEALED_CHUNK_LEN};
use crate::unwrap::Unwrap;

/// Seal `plaintext` to `slots`. The size in `metadata` is filled in when absent.
///
/// Documents over 1 MiB are sealed over the available cores, into a fresh buffer whose pages
/// those threads fault in; to seal many large documents, reuse one buffer with [`seal_into`].
pub fn seal(slots: &[Slot], metadata: &Metadata, plaintext: &[u8]) -> Result<Vec<u8>> {
    seal_with_backend(slots, metadata, plaintext, Backend::default())
}

/// [`seal`] with a chosen AEAD backend.
pub fn seal_with_backend(
    slots: &[Slot],
    metadata: &Metadata,
    plaintext: &[u8],
    backend: Backend,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    seal_into(slots, metadata, plaintext, &mut out, backend, 0)?;
    Ok(out)
}

/// [`seal`], appending the document to `out`: reusing one buffer for many documents avoids a
/// fresh allocation (and its page faults) per call. Each chunk is copied once, to its final
/// position, and sealed there, over up to `threads` threads, each copying and sealing its own
/// chunks (0: the available cores, at most 8, for documents over 1 MiB; 1: the calling thread
/// only). The bytes are the same whatever the number of threads. Nothing is appended on error.
pub fn seal_into(
    slots: &[Slot],
    metadata: &Metadata,
    plaintext: &[u8],
    out: &mut Vec<u8>,
    backend: Backend,
    threads: usize,
) -> Result<()> {
    let len = plaintext.len() as u64;
    let mut metadata = metadata.clone();
    if *metadata.size.get_or_insert(len) != len {
        return Err(Error::SizeMismatch {
            expected: metadata.size.unwrap_or(0),
            found: len,
        });
    }
    let (header, key) = stream::new_header(slots, &metadata)?; // checks size + padding
    let cipher = stream::payload_cipher(backend, &key, header.payload_salt());
    let too_large = || Error::Io(io::ErrorKind::OutOfMemory.into());
    let payload = usize::try_from(len + metadata.padding).map_err(|_| too_large())?;
    let chunks = payload.div_ceil(CHUNK_LEN).max(1);
    let total = chunks
        .checked_mul(TAG_LEN)
        .and_then(|t| t.checked_add(payload))
        .and_then(|t| t.checked_add(header.len()))
        .ok_or_else(too_large)?;
    // Every chunk but the last is full: over several threads, these are sealed in place in
    // zeroed space (padding stays zero), each thread copying in its own chunks' plaintext.
    let full = chunks - 1;
    let threads = parallel::for_chunks(threads, full);
    let done = if threads > 1 {
        let body = header.len() + full * SEALED_CHUNK_LEN;
        let start = out.len();
        parallel::grow_zeroed(out, body, total - body).ok_or_else(too_large)?;
        out[start..start + header.len()].copy_from_slice(header.as_bytes());
        let at = start + header.len();
        let copy = |i: usize, plain: &mut [u8]| {
            let from = (i * CHUNK_LEN).min(plaintext.len());
            let to = ((i + 1) * CHUNK_LEN).min(plaintext.len());
            plain[..to - from].copy_from_slice(&plaintext[from..to]);
        };
        parallel::seal_full_chunks(&cipher, &mut out[at..], 0, threads, copy);
        full
    } else {
        out.try_reserve(total).map_err(|_| too_large())?;
        out.extend_from_slice(header.as_bytes());
        0
    };
    for i in done..chunks {
        let (start, end) = (i * CHUNK_LEN, ((i + 1) * CHUNK_LEN).min(payload));
        let at = out.len();
        out.extend_from_slice(&plaintext[start.min(plaintext.len())..end.min(plaintext.len())]);
        out.resize(at + (end - start), 0); // padding, if this chunk reaches past the content
        let tag = cipher.seal(
            stream::chunk_nonce(i as u64, i + 1 == chunks),
            &mut out[at..],
        );
        out.extend_from_slice(&tag);
    }
    Ok(())
}

/// Open a sealed document with the given key holders: its plaintext and sealed metadata.
/// The input is left untouched: it is copied (over the available cores, for documents over
/// 1 MiB) and opened in the copy; [`open_in_place`] saves that copy.
pub fn open(sealed: &[u8], unwrappers: &[&dyn Unwrap]) -> Result<(Vec<u8>, Metadata)> {
    open_with_backend(sealed, unwrappers, Backend::default())
}

/// [`open`] with a chosen AEAD backend.
pub fn open_with_backend(
    sealed: &[u8],
    unwrappers: &[&dyn Unwrap],
    backend: Backend,
) -> Result<(Vec<u8>, Metadata)> {
    // A copy made over the cores, so its fresh pages are faulted in side by side.
    let mut buf = parallel::copy_fresh(sealed, 0)
        .ok_or_else(|| Error::Io(io::ErrorKind::OutOfMemory.into()))?;
    let metadata = open_in_place(&mut buf, unwrappers, backend, 0)?;
    Ok((buf, metadata))
}

/// Open the sealed document in `buf` in place, the fastest way to open in memory: on success
/// `buf` holds the plaintext; each chunk is decrypted straight to its final position, over up
/// to `threads` threads (0: the available cores, at most 8, for documents over 1 MiB; 1: the
/// calling thread only).
///
/// On failure `buf` is wiped and emptied (it may have held plaintext of authenticated
/// chunks): keep a copy of the sealed bytes, or use [`open`], if you need them afterwards.
pub fn open_in_place(
    buf: &mut Vec<u8>,
    unwrappers: &[&dyn Unwrap],
    backend: Backend,
    threads: usize,
) -> Result<Metadata> {
    let result = Header::parse(buf).and_then(|header| {
        let key = header.unlock(unwrappers)?;
        stream::open_payload_in_place(buf, &header, &key, backend, threads)
    });
    if result.is_err() {
        buf.zeroize();
        buf.clear();
    }
    result
}

/// Re-key the document read from `input` into `output`: recover the file key, write a new
/// header that keeps the slots at `keep` and adds `add`, then copy the payload through
/// unchanged. Costs one unwrap whatever the size. Returns the new header.
///
/// The payload is copied without being decrypted; a damaged payload stays damaged.
pub fn rekey<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    unwrappers: &[&dyn Unwrap],
    keep: &[usize],
    add: &[Slot],
) -> Result<Header> {
    let header = Header::read(&mut input)?;
    let key = header.unlock(unwrappers)?;
    let new = header.rekey(&key, keep, add)?;
    output.write_all(new.as_bytes())?;
    io::copy(&mut input, &mut output)?;
    output.flush()?;
    Ok(new)
}
