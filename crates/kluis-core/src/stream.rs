//! STREAM payload encryption over 64 KiB chunks: the streaming writer and reader.

use std::io::{self, Read, Write};

use crate::backend::{Backend, ChunkCipher};
use crate::chunk::{chunk_nonce, payload_cipher};
use crate::error::{Error, Result};
use crate::format::TAG_LEN;
pub(crate) use crate::format::{CHUNK_LEN, SEALED_CHUNK_LEN};
use crate::header::Header;
use crate::metadata::Metadata;
use crate::parallel::{self, MAX_THREADS, open_full_chunks, seal_full_chunks};
use crate::primitives;
use crate::secret::{DocId, FileKey};
use crate::sink::BlockSink;
use crate::slot::Slot;
/// A valid final chunk after a full chunk has at least one plaintext byte.
const MIN_FINAL_AFTER_FULL: usize = TAG_LEN + 1;
/// Full chunks the writer gathers before sealing them together (4 MiB): enough work to spread
/// over several cores, little enough to keep memory bounded.
const BATCH_CHUNKS: usize = 64;
/// Sealed output goes out in writes of at most this size: measured on Linux, copying into the
/// page cache costs up to several times more per byte in 1-4 MiB writes than in 64-256 KiB
/// ones (docs/BENCHMARKS.md).
const WRITE_LEN: usize = 256 * 1024;

/// Build a fresh header for `slots` and `metadata`; return it with its file key.
pub(crate) fn new_header(slots: &[Slot], metadata: &Metadata) -> Result<(Header, FileKey)> {
    if slots.is_empty() {
        return Err(Error::InvalidSlots {
            reason: "seal to at least one recipient",
        });
    }
    let key = FileKey::generate()?;
    let doc_id = DocId::generate()?;
    let mut salt = [0u8; 16];
    primitives::fill_random(&mut salt)?;
    let stanzas = slots
        .iter()
        .map(|s| s.seal(&doc_id, &key))
        .collect::<Result<Vec<_>>>()?;
    let sealed_metadata = metadata.seal(&key, &doc_id)?;
    let header = Header::build(doc_id, salt, stanzas, sealed_metadata, &key)?;
    Ok((header, key))
}

/// Seals a payload into any [`Write`]: create it, write the plaintext, then call
/// [`StreamWriter::finish`].
///
/// You MUST call `finish`: it writes the last chunk. A writer dropped without it leaves a
/// document that every reader rejects as truncated.
///
/// Payloads up to one chunk (64 KiB) use one chunk of memory. Larger ones are sealed in
/// batches of up to 64 chunks (4 MiB), each batch split over the available cores (at most 8,
/// and by default at least 8 chunks per thread; see [`crate::fast::FastOptions`]), and written
/// in pieces of up to 256 KiB. The bytes written are the same whatever the number of threads.
#[must_use = "call finish(), or the document is left truncated"]
pub struct StreamWriter<W: Write> {
    out: Option<W>,
    cipher: ChunkCipher,
    /// Plaintext waiting to be sealed, chunk after chunk with room for each tag: wiped on drop.
    buf: zeroize::Zeroizing<Vec<u8>>,
    /// Full chunks in `buf` before the one being filled.
    full: usize,
    /// Bytes in the chunk being filled.
    filled: usize,
    /// Number of the first chunk in `buf`.
    counter: u64,
    /// Threads asked for (0: the default, see `parallel::for_chunks`).
    threads: usize,
    written: u64,
    size: Option<u64>,
    padding: u64,
    header: Header,
}

impl<W: Write> StreamWriter<W> {
    /// Write a new header for `slots` and `metadata` to `out`, and return the writer for the
    /// payload. When `metadata.size` is set, exactly that many bytes must be written.
    pub fn new(out: W, slots: &[Slot], metadata: &Metadata) -> Result<Self> {
        Self::with_backend(out, slots, metadata, Backend::default())
    }

    /// [`StreamWriter::new`] with a chosen AEAD backend.
    pub(crate) fn with_backend(
        mut out: W,
        slots: &[Slot],
        metadata: &Metadata,
        backend: Backend,
    ) -> Result<Self> {
        let (header, key) = new_header(slots, metadata)?;
        out.write_all(header.as_bytes())?;
        Ok(StreamWriter {
            out: Some(out),
            cipher: payload_cipher(backend, &key, header.payload_salt()),
            buf: zeroize::Zeroizing::new(vec![0u8; SEALED_CHUNK_LEN]),
            full: 0,
            filled: 0,
            counter: 0,
            threads: 0,
            written: 0,
            size: metadata.size,
            padding: metadata.padding,
            header,
        })
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

    /// Seal and write the buffered full chunks and, with `last`, the chunk being filled as
    /// the final one. Without `last`, it is called only when the chunk being filled is empty.
    fn seal_buffered(&mut self, last: bool) -> io::Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("the writer already failed"))?;
        let full_len = self.full * SEALED_CHUNK_LEN;
        seal_full_chunks(
            &self.cipher,
            &mut self.buf[..full_len],
            self.counter,
            parallel::for_chunks(self.threads, self.full),
            |_, _| {},
        );
        let mut end = full_len;
        let mut sealed = self.full as u64;
        if last {
            let n = self.filled;
            let nonce = chunk_nonce(self.counter + self.full as u64, true);
            let tag = self.cipher.seal(nonce, &mut self.buf[end..end + n]);
            self.buf[end + n..end + n + TAG_LEN].copy_from_slice(&tag);
            end += n + TAG_LEN;
            sealed += 1;
        }
        for piece in self.buf[..end].chunks(WRITE_LEN) {
            if let Err(e) = out.write_all(piece) {
                self.out = None; // part of a batch may be out: refuse to go on
                return Err(e);
            }
        }
        self.counter = self
            .counter
            .checked_add(sealed)
            .ok_or_else(|| io::Error::other("too many chunks"))?;
        if !last {
            // The chunk being filled is not sealed yet (it may turn out to be the last one):
            // it moves to the front for the next batch.
            let at = self.full * SEALED_CHUNK_LEN;
            self.buf.copy_within(at..at + self.filled, 0);
        }
        self.full = 0;
        Ok(())
    }

    /// Make room for a chunk after the one being filled, which is full, without deciding yet
    /// whether that one is the last (a payload may end on a chunk boundary): grow the batch
    /// buffer, or seal and write the full chunks before it once the buffer holds
    /// [`BATCH_CHUNKS`] chunks.
    fn room_after_full(&mut self) -> io::Result<()> {
        let need = (self.full + 2) * SEALED_CHUNK_LEN;
        if need <= self.buf.len() {
            return Ok(());
        }
        if need <= BATCH_CHUNKS * SEALED_CHUNK_LEN {
            // Grow into a fresh buffer; the old one is wiped when dropped.
            let len = (self.buf.len() * 4).clamp(need, BATCH_CHUNKS * SEALED_CHUNK_LEN);
            let mut bigger = zeroize::Zeroizing::new(vec![0u8; len]);
            bigger[..self.buf.len()].copy_from_slice(&self.buf);
            self.buf = bigger;
            Ok(())
        } else {
            self.seal_buffered(false)
        }
    }

    fn push(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let space = self.spare()?;
            let take = space.len().min(data.len());
            space[..take].copy_from_slice(&data[..take]);
            self.commit(take);
            data = &data[take..];
        }
        Ok(())
    }

    /// The free space where the next plaintext goes: the rest of the chunk being filled, or,
    /// when it is full, the whole next chunk.
    fn spare_range(&self) -> std::ops::Range<usize> {
        if self.filled == CHUNK_LEN {
            let at = (self.full + 1) * SEALED_CHUNK_LEN;
            at..at + CHUNK_LEN
        } else {
            let at = self.full * SEALED_CHUNK_LEN + self.filled;
            at..at + CHUNK_LEN - self.filled
        }
    }

    /// Count `n` bytes (at most the spare space) put into the spare space: a full chunk
    /// becomes one of the batch only now that data follows it.
    fn commit(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.filled == CHUNK_LEN {
            self.full += 1;
            self.filled = 0;
        }
        self.filled += n;
    }

    /// The free part of the chunk being filled (1 to 64 KiB), for reading plaintext straight
    /// into the writer without a copy; then call [`StreamWriter::advance`] with the number of
    /// bytes put there. Bytes left there without `advance` are not part of the document.
    /// May seal and write a full batch first, so it can fail like [`Write::write`].
    ///
    /// ```
    /// # use std::io::Read;
    /// # use kluis_core::{LabelKey, Metadata, Recipient, Slot, StreamWriter};
    /// # let hr = LabelKey::generate("hr", 1).unwrap();
    /// # let slots = [Slot::single(Recipient::Label(hr.public_key().clone()))];
    /// let mut input: &[u8] = b"read straight into the writer";
    /// let mut w = StreamWriter::new(Vec::new(), &slots, &Metadata::default())?;
    /// loop {
    ///     let n = input.read(w.spare()?)?;
    ///     if n == 0 {
    ///         break;
    ///     }
    ///     w.advance(n)?;
    /// }
    /// let sealed = w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spare(&mut self) -> io::Result<&mut [u8]> {
        if self.out.is_none() {
            return Err(io::Error::other("the writer already failed"));
        }
        if self.filled == CHUNK_LEN {
            self.room_after_full()?;
        }
        let range = self.spare_range();
        Ok(&mut self.buf[range])
    }

    /// Count `n` bytes put into [`StreamWriter::spare`] as written. Fails (and counts
    /// nothing) when `n` is more than the spare space, or goes past the size the metadata
    /// promised.
    pub fn advance(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let spare = self.spare_range();
        if n > spare.len() || spare.end > self.buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "advance past the spare space of the chunk: call spare() first",
            ));
        }
        let new_total = self.check_size(n)?;
        self.commit(n);
        self.written = new_total;
        Ok(())
    }

    /// The total written after `n` more bytes; an error when that exceeds the promised size.
    fn check_size(&self, n: usize) -> io::Result<u64> {
        let new_total = self.written.saturating_add(n as u64);
        if let Some(size) = self.size {
            if new_total > size {
                return Err(Error::SizeMismatch {
                    expected: size,
                    found: new_total,
                }
                .into());
            }
        }
        Ok(new_total)
    }

    /// Pad, seal the last chunk, flush, and return the inner writer.
    pub fn finish(mut self) -> Result<W> {
        if let Some(size) = self.size {
            if self.written != size {
                return Err(Error::SizeMismatch {
                    expected: size,
                    found: self.written,
                });
            }
        }
        let zeros = [0u8; 4096];
        let mut left = self.padding;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.push(&zeros[..n])?;
            left -= n as u64;
        }
        self.seal_buffered(true)?;
        let mut out = self.out.take().expect("present after a successful chunk");
        out.flush()?;
        Ok(out)
    }
}

impl<W: Write> Write for StreamWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let new_total = self.check_size(data.len())?;
        self.push(data)?;
        self.written = new_total;
        Ok(data.len())
    }

    /// Flushes the inner writer; buffered plaintext stays until a chunk is full or `finish`.
    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }
}

/// Opens a payload from any [`Read`], yielding the plaintext (padding removed).
///
/// Each chunk is authenticated before any of its bytes is returned. A failure (a changed,
/// truncated or reordered chunk) is returned as an [`io::Error`] wrapping [`Error`]; use
/// [`Error::from_io`] to get it back. Bytes already returned came from authenticated chunks,
/// but the document as a whole is only valid once `read` returns 0.
///
/// Chunks are read in batches that grow to 64 chunks (4 MiB) on large payloads; the chunks
/// of a batch that cannot be the last one are opened in parallel over the available cores
/// (at most 8, and by default at least 8 chunks per thread; see [`crate::fast::FastOptions`]), so
/// memory stays bounded and a small payload uses one chunk of memory.
pub struct StreamReader<R: Read> {
    input: R,
    opener: PayloadOpener,
    /// Sealed chunks of the batch plus read-ahead bytes; holds plaintext, so it is wiped on
    /// drop.
    buf: zeroize::Zeroizing<Vec<u8>>,
    /// Chunks per batch: grows from 1 to [`BATCH_CHUNKS`] while batches come in full.
    batch: usize,
    /// Read-ahead bytes in `buf` after the batch, which belong to the next one.
    ahead: usize,
    /// Where the read-ahead bytes are.
    ahead_at: usize,
    /// Plaintext of the batch: `(start, end)` in `buf`, one per chunk, in order.
    plain: Vec<(usize, usize)>,
    /// The next of `plain` to read from.
    next: usize,
    /// Threads asked for (0: the default, see `parallel::for_chunks`).
    threads: usize,
    /// An error to return once the plaintext before it was read.
    pending: Option<Error>,
    failed: bool,
    metadata: Metadata,
}

impl<R: Read> StreamReader<R> {
    /// Start reading the payload that follows `header` in `input`. `key` must come from
    /// [`Header::unlock`]; the metadata is decrypted here.
    pub fn new(header: &Header, key: &FileKey, input: R) -> Result<Self> {
        Self::with_backend(header, key, input, Backend::default())
    }

    /// [`StreamReader::new`] with a chosen AEAD backend.
    pub(crate) fn with_backend(
        header: &Header,
        key: &FileKey,
        input: R,
        backend: Backend,
    ) -> Result<Self> {
        let (opener, metadata) = PayloadOpener::new(header, key, backend)?;
        Ok(StreamReader {
            input,
            opener,
            buf: zeroize::Zeroizing::new(vec![0u8; SEALED_CHUNK_LEN + MIN_FINAL_AFTER_FULL]),
            batch: 1,
            ahead: 0,
            ahead_at: 0,
            plain: Vec::new(),
            next: 0,
            threads: 0,
            pending: None,
            failed: false,
            metadata,
        })
    }

    /// The sealed metadata (name, size, modification time).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Use at most `n` threads (1 opens on the calling thread only).
    pub(crate) fn threads(mut self, n: usize) -> Self {
        self.threads = n.clamp(1, MAX_THREADS);
        self
    }

    /// Fill `buf[from..to]` as far as the input allows; return the new fill level.
    fn fill(&mut self, from: usize, to: usize) -> io::Result<usize> {
        fill(&mut self.input, &mut self.buf[..to], from)
    }

    /// Read the next batch of chunks, authenticate and decrypt them in `buf`. When a chunk
    /// fails, the authenticated chunks before it in the batch are still handed out, and the
    /// error after them (as a chunk-by-chunk reader would).
    fn next_batch(&mut self) -> Result<()> {
        if self.ahead > 0 {
            // The last batch came in full: the payload is likely large.
            self.grow();
        }
        self.take_batch()
    }

    /// [`StreamReader::next_batch`] at the present batch size.
    fn take_batch(&mut self) -> Result<()> {
        self.plain.clear();
        self.next = 0;
        match self.load_batch() {
            Err(e) if !self.plain.is_empty() => {
                self.pending = Some(e);
                Ok(())
            }
            r => r,
        }
    }

    fn load_batch(&mut self) -> Result<()> {
        let (at, a) = (self.ahead_at, self.ahead);
        self.buf.copy_within(at..at + a, 0);
        self.ahead = 0;
        let full = self.batch * SEALED_CHUNK_LEN;
        let n = self.fill(a, full + MIN_FINAL_AFTER_FULL)?;
        if n == full + MIN_FINAL_AFTER_FULL {
            // Enough follows the batch for another chunk: none of its chunks is the last, and
            // all are full. Open them together; account for them in order.
            self.opener
                .open_full(&mut self.buf[..full], self.threads, &mut self.plain)?;
            (self.ahead_at, self.ahead) = (full, MIN_FINAL_AFTER_FULL);
            return Ok(());
        }
        // The input ends within this batch: open chunk by chunk with the last-chunk rules.
        let mut at = 0;
        loop {
            let len = SEALED_CHUNK_LEN.min(n - at);
            let follow = MIN_FINAL_AFTER_FULL.min(n - at - len);
            let content = self
                .opener
                .open_chunk(&mut self.buf[at..at + len], 0, follow)?;
            self.plain.push((at, at + content));
            at += len;
            if self.opener.done {
                return Ok(());
            }
        }
    }

    /// Make the batch four times larger, up to [`BATCH_CHUNKS`] (called before reading a
    /// batch, when the batch before came in full and its plaintext was all read).
    fn grow(&mut self) {
        if self.batch < BATCH_CHUNKS {
            self.batch = (self.batch * 4).min(BATCH_CHUNKS);
            let len = self.batch * SEALED_CHUNK_LEN + MIN_FINAL_AFTER_FULL;
            // The read-ahead is carried over; the rest is plaintext already read, wiped as
            // the old buffer drops.
            let mut bigger = zeroize::Zeroizing::new(vec![0u8; len]);
            let (at, a) = (self.ahead_at, self.ahead);
            bigger[..a].copy_from_slice(&self.buf[at..at + a]);
            self.buf = bigger;
            self.ahead_at = 0;
        }
    }
}

impl<R: Read> StreamReader<R> {
    /// Open the next chunks straight into `sink`'s block, which the ciphertext is read into
    /// and decrypted in place (no copy but the read itself), and count the plaintext there with
    /// [`BlockSink::advance`]. Returns how many bytes that was: 0 only at the end of the
    /// payload. Fills at most the spare space `sink` has when called (so it never makes the sink
    /// write a block); a chunk too large for what is left of it is opened in the reader's own
    /// buffer and copied. Errors are those of [`Read::read`], except that the plaintext of the
    /// authenticated chunks opened together with a failed one is not counted (it is wiped).
    ///
    /// Up to 64 chunks are opened at a time, over the available cores. Mixing calls with
    /// [`Read::read`] is allowed.
    pub(crate) fn read_into<S: BlockSink + ?Sized>(&mut self, sink: &mut S) -> io::Result<usize> {
        loop {
            if self.failed {
                return Err(already_failed());
            }
            let spare = sink.spare()?;
            if spare.is_empty() {
                return Err(io::Error::other("the block sink gave no spare space"));
            }
            // Plaintext already opened in the reader's buffer goes first.
            if let Some(n) = self.take_plain(spare) {
                sink.advance(n);
                return Ok(n);
            }
            if self.opener.done && self.pending.is_none() {
                return Ok(0);
            }
            let room = spare.len().saturating_sub(MIN_FINAL_AFTER_FULL);
            let chunks = (room / SEALED_CHUNK_LEN).min(BATCH_CHUNKS);
            let opened = match self.pending.take() {
                Some(e) => Err(e),
                None if chunks == 0 => {
                    // Too little room for a chunk: one chunk in the reader's buffer, then
                    // copied from there above.
                    let batch = std::mem::replace(&mut self.batch, 1);
                    let r = self.take_batch();
                    self.batch = batch;
                    r.map(|()| 0)
                }
                None => self.open_into(sink, chunks),
            };
            match opened {
                Ok(n) if n > 0 => return Ok(n),
                // Only padding, or a chunk opened in the reader's buffer: go on.
                Ok(_) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// Copy plaintext already opened in the reader's buffer into `out`; `None` when there is
    /// none left.
    fn take_plain(&mut self, out: &mut [u8]) -> Option<usize> {
        while let Some(&(start, end)) = self.plain.get(self.next) {
            if start == end {
                self.next += 1;
                continue;
            }
            let n = (end - start).min(out.len());
            out[..n].copy_from_slice(&self.buf[start..start + n]);
            self.plain[self.next].0 += n;
            return Some(n);
        }
        None
    }

    /// Wipe whatever plaintext a failed batch left behind, stay failed, and pass `e` on.
    fn fail(&mut self, e: Error) -> io::Error {
        zeroize::Zeroize::zeroize(&mut self.buf[..]);
        self.plain.clear();
        self.failed = true;
        e.into()
    }

    /// Read up to `chunks` chunks (and what follows) into `sink`'s spare space and open them
    /// there; return the plaintext length counted in the sink. On error the space is wiped.
    fn open_into<S: BlockSink + ?Sized>(&mut self, sink: &mut S, chunks: usize) -> Result<usize> {
        let spare = sink.spare()?;
        let full = chunks * SEALED_CHUNK_LEN;
        let want = full + MIN_FINAL_AFTER_FULL;
        if spare.len() < want {
            return Err(io::Error::other("the block sink's spare space shrank").into());
        }
        let (at, a) = (self.ahead_at, self.ahead);
        spare[..a].copy_from_slice(&self.buf[at..at + a]);
        self.ahead = 0;
        let n = match fill(&mut self.input, &mut spare[..want], a) {
            Ok(n) => n,
            Err(e) => {
                // The read-ahead carried over is ciphertext; nothing was opened yet.
                zeroize::Zeroize::zeroize(&mut spare[..want]);
                return Err(e.into());
            }
        };
        let opened = if n == want {
            // Another chunk follows: all of these are full and none is the last.
            let threads = parallel::for_chunks(self.threads, chunks);
            self.opener
                .open_full_in_place(spare, 0, chunks, threads)
                .inspect(|_| {
                    self.buf[..MIN_FINAL_AFTER_FULL].copy_from_slice(&spare[full..want]);
                    (self.ahead_at, self.ahead) = (0, MIN_FINAL_AFTER_FULL);
                })
        } else {
            // The input ends here: chunk by chunk, with the last-chunk rules.
            self.opener.open_rest_in_place(&mut spare[..n], 0, 0)
        };
        match opened {
            Ok(written) => {
                sink.advance(written);
                Ok(written)
            }
            Err(e) => {
                zeroize::Zeroize::zeroize(&mut spare[..n]);
                Err(e)
            }
        }
    }
}

impl<R: Read> Read for StreamReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.failed {
                return Err(already_failed());
            }
            if let Some(n) = self.take_plain(out) {
                return Ok(n);
            }
            if (self.opener.done && self.pending.is_none()) || out.is_empty() {
                return Ok(0);
            }
            let next = match self.pending.take() {
                Some(e) => Err(e),
                None => self.next_batch(),
            };
            if let Err(e) = next {
                return Err(self.fail(e));
            }
        }
    }
}

/// Fill `buf[from..]` from `input` as far as it allows; return the new fill level.
fn fill(input: &mut impl Read, buf: &mut [u8], from: usize) -> io::Result<usize> {
    let mut n = from;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The error for every read after a failed one.
fn already_failed() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the sealed payload already failed to open; discard the output",
    )
}

/// The payload-opening rules of FORMAT.md §8, shared by [`StreamReader`] and the in-place
/// one-call path: chunk order, the last-chunk flag, the read-ahead verdicts, and the size and
/// padding checks against the metadata.
pub(crate) struct PayloadOpener {
    cipher: ChunkCipher,
    counter: u64,
    pub(crate) done: bool,
    content_left: u64,
    padding_left: u64,
    seen: u64,
    expected: Option<u64>,
}

impl PayloadOpener {
    /// Check the key against the header and decrypt the metadata.
    pub(crate) fn new(
        header: &Header,
        key: &FileKey,
        backend: Backend,
    ) -> Result<(Self, Metadata)> {
        let metadata = header.metadata(key)?;
        let opener = PayloadOpener {
            cipher: payload_cipher(backend, key, header.payload_salt()),
            counter: 0,
            done: false,
            content_left: metadata.size.unwrap_or(u64::MAX),
            padding_left: metadata.padding,
            seen: 0,
            expected: metadata.payload_len(),
        };
        Ok((opener, metadata))
    }

    /// Open the next sealed chunk, `buf[src..]`, writing its plaintext to `buf[..]` from 0
    /// (in place when `src` is 0). `follow` is how many input bytes come after the chunk,
    /// counted up to 17. Returns the length of the content (padding excluded) at `buf[..]`.
    pub(crate) fn open_chunk(
        &mut self,
        buf: &mut [u8],
        src: usize,
        follow: usize,
    ) -> Result<usize> {
        let n = buf.len() - src;
        let chunk = self.counter;
        let last = if n == SEALED_CHUNK_LEN {
            match follow {
                0 => {
                    // Either the final chunk is full, or the file was cut at a chunk boundary.
                    // A failed open may scribble over the chunk: keep a copy for the retry.
                    let copy = zeroize::Zeroizing::new(buf[src..].to_vec());
                    if !self.try_open(buf, src, true) {
                        buf[src..].copy_from_slice(&copy);
                        return Err(match self.try_open(buf, src, false) {
                            true => Error::Truncated { chunks: chunk + 1 },
                            false => Error::ChunkAuth { chunk },
                        });
                    }
                    true
                }
                MIN_FINAL_AFTER_FULL.. => {
                    if !self.try_open(buf, src, false) {
                        return Err(Error::ChunkAuth { chunk });
                    }
                    false
                }
                // Too few bytes follow to be a chunk: this must be the final chunk.
                _ => {
                    return Err(match self.try_open(buf, src, true) {
                        true => Error::TrailingData,
                        false => Error::ChunkAuth { chunk },
                    });
                }
            }
        } else {
            // A short chunk is the final one. (After a full chunk the read-ahead above
            // decides, so only chunk 0 gets here; an empty final chunk after data is reported
            // as the failure of the full chunk before it.)
            if n == 0 {
                return Err(Error::Truncated { chunks: chunk });
            }
            if !self.try_open(buf, src, true) {
                return Err(Error::ChunkAuth { chunk });
            }
            true
        };
        self.counter += 1;
        self.done = last;
        self.account(&buf[..n - TAG_LEN])
    }

    /// Open the full chunks laid out in `buf`, none of them the last (more input follows),
    /// over `threads` threads, and push the range of each one's content (padding excluded)
    /// onto `plain`. When a chunk fails, the chunks before it are still pushed.
    pub(crate) fn open_full(
        &mut self,
        buf: &mut [u8],
        threads: usize,
        plain: &mut Vec<(usize, usize)>,
    ) -> Result<()> {
        let chunks = buf.len() / SEALED_CHUNK_LEN;
        let threads = parallel::for_chunks(threads, chunks);
        let failed = open_full_chunks(&self.cipher, buf, self.counter, threads);
        self.account_full(buf, SEALED_CHUNK_LEN, chunks, failed, |start, content| {
            plain.push((start, start + content))
        })
    }

    /// Open the next `n` chunks, laid out from `buf[at..]`, none of them the last, over
    /// `threads` threads, each one's plaintext moved to `i * CHUNK_LEN`; return the length of
    /// the content (padding excluded) now at the start of `buf`.
    fn open_full_in_place(
        &mut self,
        buf: &mut [u8],
        at: usize,
        n: usize,
        threads: usize,
    ) -> Result<usize> {
        let failed = parallel::open_shifted(&self.cipher, buf, at, n, self.counter, threads);
        let mut written = 0;
        self.account_full(buf, CHUNK_LEN, n, failed, |_, content| written += content)?;
        Ok(written)
    }

    /// Open the rest of the payload, which lies from `buf[read..]` to the end of `buf`, chunk
    /// by chunk with the last-chunk rules, each one's plaintext moved next to the content
    /// before it, which ends at `buf[written]`; return where the content now ends.
    fn open_rest_in_place(
        &mut self,
        buf: &mut [u8],
        mut read: usize,
        mut written: usize,
    ) -> Result<usize> {
        let total = buf.len();
        loop {
            let n = SEALED_CHUNK_LEN.min(total - read);
            let follow = MIN_FINAL_AFTER_FULL.min(total - read - n);
            written += self.open_chunk(&mut buf[written..read + n], read - written, follow)?;
            read += n;
            if self.done {
                return Ok(written);
            }
        }
    }

    /// Account, in order, for `chunks` full chunks just opened (chunk `i`'s plaintext at
    /// `i * stride` in `buf`) up to the first that failed, calling `each` with the start and
    /// content length of each; then report the failure, as a chunk-by-chunk opener would.
    fn account_full(
        &mut self,
        buf: &[u8],
        stride: usize,
        chunks: usize,
        failed: Option<usize>,
        mut each: impl FnMut(usize, usize),
    ) -> Result<()> {
        for i in 0..failed.unwrap_or(chunks) {
            let start = i * stride;
            each(start, self.account(&buf[start..start + CHUNK_LEN])?);
            self.counter += 1;
        }
        match failed {
            Some(_) => Err(Error::ChunkAuth {
                chunk: self.counter,
            }),
            None => Ok(()),
        }
    }

    fn try_open(&self, buf: &mut [u8], src: usize, last: bool) -> bool {
        self.cipher
            .open_within(chunk_nonce(self.counter, last), buf, src)
            .is_some()
    }

    /// Split a decrypted chunk into content and padding; check sizes against the metadata.
    fn account(&mut self, plain: &[u8]) -> Result<usize> {
        self.seen = self.seen.saturating_add(plain.len() as u64);
        let content = (plain.len() as u64).min(self.content_left) as usize;
        self.content_left -= content as u64;
        let pad = &plain[content..];
        let mismatch = Error::SizeMismatch {
            expected: self.expected.unwrap_or(0),
            found: self.seen,
        };
        if pad.len() as u64 > self.padding_left || pad.iter().any(|&b| b != 0) {
            return Err(mismatch);
        }
        self.padding_left -= pad.len() as u64;
        if self.done
            && self.expected.is_some()
            && (self.content_left != 0 || self.padding_left != 0)
        {
            return Err(mismatch);
        }
        Ok(content)
    }
}

/// Open the payload of the sealed document in `buf` in place: on success `buf` holds the
/// plaintext. No chunk is copied: each is decrypted straight to its final position; the chunks
/// that cannot be the last are opened over up to `threads` threads (0: the default, see
/// `parallel::for_chunks`).
pub(crate) fn open_payload_in_place(
    buf: &mut Vec<u8>,
    header: &Header,
    key: &FileKey,
    backend: Backend,
    threads: usize,
) -> Result<Metadata> {
    let (mut opener, metadata) = PayloadOpener::new(header, key, backend)?;
    let total = buf.len();
    let (mut read, mut written) = (header.len(), 0);
    // Chunks with at least a minimal final chunk after them are full and not the last.
    let full = (total - read).saturating_sub(MIN_FINAL_AFTER_FULL) / SEALED_CHUNK_LEN;
    let threads = parallel::for_chunks(threads, full);
    if threads > 1 {
        written = opener.open_full_in_place(buf, read, full, threads)?;
        read += full * SEALED_CHUNK_LEN;
    }
    let written = opener.open_rest_in_place(buf, read, written)?;
    buf.truncate(written);
    Ok(metadata)
}
