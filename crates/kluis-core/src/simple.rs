//! The one-call API: seal and open byte slices, re-key a stream.

use std::io::{self, Read, Write};

use zeroize::Zeroize;

use crate::backend::{Backend, ChunkCipher};
use crate::chunk;
use crate::error::{Error, Result};
use crate::format::MAX_HEADER_LEN;
use crate::format::{CHUNK_LEN, SEALED_CHUNK_LEN};
use crate::header::Header;
use crate::metadata::Metadata;
use crate::parallel;
use crate::primitives::TAG_LEN;
use crate::slot::Slot;
use crate::stream;
use crate::unwrap::Unwrap;

/// Seal `plaintext` to `slots`. The size in `metadata` is filled in when absent.
///
/// Documents over 1 MiB are sealed over the available cores, into a fresh buffer whose pages
/// those threads fault in; to seal many large documents, reuse one buffer with [`crate::fast::seal_into`].
pub fn seal(slots: &[Slot], metadata: &Metadata, plaintext: &[u8]) -> Result<Vec<u8>> {
    seal_with_backend(slots, metadata, plaintext, Backend::default())
}

/// [`seal`] with a chosen AEAD backend.
pub(crate) fn seal_with_backend(
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
///
/// Over several threads the appended space is zeroed first (safe Rust cannot hand out memory
/// that was never written): by the calling thread, or for an empty `Vec` without the room, by
/// the allocator handing out fresh pages. [`seal_to_slice`] skips that.
pub(crate) fn seal_into(
    slots: &[Slot],
    metadata: &Metadata,
    plaintext: &[u8],
    out: &mut Vec<u8>,
    backend: Backend,
    threads: usize,
) -> Result<()> {
    let sealing = Sealing::new(slots, metadata, plaintext, backend)?;
    let threads = parallel::for_chunks(threads, sealing.chunks - 1);
    if threads > 1 {
        let start = out.len();
        parallel::grow_zeroed(out, sealing.total).ok_or_else(out_of_memory)?;
        sealing.write(plaintext, &mut out[start..], threads);
        return Ok(());
    }
    // On one thread, chunk after chunk appended and sealed where it lands: nothing is zeroed.
    out.try_reserve(sealing.total)
        .map_err(|_| out_of_memory())?;
    out.extend_from_slice(sealing.header.as_bytes());
    for i in 0..sealing.chunks {
        let (content, len) = sealing.chunk(plaintext, i);
        let at = out.len();
        out.extend_from_slice(content);
        out.resize(at + len, 0); // padding, if this chunk reaches past the content
        let tag = sealing.cipher.seal(
            chunk::chunk_nonce(i as u64, i + 1 == sealing.chunks),
            &mut out[at..],
        );
        out.extend_from_slice(&tag);
    }
    Ok(())
}

/// [`seal`] into the start of `out`, a buffer the caller already has (reused or pooled), with
/// nothing allocated or zeroed for the output; returns the length of the document written
/// there. `out` must be large enough for this document: a buffer of [`max_sealed_len`] bytes
/// always is. `threads` is as for [`seal_into`]. Bytes of `out` after the document are not
/// touched; on error nothing is written ([`Error::OutputTooSmall`] says how much is needed).
///
/// Each chunk's plaintext is copied into `out` and sealed there, so `out` holds plaintext for
/// a moment: give it private memory, not a file or shared memory mapping.
pub(crate) fn seal_to_slice(
    slots: &[Slot],
    metadata: &Metadata,
    plaintext: &[u8],
    out: &mut [u8],
    backend: Backend,
    threads: usize,
) -> Result<usize> {
    let sealing = Sealing::new(slots, metadata, plaintext, backend)?;
    let available = out.len();
    let out = out.get_mut(..sealing.total).ok_or(Error::OutputTooSmall {
        needed: sealing.total,
        available,
    })?;
    sealing.write(
        plaintext,
        out,
        parallel::for_chunks(threads, sealing.chunks - 1),
    );
    Ok(sealing.total)
}

/// The most bytes a document of `plaintext_len` bytes, padded as `metadata` says, can take
/// sealed, whatever its slots and the rest of its metadata: its payload after the largest
/// header allowed ([`MAX_HEADER_LEN`], where a header with one slot takes a few hundred
/// bytes). A buffer this long always holds what [`seal_to_slice`] writes. `None` if that is
/// more than `usize` can count.
pub(crate) fn max_sealed_len(plaintext_len: usize, metadata: &Metadata) -> Option<usize> {
    let (_, _, sealed) = payload_sizes(plaintext_len, metadata.padding)?;
    sealed.checked_add(MAX_HEADER_LEN)
}

/// The payload's length (content and padding), its number of chunks and its sealed length.
fn payload_sizes(plaintext_len: usize, padding: u64) -> Option<(usize, usize, usize)> {
    let payload = usize::try_from((plaintext_len as u64).checked_add(padding)?).ok()?;
    let chunks = payload.div_ceil(CHUNK_LEN).max(1);
    let sealed = chunks.checked_mul(TAG_LEN)?.checked_add(payload)?;
    Some((payload, chunks, sealed))
}

/// The error for a document too large for memory (or for `usize`).
fn out_of_memory() -> Error {
    Error::Io(io::ErrorKind::OutOfMemory.into())
}

/// A document about to be sealed: its header (with a fresh file key) and payload cipher, and
/// its sizes, all settled before anything is written.
struct Sealing {
    header: Header,
    cipher: ChunkCipher,
    /// Content plus padding.
    payload: usize,
    chunks: usize,
    /// Header and sealed payload.
    total: usize,
}

impl Sealing {
    fn new(
        slots: &[Slot],
        metadata: &Metadata,
        plaintext: &[u8],
        backend: Backend,
    ) -> Result<Self> {
        let len = plaintext.len() as u64;
        let mut metadata = metadata.clone();
        if *metadata.size.get_or_insert(len) != len {
            return Err(Error::SizeMismatch {
                expected: metadata.size.unwrap_or(0),
                found: len,
            });
        }
        let (header, key) = stream::new_header(slots, &metadata)?; // checks size + padding
        let cipher = chunk::payload_cipher(backend, &key, header.payload_salt());
        let (payload, chunks, sealed) =
            payload_sizes(plaintext.len(), metadata.padding).ok_or_else(out_of_memory)?;
        let total = sealed.checked_add(header.len()).ok_or_else(out_of_memory)?;
        Ok(Sealing {
            header,
            cipher,
            payload,
            chunks,
            total,
        })
    }

    /// Chunk `i`'s content (its plaintext before any padding) and the chunk's whole plaintext
    /// length, padding included.
    fn chunk<'p>(&self, plaintext: &'p [u8], i: usize) -> (&'p [u8], usize) {
        let start = i * CHUNK_LEN;
        let len = CHUNK_LEN.min(self.payload - start);
        let content = &plaintext[start.min(plaintext.len())..(start + len).min(plaintext.len())];
        (content, len)
    }

    /// Write the whole document into `out` (exactly `total` bytes long): the header, then each
    /// chunk's plaintext copied into place, its padding zeroed whatever `out` held, and sealed
    /// there. Every chunk but the last is full; those go over `threads` threads, each copying
    /// and sealing its own.
    fn write(&self, plaintext: &[u8], out: &mut [u8], threads: usize) {
        let (head, body) = out.split_at_mut(self.header.len());
        head.copy_from_slice(self.header.as_bytes());
        let full = self.chunks - 1;
        let (full_chunks, last) = body.split_at_mut(full * SEALED_CHUNK_LEN);
        let fill = |i: usize, plain: &mut [u8]| {
            let (content, _) = self.chunk(plaintext, i);
            plain[..content.len()].copy_from_slice(content);
            plain[content.len()..].fill(0);
        };
        parallel::seal_full_chunks(&self.cipher, full_chunks, 0, threads, fill);
        let (plain, tag) = last.split_at_mut(last.len() - TAG_LEN);
        fill(full, plain);
        let nonce = chunk::chunk_nonce(full as u64, true);
        tag.copy_from_slice(&self.cipher.seal(nonce, plain));
    }
}

/// Open a sealed document with the given key holders: its plaintext and sealed metadata.
/// The input is left untouched: it is copied (over the available cores, for documents over
/// 1 MiB) and opened in the copy; [`crate::fast::open_in_place`] saves that copy.
pub fn open(sealed: &[u8], unwrappers: &[&dyn Unwrap]) -> Result<(Vec<u8>, Metadata)> {
    open_with(sealed, unwrappers, Backend::default(), 0)
}

/// [`open`] with a chosen AEAD backend and threads (`fast::open`).
pub(crate) fn open_with(
    sealed: &[u8],
    unwrappers: &[&dyn Unwrap],
    backend: Backend,
    threads: usize,
) -> Result<(Vec<u8>, Metadata)> {
    // A copy made over the cores, so its fresh pages are faulted in side by side.
    let mut buf = parallel::copy_fresh(sealed, threads).ok_or_else(out_of_memory)?;
    let metadata = open_in_place(&mut buf, unwrappers, backend, threads)?;
    Ok((buf, metadata))
}

/// Open the sealed document in `buf` in place, the fastest way to open in memory: on success
/// `buf` holds the plaintext; each chunk is decrypted straight to its final position, over up
/// to `threads` threads (0: the available cores, at most 8, for documents over 1 MiB; 1: the
/// calling thread only).
///
/// On failure `buf` is wiped and emptied (it may have held plaintext of authenticated
/// chunks): keep a copy of the sealed bytes, or use [`open`], if you need them afterwards.
pub(crate) fn open_in_place(
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
