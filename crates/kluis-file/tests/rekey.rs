//! Re-keying on disk: the header in place through a redo journal, a copy when its length
//! changes, and recovery from every crash point (simulated by leaving the files a crash
//! would leave: a journal, a torn header).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use kluis_core::{Header, Identity, LabelKey, Recipient, Slot};
use kluis_file::{
    Error, Journal, OpenOptions, Recovery, Rewrite, SealOptions, finish_rekey, journal_path,
    open_file, replace_header, seal_file,
};

/// A sealed document under `hr` v1 and its contents.
fn sealed(dir: &Path, hr1: &LabelKey) -> (PathBuf, Vec<u8>) {
    let input = dir.join("a.bin");
    let contents = data(3, 300_000);
    fs::write(&input, &contents).unwrap();
    seal_file(&input, &[label_slot(hr1)], &SealOptions::default()).unwrap();
    fs::remove_file(&input).unwrap();
    (dir.join("a.bin.kluis"), contents)
}

/// The document's header, and a new one moving it from `from` to `to`.
fn headers(path: &Path, from: &LabelKey, to: &[Slot]) -> (Header, Header) {
    let old = Header::read(&mut fs::File::open(path).unwrap()).unwrap();
    let key = old.unlock(&[from]).unwrap();
    let new = old.rekey(&key, &[], to).unwrap();
    (old, new)
}

fn opens_with(path: &Path, key: &LabelKey, contents: &[u8]) {
    let out = tempfile::tempdir().unwrap();
    let mut options = OpenOptions::default();
    options.output_dir = Some(out.path().to_owned());
    let report = open_file(path, &[key], &options).unwrap();
    assert_eq!(fs::read(report.output.unwrap()).unwrap(), contents);
}

#[cfg(unix)]
fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().ino()
}

#[test]
fn same_length_header_is_written_in_place_and_the_payload_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let hr1 = LabelKey::generate("hr", 1).unwrap();
    let hr2 = LabelKey::generate("hr", 2).unwrap();
    let (path, contents) = sealed(dir.path(), &hr1);
    let before = fs::read(&path).unwrap();
    #[cfg(unix)]
    let ino = inode(&path);
    let (old, new) = headers(&path, &hr1, &[label_slot(&hr2)]);
    assert_eq!(old.len(), new.len());

    assert_eq!(replace_header(&path, &old, &new).unwrap(), Rewrite::InPlace);

    let after = fs::read(&path).unwrap();
    assert_eq!(&after[..new.len()], new.as_bytes());
    assert_eq!(
        after[old.len()..],
        before[old.len()..],
        "payload byte for byte"
    );
    #[cfg(unix)]
    assert_eq!(inode(&path), ino, "the same file, not a copy");
    opens_with(&path, &hr2, &contents);
    assert!(open_file(&path, &[&hr1], &OpenOptions::default()).is_err());
    assert_no_temp(dir.path());
    assert_eq!(finish_rekey(&path).unwrap(), Recovery::Clean);
}

#[test]
fn header_of_another_length_is_written_into_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let hr1 = LabelKey::generate("hr", 1).unwrap();
    let hr2 = LabelKey::generate("hr", 2).unwrap();
    let holder = Identity::generate().unwrap();
    let (path, contents) = sealed(dir.path(), &hr1);
    let before = fs::read(&path).unwrap();
    let slots = [
        label_slot(&hr2),
        Slot::single(Recipient::Key(holder.public_key())),
    ];
    let (old, new) = headers(&path, &hr1, &slots);
    assert_ne!(old.len(), new.len());

    assert_eq!(replace_header(&path, &old, &new).unwrap(), Rewrite::Copied);

    let after = fs::read(&path).unwrap();
    assert_eq!(after[new.len()..], before[old.len()..]);
    opens_with(&path, &hr2, &contents);
    assert_no_temp(dir.path());
}

#[test]
fn a_document_that_changed_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let hr1 = LabelKey::generate("hr", 1).unwrap();
    let hr2 = LabelKey::generate("hr", 2).unwrap();
    let (path, _) = sealed(dir.path(), &hr1);
    let (old, new) = headers(&path, &hr1, &[label_slot(&hr2)]);
    // Another program sealed something else under the same name meanwhile.
    fs::write(dir.path().join("a.bin"), data(4, 1000)).unwrap();
    let mut force = SealOptions::default();
    force.force = true;
    seal_file(&dir.path().join("a.bin"), &[label_slot(&hr1)], &force).unwrap();
    let replaced = fs::read(&path).unwrap();

    let err = replace_header(&path, &old, &new).unwrap_err();
    assert!(matches!(err, Error::Changed { .. }), "{err}");
    assert_eq!(fs::read(&path).unwrap(), replaced);
    assert!(!journal_path(&path).exists());
}

/// Leave what a crash after the journal was synced leaves: the journal and, in the
/// document, `torn` (a mix of the two headers).
fn crash_after_journal(path: &Path, old: &Header, new: &Header, torn: &[u8]) {
    let journal = Journal {
        file_len: fs::metadata(path).unwrap().len(),
        old: old.as_bytes().to_vec(),
        new: new.as_bytes().to_vec(),
    };
    fs::write(journal_path(path), journal.to_bytes()).unwrap();
    let mut bytes = fs::read(path).unwrap();
    bytes[..torn.len()].copy_from_slice(torn);
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_torn_header_is_refused_with_a_hint_and_finished_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let hr1 = LabelKey::generate("hr", 1).unwrap();
    let hr2 = LabelKey::generate("hr", 2).unwrap();
    let (path, contents) = sealed(dir.path(), &hr1);
    let (old, new) = headers(&path, &hr1, &[label_slot(&hr2)]);
    // The first half of the new header reached the disk, the rest is still the old one.
    let half = new.len() / 2;
    let torn = [&new.as_bytes()[..half], &old.as_bytes()[half..]].concat();
    crash_after_journal(&path, &old, &new, &torn);

    let err = open_file(&path, &[&hr1, &hr2], &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, Error::RekeyInterrupted { .. }), "{err}");
    assert!(err.to_string().contains("kluis rekey"), "{err}");
    let err = replace_header(&path, &old, &new).unwrap_err();
    assert!(matches!(err, Error::RekeyInterrupted { .. }), "{err}");

    assert_eq!(finish_rekey(&path).unwrap(), Recovery::Completed);
    assert!(!journal_path(&path).exists());
    opens_with(&path, &hr2, &contents);
    assert_eq!(finish_rekey(&path).unwrap(), Recovery::Clean);
}

#[test]
fn a_crash_before_or_after_the_header_write_is_finished_too() {
    let hr1 = LabelKey::generate("hr", 1).unwrap();
    let hr2 = LabelKey::generate("hr", 2).unwrap();
    for written in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (path, contents) = sealed(dir.path(), &hr1);
        let (old, new) = headers(&path, &hr1, &[label_slot(&hr2)]);
        let header = if written { &new } else { &old };
        crash_after_journal(&path, &old, &new, header.as_bytes());
        assert_eq!(finish_rekey(&path).unwrap(), Recovery::Completed);
        opens_with(&path, &hr2, &contents);
        assert!(!journal_path(&path).exists());
    }
}

#[test]
fn an_incomplete_journal_is_discarded_and_the_document_kept() {
    let dir = tempfile::tempdir().unwrap();
    let hr1 = LabelKey::generate("hr", 1).unwrap();
    let hr2 = LabelKey::generate("hr", 2).unwrap();
    let (path, contents) = sealed(dir.path(), &hr1);
    let before = fs::read(&path).unwrap();
    let (old, new) = headers(&path, &hr1, &[label_slot(&hr2)]);
    let journal = Journal {
        file_len: before.len() as u64,
        old: old.as_bytes().to_vec(),
        new: new.as_bytes().to_vec(),
    }
    .to_bytes();
    // The crash came while the journal was being written.
    fs::write(journal_path(&path), &journal[..journal.len() - 10]).unwrap();

    assert_eq!(finish_rekey(&path).unwrap(), Recovery::Discarded);
    assert_eq!(fs::read(&path).unwrap(), before);
    assert!(!journal_path(&path).exists());
    opens_with(&path, &hr1, &contents);
}

#[test]
fn a_journal_that_no_longer_matches_its_document_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let hr1 = LabelKey::generate("hr", 1).unwrap();
    let hr2 = LabelKey::generate("hr", 2).unwrap();
    let (path, _) = sealed(dir.path(), &hr1);
    let (old, new) = headers(&path, &hr1, &[label_slot(&hr2)]);
    crash_after_journal(&path, &old, &new, old.as_bytes());
    // The document was then replaced by another one of the same length.
    let mut other = fs::read(&path).unwrap();
    other[10] ^= 0xff;
    other[new.len() - 1] ^= 0x55;
    fs::write(&path, &other).unwrap();

    let err = finish_rekey(&path).unwrap_err();
    assert!(matches!(err, Error::StaleJournal { .. }), "{err}");
    assert!(err.to_string().contains("delete the journal"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), other, "nothing written");
    assert!(
        journal_path(&path).exists(),
        "the journal is kept for the operator"
    );
}

#[cfg(unix)]
#[test]
fn a_symbolic_link_is_not_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let hr1 = LabelKey::generate("hr", 1).unwrap();
    let hr2 = LabelKey::generate("hr", 2).unwrap();
    let (path, _) = sealed(dir.path(), &hr1);
    let before = fs::read(&path).unwrap();
    let link = dir.path().join("link.kluis");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let (old, new) = headers(&link, &hr1, &[label_slot(&hr2)]);
    let err = replace_header(&link, &old, &new).unwrap_err();
    assert!(matches!(err, Error::NotAFile { .. }), "{err}");
    assert_eq!(fs::read(&path).unwrap(), before);
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}
