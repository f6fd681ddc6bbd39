//! Sealing straight into the output's own memory: the [`BlockWriter`] lays each chunk's
//! plaintext where its ciphertext goes in a [`BlockSink`]'s block and seals it there.

use std::io::{self, Write};

use crate::backend::{Backend, ChunkCipher};
use crate::chunk::{chunk_nonce, payload_cipher};
use crate::error::{Error, Result};
use crate::format::{CHUNK_LEN, SEALED_CHUNK_LEN, TAG_LEN};
use crate::header::Header;
use crate::metadata::Metadata;
use crate::parallel::{self, MAX_THREADS, seal_full_chunks};
use crate::sink::BlockSink;
use crate::slot::Slot;
use crate::stream::new_header;

/// Full chunks sealed together at most (4 MiB), as [`crate::StreamWriter`] does.
const BATCH_CHUNKS: usize = 64;

fn already_failed() -> io::Error {
    io::Error::other("the writer already failed")
}

/// The sink broke its contract (an empty or shrinking spare space): refuse rather than panic.
fn sink_too_short() -> io::Error {
    io::Error::other("the block sink gave less spare space than it had")
}

/// Where the chunk being filled lies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Not decided yet.
    Unplaced,
    /// In the sink's spare space, at this offset (after the full chunks waiting there).
    Block(usize),
    /// Too little room is left in the block: in the writer's own chunk buffer, copied into
    /// the sink once sealed.
    Scratch,
}

/// Seals a payload of a size known up front into a [`BlockSink`], without copying it: read
/// the plaintext into [`BlockWriter::spare`] (or [`Write`] it), then call
/// [`BlockWriter::finish`]. The bytes are the same as [`crate::StreamWriter`] would write.
///
/// Each chunk's plaintext is put where its ciphertext goes in the sink's block and sealed
/// there, full chunks up to 64 (4 MiB) at a time over the available cores; only a chunk that
/// would cross into the next block is sealed in a buffer of the writer's (64 KiB) and copied.
/// Since the size is known, every chunk is sealed as soon as it is full.
///
/// ```
/// # use std::io::Read;
/// # use kluis_core::fast::{BlockSink, BlockWriter};
/// # use kluis_core::{LabelKey, Metadata, Recipient, Slot};
/// # let hr = LabelKey::generate("hr", 1).unwrap();
/// # let slots = [Slot::single(Recipient::Label(hr.public_key().clone()))];
/// /// Blocks of 4 KiB gathered into a Vec (a real sink writes each one out).
/// struct Blocks { done: Vec<u8>, block: Vec<u8>, filled: usize }
/// impl BlockSink for Blocks {
///     fn spare(&mut self) -> std::io::Result<&mut [u8]> {
///         if self.filled == self.block.len() {
///             self.done.extend_from_slice(&self.block);
///             self.filled = 0;
///         }
///         Ok(&mut self.block[self.filled..])
///     }
///     fn advance(&mut self, n: usize) {
///         self.filled += n;
///     }
/// }
/// let mut input: &[u8] = b"read straight into the output's block";
/// let sink = Blocks { done: Vec::new(), block: vec![0; 4096], filled: 0 };
/// let metadata = Metadata::with_size(input.len() as u64);
/// let mut w = BlockWriter::new(sink, &slots, &metadata)?;
/// loop {
///     let n = input.read(w.spare()?)?;
///     if n == 0 {
///         break;
///     }
///     w.advance(n)?;
/// }
/// let mut sink = w.finish()?;
/// sink.done.extend_from_slice(&sink.block[..sink.filled]);
/// let (plain, _) = kluis_core::open(&sink.done, &[&hr])?;
/// assert_eq!(plain, b"read straight into the output's block");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "call finish(), or the document is left truncated"]
pub struct BlockWriter<S: BlockSink> {
    sink: S,
    cipher: ChunkCipher,
    header: Header,
    /// Number of the chunk being filled; the last one is `chunks - 1`.
    chunk: u64,
    chunks: u64,
    /// Plaintext bytes of the last chunk (content and padding).
    last_len: usize,
    /// Bytes in the chunk being filled, and where it lies.
    filled: usize,
    place: Place,
    /// Full chunks laid out at the start of the sink's spare space, before the chunk being
    /// filled, not sealed yet.
    waiting: usize,
    /// The content's size, as the metadata says; the content still to come, then padding.
    size: u64,
    content_left: u64,
    padding: u64,
    /// The chunk buffer for [`Place::Scratch`]: holds plaintext, so wiped on drop.
    scratch: zeroize::Zeroizing<Vec<u8>>,
    threads: usize,
    failed: bool,
}

impl<S: BlockSink> BlockWriter<S> {
    /// Write a new header for `slots` and `metadata` into `sink` and return the writer for
    /// the payload, of exactly `metadata.size` bytes (which must be set).
    pub fn new(sink: S, slots: &[Slot], metadata: &Metadata) -> Result<Self> {
        Self::with_backend(sink, slots, metadata, Backend::default())
    }

    /// [`BlockWriter::new`] with a chosen AEAD backend.
    pub(crate) fn with_backend(
        sink: S,
        slots: &[Slot],
        metadata: &Metadata,
        backend: Backend,
    ) -> Result<Self> {
        let size = metadata.size.ok_or(Error::InvalidMetadata {
            reason: "sealing into blocks needs the size up front",
        })?;
        let (header, key) = new_header(slots, metadata)?; // checks size + padding
        let payload = size + metadata.padding;
        let chunks = payload.div_ceil(CHUNK_LEN as u64).max(1);
        let last_len = (payload - (chunks - 1) * CHUNK_LEN as u64) as usize;
        let mut w = BlockWriter {
            sink,
            cipher: payload_cipher(backend, &key, header.payload_salt()),
            header,
            chunk: 0,
            chunks,
            last_len,
            filled: 0,
            place: Place::Unplaced,
            waiting: 0,
            size,
            content_left: size,
            padding: metadata.padding,
            scratch: zeroize::Zeroizing::new(Vec::new()),
            threads: 0,
            failed: false,
        };
        let header = w.header.as_bytes().to_vec();
        w.put(&header)?;
        Ok(w)
    }

    /// The header that was written (its doc_id names the document).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Use at most `n` threads (1 seals on the calling thread only).
    pub(crate) fn threads(mut self, n: usize) -> Self {
        self.threads = n.clamp(1, MAX_THREADS);
        self
    }

    /// The free part of the chunk being filled, where the next plaintext goes (up to 64 KiB,
    /// and never more than the content still to come: empty once it is all in). Then call
    /// [`BlockWriter::advance`] with the number of bytes put there. May seal chunks and make
    /// the sink write a block first, so it can fail like [`Write::write`].
    pub fn spare(&mut self) -> io::Result<&mut [u8]> {
        if self.failed {
            return Err(already_failed());
        }
        let left = self.content_left;
        if left == 0 {
            return Ok(&mut []);
        }
        let space = self.space()?;
        let n = space.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        Ok(&mut space[..n])
    }

    /// Count `n` bytes put into [`BlockWriter::spare`] as written. Fails (and counts
    /// nothing) when `n` is more than the spare space.
    pub fn advance(&mut self, n: usize) -> io::Result<()> {
        if self.failed {
            return Err(already_failed());
        }
        if n == 0 {
            return Ok(());
        }
        let room = match self.place {
            Place::Unplaced => 0,
            _ => self.plain_len() - self.filled,
        };
        if n as u64 > self.content_left || n > room {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "advance past the spare space of the chunk: call spare() first",
            ));
        }
        self.content_left -= n as u64;
        self.filled += n;
        self.chunk_filled()
    }

    /// Pad, seal the last chunk, and return the sink (whose block being filled holds the end
    /// of the document).
    pub fn finish(mut self) -> Result<S> {
        if self.failed {
            return Err(Error::Io(already_failed()));
        }
        if self.content_left > 0 {
            return Err(Error::SizeMismatch {
                expected: self.size,
                found: self.size - self.content_left,
            });
        }
        while self.padding > 0 {
            let padding = usize::try_from(self.padding).unwrap_or(usize::MAX);
            let space = self.space()?;
            let n = space.len().min(padding);
            space[..n].fill(0);
            self.padding -= n as u64;
            self.filled += n;
            self.chunk_filled()?;
        }
        if self.chunk < self.chunks {
            // Only an empty payload gets here: its one chunk is empty.
            self.space()?;
            self.chunk_filled()?;
        }
        Ok(self.sink)
    }

    /// Plaintext length of the chunk being filled.
    fn plain_len(&self) -> usize {
        if self.chunk + 1 == self.chunks {
            self.last_len
        } else {
            CHUNK_LEN
        }
    }

    /// The free plaintext space of the chunk being filled, placing the chunk first.
    fn space(&mut self) -> io::Result<&mut [u8]> {
        if self.failed {
            return Err(already_failed());
        }
        if self.place == Place::Unplaced {
            let place = self.placement();
            self.place = self.fail(place)?;
        }
        let (filled, len) = (self.filled, self.plain_len());
        match self.place {
            Place::Block(at) => {
                self.failed = true; // until the space is in hand
                let spare = self.sink.spare()?;
                if spare.len() < at + len + TAG_LEN {
                    return Err(sink_too_short());
                }
                self.failed = false;
                Ok(&mut spare[at + filled..at + len])
            }
            _ => {
                if self.scratch.is_empty() {
                    self.scratch.resize(SEALED_CHUNK_LEN, 0);
                }
                Ok(&mut self.scratch[filled..len])
            }
        }
    }

    /// Where the chunk being filled goes: after the waiting chunks in the sink's block if it
    /// fits there whole with its tag, otherwise (once the waiting ones are sealed and out of
    /// the way) at the start of the block, or in the scratch buffer.
    fn placement(&mut self) -> io::Result<Place> {
        let need = self.plain_len() + TAG_LEN;
        let at = self.waiting * SEALED_CHUNK_LEN;
        if self.sink.spare()?.len() >= at + need {
            return Ok(Place::Block(at));
        }
        if self.waiting > 0 {
            self.seal_waiting()?;
            if self.sink.spare()?.len() >= need {
                return Ok(Place::Block(0));
            }
        }
        Ok(Place::Scratch)
    }

    /// After bytes were added to the chunk being filled: once it is full, seal it (or leave it
    /// waiting for its batch) and move on to the next chunk.
    fn chunk_filled(&mut self) -> io::Result<()> {
        if self.filled < self.plain_len() {
            return Ok(());
        }
        let last = self.chunk + 1 == self.chunks;
        let sealed = self.seal_chunk(last);
        self.fail(sealed)?;
        self.chunk += 1;
        self.filled = 0;
        self.place = Place::Unplaced;
        if self.waiting == BATCH_CHUNKS {
            // After the count moved on: `seal_waiting` numbers the chunks back from it.
            let sealed = self.seal_waiting();
            self.fail(sealed)?;
        }
        Ok(())
    }

    /// Seal the full chunk being filled (`last`: the final one), or leave it waiting for its
    /// batch.
    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        match self.place {
            Place::Block(_) if !last => {
                self.waiting += 1;
                Ok(())
            }
            Place::Block(_) => {
                self.seal_waiting()?;
                let len = self.last_len;
                let spare = self.sink.spare()?;
                if spare.len() < len + TAG_LEN {
                    return Err(sink_too_short());
                }
                let tag = self
                    .cipher
                    .seal(chunk_nonce(self.chunk, true), &mut spare[..len]);
                spare[len..len + TAG_LEN].copy_from_slice(&tag);
                self.sink.advance(len + TAG_LEN);
                Ok(())
            }
            _ => {
                self.seal_waiting()?;
                let len = self.plain_len();
                let tag = self
                    .cipher
                    .seal(chunk_nonce(self.chunk, last), &mut self.scratch[..len]);
                self.scratch[len..len + TAG_LEN].copy_from_slice(&tag);
                let sealed = std::mem::take(&mut self.scratch);
                let put = self.put(&sealed[..len + TAG_LEN]);
                self.scratch = sealed;
                put
            }
        }
    }

    /// Seal the full chunks waiting in the sink's block, over the threads asked for, and
    /// count them as filled there.
    fn seal_waiting(&mut self) -> io::Result<()> {
        let n = self.waiting;
        if n == 0 {
            return Ok(());
        }
        // The waiting chunks are the `n` before the one being filled.
        let first = self.chunk - n as u64;
        let threads = parallel::for_chunks(self.threads, n);
        let spare = self.sink.spare()?;
        if spare.len() < n * SEALED_CHUNK_LEN {
            return Err(sink_too_short());
        }
        seal_full_chunks(
            &self.cipher,
            &mut spare[..n * SEALED_CHUNK_LEN],
            first,
            threads,
            |_, _| {},
        );
        self.sink.advance(n * SEALED_CHUNK_LEN);
        self.waiting = 0;
        Ok(())
    }

    /// Copy `bytes` into the sink (only when nothing is waiting in its block).
    fn put(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let spare = self.sink.spare()?;
            if spare.is_empty() {
                return Err(sink_too_short());
            }
            let n = spare.len().min(bytes.len());
            spare[..n].copy_from_slice(&bytes[..n]);
            self.sink.advance(n);
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Pass `r` on; should it be an error, refuse to go on (part of the document may be out,
    /// or a chunk half sealed).
    fn fail<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        self.failed |= r.is_err();
        r
    }
}

impl<S: BlockSink> Write for BlockWriter<S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.content_left == 0 && !self.failed {
            // More than promised: the caller's data does not fit, so no document comes out.
            self.failed = true;
            return Err(Error::SizeMismatch {
                expected: self.size,
                found: self.size.saturating_add(data.len() as u64),
            }
            .into());
        }
        let space = self.spare()?;
        let n = space.len().min(data.len());
        space[..n].copy_from_slice(&data[..n]);
        self.advance(n)?;
        Ok(n)
    }

    /// Nothing to do: blocks are the sink's, written when full or after `finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
