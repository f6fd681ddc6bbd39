//! The performance entry points: the same documents as [`crate::seal`], [`crate::open`],
//! [`StreamWriter`] and [`StreamReader`], with control over threads, the AEAD backend and
//! where the output goes in memory.
//!
//! Everything here takes a [`FastOptions`]; `FastOptions::default()` gives what the root API
//! does (the available cores, at most 8, for large documents; ring's AES-256-GCM). The bytes
//! written are the same whatever the options.
//!
//! - [`seal_into`] and [`open_in_place`] seal and open without a fresh buffer per call;
//!   opening in place decrypts every chunk straight to its final position (the fastest path).
//! - [`seal_to_slice`] seals into a buffer the caller already has (at least
//!   [`max_sealed_len`] bytes), with nothing allocated or zeroed for the output.
//! - [`BlockWriter`] seals a payload of known size straight into an output's own memory (a
//!   [`BlockSink`], such as aligned blocks for direct I/O), and [`read_into`] opens one
//!   straight into it, without copying.
//! - [`stream_writer`] and [`stream_reader`] are [`StreamWriter::new`] and
//!   [`StreamReader::new`] with options.
//!
//! ```
//! use kluis_core::fast::{self, FastOptions};
//! use kluis_core::{LabelKey, Metadata, Recipient, Slot};
//!
//! # fn main() -> Result<(), kluis_core::Error> {
//! let hr = LabelKey::generate("hr", 1)?;
//! let slots = [Slot::single(Recipient::Label(hr.public_key().clone()))];
//! let one_thread = FastOptions::default().threads(1);
//!
//! let mut buf = Vec::new();
//! fast::seal_into(&slots, &Metadata::default(), b"payroll", &mut buf, &one_thread)?;
//! let metadata = fast::open_in_place(&mut buf, &[&hr], &one_thread)?;
//! assert_eq!(buf, b"payroll");
//! assert_eq!(metadata.size, Some(7));
//! # Ok(()) }
//! ```

use std::io::{self, Read, Write};

use crate::error::Result;
use crate::header::Header;
use crate::metadata::Metadata;
use crate::secret::FileKey;
use crate::simple;
use crate::slot::Slot;
use crate::stream::{StreamReader, StreamWriter};
use crate::unwrap::Unwrap;

pub use crate::backend::Backend;
pub use crate::blocks::BlockWriter;
pub use crate::sink::BlockSink;

/// Plaintext bytes per payload chunk (64 KiB): the unit that is sealed, authenticated and
/// spread over threads. A sink's blocks work best as a multiple of it plus its 16-byte tag.
pub const CHUNK_LEN: usize = crate::format::CHUNK_LEN;

/// How the fast entry points run: over how many threads, with which AEAD backend.
///
/// Build one with `FastOptions::default()` and the setters; the fields can be read directly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FastOptions {
    /// At most this many threads: 0 (the default) for the available cores, at most 8, for
    /// documents over 1 MiB; 1 for the calling thread only.
    pub threads: usize,
    /// Which AES-256-GCM implementation seals and opens the payload chunks.
    pub backend: Backend,
}

impl FastOptions {
    /// Use at most `n` threads (0: the default; 1: the calling thread only; more than 8 is
    /// taken as 8).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Use this AEAD backend for the payload.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }
}

/// [`crate::seal`] with options.
pub fn seal(
    slots: &[Slot],
    metadata: &Metadata,
    plaintext: &[u8],
    options: &FastOptions,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    seal_into(slots, metadata, plaintext, &mut out, options)?;
    Ok(out)
}

/// [`crate::seal`], appending the document to `out`: reusing one buffer for many documents
/// avoids a fresh allocation (and its page faults) per call. Each chunk is copied once, to its
/// final position, and sealed there, over up to `options.threads` threads, each copying and
/// sealing its own chunks. The bytes are the same whatever the number of threads. Nothing is
/// appended on error.
///
/// Over several threads the appended space is zeroed first (safe Rust cannot hand out memory
/// that was never written): by the calling thread, or for an empty `Vec` without the room, by
/// the allocator handing out fresh pages. [`seal_to_slice`] skips that.
pub fn seal_into(
    slots: &[Slot],
    metadata: &Metadata,
    plaintext: &[u8],
    out: &mut Vec<u8>,
    options: &FastOptions,
) -> Result<()> {
    simple::seal_into(
        slots,
        metadata,
        plaintext,
        out,
        options.backend,
        options.threads,
    )
}

/// [`crate::seal`] into the start of `out`, a buffer the caller already has (reused or
/// pooled), with nothing allocated or zeroed for the output; returns the length of the
/// document written there. `out` must be large enough for this document: a buffer of
/// [`max_sealed_len`] bytes always is. Bytes of `out` after the document are not touched; on
/// error nothing is written ([`crate::Error::OutputTooSmall`] says how much is needed).
///
/// Each chunk's plaintext is copied into `out` and sealed there, so `out` holds plaintext for
/// a moment: give it private memory, not a file or shared memory mapping.
pub fn seal_to_slice(
    slots: &[Slot],
    metadata: &Metadata,
    plaintext: &[u8],
    out: &mut [u8],
    options: &FastOptions,
) -> Result<usize> {
    simple::seal_to_slice(
        slots,
        metadata,
        plaintext,
        out,
        options.backend,
        options.threads,
    )
}

/// The most bytes a document of `plaintext_len` bytes, padded as `metadata` says, can take
/// sealed, whatever its slots and the rest of its metadata: its payload after the largest
/// header allowed ([`Header::MAX_LEN`], where a header with one slot takes a few hundred
/// bytes). A buffer this long always holds what [`seal_to_slice`] writes. `None` if that is
/// more than `usize` can count.
pub fn max_sealed_len(plaintext_len: usize, metadata: &Metadata) -> Option<usize> {
    simple::max_sealed_len(plaintext_len, metadata)
}

/// [`crate::open`] with options.
pub fn open(
    sealed: &[u8],
    unwrappers: &[&dyn Unwrap],
    options: &FastOptions,
) -> Result<(Vec<u8>, Metadata)> {
    simple::open_with(sealed, unwrappers, options.backend, options.threads)
}

/// Open the sealed document in `buf` in place, the fastest way to open in memory: on success
/// `buf` holds the plaintext; each chunk is decrypted straight to its final position, over up
/// to `options.threads` threads.
///
/// On failure `buf` is wiped and emptied (it may have held plaintext of authenticated
/// chunks): keep a copy of the sealed bytes, or use [`crate::open`], if you need them
/// afterwards.
pub fn open_in_place(
    buf: &mut Vec<u8>,
    unwrappers: &[&dyn Unwrap],
    options: &FastOptions,
) -> Result<Metadata> {
    simple::open_in_place(buf, unwrappers, options.backend, options.threads)
}

/// [`StreamWriter::new`] with options: a new header for `slots` and `metadata` is written to
/// `out`, and the writer for the payload returned.
pub fn stream_writer<W: Write>(
    out: W,
    slots: &[Slot],
    metadata: &Metadata,
    options: &FastOptions,
) -> Result<StreamWriter<W>> {
    let w = StreamWriter::with_backend(out, slots, metadata, options.backend)?;
    Ok(match options.threads {
        0 => w,
        n => w.threads(n),
    })
}

/// [`StreamReader::new`] with options: reads the payload that follows `header` in `input`.
/// `key` must come from [`Header::unlock`].
pub fn stream_reader<R: Read>(
    header: &Header,
    key: &FileKey,
    input: R,
    options: &FastOptions,
) -> Result<StreamReader<R>> {
    let r = StreamReader::with_backend(header, key, input, options.backend)?;
    Ok(match options.threads {
        0 => r,
        n => r.threads(n),
    })
}

/// [`BlockWriter::new`] with options.
pub fn block_writer<S: BlockSink>(
    sink: S,
    slots: &[Slot],
    metadata: &Metadata,
    options: &FastOptions,
) -> Result<BlockWriter<S>> {
    let w = BlockWriter::with_backend(sink, slots, metadata, options.backend)?;
    Ok(match options.threads {
        0 => w,
        n => w.threads(n),
    })
}

/// Open the next chunks of `reader` straight into `sink`'s block, which the ciphertext is read
/// into and decrypted in place (no copy but the read itself), and count the plaintext there
/// with [`BlockSink::advance`]. Returns how many bytes that was: 0 only at the end of the
/// payload. Fills at most the spare space `sink` has when called (so it never makes the sink
/// write a block); a chunk too large for what is left of it is opened in the reader's own
/// buffer and copied. Errors are those of [`Read::read`], except that the plaintext of the
/// authenticated chunks opened together with a failed one is not counted (it is wiped).
///
/// Up to 64 chunks are opened at a time, over the reader's threads. Mixing calls with
/// [`Read::read`] is allowed.
pub fn read_into<R: Read, S: BlockSink + ?Sized>(
    reader: &mut StreamReader<R>,
    sink: &mut S,
) -> io::Result<usize> {
    reader.read_into(sink)
}
