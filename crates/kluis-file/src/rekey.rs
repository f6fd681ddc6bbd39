//! Re-keying on disk: a new header in front of a sealed document's unchanged payload.
//!
//! Re-keying keeps `K`, `doc_id`, the sealed metadata and the payload (FORMAT.md §10), so
//! the old and the new header are both valid for the same payload. When the new header has
//! the old one's length (the usual case: the same label moves to a new key version) it is
//! written **in place**, which costs a few hundred bytes and three fsyncs whatever the
//! document's size. A crash could tear that write, so it is made safe with a redo journal:
//!
//! 1. the journal (`.kluis-tmp-rekey-<hash of the file name>` beside the document: the file
//!    length, the old header, the new header and a SHA-256 of all that) is written and
//!    synced, and so is its folder;
//! 2. the new header is written over the old one and the document is synced;
//! 3. the journal is removed.
//!
//! A journal left behind by a crash is finished by [`finish_rekey`] (the `kluis rekey`
//! command calls it first): an incomplete journal means the document was never touched; a
//! complete one is applied only if every header byte of the document is still the old or
//! the new byte (a torn write), never to a document that was replaced since.
//!
//! A header of another length (a slot added or removed) cannot be written in place: the
//! document is then copied behind the new header into a temporary file (in the kernel
//! where the platform allows, `copy_file_range` on Linux), synced and renamed over the
//! original, so it costs a copy of the document.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kluis_core::Header;
use ring::digest;

use crate::atomic::{start_output, sync_dir};
use crate::error::{Error, Result};
use crate::file::{Stamp, parent_of, read_full};
use crate::name::TEMP_PREFIX;

/// How [`replace_header`] wrote the new header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rewrite {
    /// Over the old header, through a redo journal; the payload was not touched.
    InPlace,
    /// Into a copy of the document renamed over the original (the header length changed,
    /// or the document is not writable in place).
    Copied,
}

/// What [`finish_rekey`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No journal: nothing to do.
    Clean,
    /// An incomplete journal: the crash came before the document was touched. The journal
    /// was removed; the document keeps its old header.
    Discarded,
    /// A complete journal: the new header is now in place and the journal was removed.
    Completed,
}

const JOURNAL_MAGIC: &[u8; 24] = b"kluis rekey journal v1\n\0";
const JOURNAL_FIXED: usize = JOURNAL_MAGIC.len() + 8 + 4 + 32;
/// The largest journal a reader accepts (two headers of the maximum length).
pub const MAX_JOURNAL_LEN: usize = JOURNAL_FIXED + 2 * Header::MAX_LEN;

/// The journal of a re-keying in place: the document's length and its two headers.
#[derive(Debug, PartialEq, Eq)]
pub struct Journal {
    /// The document's length in bytes (a re-keying in place does not change it).
    pub file_len: u64,
    /// The header being replaced.
    pub old: Vec<u8>,
    /// The header replacing it (the same length).
    pub new: Vec<u8>,
}

impl Journal {
    /// The journal's bytes: magic, `BE64(file_len)`, `BE32(header_len)`, old header, new
    /// header, SHA-256 of everything before it.
    pub fn to_bytes(&self) -> Vec<u8> {
        assert_eq!(self.old.len(), self.new.len(), "headers of one length");
        let mut out = Vec::with_capacity(JOURNAL_FIXED + 2 * self.old.len());
        out.extend_from_slice(JOURNAL_MAGIC);
        out.extend_from_slice(&self.file_len.to_be_bytes());
        out.extend_from_slice(&(self.old.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.old);
        out.extend_from_slice(&self.new);
        let sum = digest::digest(&digest::SHA256, &out);
        out.extend_from_slice(sum.as_ref());
        out
    }

    /// Parse a journal; `None` if it is incomplete or not a journal (a crash while it was
    /// being written, before the document was touched).
    pub fn parse(bytes: &[u8]) -> Option<Journal> {
        if bytes.len() < JOURNAL_FIXED || bytes.len() > MAX_JOURNAL_LEN {
            return None;
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if digest::digest(&digest::SHA256, body).as_ref() != sum {
            return None;
        }
        let rest = body.strip_prefix(JOURNAL_MAGIC)?;
        let (file_len, rest) = rest.split_at(8);
        let (header_len, rest) = rest.split_at(4);
        let header_len = u32::from_be_bytes(header_len.try_into().ok()?) as usize;
        if header_len == 0 || header_len > Header::MAX_LEN || rest.len() != 2 * header_len {
            return None;
        }
        let (old, new) = rest.split_at(header_len);
        Some(Journal {
            file_len: u64::from_be_bytes(file_len.try_into().ok()?),
            old: old.to_vec(),
            new: new.to_vec(),
        })
    }
}

/// The journal path of a re-keying in place of `path`: in the same folder, named after a
/// hash of the file name (so it fits any name length and shows nothing new), starting with
/// [`TEMP_PREFIX`] so that folder walks skip it.
pub fn journal_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or(b"");
    let hash = digest::digest(&digest::SHA256, name);
    let hex: String = hash.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    parent_of(path).join(format!("{TEMP_PREFIX}rekey-{hex}"))
}

/// Replace the header `old` of the sealed document at `path` with `new` (made by
/// [`Header::rekey`] from `old`), keeping the payload. In place when the lengths are equal,
/// by a copy otherwise (see the module docs). The document must still start with `old`;
/// if it changed meanwhile, [`Error::Changed`] and nothing is written.
pub fn replace_header(path: &Path, old: &Header, new: &Header) -> Result<Rewrite> {
    if old.doc_id() != new.doc_id() {
        return Err(Error::Changed { path: path.into() });
    }
    // Never write through a symbolic link (it could point out of the tree being re-keyed).
    if !fs::symlink_metadata(path)
        .map_err(|e| Error::io(path, "read", e))?
        .is_file()
    {
        return Err(Error::NotAFile { path: path.into() });
    }
    let journal = journal_path(path);
    if fs::symlink_metadata(&journal).is_ok() {
        return Err(Error::RekeyInterrupted {
            path: path.into(),
            journal,
        });
    }
    if new.len() == old.len() {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => return in_place(path, file, old, new, &journal).map(|()| Rewrite::InPlace),
            // A read-only document in a writable folder can still be replaced by a copy.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(Error::io(path, "open for re-keying", e)),
        }
    }
    copy(path, old, new).map(|()| Rewrite::Copied)
}

/// Check that `file` is the regular file at `path`, unchanged since `stamp` when given,
/// starting with `old`; return its metadata.
fn check_start(
    path: &Path,
    file: &mut File,
    old: &[u8],
    stamp: Option<Stamp>,
) -> Result<fs::Metadata> {
    let meta = file.metadata().map_err(|e| Error::io(path, "read", e))?;
    if !meta.is_file() || stamp.is_some_and(|s| s != Stamp::of(&meta)) {
        return Err(Error::Changed { path: path.into() });
    }
    let mut start = vec![0; old.len()];
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, "read", e))?;
    let n = read_full(file, &mut start).map_err(|e| Error::io(path, "read", e))?;
    if n != old.len() || start != old {
        return Err(Error::Changed { path: path.into() });
    }
    Ok(meta)
}

fn in_place(path: &Path, mut file: File, old: &Header, new: &Header, journal: &Path) -> Result<()> {
    let meta = check_start(path, &mut file, old.as_bytes(), None)?;
    let record = Journal {
        file_len: meta.len(),
        old: old.as_bytes().to_vec(),
        new: new.as_bytes().to_vec(),
    };
    let mut j = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(journal)
        .map_err(|e| Error::io(journal, "create the re-keying journal", e))?;
    let written = j
        .write_all(&record.to_bytes())
        .and_then(|()| j.sync_all())
        .map_err(|e| Error::io(journal, "write the re-keying journal", e));
    drop(j);
    if let Err(e) = written.and_then(|()| sync_dir(&parent_of(path))) {
        let _ = fs::remove_file(journal); // the document was not touched
        return Err(e);
    }
    // Written and synced: from here a crash leaves a complete journal to finish.
    write_header(path, &mut file, new.as_bytes())?;
    fs::remove_file(journal).map_err(|e| Error::io(journal, "remove the re-keying journal", e))
}

fn write_header(path: &Path, file: &mut File, header: &[u8]) -> Result<()> {
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(header))
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(path, "write the new header of", e))
}

fn copy(path: &Path, old: &Header, new: &Header) -> Result<()> {
    let mut src = File::open(path).map_err(|e| Error::io(path, "read", e))?;
    let meta = check_start(path, &mut src, old.as_bytes(), None)?;
    let dir = parent_of(path);
    let out = start_output(&dir, Path::new(""), path, true, false, None)?;
    out.file()
        .set_permissions(meta.permissions())
        .map_err(|e| Error::io(path, "copy the permissions of", e))?;
    let write = |e| Error::io(path, "write the re-keyed copy of", e);
    out.file().write_all(new.as_bytes()).map_err(write)?;
    // `io::copy` between files uses `copy_file_range` on Linux: the payload stays in the kernel.
    let copied = io::copy(&mut src, &mut out.file()).map_err(write)?;
    if copied != meta.len() - old.len() as u64 {
        return Err(Error::Changed { path: path.into() });
    }
    check_start(path, &mut src, old.as_bytes(), Some(Stamp::of(&meta)))?;
    drop(src); // closed before the rename (Windows refuses to replace an open file)
    out.commit(path, true)?;
    sync_dir(&dir)
}

/// Finish a re-keying in place of `path` that a crash interrupted, if its journal is there
/// (see the module docs). Cheap when there is none: one `stat`.
pub fn finish_rekey(path: &Path) -> Result<Recovery> {
    let journal = journal_path(path);
    let mut j = match File::open(&journal) {
        Ok(j) => j,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Recovery::Clean),
        Err(e) => return Err(Error::io(&journal, "read the re-keying journal", e)),
    };
    let len = j
        .metadata()
        .map_err(|e| Error::io(&journal, "read the re-keying journal", e))?
        .len();
    let record = if len > MAX_JOURNAL_LEN as u64 {
        None
    } else {
        let mut bytes = Vec::with_capacity(len as usize);
        (&mut j)
            .take(MAX_JOURNAL_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&journal, "read the re-keying journal", e))?;
        Journal::parse(&bytes)
    };
    drop(j);
    let remove = |outcome| {
        fs::remove_file(&journal)
            .map(|()| outcome)
            .map_err(|e| Error::io(&journal, "remove the re-keying journal", e))
    };
    let Some(record) = record else {
        return remove(Recovery::Discarded);
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, "open for re-keying", e))?;
    let stale = || Error::StaleJournal {
        path: path.into(),
        journal: journal.clone(),
    };
    let meta = file.metadata().map_err(|e| Error::io(path, "read", e))?;
    if !meta.is_file() || meta.len() != record.file_len {
        return Err(stale());
    }
    let mut start = vec![0; record.new.len()];
    let n = read_full(&mut file, &mut start).map_err(|e| Error::io(path, "read", e))?;
    let torn = start
        .iter()
        .zip(record.old.iter().zip(&record.new))
        .all(|(b, (o, n))| b == o || b == n);
    if n != start.len() || !torn {
        return Err(stale());
    }
    if start != record.new {
        write_header(path, &mut file, &record.new)?;
    }
    remove(Recovery::Completed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn journal_round_trips(
            file_len in any::<u64>(),
            pair in (1usize..300).prop_flat_map(|n| (
                proptest::collection::vec(any::<u8>(), n),
                proptest::collection::vec(any::<u8>(), n),
            )),
        ) {
            let j = Journal { file_len, old: pair.0, new: pair.1 };
            prop_assert_eq!(Journal::parse(&j.to_bytes()), Some(j));
        }

        #[test]
        fn a_damaged_journal_is_refused(
            old in proptest::collection::vec(any::<u8>(), 1..200),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let j = Journal { file_len: 7, new: old.iter().map(|b| !b).collect(), old };
            let bytes = j.to_bytes();
            let mut flipped = bytes.clone();
            flipped[at.index(bytes.len())] ^= flip;
            prop_assert_eq!(Journal::parse(&flipped), None);
            prop_assert_eq!(Journal::parse(&bytes[..cut.index(bytes.len())]), None);
        }

        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Journal::parse(&bytes);
        }
    }

    #[test]
    fn journal_names_fit_long_names_and_differ_per_file() {
        let long = "x".repeat(250) + ".kluis";
        let a = journal_path(&Path::new("/d").join(&long));
        let b = journal_path(Path::new("/d/y.kluis"));
        assert_eq!(a.parent(), Some(Path::new("/d")));
        assert!(a.file_name().unwrap().len() < 64);
        assert_ne!(a, b);
        assert!(
            a.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(TEMP_PREFIX)
        );
    }
}
