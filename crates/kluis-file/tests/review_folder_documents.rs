//! Review of the empty-folder documents (`--hide-names` seals an empty folder as an empty
//! document whose stored name ends in `/`): a folder document and a file document for the
//! same path, and folder names that only the file rules refuse.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use kluis_core::LabelKey;
use kluis_file::{NameKey, OpenOptions, Outcome, SealOptions, open_paths, seal_paths};

/// Seal `src` below `dir` flat into `dir/cloud` with hidden names from `key`.
fn seal_hidden(dir: &Path, hr: &LabelKey, key: &NameKey, force: bool) {
    let mut o = SealOptions::default();
    o.output_dir = Some(dir.join("cloud"));
    o.hide_names = true;
    o.name_key = Some(key);
    o.force = force;
    let reports = seal_paths(&[dir.join("src")], &[label_slot(hr)], &o).unwrap();
    assert_all_done(&reports);
}

/// Set the modification time of a file or folder.
fn touch(path: &Path, t: SystemTime) {
    fs::File::open(path).unwrap().set_modified(t).unwrap();
}

/// `src/a` is an empty folder, sealed; later it is a file, sealed again into the same flat
/// folder (the folder's document stays there: sealing never removes documents). Then the
/// other way round. Either way, opening the folder restores the newer of the two (as for two
/// file documents for one path) and says the other was superseded, instead of creating the
/// folder from the stale document and failing the newer file with "already exists" (or, with
/// force, "a folder stands where a file is needed").
#[test]
fn a_folder_document_and_a_file_document_for_one_path_restore_the_newer() {
    let old = SystemTime::now() - Duration::from_secs(7200);
    let new = SystemTime::now() - Duration::from_secs(60);
    for folder_is_newer in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let hr = LabelKey::generate("hr", 1).unwrap();
        let key = NameKey::generate().unwrap();
        make_tree(d, &[("src/keep.txt", b"keep".to_vec())]);
        let (first_t, second_t) = (old, new);
        if folder_is_newer {
            make_tree(d, &[("src/a", b"older file".to_vec())]);
            touch(&d.join("src/a"), first_t);
        } else {
            fs::create_dir(d.join("src/a")).unwrap();
            touch(&d.join("src/a"), first_t);
        }
        seal_hidden(d, &hr, &key, false);
        if folder_is_newer {
            fs::remove_file(d.join("src/a")).unwrap();
            fs::create_dir(d.join("src/a")).unwrap();
            touch(&d.join("src/a"), second_t);
        } else {
            fs::remove_dir(d.join("src/a")).unwrap();
            make_tree(d, &[("src/a", b"newer file".to_vec())]);
            touch(&d.join("src/a"), second_t);
        }
        seal_hidden(d, &hr, &key, true);
        assert_eq!(list(&d.join("cloud")).len(), 3, "keep, a/ and a");

        for force in [false, true] {
            let out = d.join(format!("back-{force}"));
            let mut o = OpenOptions::default();
            o.output_dir = Some(out.clone());
            o.force = force;
            let reports = open_paths(&[d.join("cloud")], &[&hr], &o).unwrap();
            let failed: Vec<_> = reports
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
                .map(|r| format!("{:?}", r.outcome))
                .collect();
            assert!(
                failed.is_empty(),
                "folder newer: {folder_is_newer}, force: {force}: {failed:?}"
            );
            let superseded = reports
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Superseded(_)))
                .count();
            assert_eq!(superseded, 1, "the older one is reported superseded");
            let a = out.join("src/a");
            if folder_is_newer {
                assert!(a.is_dir(), "the newer folder document wins");
            } else {
                assert_eq!(fs::read(&a).unwrap(), b"newer file", "the newer file wins");
            }
            assert_eq!(fs::read(out.join("src/keep.txt")).unwrap(), b"keep");
        }
    }
}

/// An empty folder whose name a *file* may not be restored under (`x.kluis`, `.kluis-tmp-…`:
/// a restored file must never take a sealed document's or a temporary file's name) is still
/// a folder: sealing it with hidden names succeeds, so opening must restore it, not refuse
/// the document as a crafted, hostile name. (A file document may already create such a folder
/// on its way: `x.kluis/inside.txt` is accepted.)
#[test]
fn an_empty_folder_named_like_a_sealed_document_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let key = NameKey::generate().unwrap();
    make_tree(d, &[("src/keep.txt", b"keep".to_vec())]);
    fs::create_dir_all(d.join("src/archive.KLUIS")).unwrap();
    fs::create_dir_all(d.join("src/old/.kluis-tmp-notes")).unwrap();
    seal_hidden(d, &hr, &key, false);
    let mut o = OpenOptions::default();
    o.output_dir = Some(d.join("back"));
    let reports = open_paths(&[d.join("cloud")], &[&hr], &o).unwrap();
    for r in &reports {
        assert!(matches!(r.outcome, Outcome::Done), "{:?}", r.outcome);
    }
    assert!(d.join("back/src/archive.KLUIS").is_dir());
    assert!(d.join("back/src/old/.kluis-tmp-notes").is_dir());
}
