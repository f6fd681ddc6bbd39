//! STREAM payload encryption over 64 KiB chunks: the streaming writer and reader.

use std::io::{self, Read, Write};

use crate::backend::{Backend, ChunkCipher};
use crate::error::{Error, Result};
use crate::header::Header;
use crate::metadata::Metadata;
use crate::primitives::{self, NONCE_LEN, TAG_LEN};
use crate::secret::{DocId, FileKey};
use crate::slot::Slot;

/// Plaintext bytes per chunk.
pub const CHUNK_LEN: usize = 64 * 1024;
/// Ciphertext bytes per full chunk.
pub(crate) const SEALED_CHUNK_LEN: usize = CHUNK_LEN + TAG_LEN;
/// A valid final chunk after a full chunk has at least one plaintext byte.
const MIN_FINAL_AFTER_FULL: usize = TAG_LEN + 1;

/// `BE88(i) ‖ flag`: an 11-byte big-endian counter and the last-chunk flag.
fn chunk_nonce(counter: u64, last: bool) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// `PK = HKDF(ikm = K, salt = payload_salt, info = "kluis/v1/payload")`
fn payload_cipher(backend: Backend, key: &FileKey, salt: &[u8; 16]) -> ChunkCipher {
    ChunkCipher::new(
        backend,
        &primitives::hkdf(key.expose(), salt, b"kluis/v1/payload"),
    )
}

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
/// document that every reader rejects as truncated. Memory use is one chunk (64 KiB).
pub struct StreamWriter<W: Write> {
    out: Option<W>,
    cipher: ChunkCipher,
    buf: Vec<u8>,
    filled: usize,
    counter: u64,
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
    pub fn with_backend(
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
            buf: vec![0u8; SEALED_CHUNK_LEN],
            filled: 0,
            counter: 0,
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

    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("the writer already failed"))?;
        let n = self.filled;
        let tag = self
            .cipher
            .seal(chunk_nonce(self.counter, last), &mut self.buf[..n]);
        self.buf[n..n + TAG_LEN].copy_from_slice(&tag);
        if let Err(e) = out.write_all(&self.buf[..n + TAG_LEN]) {
            self.out = None; // a partial chunk may be out: refuse to go on
            return Err(e);
        }
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| io::Error::other("too many chunks"))?;
        self.filled = 0;
        Ok(())
    }

    fn push(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            // A full buffer is sealed only once more data arrives: the last chunk may be full.
            if self.filled == CHUNK_LEN {
                self.seal_chunk(false)?;
            }
            let take = (CHUNK_LEN - self.filled).min(data.len());
            self.buf[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
        }
        Ok(())
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
        self.seal_chunk(true)?;
        let mut out = self.out.take().expect("present after a successful chunk");
        out.flush()?;
        Ok(out)
    }
}

impl<W: Write> Write for StreamWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let new_total = self.written.saturating_add(data.len() as u64);
        if let Some(size) = self.size {
            if new_total > size {
                return Err(Error::SizeMismatch {
                    expected: size,
                    found: new_total,
                }
                .into());
            }
        }
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
pub struct StreamReader<R: Read> {
    input: R,
    cipher: ChunkCipher,
    /// Sealed chunk plus read-ahead bytes.
    buf: Vec<u8>,
    /// Read-ahead bytes that belong to the next chunk.
    ahead: [u8; MIN_FINAL_AFTER_FULL],
    /// How many of `ahead` are valid.
    ahead_len: usize,
    plain: (usize, usize),
    counter: u64,
    done: bool,
    failed: bool,
    content_left: u64,
    padding_left: u64,
    seen: u64,
    metadata: Metadata,
}

impl<R: Read> StreamReader<R> {
    /// Start reading the payload that follows `header` in `input`. `key` must come from
    /// [`Header::unlock`]; the metadata is decrypted here.
    pub fn new(header: &Header, key: &FileKey, input: R) -> Result<Self> {
        Self::with_backend(header, key, input, Backend::default())
    }

    /// [`StreamReader::new`] with a chosen AEAD backend.
    pub fn with_backend(
        header: &Header,
        key: &FileKey,
        input: R,
        backend: Backend,
    ) -> Result<Self> {
        let metadata = header.metadata(key)?;
        Ok(StreamReader {
            input,
            cipher: payload_cipher(backend, key, header.payload_salt()),
            buf: vec![0u8; SEALED_CHUNK_LEN + MIN_FINAL_AFTER_FULL],
            ahead: [0; MIN_FINAL_AFTER_FULL],
            ahead_len: 0,
            plain: (0, 0),
            counter: 0,
            done: false,
            failed: false,
            content_left: metadata.size.unwrap_or(u64::MAX),
            padding_left: metadata.padding,
            seen: 0,
            metadata,
        })
    }

    /// The sealed metadata (name, size, modification time).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Fill `buf[from..to]` as far as the input allows; return the new fill level.
    fn fill(&mut self, from: usize, to: usize) -> io::Result<usize> {
        let mut n = from;
        while n < to {
            match self.input.read(&mut self.buf[n..to]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Read, authenticate and decrypt the next chunk into `buf`.
    fn next_chunk(&mut self) -> Result<()> {
        let a = self.ahead_len;
        self.buf[..a].copy_from_slice(&self.ahead[..a]);
        self.ahead_len = 0;
        let n = self.fill(a, SEALED_CHUNK_LEN)?;
        let chunk = self.counter;
        let last;
        if n == SEALED_CHUNK_LEN {
            // Peek enough to tell a following final chunk from trailing junk.
            let m = self.fill(n, n + MIN_FINAL_AFTER_FULL)? - n;
            match m {
                0 => {
                    // Either the final chunk is full, or the file was cut at a chunk boundary.
                    let copy = zeroize::Zeroizing::new(self.buf[..n].to_vec());
                    if self.open_chunk(n, true).is_some() {
                        last = true;
                    } else {
                        self.buf[..n].copy_from_slice(&copy);
                        return Err(match self.open_chunk(n, false) {
                            Some(_) => Error::Truncated { chunks: chunk + 1 },
                            None => Error::ChunkAuth { chunk },
                        });
                    }
                }
                MIN_FINAL_AFTER_FULL => {
                    if self.open_chunk(n, false).is_none() {
                        return Err(Error::ChunkAuth { chunk });
                    }
                    self.ahead.copy_from_slice(&self.buf[n..n + m]);
                    self.ahead_len = m;
                    last = false;
                }
                _ => {
                    // Too few bytes follow to be a chunk: this must be the final chunk.
                    return Err(match self.open_chunk(n, true) {
                        Some(_) => Error::TrailingData,
                        None => Error::ChunkAuth { chunk },
                    });
                }
            }
        } else {
            // A short read is the final chunk. (Only chunk 0 can get here: after a full chunk
            // the 17-byte peek above decides. So an empty final chunk after data is reported as
            // the failure of the full chunk before it.)
            if self.open_chunk(n, true).is_none() {
                return Err(if n == 0 {
                    Error::Truncated { chunks: 0 }
                } else {
                    Error::ChunkAuth { chunk }
                });
            }
            last = true;
        }
        let len = n - TAG_LEN;
        self.counter += 1;
        self.done = last;
        self.account(len)
    }

    fn open_chunk(&mut self, n: usize, last: bool) -> Option<usize> {
        self.cipher
            .open(chunk_nonce(self.counter, last), &mut self.buf[..n])
    }

    /// Split the decrypted chunk into content and padding; check sizes against the metadata.
    fn account(&mut self, len: usize) -> Result<()> {
        self.seen = self.seen.saturating_add(len as u64);
        let content = (len as u64).min(self.content_left) as usize;
        self.content_left -= content as u64;
        let pad = &self.buf[content..len];
        let expected = self.metadata.payload_len();
        let seen = self.seen;
        let mismatch = || Error::SizeMismatch {
            expected: expected.unwrap_or(0),
            found: seen,
        };
        if pad.len() as u64 > self.padding_left || pad.iter().any(|&b| b != 0) {
            return Err(mismatch());
        }
        self.padding_left -= pad.len() as u64;
        if self.done && expected.is_some() && (self.content_left != 0 || self.padding_left != 0) {
            return Err(mismatch());
        }
        self.plain = (0, content);
        Ok(())
    }
}

impl<R: Read> Read for StreamReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.failed {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the sealed payload already failed to open; discard the output",
                ));
            }
            let (start, end) = self.plain;
            if start < end {
                let n = (end - start).min(out.len());
                out[..n].copy_from_slice(&self.buf[start..start + n]);
                self.plain.0 += n;
                return Ok(n);
            }
            if self.done || out.is_empty() {
                return Ok(0);
            }
            if let Err(e) = self.next_chunk() {
                // Wipe whatever plaintext the failed chunk left behind, and stay failed.
                zeroize::Zeroize::zeroize(&mut self.buf[..]);
                self.plain = (0, 0);
                self.failed = true;
                return Err(e.into());
            }
        }
    }
}
