//! Shared file plumbing: buffer sizes, identity stamps, reading sealed files.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kluis_core::Header;

use crate::error::{Error, Result};

/// The largest I/O buffer: reads and writes move up to 256 KiB at a time. Larger writes were
/// measured to copy into the page cache more slowly on Linux (docs/BENCHMARKS.md).
pub(crate) const BUF_LEN: usize = 256 * 1024;

/// A buffer length for a file of about `len` bytes: large for large files, small for small
/// ones (a folder of many small files should not allocate the largest buffer per file).
pub(crate) fn buf_len(len: u64) -> usize {
    usize::try_from(len.saturating_add(4096)).map_or(BUF_LEN, |l| l.clamp(16 * 1024, BUF_LEN))
}

/// What identifies a file's state: if any of it changes, the file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    id: (u64, u64),
}

impl Stamp {
    /// The file's size.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            id: {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            },
        }
    }
}

/// Open `path` for reading and check that the path still names a regular file that is not a
/// symbolic link, and (when `expect` is given) the same file in the same state.
pub(crate) fn open_checked(path: &Path, expect: Option<Stamp>) -> Result<(File, fs::Metadata)> {
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, "read", e))?;
    if !meta.is_file() {
        return Err(Error::NotAFile { path: path.into() });
    }
    // The path may have been swapped for a link after it was listed: it must still name the
    // very file that was opened.
    let now = fs::symlink_metadata(path).map_err(|e| Error::io(path, "read", e))?;
    if now.file_type().is_symlink()
        || Stamp::of(&now) != Stamp::of(&meta)
        || expect.is_some_and(|s| s != Stamp::of(&meta))
    {
        return Err(Error::Changed { path: path.into() });
    }
    Ok((file, meta))
}

/// Whether `file` is a sealed document, whatever its name: it starts with a header this
/// version reads (the `KLUIS\0` magic, version 1 and a well-formed header; the MAC cannot be
/// checked without a key). A plain file that merely starts with the magic is not one (no
/// kluis can open it), and neither is one cut short inside its header. Reads no more than a
/// header (at most 64 KiB; 12 bytes for a file without the magic) and leaves `file` at its
/// start.
pub(crate) fn starts_sealed(file: &mut File) -> io::Result<bool> {
    use std::io::Seek;
    let sealed = match Header::read(file) {
        Ok(_) => true,
        Err(kluis_core::Error::Io(e)) => return Err(e),
        Err(_) => false,
    };
    file.rewind()?;
    Ok(sealed)
}

/// Open a sealed file and read its header, leaving the file positioned at the payload.
fn open_sealed(path: &Path) -> Result<(File, Header)> {
    let (mut file, _) = open_checked(path, None)?;
    let header = Header::read(&mut file).map_err(|e| Error::format(path, e))?;
    Ok((file, header))
}

/// Read just the header of a sealed file. A document whose re-keying in place was
/// interrupted is refused with [`Error::RekeyInterrupted`] (its header may be torn, and the
/// way out is to finish the re-keying, not to call the document damaged).
pub(crate) fn read_header(path: &Path) -> Result<Header> {
    let journal = crate::rekey::journal_path(path);
    if fs::symlink_metadata(&journal).is_ok() {
        return Err(Error::RekeyInterrupted {
            path: path.into(),
            journal,
        });
    }
    open_sealed(path).map(|(_, header)| header)
}

/// Open a sealed file again, after its header was read (and unlocked) earlier, positioned at
/// the payload. The header is read again and must be the same bytes: the file was not swapped
/// in between.
pub(crate) fn reopen_sealed(path: &Path, header: &Header) -> Result<File> {
    let (file, again) = open_sealed(path)?;
    if again.as_bytes() != header.as_bytes() {
        return Err(Error::Changed { path: path.into() });
    }
    Ok(file)
}

/// Check that `input` is a regular file itself (not a folder or a link), for the one-file
/// calls.
pub(crate) fn require_file(input: &Path) -> Result<()> {
    if fs::symlink_metadata(input)
        .map_err(|e| Error::io(input, "read", e))?
        .is_file()
    {
        Ok(())
    } else {
        Err(Error::NotAFile { path: input.into() })
    }
}

/// Read until `buf` is full or the input ends; return how many bytes were read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The path made absolute (lexically, without resolving links), to compare outputs.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The folder a path is in: `.` for a bare file name.
pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A payload read error as this crate's error.
pub(crate) fn payload_error(path: &Path, e: io::Error) -> Error {
    match kluis_core::Error::from_io(e) {
        kluis_core::Error::Io(e) => Error::io(path, "read", e),
        other => Error::format(path, other),
    }
}
