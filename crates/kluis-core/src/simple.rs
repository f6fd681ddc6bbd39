//! The one-call API: seal and open byte slices, re-key a stream.

use std::io::{self, Read, Write};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::header::Header;
use crate::metadata::Metadata;
use crate::slot::Slot;
use crate::stream::{StreamReader, StreamWriter};
use crate::unwrap::Unwrap;

/// Seal `plaintext` to `slots`. The size in `metadata` is filled in when absent.
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
    let mut metadata = metadata.clone();
    metadata.size.get_or_insert(plaintext.len() as u64);
    let capacity = plaintext.len() + plaintext.len() / 4096 + 1024;
    let mut w =
        StreamWriter::with_backend(Vec::with_capacity(capacity), slots, &metadata, backend)?;
    w.write_all(plaintext).map_err(Error::from_io)?;
    w.finish()
}

/// Open a sealed document with the given key holders: its plaintext and sealed metadata.
pub fn open(sealed: &[u8], unwrappers: &[&dyn Unwrap]) -> Result<(Vec<u8>, Metadata)> {
    open_with_backend(sealed, unwrappers, Backend::default())
}

/// [`open`] with a chosen AEAD backend.
pub fn open_with_backend(
    sealed: &[u8],
    unwrappers: &[&dyn Unwrap],
    backend: Backend,
) -> Result<(Vec<u8>, Metadata)> {
    let header = Header::parse(sealed)?;
    let key = header.unlock(unwrappers)?;
    let mut r = StreamReader::with_backend(&header, &key, &sealed[header.len()..], backend)?;
    // Never more than the ciphertext: the capacity is bounded by the input.
    let mut out = Vec::with_capacity(sealed.len() - header.len());
    r.read_to_end(&mut out).map_err(Error::from_io)?;
    let metadata = r.metadata().clone();
    Ok((out, metadata))
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
